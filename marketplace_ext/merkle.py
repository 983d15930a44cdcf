"""Pure core of the certification log: RFC 9162 Merkle tree, proofs, checkpoints, witnesses.

Nothing here touches a database or the network; ``certlog.py`` plugs a SQL ``NodeStore`` in.

* Hashing is RFC 9162 §2.1: leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right),
  empty tree = SHA-256(""). The 0x00/0x01 prefixes are what stop an inner node from being passed
  off as a leaf (second preimage).
* ``MerkleTree`` keeps only *complete* perfect subtrees in its store: node (level, i) covers
  leaves [i·2^level, (i+1)·2^level), level 0 being the leaf hashes. Stored nodes never change,
  so any past root and any proof is a fold of O(log n) stored nodes, fetched in one
  ``get_many`` call, right after a restart as well as in steady state.
* Proofs are exactly RFC 9162 §2.1.3.1 PATH and §2.1.4.1 SUBPROOF; verification is exactly the
  bit-twiddling algorithms of §2.1.3.2 and §2.1.4.2, plus up-front checks that give a precise
  reason (expected proof length, range of sizes, hash lengths).
* Checkpoints are C2SP tlog-checkpoint bodies in C2SP signed notes. The log signs with a plain
  Ed25519 note signature (type 0x01); witnesses co-sign with C2SP tlog-cosignature/v1
  (type 0x04: Ed25519 over "cosignature/v1\\ntime <t>\\n" ‖ body, signature = u64 t ‖ sig),
  the format the public witness network uses, so our checkpoints are checkable by its tools
  and a witness key can never be replayed as a log key. Plain 0x01 witness signatures verify
  too (any ``VerifierKey`` with alg 0x01).

Error convention: ``verify_*`` return a bool; ``check_*`` and everything else raise a subclass
of ``MerkleError`` (a ``MarketError``, so handlers map it to 4xx/5xx) whose message says what
is wrong, for the CLI and the HTTP API.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import MarketError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# C2SP signed-note signature types.
ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04

MAX_NOTE_BYTES = 1 << 20
# signed-note: verifiers must accept at least 16 signatures; one log key plus witnesses.
MAX_NOTE_SIGNATURES = 64


# --- errors ----------------------------------------------------------------------------------


class MerkleError(MarketError):
    """Base class for everything this module raises on bad input or bad state."""

    status = 400
    code = "invalid_log_data"


class ProofError(MerkleError):
    """A proof does not verify, or a proof/root was asked for outside the tree."""

    code = "invalid_proof"


class StoreError(MerkleError):
    """A node the tree needs is missing from its store: the stored log is damaged."""

    status = 500
    code = "log_store_damaged"


class NoteError(MerkleError):
    """A signed note, checkpoint or key string is malformed."""

    code = "invalid_note"


class SignatureError(NoteError):
    """No trusted signature verifies, or a signature from a trusted key fails."""

    code = "bad_signature"


class WitnessError(MerkleError):
    """A witness refuses a checkpoint."""

    status = 409
    code = "witness_refused"


class RollbackError(WitnessError):
    """The new checkpoint is smaller than the one the witness already co-signed."""

    code = "rollback"


class ForkError(WitnessError):
    """The new checkpoint cannot extend the stored one (same size and another root, or the
    consistency proof between them fails): two views of the log exist."""

    code = "fork"


# --- hashing ---------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range given as its perfect subtrees left to right: the RFC splits off the
    largest power of two first, so the tree leans right and folds from the right."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _cover(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi) as perfect subtrees (level, index), left to right.

    Every range the RFC recursion produces starts at a multiple of a power of two at least its
    length, so taking the largest power of two that fits at each step is both aligned and the
    same split MTH makes."""
    out = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _inclusion_plan(index: int, size: int) -> list[list[tuple[int, int]]]:
    """RFC 9162 PATH(index, D[0:size]) as node coordinates: one cover per proof hash,
    leaf to root."""
    groups = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            groups.append(_cover(mid, hi))
            hi = mid
        else:
            groups.append(_cover(lo, mid))
            lo = mid
    groups.reverse()
    return groups


def _consistency_plan(old: int, new: int) -> list[list[tuple[int, int]]]:
    """RFC 9162 PROOF(old, D[0:new]) = SUBPROOF(old, D[0:new], true) as node coordinates,
    for 0 < old < new."""
    groups = []
    lo, hi, whole_old_tree = 0, new, True  # the RFC's flag b
    while True:
        n, m = hi - lo, old - lo
        if m == n:
            if not whole_old_tree:
                groups.append(_cover(lo, hi))
            break
        mid = lo + _split(n)
        if m <= mid - lo:
            groups.append(_cover(mid, hi))
            hi = mid
        else:
            groups.append(_cover(lo, mid))
            lo = mid
            whole_old_tree = False
    groups.reverse()
    return groups


# --- storage ---------------------------------------------------------------------------------

NodeKey = tuple[int, int]  # (level, index)
Node = tuple[int, int, bytes]  # (level, index, hash)


class NodeStore(Protocol):
    """Where complete nodes live. Keys are (level, index); level 0 holds the leaf hashes.

    ``get_many`` takes every node a root or proof needs at once (O(log n) keys), so a SQL store
    answers with one ``WHERE (level, idx) IN (...)`` query; it omits keys it does not have.
    ``put_many`` must make the nodes visible to later ``get_many`` calls on the same store
    (a SQL session sees its own uncommitted rows, so appends can share the action's
    transaction). Stored nodes are immutable: the tree only ever writes each key once."""

    def get_many(self, keys: Sequence[NodeKey]) -> Mapping[NodeKey, bytes]: ...

    def put_many(self, nodes: Iterable[Node]) -> None: ...


class DictNodeStore:
    """In-memory ``NodeStore`` for tests and benchmarks; counts what it is asked to read."""

    def __init__(self) -> None:
        self.nodes: dict[NodeKey, bytes] = {}
        self.reads = 0  # keys requested
        self.calls = 0  # get/get_many calls

    def get(self, level: int, index: int) -> bytes | None:
        self.calls += 1
        self.reads += 1
        return self.nodes.get((level, index))

    def get_many(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        self.calls += 1
        self.reads += len(keys)
        nodes = self.nodes
        return {k: nodes[k] for k in keys if k in nodes}

    def put_many(self, nodes: Iterable[Node]) -> None:
        store = self.nodes
        for level, index, h in nodes:
            store[(level, index)] = h


# --- tree ------------------------------------------------------------------------------------


class Frontier:
    """The right edge of a tree of ``size`` leaves: the roots of the perfect subtrees of [0, size)
    (one per set bit of size). Appending is a binary-counter carry, and each carry is a newly
    complete node. Usable on its own to recompute a whole log from its entries (fsck):
    stream leaf hashes through ``append`` and compare the nodes it returns with the stored ones."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()):
        levels = [level for level, _ in _cover(0, size)]
        if len(levels) != len(hashes):
            raise ValueError(f"a frontier of size {size} has {len(levels)} hashes, "
                             f"got {len(hashes)}")
        self._size = size
        self._stack: list[tuple[int, bytes]] = list(zip(levels, hashes, strict=True))

    @property
    def size(self) -> int:
        return self._size

    def nodes(self) -> list[Node]:
        """The frontier as (level, index, hash), left to right."""
        return [(lv, i, h) for (lv, i), (_, h) in zip(_cover(0, self._size), self._stack,
                                                      strict=True)]

    def append(self, leaf: bytes) -> list[Node]:
        """Add one leaf hash; return the nodes that just became complete (the leaf first)."""
        _check_hash_arg(leaf, "leaf hash")
        index = self._size
        new = [(0, index, leaf)]
        stack = self._stack
        level, h = 0, leaf
        while stack and stack[-1][0] == level:
            h = node_hash(stack.pop()[1], h)
            level += 1
            new.append((level, index >> level, h))
        stack.append((level, h))
        self._size = index + 1
        return new

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        return _fold([h for _, h in self._stack])


class MerkleTree:
    """An append-only RFC 9162 tree of ``size`` leaves over a ``NodeStore``.

    Opening one is free (no reads); the frontier is loaded with one ``get_many`` of popcount(size)
    keys on first use. Not thread-safe: certlog serialises appends. If the transaction that
    received ``put_many`` rolls back, drop this object and open a new one at the committed size.
    """

    def __init__(self, store: NodeStore, size: int = 0):
        _check_count_arg(size, "size")
        self.store = store
        self._size = size
        self._frontier: Frontier | None = Frontier() if size == 0 else None

    @property
    def size(self) -> int:
        return self._size

    def _load_frontier(self) -> Frontier:
        if self._frontier is None:
            keys = _cover(0, self._size)
            found = self.store.get_many(keys)
            self._frontier = Frontier(self._size, [self._node(found, k) for k in keys])
        return self._frontier

    @staticmethod
    def _node(found: Mapping[NodeKey, bytes], key: NodeKey) -> bytes:
        h = found.get(key)
        if h is None or len(h) != HASH_SIZE:
            raise StoreError(f"tree node level {key[0]} index {key[1]} is missing from the "
                             f"log store")
        return bytes(h)

    def _fetch(self, groups: list[list[NodeKey]]) -> list[bytes]:
        keys = list(dict.fromkeys(k for g in groups for k in g))
        found = self.store.get_many(keys) if keys else {}
        return [_fold([self._node(found, k) for k in g]) for g in groups]

    def append_many(self, leaf_hashes: Iterable[bytes]) -> int:
        """Append leaf hashes (already ``leaf_hash``-ed); write the newly complete nodes with a
        single ``put_many``; return the new size. Leaf i of the batch gets index old_size + i."""
        frontier = self._load_frontier()
        new: list[Node] = []
        for h in leaf_hashes:
            new.extend(frontier.append(h))
        if new:
            self.store.put_many(new)
        self._size = frontier.size
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; return its index."""
        return self.append_many([leaf]) - 1

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        _check_count(size, "size", "size")
        if size > self._size:
            raise ProofError(f"tree size {size} is beyond the current size {self._size}",
                             field="size")
        return size

    def root(self, size: int | None = None) -> bytes:
        """Root hash at ``size`` (default: now); any past size works."""
        size = self._check_size(size)
        if size == self._size:
            return self._load_frontier().root()
        if size == 0:
            return EMPTY_ROOT
        return self._fetch([_cover(0, size)])[0]

    def leaf(self, index: int) -> bytes:
        """The stored leaf hash at ``index``."""
        _check_count(index, "index", "index")
        if index >= self._size:
            raise ProofError(f"index {index} is not below tree size {self._size}", field="index")
        return self._fetch([[(0, index)]])[0]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in the tree at ``size``."""
        size = self._check_size(size)
        _check_count(index, "index", "index")
        if index >= size:
            raise ProofError(f"index {index} is not below tree size {size}", field="index")
        return self._fetch(_inclusion_plan(index, size))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof from size ``old`` to ``new`` (default: now);
        empty when old is 0 or old == new."""
        new = self._check_size(new)
        _check_count(old, "old size", "old")
        if old > new:
            raise ProofError(f"old size {old} is larger than new size {new}", field="old")
        if old == 0 or old == new:
            return []
        return self._fetch(_consistency_plan(old, new))


# --- verification ----------------------------------------------------------------------------


def _check_count(value: object, what: str, field: str) -> None:
    # ``field`` names the HTTP query parameter (index, size, old, new) for the error body
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{what} must be an integer, got {value!r:.40}", field=field)
    if value < 0:
        raise ProofError(f"{what} must not be negative, got {value}", field=field)


def _check_count_arg(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


def _check_hash(value: object, what: str, field: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be a {HASH_SIZE}-byte hash", field=field)


def _check_hash_arg(value: object, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be a {HASH_SIZE}-byte hash, got {value!r:.80}")


def _check_proof(proof: object) -> list[bytes]:
    if isinstance(proof, bytes | bytearray | str) or not isinstance(proof, Sequence):
        raise ProofError("a proof must be a list of hashes", field="proof")
    for i, h in enumerate(proof):
        _check_hash(h, f"proof[{i}]", "proof")
    return [bytes(h) for h in proof]


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of ``index`` in a tree of ``size`` (index < size):
    the levels below the point where the paths to index and to the last leaf part, plus one per
    left sibling above it."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + bin(index >> inner).count("1")


def consistency_proof_length(old: int, new: int) -> int:
    """Number of hashes in the consistency proof from ``old`` to ``new`` (0 < old < new)."""
    shift = (old & -old).bit_length() - 1  # trailing zero bits of old
    length = inclusion_proof_length(old - 1, new) - shift
    return length if old == 1 << shift else length + 1


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` makes ``leaf`` (a leaf hash) at ``index`` part of, per RFC 9162
    §2.1.3.2; ProofError if the arguments cannot form a valid proof."""
    _check_count(index, "index", "index")
    _check_count(size, "size", "size")
    if index >= size:
        raise ProofError(f"index {index} is not below tree size {size}", field="index")
    _check_hash(leaf, "leaf hash", "leaf")
    path = _check_proof(proof)
    want = inclusion_proof_length(index, size)
    if len(path) != want:
        raise ProofError(f"an inclusion proof for index {index} in a tree of size {size} has "
                         f"{want} hashes, got {len(path)}", field="proof")
    fn, sn, r = index, size - 1, bytes(leaf)
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is too long", field="proof")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short", field="proof")
    return r


def check_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                    root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of
    ``size`` leaves with root ``root``."""
    _check_hash(root, "root", "root")
    if root_from_inclusion_proof(leaf, index, size, proof) != root:
        raise ProofError(f"inclusion proof for index {index} does not lead to the root of the "
                         f"tree of size {size}", field="proof")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """``check_inclusion`` as a bool."""
    try:
        check_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return False
    return True


def check_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                      proof: Sequence[bytes]) -> None:
    """Raise ProofError unless ``proof`` shows the tree (old_size, old_root) is a prefix of
    (new_size, new_root), per RFC 9162 §2.1.4.2. Equal sizes need an empty proof and equal
    roots; old size 0 needs an empty proof and old_root == SHA-256("")."""
    _check_count(old_size, "old size", "old")
    _check_count(new_size, "new size", "new")
    _check_hash(old_root, "old root", "old_root")
    _check_hash(new_root, "new root", "new_root")
    path = _check_proof(proof)
    if old_size > new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}",
                         field="old")
    if old_size == new_size or old_size == 0:
        if path:
            raise ProofError(f"a consistency proof from size {old_size} to {new_size} is empty, "
                             f"got {len(path)} hashes", field="proof")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree is SHA-256 of the empty string",
                             field="old_root")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {new_size}",
                             field="new_root")
        return
    want = consistency_proof_length(old_size, new_size)
    if len(path) != want:
        raise ProofError(f"a consistency proof from size {old_size} to {new_size} has {want} "
                         f"hashes, got {len(path)}", field="proof")
    # RFC 9162 §2.1.4.2, step by step (1 is implied by the length check, kept for fidelity).
    if not path:  # 1
        raise ProofError("consistency proof is empty", field="proof")
    if old_size & (old_size - 1) == 0:  # 2: old is a power of two, its root starts the path
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1  # 3
    while fn & 1:  # 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5
    for c in path[1:]:  # 6
        if sn == 0:
            raise ProofError("consistency proof is too long", field="proof")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # 7
        raise ProofError("consistency proof is too short", field="proof")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root (size {old_size})",
                         field="old_root")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root (size {new_size})",
                         field="new_root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """``check_consistency`` as a bool."""
    try:
        check_consistency(old_size, new_size, old_root, new_root, proof)
    except ProofError:
        return False
    return True


# --- keys ------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if _b64(raw) != text:  # one encoding per value: no malleable signature lines
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_name(name: object, what: str = "key name") -> str:
    # signed-note: non-empty, no Unicode spaces, no "+" (it separates vkey fields)
    if (not isinstance(name, str) or not name or "+" in name
            or any(c.isspace() or ord(c) < 0x20 for c in name)):
        raise NoteError(f"{what} {name!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """signed-note key ID: SHA-256(name ‖ "\\n" ‖ alg ‖ public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def _raw_public(public_key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if isinstance(public_key, bytes | bytearray) and len(public_key) == 32:
        return bytes(public_key)
    raise NoteError("an Ed25519 public key is 32 bytes")


@dataclass(frozen=True)
class VerifierKey:
    """A trusted key: name, signature type (0x01 note signature or 0x04 cosignature/v1) and
    raw Ed25519 public key. ``str()`` gives the vkey ``<name>+<hex key ID>+<base64(alg‖key)>``."""

    name: str
    alg: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError(f"unsupported signature type 0x{self.alg:02x} for key {self.name}")
        if len(self.public_key) != 32:
            raise NoteError(f"key {self.name}: an Ed25519 public key is 32 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError:
            raise NoteError(f"key {self.name}: not an Ed25519 public key") from None

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([self.alg]) + self.public_key)}"

    def verify(self, text: str, signature: bytes) -> int | None:
        """Check ``signature`` (without its key ID) over note ``text``; return the cosignature
        timestamp (None for 0x01); raise SignatureError if it does not verify."""
        pub = Ed25519PublicKey.from_public_bytes(self.public_key)
        if self.alg == ALG_COSIGNATURE_V1:
            if len(signature) != 8 + 64:
                raise SignatureError(f"cosignature by {self.name} must be 72 bytes")
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp >= 1 << 63:
                raise SignatureError(f"cosignature by {self.name} has an invalid timestamp")
            message, sig = _cosigned_message(text, timestamp), signature[8:]
        else:
            if len(signature) != 64:
                raise SignatureError(f"signature by {self.name} must be 64 bytes")
            timestamp, message, sig = None, text.encode(), signature
        try:
            pub.verify(sig, message)
        except InvalidSignature:
            raise SignatureError(f"signature by {self.name} does not verify") from None
        return timestamp


def verifier_key(name: str, public_key: Ed25519PublicKey | bytes,
                 alg: int = ALG_ED25519) -> VerifierKey:
    return VerifierKey(name, alg, _raw_public(public_key))


def format_vkey(name: str, public_key: Ed25519PublicKey | bytes, alg: int = ALG_ED25519) -> str:
    """vkey string ``<name>+<hex key ID>+<base64(alg ‖ public key)>`` (Go note format)."""
    return str(verifier_key(name, public_key, alg))


def parse_vkey(vkey: str) -> VerifierKey:
    """Parse a vkey; NoteError if malformed or its key ID does not match its key."""
    name, _, rest = vkey.strip().partition("+")
    hex_id, _, key64 = rest.partition("+")  # base64 may itself contain "+"
    _check_name(name)
    if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
        raise NoteError(f"vkey for {name}: the key ID must be 8 hex digits")
    raw = _unb64(key64, f"vkey for {name}")
    if len(raw) != 33:
        raise NoteError(f"vkey for {name}: expected a type byte and a 32-byte Ed25519 key")
    key = VerifierKey(name, raw[0], raw[1:])
    if key.key_id != bytes.fromhex(hex_id):
        raise NoteError(f"vkey for {name}: key ID {hex_id} does not match the key")
    return key


def format_skey(name: str, private_key: Ed25519PrivateKey) -> str:
    """Private key string ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 ‖ seed)>`` (Go note
    format), for a key file kept 0600. Witnesses co-sign with the same key under type 0x04."""
    _check_name(name)
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = _raw_public(private_key.public_key())
    return f"PRIVATE+KEY+{name}+{key_id(name, ALG_ED25519, pub).hex()}+" \
           f"{_b64(bytes([ALG_ED25519]) + seed)}"


def parse_skey(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse ``format_skey`` output into (name, private key)."""
    prefix = "PRIVATE+KEY+"
    if not skey.startswith(prefix):
        raise NoteError("a private key string starts with PRIVATE+KEY+")
    name, _, rest = skey.strip()[len(prefix):].partition("+")
    hex_id, _, key64 = rest.partition("+")
    _check_name(name)
    raw = _unb64(key64, f"private key for {name}")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError(f"private key for {name}: expected type 0x01 and a 32-byte seed")
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    pub = _raw_public(private.public_key())
    if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id) or \
            key_id(name, ALG_ED25519, pub) != bytes.fromhex(hex_id):
        raise NoteError(f"private key for {name}: key ID does not match the key")
    return name, private


def generate_key(name: str) -> tuple[str, str]:
    """A new Ed25519 key: (skey, vkey) strings, the vkey of type 0x01."""
    private = Ed25519PrivateKey.generate()
    return format_skey(name, private), format_vkey(name, private.public_key())


# --- signed notes ----------------------------------------------------------------------------

_SIG_PREFIX = "\u2014 "  # em dash, space


@dataclass(frozen=True)
class NoteSignature:
    """One signature line, not yet verified."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class VerifiedSignature:
    key: VerifierKey
    timestamp: int | None  # cosignature/v1 time, None for plain signatures


@dataclass(frozen=True)
class OpenedNote:
    text: str
    verified: tuple[VerifiedSignature, ...]
    unknown: tuple[NoteSignature, ...]  # from keys not passed in: ignored, per signed-note

    def signed_by(self, key: VerifierKey | str) -> bool:
        return any(v.key == key or v.key.name == key for v in self.verified)


def _check_text(text: object, what: str = "note") -> str:
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError(f"{what} is not valid UTF-8") from None
    if not isinstance(text, str):
        raise NoteError(f"{what} must be text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        raise NoteError(f"{what} is not valid UTF-8") from None
    if size > MAX_NOTE_BYTES:
        raise NoteError(f"{what} is larger than {MAX_NOTE_BYTES} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError(f"{what} contains a control character")
    return text


def _check_note_text(text: object) -> str:
    text = _check_text(text, "note text")
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    return text


def split_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signature lines, without verifying anything.
    The text is everything up to the last blank line, its final newline included."""
    note = _check_text(note)
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("not a signed note: no blank line before the signatures")
    text, block = note[:cut + 1], note[cut + 2:]
    if not block.endswith("\n"):
        raise NoteError("a signed note ends with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise NoteError(f"more than {MAX_NOTE_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name, sep, sig64 = line[len(_SIG_PREFIX):].partition(" ")
        _check_name(name)
        raw = _unb64(sig64, f"signature by {name}")
        if not sep or len(raw) < 5:
            raise NoteError(f"signature line by {name} is too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return text, sigs


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def signature_line(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """A plain Ed25519 (type 0x01) signature line over note ``text``."""
    text = _check_note_text(text)
    _check_name(key_name)
    pub = _raw_public(private_key.public_key())
    sig = private_key.sign(text.encode())
    return NoteSignature(key_name, key_id(key_name, ALG_ED25519, pub), sig).line()


def cosignature_line(text: str, key_name: str, private_key: Ed25519PrivateKey,
                     timestamp: int) -> str:
    """A C2SP tlog-cosignature/v1 (type 0x04) line over checkpoint ``text`` at POSIX time
    ``timestamp``."""
    text = _check_note_text(text)
    _check_name(key_name)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or \
            not 0 <= timestamp < 1 << 63:
        raise NoteError(f"cosignature timestamp must be an integer in [0, 2^63), "
                        f"got {timestamp!r}")
    pub = _raw_public(private_key.public_key())
    sig = private_key.sign(_cosigned_message(text, timestamp))
    return NoteSignature(key_name, key_id(key_name, ALG_COSIGNATURE_V1, pub),
                         timestamp.to_bytes(8, "big") + sig).line()


def sign_note(text: str, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note: ``text``, a blank line, one Ed25519 signature line."""
    return text + "\n" + signature_line(text, key_name, private_key)


def add_signature(note: str, line: str) -> str:
    """Add a signature line (from ``signature_line``/``cosignature_line``) to a signed note,
    replacing an earlier line of the same key (a witness re-cosigning). Verifies nothing."""
    text, sigs = split_note(note)
    _, (new,) = split_note(text + "\n" + line)
    kept = [s for s in sigs if (s.name, s.key_id) != (new.name, new.key_id)]
    return text + "\n" + "".join(s.line() for s in kept + [new])


def cosign_note(note: str, key_name: str, private_key: Ed25519PrivateKey, timestamp: int) -> str:
    """Add this witness's cosignature/v1 to ``note``."""
    text, _ = split_note(note)
    return add_signature(note, cosignature_line(text, key_name, private_key, timestamp))


def open_note(note: str | bytes, keys: Iterable[VerifierKey]) -> OpenedNote:
    """Verify ``note`` against trusted ``keys`` (signed-note rules): lines from unknown keys are
    ignored; a bad signature from a known key rejects the note; at least one known key must have
    signed. SignatureError / NoteError otherwise."""
    text, sigs = split_note(note)
    by_id = {(k.name, k.key_id): k for k in keys}
    verified, unknown, seen = [], [], set()
    for s in sigs:
        key = by_id.get((s.name, s.key_id))
        if key is None:
            unknown.append(s)
            continue
        if (s.name, s.key_id) in seen:
            raise NoteError(f"two signatures by the same key {s.name}")
        seen.add((s.name, s.key_id))
        verified.append(VerifiedSignature(key, key.verify(text, s.signature)))
    if not verified:
        trusted = ", ".join(sorted({k.name for k in by_id.values()})) or "none"
        present = ", ".join(s.name for s in sigs)
        raise SignatureError(f"no signature from a trusted key (trusted: {trusted}; "
                             f"signed by: {present})")
    return OpenedNote(text, tuple(verified), tuple(unknown))


def verify_note(note: str | bytes, key_name: str, public_key: Ed25519PublicKey | bytes,
                alg: int = ALG_ED25519) -> tuple[str, bool]:
    """(text, ok): ok when the key (key_name, public_key, alg) has a valid signature on the
    note. A malformed note raises NoteError."""
    key = verifier_key(key_name, public_key, alg)
    try:
        opened = open_note(note, [key])
    except SignatureError:
        return split_note(note)[0], False
    return opened.text, True


# --- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        return format_checkpoint(self.origin, self.size, self.root, self.extensions)


def format_checkpoint(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """C2SP tlog-checkpoint body: origin, decimal size, base64 root, extension lines, each
    newline-terminated."""
    lines = [origin, *extensions]
    for i, line in enumerate(lines):
        what = "origin" if i == 0 else "extension line"
        if not isinstance(line, str) or not line or "\n" in line:
            raise NoteError(f"{what} must be a non-empty single line")
        _check_text(line, what)
    _check_count_arg(size, "size")
    _check_hash_arg(root, "root")
    return "".join(f"{line}\n" for line in [origin, str(size), _b64(bytes(root)), *extensions])


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body (the text of an opened note, not the signed note itself)."""
    text = _check_note_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("a checkpoint has at least three lines: origin, size, root")
    origin, size, root64, *extensions = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size) or int(size) >= 1 << 64:
        raise NoteError(f"checkpoint size {size[:30]!r} is not a decimal number")
    root = _unb64(root64, "checkpoint root")
    if len(root) != HASH_SIZE:
        raise NoteError(f"checkpoint root is {len(root)} bytes, not {HASH_SIZE}")
    if any(not e for e in extensions):
        raise NoteError("checkpoint extension lines must not be empty")
    return Checkpoint(origin, int(size), root, tuple(extensions))


def open_checkpoint(note: str | bytes, keys: Iterable[VerifierKey],
                    origin: str | None = None) -> tuple[Checkpoint, OpenedNote]:
    """Verify a signed checkpoint against ``keys`` and parse it; NoteError if its origin is not
    ``origin`` (when given)."""
    opened = open_note(note, keys)
    checkpoint = parse_checkpoint(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint, opened


# --- witness ---------------------------------------------------------------------------------


def witness_check(stored: Checkpoint | None, new: Checkpoint,
                  consistency_proof: Sequence[bytes]) -> None:
    """Decide whether a witness that last co-signed ``stored`` may co-sign ``new``.

    Signatures are checked before (``open_checkpoint``); this is the append-only rule. ``stored``
    None is first contact: accepted as is. Raises WitnessError (other log), RollbackError
    (smaller tree) or ForkError (same size with another root, or a proof that fails)."""
    if stored is None:
        return
    if new.origin != stored.origin:
        raise WitnessError(f"checkpoint is for log {new.origin!r}, the witness follows "
                           f"{stored.origin!r}")
    if new.size < stored.size:
        raise RollbackError(f"rollback: log {new.origin} presents size {new.size}, but size "
                            f"{stored.size} was already co-signed")
    if new.size == stored.size and new.root != stored.root:
        raise ForkError(f"fork: log {new.origin} presents two roots for size {new.size}: "
                        f"{stored.root.hex()} (co-signed) and {new.root.hex()}")
    try:
        check_consistency(stored.size, new.size, stored.root, new.root, consistency_proof)
    except ProofError as e:
        raise ForkError(f"fork: log {new.origin} size {new.size} is not shown to extend the "
                        f"co-signed size {stored.size}: {e.message}") from None
