"""The log as C2SP tlog-tiles (https://c2sp.org/tlog-tiles), so any tiles client can mirror it.

A tile at level L, index N holds the hashes of the tree nodes at height 8·L numbered 256·N up to
256·N + 255: level 0 tiles are leaf hashes, higher levels hashes of complete subtrees of 256^L
leaves. A partial tile (``.p/W``) holds the first W of them, for the right edge of the tree.
Entry bundles (``tile/entries/N``) hold the entries themselves, each prefixed by its length as
a big-endian uint16. Tiles are served only up to the latest published checkpoint, so every byte
a mirror fetches is covered by a signed tree head, and a full tile never changes.

The node hashes come straight from what the sequencer stores (complete subtrees by level and
index), so serving a tile is one range read.
"""

from __future__ import annotations

import re
import struct

from sekisho.errors import NotFound
from sekisho.ledger.storage import Storage

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_MAX_ENTRY = 0xFFFF

# tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>], N as 3-digit groups: x001/x234/067
_PATH = re.compile(
    r"^tile/(?P<level>entries|[0-9]{1,2})/(?P<index>(?:x[0-9]{3}/)*[0-9]{3})(?:\.p/(?P<width>[0-9]{1,3}))?$"
)


class TileRequest:
    __slots__ = ("index", "level", "width")

    def __init__(self, level: int | None, index: int, width: int) -> None:
        self.level = level  # None: an entry bundle
        self.index = index
        self.width = width


def parse_path(path: str) -> TileRequest:
    """Parse ``tile/...`` as C2SP tlog-tiles writes it; NotFound for anything else."""
    m = _PATH.match(path)
    if m is None:
        raise NotFound(f"{path!r} is not a tlog-tiles path", code="ledger_tile_not_found")
    groups = m.group("index").split("/")
    if any(not g.startswith("x") for g in groups[:-1]):
        raise NotFound(f"{path!r} is not a tlog-tiles path", code="ledger_tile_not_found")
    index = int("".join(g.removeprefix("x") for g in groups))
    width = TILE_WIDTH
    if m.group("width") is not None:
        width = int(m.group("width"))
        if not 1 <= width < TILE_WIDTH:
            raise NotFound(
                f"partial tile width {width} is not 1..255", code="ledger_tile_not_found"
            )
    level = None if m.group("level") == "entries" else int(m.group("level"))
    return TileRequest(level, index, width)


def tile_path(level: int | None, index: int, width: int = TILE_WIDTH) -> str:
    """The path a tiles client asks for (inverse of ``parse_path``)."""
    digits = f"{index:03d}"
    if len(digits) % 3:
        digits = "0" * (3 - len(digits) % 3) + digits
    parts = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    encoded = "/".join([f"x{p}" for p in parts[:-1]] + [parts[-1]])
    name = "entries" if level is None else str(level)
    suffix = f".p/{width}" if width < TILE_WIDTH else ""
    return f"tile/{name}/{encoded}{suffix}"


def read_tile(storage: Storage, request: TileRequest, tree_size: int) -> bytes:
    """The tile's bytes, if the tree of ``tree_size`` (the latest checkpoint) has them all."""
    height = 0 if request.level is None else request.level * TILE_HEIGHT
    nodes_at_height = tree_size >> height
    start = request.index * TILE_WIDTH
    end = start + request.width
    if end > nodes_at_height:
        raise NotFound(
            f"the tree of size {tree_size} has no such tile (yet)", code="ledger_tile_not_found"
        )
    if request.level is None:
        rows = storage.scan(start, end)
        if len(rows) != request.width:
            raise NotFound("entries are missing from storage", code="ledger_tile_not_found")
        out = bytearray()
        for _, leaf, _, _, _ in rows:
            if len(leaf) > _MAX_ENTRY:
                raise NotFound("an entry is too large for a bundle", code="ledger_tile_not_found")
            out += struct.pack(">H", len(leaf)) + leaf
        return bytes(out)
    if height == 0:
        hashes = [h for _, _, h, _, _ in storage.scan(start, end)]
    else:
        found = storage.nodes_in(height, start, end)
        hashes = [found[i] for i in range(start, end) if i in found]
    if len(hashes) != request.width:
        raise NotFound("tile hashes are missing from storage", code="ledger_tile_not_found")
    return b"".join(hashes)
