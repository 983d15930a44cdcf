"""Keys of a federated project: the shared Paillier pair, and X25519 keys to hand it over.

The trainers of a project share one Paillier key pair; the service keeps only the public key.
A member's client generates an X25519 "partner key" kept in the user's home (0600) and
publishes its public half; a member who holds the Paillier private key wraps it for that public
key, and the service stores the wrapped blob without being able to open it.

Wrapping is ECIES-style: X25519 between a fresh ephemeral key and the recipient's key,
HKDF-SHA256 (salt = ephemeral public || recipient public, which binds the derived key to this
exchange; info = ``WRAP_INFO + context``), AES-256-GCM with a random 96-bit nonce and
``context`` (e.g. the project's id) as associated data, so a blob wrapped for one project does
not open as another's. The plaintext is ``{"p": "<decimal>", "q": "<decimal>"}``.

A unit authenticates its members' X25519 keys with an Ed25519 *unit signing key* kept in the
unit's own FL home (0600); the service stores only its public half (registered once by a
publisher of the unit, replaced only by an operator, both certified in the log). A member's
X25519 key is registered with the unit key's signature over :func:`member_key_statement`, and a
client verifies that signature (:func:`verify_member_key`) before it wraps the Paillier key
for that member.

Binary values in JSON are URL-safe base64 without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import phe
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_SIZES = (2048, 3072)
WRAP_VERSION = 1
WRAP_INFO = b"grid-market fl key wrap v1"
MEMBER_KEY_PURPOSE = "grid-market/fl/member-key/v1"
_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class KeySizeError(ValueError):
    """A Paillier modulus size other than the supported 2048 and 3072 bits."""


class KeyFormatError(ValueError):
    """A key (JSON, text, file or raw bytes) is malformed."""


class KeySignatureError(ValueError):
    """A member's X25519 key is not signed by its unit's registered Ed25519 key."""


class KeyUnwrapError(ValueError):
    """A wrapped private key does not open: wrong recipient key, wrong context, wrong public
    key, or a damaged or tampered blob."""


def _check_size(n_length: Any) -> int:
    if isinstance(n_length, bool) or not isinstance(n_length, int) or n_length not in KEY_SIZES:
        raise KeySizeError(
            f"Paillier keys must be {' or '.join(map(str, KEY_SIZES))} bits, got {n_length!r}"
        )
    return n_length


# --- Paillier -----------------------------------------------------------------------------------


def generate_paillier_keypair(
    n_length: int = 2048,
) -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    """A fresh pair from phe (primes from the OS RNG); ``n`` has exactly ``n_length`` bits."""
    return phe.generate_paillier_keypair(n_length=_check_size(n_length))


def public_key_to_json(public_key: phe.PaillierPublicKey) -> dict[str, str]:
    return {"n": str(public_key.n)}


def public_key_from_json(data: Any) -> phe.PaillierPublicKey:
    """Parse ``{"n": "<decimal>"}``; the modulus must be odd and of a supported size."""
    if not isinstance(data, dict) or not isinstance(data.get("n"), str):
        raise KeyFormatError('a Paillier public key must be a JSON object {"n": "<decimal>"}')
    text = data["n"]
    if not (text.isascii() and text.isdigit()) or text.startswith("0"):
        raise KeyFormatError(
            "the public key's n must be a decimal integer without sign or leading zeros"
        )
    n = int(text)
    if n.bit_length() not in KEY_SIZES:
        raise KeySizeError(
            f"the public key's n has {n.bit_length()} bits; "
            f"expected {' or '.join(map(str, KEY_SIZES))}"
        )
    if n % 2 == 0:
        raise KeyFormatError("the public key's n is even: not a Paillier modulus")
    return phe.PaillierPublicKey(n)


def key_fingerprint(public_key: phe.PaillierPublicKey) -> str:
    """SHA-256 of n's minimal big-endian bytes, all 64 hex digits (fits the 64-character
    column; shorten only for display). Equal keys give equal fingerprints, across processes."""
    n = public_key.n
    return hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()


# --- X25519 partner keys ------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: Any, what: str, error: type[ValueError]) -> bytes:
    # strict: urlsafe_b64decode would silently skip characters outside the alphabet
    if not isinstance(text, str) or not _B64.fullmatch(text):
        raise error(f"{what} is not URL-safe base64 text")
    stripped = text.rstrip("=")
    try:
        data = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as e:
        raise error(f"{what} is not valid base64: {e}") from None
    canonical = base64.urlsafe_b64encode(data).decode("ascii")
    if text not in (canonical, canonical.rstrip("=")):  # one text per value, padded or not
        raise error(f"{what} is not canonical base64")
    return data


def generate_partner_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def partner_public_bytes(private_key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_public(raw: bytes) -> str:
    """Text form of a raw X25519 public key (43 characters)."""
    if not isinstance(raw, bytes) or len(raw) != 32:
        raise KeyFormatError("an X25519 public key is 32 raw bytes")
    return _b64encode(raw)


def decode_public(text: str) -> bytes:
    raw = _b64decode(text, "the X25519 public key", KeyFormatError)
    if len(raw) != 32:
        raise KeyFormatError(f"an X25519 public key is 32 bytes, this text gives {len(raw)}")
    return raw


def save_partner_key(
    private_key: X25519PrivateKey, path: Path | str, *, overwrite: bool = False
) -> Path:
    """Write the raw 32-byte private key with mode 0600 (parent created 0700 if missing).

    Refuses to replace an existing key unless ``overwrite``: a lost partner key makes every
    private key wrapped for it unreadable. The file appears complete or not at all.
    """
    return _save_raw_key(private_key, Path(path), "partner key", overwrite)


def _save_raw_key(
    private_key: X25519PrivateKey | Ed25519PrivateKey, path: Path, what: str, overwrite: bool
) -> Path:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace the {what}")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask; be exact
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_partner_key(path: Path | str) -> X25519PrivateKey:
    raw = Path(path).read_bytes()
    if len(raw) != 32:
        raise KeyFormatError(f"{path} holds {len(raw)} bytes, not a raw 32-byte X25519 key")
    return X25519PrivateKey.from_private_bytes(raw)


# --- unit signing keys (Ed25519) ----------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def signing_public_text(private_key: Ed25519PrivateKey) -> str:
    """Text form (URL-safe base64, 43 characters) of a signing key's public half."""
    return _b64encode(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def encode_signing_public(raw: bytes) -> str:
    if not isinstance(raw, bytes) or len(raw) != 32:
        raise KeyFormatError("an Ed25519 public key is 32 raw bytes")
    return _b64encode(raw)


def decode_signing_public(text: Any) -> bytes:
    """The raw 32 bytes of an Ed25519 public key's text form (a valid curve point)."""
    raw = _b64decode(text, "the Ed25519 public key", KeyFormatError)
    if len(raw) != 32:
        raise KeyFormatError(f"an Ed25519 public key is 32 bytes, this text gives {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise KeyFormatError(f"not an Ed25519 public key: {e}") from None
    return raw


def save_signing_key(
    private_key: Ed25519PrivateKey, path: Path | str, *, overwrite: bool = False
) -> Path:
    """Write the unit's raw 32-byte Ed25519 private key with mode 0600 (see
    :func:`save_partner_key`)."""
    return _save_raw_key(private_key, Path(path), "unit signing key", overwrite)


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    raw = Path(path).read_bytes()
    if len(raw) != 32:
        raise KeyFormatError(f"{path} holds {len(raw)} bytes, not a raw 32-byte Ed25519 key")
    return Ed25519PrivateKey.from_private_bytes(raw)


def member_key_statement(project_id: int, unit: str, x25519_public_key: str) -> bytes:
    """What a unit signs to vouch for a member key: the key, bound to one project and unit."""
    if isinstance(project_id, bool) or not isinstance(project_id, int):
        raise TypeError("project_id must be an int")
    return json.dumps(
        {
            "purpose": MEMBER_KEY_PURPOSE,
            "project": project_id,
            "unit": unit,
            "x25519_public_key": x25519_public_key,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def sign_member_key(
    signing_key: Ed25519PrivateKey, project_id: int, unit: str, x25519_public_key: str
) -> str:
    """The unit's signature (URL-safe base64, 86 characters) on a member's X25519 key."""
    return _b64encode(signing_key.sign(member_key_statement(project_id, unit, x25519_public_key)))


def verify_member_key(
    signing_public: str, signature: Any, project_id: int, unit: str, x25519_public_key: str
) -> None:
    """Raise :class:`KeySignatureError` unless ``signature`` is ``signing_public``'s signature
    on ``x25519_public_key`` for ``unit`` in ``project_id``."""
    try:
        public = Ed25519PublicKey.from_public_bytes(decode_signing_public(signing_public))
        raw = _b64decode(signature, "the signature", KeySignatureError)
    except KeyFormatError as e:
        raise KeySignatureError(str(e)) from None
    if len(raw) != 64:
        raise KeySignatureError(f"an Ed25519 signature is 64 bytes, this text gives {len(raw)}")
    try:
        public.verify(raw, member_key_statement(project_id, unit, x25519_public_key))
    except InvalidSignature:
        raise KeySignatureError(
            f"the X25519 key of unit {unit} in project {project_id} is not signed by the unit's "
            "registered Ed25519 key"
        ) from None


# --- wrapping -----------------------------------------------------------------------------------


def _wrapping_key(shared: bytes, epk: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=WRAP_INFO + context
    ).derive(shared)


def _check_context(context: Any) -> bytes:
    if not isinstance(context, bytes):
        raise TypeError(f"context must be bytes, got {type(context).__name__}")
    return context


def wrap_private_key(
    private_key: phe.PaillierPrivateKey, recipient_public: bytes, *, context: bytes
) -> dict[str, Any]:
    """Encrypt p and q for the holder of ``recipient_public`` (raw 32 bytes); JSON-safe."""
    context = _check_context(context)
    if not isinstance(recipient_public, bytes) or len(recipient_public) != 32:
        raise KeyFormatError("the recipient's X25519 public key must be 32 raw bytes")
    ephemeral = X25519PrivateKey.generate()
    epk = partner_public_bytes(ephemeral)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError as e:  # a low-order point: no shared secret
        raise KeyFormatError(f"unusable recipient public key: {e}") from None
    key = _wrapping_key(shared, epk, recipient_public, context)
    nonce = os.urandom(12)
    plaintext = json.dumps({"p": str(private_key.p), "q": str(private_key.q)}).encode()
    ct = AESGCM(key).encrypt(nonce, plaintext, context)
    return {
        "v": WRAP_VERSION,
        "epk": _b64encode(epk),
        "nonce": _b64encode(nonce),
        "ct": _b64encode(ct),
    }


def unwrap_private_key(
    wrapped: Any,
    recipient_private: X25519PrivateKey,
    *,
    public_key: phe.PaillierPublicKey,
    context: bytes,
) -> phe.PaillierPrivateKey:
    """Open a :func:`wrap_private_key` blob; the result is checked against ``public_key``."""
    context = _check_context(context)
    if not isinstance(wrapped, dict) or wrapped.get("v") != WRAP_VERSION:
        raise KeyUnwrapError(f"not a wrapped key of version {WRAP_VERSION}")
    epk = _b64decode(wrapped.get("epk"), "epk", KeyUnwrapError)
    nonce = _b64decode(wrapped.get("nonce"), "nonce", KeyUnwrapError)
    ct = _b64decode(wrapped.get("ct"), "ct", KeyUnwrapError)
    if len(epk) != 32 or len(nonce) != 12:
        raise KeyUnwrapError("epk must be 32 bytes and nonce 12 bytes")
    try:
        shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError as e:
        raise KeyUnwrapError(f"unusable ephemeral key: {e}") from None
    key = _wrapping_key(shared, epk, partner_public_bytes(recipient_private), context)
    try:
        plaintext = AESGCM(key).decrypt(nonce, ct, context)
    except InvalidTag:
        raise KeyUnwrapError(
            "the wrapped key does not open: not wrapped for this partner key, another "
            "context, or altered"
        ) from None
    try:
        fields = json.loads(plaintext)
        p, q = int(fields["p"]), int(fields["q"])
    except (ValueError, KeyError, TypeError) as e:
        raise KeyUnwrapError(f"the unwrapped key is malformed: {e}") from None
    if p <= 1 or q <= 1 or p == q or p * q != public_key.n:
        raise KeyUnwrapError("the unwrapped p and q do not match the project's public key")
    return phe.PaillierPrivateKey(public_key, p, q)
