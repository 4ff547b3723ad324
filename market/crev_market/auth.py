"""The market API's view token: an account proves it holds its key, without the server ever seeing it.

A request for an account's own views (its holdings) carries

    Authorization: CREV <base64 of a COSE_Sign1>

over the deterministic CBOR map ``{0: 1, 1: account, 2: "view", 3: unix time}``,
signed by the account's key (SPEC §3 profile, as orders and retirements
are). The server accepts it for that account only, within ±300 s of its own
clock. The token says nothing more than "this key's holder asks to view,
now": it moves nothing, so a copy replayed inside the window shows the
same read-only view again and can do nothing else.
"""

import base64
import binascii
import time

from crev import cbor
from crev.cose import Sign1, sign1
from crev.errors import CrevError
from crev.keys import SigningKey, key_id
from crev.reading import valid_device_id

SCHEME = "CREV"
PURPOSE_VIEW = "view"
WINDOW_S = 300
FORMAT_VERSION = 1
MAX_TOKEN_CHARS = 1024


class Unauthorized(Exception):
    """The token is missing or does not prove the account's key; the message says what to send."""


def view_map(account: str, time_s: int) -> dict[int, object]:
    return {0: FORMAT_VERSION, 1: account, 2: PURPOSE_VIEW, 3: time_s}


def sign_view_token(account: str, key: SigningKey, time_s: int | None = None) -> bytes:
    """The COSE_Sign1 bytes of a view token for ``account``, signed by its key."""
    return sign1(cbor.dumps(view_map(account, int(time.time()) if time_s is None else time_s)), key)


def authorization(account: str, key: SigningKey, time_s: int | None = None) -> str:
    """The ``Authorization`` header value: ``CREV <base64>``."""
    return "%s %s" % (SCHEME, base64.b64encode(sign_view_token(account, key, time_s)).decode("ascii"))


def _decode(header: str | None) -> bytes:
    if not header:
        raise Unauthorized("this view needs `Authorization: CREV <base64 COSE_Sign1>` signed by the account's key")
    scheme, _sep, value = header.strip().partition(" ")
    if scheme.upper() != SCHEME or not value.strip():
        raise Unauthorized("the Authorization scheme must be CREV, followed by the base64 token")
    value = value.strip()
    if len(value) > MAX_TOKEN_CHARS:
        raise Unauthorized("the view token is too long")
    # Standard or URL-safe base64, padded or not.
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("the view token is not base64") from None


def verify_view_token(header: str | None, account: str, pubkey: bytes, now_s: int | None = None) -> None:
    """Accept the header's token for ``account`` with key ``pubkey``, or raise Unauthorized."""
    signed = _decode(header)
    try:
        envelope = Sign1.from_bytes(signed)
    except CrevError:
        raise Unauthorized("the view token is not a COSE_Sign1") from None
    if envelope.kid != key_id(pubkey):
        raise Unauthorized("the view token is not signed by the key of account %s" % account)
    try:
        envelope.verify(pubkey)
        fields = cbor.loads(envelope.payload)
    except CrevError:
        raise Unauthorized("the view token is not signed by the key of account %s" % account) from None
    if not isinstance(fields, dict) or sorted(fields) != [0, 1, 2, 3] or fields.get(0) != FORMAT_VERSION:
        raise Unauthorized('the view token must sign {0: 1, 1: account, 2: "view", 3: unix time}')
    if fields[1] != account or not valid_device_id(account):
        raise Unauthorized("the view token is for another account")
    if fields[2] != PURPOSE_VIEW:
        raise Unauthorized('the view token\'s purpose must be "view"')
    stamp = fields[3]
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise Unauthorized("the view token's time must be unix seconds")
    now = int(time.time()) if now_s is None else now_s
    if abs(now - stamp) > WINDOW_S:
        raise Unauthorized("the view token is more than %d s from the server's clock; sign a fresh one" % WINDOW_S)
