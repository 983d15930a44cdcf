"""Split decryption (issue 18 item 4) with real Paillier keys, real AES-GCM and the real service
functions on SQLite and PostgreSQL (no platform): the layout, sealing bound to project, round,
attempt, aggregate, slice and key, reassembly equal to a whole decryption, and the service's
refusals (a 4xx naming the field, nothing stored)."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest
from helpers import save_model
from sqlalchemy import func, select
from test_points import make_unit

from marketplace_ext import dbutil
from marketplace_ext.auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.federated import common, enrolment, keys, packing, projects, rounds, slices
from marketplace_ext.federated import split_decrypt as sd
from marketplace_ext.federated.client import bundle_zip
from marketplace_ext.federated.orm import FLSlice
from marketplace_ext.orm import make_engine, make_session_factory, write_transaction

MODEL = {"weeks": 2, "pool_weeks": 1, "conv": 4, "wide": 4, "hidden": 8}  # 337 parameters
PACK = {"bits": 16, "clip": 1.0, "max_parties": 5, "max_weight": 25}


def publisher(unit: str) -> Caller:
    return Caller(f"pub-{unit}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), unit)


def subscriber(unit: str) -> Caller:
    return Caller(f"sub-{unit}", frozenset({SCOPE_SUBSCRIBE}), unit)


# --- layout and sealing ------------------------------------------------------------------------


def test_layout_is_deterministic_contiguous_and_covers_every_ciphertext():
    plan = sd.layout(11, ["c", "a", "b", "a"])
    assert plan == sd.layout(11, ["b", "c", "a"])  # order and repeats do not matter
    assert plan.units == ("a", "b", "c") and plan.count == 3
    bounds = [plan.bounds(i) for i in range(plan.count)]
    assert bounds == [(0, 3), (3, 7), (7, 11)]
    assert [plan.owner(i) for i in range(3)] == ["a", "b", "c"] and plan.slices_of("b") == [1]
    # fewer ciphertexts than units: one slice per ciphertext, the last units own none
    small = sd.layout(2, ["e", "d", "c"])
    assert small.count == 2 and small.slices_of("e") == [] and small.bounds(1) == (1, 2)
    for bad in (-1, 3, True, "1"):
        with pytest.raises(sd.SliceError):
            plan.bounds(bad)
    with pytest.raises(sd.SliceError):
        sd.layout(0, ["a"])
    with pytest.raises(sd.SliceError):
        sd.layout(5, [])


def test_sealed_slice_is_bound_to_project_round_attempt_aggregate_slice_and_key(paillier):
    pk, sk = paillier
    key = sd.slice_key(sk)
    assert key == sd.slice_key(type(sk)(pk, sk.q, sk.p))  # p and q in either order
    width = (pk.n.bit_length() + 7) // 8
    values = [0, 1, pk.n - 1]
    ad = sd.associated_data(7, 2, 1, "ab" * 32, 1, 3)
    sealed = sd.seal_slice(key, ad, values, width)
    assert len(sealed) == sd.NONCE_BYTES + 3 * width + sd.TAG_BYTES
    assert sd.open_slice(key, ad, sealed, 3, width, pk.n) == values
    others = [sd.associated_data(8, 2, 1, "ab" * 32, 1, 3),  # another project
              sd.associated_data(7, 3, 1, "ab" * 32, 1, 3),  # another round
              sd.associated_data(7, 2, 2, "ab" * 32, 1, 3),  # another attempt
              sd.associated_data(7, 2, 1, "cd" * 32, 1, 3),  # another aggregate
              sd.associated_data(7, 2, 1, "ab" * 32, 0, 3),  # another slice
              sd.associated_data(7, 2, 1, "ab" * 32, 1, 4)]  # another layout
    for wrong in others:
        with pytest.raises(sd.SliceError, match="does not open"):
            sd.open_slice(key, wrong, sealed, 3, width, pk.n)
    other_key = sd.slice_key(keys.generate_paillier_keypair(2048)[1])
    assert other_key != key
    with pytest.raises(sd.SliceError, match="does not open"):
        sd.open_slice(other_key, ad, sealed, 3, width, pk.n)
    altered = bytearray(sealed)
    altered[20] ^= 1
    with pytest.raises(sd.SliceError, match="does not open"):
        sd.open_slice(key, ad, bytes(altered), 3, width, pk.n)
    with pytest.raises(sd.SliceError, match="bytes"):
        sd.open_slice(key, ad, sealed, 2, width, pk.n)
    too_big = sd.seal_slice(key, ad, [pk.n], width)  # sealed by a key holder, still refused
    with pytest.raises(sd.SliceError, match=">= n"):
        sd.open_slice(key, ad, too_big, 1, width, pk.n)


def test_slices_reassemble_to_exactly_the_whole_decryption(paillier):
    pk, sk = paillier
    rng = np.random.default_rng(18)
    spec = packing.PackSpec.create(pk.n, 1000, bits=16, clip=1.0, max_parties=5, max_weight=25)
    vectors = rng.normal(0, 0.4, (3, spec.length))
    weights = [25, 3, 11]
    with packing.Encryptor(pk, sk) as enc:
        updates = [packing.pack_update(spec, v, w, enc).ciphertexts
                   for v, w in zip(vectors, weights, strict=True)]
    total = packing.add_encrypted(spec, updates)
    whole = packing.unpack_aggregate(spec, total, sk, sum(weights), 3)
    plan = sd.layout(len(total), ["c", "b", "a"])
    key, width = sd.slice_key(sk), sd.plaintext_width(spec)
    sealed = {}
    for i in range(plan.count):
        ad = sd.associated_data(1, 1, 1, "00" * 32, i, plan.count)
        sealed[i] = sd.seal_slice(key, ad, sd.decrypt_slice(spec, total, sk, plan, i), width)
    parts = {}
    for i, blob in sealed.items():
        start, stop = plan.bounds(i)
        parts[i] = sd.open_slice(key, sd.associated_data(1, 1, 1, "00" * 32, i, plan.count),
                                 blob, stop - start, width, spec.n)
    mean = sd.reassemble(spec, plan, parts, sum(weights), 3)
    assert np.array_equal(mean, whole)  # the same integers: bit-identical floats
    reference = packing.plain_fedavg(vectors, weights, clip=spec.clip)
    assert np.max(np.abs(mean - reference)) <= spec.quantization_bound(sum(weights))
    with pytest.raises(sd.SliceError, match="missing"):
        sd.reassemble(spec, plan, {0: parts[0]}, sum(weights), 3)
    with pytest.raises(sd.SliceError, match="plaintexts"):
        sd.reassemble(spec, plan, {**parts, 1: parts[1][:-1]}, sum(weights), 3)
    # a slice of another aggregate's plaintexts (here: garbage above the slots) is detected
    bad = {**parts, 0: [spec.n - 1] * len(parts[0])}
    with pytest.raises(packing.AggregateOverflow):
        sd.reassemble(spec, plan, bad, sum(weights), 3)


def test_tight_packing_is_at_most_1_5x_float32_at_2048_bits(paillier):
    pk, _ = paillier
    spec = packing.PackSpec.create(pk.n, 1_000_000, bits=16, clip=1.0, max_parties=5,
                                   max_weight=25)
    assert spec.slot_bits == 23 and spec.slots == 88
    assert spec.update_bytes / (spec.length * 4) <= 1.5
    loose = dataclasses.replace(spec, max_weight=100)  # last session's benchmark layout
    assert loose.update_bytes / (loose.length * 4) > 1.5


# --- the service's side, on the real databases ------------------------------------------------


@pytest.fixture
def session_factory(db_url):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_split_round_through_the_service_functions(session_factory, paillier, tmp_path):
    pk, sk = paillier
    blobs = BlobStore(tmp_path / "blobs")
    model = base64.b64encode(bundle_zip(save_model(tmp_path / "m", MODEL))).decode()
    rng = np.random.default_rng(5)
    with session_factory() as s:
        write_transaction(s)
        for u in "abcd":
            make_unit(s, u)
        req = projects.parse_project_request({
            "name": "split-1", "rounds": 1, "quorum": 3, "deadline_seconds": 600,
            "public_key": keys.public_key_to_json(pk), "model": model, "pack": PACK,
            "allow_units": ["b", "c"]})
        project = projects.create_project(s, publisher("a"), req, blobs)
        for u in "bc":
            enrolment.join(s, publisher(u), project, None)
        rounds.start(s, publisher("a"), project)
        s.commit()
        spec = common.spec_of(project)
        assert spec.ciphertexts == 4  # 337 values in 88-value plaintexts
        # a round that is not published yet: nothing to post, nothing to read
        with pytest.raises(Conflict) as e:
            slices.check_post(s, publisher("a"), project, 1, 0, 100)
        assert e.value.field == "round"
        with pytest.raises(NotFound) as e:
            slices.slices_json(s, publisher("a"), project, 1)
        assert e.value.field == "round"
        with pytest.raises(NotFound) as e:
            slices.check_post(s, publisher("a"), project, 9, 0, 100)
        assert e.value.field == "round"

        write_transaction(s)
        vectors = rng.normal(0, 0.3, (3, spec.length))
        weights = {"a": 20, "b": 5, "c": 9}
        with packing.Encryptor(pk, sk) as enc:
            for (unit, w), v in zip(weights.items(), vectors, strict=True):
                data = packing.ciphertexts_to_bytes(
                    spec, packing.pack_update(spec, v, w, enc).ciphertexts)
                up = rounds.check_update(s, publisher(unit), project, 1, str(w), "0",
                                         project.key_fingerprint)
                rounds.record_update(s, publisher(unit), project, up, blobs.put(data),
                                     len(data))
        job = rounds.aggregation_job(s, rounds.latest_round(s, project, 1).id)
        aggregate = rounds.add_updates(job, blobs)
        agg_sha = blobs.put(aggregate)
        rounds.publish_aggregate(s, job, agg_sha, len(aggregate))
        s.commit()

        listing = slices.slices_json(s, publisher("b"), project, 1)
        assert listing["units"] == ["a", "b", "c"] and listing["aggregate_sha256"] == agg_sha
        assert [(x["start"], x["stop"], x["owner"]) for x in listing["slices"]] == [
            (0, 1, "a"), (1, 2, "b"), (2, 4, "c")]
        width = listing["plaintext_bytes"]
        ciphertexts = packing.ciphertexts_from_bytes(spec, aggregate)
        plan = sd.layout(len(ciphertexts), listing["units"])
        key = sd.slice_key(sk)

        def ad(i: int) -> bytes:
            return sd.associated_data(project.id, 1, listing["attempt"], agg_sha, i, plan.count)

        def sealed(i: int) -> bytes:
            return sd.seal_slice(key, ad(i), sd.decrypt_slice(spec, ciphertexts, sk, plan, i),
                                 width)

        # refusals, each naming its field, nothing stored
        size0 = listing["slices"][0]["size"]
        cases = [(publisher("d"), 0, size0, Forbidden, "unit"),  # not a member
                 (subscriber("a"), 0, size0, Forbidden, None),  # no publish scope
                 (publisher("a"), 3, size0, NotFound, "slice"),  # the layout has 0..2
                 (publisher("a"), 0, size0 + 1, InvalidField, "body")]  # wrong size
        for caller, index, size, error, field in cases:
            with pytest.raises(error) as e:
                slices.check_post(s, caller, project, 1, index, size)
            if field:
                assert e.value.field == field
        with pytest.raises(NotFound) as e:
            slices.slice_blob(s, publisher("a"), project, 1, 0)
        assert e.value.field == "slice"
        assert s.scalar(select(func.count()).select_from(FLSlice)) == 0

        # a and b post their own slices; c is away and a takes its slice over
        for unit, index in (("a", 0), ("b", 1), ("a", 2)):
            write_transaction(s)
            blob = sealed(index)
            req = slices.check_post(s, publisher(unit), project, 1, index, len(blob))
            slices.record_post(s, publisher(unit), project, req, blobs.put(blob), len(blob))
            s.commit()
        # c comes back: its slice is taken (the first post wins)
        with pytest.raises(Conflict) as e:
            slices.check_post(s, publisher("c"), project, 1, 2, listing["slices"][2]["size"])
        assert e.value.field == "slice"
        listing = slices.slices_json(s, publisher("c"), project, 1)
        assert [x["posted_by"] for x in listing["slices"]] == ["a", "b", "a"]

        # c reassembles the mean from the three sealed slices, as a whole decryption gives it
        parts = {}
        for i in range(plan.count):
            _, row = slices.slice_blob(s, publisher("c"), project, 1, i)
            start, stop = plan.bounds(i)
            parts[i] = sd.open_slice(key, ad(i), blobs.get(row.sha256), stop - start, width,
                                     spec.n)
        mean = sd.reassemble(spec, plan, parts, listing["total_weight"], listing["parties"])
        whole = packing.unpack_aggregate(spec, ciphertexts, sk, sum(weights.values()), 3)
        assert np.array_equal(mean, whole)
        reference = packing.plain_fedavg(vectors, list(weights.values()), clip=spec.clip)
        assert np.max(np.abs(mean - reference)) <= spec.quantization_bound(sum(weights.values()))
