"""``crev reading show`` as a user runs it: a real process, real files."""

import json
import subprocess
import sys
from pathlib import Path

from crev import cbor
from crev.cose import sig_structure
from crev.keys import SigningKey
from crev.reading import ChainHead

KEY = SigningKey(bytes(range(32)))
CHANNELS = [(0, "PV-1", 1, 5000), (1, "G-1", 0, 100), (2, "G-1", 0, 40)]


def crev(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "crev_cli.main", *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def signed(tmp_path: Path) -> Path:
    head = ChainHead(3, b"\x05" * 32, 1_790_000_000, [(0, "PV-1", 1, 1000), (1, "G-1", 0, 0), (2, "G-1", 0, 0)])
    reading = head.next_reading("dgc-show-0001", 1_790_000_060, 1, CHANNELS, "crev-test/1")
    path = tmp_path / "reading.cose"
    path.write_bytes(reading.sign(KEY))
    return path


def test_show_decodes_a_reading(tmp_path: Path) -> None:
    done = crev("reading", "show", str(signed(tmp_path)))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["reading"]["seq"] == 3
    assert report["reading"]["energies_mwh"] == {
        "generation": 4000,
        "import": 100,
        "export": 40,
        "self": 3960,
        "demand": 4060,
    }
    assert report["envelope"]["kid"] == KEY.kid.hex()


def test_show_reads_hex_from_stdin_and_checks_the_signature(tmp_path: Path) -> None:
    hex_text = signed(tmp_path).read_bytes().hex().encode() + b"\n"
    done = crev("reading", "show", "-", "--pubkey", KEY.public_key.hex(), stdin=hex_text)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signature"] == "valid"

    wrong = SigningKey(bytes(32)).public_key.hex()
    done = crev("reading", "show", "-", "--pubkey", wrong, stdin=hex_text)
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "BAD_SIGNATURE"


def test_malformed_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\x00 not a reading")
    done = crev("reading", "show", str(junk))
    assert done.returncode == 2
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not a COSE_Sign1 reading" in lines[0]
    assert b"Traceback" not in done.stderr


def test_missing_file_and_bad_key_are_usage_errors(tmp_path: Path) -> None:
    done = crev("reading", "show", str(tmp_path / "absent.cose"))
    assert done.returncode == 2 and b"No such file" in done.stderr and b"Traceback" not in done.stderr
    done = crev("reading", "show", str(signed(tmp_path)), "--pubkey", "zz")
    assert done.returncode == 2 and b"--pubkey" in done.stderr
    done = crev("reading", "explode")
    assert done.returncode == 2 and len(done.stderr.decode().strip().splitlines()) == 1


def test_invalid_payload_is_reported_with_its_reason(tmp_path: Path) -> None:
    protected = cbor.dumps({1: -8, 4: KEY.kid})
    payload = cbor.dumps({0: 1, 1: "dgc-show-0001"})
    raw = cbor.dumps(cbor.Tag(18, [protected, {}, payload, KEY.sign(sig_structure(protected, payload))]))
    path = tmp_path / "partial.cose"
    path.write_bytes(raw)
    done = crev("reading", "show", str(path))
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False and report["reason"] == "BAD_SCHEMA"
    assert report["payload"] == {"0": 1, "1": "dgc-show-0001"}
