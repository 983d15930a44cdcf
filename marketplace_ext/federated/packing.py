"""Packed Paillier encryption of model updates, and the server's homomorphic sum.

Trainers share one Paillier key pair that the service never holds (Phong et al., "Privacy-
Preserving Deep Learning via Additively Homomorphic Encryption", IEEE TIFS 2018); the service
only multiplies ciphertexts. Encrypting each float on its own costs a 4096-bit modular
exponentiation per value, so many quantized values share one plaintext (BatchCrypt, Zhang et
al., USENIX ATC 2020):

* Each value is clipped to ``[-clip, clip]`` and quantized with an offset to
  ``q = round((v + clip) / (2 clip) * (2^bits - 1))``, an integer in ``[0, 2^bits - 1]``; no
  negative numbers, so there is no two's-complement wrap to get wrong. Clipped values are
  counted and reported, never wrapped.
* A party multiplies ``q`` by its integer weight ``w`` (e.g. its sample count), so that the sum
  of slots is the numerator of the weighted mean.
* A slot has ``bits + headroom_bits`` bits, ``headroom_bits = ceil(log2(max_weight *
  max_parties))``: the sum over at most ``max_parties`` parties is at most
  ``(2^bits - 1) * max_weight * max_parties < 2^slot_bits`` and cannot carry into its neighbour.
* ``slots = (bit_length(n) - 2) // slot_bits`` slots go into one plaintext, so every plaintext
  and every sum of them is below ``2^(bit_length(n) - 2) <= n / 2``: the sum never wraps mod n.
* Decryption splits the slot sums ``S`` and returns ``S / W / (2^bits - 1) * 2 clip - clip``,
  ``W`` being the total weight of the parties actually summed.

Encryption and decryption (CRT obfuscators, an optional background pool) are in
:mod:`.encryptor`; the errors in :mod:`.pack_errors`.

What packing cannot do: the service cannot check that a party's plaintext respects its declared
weight or the slot layout (that would need zero-knowledge proofs). A dishonest trainer can spoil
the aggregate, which :func:`unpack_aggregate` detects when slot sums exceed what the declared
total weight allows, but cannot read anything. :func:`check_ciphertexts` only guarantees that
each upload is a well-formed ciphertext, so one bad upload cannot break the arithmetic of a sum.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from .encryptor import Encryptor, decrypt_many
from .pack_errors import (
    AggregateOverflow,
    CiphertextOutOfRange,
    KeyMismatch,
    PackingError,
    ShapeMismatch,
    TooManyUpdates,
    _check_int,
    _is_int,
)

__all__ = ["AggregateOverflow", "CiphertextOutOfRange", "Encryptor", "KeyMismatch",
           "PackSpec", "PackedUpdate", "PackingError", "ShapeMismatch", "TooManyUpdates",
           "add_encrypted", "check_ciphertexts", "ciphertexts_from_bytes", "ciphertexts_to_bytes",
           "decrypt_many", "mean_from_plaintexts", "pack_update", "plain_fedavg", "quantize",
           "unpack_aggregate"]

JSON_VERSION = 1
_MAX_SLOT_BITS = 64  # slot values and slot sums are handled as numpy uint64


@dataclass(frozen=True)
class PackSpec:
    """How one project's updates are quantized and packed; validated on construction."""

    n: int
    length: int
    bits: int = 16
    clip: float = 1.0
    # no defaults: the headroom, hence the overflow guarantee, depends on them
    max_parties: int = field(kw_only=True)
    max_weight: int = field(kw_only=True)

    def __post_init__(self) -> None:
        n = _check_int("n", self.n, 3)
        if n % 2 == 0:
            raise PackingError("n must be odd (a product of two odd primes)")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "length", _check_int("length", self.length, 1))
        object.__setattr__(self, "bits", _check_int("bits", self.bits, 1, 48))
        object.__setattr__(self, "max_parties", _check_int("max_parties", self.max_parties, 1))
        object.__setattr__(self, "max_weight", _check_int("max_weight", self.max_weight, 1))
        if isinstance(self.clip, bool) or not isinstance(self.clip, numbers.Real):
            raise PackingError(f"clip must be a number, got {type(self.clip).__name__}")
        clip = float(self.clip)
        if not (math.isfinite(clip) and clip > 0):
            raise PackingError(f"clip must be a finite number > 0, got {self.clip!r}")
        object.__setattr__(self, "clip", clip)
        if self.slot_bits > _MAX_SLOT_BITS:
            raise PackingError(
                f"a slot needs {self.bits} bits + {self.headroom_bits} bits of headroom for "
                f"max_weight={self.max_weight} x max_parties={self.max_parties}, more than "
                f"{_MAX_SLOT_BITS}: lower max_weight (scale the weights) or bits"
            )
        if self.slots < 1:
            raise PackingError(
                f"a {n.bit_length()}-bit modulus cannot hold one {self.slot_bits}-bit slot"
            )

    @classmethod
    def create(
        cls,
        n: int,
        length: int,
        *,
        bits: int = 16,
        clip: float = 1.0,
        max_parties: int,
        max_weight: int,
    ) -> PackSpec:
        return cls(
            n=n, length=length, bits=bits, clip=clip, max_parties=max_parties, max_weight=max_weight
        )

    @property
    def headroom_bits(self) -> int:
        """ceil(log2(max_weight * max_parties)), computed exactly on integers."""
        return (self.max_weight * self.max_parties - 1).bit_length()

    @property
    def slot_bits(self) -> int:
        return self.bits + self.headroom_bits

    @property
    def slots(self) -> int:
        """Slots per plaintext; the top bit of n's length stays free, so sums stay below n."""
        return (self.n.bit_length() - 2) // self.slot_bits

    @property
    def ciphertexts(self) -> int:
        """Ciphertexts per update."""
        return -(-self.length // self.slots)

    @property
    def levels(self) -> int:
        """The largest quantized value, 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one serialized ciphertext: the byte length of n^2."""
        return (self.nsquare.bit_length() + 7) // 8

    @property
    def update_bytes(self) -> int:
        """Size of one serialized update (or aggregate)."""
        return self.ciphertexts * self.ciphertext_bytes

    def quantization_bound(self, total_weight: int) -> float:
        """Largest absolute difference, per value, between the decrypted weighted mean and the
        float64 weighted mean of the clipped values, for ``total_weight`` summed.

        In exact arithmetic each party's quantized value is within half a step of its clipped
        value, ``(2 clip / (2^bits - 1)) / 2``, and a weighted mean of errors each within half a
        step is itself within half a step, whatever the weights: the bound does not grow with
        ``total_weight``. On top comes an allowance of ``(max_parties + 16)`` float64 ulps of
        ``clip`` for rounding in quantization and decoding and in the float reference's own
        sum. ``total_weight`` must be one that can occur, 1..max_parties*max_weight.
        """
        _check_int("total_weight", total_weight, 1, self.max_parties * self.max_weight)
        return self.clip / self.levels + (self.max_parties + 16) * 2.0**-52 * self.clip

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form; ``n`` as a decimal string (JSON numbers lose precision)."""
        return {
            "v": JSON_VERSION,
            "n": str(self.n),
            "length": self.length,
            "bits": self.bits,
            "clip": self.clip,
            "max_parties": self.max_parties,
            "max_weight": self.max_weight,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PackSpec:
        if not isinstance(data, Mapping):
            raise PackingError(f"a pack spec must be a JSON object, got {type(data).__name__}")
        if data.get("v", JSON_VERSION) != JSON_VERSION:
            raise PackingError(f"unsupported pack spec version {data.get('v')!r}")
        missing = [k for k in ("n", "length", "max_parties", "max_weight") if k not in data]
        if missing:
            raise PackingError(f"pack spec lacks {', '.join(missing)}")
        n = data["n"]
        if isinstance(n, str):
            if not n.isdigit() or not n.isascii():
                raise PackingError("pack spec n must be a decimal string of digits")
            n = int(n)
        return cls(
            n=n,
            length=data["length"],
            bits=data.get("bits", 16),
            clip=data.get("clip", 1.0),
            max_parties=data["max_parties"],
            max_weight=data["max_weight"],
        )


@dataclass
class PackedUpdate:
    """One party's encrypted update: what it uploads, plus what it reports alongside."""

    ciphertexts: list[int]
    clipped: int  # values that were outside [-clip, clip]
    weight: int


# --- encryption ---------------------------------------------------------------------------------

def quantize(spec: PackSpec, vector: Any) -> tuple[np.ndarray, int]:
    """(q as uint64 in [0, 2^bits - 1], number of values clipped)."""
    try:
        v = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PackingError(f"the update is not a numeric vector: {e}") from None
    if v.ndim != 1 or v.shape[0] != spec.length:
        raise ShapeMismatch(
            f"expected a flat vector of {spec.length} values, got shape {tuple(v.shape)}"
        )
    if not np.all(np.isfinite(v)):
        bad = int(np.count_nonzero(~np.isfinite(v)))
        raise PackingError(f"the update has {bad} NaN or infinite value(s)")
    clipped = int(np.count_nonzero(np.abs(v) > spec.clip))
    x = (np.clip(v, -spec.clip, spec.clip) + spec.clip) * (spec.levels / (2 * spec.clip))
    q = np.minimum(np.rint(x), spec.levels).astype(np.uint64)
    return q, clipped


def _slots_to_plaintexts(spec: PackSpec, values: np.ndarray) -> list[int]:
    """Pack uint64 slot values (< 2^slot_bits), slot 0 in the lowest bits."""
    k, b = spec.slots, spec.slot_bits
    padded = np.zeros(spec.ciphertexts * k, dtype=np.uint64)
    padded[: values.shape[0]] = values
    rows = padded.reshape(spec.ciphertexts, k)
    shifts = np.arange(b, dtype=np.uint64)
    width = -(-k * b // 8) * 8
    out: list[int] = []
    for start in range(0, rows.shape[0], 256):  # bounds the bit matrix to a few MB
        block = rows[start : start + 256]
        bits = ((block[:, :, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        bits = bits.reshape(block.shape[0], k * b)
        if width > k * b:
            bits = np.pad(bits, ((0, 0), (0, width - k * b)))
        packed = np.packbits(bits, axis=1, bitorder="little")
        out.extend(int.from_bytes(row.tobytes(), "little") for row in packed)
    return out


def _plaintexts_to_slots(spec: PackSpec, plaintexts: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`_slots_to_plaintexts`: all slots (padding included) as uint64."""
    k, b = spec.slots, spec.slot_bits
    nbytes = -(-k * b // 8)
    for i, m in enumerate(plaintexts):
        if m >> (k * b):
            raise AggregateOverflow(
                f"plaintext {i} has bits above its {k} slots: an update was not packed per spec"
            )
    raw = b"".join(int(m).to_bytes(nbytes, "little") for m in plaintexts)
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(len(plaintexts), nbytes)
    shifts = np.arange(b, dtype=np.uint64)
    out = np.empty(len(plaintexts) * k, dtype=np.uint64)
    for start in range(0, len(plaintexts), 256):  # bounds the bit matrix to a few MB
        block = arr[start : start + 256]
        bits = np.unpackbits(block, axis=1, bitorder="little")[:, : k * b]
        bits = bits.reshape(block.shape[0], k, b).astype(np.uint64)
        out[start * k : (start + block.shape[0]) * k] = (
            (bits << shifts).sum(axis=2, dtype=np.uint64).reshape(-1)
        )
    return out


# --- the protocol steps -------------------------------------------------------------------------


def _check_key(spec: PackSpec, key: Any, what: str) -> None:
    n = key.public_key.n if hasattr(key, "public_key") else key.n
    if int(n) != spec.n:
        raise KeyMismatch(f"the {what} is not the project's key (its n differs from the spec's)")


def pack_update(spec: PackSpec, vector: Any, weight: int, encryptor: Encryptor) -> PackedUpdate:
    """Clip, quantize, weight, pack and encrypt one party's update."""
    if not _is_int(weight):
        raise PackingError(f"weight must be an integer, got {type(weight).__name__}")
    weight = int(weight)
    if not 1 <= weight <= spec.max_weight:
        raise PackingError(f"weight must be in [1, {spec.max_weight}] (max_weight), got {weight}")
    _check_key(spec, encryptor.public_key, "encryptor's key")
    q, clipped = quantize(spec, vector)
    plaintexts = _slots_to_plaintexts(spec, q * np.uint64(weight))
    return PackedUpdate(encryptor.encrypt_many(plaintexts), clipped, weight)


def check_ciphertexts(spec: PackSpec, ciphertexts: Sequence[int]) -> None:
    """Refuse an upload that is not exactly ``spec.ciphertexts`` valid ciphertexts: each an
    integer with 0 < c < n^2 and gcd(c, n) = 1 (a unit mod n^2; anything else would make the
    product of a sum meaningless, or zero)."""
    if len(ciphertexts) != spec.ciphertexts:
        raise ShapeMismatch(f"expected {spec.ciphertexts} ciphertexts, got {len(ciphertexts)}")
    n, nsquare = mpz(spec.n), mpz(spec.nsquare)
    product = mpz(1)  # one gcd for all: the product is a unit mod n iff every factor is
    for i, c in enumerate(ciphertexts):
        if not _is_int(c):
            raise CiphertextOutOfRange(f"ciphertext {i} is a {type(c).__name__}, not an integer")
        c = mpz(c)
        if not 0 < c < nsquare:
            raise CiphertextOutOfRange(f"ciphertext {i} is not in the range 0 < c < n^2")
        product = product * c % n
    if gmpy2.gcd(product, n) != 1:
        bad = next(i for i, c in enumerate(ciphertexts) if gmpy2.gcd(mpz(c), n) != 1)
        raise CiphertextOutOfRange(f"ciphertext {bad} shares a factor with n")


def add_encrypted(spec: PackSpec, updates: Sequence[Sequence[int]]) -> list[int]:
    """The service's aggregation: the elementwise product mod n^2 of the updates' ciphertexts,
    which encrypts the elementwise sum of their plaintexts. Each update is checked first."""
    if not updates:
        raise PackingError("no updates to add")
    if len(updates) > spec.max_parties:
        raise TooManyUpdates(
            f"{len(updates)} updates exceed max_parties={spec.max_parties}: slots could overflow"
        )
    for j, update in enumerate(updates):
        try:
            check_ciphertexts(spec, update)
        except PackingError as e:
            raise type(e)(f"update {j}: {e}") from None
    nsquare = mpz(spec.nsquare)
    total = [mpz(c) for c in updates[0]]
    for update in updates[1:]:
        total = [a * c % nsquare for a, c in zip(total, update, strict=True)]
    return [int(c) for c in total]


def unpack_aggregate(
    spec: PackSpec,
    ciphertexts: Sequence[int],
    private_key: Any,
    total_weight: int,
    parties: int,
    *,
    workers: int = 1,
) -> np.ndarray:
    """Decrypt an aggregate of ``parties`` updates whose weights sum to ``total_weight``, and
    return the weighted mean per value (float64, in [-clip, clip])."""
    parties = _check_int("parties", parties, 1, spec.max_parties)
    total_weight = _check_int("total_weight", total_weight, parties, parties * spec.max_weight)
    _check_key(spec, private_key, "private key")
    check_ciphertexts(spec, ciphertexts)
    return mean_from_plaintexts(
        spec, decrypt_many(private_key, ciphertexts, workers=workers), total_weight, parties
    )


def mean_from_plaintexts(
    spec: PackSpec, plaintexts: Sequence[int], total_weight: int, parties: int
) -> np.ndarray:
    """The weighted mean per value from an aggregate's decrypted plaintexts (all of them, in
    order: e.g. reassembled from the slices members decrypted, see :mod:`.split_decrypt`)."""
    parties = _check_int("parties", parties, 1, spec.max_parties)
    total_weight = _check_int("total_weight", total_weight, parties, parties * spec.max_weight)
    if len(plaintexts) != spec.ciphertexts:
        raise ShapeMismatch(f"expected {spec.ciphertexts} plaintexts, got {len(plaintexts)}")
    sums = _plaintexts_to_slots(spec, plaintexts)
    if np.any(sums[spec.length :]):
        raise AggregateOverflow("padding slots are not zero: an update was not packed per spec")
    sums = sums[: spec.length]
    limit = spec.levels * total_weight
    if int(sums.max()) > limit:
        raise AggregateOverflow(
            f"a slot sum exceeds (2^bits - 1) x total_weight={total_weight}: the declared "
            "weights do not match what was encrypted"
        )
    # divide first: a slot at 0 or at the limit then decodes to exactly -clip or +clip
    mean = sums.astype(np.float64) / float(limit) * (2 * spec.clip) - spec.clip
    # the true mean lies in [-clip, clip]; rounding may step an ulp outside
    return np.clip(mean, -spec.clip, spec.clip)


# --- bytes --------------------------------------------------------------------------------------


def ciphertexts_to_bytes(spec: PackSpec, ciphertexts: Sequence[int]) -> bytes:
    """Fixed-width big-endian concatenation, ``spec.ciphertext_bytes`` per ciphertext."""
    check_ciphertexts(spec, ciphertexts)
    width = spec.ciphertext_bytes
    return b"".join(int(c).to_bytes(width, "big") for c in ciphertexts)


def ciphertexts_from_bytes(spec: PackSpec, data: bytes | bytearray | memoryview) -> list[int]:
    """Inverse of :func:`ciphertexts_to_bytes`; the result passes :func:`check_ciphertexts`."""
    data = bytes(data)
    width = spec.ciphertext_bytes
    if len(data) != spec.update_bytes:
        raise ShapeMismatch(
            f"expected {spec.update_bytes} bytes ({spec.ciphertexts} ciphertexts of {width}), "
            f"got {len(data)}"
        )
    cts = [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]
    check_ciphertexts(spec, cts)
    return cts


# --- reference ----------------------------------------------------------------------------------


def plain_fedavg(
    vectors: Sequence[Any], weights: Sequence[int], *, clip: float | None = None
) -> np.ndarray:
    """Plaintext weighted mean of the vectors, each clipped to [-clip, clip] first if given:
    what :func:`unpack_aggregate` approximates within ``spec.quantization_bound``."""
    stacked = np.asarray(vectors, dtype=np.float64)
    if clip is not None:
        stacked = np.clip(stacked, -clip, clip)
    return np.average(stacked, axis=0, weights=np.asarray(weights, dtype=np.float64))
