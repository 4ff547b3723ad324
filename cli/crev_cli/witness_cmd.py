"""``crev witness init|run`` (SPEC §7, §11): a C2SP tlog-witness for the ledger's checkpoints."""

import argparse
from pathlib import Path
from typing import Any

from crev_cli import UsageError


def _witness(action: str, args: argparse.Namespace) -> int:
    from crev_witness import WitnessError
    from crev_witness import cli as witness_cli

    try:
        if action == "init":
            return witness_cli.init(Path(args.config))
        return witness_cli.run(Path(args.config))
    except WitnessError as err:
        raise UsageError(str(err)) from err


def init(args: argparse.Namespace) -> int:
    return _witness("init", args)


def run(args: argparse.Namespace) -> int:
    return _witness("run", args)


def add_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The ``witness`` command group of SPEC §7."""
    witness = commands.add_parser("witness", help="cosign the ledger's checkpoints (C2SP tlog-witness)")
    sub = witness.add_subparsers(dest="witness_command", metavar="SUBCOMMAND", parser_class=parser_class)
    sub.required = True
    make_key = sub.add_parser(
        "init",
        help="create the witness key; print its verifier key",
        description="Write [witness] key (mode 0600) and print the witness's C2SP verifier key "
        "(name+keyid+base64, signature type 0x04), which logs and auditors configure.",
    )
    make_key.add_argument("--config", required=True, metavar="FILE", help="the witness's TOML configuration")
    make_key.set_defaults(handler=init)
    serve = sub.add_parser(
        "run",
        help="serve POST /add-checkpoint until stopped",
        description="Serve C2SP tlog-witness on [witness] listen: cosign each checkpoint of a [[log]] that is "
        "consistent with the latest one cosigned, and keep any fork as evidence. SIGTERM or SIGINT stops it.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the witness's TOML configuration")
    serve.set_defaults(handler=run)
