"""``crev`` entry point: parses the command line and maps errors to exit codes.

Exit codes (SPEC §7): 0 ok, 1 a verification found a problem, 2 a usage or
configuration error. User mistakes get one line, never a traceback.
"""

import argparse
import sys
from collections.abc import Sequence

from crev import __version__
from crev_cli import UsageError, reading_cmd


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
    return parser


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
