"""Enrolment in federated projects, on the service's own database (SQLite): the initiator's
approval and allow-list, pending units taking no part, units' signing keys and signed member
keys, what non-members see, and the cap on a model's parameters. Each test is a regression of
issue 14 item 5 (or the FL cap of item 7): on the code before it, a publisher of any unit joined
any project at once, got the Paillier key wrapped for it, and read every unit's weights."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile

import pytest
from sqlalchemy import select

from marketplace_ext import certlog, units
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.federated import common, enrolment, keys, projects, rounds
from marketplace_ext.federated.orm import FLMember
from marketplace_ext.orm import LogEntry, write_transaction

UNITS = "abcd"


def publisher(unit: str) -> Caller:
    return Caller(f"publisher-{unit}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), unit)


def subscriber(unit: str) -> Caller:
    return Caller(f"subscriber-{unit}", frozenset({SCOPE_SUBSCRIBE}), unit)


OPERATOR = Caller("operator", frozenset({SCOPE_SUBSCRIBE, SCOPE_APPROVE}), None)


@pytest.fixture
def db(sqlite_session_factory):
    factory = sqlite_session_factory
    with factory() as session:
        write_transaction(session)
        for u in UNITS:
            units.create_unit(session, u, f"Unit {u.upper()}", "operator")
        session.commit()
    with factory() as session:
        yield session


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def body_of(paillier, model_b64: str, **change) -> dict:
    return {"name": f"p-{hashlib.sha256(repr(sorted(change.items())).encode()).hexdigest()[:8]}",
            "rounds": 2, "quorum": 2, "deadline_seconds": 60,
            "public_key": keys.public_key_to_json(paillier[0]), "model": model_b64, **change}


def open_project(db, blobs, paillier, model_b64, **change):
    req = projects.parse_project_request(body_of(paillier, model_b64, **change))
    project = projects.create_project(db, publisher("a"), req, blobs)
    db.commit()
    return project


def unit_key(db, unit: str):
    key = keys.generate_signing_key()
    enrolment.register_unit_key(db, publisher(unit), unit, keys.signing_public_text(key))
    db.commit()
    return key


def member_body(project, unit: str, signing_key) -> dict:
    x25519 = keys.encode_public(keys.partner_public_bytes(keys.generate_partner_key()))
    return {"x25519_public_key": x25519,
            "x25519_signature": keys.sign_member_key(signing_key, project.id, unit, x25519)}


def test_a_join_waits_for_the_initiator_and_a_pending_unit_takes_no_part(db, blobs, paillier,
                                                                         model_b64):
    project = open_project(db, blobs, paillier, model_b64)
    member, created = enrolment.join(db, publisher("d"), project, None)
    db.commit()
    assert created and member.status == "pending"
    # not a member: no details, no keys, no model, no update, no quorum
    for call in (lambda: projects.project_json(db, project, publisher("d")),
                 lambda: enrolment.keys_json(db, publisher("d"), project),
                 lambda: rounds.metrics_json(db, publisher("d"), project),
                 lambda: common.require_member(db, publisher("d"), project, "x")):
        with pytest.raises(Forbidden) as e:
            call()
        assert e.value.field == "unit"
    assert [m.unit.slug for m in common.active_members(db, project)] == ["a"]
    # nor does it read an aggregate's log entry (its total weight, its contributions)
    assert certlog.party_units_of(db, "fl_aggregate", "a", {"project_id": project.id}) == ["a"]
    with pytest.raises(Conflict) as e:  # a pending unit does not count toward min_updates
        rounds.start(db, publisher("a"), project)
    assert e.value.field == "members"
    # a pending unit cannot register a key, nor be served one
    dkey = unit_key(db, "d")
    with pytest.raises(Forbidden):
        enrolment.register_key(db, publisher("d"), project, "d", member_body(project, "d", dkey))
    with pytest.raises(NotFound) as e:
        enrolment.post_wrapped_key(db, publisher("a"), project, {
            "unit": "d", "x25519_public_key": member_body(project, "d", dkey)[
                "x25519_public_key"], "key_fingerprint": project.key_fingerprint,
            "wrapped_key": {"v": 1}})
    assert e.value.field == "unit"
    assert enrolment.keys_json(db, publisher("a"), project)["awaiting"] == []

    # only the initiator's unit decides; then d takes part
    enrolment.join(db, publisher("b"), project, None)
    db.commit()
    for caller in (publisher("d"), publisher("b"), OPERATOR, subscriber("a")):
        with pytest.raises(Forbidden):
            enrolment.decide(db, caller, project, "d", {"decision": "approve"})
    with pytest.raises(InvalidField) as e:
        enrolment.decide(db, publisher("a"), project, "d", {"decision": ["approve"]})
    assert e.value.field == "decision"
    with pytest.raises(NotFound):
        enrolment.decide(db, publisher("a"), project, "c", {"decision": "approve"})
    approved = enrolment.decide(db, publisher("a"), project, "d", {"decision": "approve"})
    db.commit()
    assert approved.status == "approved" and approved.decided_by == "publisher-a"
    enrolment.register_key(db, publisher("d"), project, "d", member_body(project, "d", dkey))
    db.commit()
    assert [w["unit"] for w in enrolment.keys_json(db, publisher("a"), project)["awaiting"]] \
        == ["d"]
    assert projects.project_json(db, project, publisher("d"))["membership"] == "approved"
    rounds.start(db, publisher("a"), project)  # a and d: min_updates reached
    # b is still pending: refused, it may not ask again
    refused = enrolment.decide(db, publisher("a"), project, "b", {"decision": "refuse"})
    db.commit()
    assert refused.status == "refused"
    with pytest.raises(Conflict) as e:
        enrolment.join(db, publisher("b"), project, None)
    assert e.value.field == "unit"


def test_allow_listed_units_are_approved_at_once(db, blobs, paillier, model_b64):
    with pytest.raises(InvalidField) as e:
        open_project(db, blobs, paillier, model_b64, allow_units=["b", "zz"])
    assert e.value.field == "allow_units"
    for bad in ("b", [1], ["b", "b"], ["b"] * 11):
        with pytest.raises(InvalidField) as e:
            projects.parse_project_request(body_of(paillier, model_b64, allow_units=bad))
        assert e.value.field == "allow_units", bad
    project = open_project(db, blobs, paillier, model_b64, allow_units=["b", "c"])
    statuses = {u: enrolment.join(db, publisher(u), project, None)[0].status for u in "bcd"}
    assert statuses == {"b": "approved", "c": "approved", "d": "pending"}
    assert projects.project_json(db, project, publisher("a"))["allow_units"] == ["b", "c"]


def test_member_keys_must_be_signed_by_the_units_registered_key(db, blobs, paillier,
                                                                model_b64):
    project = open_project(db, blobs, paillier, model_b64, allow_units=["b", "c"])
    enrolment.join(db, publisher("b"), project, None)
    bkey = unit_key(db, "b")
    good = member_body(project, "b", bkey)
    other = keys.generate_signing_key()
    cases = [
        ({"x25519_public_key": good["x25519_public_key"]}, "x25519_signature"),
        ({**good, "x25519_signature": "AAAA"}, "x25519_signature"),
        (member_body(project, "b", other), "x25519_signature"),  # another unit key
        ({**good, "x25519_signature": keys.sign_member_key(
            bkey, project.id + 1, "b", good["x25519_public_key"])}, "x25519_signature"),
        ({**good, "x25519_signature": keys.sign_member_key(
            bkey, project.id, "c", good["x25519_public_key"])}, "x25519_signature"),
        ({**good, "role": "initiator"}, "role"),
    ]
    for body, field in cases:
        with pytest.raises(InvalidField) as e:
            enrolment.register_key(db, publisher("b"), project, "b", body)
        assert e.value.field == field, body
    # a unit with no signing key registers none
    enrolment.join(db, publisher("c"), project, None)
    with pytest.raises(Conflict) as e:
        enrolment.register_key(db, publisher("c"), project, "c", member_body(project, "c", other))
    assert e.value.field == "unit"
    member = enrolment.register_key(db, publisher("b"), project, "b", good)
    db.commit()
    assert member.key_signature == good["x25519_signature"]
    awaiting = enrolment.keys_json(db, publisher("a"), project)["awaiting"]
    assert awaiting == [{"unit": "b", **good,
                         "ed25519_public_key": keys.signing_public_text(bkey)}]
    keys.verify_member_key(awaiting[0]["ed25519_public_key"], awaiting[0]["x25519_signature"],
                           project.id, "b", awaiting[0]["x25519_public_key"])

    # an operator replaces b's unit key: b's member key no longer verifies, nothing is wrapped
    replaced = keys.generate_signing_key()
    with pytest.raises(Conflict) as e:  # not by a publisher
        enrolment.register_unit_key(db, publisher("b"), "b", keys.signing_public_text(replaced))
    assert e.value.field == "ed25519_public_key"
    enrolment.register_unit_key(db, OPERATOR, "b", keys.signing_public_text(replaced))
    db.commit()
    with pytest.raises(Conflict) as e:
        enrolment.post_wrapped_key(db, publisher("a"), project, {
            "unit": "b", "x25519_public_key": good["x25519_public_key"],
            "key_fingerprint": project.key_fingerprint, "wrapped_key": {"v": 1}})
    assert e.value.field == "x25519_public_key"
    assert db.get(FLMember, member.id).wrapped_key is None


def test_unit_signing_keys_first_by_the_unit_then_by_an_operator_certified(db):
    key = keys.signing_public_text(keys.generate_signing_key())
    with pytest.raises(Forbidden):  # another unit's publisher
        enrolment.register_unit_key(db, publisher("a"), "b", key)
    with pytest.raises(Forbidden):  # a subscriber of the unit
        enrolment.register_unit_key(db, subscriber("b"), "b", key)
    with pytest.raises(Forbidden):  # the first registration is the unit's own
        enrolment.register_unit_key(db, OPERATOR, "b", key)
    with pytest.raises(NotFound):
        enrolment.register_unit_key(db, publisher("b"), "nope", key)
    registered, changed = enrolment.register_unit_key(db, publisher("b"), "b", key)
    db.commit()
    first = registered.log_index
    assert changed and first is not None
    assert enrolment.register_unit_key(db, publisher("b"), "b", key)[1] is False
    new = keys.signing_public_text(keys.generate_signing_key())
    replaced, changed = enrolment.register_unit_key(db, OPERATOR, "b", new)
    db.commit()
    assert changed and replaced.public_key == new and replaced.log_index > first
    entries = {e.idx: e for e in db.scalars(select(LogEntry).where(LogEntry.kind
                                                                   == "fl_unit_key"))}
    assert json.loads(entries[replaced.log_index].details)["previous"] == key
    assert json.loads(entries[first].details)["subject"] == key
    with pytest.raises(InvalidField) as e:
        enrolment.parse_signing_key("not a key")
    assert e.value.field == "ed25519_public_key"


def test_non_members_see_only_the_public_summary(db, blobs, paillier, model_b64):
    project = open_project(db, blobs, paillier, model_b64, allow_units=["b"])
    enrolment.join(db, publisher("b"), project, None)
    enrolment.join(db, publisher("c"), project, None)  # pending
    db.commit()
    # the contribution measure is public: a unit sees it before it asks to join
    summary_keys = {"id", "name", "title", "unit", "state", "may_join", "membership",
                    "is_member", "contribution_measure"}
    by = {name: {p["id"]: p for p in projects.list_projects(db, caller)}[project.id]
          for name, caller in (("c", publisher("c")), ("d", publisher("d")),
                               ("sub-d", subscriber("d")), ("b", publisher("b")),
                               ("sub-a", subscriber("a")), ("op", OPERATOR))}
    for name in ("c", "d", "sub-d"):
        assert set(by[name]) == summary_keys, name
    assert by["c"]["membership"] == "pending" and by["c"]["may_join"] is False
    assert by["d"]["membership"] is None and by["d"]["may_join"] is True
    assert by["sub-d"]["may_join"] is False  # subscribers do not join
    for name in ("b", "sub-a", "op"):  # a member, the initiator's unit, an operator
        assert by[name]["members"] == ["a", "b"] and by[name]["pending"] == ["c"], name
        viewer = {"b": publisher("b"), "sub-a": subscriber("a"), "op": OPERATOR}[name]
        assert projects.project_json(db, project, viewer)["id"] == project.id
    for caller in (publisher("c"), publisher("d"), subscriber("d")):
        with pytest.raises(Forbidden):
            projects.project_json(db, project, caller)


def weights_zip(parameters: int) -> str:
    weights = b"not really torch"
    meta = {"spec": {}, "parameters": parameters,
            "weights_sha256": hashlib.sha256(weights).hexdigest()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("weights.pt", weights)
    return base64.b64encode(out.getvalue()).decode()


def test_the_number_of_parameters_is_capped(paillier, model_b64):
    body = body_of(paillier, model_b64)
    assert projects.parse_project_request(body, max_parameters=50_000).spec.length < 50_000
    with pytest.raises(InvalidField) as e:
        projects.parse_project_request(body, max_parameters=10)
    assert e.value.field == "model" and "at most 10" in e.value.message
    huge = {**body, "model": weights_zip(10**9)}
    with pytest.raises(InvalidField) as e:
        projects.parse_project_request(huge)  # the default cap
    assert e.value.field == "model"
    assert common.DEFAULT_MAX_PARAMETERS >= 13_000  # the theft detector fits
    ok = {**body, "model": weights_zip(common.DEFAULT_MAX_PARAMETERS)}
    assert projects.parse_project_request(ok).spec.length == common.DEFAULT_MAX_PARAMETERS
