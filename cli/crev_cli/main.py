"""``crev`` entry point: parses the command line and maps errors to exit codes.

Exit codes (SPEC §7): 0 ok, 1 a verification found a problem, 2 a usage or
configuration error. User mistakes get one line, never a traceback.
"""

import argparse
import sys
from collections.abc import Sequence

from crev import __version__
from crev_cli import (
    UsageError,
    audit_cmd,
    control_cmd,
    market_cmd,
    reading_cmd,
    registry_cmd,
    service_cmds,
    witness_cmd,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's default prints the whole usage; one line is enough.
        self.exit(2, "crev: %s (see `%s --help`)\n" % (message, self.prog))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="crev", description="Verifiable CO2-reduction values from meter to ledger.")
    parser.add_argument("--version", action="version", version="crev " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    reading = commands.add_parser("reading", help="inspect signed readings")
    reading_commands = reading.add_subparsers(dest="reading_command", metavar="SUBCOMMAND", parser_class=_Parser)
    reading_commands.required = True
    show = reading_commands.add_parser(
        "show",
        help="decode a reading to JSON",
        description="Decode a COSE_Sign1 reading (raw bytes or hex text) to JSON and check its structure.",
    )
    show.add_argument("file", metavar="FILE", help="the reading, or - for standard input")
    show.add_argument("--pubkey", metavar="HEX", help="also verify the signature with this Ed25519 public key")
    show.set_defaults(handler=reading_cmd.show)

    gateway = commands.add_parser("gateway", help="the DGC controller service on a Raspberry Pi")
    gateway_commands = gateway.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND", parser_class=_Parser)
    gateway_commands.required = True
    init = gateway_commands.add_parser("init", help="create the device key; print the device id and public key")
    init.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML configuration")
    init.set_defaults(handler=service_cmds.gateway_init)
    run = gateway_commands.add_parser("run", help="read meters, sign and publish readings until stopped")
    run.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML configuration")
    run.add_argument(
        "--skip-meter-check", action="store_true", help="start even if a meter does not answer at start-up"
    )
    run.set_defaults(handler=service_cmds.gateway_run)

    ingest = commands.add_parser("ingest", help="the cloud service: verification, quarantine, ledger")
    ingest_commands = ingest.add_subparsers(dest="ingest_command", metavar="SUBCOMMAND", parser_class=_Parser)
    ingest_commands.required = True
    for name, help_text, handler in (
        ("init", "create the ledger key and the store's schema; print the public key", service_cmds.ingest_init),
        ("enroll", "enrol a device's public key", service_cmds.ingest_enroll),
        ("revoke", "revoke a device's current key", service_cmds.ingest_revoke),
        ("run", "verify and store readings until stopped", service_cmds.ingest_run),
        ("broker-users", "write mosquitto's passwd and acl from the registry", service_cmds.ingest_broker_users),
        ("publish", "write the ledger as C2SP tlog-tiles static files", service_cmds.ingest_publish),
    ):
        command = ingest_commands.add_parser(name, help=help_text)
        command.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
        if name in ("enroll", "revoke"):
            command.add_argument("--device", required=True, metavar="ID", help="the device id")
        if name == "enroll":
            command.add_argument("--pubkey", required=True, metavar="HEX", help="the device's Ed25519 public key")
        if name == "broker-users":
            command.add_argument("--out", required=True, metavar="DIR", help="where to write passwd, acl, passwords/")
        if name == "publish":
            command.add_argument("--out", required=True, metavar="DIR", help="the directory a web server serves")
        if name == "init":
            command.add_argument(
                "--print-grants",
                action="store_true",
                help="print, for a DBA, the SQL that gives the application role append-only access (PostgreSQL)",
            )
            command.add_argument(
                "--role", default="crev_app", metavar="NAME", help="the application role (default crev_app)"
            )
        command.set_defaults(handler=handler)

    audit = commands.add_parser("audit", help="evidence bundles for auditors, and the ledger check")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", parser_class=_Parser)
    audit_commands.required = True
    export = audit_commands.add_parser(
        "export",
        help="write one device's evidence bundle for a time range",
        description="Write a single-file evidence bundle: the device's readings overlapping [--from, --to), "
        "their inclusion proofs, the signed blocks and consistency proofs linking them, and the device's key events.",
    )
    export.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    export.add_argument("--device", required=True, metavar="ID", help="the device id")
    export.add_argument(
        "--from", dest="from_time", required=True, metavar="T", help="start: 2026-11-01, 2026-11-01T09:00Z or Unix s"
    )
    export.add_argument("--to", dest="to_time", required=True, metavar="T", help="end (exclusive), same forms")
    export.add_argument("--out", required=True, metavar="FILE", help="the bundle file to write")
    export.set_defaults(handler=audit_cmd.export)
    verify = audit_commands.add_parser(
        "verify",
        help="verify an evidence bundle offline",
        description="Check an evidence bundle with nothing but the ledger's public key: no database, no network. "
        "Exit 0 only if every check holds.",
    )
    verify.add_argument("file", metavar="FILE", help="the bundle")
    verify.add_argument(
        "--ledger-key", required=True, metavar="KEY", help="the ledger's public key (64 hex digits, or a file)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--allow-gaps", action="store_true", help="report seq gaps without failing on them")
    verify.add_argument("--factor", type=float, metavar="G", help="emission factor in g-CO2/kWh for the CO2 total")
    verify.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: one per CPU, at most 8)")
    verify.add_argument(
        "--witness",
        action="append",
        metavar="VKEY",
        help="a witness's verifier key (repeat); with --quorum, require its cosignature on the bundle's checkpoint",
    )
    verify.add_argument("--quorum", type=int, metavar="K", help="how many of the --witness keys must have cosigned")
    audit_cmd.add_tolerance_options(verify)
    verify.set_defaults(handler=audit_cmd.verify)
    trace_parser = audit_commands.add_parser(
        "trace",
        help="write the trace bundle of one retirement",
        description="Write one file that traces a retirement back to the meter readings: the retirement, the "
        "issuances of its lots, their readings, the account, site and key events they need, each with its "
        "inclusion proof to a signed block. Verify it offline with `crev audit verify`.",
    )
    trace_parser.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    trace_parser.add_argument("--retirement", required=True, type=int, metavar="ID", help="the retirement id")
    trace_parser.add_argument("--out", required=True, metavar="FILE", help="the bundle file to write")
    trace_parser.set_defaults(handler=audit_cmd.trace)
    ledger = audit_commands.add_parser(
        "ledger",
        help="recompute and verify the local ledger, or a mirror's copy of one",
        description="With --config, the local ledger: every leaf, tile, block and row, and the registry replayed. "
        "With --mirror DIR --ledger-key KEY, a copy made by `crev audit mirror`: its checkpoint, tiles and leaves, "
        "the readings' signatures and chains, and the registry replayed.",
    )
    ledger.add_argument("--config", metavar="FILE", help="the ingest TOML configuration")
    ledger.add_argument("--mirror", metavar="DIR", help="audit the mirror in DIR instead (with --ledger-key)")
    ledger.add_argument(
        "--ledger-key", metavar="KEY", help="with --mirror: the ledger's public key (64 hex digits, or a file)"
    )
    ledger.add_argument(
        "--state",
        metavar="FILE",
        help="remember the last verified block here, and next time check only what came after it",
    )
    ledger.add_argument("--full", action="store_true", help="with --state: check everything again from leaf 0")
    ledger.set_defaults(handler=audit_cmd.ledger)
    mirror = audit_commands.add_parser(
        "mirror",
        help="fetch, verify and keep a copy of a ledger published as tlog-tiles",
        description="Fetch the checkpoint, tiles and entry bundles of the log at URL (http(s)://, file://, or a "
        "directory `crev ingest publish` wrote), check them against the checkpoint signed by the ledger key, and "
        "keep them in --out. Run again, it fetches only what is new and proves the new checkpoint extends the "
        "kept one. Exit 1, naming the first bad file, if anything does not verify.",
    )
    mirror.add_argument("url", metavar="URL", help="the log: http://host:port/log/, file:///srv/log, or a directory")
    mirror.add_argument(
        "--ledger-key", required=True, metavar="KEY", help="the ledger's public key (64 hex digits, or a file)"
    )
    mirror.add_argument(
        "--witness", action="append", metavar="VKEY", help="a witness's verifier key (repeat) that must cosign"
    )
    mirror.add_argument(
        "--quorum", type=int, metavar="K", help="how many of the --witness keys must have cosigned (default 1)"
    )
    mirror.add_argument("--out", required=True, metavar="DIR", help="where the copy is kept")
    mirror.set_defaults(handler=audit_cmd.mirror)

    registry_cmd.add_commands(commands, _Parser)
    market_cmd.add_commands(commands, _Parser)
    witness_cmd.add_commands(commands, _Parser)
    control_cmd.add_commands(commands, _Parser)

    demo_parser = commands.add_parser(
        "demo", help="run the whole pipeline locally on simulated meters, then audit the ledger"
    )
    demo_parser.add_argument("--minutes", type=float, default=2.0, help="wall-clock minutes for one simulated day")
    demo_parser.add_argument(
        "--broker", choices=("auto", "mosquitto", "embedded"), default="auto", help="auto: mosquitto if installed"
    )
    demo_parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the ledger store; postgres: CREV_DEMO_POSTGRES_URL, else a server started for the demo",
    )
    demo_parser.add_argument("--workdir", metavar="DIR", help="where to keep configs, logs and databases")
    demo_parser.add_argument("--no-live", dest="live", action="store_false", help="print only the final table")
    demo_parser.add_argument(
        "--keep", action="store_true", help="after the summary, keep the dashboard and the market running until Ctrl-C"
    )
    demo_parser.set_defaults(handler=_demo)

    provision = commands.add_parser(
        "provision",
        help="set up a microcontroller controller over its serial port",
        description="Copy the MicroPython firmware and config to a board, have it make its key, enrol it, "
        "and check every meter once (see docs/provisioning-a-microcontroller.md).",
    )
    provision.add_argument("--port", required=True, metavar="PORT", help="the board's serial port, e.g. /dev/ttyUSB0")
    provision.add_argument("--device", required=True, metavar="ID", help="the device id")
    provision.add_argument("--config", required=True, metavar="FILE", help="the site's TOML (gateway format + [uart])")
    provision.add_argument("--ingest-config", metavar="FILE", help="enrol here too (else print the enrol command)")
    provision.add_argument("--wait", type=int, default=10, metavar="S", help="seconds between the two meter reads")
    provision.set_defaults(handler=_provision)

    sim = commands.add_parser("sim", help="simulated meters for tests and demos")
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", parser_class=_Parser)
    sim_commands.required = True
    meters = sim_commands.add_parser("meters", help="serve simulated SDM630/SDM120/SunSpec meters over Modbus TCP")
    meters.add_argument("--config", required=True, metavar="FILE", help="the simulator's TOML configuration")
    meters.set_defaults(handler=service_cmds.sim_meters)
    smart = sim_commands.add_parser(
        "smartmeter",
        help="the simulated meters plus a B-route smart meter (ECHONET Lite over UDP and SKSTACK on a pty)",
    )
    smart.add_argument("--config", required=True, metavar="FILE", help="the simulator's TOML with a [smartmeter] table")
    smart.set_defaults(handler=service_cmds.sim_smartmeter)
    return parser


def _provision(args: argparse.Namespace) -> int:
    from crev_cli.provision import provision

    if not 1 <= args.wait <= 600:
        raise UsageError("--wait must be between 1 and 600 seconds")
    return provision(args)


def _demo(args: argparse.Namespace) -> int:
    from crev_cli.demo import demo

    if not 0.1 <= args.minutes <= 1440:
        raise UsageError("--minutes must be between 0.1 and 1440")
    return demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as err:
        print("crev: %s" % err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
