"""The log served as C2SP tlog-tiles: paths as the spec writes them, and tiles from which a
mirror recomputes exactly the signed root."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sekisho.errors import NotFound
from sekisho.ledger import merkle
from sekisho.ledger.storage import NewEntry, open_storage
from sekisho.ledger.tiles import TILE_WIDTH, parse_path, read_tile, tile_path


@pytest.mark.parametrize(
    ("level", "index", "width", "path"),
    [
        (0, 0, 256, "tile/0/000"),
        (0, 1234067, 256, "tile/0/x001/x234/067"),
        (1, 5, 17, "tile/1/005.p/17"),
        (None, 42, 256, "tile/entries/042"),
        (None, 1000, 3, "tile/entries/x001/000.p/3"),
    ],
)
def test_paths_follow_the_spec_both_ways(
    level: int | None, index: int, width: int, path: str
) -> None:
    assert tile_path(level, index, width) == path
    req = parse_path(path)
    assert (req.level, req.index, req.width) == (level, index, width)


@pytest.mark.parametrize(
    "bad", ["tile/0/1", "tile/0/001/002", "tile/0/000.p/0", "tile/0/000.p/256", "tile/a/000"]
)
def test_malformed_paths_are_not_found(bad: str) -> None:
    with pytest.raises(NotFound):
        parse_path(bad)


def test_a_mirror_rebuilds_the_root_from_tiles(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.initialise("test/tiles")
    leaves = [f"entry {i}".encode() for i in range(600)]
    storage.sequence([NewEntry(x, merkle.leaf_hash(x), None, None) for x in leaves])
    size = 600
    hashes = [merkle.leaf_hash(x) for x in leaves]

    # level 0: two full tiles and a partial one of the last 88 leaves
    got = read_tile(storage, parse_path("tile/0/001"), size)
    assert got == b"".join(hashes[256:512])
    got = read_tile(storage, parse_path("tile/0/002.p/88"), size)
    assert got == b"".join(hashes[512:600])
    # level 1: the two complete 256-leaf subtrees
    level1 = read_tile(storage, parse_path("tile/1/000.p/2"), size)
    assert level1[:32] == merkle.reference_root(hashes[:256])
    assert level1[32:] == merkle.reference_root(hashes[256:512])
    # what a tiles client does: root = hash(subtree(0..512), rest from the partial tile)
    rest = merkle.reference_root(hashes[512:600])
    top = merkle.node_hash(merkle.node_hash(level1[:32], level1[32:]), rest)
    assert top == merkle.reference_root(hashes)
    # entry bundle: uint16 length-prefixed entries
    bundle = read_tile(storage, parse_path("tile/entries/002.p/88"), size)
    out, pos = [], 0
    while pos < len(bundle):
        (n,) = struct.unpack(">H", bundle[pos : pos + 2])
        out.append(bundle[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert out == leaves[512:600]
    # beyond the signed size, nothing: a full tile that does not exist yet, a too-wide partial
    with pytest.raises(NotFound):
        read_tile(storage, parse_path("tile/0/002"), size)
    with pytest.raises(NotFound):
        read_tile(storage, parse_path("tile/0/002.p/89"), size)
    with pytest.raises(NotFound):
        read_tile(storage, parse_path("tile/0/001"), 300)  # only what the checkpoint covers
    assert TILE_WIDTH == 256
    storage.close()


def test_tiles_are_served_mirrored_and_only_auditors_read_entry_bundles(tmp_path: Path) -> None:
    from harness import request, start_example
    from sekisho.ledger.checkpoint import Checkpoint

    h = start_example(tmp_path)
    try:
        key = h.key()
        for _ in range(5):
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
            r = request("POST", h.base_url + "/chat/completions", json_body=body,
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 200
        h.call(_checkpoint_now(h))
        note = request("GET", h.root + "/ledger/checkpoint").text
        cp = Checkpoint.parse(note.partition("\n\n")[0] + "\n")
        assert cp.size >= 10
        tile = request("GET", h.root + "/ledger/" + tile_path(0, 0, cp.size))  # no key needed
        assert tile.status_code == 200
        assert tile.headers["content-type"] == "application/octet-stream"
        leaves = [tile.content[i : i + 32] for i in range(0, len(tile.content), 32)]
        assert merkle.reference_root(leaves) == cp.root_hash
        # Entry bundles hold every tenant's entries: auditors only.
        bundle_url = h.root + "/ledger/" + tile_path(None, 0, cp.size)
        assert request("GET", bundle_url).status_code == 401
        refused = request("GET", bundle_url, headers={"authorization": f"Bearer {key}"})
        assert refused.status_code == 403 and "ledger.read" in refused.json()["error"]["message"]
        auditor = h.key(role="auditor")
        got = request("GET", bundle_url, headers={"authorization": f"Bearer {auditor}"})
        assert got.status_code == 200 and got.headers["cache-control"] == "private, no-store"
        bundle = got.content
        first_len = struct.unpack(">H", bundle[:2])[0]
        assert merkle.leaf_hash(bundle[2 : 2 + first_len]) == leaves[0]
        missing = request("GET", h.root + "/ledger/tile/0/001")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "ledger_tile_not_found"
    finally:
        h.stop()


async def _checkpoint_now(h: object) -> None:
    import asyncio

    await asyncio.to_thread(h.gateway.ledger.checkpoint_now)  # type: ignore[attr-defined]
