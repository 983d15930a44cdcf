"""Keys of the federated zone with real crypto: Paillier sizes and JSON, fingerprints, X25519
partner keys on disk, and wrapping the Paillier private key for a partner."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import stat

import phe
import pytest

from marketplace_ext.federated import keys
from marketplace_ext.federated.keys import KeyFormatError, KeySizeError, KeyUnwrapError


@pytest.fixture(scope="module")
def pair():
    return keys.generate_paillier_keypair(2048)


@pytest.fixture(scope="module")
def partner():
    return keys.generate_partner_key()


def test_generated_key_sizes_and_refused_sizes(pair):
    pk, sk = pair
    assert pk.n.bit_length() == 2048
    assert sk.p * sk.q == pk.n
    pk3, sk3 = keys.generate_paillier_keypair(3072)
    assert pk3.n.bit_length() == 3072 and sk3.p * sk3.q == pk3.n
    for bad in (1024, 4096, 2047, "2048", 2048.0, True, None):
        with pytest.raises(KeySizeError, match="2048 or 3072"):
            keys.generate_paillier_keypair(bad)
    assert issubclass(KeySizeError, ValueError) and not issubclass(KeySizeError, KeyError)


def test_public_key_json_round_trip(pair):
    pk, _ = pair
    data = keys.public_key_to_json(pk)
    assert data == {"n": str(pk.n)}
    assert keys.public_key_from_json(data) == pk


@pytest.mark.parametrize("data", [
    None, [], {}, {"n": 12345}, {"n": ""}, {"n": "-5"}, {"n": "0x1f"}, {"n": " 77"},
    {"n": "0123"}, {"n": "１２３"},
])
def test_public_key_json_malformed(data):
    with pytest.raises(KeyFormatError):
        keys.public_key_from_json(data)


def test_public_key_json_wrong_size_or_even(pair):
    pk, _ = pair
    small, _ = phe.generate_paillier_keypair(n_length=1024)
    with pytest.raises(KeySizeError, match="1024 bits"):
        keys.public_key_from_json({"n": str(small.n)})
    with pytest.raises(KeyFormatError, match="even"):
        keys.public_key_from_json({"n": str(pk.n + 1)})


def test_fingerprint_is_stable_and_distinguishes_keys(pair):
    pk, _ = pair
    fp = keys.key_fingerprint(pk)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert keys.key_fingerprint(keys.public_key_from_json(keys.public_key_to_json(pk))) == fp
    assert keys.key_fingerprint(phe.PaillierPublicKey(pk.n)) == fp
    other, _ = keys.generate_paillier_keypair(2048)
    assert keys.key_fingerprint(other) != fp


def test_fingerprint_pinned_value():
    # the definition, pinned: sha256 over n's minimal big-endian bytes
    n = 2**2047 + 1
    expected = hashlib.sha256(b"\x80" + b"\x00" * 254 + b"\x01").hexdigest()
    assert keys.key_fingerprint(phe.PaillierPublicKey(n)) == expected


def test_public_text_form_round_trip(partner):
    raw = keys.partner_public_bytes(partner)
    assert len(raw) == 32
    text = keys.encode_public(raw)
    assert len(text) == 43 and "=" not in text
    assert keys.decode_public(text) == raw
    assert keys.decode_public(text + "=") == raw  # padded form accepted


@pytest.mark.parametrize("text", [
    "", "abc", "A" * 42, "A" * 44, "A" * 43 + "==", "+" * 43, "/" * 43, "A" * 42 + " ",
    "A" * 42 + "B",  # non-zero unused bits: not canonical
    None, b"A" * 43,
])
def test_decode_public_refuses(text):
    with pytest.raises(KeyFormatError):
        keys.decode_public(text)


def test_encode_public_refuses_wrong_length():
    with pytest.raises(KeyFormatError):
        keys.encode_public(b"\x01" * 31)


def test_partner_key_file_mode_and_round_trip(tmp_path, partner):
    path = tmp_path / "home" / ".grid-market" / "fl_partner.key"
    old_umask = os.umask(0)  # the mode must not depend on a permissive umask
    try:
        keys.save_partner_key(partner, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_size == 32
    loaded = keys.load_partner_key(path)
    assert keys.partner_public_bytes(loaded) == keys.partner_public_bytes(partner)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_partner_key_not_overwritten_by_default(tmp_path, partner):
    path = tmp_path / "k"
    keys.save_partner_key(partner, path)
    other = keys.generate_partner_key()
    with pytest.raises(FileExistsError):
        keys.save_partner_key(other, path)
    keys.save_partner_key(other, path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.partner_public_bytes(keys.load_partner_key(path)) == \
        keys.partner_public_bytes(other)


def test_load_partner_key_wrong_length(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"\x00" * 31)
    with pytest.raises(KeyFormatError, match="31 bytes"):
        keys.load_partner_key(path)


# --- wrapping -----------------------------------------------------------------------------------

def test_wrap_unwrap_round_trip(pair, partner):
    pk, sk = pair
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"project:7")
    assert set(wrapped) == {"v", "epk", "nonce", "ct"} and wrapped["v"] == 1
    assert str(sk.p) not in str(wrapped) and str(sk.q) not in str(wrapped)
    got = keys.unwrap_private_key(wrapped, partner, public_key=pk, context=b"project:7")
    assert isinstance(got, phe.PaillierPrivateKey)
    assert {got.p, got.q} == {sk.p, sk.q}
    assert got.decrypt(pk.encrypt(42)) == 42


def test_wraps_are_randomized(pair, partner):
    _, sk = pair
    recipient = keys.partner_public_bytes(partner)
    a = keys.wrap_private_key(sk, recipient, context=b"p")
    b = keys.wrap_private_key(sk, recipient, context=b"p")
    assert a["epk"] != b["epk"] and a["nonce"] != b["nonce"] and a["ct"] != b["ct"]


def test_unwrap_wrong_recipient(pair, partner):
    pk, sk = pair
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"p1")
    with pytest.raises(KeyUnwrapError, match="does not open"):
        keys.unwrap_private_key(wrapped, keys.generate_partner_key(), public_key=pk,
                                context=b"p1")


def test_unwrap_wrong_context(pair, partner):
    pk, sk = pair
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"p1")
    for context in (b"p2", b"", b"p1\x00"):
        with pytest.raises(KeyUnwrapError, match="does not open"):
            keys.unwrap_private_key(wrapped, partner, public_key=pk, context=context)


def _flip(text: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("field,index", [
    ("ct", 0), ("ct", 40), ("ct", -1), ("nonce", 0), ("nonce", 11), ("epk", 0), ("epk", 17),
])
def test_unwrap_tampered(pair, partner, field, index):
    pk, sk = pair
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"p")
    tampered = dict(wrapped, **{field: _flip(wrapped[field], index)})
    with pytest.raises(KeyUnwrapError):
        keys.unwrap_private_key(tampered, partner, public_key=pk, context=b"p")


@pytest.mark.parametrize("mutate", [
    lambda w: None,
    lambda w: [],
    lambda w: {**w, "v": 2},
    lambda w: {k: v for k, v in w.items() if k != "ct"},
    lambda w: {**w, "ct": w["ct"] + "!"},
    lambda w: {**w, "ct": w["ct"][:-10]},
    lambda w: {**w, "nonce": w["nonce"][:8]},
    lambda w: {**w, "epk": 12},
    lambda w: {**w, "epk": "A" * 43},  # the all-zero point: no shared secret
])
def test_unwrap_malformed(pair, partner, mutate):
    pk, sk = pair
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"p")
    with pytest.raises(KeyUnwrapError):
        keys.unwrap_private_key(mutate(copy.deepcopy(wrapped)), partner, public_key=pk,
                                context=b"p")


def test_unwrap_against_another_public_key(pair, partner):
    pk, sk = pair
    other, _ = keys.generate_paillier_keypair(2048)
    wrapped = keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context=b"p")
    with pytest.raises(KeyUnwrapError, match="do not match"):
        keys.unwrap_private_key(wrapped, partner, public_key=other, context=b"p")


def test_wrap_argument_checks(pair, partner):
    _, sk = pair
    with pytest.raises(KeyFormatError):
        keys.wrap_private_key(sk, b"\x01" * 31, context=b"p")
    with pytest.raises(KeyFormatError, match="unusable"):
        keys.wrap_private_key(sk, b"\x00" * 32, context=b"p")
    with pytest.raises(TypeError):
        keys.wrap_private_key(sk, keys.partner_public_bytes(partner), context="p")


# --- units' signing keys and signed member keys -------------------------------------------------


def test_signing_key_file_and_text_form(tmp_path):
    key = keys.generate_signing_key()
    path = keys.save_signing_key(key, tmp_path / "fl" / "unit-signing.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 32
    with pytest.raises(FileExistsError):
        keys.save_signing_key(keys.generate_signing_key(), path)
    text = keys.signing_public_text(keys.load_signing_key(path))
    assert text == keys.signing_public_text(key) and len(text) == 43
    assert keys.encode_signing_public(keys.decode_signing_public(text)) == text
    for bad in ("", "x" * 43, text + "A", 42, base64.urlsafe_b64encode(b"\0" * 31).decode()):
        with pytest.raises(KeyFormatError):
            keys.decode_signing_public(bad)


def test_member_key_signature_binds_key_project_and_unit(partner):
    unit_key = keys.generate_signing_key()
    public = keys.signing_public_text(unit_key)
    x25519 = keys.encode_public(keys.partner_public_bytes(partner))
    signature = keys.sign_member_key(unit_key, 7, "b", x25519)
    keys.verify_member_key(public, signature, 7, "b", x25519)  # no exception
    other_x = keys.encode_public(keys.partner_public_bytes(keys.generate_partner_key()))
    other_unit_key = keys.signing_public_text(keys.generate_signing_key())
    # Flip a bit of R (the first byte): the last characters are not a safe place to
    # tamper, since S < 2**253 makes its top byte small and "AA" about 1 time in 16.
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for args in [(public, signature, 8, "b", x25519), (public, signature, 7, "c", x25519),
                 (public, signature, 7, "b", other_x),
                 (other_unit_key, signature, 7, "b", x25519),
                 (public, tampered, 7, "b", x25519),
                 (public, None, 7, "b", x25519), (public, "", 7, "b", x25519),
                 ("garbage", signature, 7, "b", x25519)]:
        with pytest.raises(keys.KeySignatureError):
            keys.verify_member_key(*args)
    statement = keys.member_key_statement(7, "b", x25519)
    assert b'"purpose":"grid-market/fl/member-key/v1"' in statement
    with pytest.raises(TypeError):
        keys.member_key_statement("7", "b", x25519)
