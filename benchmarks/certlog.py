"""The certification log in its real storage: batched appends/s and proof latency at 1M
entries right after reopening the database, next to pymerkle (if installed) measured in the
same run as a reference only (it is GPL-licensed: never a dependency).

    .venv/bin/python benchmarks/certlog.py [--entries 1000000] [--batch 10000] [--db-url URL]

Appends go through ``certlog.append`` (one row per statement, the state row locked, as an
action's transaction does), in transactions of --batch statements, each followed by
``integrate`` (tree nodes + a signed checkpoint). Then the engine is disposed and a new one
opened ("restart"), and random inclusion and consistency proofs are timed, each verified.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from marketplace_ext import certlog, dbutil, merkle  # noqa: E402
from marketplace_ext.orm import make_engine, make_session_factory, write_transaction  # noqa: E402


def timed(fn, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(0.99 * (len(samples) - 1))] * 1e3


def pymerkle_reference(entries: int) -> str:
    try:
        from pymerkle import InmemoryTree
    except ImportError:
        return "pymerkle not installed: no reference figures (pip install pymerkle to compare)"
    tree = InmemoryTree(algorithm="sha256")
    t0 = time.perf_counter()
    for i in range(entries):
        tree.append_entry(f"entry {i}".encode())
    rate = entries / (time.perf_counter() - t0)
    size = tree.get_size()
    median, _ = timed(lambda: tree.prove_inclusion(random.randint(1, size), size), 200)
    return f"pymerkle (in memory) {rate:12,.0f} appends/s   inclusion proof {median:8.3f} ms"


def bare_inserts(url: str, entries: int, batch: int) -> float:
    """The baseline from the same run: the same number of rows of the same size inserted into a
    plain table in the same batches, with no hashing, tree nodes or signature - the database's
    floor for an append."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_bare (id INTEGER PRIMARY KEY, kind TEXT, "
                             "actor TEXT, subject TEXT, ref TEXT, body TEXT)")
    t0 = time.perf_counter()
    done = 0
    while done < entries:
        n = min(batch, entries - done)
        rows = [{"id": i, "kind": "order", "actor": "bench", "subject": "a", "ref": f"order:{i}",
                 "body": f'{{"order": {i}}}'} for i in range(done, done + n)]
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_bare VALUES (:id, :kind, :actor, :subject, "
                              ":ref, :body)"), rows)
        done += n
    rate = entries / (time.perf_counter() - t0)
    engine.dispose()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--db-url", default=None, help="default: a SQLite file in a temp dir")
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.batch = 2_000, 500
    tmp = Path(tempfile.mkdtemp(prefix="bench-certlog-"))
    url = args.db_url or f"sqlite:///{tmp}/log.sqlite"
    dbutil.upgrade(url)
    tlog = certlog.TransparencyLog("bench.example/log", tmp / "log.key")

    engine = make_engine(url)
    factory = make_session_factory(engine)
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = 0
    while done < args.entries:
        n = min(args.batch, args.entries - done)
        with factory() as s:
            write_transaction(s)
            for i in range(done, done + n):
                # an order's statement as purchase.place_order writes it (its order row is in
                # the session there, so only the product's owner is looked up)
                certlog.append(s, "order", "bench", "a", f"order:{i}", product="bench-product",
                               version="1.0.0", plan="per_use", price="20.00")
            s.commit()
        with factory() as s:
            write_transaction(s)
            tlog.integrate(s, max_batch=n)
            s.commit()
        done += n
        print(f"\r  {done:,} entries", end="", flush=True)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print()
    engine.dispose()

    engine = make_engine(url)  # "restart": a new engine, nothing cached
    factory = make_session_factory(engine)
    size = args.entries
    with factory() as s:
        cp = tlog.checkpoint(s)
        root = base64.b64decode(cp["root"])

        def inclusion():
            index = random.randrange(size)
            proof = tlog.inclusion(s, index, size)["proof"]
            leaf = base64.b64decode(tlog.entry(s, index)["leaf_hash"])
            assert merkle.verify_inclusion(leaf, index, size,
                                           [base64.b64decode(h) for h in proof], root)

        def consistency():
            old = random.randrange(1, size)
            tlog.consistency(s, old, size)

        first = time.perf_counter()
        inclusion()
        first_ms = (time.perf_counter() - first) * 1e3
        inc_median, inc_p99 = timed(inclusion, 300)
        con_median, con_p99 = timed(consistency, 300)
    engine.dispose()

    db = "SQLite" if url.startswith("sqlite") else url.split(":", 1)[0]
    print(f"database: {db}; {size:,} entries in batches of {args.batch:,}")
    print(f"appends (append + integrate + sign)  {size / elapsed:12,.0f} entries/s")
    # on a shared machine the steadier figure; it counts SQLite's work (in this process) but
    # not a PostgreSQL server's
    print(f"  per CPU-second of this process       {size / cpu:12,.0f} entries/s "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"after reopening: first inclusion proof {first_ms:8.3f} ms")
    print(f"inclusion proof + entry + verify  median {inc_median:8.3f} ms  p99 {inc_p99:8.3f} ms")
    print(f"consistency proof                 median {con_median:8.3f} ms  p99 {con_p99:8.3f} ms")
    bare = bare_inserts(url, size, args.batch)
    print(f"baseline: bare multi-row inserts          {bare:12,.0f} rows/s (same batches)")
    print(f"ratio log appends / bare inserts          {size / elapsed / bare:12.3f}")
    print(pymerkle_reference(min(size, 100_000)))
    if args.db_url is None:
        shutil.rmtree(tmp, ignore_errors=True)  # a million entries take ~800 MB


if __name__ == "__main__":
    main()
