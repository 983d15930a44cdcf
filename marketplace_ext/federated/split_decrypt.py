"""Split decryption of a round's aggregate: each member decrypts one slice, sealed for the others.

Decrypting an aggregate costs two 1024-bit exponentiations per ciphertext (CRT), about 4 ms on
one core for 2048-bit keys: 11,364 ciphertexts for a model of 1M parameters, some 50 s for one
member alone. Every member holds the project's Paillier private key, so the work is shared:

* **Layout.** The aggregate's ciphertexts are cut into contiguous slices, one per unit of the
  round's contributors sorted by slug (fewer when there are fewer ciphertexts than units):
  slice ``i`` is ``[i * C // k, (i + 1) * C // k)`` and belongs to the ``i``-th unit. Every
  member computes the same layout from the round's member list; the service too.
* **Sealing.** A member decrypts its slice (raw plaintexts ``0 <= m < n``, fixed-width
  big-endian) and encrypts them with AES-256-GCM under the members' *slice key*, derived with
  HKDF-SHA256 from the Paillier private key (p and q: only members hold it, the service never
  does; salt = the key's fingerprint). The associated data binds the blob to the project, the
  round and attempt, the aggregate's digest, the slice and the number of slices: a blob posted
  for another project, round, attempt or slice does not open. A blob is
  ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; its size is fixed by the layout, so the
  service checks it without opening anything.
* **Reassembly.** The others fetch every slice, open it and rebuild the aggregate's plaintexts
  in order; :func:`packing.mean_from_plaintexts` turns them into the weighted mean exactly as
  a whole decryption would (same integers, hence bit-identical floats for every member).
* **Take-over.** A slice whose owner does not post it can be decrypted and posted by any
  member; the service keeps the first post of a slice. A blob that does not open (damaged, or
  posted by a member that spoiled it) is decrypted locally instead: a member never depends on
  another for correctness, only for speed.

The service stores and serves the sealed blobs; it sees no plaintext and holds no key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import packing

SLICE_INFO = b"grid-market fl slice key v1"
SLICE_PURPOSE = "grid-market/fl/slice/v1"
NONCE_BYTES = 12
TAG_BYTES = 16


class SliceError(ValueError):
    """A slice index, a sealed slice or a set of slices is invalid."""


@dataclass(frozen=True)
class SliceLayout:
    """How an aggregate of ``ciphertexts`` ciphertexts is cut among ``units`` (sorted)."""

    ciphertexts: int
    units: tuple[str, ...]

    @property
    def count(self) -> int:
        return min(len(self.units), self.ciphertexts)

    def check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.count:
            raise SliceError(f"slice must be an integer in [0, {self.count - 1}], got {index!r}")
        return index

    def bounds(self, index: int) -> tuple[int, int]:
        """[start, stop) of slice ``index`` in the aggregate's ciphertexts."""
        i = self.check_index(index)
        return i * self.ciphertexts // self.count, (i + 1) * self.ciphertexts // self.count

    def owner(self, index: int) -> str:
        return self.units[self.check_index(index)]

    def slices_of(self, unit: str) -> list[int]:
        return [i for i in range(self.count) if self.units[i] == unit]

    def sealed_size(self, index: int, width: int) -> int:
        """Bytes of slice ``index`` sealed, ``width`` bytes per plaintext."""
        start, stop = self.bounds(index)
        return NONCE_BYTES + (stop - start) * width + TAG_BYTES


def layout(ciphertexts: int, units: Iterable[str]) -> SliceLayout:
    """The layout every party derives from the aggregate's size and the round's units."""
    if isinstance(ciphertexts, bool) or not isinstance(ciphertexts, int) or ciphertexts < 1:
        raise SliceError(f"ciphertexts must be a positive integer, got {ciphertexts!r}")
    ordered = tuple(sorted(set(units)))
    if not ordered:
        raise SliceError("a layout needs at least one unit")
    return SliceLayout(ciphertexts, ordered)


def plaintext_width(spec: packing.PackSpec) -> int:
    """Bytes of one raw plaintext (< n) in a sealed slice."""
    return (spec.n.bit_length() + 7) // 8


def slice_key(private_key: Any) -> bytes:
    """The members' AES-256 key for slices: HKDF-SHA256 of the Paillier private key (p, q,
    smaller first), salted with the public key's fingerprint."""
    p, q = sorted((int(private_key.p), int(private_key.q)))
    n = p * q
    width = (n.bit_length() + 7) // 8
    fingerprint = hashlib.sha256(n.to_bytes(width, "big")).digest()
    ikm = p.to_bytes(width, "big") + q.to_bytes(width, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=fingerprint, info=SLICE_INFO).derive(ikm)


def associated_data(
    project_id: int, number: int, attempt: int, aggregate_sha256: str, index: int, count: int
) -> bytes:
    """What a sealed slice is bound to (AES-GCM associated data)."""
    for name, value in (
        ("project_id", project_id),
        ("number", number),
        ("attempt", attempt),
        ("index", index),
        ("count", count),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
    return json.dumps(
        {
            "purpose": SLICE_PURPOSE,
            "project": project_id,
            "round": number,
            "attempt": attempt,
            "aggregate": aggregate_sha256,
            "slice": index,
            "slices": count,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decrypt_slice(
    spec: packing.PackSpec,
    ciphertexts: Sequence[int],
    private_key: Any,
    plan: SliceLayout,
    index: int,
    *,
    workers: int = 1,
) -> list[int]:
    """Raw plaintexts of slice ``index`` of the aggregate ``ciphertexts`` (all of them)."""
    if len(ciphertexts) != plan.ciphertexts:
        raise SliceError(
            f"the layout is for {plan.ciphertexts} ciphertexts, the aggregate has "
            f"{len(ciphertexts)}"
        )
    if int(private_key.public_key.n) != spec.n:
        raise packing.KeyMismatch("the private key is not the project's")
    start, stop = plan.bounds(index)
    return packing.decrypt_many(private_key, ciphertexts[start:stop], workers=workers)


def seal_slice(key: bytes, associated: bytes, plaintexts: Sequence[int], width: int) -> bytes:
    """``nonce || AES-256-GCM(plaintexts as fixed-width big-endian bytes)``."""
    data = b"".join(int(m).to_bytes(width, "big") for m in plaintexts)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, data, associated)


def open_slice(
    key: bytes, associated: bytes, sealed: bytes, expected: int, width: int, n: int
) -> list[int]:
    """The plaintexts of a sealed slice; :class:`SliceError` unless it opens under ``key``
    with exactly ``associated`` and holds ``expected`` plaintexts, each below ``n``."""
    if len(sealed) != NONCE_BYTES + expected * width + TAG_BYTES:
        raise SliceError(
            f"a sealed slice of {expected} plaintexts is "
            f"{NONCE_BYTES + expected * width + TAG_BYTES} bytes, got {len(sealed)}"
        )
    try:
        data = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise SliceError(
            "the slice does not open: another project, round, attempt, slice or key, or altered"
        ) from None
    out = [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]
    if any(m >= n for m in out):
        raise SliceError("the slice holds a value that is not a plaintext (>= n)")
    return out


def reassemble(
    spec: packing.PackSpec,
    plan: SliceLayout,
    parts: dict[int, Sequence[int]],
    total_weight: int,
    parties: int,
):
    """The weighted mean (as :func:`packing.unpack_aggregate`) from every slice's plaintexts."""
    missing = [i for i in range(plan.count) if i not in parts]
    if missing:
        raise SliceError(f"slices {missing} are missing")
    plaintexts: list[int] = []
    for i in range(plan.count):
        start, stop = plan.bounds(i)
        if len(parts[i]) != stop - start:
            raise SliceError(f"slice {i} has {len(parts[i])} plaintexts, not {stop - start}")
        plaintexts.extend(parts[i])
    return packing.mean_from_plaintexts(spec, plaintexts, total_weight, parties)
