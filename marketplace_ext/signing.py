"""Units' Ed25519 signing keys, held by the service, and statement signatures.

A unit's key signs on its behalf what its members assert through the service (the sharing
agreement of a published version). The private key is sealed with AES-GCM under a
key-encryption key kept in ``var/`` (0600), so the database alone cannot sign.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlalchemy.orm import Session

from .orm import Unit, UnitKey


def canonical_json(obj: object) -> bytes:
    """The bytes that get signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class UnitSigner:
    """Signs statements with a unit's key, creating the key on first use."""

    def __init__(self, kek: bytes):
        if len(kek) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(kek)

    def _seal(self, unit_id: int, raw: bytes) -> str:
        nonce = os.urandom(12)
        return b64(nonce + self._aead.encrypt(nonce, raw, f"unit-key:{unit_id}".encode()))

    def _unseal(self, unit_id: int, sealed: str) -> bytes:
        blob = base64.b64decode(sealed)
        return self._aead.decrypt(blob[:12], blob[12:], f"unit-key:{unit_id}".encode())

    def key_for(self, session: Session, unit: Unit) -> UnitKey:
        key = session.get(UnitKey, unit.id)
        if key is None:
            private = Ed25519PrivateKey.generate()
            raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            key = UnitKey(unit_id=unit.id, public_key=b64(public),
                          sealed_private_key=self._seal(unit.id, raw))
            session.add(key)
            session.flush()
        return key

    def sign(self, session: Session, unit: Unit, statement: dict) -> tuple[str, str, str]:
        """Sign ``statement``; returns (canonical statement text, signature b64, public key b64)."""
        key = self.key_for(session, unit)
        private = Ed25519PrivateKey.from_private_bytes(
            self._unseal(unit.id, key.sealed_private_key)
        )
        payload = canonical_json(statement)
        return payload.decode(), b64(private.sign(payload)), key.public_key


def verify(statement: str, signature: str, public_key: str) -> bool:
    """Check a signature offline, from the values the API returns."""
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key)).verify(
            base64.b64decode(signature), statement.encode()
        )
    except (InvalidSignature, ValueError):
        return False
    return True
