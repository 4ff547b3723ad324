"""Exceptions raised by the portable core.

Every error carries a short machine-readable ``code``. The tree separates a
misbehaving peer (bytes we were given) from our own misuse of the API, as h11
splits its Remote and Local errors::

    CrevError
     +-- InvalidInput        bytes from outside do not follow SPEC.md
     |    +-- CborError      not deterministic CBOR (code: INDEFINITE_LENGTH, ...)
     |    +-- ReadingError   a reading fails a SPEC §5 check (code: MALFORMED,
     |                       BAD_ALG, BAD_SIGNATURE, NON_CANONICAL, BAD_SCHEMA)
     |    +-- RegisterError  a meter register holds no valid counter value
     +-- MisuseError         the caller asked the core for something impossible
"""


class CrevError(Exception):
    """Base class of every error the core raises."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code + (": " + detail if detail else ""))
        self.code = code
        self.detail = detail


class InvalidInput(CrevError):
    """Input that came from outside the program is not acceptable."""


class CborError(InvalidInput):
    """The bytes are not the deterministic CBOR subset of SPEC §3.

    ``canonical`` is True when the bytes are well-formed CBOR that merely
    breaks a determinism rule (shortest form, key order, no floats, ...).
    """

    def __init__(self, code: str, detail: str = "", canonical: bool = False) -> None:
        super().__init__(code, detail)
        self.canonical = canonical


class ReadingError(InvalidInput):
    """A signed reading fails one of the checks of SPEC §5; code is the reason."""


class RegisterError(InvalidInput):
    """A meter register holds a value that cannot be a certified counter."""


class MisuseError(CrevError):
    """The core was called with arguments it cannot honour."""

    def __init__(self, detail: str) -> None:
        super().__init__("MISUSE", detail)
