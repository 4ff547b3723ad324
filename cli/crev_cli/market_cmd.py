"""``crev market order|cancel|book|trades|statement|run`` (SPEC §7, §9): signed orders on the local store.

The order is signed here, with the account's key file; the market checks it,
gives it its place in the ledger's sequence and matches it at once.
"""

import argparse
from pathlib import Path
from typing import Any

from crev_cli import UsageError
from crev_cli.audit_cmd import parse_time
from crev_cli.registry_cmd import _cli, _guarded


def order(args: argparse.Namespace) -> int:
    if args.sell == args.buy:
        raise UsageError("say --sell or --buy")
    if args.sell and (args.seller or args.slot_from or args.slot_to):
        raise UsageError("--seller, --slot-from and --slot-to are conditions of a buy order")
    if args.buy and args.site:
        raise UsageError("--site belongs to a sell order; a buy names places with --place")
    slot_from = parse_time(args.slot_from, "--slot-from") if args.slot_from else None
    slot_to = parse_time(args.slot_to, "--slot-to") if args.slot_to else None
    expires = parse_time(args.expires, "--expires") if args.expires else None
    return _guarded(
        lambda: _cli().order(
            Path(args.config),
            args.account,
            Path(args.key),
            "sell" if args.sell else "buy",
            args.kg,
            args.price,
            args.place or [],
            args.type or [],
            args.seller or [],
            slot_from,
            slot_to,
            expires,
            args.json,
            args.site,
        )
    )


def cancel(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().cancel(Path(args.config), args.account, Path(args.key), args.order))


def book(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().book(Path(args.config), args.json))


def trades(args: argparse.Namespace) -> int:
    return _guarded(lambda: _cli().trades(Path(args.config), args.json))


def statement(args: argparse.Namespace) -> int:
    fmt = "csv" if args.csv else "json" if args.json else "text"
    return _guarded(lambda: _cli().statement(Path(args.config), args.account, args.day, fmt))


def run(args: argparse.Namespace) -> int:
    from crev_market import service

    return _guarded(lambda: service.run(Path(args.config)))


def add_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The ``market`` command group of SPEC §7."""
    market = commands.add_parser("market", help="C-REV orders, the book and trades")
    sub = market.add_subparsers(dest="market_command", metavar="SUBCOMMAND", parser_class=parser_class)
    sub.required = True

    place = sub.add_parser("order", help="sign and place an order; prints its id and its fills")
    place.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    place.add_argument("--account", required=True, metavar="ID", help="your account")
    place.add_argument("--key", required=True, metavar="FILE", help="your account's key file")
    place.add_argument("--sell", action="store_true", help="offer your lots of one --place and one --type")
    place.add_argument("--buy", action="store_true", help="bid, with optional conditions")
    place.add_argument("--place", action="append", metavar="PATH", help="sell: the place; buy: a place (repeat)")
    place.add_argument("--type", action="append", metavar="PATH", help="sell: the type; buy: a type (repeat)")
    place.add_argument("--seller", action="append", metavar="ACCOUNT", help="buy: only from this seller (repeat)")
    place.add_argument("--site", metavar="SITE", help="sell: only lots of this site of yours")
    place.add_argument("--slot-from", metavar="T", help="buy: only lots of slots from T on")
    place.add_argument("--slot-to", metavar="T", help="buy: only lots of slots ending by T")
    place.add_argument("--kg", required=True, metavar="Q", help="kg-CO2, up to 3 decimals")
    place.add_argument("--price", required=True, metavar="YEN", help="yen per kg-CO2, up to 2 decimals")
    place.add_argument("--expires", metavar="T", help="the order lapses at T (Unix s or ISO 8601)")
    place.add_argument("--json", action="store_true", help="print JSON")
    place.set_defaults(handler=order)

    drop = sub.add_parser("cancel", help="cancel one of your resting orders")
    drop.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    drop.add_argument("--account", required=True, metavar="ID", help="your account")
    drop.add_argument("--key", required=True, metavar="FILE", help="your account's key file")
    drop.add_argument("--order", required=True, type=int, metavar="ID", help="the order's id")
    drop.set_defaults(handler=cancel)

    for name, help_text, handler in (
        ("book", "the resting orders", book),
        ("trades", "every trade, in execution order", trades),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
        command.add_argument("--json", action="store_true", help="print JSON")
        command.set_defaults(handler=handler)

    daily = sub.add_parser("statement", help="an account's trades of one day, summed and rounded once to whole yen")
    daily.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    daily.add_argument("--account", required=True, metavar="ID", help="the account")
    daily.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the day, at the config's day offset")
    output = daily.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="print CSV: a header, the trades, the totals")
    output.add_argument("--json", action="store_true", help="print JSON")
    daily.set_defaults(handler=statement)

    serve = sub.add_parser(
        "run",
        help="issue C-REV as blocks seal and serve the market's API",
        description="Issue every closed slot each [ledger] block_interval_s, and serve the market's JSON API "
        "(/api/v1/..., OpenAPI at /api/v1/openapi.json) on [market] listen (default 127.0.0.1:8090). "
        "SIGTERM or SIGINT stops it.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration")
    serve.set_defaults(handler=run)
