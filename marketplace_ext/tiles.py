"""The log served as C2SP tlog-tiles (https://c2sp.org/tlog-tiles), so standard tooling and
third-party monitors can mirror and check it without our JSON API.

- ``checkpoint``: the latest signed checkpoint note, with its witnesses' cosignatures.
- ``tile/<L>/<N>``: the 256 hashes (32 bytes each, concatenated) of the tree nodes at height
  ``8*L``, indices ``256*N`` to ``256*N + 255``; ``tile/<L>/<N>.p/<W>`` the first ``W`` of
  them, while the tile is not yet full. Level 0 holds the leaf hashes.
- ``tile/entries/<N>[.p/<W>]``: the entries at those leaf indices, each as a 16-bit big-endian
  length followed by the bytes the leaf hashes (an entry's public part: type, time and the
  salted commitment to its details; see :mod:`marketplace_ext.logentry`).

``N`` is written in groups of three digits, every group but the last prefixed with ``x``
(1234067 is ``x001/x234/067``). Everything here reads the stored nodes and entries of the
latest checkpoint's tree; nothing writes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .errors import InvalidField, NotFound
from .orm import LogCheckpoint, LogEntry

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256
MAX_LEVEL = 7  # 8 * 7 = 56 tree levels: more than any log here will reach

_INDEX = re.compile(r"^(?:x\d{3}/)*\d{3}$")
_PARTIAL = re.compile(r"^(?P<index>.+?)(?:\.p/(?P<width>\d{1,3}))?$")


@dataclass(frozen=True)
class TilePath:
    """A parsed tile path: ``level`` is ``"entries"`` for an entry bundle, else 0..7."""

    level: int | str
    index: int
    width: int  # 256 for a full tile

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH


def format_index(n: int) -> str:
    """``N`` in the tile path's groups of three digits (``x001/x234/067``)."""
    if n < 0:
        raise ValueError("a tile index is never negative")
    groups = []
    while True:
        n, group = divmod(n, 1000)
        groups.append(f"{group:03d}")
        if n == 0:
            break
    groups.reverse()
    return "/".join([f"x{g}" for g in groups[:-1]] + groups[-1:])


def tile_path(level: int | str, index: int, width: int = TILE_WIDTH) -> str:
    """The path (after ``tile/``) of a tile; the inverse of :func:`parse_tile_path`."""
    path = f"{level}/{format_index(index)}"
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def parse_tile_path(path: str) -> TilePath:
    """Parse what follows ``tile/``; a malformed path is a 400 naming ``path``."""
    level_part, _, rest = path.partition("/")
    if level_part == "entries":
        level: int | str = "entries"
    elif re.fullmatch(r"\d", level_part) and int(level_part) <= MAX_LEVEL:
        level = int(level_part)
    else:
        raise InvalidField(f"tile level must be 0..{MAX_LEVEL} or 'entries', not "
                           f"{level_part[:20]!r}", "path")
    match = _PARTIAL.match(rest)
    if not match or not _INDEX.match(match["index"]):
        raise InvalidField("tile index must be groups of three digits, all but the last "
                           "prefixed with 'x' (x001/x234/067), optionally followed by .p/<W>",
                           "path")
    index = int("".join(g.lstrip("x") for g in match["index"].split("/")))
    width = TILE_WIDTH
    if match["width"] is not None:
        width = int(match["width"])
        if not 1 <= width < TILE_WIDTH or match["width"] != str(width):
            raise InvalidField(f"a partial tile's width must be 1..{TILE_WIDTH - 1}, written "
                               "without leading zeros", "path")
    if tile_path(level, index, width) != path:  # one spelling per tile: caches rely on it
        raise InvalidField("tile path is not in its canonical form", "path")
    return TilePath(level, index, width)


def latest_size(session: Session) -> int:
    """The size of the latest checkpoint's tree (0 before the first one)."""
    size = session.scalar(select(LogCheckpoint.size).order_by(LogCheckpoint.size.desc())
                          .limit(1))
    return size or 0


def _available(tile: TilePath, size: int) -> None:
    """A tile exists for ``size`` when its nodes do: a full tile once all 256 are complete, a
    partial one of width W once W are (a client at an older checkpoint still gets the width
    it asks for: the first W hashes never change)."""
    height = 0 if tile.level == "entries" else TILE_HEIGHT * int(tile.level)
    nodes = size >> height  # complete subtrees at that height
    have = nodes - tile.index * TILE_WIDTH
    if have <= 0:
        raise NotFound(f"tile {tile_path(tile.level, tile.index, tile.width)} is beyond the "
                       f"tree (size {size})", "path")
    if tile.partial and have < tile.width:
        raise NotFound(f"the tree (size {size}) has only {have} hashes in this tile, not "
                       f"{tile.width}", "path")
    if not tile.partial and have < TILE_WIDTH:
        raise NotFound(f"tile is not full yet ({have} of {TILE_WIDTH}); fetch "
                       f"{tile_path(tile.level, tile.index, have)}", "path")


def read_tile(session: Session, tile: TilePath) -> bytes:
    """The tile's bytes as of the latest checkpoint (404 naming ``path`` when it does not
    exist at that size)."""
    size = latest_size(session)
    _available(tile, size)
    first = tile.index * TILE_WIDTH
    last = first + tile.width - 1
    if tile.level == "entries":
        rows = session.execute(select(LogEntry.idx, LogEntry.data)
                               .where(LogEntry.idx.between(first, last))
                               .order_by(LogEntry.idx)).all()
        _check_dense([idx for idx, _ in rows], first, tile.width)
        out = bytearray()
        for _, data in rows:
            raw = data.encode()
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)
    rows = session.execute(
        text("SELECT idx, hash FROM log_nodes WHERE level = :level AND idx BETWEEN :first "
             "AND :last ORDER BY idx"),
        {"level": TILE_HEIGHT * int(tile.level), "first": first, "last": last}).all()
    _check_dense([idx for idx, _ in rows], first, tile.width)
    return b"".join(bytes.fromhex(h) for _, h in rows)


def _check_dense(indices: list[int], first: int, width: int) -> None:
    if indices != list(range(first, first + width)):
        # the checkpoint covers them, so the store lost some: the log's fault, not the caller's
        raise RuntimeError(f"log store is missing rows in [{first}, {first + width})")
