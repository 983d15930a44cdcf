"""The pure transparency-log core: RFC 9162 trees and proofs, C2SP notes, checkpoints, witnesses.

Reference values come from outside this code base: the RFC 6962 test tree and its proofs as in
transparency-dev/merkle proof/verify_test.go, the Go golang.org/x/mod/sumdb/note example key and
signature, the C2SP signed-note example, and a real checkpoint of the transparency.dev staging
CT log co-signed by four public witnesses (tlog-cosignature/v1). Everything else is checked
against a naive recursive transcription of RFC 9162's MTH, PATH and SUBPROOF written below.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace_ext import merkle as m
from marketplace_ext.errors import MarketError

# --- naive reference: RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1 transcribed literally ---------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_pow2_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: list[bytes]) -> bytes:
    """MTH over leaf *hashes* (the leaves are hashed once, up front)."""
    if not hashes:
        return sha(b"")
    if len(hashes) == 1:
        return hashes[0]
    k = largest_pow2_below(len(hashes))
    return sha(b"\x01" + ref_mth(hashes[:k]) + ref_mth(hashes[k:]))


def ref_path(i: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = largest_pow2_below(len(hashes))
    if i < k:
        return ref_path(i, hashes[:k]) + [ref_mth(hashes[k:])]
    return ref_path(i - k, hashes[k:]) + [ref_mth(hashes[:k])]


def ref_subproof(old: int, hashes: list[bytes], b: bool) -> list[bytes]:
    n = len(hashes)
    if old == n:
        return [] if b else [ref_mth(hashes)]
    k = largest_pow2_below(n)
    if old <= k:
        return ref_subproof(old, hashes[:k], b) + [ref_mth(hashes[k:])]
    return ref_subproof(old - k, hashes[k:], False) + [ref_mth(hashes[:k])]


def ref_consistency(old: int, hashes: list[bytes]) -> list[bytes]:
    if old == 0 or old == len(hashes):
        return []
    return ref_subproof(old, hashes, True)


# --- RFC 6962 test tree ----------------------------------------------------------------------

RFC_LEAVES = [bytes.fromhex(x) for x in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
RFC_ROOTS = [bytes.fromhex(x) for x in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]


def h(hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes.split()]


# (leaf index, tree size, proof): transparency-dev/merkle proof/verify_test.go inclusionProofs
RFC_INCLUSION = [
    (0, 8, h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7 "
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e "
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b "
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0 "
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d "
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e "
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (0, 1, []),
]
# (old size, new size, proof): the same file's consistencyProofs
RFC_CONSISTENCY = [
    (1, 1, []),
    (1, 8, h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7 "
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e "
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a "
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0 "
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e "
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a "
             "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f "
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def build(leaf_hashes: list[bytes], batch: int = 7) -> tuple[m.MerkleTree, m.DictNodeStore]:
    store = m.DictNodeStore()
    tree = m.MerkleTree(store)
    for i in range(0, len(leaf_hashes), batch):
        tree.append_many(leaf_hashes[i:i + batch])
    return tree, store


def numbered_leaves(n: int) -> list[bytes]:
    return [m.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@pytest.fixture(scope="module")
def rfc_tree() -> m.MerkleTree:
    return build([m.leaf_hash(x) for x in RFC_LEAVES], batch=3)[0]


SMALL = 40
SMALL_LEAVES = numbered_leaves(SMALL)


@pytest.fixture(scope="module")
def small_tree() -> m.MerkleTree:
    return build(SMALL_LEAVES)[0]


# --- hashing and the RFC 6962 vectors ----------------------------------------------------------


def test_hashes_are_domain_separated():
    assert m.EMPTY_ROOT.hex() == \
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert m.leaf_hash(b"") == sha(b"\x00")
    assert m.node_hash(b"a" * 32, b"b" * 32) == sha(b"\x01" + b"a" * 32 + b"b" * 32)
    assert m.leaf_hash(b"x") != sha(b"x")


def test_rfc6962_roots_at_every_size(rfc_tree):
    assert rfc_tree.root(0) == m.EMPTY_ROOT
    for size, want in enumerate(RFC_ROOTS, start=1):
        assert rfc_tree.root(size) == want
        assert ref_mth([m.leaf_hash(x) for x in RFC_LEAVES[:size]]) == want
    assert rfc_tree.root() == RFC_ROOTS[-1]


@pytest.mark.parametrize("index,size,proof", RFC_INCLUSION)
def test_rfc6962_inclusion_proofs(rfc_tree, index, size, proof):
    assert rfc_tree.inclusion_proof(index, size) == proof
    leaf = m.leaf_hash(RFC_LEAVES[index])
    assert m.verify_inclusion(leaf, index, size, proof, RFC_ROOTS[size - 1])
    for desc, args in inclusion_probes(leaf, index, size, proof, RFC_ROOTS[size - 1]):
        assert not m.verify_inclusion(*args), desc


@pytest.mark.parametrize("old,new,proof", RFC_CONSISTENCY)
def test_rfc6962_consistency_proofs(rfc_tree, old, new, proof):
    assert rfc_tree.consistency_proof(old, new) == proof
    r1, r2 = RFC_ROOTS[old - 1], RFC_ROOTS[new - 1]
    assert m.verify_consistency(old, new, r1, r2, proof)
    if proof:
        for desc, args in consistency_probes(old, new, r1, r2, proof):
            assert not m.verify_consistency(*args), desc


# --- corruption probes (after transparency-dev/merkle's corruptInclusionProof) -----------------


def flip(x: bytes, bit: int) -> bytes:
    return bytes([x[0] ^ (1 << bit)]) + x[1:]


def inclusion_probes(leaf, index, size, proof, root):
    out = [
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size // 2", (leaf, index, size // 2, proof, root)),
        ("size 0", (leaf, index, 0, proof, root)),
        ("negative size", (leaf, index, -size, proof, root)),
        ("wrong leaf", (b"WrongLeaf", index, size, proof, root)),
        ("other leaf", (SOME_HASH, index, size, proof, root)),
        ("empty root", (leaf, index, size, proof, m.EMPTY_ROOT)),
        ("random root", (leaf, index, size, proof, SOME_HASH)),
        ("short root", (leaf, index, size, proof, root[:31])),
        ("trailing garbage", (leaf, index, size, proof + [b""], root)),
        ("trailing root", (leaf, index, size, proof + [root], root)),
        ("preceding garbage", (leaf, index, size, [b""] + proof, root)),
        ("preceding root", (leaf, index, size, [root] + proof, root)),
        ("leaf as root", (leaf, index, size, proof, leaf)) if proof else None,
    ]
    for i in range(len(proof)):
        for bit in (0, 3, 7):
            bad = list(proof)
            bad[i] = flip(bad[i], bit)
            out.append((f"proof[{i}] bit {bit}", (leaf, index, size, bad, root)))
        out.append((f"proof[{i}] removed", (leaf, index, size, proof[:i] + proof[i + 1:], root)))
    if len(proof) > 1:
        out.append(("inserted", (leaf, index, size, proof[:1] + [SOME_HASH] + proof[1:], root)))
        out.append(("swapped", (leaf, index, size, proof[::-1], root)))
    return [p for p in out if p is not None]


def consistency_probes(old, new, r1, r2, proof):
    out = [
        ("old - 1", (old - 1, new, r1, r2, proof)),
        ("old + 1", (old + 1, new, r1, r2, proof)),
        ("old ^ 2", (old ^ 2, new, r1, r2, proof)),
        ("new * 2", (old, new * 2, r1, r2, proof)),
        ("new // 2", (old, new // 2, r1, r2, proof)),
        ("old > new", (new, old, r2, r1, proof)),
        ("negative old", (-old, new, r1, r2, proof)),
        ("wrong old root", (old, new, SOME_HASH, r2, proof)),
        ("wrong new root", (old, new, r1, SOME_HASH, proof)),
        ("malformed root", (old, new, b"WrongRoot", r2, proof)),
        ("swapped roots", (old, new, r2, r1, proof)),
        ("empty proof", (old, new, r1, r2, [])),
        ("trailing garbage", (old, new, r1, r2, proof + [b""])),
        ("trailing root1", (old, new, r1, r2, proof + [r1])),
        ("trailing root2", (old, new, r1, r2, proof + [r2])),
        ("preceding garbage", (old, new, r1, r2, [b""] + proof)),
        ("preceding root1", (old, new, r1, r2, [r1] + proof)),
        ("preceding root2", (old, new, r1, r2, [r2] + proof)),
        ("preceding proof[0]", (old, new, r1, r2, proof[:1] + proof)),
        ("truncated", (old, new, r1, r2, proof[:-1])),
    ]
    for i in range(len(proof)):
        for bit in (0, 4, 7):
            bad = list(proof)
            bad[i] = flip(bad[i], bit)
            out.append((f"proof[{i}] bit {bit}", (old, new, r1, r2, bad)))
    if len(proof) > 1:
        out.append(("reversed", (old, new, r1, r2, proof[::-1])))
    return out


# --- every index against every size; every (old, new) ------------------------------------------


def test_inclusion_every_index_every_size(small_tree):
    for size in range(1, SMALL + 1):
        root = small_tree.root(size)
        assert root == ref_mth(SMALL_LEAVES[:size])
        for index in range(size):
            proof = small_tree.inclusion_proof(index, size)
            assert proof == ref_path(index, SMALL_LEAVES[:size]), (index, size)
            assert len(proof) == m.inclusion_proof_length(index, size)
            leaf = SMALL_LEAVES[index]
            assert m.verify_inclusion(leaf, index, size, proof, root)
            assert m.root_from_inclusion_proof(leaf, index, size, proof) == root
            for desc, args in inclusion_probes(leaf, index, size, proof, root):
                assert not m.verify_inclusion(*args), (desc, index, size)


def test_consistency_every_pair(small_tree):
    roots = [small_tree.root(n) for n in range(SMALL + 1)]
    for new in range(0, SMALL + 1):
        for old in range(0, new + 1):
            proof = small_tree.consistency_proof(old, new)
            assert proof == ref_consistency(old, SMALL_LEAVES[:new]), (old, new)
            assert m.verify_consistency(old, new, roots[old], roots[new], proof), (old, new)
            if 0 < old < new:
                assert len(proof) == m.consistency_proof_length(old, new)
                for desc, args in consistency_probes(old, new, roots[old], roots[new], proof):
                    assert not m.verify_consistency(*args), (desc, old, new)
            # a proof for another pair never passes for this one
            if 0 < old < new - 1:
                other = small_tree.consistency_proof(old, new - 1)
                assert not m.verify_consistency(old, new, roots[old], roots[new], other)


def test_inner_node_presented_as_leaf(rfc_tree):
    """Second preimage: the 0x00/0x01 prefixes keep an inner node from passing for a leaf."""
    leaves = [m.leaf_hash(x) for x in RFC_LEAVES[:4]]
    n01, n23 = m.node_hash(leaves[0], leaves[1]), m.node_hash(leaves[2], leaves[3])
    root4 = RFC_ROOTS[3]
    assert m.node_hash(n01, n23) == root4
    # The preimage of the inner node n01 offered as an entry's data: its leaf hash is not n01.
    forged = m.leaf_hash(leaves[0] + leaves[1])
    assert not m.verify_inclusion(forged, 0, 2, [n23], root4)
    assert not m.verify_inclusion(forged, 0, 4, [n23], root4)
    # The inner hash itself, at the size the checkpoint signs, has the wrong proof length.
    assert not m.verify_inclusion(n01, 0, 4, [n23], root4)
    assert not m.verify_inclusion(n01, 0, 4, [n23, n23], root4)
    with pytest.raises(m.ProofError, match="has 2 hashes, got 1"):
        m.check_inclusion(n01, 0, 4, [n23], root4)


def test_malformed_inputs_are_rejected_with_reasons():
    leaf, root = SMALL_LEAVES[0], ref_mth(SMALL_LEAVES[:4])
    proof = ref_path(0, SMALL_LEAVES[:4])
    cases = [
        ((leaf, 4, 4, proof, root), "index 4 is not below tree size 4"),
        ((leaf, -1, 4, proof, root), "must not be negative"),
        ((leaf, 0, 0, [], m.EMPTY_ROOT), "not below tree size 0"),
        ((leaf, 0, 4, proof[:1], root), "has 2 hashes, got 1"),
        ((leaf, 0, 4, proof + [root], root), "has 2 hashes, got 3"),
        ((leaf, 0, 4, [proof[0], b"x" * 31], root), r"proof\[1\] must be a 32-byte hash"),
        ((leaf, 0, 4, b"".join(proof), root), "list of hashes"),
        ((leaf, 0, 4, proof, root[:16]), "root must be a 32-byte hash"),
        ((leaf, 0.0, 4, proof, root), "must be an integer"),
        ((leaf, True, 4, proof, root), "must be an integer"),
        ((leaf, 0, 4, [flip(proof[0], 1), proof[1]], root), "does not lead to the root"),
    ]
    for args, message in cases:
        assert not m.verify_inclusion(*args)
        with pytest.raises(m.ProofError, match=message):
            m.check_inclusion(*args)
    r3 = ref_mth(SMALL_LEAVES[:3])
    p34 = ref_consistency(3, SMALL_LEAVES[:4])
    ccases = [
        ((4, 3, root, r3, p34), "old size 4 is larger than new size 3"),
        ((-1, 3, root, r3, []), "must not be negative"),
        ((0, 3, SOME_HASH, r3, []), "root of an empty tree"),
        ((0, 3, m.EMPTY_ROOT, r3, [SOME_HASH]), "is empty, got 1"),
        ((0, 0, m.EMPTY_ROOT, SOME_HASH, []), "two different roots"),
        ((3, 3, r3, root, []), "two different roots"),
        ((3, 3, r3, r3, [r3]), "is empty, got 1"),
        ((3, 4, r3, root, []), "has 3 hashes, got 0"),
        ((3, 4, root, r3, p34), "old root"),
        ((3, 4, r3, SOME_HASH, p34), "new root"),
    ]
    for args, message in ccases:
        assert not m.verify_consistency(*args)
        with pytest.raises(m.ProofError, match=message):
            m.check_consistency(*args)
    assert m.verify_consistency(0, 0, m.EMPTY_ROOT, m.EMPTY_ROOT, [])
    assert m.verify_consistency(0, 3, m.EMPTY_ROOT, r3, [])
    assert m.verify_consistency(3, 3, r3, r3, [])
    assert isinstance(m.ProofError("x"), MarketError) and m.ProofError.status == 400
    with pytest.raises(m.ProofError) as e:
        m.check_inclusion(leaf, 9, 4, proof, root)
    assert e.value.to_dict()["field"] == "index"
    with pytest.raises(m.ProofError) as e:
        m.check_consistency(3, 4, r3, root, [])
    assert e.value.to_dict() == {"error": "invalid_proof", "field": "proof",
                                 "message": "a consistency proof from size 3 to 4 has 3 hashes, "
                                            "got 0"}


def test_tree_rejects_requests_outside_it(small_tree):
    with pytest.raises(m.ProofError, match="beyond the current size"):
        small_tree.root(SMALL + 1)
    with pytest.raises(m.ProofError, match="not below tree size 5"):
        small_tree.inclusion_proof(5, 5)
    with pytest.raises(m.ProofError, match="negative"):
        small_tree.inclusion_proof(-1, 5)
    with pytest.raises(m.ProofError, match="beyond"):
        small_tree.inclusion_proof(0, SMALL + 1)
    with pytest.raises(m.ProofError, match="larger than new size"):
        small_tree.consistency_proof(6, 5)
    with pytest.raises(m.ProofError, match="beyond"):
        small_tree.consistency_proof(1, SMALL + 1)
    with pytest.raises(m.ProofError):
        small_tree.leaf(SMALL)
    assert small_tree.leaf(3) == SMALL_LEAVES[3]
    assert small_tree.consistency_proof(0, 5) == [] and small_tree.consistency_proof(5, 5) == []
    empty = m.MerkleTree(m.DictNodeStore())
    assert empty.root() == m.EMPTY_ROOT and empty.size == 0
    with pytest.raises(m.ProofError):
        empty.inclusion_proof(0, 0)
    with pytest.raises(ValueError):
        empty.append(b"short")


# --- storage: batching, restart, O(log n) reads -------------------------------------------------


def test_batching_does_not_change_the_stored_tree():
    leaves = numbered_leaves(300)
    one = build(leaves, batch=1)[1].nodes
    for batch in (2, 64, 300):
        assert build(leaves, batch=batch)[1].nodes == one
    # only complete nodes are stored: 300 leaves + 150 + 75 + 37 + 18 + 9 + 4 + 2 + 1
    assert len(one) == sum(300 >> level for level in range(9))
    store = m.DictNodeStore()
    tree = m.MerkleTree(store)
    assert [tree.append(x) for x in leaves[:5]] == [0, 1, 2, 3, 4]
    assert tree.append_many([]) == 5


def test_restart_gives_identical_roots_and_proofs():
    leaves = numbered_leaves(137)
    tree, store = build(leaves, batch=10)
    before = store.calls
    reopened = m.MerkleTree(store, 137)
    assert store.calls == before  # opening is free: nothing is read until first use
    assert reopened.root() == tree.root() == ref_mth(leaves)
    for size in (1, 2, 63, 64, 65, 100, 137):
        assert reopened.root(size) == tree.root(size)
        for index in range(0, size, 7):
            assert reopened.inclusion_proof(index, size) == tree.inclusion_proof(index, size)
        for old in range(0, size + 1, 5):
            assert reopened.consistency_proof(old, size) == tree.consistency_proof(old, size)
    # appending after a restart continues the same tree
    more = numbered_leaves(200)[137:]
    reopened.append_many(more)
    tree.append_many(more)
    assert reopened.root() == tree.root() == ref_mth(numbered_leaves(200))


def test_missing_node_is_a_store_error():
    tree, store = build(numbered_leaves(20))
    del store.nodes[(2, 1)]
    reopened = m.MerkleTree(store, 20)
    with pytest.raises(m.StoreError, match="level 2 index 1 is missing"):
        reopened.inclusion_proof(0, 20)
    assert m.StoreError.status == 500


class UniformStore:
    """A consistent tree of any size without building it: every leaf hash is the same, so every
    node of a level is the same hash. Counts reads; serves only complete nodes."""

    def __init__(self, size: int):
        self.size, self.reads, self.calls = size, 0, 0
        self.level_hash = [m.leaf_hash(b"entry")]
        for _ in range(64):
            self.level_hash.append(m.node_hash(self.level_hash[-1], self.level_hash[-1]))

    def get_many(self, keys):
        self.calls += 1
        self.reads += len(keys)
        return {(lv, i): self.level_hash[lv] for lv, i in keys if (i + 1) << lv <= self.size}

    def put_many(self, nodes):
        raise AssertionError("read-only")


@pytest.mark.parametrize("size", [1_000_000, 2**20, 2**20 - 1, 2**20 + 1])
def test_reads_are_logarithmic_at_a_million(size):
    store = UniformStore(size)
    tree = m.MerkleTree(store, size)
    assert store.calls == 0
    root = tree.root()
    assert store.reads == bin(size).count("1") and store.calls == 1
    limit = 3 * math.log2(size)
    rng = random.Random(size)
    for index in [0, 1, size // 2, size - 2, size - 1] + rng.sample(range(size), 20):
        store.reads = store.calls = 0
        proof = tree.inclusion_proof(index, size)
        assert store.calls == 1 and store.reads <= limit, (index, store.reads)
        assert m.verify_inclusion(store.level_hash[0], index, size, proof, root)
    for old in [1, 2, 3, size // 3, size - 1] + rng.sample(range(1, size), 20):
        store.reads = store.calls = 0
        proof = tree.consistency_proof(old, size)
        assert store.calls == 1 and store.reads <= limit, (old, store.reads)
        assert m.verify_consistency(old, size, tree.root(old), root, proof)
    store.reads = 0
    assert tree.root(size - 12345) and store.reads <= math.log2(size) + 1


def test_reads_are_logarithmic_on_a_real_tree():
    n = 5000
    tree, store = build(numbered_leaves(n), batch=500)
    reopened = m.MerkleTree(store, n)
    for index in (0, 1234, n - 1):
        store.reads = store.calls = 0
        reopened.inclusion_proof(index, n)
        assert store.reads <= 3 * math.log2(n)


def test_frontier_alone_recomputes_roots():
    leaves = numbered_leaves(50)
    f = m.Frontier()
    seen = {}
    for i, x in enumerate(leaves):
        for level, index, hash_ in f.append(x):
            seen[(level, index)] = hash_
        assert f.root() == ref_mth(leaves[:i + 1])
    assert seen == build(leaves)[1].nodes
    again = m.Frontier(f.size, [hash_ for _, _, hash_ in f.nodes()])
    assert again.root() == f.root()
    with pytest.raises(ValueError):
        m.Frontier(3, [SOME_HASH])


# --- hypothesis: fast == naive at random sizes ------------------------------------------------

BIG = 2500
BIG_LEAVES = numbered_leaves(BIG)
BIG_TREE = build(BIG_LEAVES, batch=333)[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, BIG).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_hypothesis_inclusion_matches_naive(size_index):
    size, index = size_index
    proof = BIG_TREE.inclusion_proof(index, size)
    assert proof == ref_path(index, BIG_LEAVES[:size])
    assert m.verify_inclusion(BIG_LEAVES[index], index, size, proof, BIG_TREE.root(size))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, BIG).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_hypothesis_consistency_matches_naive(old_new):
    old, new = old_new
    proof = BIG_TREE.consistency_proof(old, new)
    assert proof == ref_consistency(old, BIG_LEAVES[:new])
    assert m.verify_consistency(old, new, BIG_TREE.root(old), BIG_TREE.root(new), proof)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, BIG), st.data())
def test_hypothesis_wrong_index_never_verifies(size, data):
    index = data.draw(st.integers(0, size - 1))
    other = data.draw(st.integers(-2, size + 2).filter(lambda x: x != index))
    proof = BIG_TREE.inclusion_proof(index, size)
    assert not m.verify_inclusion(BIG_LEAVES[index], other, size, proof, BIG_TREE.root(size))


# --- notes, keys, checkpoints ---------------------------------------------------------------

# golang.org/x/mod/sumdb/note: example key pair and its (deterministic) signature
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgY" \
    "N1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"

# A checkpoint of the transparency.dev staging CT log with an RFC 6962 signature (type 0x05,
# not ours: must be ignored), an Ed25519 note signature and four witness cosignatures/v1.
REAL_CHECKPOINT = """arche2025h1.staging.ct.transparency.dev
1432088532
U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=

\u2014 arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=
\u2014 arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=
\u2014 transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==
\u2014 witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==
\u2014 remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==
\u2014 witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==
"""  # noqa: E501
REAL_LOG_VKEY = ("arche2025h1.staging.ct.transparency.dev+ba2f06c0+"
                 "AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f")
REAL_WITNESS_VKEYS = [
    "witness.stagemole.eu+67f7aea0+BEqSG3yu9YrmcM3BHvQYTxwFj3uSWakQepafafpUqklv",
    "transparency.dev/DEV:witness-little-garden+d8042a87+"
    "BCtusOxINQNUTN5Oj8HObRkh2yHf/MwYaGX4CPdiVEPM",
    "witness1.smartit.nu/witness1+a48c820f+BPSFWg9G6KPiO7QPryYO5Xq4oYJJ+kAvLKLSimDhoxMO",
    "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
]


def test_go_note_vector_is_reproduced_byte_for_byte():
    name, private = m.parse_skey(GO_SKEY)
    assert name == "PeterNeumann"
    assert m.format_vkey(name, private.public_key()) == GO_VKEY
    assert m.format_skey(name, private) == GO_SKEY
    assert m.sign_note(GO_TEXT, name, private) == GO_NOTE
    opened = m.open_note(GO_NOTE, [m.parse_vkey(GO_VKEY)])
    assert opened.text == GO_TEXT and opened.signed_by("PeterNeumann")
    assert m.verify_note(GO_NOTE.encode(), name, private.public_key()) == (GO_TEXT, True)
    tampered = GO_NOTE.replace("cryptography", "cryptographY")
    assert m.verify_note(tampered, name, private.public_key()) == (
        GO_TEXT.replace("cryptography", "cryptographY"), False)


def test_c2sp_signed_note_example():
    key = m.parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    assert key.public_key.hex() == \
        "e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4"
    note = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnag"
            "v1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
    assert m.open_note(note, [key]).text == "This is an example message.\n"


def test_real_witnessed_checkpoint_verifies():
    log_key = m.parse_vkey(REAL_LOG_VKEY)
    witnesses = [m.parse_vkey(v) for v in REAL_WITNESS_VKEYS]
    assert {w.alg for w in witnesses} == {m.ALG_COSIGNATURE_V1}
    checkpoint, opened = m.open_checkpoint(REAL_CHECKPOINT, [log_key, *witnesses],
                                           origin="arche2025h1.staging.ct.transparency.dev")
    assert checkpoint.size == 1432088532
    assert base64.b64encode(checkpoint.root).decode() == \
        "U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro="
    assert checkpoint.text() == opened.text
    assert len(opened.verified) == 5 and len(opened.unknown) == 1  # the 0x05 line is ignored
    stamps = {v.key.name: v.timestamp for v in opened.verified}
    assert stamps["remora.n621.de"] == 1779573024 and stamps[log_key.name] is None
    # each witness alone is enough to open it; a changed size breaks every signature
    for w in witnesses:
        assert m.open_note(REAL_CHECKPOINT, [w]).signed_by(w)
        with pytest.raises(m.SignatureError, match="does not verify"):
            m.open_note(REAL_CHECKPOINT.replace("1432088532", "1432088533"), [w])


def test_vkey_parsing_and_rejections():
    plus = m.parse_vkey("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")
    assert plus.name == "TEST" and str(plus) == \
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
    bad = [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong ID
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # type 0x02
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWAA==",
    ]
    for vkey in bad:
        with pytest.raises(m.NoteError):
            m.parse_vkey(vkey)
    skey, vkey = m.generate_key("market.example/log")
    name, private = m.parse_skey(skey)
    assert m.parse_vkey(vkey) == m.verifier_key(name, private.public_key())
    with pytest.raises(m.NoteError):
        m.parse_skey(skey.replace("PRIVATE+KEY+market", "PRIVATE+KEY+merket"))


ORIGIN = "market.example/log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
LOG_VKEY = m.verifier_key(ORIGIN, LOG_KEY.public_key())
WITNESS_VKEY = m.verifier_key("w1.example", WITNESS_KEY.public_key(), m.ALG_COSIGNATURE_V1)


def signed_checkpoint(tree: m.MerkleTree, size: int | None = None) -> str:
    size = tree.size if size is None else size
    return m.sign_note(m.format_checkpoint(ORIGIN, size, tree.root(size)), ORIGIN, LOG_KEY)


def test_checkpoint_round_trip_and_format(small_tree):
    root = small_tree.root(7)
    text = m.format_checkpoint(ORIGIN, 7, root)
    assert text == f"{ORIGIN}\n7\n{base64.b64encode(root).decode()}\n"
    assert m.parse_checkpoint(text) == m.Checkpoint(ORIGIN, 7, root)
    ext = m.Checkpoint(ORIGIN, 0, m.EMPTY_ROOT, ("ext one", "two"))
    assert m.parse_checkpoint(ext.text()) == ext and ext.text().endswith("ext one\ntwo\n")
    root64 = base64.b64encode(root).decode()
    bad = [
        f"{ORIGIN}\n7\n{root64}",  # no final newline
        f"{ORIGIN}\n7\n",
        f"\n7\n{root64}\n",
        f"{ORIGIN}\n07\n{root64}\n",
        f"{ORIGIN}\n-7\n{root64}\n",
        f"{ORIGIN}\n7.0\n{root64}\n",
        f"{ORIGIN}\n18446744073709551616\n{root64}\n",
        f"{ORIGIN}\n7\n{base64.b64encode(root[:31]).decode()}\n",
        f"{ORIGIN}\n7\n{root64[:-1]}\n",
        f"{ORIGIN}\n7\n{root64}\n\nafter a blank\n",
        f"{ORIGIN}\t\n7\n{root64}\n",
    ]
    for text in bad:
        with pytest.raises(m.NoteError):
            m.parse_checkpoint(text)
    with pytest.raises(m.NoteError):
        m.format_checkpoint("two\nlines", 1, root)
    with pytest.raises(m.NoteError):
        m.format_checkpoint(ORIGIN, 1, root, [""])


def test_signed_checkpoint_and_tampering(small_tree):
    note = signed_checkpoint(small_tree, 9)
    checkpoint, opened = m.open_checkpoint(note, [LOG_VKEY], origin=ORIGIN)
    assert checkpoint == m.Checkpoint(ORIGIN, 9, small_tree.root(9))
    assert m.verify_note(note, ORIGIN, LOG_KEY.public_key())[1]
    text, sigline = note.split("\n\n")
    root64 = base64.b64encode(small_tree.root(9)).decode()
    other64 = base64.b64encode(small_tree.root(10)).decode()
    sig = base64.b64decode(sigline.split(" ")[2])
    forged_sig = base64.b64encode(sig[:4] + flip(sig[4:], 0)).decode()
    tampered = {
        "origin": note.replace(ORIGIN + "\n", "market.example/other\n", 1),
        "size": note.replace("\n9\n", "\n10\n"),
        "root": note.replace(root64, other64),
        "signature": text + "\n\n\u2014 " + ORIGIN + " " + forged_sig + "\n",
    }
    for what, bad in tampered.items():
        assert not m.verify_note(bad, ORIGIN, LOG_KEY.public_key())[1], what
        with pytest.raises(m.SignatureError):
            m.open_checkpoint(bad, [LOG_VKEY])
    # unknown key: other name, or same name and another key
    with pytest.raises(m.SignatureError, match="no signature from a trusted key"):
        m.open_note(note, [m.verifier_key("someone.else", LOG_KEY.public_key())])
    with pytest.raises(m.SignatureError, match="no signature from a trusted key"):
        m.open_note(note, [m.verifier_key(ORIGIN, OTHER_KEY.public_key())])
    assert not m.verify_note(note, "someone.else", LOG_KEY.public_key())[1]
    with pytest.raises(m.NoteError, match="expected 'x.example/log'"):
        m.open_checkpoint(note, [LOG_VKEY], origin="x.example/log")


def test_malformed_notes():
    note = m.sign_note("hello\n", "k", LOG_KEY)
    sig64 = note.split(" ")[-1].strip()
    bad = [
        "hello\n",
        "hello\n\n",
        note[:-1],
        note.replace("\u2014", "-"),
        note.replace(sig64, sig64[:-2]),
        "hello\n\n\u2014 k AAAA\n",  # 3 bytes: no room for a key ID and a signature
        "hel\rlo\n" + note[6:],
        "hello\n\n\u2014 k\n",
        b"hello\n\n\xff\n",
        "hel\ud800lo\n" + note[6:],  # lone surrogate: not UTF-8
    ]
    for text in bad:
        with pytest.raises(m.NoteError):
            m.split_note(text)
    with pytest.raises(m.NoteError, match="end with a newline"):
        m.sign_note("no newline", "k", LOG_KEY)
    with pytest.raises(m.NoteError, match="without spaces"):
        m.sign_note("x\n", "a name", LOG_KEY)
    key = m.verifier_key("k", LOG_KEY.public_key())
    doubled = note + note.split("\n\n")[1]
    with pytest.raises(m.NoteError, match="two signatures by the same key"):
        m.open_note(doubled, [key])
    # a note text may contain blank lines: the last blank line separates the signatures
    multi = m.sign_note("a\n\nb\n", "k", LOG_KEY)
    assert m.open_note(multi, [key]).text == "a\n\nb\n"


def test_cosignature_added_and_verified(small_tree):
    note = signed_checkpoint(small_tree, 12)
    cosigned = m.cosign_note(note, "w1.example", WITNESS_KEY, 1_700_000_000)
    assert cosigned.startswith(note)
    both = m.open_note(cosigned, [LOG_VKEY, WITNESS_VKEY])
    assert [v.key for v in both.verified] == [LOG_VKEY, WITNESS_VKEY]
    assert both.verified[1].timestamp == 1_700_000_000
    # any subset of keys: each alone opens it, the other line being ignored as unknown
    assert m.open_note(cosigned, [WITNESS_VKEY]).unknown[0].name == ORIGIN
    assert m.open_note(cosigned, [LOG_VKEY]).signed_by(ORIGIN)
    assert m.verify_note(cosigned, "w1.example", WITNESS_KEY.public_key(),
                         m.ALG_COSIGNATURE_V1)[1]
    # re-cosigning replaces the witness's line
    again = m.cosign_note(cosigned, "w1.example", WITNESS_KEY, 1_700_000_100)
    assert again.count("\u2014 w1.example ") == 1
    assert m.open_note(again, [WITNESS_VKEY]).verified[0].timestamp == 1_700_000_100
    # the cosignature commits to the checkpoint body and to its timestamp
    text, sigs = m.split_note(cosigned)
    cosig = sigs[1]
    moved = m.NoteSignature(cosig.name, cosig.key_id,
                            (1_700_000_001).to_bytes(8, "big") + cosig.signature[8:])
    with pytest.raises(m.SignatureError):
        m.open_note(text + "\n" + sigs[0].line() + moved.line(), [WITNESS_VKEY])
    other = signed_checkpoint(small_tree, 13)
    with pytest.raises(m.SignatureError):
        m.open_note(m.add_signature(other, cosig.line()), [WITNESS_VKEY])
    # domain separation: a cosignature is not a plain signature by the same key
    plain_key = m.verifier_key("w1.example", WITNESS_KEY.public_key())
    with pytest.raises(m.SignatureError, match="no signature from a trusted key"):
        m.open_note(cosigned, [plain_key])
    # a witness may also sign plainly (type 0x01): verified with its 0x01 key
    plain = m.add_signature(note, m.signature_line(text, "w1.example", WITNESS_KEY))
    assert m.open_note(plain, [plain_key, LOG_VKEY]).signed_by(plain_key)
    with pytest.raises(m.NoteError):
        m.cosignature_line(text, "w1.example", WITNESS_KEY, -1)


# --- witness ---------------------------------------------------------------------------------


def test_witness_check(small_tree):
    def cp(size: int, tree: m.MerkleTree = small_tree) -> m.Checkpoint:
        return m.Checkpoint(ORIGIN, size, tree.root(size))

    m.witness_check(None, cp(10), [])  # first contact
    m.witness_check(cp(10), cp(10), [])
    m.witness_check(cp(10), cp(25), small_tree.consistency_proof(10, 25))
    m.witness_check(cp(0), cp(25), [])
    with pytest.raises(m.RollbackError, match="size 9, but size 10 was already co-signed"):
        m.witness_check(cp(10), cp(9), [])
    # a forked log: same first 20 entries, a different 21st
    forked_leaves = SMALL_LEAVES[:20] + [m.leaf_hash(b"evil")] + SMALL_LEAVES[21:]
    forked = build(forked_leaves)[0]
    with pytest.raises(m.ForkError, match="two roots for size 30"):
        m.witness_check(cp(30), cp(30, forked), [])
    with pytest.raises(m.ForkError, match="not shown to extend"):
        m.witness_check(cp(25), cp(30, forked), forked.consistency_proof(25, 30))
    with pytest.raises(m.ForkError, match="not shown to extend"):
        m.witness_check(cp(25), cp(30, forked), small_tree.consistency_proof(25, 30))
    with pytest.raises(m.ForkError):  # consistent history but a broken proof
        bad = small_tree.consistency_proof(10, 25)
        m.witness_check(cp(10), cp(25), bad[:-1])
    with pytest.raises(m.ForkError):
        m.witness_check(cp(10), cp(25), [flip(x, 2) for x in small_tree.consistency_proof(10, 25)])
    # before the fork point the forked log is consistent with the stored view
    m.witness_check(cp(15), cp(20, forked), forked.consistency_proof(15, 20))
    other_log = m.Checkpoint("other.example/log", 30, small_tree.root(30))
    with pytest.raises(m.WitnessError, match="witness follows") as e:
        m.witness_check(cp(10), other_log, [])
    assert not isinstance(e.value, m.RollbackError | m.ForkError)
    assert issubclass(m.ForkError, MarketError) and m.ForkError.status == 409
