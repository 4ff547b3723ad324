"""RFC 9162 Merkle maths against a naive implementation of the RFC's definitions."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from crev import merkle


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, written straight from the definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def build(leaves: list[bytes]) -> tuple[merkle.MerkleFrontier, dict[tuple[int, int], bytes]]:
    frontier = merkle.MerkleFrontier()
    nodes: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, value in frontier.append(merkle.leaf_hash(leaf)):
            nodes[(level, index)] = value
    return frontier, nodes


leaf_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(st.lists(st.binary(max_size=8), max_size=70))
def test_appended_root_equals_the_definition(leaves: list[bytes]) -> None:
    frontier, nodes = build(leaves)
    assert frontier.root() == mth(leaves)
    assert merkle.root_of(len(leaves), lambda level, index: nodes[(level, index)]) == mth(leaves)
    # Every prefix root is recomputable from the stored nodes alone.
    for size in range(len(leaves) + 1):
        assert merkle.root_of(size, lambda level, index: nodes[(level, index)]) == mth(leaves[:size])


@given(leaf_lists, st.data())
@settings(max_examples=200)
def test_inclusion_proofs_verify_and_bind(leaves: list[bytes], data: st.DataObject) -> None:
    _, nodes = build(leaves)
    size = data.draw(st.integers(min_value=1, max_value=len(leaves)))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    path = merkle.inclusion_path(index, size, lambda level, i: nodes[(level, i)])
    root = mth(leaves[:size])
    leaf = merkle.leaf_hash(leaves[index])
    assert merkle.verify_inclusion(leaf, index, size, path, root)
    assert not merkle.verify_inclusion(merkle.leaf_hash(leaves[index] + b"x"), index, size, path, root)
    if size > 1:
        assert (
            not merkle.verify_inclusion(leaf, (index + 1) % size, size, path, root)
            or leaves[(index + 1) % size] == leaves[index]
        )
        bad = list(path)
        bad[0] = bytes(32)
        assert not merkle.verify_inclusion(leaf, index, size, bad, root)


@given(leaf_lists, st.data())
@settings(max_examples=200)
def test_consistency_proofs_verify_and_bind(leaves: list[bytes], data: st.DataObject) -> None:
    _, nodes = build(leaves)
    new = data.draw(st.integers(min_value=1, max_value=len(leaves)))
    old = data.draw(st.integers(min_value=1, max_value=new))
    path = merkle.consistency_path(old, new, lambda level, i: nodes[(level, i)])
    old_root, new_root = mth(leaves[:old]), mth(leaves[:new])
    assert merkle.verify_consistency(old, new, path, old_root, new_root)
    if old < new:
        assert not merkle.verify_consistency(old, new, path, mth([*leaves[: old - 1], b"forged"]), new_root)
        assert not merkle.verify_consistency(old, new, path, old_root, mth([*leaves[: new - 1], b"forged"]))
        if path:
            assert not merkle.verify_consistency(old, new, path[:-1], old_root, new_root)


def test_shared_merkle_vectors_verify() -> None:
    import runner

    for case_id, result in runner.run_merkle():
        assert result["inclusion_ok"] is True, case_id
        assert result["consistency_ok"] is True, case_id
