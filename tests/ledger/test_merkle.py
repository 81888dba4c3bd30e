"""The Merkle tree is RFC 9162 §2.1 exactly: public vectors, a reference, and random trees.

Vectors: transparency-dev/merkle, proof/verify_test.go (inclusionProofs, consistencyProofs,
roots, leaves; the roots originally from google/certificate-transparency
cpp/merkletree/merkle_tree_test.cc). In those vectors a proof's ``leaf`` is 1-based.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekisho.ledger import merkle
from sekisho.ledger.merkle import ProofError

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes.fromhex("5051525354555657"),
    bytes.fromhex("606162636465666768696a6b6c6d6e6f"),
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


INCLUSION = [  # (1-based leaf, tree size, proof)
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (3, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        2,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


class StoredTree:
    """A tree built the way the ledger builds it: leaves appended, complete subtrees stored."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaf_hashes = [merkle.leaf_hash(x) for x in leaves]
        self.stored: dict[merkle.NodeKey, bytes] = {}
        self.edge = merkle.CompactRange.empty()
        for i, h in enumerate(self.leaf_hashes):
            self.stored[(0, i)] = h
            for level, idx, node in self.edge.append(h):
                self.stored[(level, idx)] = node

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return merkle.proof_from_hashes(merkle.inclusion_ranges(index, size), self.stored)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return merkle.proof_from_hashes(merkle.consistency_ranges(old, new), self.stored)

    def root(self, size: int) -> bytes:
        return merkle.root_from_hashes(size, self.stored)


VECTOR_TREE = StoredTree(LEAVES)


def test_empty_tree_hash_is_sha256_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    assert merkle.CompactRange.empty().root() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_published_vectors(size: int) -> None:
    assert VECTOR_TREE.root(size) == ROOTS[size - 1]
    assert merkle.reference_root(VECTOR_TREE.leaf_hashes[:size]) == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(
    leaf: int, size: int, proof: list[bytes]
) -> None:
    assert VECTOR_TREE.inclusion(leaf - 1, size) == proof
    merkle.verify_inclusion(
        leaf - 1, size, VECTOR_TREE.leaf_hashes[leaf - 1], proof, ROOTS[size - 1]
    )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(
    old: int, new: int, proof: list[bytes]
) -> None:
    assert VECTOR_TREE.consistency(old, new) == proof
    merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def _inclusion_fails(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        merkle.verify_inclusion(index, size, leaf, proof, root)
    except ProofError:
        return True
    return False


def _consistency_fails(old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes]) -> bool:
    try:
        merkle.verify_consistency(old, new, r1, r2, proof)
    except ProofError:
        return True
    return False


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_are_rejected(leaf: int, size: int, proof: list[bytes]) -> None:
    # The corruptions of transparency-dev/merkle's corruptInclusionProof.
    index, root, lh = leaf - 1, ROOTS[size - 1], VECTOR_TREE.leaf_hashes[leaf - 1]
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [
        (index - 1, size, lh, proof, root),
        (index + 1, size, lh, proof, root),
        (index ^ 2, size, lh, proof, root),
        (index, size * 2, lh, proof, root),
        (index, size // 2, lh, proof, root),
        (index, size, b"WrongLeaf", proof, root),
        (index, size, lh, proof, merkle.EMPTY_ROOT),
        (index, size, lh, proof, some),
        (index, size, lh, [*proof, b""], root),
        (index, size, lh, [*proof, root], root),
        (index, size, lh, [b"", *proof], root),
        (index, size, lh, [root, *proof], root),
        (index, size, lh, proof[:-1], root),
        (index, size, lh, [proof[0], some, *proof[1:]], root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((index, size, lh, flipped, root))
    for probe in probes:
        if probe[0] < 0:
            continue
        assert _inclusion_fails(*probe), probe


@pytest.mark.parametrize(("old", "new", "proof"), [c for c in CONSISTENCY if c[2]])
def test_corrupted_consistency_proofs_are_rejected(old: int, new: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((old, new, r1, r2, flipped))
    for probe in probes:
        assert _consistency_fails(*probe), probe[:2]


def test_degenerate_consistency_cases_follow_the_rfc() -> None:
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    merkle.verify_consistency(0, 0, a, a, [])
    merkle.verify_consistency(0, 5, a, b, [])  # everything extends the empty tree
    merkle.verify_consistency(3, 3, b, b, [])
    assert _consistency_fails(3, 3, a, b, [])  # two roots for one size: a fork
    assert _consistency_fails(2, 1, a, b, [])  # time travel
    assert _consistency_fails(1, 2, a, b, [])  # a real step needs a proof
    assert _consistency_fails(0, 1, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [merkle.EMPTY_ROOT])


def test_inclusion_outside_the_tree_is_refused() -> None:
    leaf = merkle.leaf_hash(b"x")
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        assert _inclusion_fails(index, size, leaf, [], leaf)
    with pytest.raises(ProofError):
        merkle.inclusion_ranges(5, 5)


TREE_64 = StoredTree([i.to_bytes(2, "big") for i in range(64)])


@pytest.mark.parametrize("size", range(1, 65))
def test_every_proof_of_every_size_up_to_64_matches_the_rfc_reference(size: int) -> None:
    leaves = TREE_64.leaf_hashes[:size]
    root = TREE_64.root(size)
    assert root == merkle.reference_root(leaves)
    for index in range(size):
        proof = TREE_64.inclusion(index, size)
        assert proof == merkle.reference_inclusion(index, leaves)
        merkle.verify_inclusion(index, size, leaves[index], proof, root)
    for old in range(size + 1):
        proof = TREE_64.consistency(old, size)
        assert proof == merkle.reference_consistency(old, leaves)
        merkle.verify_consistency(old, size, TREE_64.root(old), root, proof)


def _flip(proof: list[bytes], bit: int) -> list[bytes]:
    i, rest = divmod(bit, 256)
    flipped = list(proof)
    flipped[i] = bytearray(flipped[i])
    flipped[i][rest // 8] ^= 1 << (rest % 8)
    flipped[i] = bytes(flipped[i])
    return flipped


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 700), data=st.data())
def test_random_inclusion_proofs_verify_and_any_bit_flip_breaks_them(
    size: int, data: st.DataObject
) -> None:
    tree = StoredTree([f"leaf {i}".encode() for i in range(size)])
    index = data.draw(st.integers(0, size - 1))
    tree_size = data.draw(st.integers(max(index + 1, 2), size))
    proof = tree.inclusion(index, tree_size)
    root = tree.root(tree_size)
    merkle.verify_inclusion(index, tree_size, tree.leaf_hashes[index], proof, root)
    bit = data.draw(st.integers(0, len(proof) * 256 - 1))
    assert _inclusion_fails(index, tree_size, tree.leaf_hashes[index], _flip(proof, bit), root)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 700), data=st.data())
def test_random_consistency_proofs_verify_and_any_bit_flip_breaks_them(
    size: int, data: st.DataObject
) -> None:
    tree = StoredTree([f"leaf {i}".encode() for i in range(size)])
    old = data.draw(st.integers(1, size - 1))
    new = data.draw(st.integers(old + 1, size))
    proof = tree.consistency(old, new)
    r1, r2 = tree.root(old), tree.root(new)
    merkle.verify_consistency(old, new, r1, r2, proof)
    bit = data.draw(st.integers(0, len(proof) * 256 - 1))
    assert _consistency_fails(old, new, r1, r2, _flip(proof, bit))


def test_a_proof_reads_logarithmically_many_stored_hashes() -> None:
    size = 10_000_000
    for index in (0, 1234567, size - 1):
        assert len(merkle.keys_for(merkle.inclusion_ranges(index, size))) <= 2 * 24
    assert len(merkle.keys_for(merkle.consistency_ranges(3_333_333, size))) <= 2 * 24
