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

Encryption is ``c = (1 + m n) r^n mod n^2`` (g = n + 1), with gmpy2. A trainer holds p and q,
so the obfuscator ``r^n`` is computed by CRT: a uniformly random n-th residue mod n^2 is a pair
of uniformly random elements of the order-(p-1) subgroup mod p^2 and of the order-(q-1)
subgroup mod q^2. ``s^p mod p^2`` for uniform ``s`` in ``[1, p)`` is exactly such an element
(``s -> s^p mod p^2`` is a bijection from Z*_p onto that subgroup), with an exponent of half the
size of ``n``; likewise mod q^2. With ``gcd(n, phi(n)) = 1`` (checked) this is the same
distribution as ``r^n mod n^2`` for uniform ``r``, about 3.5x cheaper. Obfuscators do not depend
on the message, so :class:`Encryptor` can precompute them on a background thread.

What packing cannot do: the service cannot check that a party's plaintext respects its declared
weight or the slot layout (that would need zero-knowledge proofs). A dishonest trainer can spoil
the aggregate, which :func:`unpack_aggregate` detects when slot sums exceed what the declared
total weight allows, but cannot read anything. :func:`check_ciphertexts` only guarantees that
each upload is a well-formed ciphertext, so one bad upload cannot break the arithmetic of a sum.
"""

from __future__ import annotations

import collections
import math
import numbers
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz, powmod

_MPZ = type(mpz(0))
JSON_VERSION = 1
_MAX_SLOT_BITS = 64  # slot values and slot sums are handled as numpy uint64


class PackingError(ValueError):
    """A pack spec, an update, a weight or an aggregate is invalid."""


class CiphertextOutOfRange(PackingError):
    """A ciphertext is not an integer c with 0 < c < n^2 and gcd(c, n) = 1."""


class ShapeMismatch(PackingError):
    """A vector or a list of ciphertexts (or its bytes) does not have the spec's length."""


class KeyMismatch(PackingError):
    """A Paillier key is not the one the spec (or the other key of the pair) belongs to."""


class TooManyUpdates(PackingError):
    """More updates than ``max_parties`` were to be summed: their slots could overflow."""


class AggregateOverflow(PackingError):
    """A decrypted aggregate does not fit the slot layout or the declared total weight: some
    party encrypted something else than the spec allows, or the total weight is wrong."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | _MPZ | np.integer) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if not _is_int(value):
        raise PackingError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise PackingError(f"{name} must be {bounds}, got {value}")
    return value


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
        return cls(n=n, length=length, bits=bits, clip=clip, max_parties=max_parties,
                   max_weight=max_weight)

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
        return {"v": JSON_VERSION, "n": str(self.n), "length": self.length, "bits": self.bits,
                "clip": self.clip, "max_parties": self.max_parties,
                "max_weight": self.max_weight}

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
        return cls(n=n, length=data["length"], bits=data.get("bits", 16),
                   clip=data.get("clip", 1.0), max_parties=data["max_parties"],
                   max_weight=data["max_weight"])


@dataclass
class PackedUpdate:
    """One party's encrypted update: what it uploads, plus what it reports alongside."""

    ciphertexts: list[int]
    clipped: int  # values that were outside [-clip, clip]
    weight: int


# --- encryption ---------------------------------------------------------------------------------

class Encryptor:
    """Paillier encryption of raw plaintexts ``0 <= m < n``, with gmpy2.

    Given the private key (trainers hold it) obfuscators are computed by CRT, see the module
    docstring. With ``pool_size > 0``, :meth:`start_pool` (or ``with Encryptor(...)``) starts a
    daemon thread that keeps up to ``pool_size`` obfuscators ready; encryption takes from the
    pool and computes inline when it is empty, so both threads work while the pool is drained
    (gmpy2 releases the GIL in our exponentiations). Every obfuscator is used once.
    """

    def __init__(self, public_key: Any, private_key: Any = None, *, pool_size: int = 0):
        self.public_key = public_key
        self._n_int = int(public_key.n)
        self._n = mpz(self._n_int)
        self._nsquare = self._n * self._n
        self.pool_size = _check_int("pool_size", pool_size, 0)
        self.crt = private_key is not None
        if private_key is not None:
            p, q = mpz(private_key.p), mpz(private_key.q)
            if p * q != self._n:
                raise KeyMismatch("the private key does not belong to this public key")
            if gmpy2.gcd(self._n, (p - 1) * (q - 1)) != 1:
                # then s^p would not be distributed as r^n: refuse rather than weaken privacy
                raise KeyMismatch("gcd(n, phi(n)) != 1: not a valid Paillier key")
            self._p_int, self._q_int = int(p), int(q)
            self._p, self._q = p, q
            self._psquare, self._qsquare = p * p, q * q
            self._psquare_inv = gmpy2.invert(self._psquare, self._qsquare)
        self._pool: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # obfuscators

    def _fresh_obfuscator(self) -> mpz:
        if not self.crt:
            while True:
                r = secrets.randbelow(self._n_int - 1) + 1
                if gmpy2.gcd(r, self._n) == 1:  # fails only by hitting a factor of n
                    return powmod(r, self._n, self._nsquare)
        xp = powmod(secrets.randbelow(self._p_int - 1) + 1, self._p, self._psquare)
        xq = powmod(secrets.randbelow(self._q_int - 1) + 1, self._q, self._qsquare)
        return xp + self._psquare * ((xq - xp) * self._psquare_inv % self._qsquare)

    def obfuscator(self) -> mpz:
        """A fresh r^n mod n^2: from the pool if one is ready, else computed now."""
        try:
            x = self._pool.popleft()
        except IndexError:
            return self._fresh_obfuscator()
        with self._cond:
            self._cond.notify_all()  # the filler may be waiting for room
        return x

    @property
    def pooled(self) -> int:
        """Obfuscators ready in the pool now."""
        return len(self._pool)

    def start_pool(self) -> None:
        if self.pool_size == 0:
            raise PackingError("this Encryptor has pool_size=0: nothing to start")
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._fill, name="paillier-obfuscators",
                                        daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        with gmpy2.context(allow_release_gil=True):
            while True:
                with self._cond:
                    while not self._stopping and len(self._pool) >= self.pool_size:
                        self._cond.wait()
                    if self._stopping:
                        return
                x = self._fresh_obfuscator()
                with self._cond:
                    self._pool.append(x)
                    self._cond.notify_all()

    def wait_pool(self, timeout: float | None = None) -> bool:
        """Block until the pool is full (True) or ``timeout`` seconds passed (False)."""
        if self._thread is None:
            raise PackingError("the pool is not started")
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self._pool) >= self.pool_size or self._stopping, timeout
            ) and not self._stopping

    def stop(self) -> None:
        """Stop the filler thread and drop the pooled obfuscators (they are secrets: one
        reveals the plaintext of the ciphertext it was used for)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._pool.clear()

    def __enter__(self) -> Encryptor:
        if self.pool_size:
            self.start_pool()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # encryption

    def encrypt(self, m: int) -> int:
        return self.encrypt_many([m])[0]

    def encrypt_many(self, plaintexts: Iterable[int]) -> list[int]:
        """Ciphertexts ``(1 + m n) r^n mod n^2`` of raw plaintexts ``0 <= m < n``."""
        out = []
        with gmpy2.context(allow_release_gil=True):  # lets the pool thread use the other core
            for i, m in enumerate(plaintexts):
                if not _is_int(m) or not 0 <= m < self._n_int:
                    raise PackingError(f"plaintext {i} is not an integer in [0, n)")
                c = (1 + mpz(m) * self._n) * self.obfuscator() % self._nsquare
                out.append(int(c))
        return out


def decrypt_many(private_key: Any, ciphertexts: Sequence[int], *, workers: int = 1) -> list[int]:
    """Raw CRT decryption (as ``private_key.raw_decrypt``) of each ciphertext, on ``workers``
    threads: gmpy2 releases the GIL here, so threads use separate cores."""
    p, q = mpz(private_key.p), mpz(private_key.q)
    psquare, qsquare = p * p, q * q
    hp, hq, p_inv = mpz(private_key.hp), mpz(private_key.hq), mpz(private_key.p_inverse)

    def chunk(cts: Sequence[int]) -> list[int]:
        out = []
        with gmpy2.context(allow_release_gil=True):
            for c in cts:
                c = mpz(c)
                mp = (powmod(c, p - 1, psquare) - 1) // p * hp % p
                mq = (powmod(c, q - 1, qsquare) - 1) // q * hq % q
                out.append(int(mp + p * ((mq - mp) * p_inv % q)))
        return out

    workers = _check_int("workers", workers, 1)
    if workers == 1 or len(ciphertexts) < 2 * workers:
        return chunk(ciphertexts)
    step = -(-len(ciphertexts) // workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="paillier-decrypt") as pool:
        parts = pool.map(chunk, [ciphertexts[i:i + step]
                                 for i in range(0, len(ciphertexts), step)])
        return [m for part in parts for m in part]


# --- quantization and slots ---------------------------------------------------------------------

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
        block = rows[start:start + 256]
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
    bits = np.unpackbits(arr, axis=1, bitorder="little")[:, : k * b]
    bits = bits.reshape(len(plaintexts), k, b).astype(np.uint64)
    return (bits << np.arange(b, dtype=np.uint64)).sum(axis=2, dtype=np.uint64).reshape(-1)


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
        raise ShapeMismatch(
            f"expected {spec.ciphertexts} ciphertexts, got {len(ciphertexts)}"
        )
    n, nsquare = mpz(spec.n), mpz(spec.nsquare)
    for i, c in enumerate(ciphertexts):
        if not _is_int(c):
            raise CiphertextOutOfRange(f"ciphertext {i} is a {type(c).__name__}, not an integer")
        c = mpz(c)
        if not 0 < c < nsquare:
            raise CiphertextOutOfRange(f"ciphertext {i} is not in the range 0 < c < n^2")
        if gmpy2.gcd(c, n) != 1:
            raise CiphertextOutOfRange(f"ciphertext {i} shares a factor with n")


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
    sums = _plaintexts_to_slots(spec, decrypt_many(private_key, ciphertexts, workers=workers))
    if np.any(sums[spec.length:]):
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
    cts = [int.from_bytes(data[i:i + width], "big") for i in range(0, len(data), width)]
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
