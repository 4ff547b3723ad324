"""crev.keyfile: the one key-file format for device, ledger and account keys (SPEC §7)."""

import os
import stat
from pathlib import Path

import pytest

from crev import keyfile
from crev.keyfile import KeyFileError, create_key, load_key
from crev.keys import SigningKey
from crev_cli import provision

# kind: the command each message names so the user knows how to make the file
COMMANDS = {
    "device": "crev gateway init --config FILE",
    "ledger": "crev ingest init --config FILE",
    "account": "crev registry keygen --out FILE",
}
# kind: the explanation of why an existing file is not replaced
KEPT = {
    "device": "a device keeps its key for life, so it is not replaced",
    "ledger": "the ledger key is never replaced (move it away to start a new ledger)",
    "account": "an account key is not replaced; use another file name",
}
KINDS = sorted(COMMANDS)


def _message(err: pytest.ExceptionInfo[KeyFileError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("kind", KINDS)
def test_create_then_load_gives_the_same_key(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "keys" / ("%s.key" % kind)  # the folder is made too
    created = create_key(path, kind)
    assert isinstance(created, SigningKey)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n") and bytes.fromhex(text[:64])
    assert load_key(path, kind).public_key == created.public_key
    assert load_key(str(path), kind).public_key == created.public_key  # any path-like


def test_each_key_is_fresh(tmp_path: Path) -> None:
    keys = {create_key(tmp_path / ("%d.key" % i), "account").public_key for i in range(3)}
    assert len(keys) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_an_existing_file_is_never_replaced(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "k.key"
    first = create_key(path, kind)
    before = path.read_bytes()
    with pytest.raises(KeyFileError) as err:
        create_key(path, kind)
    assert _message(err).startswith("%s already exists; " % path)
    assert KEPT[kind] in _message(err)
    assert path.read_bytes() == before
    assert load_key(path, kind).public_key == first.public_key


def test_an_existing_file_of_any_content_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path, "account")
    assert path.read_text() == "not a key\n"


def test_a_dangling_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    path = tmp_path / "k.key"
    path.symlink_to(target)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path, "device")
    assert not target.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_file_names_the_command_that_makes_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError) as err:
        load_key(path, kind)
    assert _message(err) == "%s key %s not found; create it with `%s`" % (kind, path, COMMANDS[kind])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "content",
    [
        "zz" * 32 + "\n",  # bad hex
        "0123456789abcdef" * 4 + "0\n",  # odd number of digits
        "ab" * 31 + "\n",  # 31 bytes
        "ab" * 33 + "\n",  # 33 bytes
        "",  # empty
        "é" * 64 + "\n",  # not ASCII
    ],
)
def test_anything_but_64_hex_digits_is_refused(tmp_path: Path, kind: str, content: str) -> None:
    path = tmp_path / "k.key"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as err:
        load_key(path, kind)
    assert _message(err) == "%s key %s is not 64 hex digits; was it edited or truncated?" % (kind, path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_a_key_others_may_read_is_refused(tmp_path: Path, kind: str, mode: int) -> None:
    path = tmp_path / "k.key"
    create_key(path, kind)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as err:
        load_key(path, kind)
    assert _message(err) == "%s key %s is readable by others; run `chmod 600 %s`" % (kind, path, path)
    path.chmod(0o600)  # the fix the message gives works
    load_key(path, kind)


def test_a_directory_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as err:
        load_key(tmp_path, "ledger")
    assert _message(err).startswith("cannot read ledger key %s: " % tmp_path)


def test_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(KeyFileError) as err:
        create_key(folder / "k.key", "account")
    assert _message(err).startswith("cannot create account key %s: " % (folder / "k.key"))


def test_a_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    with pytest.raises(KeyFileError) as err:
        create_key(tmp_path / "keys" / "k.key", "device")
    assert _message(err).startswith("cannot create device key %s: " % (tmp_path / "keys" / "k.key"))


def test_an_unknown_kind_is_our_misuse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        create_key(tmp_path / "k.key", "operator")
    assert not (tmp_path / "k.key").exists()
    with pytest.raises(ValueError, match="unknown kind"):
        load_key(tmp_path / "k.key", "operator")


def test_the_services_see_their_own_config_error(tmp_path: Path) -> None:
    import crev_gateway
    import crev_ingest
    from crev_gateway.keyfile import create_key as create_device_key
    from crev_gateway.keyfile import load_signing_key
    from crev_ingest.keyfile import create_key as create_ledger_key
    from crev_ingest.keyfile import load_key as load_ledger_key

    device = create_device_key(tmp_path / "device.key")
    assert load_signing_key(tmp_path / "device.key").public_key == device.public_key
    ledger = create_ledger_key(tmp_path / "ledger.key")
    assert load_ledger_key(tmp_path / "ledger.key").public_key == ledger.public_key

    with pytest.raises(crev_gateway.ConfigError, match="crev gateway init") as gw:
        load_signing_key(tmp_path / "absent.key")
    assert isinstance(gw.value.__cause__, KeyFileError)
    with pytest.raises(crev_gateway.ConfigError, match="keeps its key for life"):
        create_device_key(tmp_path / "device.key")
    with pytest.raises(crev_ingest.ConfigError, match="crev ingest init") as ing:
        load_ledger_key(tmp_path / "absent.key")
    assert isinstance(ing.value.__cause__, KeyFileError)
    with pytest.raises(crev_ingest.ConfigError, match="never replaced"):
        create_ledger_key(tmp_path / "ledger.key")


def test_the_key_file_module_is_never_copied_to_a_board() -> None:
    # The firmware keeps its key through dgc.keystore; this module needs CPython's os.
    assert "keyfile" not in provision.CORE_MODULES
    assert Path(keyfile.__file__).parent == provision.FIRMWARE_DIR / "crev"
    if not (provision.FIRMWARE_DIR / "lib" / "umqtt" / "simple.py").exists():
        pytest.skip("umqtt.simple is not fetched (make)")
    board_paths = [name for name, _ in provision.firmware_files({})]
    assert "/lib/crev/keys.py" in board_paths
    assert not [name for name in board_paths if name.endswith("keyfile.py")]
