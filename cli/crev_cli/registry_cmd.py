"""``crev registry ...``: accounts, sites, issuance, holdings and retirement (SPEC §8, §10).

Each handler imports the market package only when run; a refusal or a bad
configuration becomes one line and exit 2, and nothing is recorded.
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crev_cli import UsageError


def _guarded(action: Callable[[], int]) -> int:
    from crev_ingest import IngestError
    from crev_market import MarketError

    try:
        return action()
    except (MarketError, IngestError) as err:
        raise UsageError(str(err)) from err


def _cli() -> Any:
    from crev_market import cli

    return cli


def keygen(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().keygen(Path(args.out)))


def account_add(args: argparse.Namespace) -> int:
    return _guarded(
        lambda: _cli().account_add(Path(args.config), args.account, args.name, args.pubkey, args.undisclosed)
    )


def operator_add(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().operator_add(Path(args.config), args.operator, args.name, args.pubkey))


def site_add(args: argparse.Namespace) -> int:
    return _guarded(
        lambda: _cli().site_add(
            Path(args.config),
            args.site,
            args.owner,
            args.place,
            args.device,
            args.type or [],
            args.factor,
            args.factor_label,
            args.controller_sells_at,
        )
    )


def site_change(args: argparse.Namespace) -> int:
    return _guarded(
        lambda: _cli().site_change(
            Path(args.config),
            args.site,
            args.owner,
            args.place,
            args.device or [],
            args.type or [],
            args.factor,
            args.factor_label,
            args.controller_sells_at,
        )
    )


def issue(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().issue(Path(args.config)))


def release(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().release(Path(args.config), args.site, args.slot, args.reason))


def holdings(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().holdings(Path(args.config), args.account, args.json))


def retire(args: argparse.Namespace) -> int:
    if args.year is not None and not 2000 <= args.year <= 2200:
        raise UsageError("--year must be a reporting year such as 2026")
    return _guarded(
        lambda: _cli().retire(
            Path(args.config),
            args.account,
            Path(args.key),
            args.kg,
            args.beneficiary,
            args.purpose,
            args.year,
            args.json,
        )
    )


def add_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The ``registry`` command group of SPEC §7."""
    registry = commands.add_parser("registry", help="C-REV accounts, sites, issuance, holdings and retirement")
    sub = registry.add_subparsers(dest="registry_command", metavar="SUBCOMMAND", parser_class=parser_class)
    sub.required = True

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        command.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
        return command

    keygen_cmd = sub.add_parser("keygen", help="write an account key file; print its public key")
    keygen_cmd.add_argument("--out", required=True, metavar="FILE", help="the key file to create (mode 0600)")
    keygen_cmd.set_defaults(handler=keygen)

    account = sub.add_parser("account", help="accounts that hold C-REV")
    account_sub = account.add_subparsers(dest="account_command", metavar="SUBCOMMAND", parser_class=parser_class)
    account_sub.required = True
    add = account_sub.add_parser("add", help="open an account")
    add.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    add.add_argument("--account", required=True, metavar="ID", help="the account id (like a device id)")
    add.add_argument("--name", required=True, metavar="NAME", help="display name: a company, a person, an office")
    add.add_argument("--pubkey", required=True, metavar="HEX", help="the account's public key (crev registry keygen)")
    add.add_argument("--undisclosed", action="store_true", help="show the name as 'undisclosed' to others")
    add.set_defaults(handler=account_add)

    operator = sub.add_parser("operator", help="operators who may command controllers (SPEC §12)")
    operator_sub = operator.add_subparsers(dest="operator_command", metavar="SUBCOMMAND", parser_class=parser_class)
    operator_sub.required = True
    op_add = operator_sub.add_parser("add", help="enrol an operator's public key")
    op_add.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    op_add.add_argument("--operator", required=True, metavar="ID", help="the operator id (like a device id)")
    op_add.add_argument(
        "--pubkey", required=True, metavar="HEX", help="the operator's public key (crev registry keygen)"
    )
    op_add.add_argument("--name", metavar="NAME", help="display name, e.g. the grid company (default: the id)")
    op_add.set_defaults(handler=operator_add)

    site = sub.add_parser("site", help="sites: their owner, place, devices, types and emission factor")
    site_sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND", parser_class=parser_class)
    site_sub.required = True
    for name, help_text, handler in (
        ("add", "register a site and its devices", site_add),
        ("change", "change a site for the slots issued from now on", site_change),
    ):
        command = site_sub.add_parser(name, help=help_text)
        command.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
        command.add_argument("--site", required=True, metavar="ID", help="the site id")
        command.add_argument("--owner", required=name == "add", metavar="ACCOUNT", help="the owner's account")
        command.add_argument("--place", required=name == "add", metavar="PATH", help="e.g. Japan/Fukushima/Koriyama")
        command.add_argument(
            "--device", action="append", required=name == "add", metavar="DEV", help="a device of the site (repeat)"
        )
        command.add_argument(
            "--type", action="append", metavar="METER_ID=PATH", help="a generator meter's type, e.g. M1=wind/small"
        )
        command.add_argument("--factor", metavar="G_PER_KWH", help="emission factor (default: [emission])")
        command.add_argument("--factor-label", metavar="TEXT", help="where the factor comes from")
        command.add_argument(
            "--controller-sells-at",
            metavar="YEN",
            help="let the site's controller sell at or above this yen/kg (in a change, `off` withdraws it)",
        )
        command.set_defaults(handler=handler)

    with_config("issue", "issue every closed slot now").set_defaults(handler=issue)

    release_cmd = with_config("release", "release a slot held by a smart-meter mismatch (SPEC §13)")
    release_cmd.add_argument("--site", required=True, metavar="ID", help="the site whose slot is held")
    release_cmd.add_argument("--slot", required=True, metavar="T", help="the slot's start: Unix s or ISO 8601")
    release_cmd.add_argument("--reason", required=True, metavar="TEXT", help="why it may be issued (1-200 chars)")
    release_cmd.set_defaults(handler=release)

    held = with_config("holdings", "an account's lots and grams")
    held.add_argument("--account", required=True, metavar="ID", help="the account id")
    held.add_argument("--json", action="store_true", help="print JSON")
    held.set_defaults(handler=holdings)

    retire_cmd = with_config("retire", "retire C-REV for a beneficiary; prints the retirement id")
    retire_cmd.add_argument("--account", required=True, metavar="ID", help="the account that retires")
    retire_cmd.add_argument("--key", required=True, metavar="FILE", help="the account's key file")
    retire_cmd.add_argument("--kg", required=True, metavar="Q", help="kg-CO2 to retire, up to 3 decimals")
    retire_cmd.add_argument("--beneficiary", required=True, metavar="NAME", help="on whose behalf")
    retire_cmd.add_argument("--purpose", required=True, metavar="TEXT", help="what the retirement is for")
    retire_cmd.add_argument("--year", type=int, metavar="Y", help="the reporting year (default: this year)")
    retire_cmd.add_argument("--json", action="store_true", help="print JSON")
    retire_cmd.set_defaults(handler=retire)
