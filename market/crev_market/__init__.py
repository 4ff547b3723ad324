"""The C-REV registry (SPEC §8 and §10) and, next, the market (§9), on the one ledger.

The registry opens accounts, registers sites, issues C-REV from the
ledger's sealed readings, keeps holdings as lot moves, and records
retirements signed by their accounts. Its ledger leaves are defined, and
verified, in the portable core (``crev.registry_format``).

Errors::

    MarketError
     +-- Refused   a request the registry will not carry out; nothing was recorded.
                   One line that says why, exit 2.
"""

__version__ = "0.1.0"


class MarketError(Exception):
    """Base class of the registry's and market's errors."""


class Refused(MarketError):
    """The request is refused and nothing was recorded; the message says why and what to do.

    ``reason`` tells tools what kind of refusal it is: NOT_SIGNED (not the
    account's key), REPLAY (these signed bytes were carried out already), or
    REFUSED for everything else.
    """

    def __init__(self, message: str, reason: str = "REFUSED") -> None:
        super().__init__(message)
        self.reason = reason
