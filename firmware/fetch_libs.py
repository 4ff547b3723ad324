"""Fetch the MicroPython libraries the firmware uses into firmware/lib/ (run on the host).

Each is pinned by version and SHA-256 and comes from PyPI, like the host's
own packages. `crev provision` copies firmware/lib/ to the device; the tests
put it on the MicroPython WebAssembly port's import path.
"""

import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

LIBRARIES = [
    {
        "name": "micropython-umqtt.simple",
        "version": "1.3.4",
        "url": "https://files.pythonhosted.org/packages/bd/cf/"
        "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/micropython-umqtt.simple-1.3.4.tar.gz",
        "sha256": "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        "files": {"micropython-umqtt.simple-1.3.4/umqtt/simple.py": "umqtt/simple.py"},
    },
]


def fetch(target: Path) -> None:
    for library in LIBRARIES:
        with urllib.request.urlopen(library["url"], timeout=60) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != library["sha256"]:
            sys.exit(
                "%s %s: SHA-256 %s, expected %s" % (library["name"], library["version"], digest, library["sha256"])
            )
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member, destination in library["files"].items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    sys.exit("%s: %s is not in the archive" % (library["name"], member))
                path = target / destination
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(extracted.read())
                (path.parent / "__init__.py").touch()  # a package on every port
        print("fetched %s %s into %s" % (library["name"], library["version"], target))


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "lib")
