"""``crev reading show``: decode a reading for a person or a script."""

import argparse
import hashlib
import json
import string
import sys
from typing import Any

from crev import cbor
from crev.cose import Sign1
from crev.errors import CrevError, ReadingError
from crev.reading import Reading
from crev_cli import UsageError

_HEX_TEXT = set(string.hexdigits + string.whitespace)


def read_input(path: str) -> bytes:
    """The bytes of FILE (or stdin for -); hex text is decoded."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as err:
        raise UsageError("cannot read %s: %s" % (path, err.strerror or err)) from err
    if not raw.strip():
        raise UsageError("%s is empty; expected a COSE_Sign1 reading as raw bytes or hex" % path)
    if all(chr(b) in _HEX_TEXT for b in raw):
        text = "".join(raw.decode("ascii").split())
        try:
            return bytes.fromhex(text)
        except ValueError as err:
            raise UsageError("%s looks like hex but is not: %s" % (path, err)) from err
    return raw


def _jsonable(value: object) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": _jsonable(value.value)}
    return value


def parse_public_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError as err:
        raise UsageError("--pubkey must be 64 hex digits (a raw Ed25519 public key)") from err
    if len(key) != 32:
        raise UsageError("--pubkey must be 64 hex digits (a raw Ed25519 public key), got %d bytes" % len(key))
    return key


def show(args: argparse.Namespace) -> int:
    raw = read_input(args.file)
    public_key = parse_public_key(args.pubkey) if args.pubkey else None
    try:
        envelope = Sign1.from_bytes(raw)
    except ReadingError as err:
        if err.code == "MALFORMED":
            raise UsageError("%s is not a COSE_Sign1 reading: %s" % (args.file, err.detail)) from err
        report: dict[str, Any] = {"valid": False, "reason": err.code, "detail": err.detail}
        print(json.dumps(report, indent=2))
        return 1

    report = {
        "valid": True,
        "reason": None,
        "detail": None,
        "envelope": {
            "alg": envelope.alg,
            "kid": envelope.kid.hex(),
            "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        },
        "signature": "not checked (give --pubkey to check it)",
    }
    if public_key is not None:
        try:
            envelope.verify(public_key)
            report["signature"] = "valid"
        except ReadingError as err:
            report.update(valid=False, reason=err.code, detail=err.detail, signature="invalid")
    try:
        report["reading"] = Reading.from_payload(envelope.payload).describe()
    except ReadingError as err:
        if report["valid"]:
            report.update(valid=False, reason=err.code, detail=err.detail)
        try:
            report["payload"] = _jsonable(cbor.loads(envelope.payload))
        except CrevError:
            report["payload_hex"] = envelope.payload.hex()
    print(json.dumps(report, indent=2))
    return 0 if report["valid"] else 1
