"""The Merkle tree of RFC 9162 §2.1 (the Certificate Transparency 2.0 tree), with SHA-256.

A tree of ``n`` leaves is described by its *complete subtrees*: ``(level, index)`` names the hash
of leaves ``[index << level, (index + 1) << level)``. Those hashes never change once written, so
the ledger stores them as it appends and any proof is a handful of them (O(log n) reads).

Proof *generation* here works in two steps so storage can fetch everything in one query:
``inclusion_ranges`` / ``consistency_ranges`` say which subtree ranges the proof is made of, in
proof order, ``subtree_keys`` splits each range into stored complete subtrees, and
``proof_from_hashes`` folds the fetched hashes. Proof *verification* follows the algorithms of
RFC 9162 §2.1.3.2 and §2.1.4.2 literally.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

HASH_SIZE = 32
MAX_SIZE = 2**64 - 1
"""The largest tree size or index: C2SP and Go's tlog tooling read them as unsigned 64 bits."""
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeKey = tuple[int, int]
"""``(level, index)``: the complete subtree over leaves ``[index << level, (index+1) << level)``."""

Range = tuple[int, int]
"""``(start, end)``: leaves ``[start, end)``."""


class ProofError(ValueError):
    """A proof was asked for sizes or indices that do not exist, or does not verify."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``), RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


# --- which ranges a proof is made of ------------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The leaf ranges whose tree hashes form PATH(index, D[0:size]), leaf's sibling first."""
    if not 0 <= index < size:
        raise ProofError(f"no leaf {index} in a tree of size {size}")
    ranges: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split_point(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start = start + k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """The leaf ranges whose tree hashes form PROOF(old_size, D[0:new_size]) (RFC 9162 §2.1.4.1)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    ranges: list[Range] = []
    start, end, m, complete = 0, new_size, old_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                ranges.append((start, end))
            break
        k = _split_point(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    ranges.reverse()
    return ranges


def subtree_keys(start: int, end: int) -> list[NodeKey]:
    """Split ``[start, end)`` into aligned complete subtrees, largest (leftmost) first."""
    keys: list[NodeKey] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """The tree hash of a range from its complete subtrees (descending sizes): right to left."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def keys_for(ranges: Iterable[Range]) -> list[NodeKey]:
    """Every stored subtree a list of ranges needs, without duplicates."""
    seen: dict[NodeKey, None] = {}
    for start, end in ranges:
        for key in subtree_keys(start, end):
            seen[key] = None
    return list(seen)


def proof_from_hashes(ranges: Sequence[Range], stored: Mapping[NodeKey, bytes]) -> list[bytes]:
    """Fold fetched complete-subtree hashes into one hash per range."""
    try:
        return [fold_right([stored[k] for k in subtree_keys(a, b)]) for a, b in ranges]
    except KeyError as missing:
        raise ProofError(f"the tree store has no hash for subtree {missing.args[0]}") from None


def root_from_hashes(size: int, stored: Mapping[NodeKey, bytes]) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return proof_from_hashes([(0, size)], stored)[0]


# --- the append side: the right edge of the tree ------------------------------------------------


@dataclass(slots=True)
class CompactRange:
    """The complete subtrees covering ``[0, size)``: all a sequencer needs to keep appending.

    ``append`` returns the new complete subtrees (level >= 1) the leaf completes, which is what
    the ledger stores next to the leaf so that proofs never have to recompute anything.
    """

    size: int
    edge: list[tuple[int, bytes]]  # (level, hash), levels strictly decreasing

    @classmethod
    def empty(cls) -> CompactRange:
        return cls(0, [])

    @classmethod
    def load(
        cls, size: int, fetch: Callable[[list[NodeKey]], Mapping[NodeKey, bytes]]
    ) -> CompactRange:
        keys = subtree_keys(0, size)
        stored = fetch(keys)
        try:
            return cls(size, [(level, stored[(level, idx)]) for level, idx in keys])
        except KeyError as missing:
            raise ProofError(f"the tree store has no hash for subtree {missing.args[0]}") from None

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        created: list[tuple[int, int, bytes]] = []
        h, level, idx = leaf, 0, self.size
        while self.edge and self.edge[-1][0] == level:
            _, left = self.edge.pop()
            h = node_hash(left, h)
            level += 1
            idx >>= 1
            created.append((level, idx, h))
        self.edge.append((level, h))
        self.size += 1
        return created

    def root(self) -> bytes:
        if not self.edge:
            return EMPTY_ROOT
        return fold_right([h for _, h in self.edge])


# --- reference implementation straight from the RFC's recursive definitions ---------------------


def reference_root(leaf_hashes: Sequence[bytes]) -> bytes:
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split_point(n)
    return node_hash(reference_root(leaf_hashes[:k]), reference_root(leaf_hashes[k:]))


def reference_inclusion(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    n = len(leaf_hashes)
    if n <= 1:
        return []
    k = _split_point(n)
    if index < k:
        return [*reference_inclusion(index, leaf_hashes[:k]), reference_root(leaf_hashes[k:])]
    return [*reference_inclusion(index - k, leaf_hashes[k:]), reference_root(leaf_hashes[:k])]


def reference_consistency(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    def subproof(m: int, d: Sequence[bytes], complete: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if complete else [reference_root(d)]
        k = _split_point(n)
        if m <= k:
            return [*subproof(m, d[:k], complete), reference_root(d[k:])]
        return [*subproof(m - k, d[k:], False), reference_root(d[:k])]

    if old_size == 0 or old_size == len(leaf_hashes):
        return []
    return subproof(old_size, leaf_hashes, True)


# --- verification: RFC 9162 §2.1.3.2 and §2.1.4.2 -----------------------------------------------


def _check_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (raises ``ProofError`` if its shape is wrong)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hashes([leaf, *proof])
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` puts leaf hash ``leaf`` at ``index`` under ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(
            f"inclusion proof for leaf {index} does not lead to the root of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows tree ``old`` is a prefix of tree ``new``."""
    if old_size > new_size:
        raise ProofError(f"tree size went backwards: {old_size} > {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError(f"empty consistency proof from size {old_size} to {new_size}")
    _check_hashes(proof)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the trees are deep")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})")
