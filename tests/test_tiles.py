"""The log as C2SP tlog-tiles, read as a monitor would: the tree rebuilt from the level-0
tiles must give the signed checkpoint's root, the entry bundles must hash to those tiles, and
bad paths are refused. Also the append path's batching (issue 18): many appends in one
transaction, read back in it, and proofs served through the upper-level cache."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from sqlalchemy import func, select

from marketplace_ext import certlog, merkle, tiles
from marketplace_ext.errors import InvalidField, NotFound
from marketplace_ext.orm import LogEntry, write_transaction

SIZE = 600  # two full level-0 tiles and a partial one of 88; a partial level-1 tile of 2


@pytest.fixture
def tlog(tmp_path):
    return certlog.TransparencyLog("test.example/log", tmp_path / "log.key")


@pytest.fixture
def log600(session_factory, tlog):
    with session_factory() as s:
        write_transaction(s)
        indices = [certlog.append(s, "order", "alice", "a", f"order:{i}", n=i)
                   for i in range(SIZE)]
        # the same transaction reads its own appends (they are written before any query)
        assert s.scalar(select(func.count()).select_from(LogEntry)) == SIZE
        s.commit()
    assert indices == list(range(SIZE))
    with session_factory() as s:
        write_transaction(s)
        assert tlog.integrate(s) == SIZE
        s.commit()
    return session_factory


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162's Merkle tree hash over leaf hashes, written out naively (the reference)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(hashes[:k]) + mth(hashes[k:])).digest()


def fetch(session_factory, path: str) -> bytes:
    with session_factory() as s:
        return tiles.read_tile(s, tiles.parse_tile_path(path))


def test_index_paths_round_trip():
    assert tiles.format_index(0) == "000"
    assert tiles.format_index(1234067) == "x001/x234/067"
    assert tiles.format_index(1000) == "x001/000"
    for n in (0, 7, 999, 1000, 1001, 256_000, 10**9 + 5):
        for level in (0, 3, "entries"):
            for width in (1, 17, 256):
                tile = tiles.parse_tile_path(tiles.tile_path(level, n, width))
                assert (tile.level, tile.index, tile.width) == (level, n, width)


@pytest.mark.parametrize("path", [
    "", "0", "0/", "8/000", "-1/000", "entries", "0/1", "0/0001", "0/x000", "0/001/002",
    "0/x1/002", "0/000.p/0", "0/000.p/256", "0/000.p/007", "0/000.p/", "0/000.q/1",
    "0/x000/001",  # not canonical: leading zero groups
    "a/000", "0/000/", "0/../000",
])
def test_malformed_paths_are_400_naming_path(path):
    with pytest.raises(InvalidField) as e:
        tiles.parse_tile_path(path)
    assert e.value.field == "path"


def test_a_monitor_rebuilds_the_checkpoint_from_tiles(log600, tlog):
    with log600() as s:
        checkpoint = tlog.checkpoint(s)
    assert checkpoint["size"] == SIZE
    leaves = (fetch(log600, "0/000") + fetch(log600, "0/001")
              + fetch(log600, f"0/002.p/{SIZE - 512}"))
    hashes = [leaves[i:i + 32] for i in range(0, len(leaves), 32)]
    assert len(hashes) == SIZE
    assert base64.b64encode(mth(hashes)).decode() == checkpoint["root"]
    # level 1 holds the roots of the full level-0 tiles
    level1 = fetch(log600, "1/000.p/2")
    assert level1 == mth(hashes[:256]) + mth(hashes[256:512])
    # each bundled entry hashes to its leaf in the level-0 tile
    bundle = fetch(log600, "entries/001")
    entries, at = [], 0
    while at < len(bundle):
        (length,) = struct.unpack(">H", bundle[at:at + 2])
        entries.append(bundle[at + 2:at + 2 + length])
        at += 2 + length
    assert len(entries) == 256
    assert [merkle.leaf_hash(e) for e in entries] == hashes[256:512]
    # the public part only: the salted commitment, never the details
    assert b"alice" not in bundle and b'"n"' not in bundle


def test_an_older_width_is_served_and_tiles_beyond_the_tree_are_404(log600):
    assert fetch(log600, "0/002.p/5") == fetch(log600, f"0/002.p/{SIZE - 512}")[:5 * 32]
    for path in ("0/002", f"0/002.p/{SIZE - 511}", "0/003.p/1", "1/000", "1/000.p/3",
                 "2/000.p/1", "entries/003.p/1", "entries/x001/000"):
        with pytest.raises(NotFound) as e:
            fetch(log600, path)
        assert e.value.field == "path", path


def test_proofs_through_the_upper_level_cache_match_the_tree(log600, tlog, tmp_path):
    with log600() as s:
        root = base64.b64decode(tlog.checkpoint(s)["root"])
        for index in (0, 255, 256, 300, 511, 599):
            proof = [base64.b64decode(h) for h in tlog.inclusion(s, index, SIZE)["proof"]]
            leaf = base64.b64decode(tlog.entry(s, index)["leaf_hash"])
            assert merkle.verify_inclusion(leaf, index, SIZE, proof, root)
        assert tlog.upper_nodes.loaded and (8, 0) in tlog.upper_nodes.nodes
        old_root = base64.b64decode(tlog.checkpoint(s, SIZE)["root"])
        # a second log object (a restart) without its cache gives the same proofs
        fresh = certlog.TransparencyLog("test.example/log", tmp_path / "log.key")
        assert fresh.inclusion(s, 300, SIZE) == tlog.inclusion(s, 300, SIZE)
        assert fresh.consistency(s, 257, SIZE) == tlog.consistency(s, 257, SIZE)
    assert old_root == root
