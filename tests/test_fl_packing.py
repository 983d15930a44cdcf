"""Packed Paillier aggregation with real keys: the decrypted weighted mean matches plaintext
FedAvg of the clipped values within the documented bound, slots never overflow or wrap, and the
service's checks refuse malformed ciphertexts. Hypothesis runs on a 1024-bit key for speed; one
round runs on a 2048-bit key."""

from __future__ import annotations

import json
import math

import gmpy2
import numpy as np
import phe
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace_ext.federated import packing
from marketplace_ext.federated.packing import (
    AggregateOverflow,
    CiphertextOutOfRange,
    Encryptor,
    KeyMismatch,
    PackingError,
    PackSpec,
    ShapeMismatch,
    TooManyUpdates,
)


@pytest.fixture(scope="module")
def pair():
    return phe.generate_paillier_keypair(n_length=1024)


@pytest.fixture(scope="module")
def encryptor(pair):
    return Encryptor(*pair)


def run_round(spec, pair, vectors, weights, encryptor=None, workers=1):
    """Encrypt each party's update, add them as the service does, decrypt the mean."""
    pk, sk = pair
    encryptor = encryptor or Encryptor(pk, sk)
    updates = [packing.pack_update(spec, v, w, encryptor)
               for v, w in zip(vectors, weights, strict=True)]
    total = packing.add_encrypted(spec, [u.ciphertexts for u in updates])
    mean = packing.unpack_aggregate(spec, total, sk, sum(weights), len(weights),
                                    workers=workers)
    return mean, updates


def raw_slots(spec, sk, ciphertexts):
    return packing._plaintexts_to_slots(spec, [sk.raw_decrypt(c) for c in ciphertexts])


# --- the property -------------------------------------------------------------------------------

@st.composite
def rounds(draw):
    bits = draw(st.sampled_from([2, 8, 12, 16, 20, 32, 48]))
    max_parties = draw(st.integers(1, 8))
    max_weight = draw(st.integers(1, 5000))
    parties = draw(st.integers(1, max_parties))
    weights = draw(st.lists(st.integers(1, max_weight), min_size=parties, max_size=parties))
    length = draw(st.integers(1, 200))
    clip = draw(st.sampled_from([1.0, 0.01, 1e3]) | st.floats(1e-3, 1e3))
    value = (st.floats(-3 * clip, 3 * clip, allow_nan=False)
             | st.sampled_from([clip, -clip, 0.0, 10 * clip, -10 * clip, 1e300, -1e300]))
    vectors = [draw(st.lists(value, min_size=length, max_size=length)) for _ in range(parties)]
    return (dict(length=length, bits=bits, clip=clip, max_parties=max_parties,
                 max_weight=max_weight), np.array(vectors, dtype=np.float64), weights)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rounds())
def test_decrypted_mean_matches_plain_fedavg(pair, encryptor, case):
    params, vectors, weights = case
    spec = PackSpec.create(pair[0].n, **params)
    mean, updates = run_round(spec, pair, vectors, weights, encryptor)
    expected = packing.plain_fedavg(vectors, weights, clip=spec.clip)
    assert mean.shape == (spec.length,) and mean.dtype == np.float64
    assert np.max(np.abs(mean - expected)) <= spec.quantization_bound(sum(weights))
    assert [u.clipped for u in updates] == [int(np.sum(np.abs(v) > spec.clip)) for v in vectors]
    assert [u.weight for u in updates] == weights
    assert all(len(u.ciphertexts) == spec.ciphertexts for u in updates)


def test_round_on_a_2048_bit_key_with_the_pool():
    pair = phe.generate_paillier_keypair(n_length=2048)
    spec = PackSpec.create(pair[0].n, 500, max_parties=5, max_weight=1000)
    assert spec.ciphertexts > 1
    rng = np.random.default_rng(7)
    vectors = rng.normal(0, 0.6, size=(5, spec.length))
    weights = [1, 999, 1000, 17, 300]
    with Encryptor(*pair, pool_size=4) as enc:
        mean, updates = run_round(spec, pair, vectors, weights, enc, workers=2)
    expected = packing.plain_fedavg(vectors, weights, clip=1.0)
    assert np.max(np.abs(mean - expected)) <= spec.quantization_bound(sum(weights))
    assert sum(u.clipped for u in updates) == int(np.sum(np.abs(vectors) > 1.0))


def test_quantization_bound_is_reached_not_just_satisfied(pair, encryptor):
    # a value half a step above a level is as far as any value gets from its quantization
    spec = PackSpec.create(pair[0].n, 3, bits=4, clip=1.0, max_parties=1, max_weight=1)
    step = 2.0 / spec.levels
    vectors = np.array([[-1 + 0.4999 * step, 0.0 + 0.4999 * step, 1 - 0.4999 * step]])
    mean, _ = run_round(spec, pair, vectors, [1], encryptor)
    error = np.max(np.abs(mean - vectors[0]))
    assert 0.99 * spec.quantization_bound(1) < error <= spec.quantization_bound(1)


def test_quantization_bound_value_and_range(pair):
    spec = PackSpec.create(pair[0].n, 10, bits=16, clip=2.0, max_parties=3, max_weight=10)
    assert spec.quantization_bound(1) == spec.quantization_bound(30)
    assert spec.quantization_bound(30) == pytest.approx(2.0 / 65535, rel=1e-9)
    for bad in (0, 31, -1, 1.5, True):
        with pytest.raises(PackingError):
            spec.quantization_bound(bad)


# --- clipping and overflow ----------------------------------------------------------------------

def test_clipping_saturates_and_is_counted(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 40, clip=1.0, max_parties=3, max_weight=50)
    vectors = np.array([np.full(40, 10.0), np.full(40, 1e300), np.full(40, 1.0)])
    mean, updates = run_round(spec, pair, vectors, [50, 50, 50], encryptor)
    assert np.array_equal(mean, np.ones(40))  # +1 exactly, not garbage
    assert [u.clipped for u in updates] == [40, 40, 0]  # exactly +clip is not clipped
    mean, updates = run_round(spec, pair, -vectors, [3, 2, 1], encryptor)
    assert np.array_equal(mean, -np.ones(40))
    assert [u.clipped for u in updates] == [40, 40, 0]


@pytest.mark.parametrize("max_parties,max_weight", [(4, 8), (3, 7), (1, 1), (8, 4096)])
@pytest.mark.parametrize("bits", [1, 16, 24])
def test_all_slots_at_max_do_not_overflow(pair, encryptor, max_parties, max_weight, bits):
    probe = PackSpec.create(pair[0].n, 1, bits=bits, max_parties=max_parties,
                            max_weight=max_weight)
    spec = PackSpec.create(pair[0].n, 2 * probe.slots + 1, bits=bits,
                           max_parties=max_parties, max_weight=max_weight)
    top = np.full(spec.length, 5.0)  # every slot at 2^bits - 1 before weighting
    alternating = np.where(np.arange(spec.length) % 2 == 0, 1.0, -1.0)  # max next to zero
    for vector, expected in ((top, np.ones(spec.length)), (alternating, alternating)):
        vectors = [vector] * max_parties
        weights = [max_weight] * max_parties
        mean, updates = run_round(spec, pair, vectors, weights, encryptor)
        assert np.array_equal(mean, expected)
        total = packing.add_encrypted(spec, [u.ciphertexts for u in updates])
        slots = raw_slots(spec, pair[1], total)
        full = spec.levels * max_weight * max_parties
        assert full < 2**spec.slot_bits
        assert int(slots[0]) == full
        assert all(pair[1].raw_decrypt(c) < pair[0].n // 2 for c in total)


def test_declared_weight_lower_than_encrypted_is_detected(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 10, max_parties=2, max_weight=10)
    updates = [packing.pack_update(spec, np.ones(10), w, encryptor) for w in (3, 4)]
    total = packing.add_encrypted(spec, [u.ciphertexts for u in updates])
    with pytest.raises(AggregateOverflow, match="total_weight=2"):
        packing.unpack_aggregate(spec, total, pair[1], 2, 2)


def test_plaintexts_outside_the_layout_are_detected(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 5, max_parties=2, max_weight=10)
    above = encryptor.encrypt(1 << (spec.slots * spec.slot_bits))
    with pytest.raises(AggregateOverflow, match="above its"):
        packing.unpack_aggregate(spec, [above], pair[1], 1, 1)
    padding = encryptor.encrypt(1 << (spec.slot_bits * (spec.slots - 1)))
    with pytest.raises(AggregateOverflow, match="padding"):
        packing.unpack_aggregate(spec, [padding], pair[1], 1, 1)


def test_unpack_argument_checks(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 5, max_parties=2, max_weight=10)
    cts = packing.pack_update(spec, np.zeros(5), 1, encryptor).ciphertexts
    sk = pair[1]
    for total_weight, parties in ((1, 3), (1, 0), (1, 2), (21, 2), (11, 1), (1.0, 1)):
        with pytest.raises(PackingError):
            packing.unpack_aggregate(spec, cts, sk, total_weight, parties)
    _, other_sk = phe.generate_paillier_keypair(n_length=1024)
    with pytest.raises(KeyMismatch):
        packing.unpack_aggregate(spec, cts, other_sk, 1, 1)
    with pytest.raises(ShapeMismatch):
        packing.unpack_aggregate(spec, cts + cts, sk, 1, 1)


def test_decrypt_workers_agree(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 2000, max_parties=2, max_weight=10)
    vector = np.random.default_rng(1).uniform(-1, 1, spec.length)
    cts = packing.pack_update(spec, vector, 7, encryptor).ciphertexts
    one = packing.unpack_aggregate(spec, cts, pair[1], 7, 1, workers=1)
    two = packing.unpack_aggregate(spec, cts, pair[1], 7, 1, workers=2)
    assert np.array_equal(one, two)
    assert np.max(np.abs(one - vector)) <= spec.quantization_bound(7)


# --- pack_update input checks -------------------------------------------------------------------

def test_pack_update_refuses_bad_input(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 4, max_parties=2, max_weight=10)
    for vector in (np.zeros(3), np.zeros(5), np.zeros((2, 2)), np.zeros(0), 0.0):
        with pytest.raises(ShapeMismatch):
            packing.pack_update(spec, vector, 1, encryptor)
    with pytest.raises(PackingError, match="not a numeric vector"):
        packing.pack_update(spec, ["a"] * 4, 1, encryptor)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(PackingError, match="NaN or infinite"):
            packing.pack_update(spec, np.array([0.0, bad, 0.0, 0.0]), 1, encryptor)
    for weight in (0, -1, 11, 1.0, True, "2", None):
        with pytest.raises(PackingError, match="weight"):
            packing.pack_update(spec, np.zeros(4), weight, encryptor)
    other = Encryptor(phe.generate_paillier_keypair(n_length=1024)[0])
    with pytest.raises(KeyMismatch):
        packing.pack_update(spec, np.zeros(4), 1, other)
    # a list works as well as an array, and numpy integers as weights
    assert packing.pack_update(spec, [0.1, 0.2, 0.3, 0.4], np.int64(3), encryptor).weight == 3


# --- the service's checks -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def upload(pair, encryptor):
    spec = PackSpec.create(pair[0].n, 100, max_parties=3, max_weight=10)
    vector = np.linspace(-1, 1, 100)
    return spec, packing.pack_update(spec, vector, 2, encryptor).ciphertexts


def test_check_ciphertexts_refuses_out_of_range(pair, upload):
    spec, cts = upload
    pk, sk = pair
    packing.check_ciphertexts(spec, cts)
    nsq = pk.nsquare
    for bad in (0, nsq, nsq + 5, -1, -cts[0], sk.p, 3 * sk.q, pk.n, sk.p * 12345,
                3.0, str(cts[0]), True, None, np.float64(5)):
        for i in (0, len(cts) - 1):
            tampered = list(cts)
            tampered[i] = bad
            with pytest.raises(CiphertextOutOfRange, match=f"ciphertext {i}"):
                packing.check_ciphertexts(spec, tampered)


def test_check_ciphertexts_refuses_wrong_counts(upload):
    spec, cts = upload
    for wrong in ([], cts[:-1], cts + cts[:1]):
        with pytest.raises(ShapeMismatch, match=f"expected {spec.ciphertexts}"):
            packing.check_ciphertexts(spec, wrong)


def test_check_ciphertexts_accepts_mpz(upload):
    """gmpy2 integers are integers: accepted by the check, and aggregated exactly as ints."""
    spec, cts = upload
    as_mpz = [gmpy2.mpz(c) for c in cts]
    assert packing.check_ciphertexts(spec, as_mpz) is None
    assert packing.add_encrypted(spec, [as_mpz, cts]) == packing.add_encrypted(spec, [cts, cts])
    with pytest.raises(CiphertextOutOfRange, match="ciphertext 0"):
        packing.check_ciphertexts(spec, [gmpy2.mpz(0)] + as_mpz[1:])


def test_add_encrypted_refuses(upload):
    spec, cts = upload
    with pytest.raises(TooManyUpdates, match="max_parties=3"):
        packing.add_encrypted(spec, [cts] * 4)
    with pytest.raises(PackingError, match="no updates"):
        packing.add_encrypted(spec, [])
    with pytest.raises(CiphertextOutOfRange, match="update 1: ciphertext 0"):
        packing.add_encrypted(spec, [cts, [0] + cts[1:]])
    with pytest.raises(ShapeMismatch, match="update 2"):
        packing.add_encrypted(spec, [cts, cts, cts[:-1]])


def test_add_encrypted_is_homomorphic_addition(pair, upload):
    spec, cts = upload
    total = packing.add_encrypted(spec, [cts, cts, cts])
    slots = raw_slots(spec, pair[1], total)
    single = raw_slots(spec, pair[1], cts)
    assert np.array_equal(slots, 3 * single)
    assert packing.add_encrypted(spec, [cts]) == cts


def test_bytes_round_trip(upload):
    spec, cts = upload
    data = packing.ciphertexts_to_bytes(spec, cts)
    assert len(data) == spec.ciphertexts * spec.ciphertext_bytes == spec.update_bytes
    assert spec.ciphertext_bytes == 256  # a 1024-bit n: n^2 has 2048 bits
    assert packing.ciphertexts_from_bytes(spec, data) == cts
    assert packing.ciphertexts_from_bytes(spec, memoryview(data)) == cts
    for wrong in (b"", data[:-1], data + b"\x00", data[: spec.ciphertext_bytes]):
        with pytest.raises(ShapeMismatch, match=f"expected {spec.update_bytes} bytes"):
            packing.ciphertexts_from_bytes(spec, wrong)
    zeroed = bytes(spec.ciphertext_bytes) + data[spec.ciphertext_bytes:]
    with pytest.raises(CiphertextOutOfRange):
        packing.ciphertexts_from_bytes(spec, zeroed)
    with pytest.raises(CiphertextOutOfRange):
        packing.ciphertexts_to_bytes(spec, [0] + cts[1:])


def test_100k_update_is_well_under_a_few_megabytes():
    n = phe.generate_paillier_keypair(n_length=2048)[0].n
    spec = PackSpec.create(n, 100_000, max_parties=5, max_weight=1000)
    assert spec.ciphertext_bytes == 512
    assert spec.update_bytes < 1_000_000  # float32 would be 400 kB


# --- encryption: interop with phe, CRT and pool paths -------------------------------------------

@pytest.mark.parametrize("crt", [True, False])
def test_phe_decrypts_what_encryptor_produces(pair, crt):
    pk, sk = pair
    enc = Encryptor(pk, sk if crt else None)
    assert enc.crt is crt
    samples = [0, 1, 2**64 + 3, pk.n // 2, pk.n - 1]
    cts = enc.encrypt_many(samples)
    assert [sk.raw_decrypt(c) for c in cts] == samples
    assert packing.decrypt_many(sk, cts) == samples
    # phe's own EncryptedNumber arithmetic works on our ciphertexts
    a, b = phe.EncryptedNumber(pk, cts[1]), phe.EncryptedNumber(pk, cts[2])
    assert sk.decrypt(a + b) == 2**64 + 4
    assert sk.raw_decrypt((a + b).ciphertext()) == 2**64 + 4
    assert len(set(cts)) == len(cts)
    # and our decryption reads phe's ciphertexts
    assert packing.decrypt_many(sk, [pk.raw_encrypt(12345)]) == [12345]


def test_encrypt_refuses_plaintexts_out_of_range(pair, encryptor):
    for m in (-1, pair[0].n, pair[0].n + 1, 1.0, None):
        with pytest.raises(PackingError, match="plaintext 0"):
            encryptor.encrypt_many([m])


@pytest.mark.parametrize("crt", [True, False])
def test_obfuscators_are_random_nth_residues(pair, crt):
    # r^n mod n^2 are exactly the elements whose order divides lambda = lcm(p-1, q-1)
    pk, sk = pair
    lam = (sk.p - 1) * (sk.q - 1) // math.gcd(sk.p - 1, sk.q - 1)
    enc = Encryptor(pk, sk if crt else None)
    xs = [enc.obfuscator() for _ in range(20)]
    assert all(gmpy2.powmod(x, lam, pk.nsquare) == 1 for x in xs)
    assert all(x != 1 for x in xs) and len(set(xs)) == len(xs)


def test_encryptor_refuses_a_foreign_private_key(pair):
    pk, _ = pair
    _, other_sk = phe.generate_paillier_keypair(n_length=1024)
    with pytest.raises(KeyMismatch):
        Encryptor(pk, other_sk)
    with pytest.raises(PackingError):
        Encryptor(pk, pool_size=-1)
    with pytest.raises(PackingError, match="pool_size=0"):
        Encryptor(pk).start_pool()


def test_pool_and_inline_paths_decrypt_alike(pair):
    pk, sk = pair
    spec = PackSpec.create(pk.n, 3000, max_parties=2, max_weight=100)
    assert spec.ciphertexts > 16  # drains the pool, then computes inline
    vector = np.random.default_rng(3).uniform(-1.5, 1.5, spec.length)
    inline = Encryptor(pk, sk)
    pooled = Encryptor(pk, sk, pool_size=16)
    with pooled:
        assert pooled.wait_pool(timeout=60)
        assert pooled.pooled == 16
        updates = [packing.pack_update(spec, vector, 40, e) for e in (inline, pooled)]
        assert pooled.wait_pool(timeout=60)  # refilled in the background
    assert pooled.pooled == 0  # stop() drops the secrets
    means = [packing.unpack_aggregate(spec, u.ciphertexts, sk, 40, 1) for u in updates]
    assert np.array_equal(means[0], means[1])
    assert np.max(np.abs(means[0] - np.clip(vector, -1, 1))) <= spec.quantization_bound(40)
    assert updates[0].ciphertexts != updates[1].ciphertexts
    # after stop() the encryptor still works, inline
    again = packing.pack_update(spec, vector, 40, pooled)
    assert np.array_equal(packing.unpack_aggregate(spec, again.ciphertexts, sk, 40, 1), means[0])


def test_public_key_only_pool(pair):
    pk, sk = pair
    with Encryptor(pk, pool_size=3) as enc:
        assert enc.wait_pool(timeout=60)
        cts = enc.encrypt_many([5, 6, 7, 8, 9])
    assert [sk.raw_decrypt(c) for c in cts] == [5, 6, 7, 8, 9]


def test_wait_pool_needs_a_started_pool(pair):
    with pytest.raises(PackingError, match="not started"):
        Encryptor(pair[0], pool_size=2).wait_pool(timeout=0.1)


# --- PackSpec -----------------------------------------------------------------------------------

def test_spec_derived_sizes():
    n = phe.generate_paillier_keypair(n_length=2048)[0].n
    spec = PackSpec.create(n, 100_000, max_parties=5, max_weight=1)
    assert (spec.headroom_bits, spec.slot_bits, spec.slots, spec.ciphertexts) == (3, 19, 107, 935)
    assert PackSpec.create(n, 1, max_parties=4, max_weight=2).headroom_bits == 3
    assert PackSpec.create(n, 1, max_parties=9, max_weight=1).headroom_bits == 4
    assert PackSpec.create(n, 1, max_parties=1, max_weight=1).headroom_bits == 0
    assert PackSpec.create(n, 1, max_parties=5, max_weight=1000).slot_bits == 16 + 13
    assert PackSpec.create(n, 107, max_parties=5, max_weight=1).ciphertexts == 1
    assert PackSpec.create(n, 108, max_parties=5, max_weight=1).ciphertexts == 2


@pytest.mark.parametrize("change,match", [
    (dict(n=2**1023 + 2), "odd"),
    (dict(n=2**16 + 1), "cannot hold one"),
    (dict(n="123"), "n must be an integer"),
    (dict(length=0), "length"),
    (dict(length=2.0), "length"),
    (dict(bits=0), "bits"),
    (dict(bits=49), "bits"),
    (dict(clip=0.0), "clip"),
    (dict(clip=-1.0), "clip"),
    (dict(clip=math.nan), "clip"),
    (dict(clip=math.inf), "clip"),
    (dict(clip=True), "clip"),
    (dict(clip="1"), "clip"),
    (dict(max_parties=0), "max_parties"),
    (dict(max_weight=0), "max_weight"),
    (dict(max_weight=True), "max_weight"),
    (dict(bits=48, max_weight=2**20), "more than 64"),
])
def test_spec_validation(pair, change, match):
    args = dict(n=pair[0].n, length=10, bits=16, clip=1.0, max_parties=3, max_weight=10)
    args.update(change)
    with pytest.raises(PackingError, match=match):
        PackSpec.create(**args)
    with pytest.raises(PackingError, match=match):
        PackSpec(**args)  # the dataclass validates on its own too


def test_spec_needs_max_parties_and_max_weight(pair):
    with pytest.raises(TypeError):
        PackSpec(pair[0].n, 10)  # no silent default for what sizes the headroom
    spec = PackSpec(pair[0].n, 10, 12, 0.5, max_parties=2, max_weight=3)
    assert spec == PackSpec.create(pair[0].n, 10, bits=12, clip=0.5, max_parties=2,
                                   max_weight=3)
    assert isinstance(spec.clip, float) and hash(spec) == hash(PackSpec.from_json(spec.to_json()))


def test_spec_json_round_trip(pair):
    spec = PackSpec.create(pair[0].n, 77, bits=12, clip=0.25, max_parties=4, max_weight=99)
    data = spec.to_json()
    assert data["n"] == str(pair[0].n)
    assert PackSpec.from_json(data) == spec
    assert PackSpec.from_json({**data, "n": pair[0].n}) == spec
    assert PackSpec.from_json(json.loads(json.dumps(data))) == spec
    defaults = PackSpec.from_json({"n": str(pair[0].n), "length": 3, "max_parties": 2,
                                   "max_weight": 5})
    assert (defaults.bits, defaults.clip) == (16, 1.0)


@pytest.mark.parametrize("data,match", [
    (None, "JSON object"),
    ({"n": "1", "length": 1, "max_parties": 1}, "lacks max_weight"),
    ({"v": 2, "n": "1", "length": 1, "max_parties": 1, "max_weight": 1}, "version"),
    ({"n": "12a", "length": 1, "max_parties": 1, "max_weight": 1}, "decimal"),
    ({"n": "-13", "length": 1, "max_parties": 1, "max_weight": 1}, "decimal"),
])
def test_spec_from_json_refuses(data, match):
    with pytest.raises(PackingError, match=match):
        PackSpec.from_json(data)


def test_plain_fedavg_reference():
    vectors = [np.array([0.5, 3.0]), np.array([-0.5, -3.0])]
    assert np.allclose(packing.plain_fedavg(vectors, [3, 1]), [0.25, 1.5])
    assert np.allclose(packing.plain_fedavg(vectors, [3, 1], clip=1.0), [0.25, 0.5])
