"""Handlers for the service commands; each imports its package only when run.

Errors a user can fix (a bad config, a missing key, a meter that does not
answer at start-up, a port in use) become one-line UsageErrors.
"""

import argparse
from pathlib import Path

from crev_cli import UsageError


def gateway_init(args: argparse.Namespace) -> int:
    from crev_gateway import GatewayError
    from crev_gateway.cli import init

    try:
        return init(Path(args.config))
    except GatewayError as err:
        raise UsageError(str(err)) from err


def gateway_run(args: argparse.Namespace) -> int:
    from crev_gateway import GatewayError
    from crev_gateway.cli import run

    try:
        return run(Path(args.config), skip_meter_check=args.skip_meter_check)
    except GatewayError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError("cannot start the gateway: %s" % err) from err


def sim_meters(args: argparse.Namespace) -> int:
    from crev_sim.cli import run_meters
    from crev_sim.config import SimConfigError

    try:
        run_meters(Path(args.config))
    except SimConfigError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(str(err)) from err
    return 0


def sim_smartmeter(args: argparse.Namespace) -> int:
    from crev_sim.cli import run_smartmeter
    from crev_sim.config import SimConfigError

    try:
        run_smartmeter(Path(args.config))
    except (SimConfigError, OSError) as err:
        raise UsageError(str(err)) from err
    return 0


def _ingest(action: str, args: argparse.Namespace) -> int:
    from crev_ingest import IngestError
    from crev_ingest import cli as ingest_cli

    try:
        if action == "init":
            return ingest_cli.init(Path(args.config), args.print_grants, args.role)
        if action == "enroll":
            return ingest_cli.enroll(Path(args.config), args.device, args.pubkey)
        if action == "revoke":
            return ingest_cli.revoke(Path(args.config), args.device)
        if action == "broker-users":
            return ingest_cli.broker_users(Path(args.config), Path(args.out))
        if action == "publish":
            return ingest_cli.publish(Path(args.config), Path(args.out))
        return ingest_cli.run(Path(args.config))
    except IngestError as err:
        raise UsageError(str(err)) from err


def ingest_init(args: argparse.Namespace) -> int:
    return _ingest("init", args)


def ingest_enroll(args: argparse.Namespace) -> int:
    return _ingest("enroll", args)


def ingest_revoke(args: argparse.Namespace) -> int:
    return _ingest("revoke", args)


def ingest_broker_users(args: argparse.Namespace) -> int:
    return _ingest("broker-users", args)


def ingest_publish(args: argparse.Namespace) -> int:
    return _ingest("publish", args)


def ingest_run(args: argparse.Namespace) -> int:
    return _ingest("run", args)
