"""The ``crev`` command line: one entry point for installers, operators and auditors.

Errors::

    UsageError   the user's input or configuration is wrong: one line, exit 2
"""


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""
