"""The errors of packed Paillier encryption (:mod:`.packing`, :mod:`.encryptor`) and their
integer checks."""

from __future__ import annotations

from typing import Any

import numpy as np
from gmpy2 import mpz

_MPZ = type(mpz(0))


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
