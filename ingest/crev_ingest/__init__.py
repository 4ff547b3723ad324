"""ingest: verify every reading, keep the bad in quarantine, and append the
good to time series and a signed, hash-chained RFC 9162 ledger.

Errors::

    IngestError
     +-- ConfigError   the configuration or a command's input is wrong: one line, exit 2
     +-- LedgerError   a verification of the stored ledger failed (names the row)
     +-- StoreUnavailable  the database cannot be reached or opened (one line)
"""

__version__ = "0.1.0"


class IngestError(Exception):
    """Base class of ingest's errors."""


class ConfigError(IngestError):
    """A mistake the operator can fix; the message says what to fix."""


class LedgerError(IngestError):
    """The stored ledger does not verify; the message names the row and the check."""


class StoreUnavailable(IngestError):
    """The database cannot be reached or opened: one line for the operator."""
