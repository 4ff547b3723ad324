"""``crev witness init|run --config witness.toml`` (SPEC §7, §11)."""

from pathlib import Path

from crev import note
from crev_witness import config as witness_config
from crev_witness.keyfile import create_key


def init(config_path: Path) -> int:
    """Create the witness key; print the cosigner's verifier key (type 0x04)."""
    config = witness_config.load(config_path)
    key = create_key(config.key_path)
    vkey = note.VerifierKey(config.name, note.SIG_COSIGNATURE_V1, key.public_key).vkey()
    print("witness %s" % config.name)
    print("vkey    %s" % vkey)
    print("key     %s (mode 0600; logs and auditors need only the vkey above)" % config.key_path)
    return 0


def run(config_path: Path) -> int:
    from crev_witness.server import serve

    return serve(witness_config.load(config_path))
