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
