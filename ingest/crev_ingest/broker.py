"""Per-device broker credentials and the ACL, written from the registry.

Every enrolled device (with a key that is not revoked) gets a user named by
its device id with a random password. As SPEC §4 says, it may write only its
own ``reading``, ``status``, ``order`` and ``ack`` topics, and read only its
own ``cmd``; ingest's own user may read every device's readings, status and
controllers' orders.
Passwords are kept in ``passwords/DEVICE.pass`` (mode 0600), to be copied to
the gateway's ``password_file``; existing ones are reused, so running the
helper again after an enrolment changes nothing for the other devices.
The password file uses mosquitto's own PBKDF2-SHA512 format ($7$).
"""

import base64
import hashlib
import os
import secrets
from pathlib import Path

from crev_ingest.ledger import ACTION_ENROL
from crev_ingest.store import Store

INGEST_USER = "crev-ingest"
ITERATIONS = 101  # what mosquitto_passwd writes for $7$


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return "$7$%d$%s$%s" % (ITERATIONS, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def active_devices(store: Store) -> list[str]:
    devices = []
    for (dev,) in store.db.execute("SELECT DISTINCT dev FROM key_events ORDER BY dev"):
        current: bytes | None = None
        for action, pubkey, _when in store.key_events_for_device(dev):
            current = pubkey if action == ACTION_ENROL else (None if pubkey == current else current)
        if current is not None:
            devices.append(str(dev))
    return devices


def _password(directory: Path, user: str) -> str:
    path = directory / "passwords" / (user + ".pass")
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def write_broker_users(store: Store, directory: Path) -> list[str]:
    """Write ``passwd`` and ``acl`` into ``directory``; return the users."""
    directory.mkdir(parents=True, exist_ok=True)
    users = [INGEST_USER, *active_devices(store)]
    lines = ["%s:%s" % (user, mosquitto_hash(_password(directory, user))) for user in users]
    passwd = directory / "passwd"
    passwd.write_text("\n".join(lines) + "\n")
    os.chmod(passwd, 0o600)
    acl = [
        "# Written by `crev ingest broker-users`; devices come from the ledger's registry.",
        "user %s" % INGEST_USER,
        "topic read crev/v1/+/reading",
        "topic read crev/v1/+/status",
        "topic read crev/v1/+/order",
        "",
        "# Every other user is a device: it writes only its own topics and reads only its own commands.",
        "pattern write crev/v1/%u/reading",
        "pattern write crev/v1/%u/status",
        "pattern write crev/v1/%u/order",
        "pattern write crev/v1/%u/ack",
        "pattern read crev/v1/%u/cmd",
        "",
    ]
    (directory / "acl").write_text("\n".join(acl))
    return users
