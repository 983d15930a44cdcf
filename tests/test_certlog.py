"""The certification log in the database (SQLite and PostgreSQL): sequencing in the action's
transaction, integration, proofs after a restart, cosignatures, tampering caught by fsck and by
proof verification, and private entries: the leaf commits to the details, which only the
parties and operators read (legacy entries from before the migration included)."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import insert, select, text, update

from marketplace_ext import certlog, dbutil, logentry, merkle, verify
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import InvalidField, NotFound
from marketplace_ext.orm import (
    LogEntry,
    LogNode,
    Order,
    Product,
    Transition,
    Unit,
    Version,
    make_engine,
    make_session_factory,
    write_transaction,
)
from marketplace_ext.witness import WitnessState


@pytest.fixture
def tlog(tmp_path):
    state = WitnessState(tmp_path / "w1")
    vkey = state.init("w1")
    log = certlog.TransparencyLog("test.example/log", tmp_path / "log.key", {"w1": vkey}, 1)
    log.witness_state = state
    return log


def add(session_factory, n: int, start: int = 0) -> list[int]:
    with session_factory() as s:
        write_transaction(s)
        indices = [certlog.append(s, "order", "alice", "a", f"order:{start + i}", n=start + i)
                   for i in range(n)]
        s.commit()
    return indices


def integrate(session_factory, tlog) -> int | None:
    with session_factory() as s:
        write_transaction(s)
        size = tlog.integrate(s)
        s.commit()
        return size


def verify_entry(session_factory, tlog, index: int, size: int) -> bool:
    with session_factory() as s:
        entry = tlog.entry(s, index)
        proof = tlog.inclusion(s, index, size)["proof"]
        cp = tlog.checkpoint(s, size)
    checkpoint, _ = merkle.open_checkpoint(cp["checkpoint"], [tlog.verifier])
    return merkle.verify_inclusion(merkle.leaf_hash(entry["data"].encode()), index, size,
                                   [base64.b64decode(h) for h in proof], checkpoint.root)


OPERATOR = Caller("olga", frozenset({SCOPE_APPROVE}), None)


def member(name: str, unit: str | None) -> Caller:
    return Caller(name, frozenset({SCOPE_SUBSCRIBE}), unit)


def bundle(session_factory, tlog, index: int, viewer: Caller | None) -> dict:
    """What `market verify` assembles from the API, for ``viewer``."""
    with session_factory() as s:
        entry = tlog.entry(s, index, viewer)
        cp = tlog.checkpoint(s)
        proof = tlog.inclusion(s, index, cp["size"])["proof"]
    found = {"index": index, "entry": entry["data"], "checkpoint": cp["checkpoint"],
             "proof": proof}
    if entry["data"] is None:
        found["leaf_hash"] = entry["leaf_hash"]
    if "details" in entry:
        found.update(details=entry["details"], salt=entry["salt"])
    return found


def shop(s) -> dict:
    """Units a (buyer), b (supplier of product p-b, version 1.0), c (a stranger)."""
    units = {}
    for slug in "abc":
        units[slug] = Unit(slug=slug, name=f"Unit {slug}", created_by="olga")
        s.add(units[slug])
    s.flush()
    product = Product(name="p-b", kind="data", unit_id=units["b"].id, created_by="bob")
    s.add(product)
    s.flush()
    version = Version(product_id=product.id, version="1.0", sha256="ab" * 32, state="submitted",
                      title="P", summary="", tags="[]", manifest="{}", parameters="{}",
                      files="[]", readme="", size=1, created_by="bob")
    s.add(version)
    s.flush()
    order = Order(unit_id=units["a"].id, product_id=product.id, version_id=version.id,
                  plan="per_use", price=1000, fee=50, idempotency_key="k", request_sha256="0" * 64,
                  status="paid", buyer="alice")
    s.add(order)
    s.flush()
    return {"units": units, "product": product, "version": version, "order": order}


def test_indices_are_dense_and_a_rollback_leaves_nothing(session_factory, tlog):
    assert add(session_factory, 3) == [0, 1, 2]
    with session_factory() as s:
        write_transaction(s)
        assert certlog.append(s, "order", "bob", "b", "order:x") == 3
        s.rollback()  # the action failed: its statement goes with it
    assert add(session_factory, 1, start=3) == [3]
    with session_factory() as s:
        assert tlog.entry(s, 3, OPERATOR)["statement"]["n"] == 3
        with pytest.raises(NotFound):
            tlog.entry(s, 4)
        with pytest.raises(ValueError):
            certlog.append(s, "not-a-type", "x", None, "y")


def test_integrate_prove_and_reopen(session_factory, tlog, tmp_path):
    with session_factory() as s:
        with pytest.raises(NotFound):
            tlog.checkpoint(s)
    add(session_factory, 5)
    assert integrate(session_factory, tlog) == 5
    assert integrate(session_factory, tlog) is None  # nothing new
    add(session_factory, 8, start=5)
    assert integrate(session_factory, tlog) == 13
    for index in range(13):
        assert verify_entry(session_factory, tlog, index, 13)
    assert verify_entry(session_factory, tlog, 2, 5)  # against the older checkpoint too
    with session_factory() as s:
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
    with session_factory() as s:
        assert again.inclusion(s, 7, 13) == tlog.inclusion(s, 7, 13)
        assert again.fsck(s) == {"ok": True, "entries": 13, "tree_size": 13}


def test_cosignatures_and_finality(session_factory, tlog, tmp_path):
    add(session_factory, 4)
    integrate(session_factory, tlog)
    name, private = tlog.witness_state.key()
    with session_factory() as s:
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
def test_tampering_is_caught(session_factory, tlog, tamper):
    add(session_factory, 9)
    integrate(session_factory, tlog)
    with session_factory() as s:
        assert tlog.fsck(s)["ok"]
    with session_factory() as s:
        row = s.get(LogEntry, 4)
        if tamper.startswith("edit"):
            # a forger rewrites the details and commits to them anew, same salt and time
            details = {**json.loads(row.details), "subject": "order:999"}
            raw = logentry.canonical(details)
            forged = logentry.public_part(row.kind, json.loads(row.data)["time"],
                                          logentry.commitment(raw, bytes.fromhex(row.salt)))
            row.details, row.data = raw.decode(), forged.decode()
            if tamper == "edit-with-hash":
                row.leaf_hash = merkle.leaf_hash(forged).hex()
        elif tamper == "delete":
            s.delete(row)
        else:
            five = s.get(LogEntry, 5)
            (row.data, row.leaf_hash), (five.data, five.leaf_hash) = \
                (five.data, five.leaf_hash), (row.data, row.leaf_hash)
        s.commit()
    with session_factory() as s:
        report = tlog.fsck(s)
    assert not report["ok"] and report["index"] == 4, report
    if tamper != "delete":
        assert not verify_entry(session_factory, tlog, 4, 9)


def test_fsck_catches_a_rewritten_stored_node(session_factory, tlog):
    add(session_factory, 8)
    integrate(session_factory, tlog)
    with session_factory() as s:
        s.execute(update(LogNode).where(LogNode.level == 1, LogNode.idx == 2)
                  .values(hash="00" * 32))
        s.commit()
        report = tlog.fsck(s)
    assert not report["ok"] and "node (1, 2)" in report["problem"]
    with session_factory() as s:
        assert s.scalar(select(LogEntry.idx).order_by(LogEntry.idx.desc()).limit(1)) == 7


# --- private entries ---------------------------------------------------------------------------


def test_the_leaf_commits_to_salted_details(session_factory, tlog):
    with session_factory() as s:
        write_transaction(s)
        shop(s)
        first = certlog.append(s, "order", "alice", "a", "order:1", product="p-b", price="10.00",
                               supplier="b")
        second = certlog.append(s, "order", "alice", "a", "order:1", product="p-b",
                                price="10.00", supplier="b")
        s.commit()
    integrate(session_factory, tlog)
    with session_factory() as s:
        row = s.get(LogEntry, first)
        public = json.loads(row.data)
        # the leaf hashes the public part: type, time, commitment and nothing else
        assert set(public) == {"type", "time", "commitment"} and public["type"] == "order"
        assert row.leaf_hash == merkle.leaf_hash(row.data.encode()).hex()
        assert row.data.encode() == logentry.canonical(public)
        salt = bytes.fromhex(row.salt)
        assert len(salt) == 32
        assert public["commitment"] == logentry.commitment(row.details.encode(), salt).hex()
        assert json.loads(row.details) == {"subject": "order:1", "actor": "alice", "unit": "a",
                                           "product": "p-b", "price": "10.00", "supplier": "b"}
        for secret in ("alice", "p-b", "10.00", "order:1"):
            assert secret not in row.data
        # the domain prefix is part of it: a plain SHA-256 of salt || details is not
        import hashlib

        assert public["commitment"] != hashlib.sha256(salt + row.details.encode()).hexdigest()
        # same details, fresh salt: equal statements cannot be matched by their commitments
        again = json.loads(s.get(LogEntry, second).data)
        assert again["commitment"] != public["commitment"]
        assert tlog.fsck(s)["ok"]
    # a stranger verifies the public part (an order existed at this index); a party the rest
    stranger = bundle(session_factory, tlog, first, member("carol", "c"))
    assert "details" not in stranger
    assert verify.verify_entry(stranger, tlog.vkey, "order")["type"] == "order"
    with pytest.raises(verify.VerificationFailed, match="not refund"):
        verify.verify_entry(stranger, tlog.vkey, "refund")
    with pytest.raises(verify.VerificationFailed, match="private"):
        verify.check_bundle(stranger, tlog.vkey)
    party = bundle(session_factory, tlog, first, member("alice", "a"))
    statement = verify.check_bundle(party, tlog.vkey)
    assert statement["price"] == "10.00" and statement["type"] == "order"


def test_who_reads_the_details(session_factory, tlog):
    with session_factory() as s:
        write_transaction(s)
        objs = shop(s)
        order = certlog.append(s, "order", "alice", "a", "order:1", product="p-b",
                               price="10.00", supplier="b")
        download = certlog.append(s, "download", "alice", "a", "f" * 64, product="p-b",
                                  version="1.0")
        refund = certlog.append(s, "refund", "runner", "a", "order:1",
                                order=objs["order"].id, reason="run 3 failed")
        grant = certlog.append(s, "unit_grant", "olga", "a", "transfer:1", amount="100.00")
        named = certlog.append(s, "query", "alice", "a", "e" * 64, party_units=["c"])
        s.commit()
    integrate(session_factory, tlog)
    viewers = {"actor": member("alice", "a"), "same unit": member("anna", "a"),
               "supplier": member("bob", "b"), "stranger": member("carol", "c"),
               "no unit": member("nobody", None), "operator": OPERATOR,
               # a hub user named like the service's own actor gains nothing by it
               "named runner": member("runner", "c")}
    expected = {
        order: {"actor": "actor", "same unit": "party", "supplier": "party"},
        # the product names the supplier; the order names buyer and supplier
        download: {"actor": "actor", "same unit": "party", "supplier": "party"},
        refund: {"actor": "party", "same unit": "party", "supplier": "party"},
        grant: {"actor": "party", "same unit": "party"},
        named: {"actor": "actor", "same unit": "party", "stranger": "party",
                "named runner": "party"},
    }
    with session_factory() as s:
        for index, readers in expected.items():
            for who, viewer in viewers.items():
                entry = tlog.entry(s, index, viewer)
                want = "operator" if who == "operator" else readers.get(who, "public")
                assert entry["access"] == want, (index, who, entry["access"])
                assert entry["type"] == s.get(LogEntry, index).kind
                assert entry["commitment"] and entry["data"] and not entry["legacy"]
                if want == "public":
                    assert {"details", "salt", "statement"}.isdisjoint(entry), (index, who)
                    assert "alice" not in json.dumps(entry)
                else:
                    assert entry["statement"]["actor"] == json.loads(entry["details"])["actor"]
                    statement, complete = logentry.open_statement(
                        entry["data"], entry["details"], entry["salt"])
                    assert complete and statement == entry["statement"]
        assert tlog.entry(s, order)["access"] == "public"  # no viewer: a stranger


def test_a_version_on_the_shelf_discloses_its_submission(session_factory, tlog):
    with session_factory() as s:
        write_transaction(s)
        objs = shop(s)
        version = objs["version"]
        version.log_index = certlog.append(s, "version_submitted", "bob", "b", version.sha256,
                                           product="p-b", version="1.0", files={"a": "1" * 64})
        hidden = certlog.append(s, "shelf", "olga", None, version.sha256, product="p-b",
                                version="1.0", from_state="submitted", to_state="rejected",
                                reason="not yet")
        s.commit()
        version_id = version.id
        stranger = member("carol", "c")
        assert tlog.entry(s, version.log_index, stranger)["access"] == "public"
        assert tlog.entry(s, version.log_index, member("bob", "b"))["access"] == "actor"
    with session_factory() as s:
        write_transaction(s)
        shelved = certlog.append(s, "shelf", "olga", None, "ab" * 32, product="p-b",
                                 version="1.0", from_state="submitted", to_state="on_shelf")
        s.commit()
        version = s.get(Version, version_id)
        shown = tlog.entry(s, version.log_index, stranger)
        assert shown["access"] == "disclosed" and shown["statement"]["files"] == {"a": "1" * 64}
        assert tlog.entry(s, shelved, stranger)["access"] == "disclosed"
        # the product's unit is a party to the operator's shelf decisions; others are not
        assert tlog.entry(s, hidden, member("bob", "b"))["access"] == "party"
        assert tlog.entry(s, hidden, stranger)["access"] == "public"


@pytest.mark.parametrize("tamper", ["details", "salt", "swap"])
def test_tampered_details_are_caught(session_factory, tlog, tamper):
    with session_factory() as s:
        write_transaction(s)
        shop(s)
        for price in ("10.00", "20.00"):
            certlog.append(s, "order", "alice", "a", "order:1", product="p-b", price=price,
                           supplier="b")
        s.commit()
    integrate(session_factory, tlog)
    with session_factory() as s:
        row, other = s.get(LogEntry, 0), s.get(LogEntry, 1)
        if tamper == "details":
            row.details = row.details.replace("10.00", "1.00")
        elif tamper == "salt":
            row.salt = "00" * 32
        else:
            row.details, row.salt = other.details, other.salt
        s.commit()
    with session_factory() as s:
        report = tlog.fsck(s)
    assert not report["ok"] and report["index"] == 0 and "commitment" in report["problem"]
    # the public part still proves its inclusion, but a party's check of the details fails
    assert verify_entry(session_factory, tlog, 0, 2)
    with pytest.raises(verify.VerificationFailed, match="do not match"):
        verify.check_bundle(bundle(session_factory, tlog, 0, OPERATOR), tlog.vkey)
    # and so does a forged proof bundle, offline
    good = bundle(session_factory, tlog, 1, OPERATOR)
    assert verify.check_bundle(good, tlog.vkey)["price"] == "20.00"
    forged = {**good, "details": good["details"].replace("20.00", "2.00")}
    with pytest.raises(verify.VerificationFailed, match="do not match"):
        verify.check_bundle(forged, tlog.vkey)


def test_legacy_entries_still_verify_after_the_migration(db_url, tlog):
    """Entries written before revision 0009 keep their leaf (the whole statement): they still
    verify, their statement goes to parties only, and shelved versions' ones are disclosed."""
    dbutil.upgrade(db_url, "0008")
    engine = make_engine(db_url)
    statements = [
        {"type": "version_submitted", "subject": "ab" * 32, "actor": "bob", "unit": "b",
         "product": "p-b", "version": "1.0", "time": "2026-11-30T10:00:00.000000Z"},
        {"type": "shelf", "subject": "ab" * 32, "actor": "olga", "unit": None, "product": "p-b",
         "version": "1.0", "to_state": "on_shelf", "time": "2026-11-30T10:01:00.000000Z"},
        {"type": "order", "subject": "order:1", "actor": "alice", "unit": "a", "product": "p-b",
         "price": "10.00", "supplier": "b", "time": "2026-11-30T10:02:00.000000Z"},
    ]
    with engine.begin() as conn:
        ids = {}
        for slug in "abc":
            # the columns of revision 0008 only (the model may have grown since)
            ids[slug] = conn.execute(text(
                "INSERT INTO units (slug, name, created_by, created_at) "
                "VALUES (:slug, :slug, 'olga', :at) RETURNING id"),
                {"slug": slug, "at": datetime_now()}).scalar_one()
        product = conn.execute(insert(Product.__table__).values(
            name="p-b", kind="data", unit_id=ids["b"], created_by="bob",
            created_at=datetime_now())).inserted_primary_key[0]
        version = conn.execute(insert(Version.__table__).values(
            product_id=product, version="1.0", sha256="ab" * 32, state="on_shelf", title="P",
            summary="", tags="[]", manifest="{}", parameters="{}", files="[]", readme="",
            size=1, created_by="bob", created_at=datetime_now(), log_index=0, file_digests="{}",
        )).inserted_primary_key[0]
        conn.execute(insert(Transition.__table__).values(
            version_id=version, from_state="submitted", to_state="on_shelf", actor="olga",
            actor_is_operator=True, at=datetime_now()))
        for idx, statement in enumerate(statements):
            data = certlog.canonical(statement)
            conn.execute(text("INSERT INTO log_entries (idx, data, leaf_hash, kind, created_at) "
                              "VALUES (:idx, :data, :leaf, :kind, :at)"),
                         {"idx": idx, "data": data.decode(), "kind": statement["type"],
                          "leaf": merkle.leaf_hash(data).hex(), "at": datetime_now()})
        conn.execute(text("INSERT INTO log_state (id, next_index, tree_size) VALUES (1, 3, 0)"))
    engine.dispose()
    dbutil.upgrade(db_url)
    session_factory = make_session_factory(make_engine(db_url))
    add(session_factory, 1)  # a new, private entry after the legacy ones
    assert integrate(session_factory, tlog) == 4
    with session_factory() as s:
        assert tlog.fsck(s) == {"ok": True, "entries": 4, "tree_size": 4}
        stranger, buyer = member("carol", "c"), member("alice", "a")
        hidden = tlog.entry(s, 2, stranger)
        assert hidden["legacy"] and hidden["data"] is None and hidden["access"] == "public"
        assert hidden["type"] == "order" and "statement" not in hidden
        assert tlog.entry(s, 2, member("bob", "b"))["statement"]["price"] == "10.00"
        shown = tlog.entry(s, 2, buyer)
        assert shown["access"] == "actor" and shown["data"] == certlog.canonical(
            statements[2]).decode() and "details" not in shown
        for index in (0, 1):
            assert tlog.entry(s, index, stranger)["access"] == "disclosed"
        assert not tlog.entry(s, 3, stranger).get("statement")
    # the buyer checks the legacy order end to end; a stranger only that a leaf is there
    checked = verify.check_bundle(bundle(session_factory, tlog, 2, buyer), tlog.vkey)
    assert checked["supplier"] == "b"
    assert verify.verify_entry(bundle(session_factory, tlog, 2, stranger), tlog.vkey) == {}
    forged = {**bundle(session_factory, tlog, 2, stranger), "leaf_hash": base64.b64encode(
        b"\1" * 32).decode()}
    with pytest.raises(verify.VerificationFailed, match="inclusion proof"):
        verify.verify_entry(forged, tlog.vkey)
    for index in (0, 1, 3):  # disclosed legacy entries and the new one, as anyone sees them
        assert verify_entry(session_factory, tlog, index, 4)


def datetime_now():
    from marketplace_ext.orm import utcnow

    return utcnow()

