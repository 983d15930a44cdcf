"""The certification log in the database (SQLite and PostgreSQL): sequencing in the action's
transaction, integration, proofs after a restart, cosignatures, and tampering caught by fsck
and by proof verification."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import select, update

from marketplace_ext import certlog, dbutil, merkle
from marketplace_ext.errors import InvalidField, NotFound
from marketplace_ext.orm import (
    LogEntry,
    LogNode,
    make_engine,
    make_session_factory,
    write_transaction,
)
from marketplace_ext.witness import WitnessState


@pytest.fixture
def factory(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def tlog(tmp_path):
    state = WitnessState(tmp_path / "w1")
    vkey = state.init("w1")
    log = certlog.TransparencyLog("test.example/log", tmp_path / "log.key", {"w1": vkey}, 1)
    log.witness_state = state
    return log


def add(factory, n: int, start: int = 0) -> list[int]:
    with factory() as s:
        write_transaction(s)
        indices = [certlog.append(s, "order", "alice", "a", f"order:{start + i}", n=start + i)
                   for i in range(n)]
        s.commit()
    return indices


def integrate(factory, tlog) -> int | None:
    with factory() as s:
        write_transaction(s)
        size = tlog.integrate(s)
        s.commit()
        return size


def verify_entry(factory, tlog, index: int, size: int) -> bool:
    with factory() as s:
        entry = tlog.entry(s, index)
        proof = tlog.inclusion(s, index, size)["proof"]
        cp = tlog.checkpoint(s, size)
    checkpoint, _ = merkle.open_checkpoint(cp["checkpoint"], [tlog.verifier])
    return merkle.verify_inclusion(merkle.leaf_hash(entry["data"].encode()), index, size,
                                   [base64.b64decode(h) for h in proof], checkpoint.root)


def test_indices_are_dense_and_a_rollback_leaves_nothing(factory, tlog):
    assert add(factory, 3) == [0, 1, 2]
    with factory() as s:
        write_transaction(s)
        assert certlog.append(s, "order", "bob", "b", "order:x") == 3
        s.rollback()  # the action failed: its statement goes with it
    assert add(factory, 1, start=3) == [3]
    with factory() as s:
        assert json.loads(tlog.entry(s, 3)["data"])["n"] == 3
        with pytest.raises(NotFound):
            tlog.entry(s, 4)
        with pytest.raises(ValueError):
            certlog.append(s, "not-a-type", "x", None, "y")


def test_integrate_prove_and_reopen(factory, tlog, tmp_path):
    with factory() as s:
        with pytest.raises(NotFound):
            tlog.checkpoint(s)
    add(factory, 5)
    assert integrate(factory, tlog) == 5
    assert integrate(factory, tlog) is None  # nothing new
    add(factory, 8, start=5)
    assert integrate(factory, tlog) == 13
    for index in range(13):
        assert verify_entry(factory, tlog, index, 13)
    assert verify_entry(factory, tlog, 2, 5)  # against the older checkpoint too
    with factory() as s:
        proof = tlog.consistency(s, 5, 13)["proof"]
        old, new = tlog.checkpoint(s, 5), tlog.checkpoint(s)
        with pytest.raises(InvalidField) as e:
            tlog.inclusion(s, 0, 14)
        assert e.value.field == "size"
        with pytest.raises(InvalidField) as e:
            tlog.inclusion(s, 13, 13)
        assert e.value.field == "index"
        with pytest.raises(InvalidField):
            tlog.consistency(s, 9, 5)
    assert merkle.verify_consistency(5, 13, base64.b64decode(old["root"]),
                                     base64.b64decode(new["root"]),
                                     [base64.b64decode(h) for h in proof])
    # a fresh log object over the same key and database gives the same answers
    again = certlog.TransparencyLog("test.example/log", tmp_path / "log.key")
    assert again.vkey == tlog.vkey
    with factory() as s:
        assert again.inclusion(s, 7, 13) == tlog.inclusion(s, 7, 13)
        assert again.fsck(s) == {"ok": True, "entries": 13, "tree_size": 13}


def test_cosignatures_and_finality(factory, tlog, tmp_path):
    add(factory, 4)
    integrate(factory, tlog)
    name, private = tlog.witness_state.key()
    with factory() as s:
        note = tlog.checkpoint(s)["checkpoint"]
        cosigned = merkle.cosign_note(note, name, private, 1_700_000_000)
        result = tlog.add_cosignature(s, cosigned)
        s.commit()
        assert result == {"size": 4, "added": ["w1"], "witnesses": ["w1"], "final": True}
        shown = tlog.checkpoint(s)
        assert shown["final"] and "w1" in shown["checkpoint"]
        merkle.open_checkpoint(shown["checkpoint"], [tlog.verifier])  # still a valid note

        stranger = merkle.parse_skey(merkle.generate_key("w2")[0])[1]
        with pytest.raises(InvalidField, match="configured witness"):
            tlog.add_cosignature(s, merkle.cosign_note(note, "w2", stranger, 1))
        forged = merkle.cosign_note(note, "w1", stranger, 1)  # right name, wrong key
        with pytest.raises(merkle.MerkleError):
            tlog.add_cosignature(s, forged)
        other = certlog.TransparencyLog("other.example/log", tmp_path / "other.key")
        with pytest.raises(InvalidField):
            tlog.add_cosignature(s, merkle.cosign_note(
                merkle.sign_note(merkle.format_checkpoint("test.example/log", 4, b"\1" * 32),
                                 other.key_name, other._private), name, private, 1))
        with pytest.raises(InvalidField):
            tlog.add_cosignature(s, None)



@pytest.mark.parametrize("tamper", ["edit", "edit-with-hash", "delete", "reorder"])
def test_tampering_is_caught(factory, tlog, tamper):
    add(factory, 9)
    integrate(factory, tlog)
    with factory() as s:
        assert tlog.fsck(s)["ok"]
    with factory() as s:
        row = s.get(LogEntry, 4)
        if tamper.startswith("edit"):
            forged = row.data.replace('"order:4"', '"order:999"')
            row.data = forged
            if tamper == "edit-with-hash":
                row.leaf_hash = merkle.leaf_hash(forged.encode()).hex()
        elif tamper == "delete":
            s.delete(row)
        else:
            five = s.get(LogEntry, 5)
            (row.data, row.leaf_hash), (five.data, five.leaf_hash) = \
                (five.data, five.leaf_hash), (row.data, row.leaf_hash)
        s.commit()
    with factory() as s:
        report = tlog.fsck(s)
    assert not report["ok"] and report["index"] == 4, report
    if tamper != "delete":
        assert not verify_entry(factory, tlog, 4, 9)


def test_fsck_catches_a_rewritten_stored_node(factory, tlog):
    add(factory, 8)
    integrate(factory, tlog)
    with factory() as s:
        s.execute(update(LogNode).where(LogNode.level == 1, LogNode.idx == 2)
                  .values(hash="00" * 32))
        s.commit()
        report = tlog.fsck(s)
    assert not report["ok"] and "node (1, 2)" in report["problem"]
    with factory() as s:
        assert s.scalar(select(LogEntry.idx).order_by(LogEntry.idx.desc()).limit(1)) == 7
