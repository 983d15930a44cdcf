"""Figures for the pure log core (marketplace_ext.merkle), in memory, no database.

Prints batched appends/s into a DictNodeStore and proof latency at 1M entries right after
"reopening" (a fresh MerkleTree over the same store: nothing cached), next to a naive baseline
that recomputes from the leaf hashes, measured in the same run at a smaller size.

    .venv/bin/python benchmarks/certlog_core.py [--size 1000000] [--naive-size 32768]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketplace_ext import merkle as m  # noqa: E402


def naive_mth(hs: list[bytes], lo: int, hi: int) -> bytes:
    """RFC 9162 MTH over hs[lo:hi], recomputed from the leaves."""
    n = hi - lo
    if n == 0:
        return m.EMPTY_ROOT
    if n == 1:
        return hs[lo]
    k = 1 << ((n - 1).bit_length() - 1)
    return m.node_hash(naive_mth(hs, lo, lo + k), naive_mth(hs, lo + k, hi))


def naive_path(i: int, hs: list[bytes], lo: int, hi: int) -> list[bytes]:
    if hi - lo == 1:
        return []
    k = 1 << ((hi - lo - 1).bit_length() - 1)
    if i < lo + k:
        return naive_path(i, hs, lo, lo + k) + [naive_mth(hs, lo + k, hi)]
    return naive_path(i, hs, lo + k, hi) + [naive_mth(hs, lo, lo + k)]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def us(seconds: float) -> str:
    return f"{seconds * 1e6:10.1f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--naive-size", type=int, default=1 << 15)
    ap.add_argument("--proofs", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.naive_size, args.proofs = 4_096, 256, 1 << 10, 100
    n, batch, rng = args.size, args.batch, random.Random(1)

    t = time.perf_counter()
    leaves = [m.leaf_hash(i.to_bytes(8, "big")) for i in range(n)]
    t_leaf = time.perf_counter() - t

    store = m.DictNodeStore()
    tree = m.MerkleTree(store)
    t = time.perf_counter()
    for i in range(0, n, batch):
        tree.append_many(leaves[i:i + batch])
        tree.root()  # what a log signs after each batch
    t_append = time.perf_counter() - t
    print(f"entries: {n:,}   batch: {batch}   stored nodes: {len(store.nodes):,}")
    print(f"leaf hashing      {n / t_leaf:12,.0f} leaves/s")
    print(f"append (batched)  {n / t_append:12,.0f} appends/s   (tree + root after each batch)")

    # reopen: a new tree object over the same store, as after a restart
    reopened = m.MerkleTree(store, n)
    store.reads = store.calls = 0
    t = time.perf_counter()
    root = reopened.root()
    t_root = time.perf_counter() - t
    print(f"\nafter reopening at {n:,}: root {us(t_root)}  ({store.reads} node reads)")

    idx = [rng.randrange(n) for _ in range(args.proofs)]
    store.reads = 0
    incl = [timed(lambda i=i: reopened.inclusion_proof(i, n), 1)[0] for i in idx]
    incl_reads = store.reads / len(idx)
    olds = [rng.randrange(1, n) for _ in range(args.proofs)]
    store.reads = 0
    cons = [timed(lambda o=o: reopened.consistency_proof(o, n), 1)[0] for o in olds]
    cons_reads = store.reads / len(olds)
    proofs = [(i, reopened.inclusion_proof(i, n)) for i in idx[:500]]
    t = time.perf_counter()
    assert all(m.verify_inclusion(leaves[i], i, n, p, root) for i, p in proofs)
    t_verify = (time.perf_counter() - t) / len(proofs)
    q = statistics.quantiles
    print(f"inclusion proof   median {us(statistics.median(incl))}  p99 {us(q(incl, n=100)[98])}"
          f"  ({incl_reads:.1f} node reads)")
    print(f"consistency proof median {us(statistics.median(cons))}  p99 {us(q(cons, n=100)[98])}"
          f"  ({cons_reads:.1f} node reads)")
    print(f"verify inclusion  mean   {us(t_verify)}")

    # naive baseline: recompute from the leaf hashes, at a smaller size, same run
    s = min(args.naive_size, n)
    small = leaves[:s]
    nidx = [rng.randrange(s) for _ in range(5)]
    naive_root = statistics.median(timed(lambda: naive_mth(small, 0, s), 5))
    naive_incl = statistics.median([timed(lambda i=i: naive_path(i, small, 0, s), 1)[0]
                                    for i in nidx])
    fast_incl_s = statistics.median(timed(lambda: reopened.inclusion_proof(s // 3, s), 200))
    fast_root_s = statistics.median(timed(lambda: reopened.root(s), 200))
    assert naive_path(nidx[0], small, 0, s) == reopened.inclusion_proof(nidx[0], s)
    assert naive_mth(small, 0, s) == reopened.root(s)
    t = time.perf_counter()
    naive_batches = max(1, s // batch)
    for b in range(1, naive_batches + 1):
        naive_mth(small, 0, b * batch)  # root recomputed after each batch
    naive_append = naive_batches * batch / (time.perf_counter() - t)
    print(f"\nnaive recompute-from-leaves baseline at {s:,} entries (same run):")
    print(f"root              naive {us(naive_root)}   stored nodes {us(fast_root_s)}"
          f"   ratio {naive_root / fast_root_s:8,.0f}x")
    print(f"inclusion proof   naive {us(naive_incl)}   stored nodes {us(fast_incl_s)}"
          f"   ratio {naive_incl / fast_incl_s:8,.0f}x")
    print(f"append+root       naive {naive_append:10,.0f} appends/s (batch {batch}, quadratic)")
    print(f"naive cost is linear: a proof at {n:,} would take ~"
          f"{naive_incl * n / s * 1e3:,.0f} ms (extrapolated)")


if __name__ == "__main__":
    main()
