"""A C2SP tlog-witness for the crev ledger (SPEC §11): ``crev witness init|run``.

It checks each checkpoint the log submits against the latest one it cosigned
for that log, cosigns it (tlog-cosignature, cosignature/v1) only if the new
tree is an extension of that one, and keeps every refused fork as evidence.
The formats are the core's (crev.note); this package adds the HTTP service,
the SQLite state and the configuration.

Errors::

    WitnessError
     +-- ConfigError   the configuration, key or state file is unusable: one line, exit 2
"""

__version__ = "0.1.0"


class WitnessError(Exception):
    """Base class of the witness's errors."""


class ConfigError(WitnessError):
    """A mistake the operator can fix; the message says what to fix."""
