"""Purchases per second through the real service, next to a trivial authenticated GET.

Starts a throw-away platform (hub, proxy, service; SQLite by default, or --db-url), seeds the
demo, publishes a per-use product, then runs N concurrent buyers over HTTP for a fixed time and,
in the same run, N concurrent `GET api/me` callers as the baseline. Prints both rates and their
ratio, and the service's event-loop lag (``GET api/loop-lag``) idle, while buying, and while
buying with two clients uploading a bundle of --upload-mb MB each again and again (``POST
api/bundles/validate``: unpacked and checked on the service's io executor, nothing stored).
Not a test: nothing is asserted.

    .venv/bin/python benchmarks/purchases.py [--clients 50] [--seconds 15] [--db-url URL]
        [--processes N]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _platform import market_for, throwaway_platform  # noqa: E402

from marketplace_ext.bundle import canonical_archive, new_product  # noqa: E402
from marketplace_ext.client import Market  # noqa: E402


def hammer(markets: list[Market], clients: int, seconds: float, call) -> tuple[int, int]:
    """Run ``call(market, i)`` from ``clients`` threads for ``seconds``; (ok, failed) counts."""
    ok = failed = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        nonlocal ok, failed
        market, i = markets[n % len(markets)], 0
        while time.monotonic() < stop:
            good = call(market, f"{n}-{i}")
            i += 1
            with lock:
                ok, failed = (ok + 1, failed) if good else (ok, failed + 1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--db-url", default=None, help="service database (default: SQLite)")
    parser.add_argument("--processes", type=int, default=1,
                        help="service processes (more than 1 needs a PostgreSQL --db-url)")
    parser.add_argument("--upload-mb", type=float, default=8,
                        help="size of the bundle each of the two uploaders sends")
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.upload_mb = 4, 2.0, 1

    extra = {"MARKET_INITIAL_GRANT": "10000000"}
    if args.db_url:
        extra["MARKET_DB_URL"] = args.db_url
    if args.processes > 1:
        if not (args.db_url or "").startswith("postgresql"):
            parser.error("--processes above 1 needs a PostgreSQL --db-url")
        extra["MARKET_SERVICE_PROCESSES"] = str(args.processes)
    with throwaway_platform(**extra) as (platform, accounts):
        publisher = market_for(platform.url, "publisher-a", accounts["publisher-a"])
        operator = market_for(platform.url, "operator", accounts["operator"])
        name = f"bench-{secrets.token_hex(3)}"
        bundle = new_product("tool", name, platform.var_dir.parent)
        manifest = yaml.safe_load((bundle / "product.yaml").read_text())
        manifest["plans"] = [{"type": "per_use", "price": 10}]
        (bundle / "product.yaml").write_text(yaml.safe_dump(manifest))
        publisher.publish(bundle)
        operator.review(name, manifest["version"], "approve")
        buyers = [market_for(platform.url, u, p) for u, p in accounts.items()
                  if u.endswith(("-b", "-c", "-d", "-e"))]

        def me(market: Market, _key: str) -> bool:
            return market.http.get(market.url + "api/me", timeout=30).status_code == 200

        def purchase(market: Market, key: str) -> bool:
            r = market.http.post(market.url + "api/orders", timeout=30, json={
                "product": name, "plan": "per_use", "idempotency_key": f"bench-{key}"})
            return r.status_code == 201

        def lag(seconds: float) -> dict:  # the service's own loop-lag monitor, last N s
            return operator.request("GET", "loop-lag", params={"seconds": max(1, int(seconds))})

        hammer(buyers, args.clients, 2, me)  # warm up connections and the token cache
        time.sleep(2)  # an idle window for the lag baseline (its percentiles, not a sync)
        idle = lag(2)
        got, bad = hammer(buyers, args.clients, args.seconds, me)
        base = got / args.seconds
        bought, refused = hammer(buyers, args.clients, args.seconds, purchase)
        rate = bought / args.seconds
        busy = lag(args.seconds)
        # the same buying, while two clients upload a large bundle again and again
        (bundle / "files" / "noise.bin").write_bytes(
            secrets.token_bytes(int(args.upload_mb * 2**20)))
        archive = canonical_archive(bundle)
        uploads = [0, 0]

        def upload_loop(i: int, stop: threading.Event) -> None:
            while not stop.is_set():  # (answered 200 with the check's findings)
                r = publisher.http.post(publisher.url + "api/bundles/validate", timeout=120,
                                        files={"bundle": ("bench.zip", archive)})
                uploads[i] += r.status_code == 200

        stop = threading.Event()
        uploaders = [threading.Thread(target=upload_loop, args=(i, stop)) for i in range(2)]
        for t in uploaders:
            t.start()
        bought_up, refused_up = hammer(buyers, args.clients, args.seconds,
                                       lambda m, key: purchase(m, f"up-{key}"))  # fresh keys
        stop.set()
        for t in uploaders:
            t.join()
        loaded = lag(args.seconds)
        rate_up = bought_up / args.seconds
        db = "PostgreSQL" if args.db_url else "SQLite"
        print(f"service database: {db}; {args.clients} concurrent clients, "
              f"{args.seconds:.0f} s each")
        print(f"baseline GET api/me:   {base:8.1f} req/s  ({bad} failed)")
        print(f"POST api/orders:       {rate:8.1f} purchases/s  ({refused} failed)")
        print(f"ratio purchases/GET:   {rate / base:8.3f}")
        print(f"event-loop lag idle:       p50 {idle['p50_ms']:7.1f} ms  p99 "
              f"{idle['p99_ms']:7.1f} ms  ({idle['samples']} samples)")
        print(f"event-loop lag buying:     p50 {busy['p50_ms']:7.1f} ms  p99 "
              f"{busy['p99_ms']:7.1f} ms  max {busy['max_ms']:7.1f} ms  "
              f"({busy['samples']} samples)")
        print(f"ratio lag p99 buying/idle: {busy['p99_ms'] / max(idle['p99_ms'], 0.001):8.1f}")
        print(f"buying + 2 uploaders:  {rate_up:8.1f} purchases/s  ({refused_up} failed); "
              f"{sum(uploads)} uploads of {len(archive) / 2**20:.1f} MB checked")
        print(f"event-loop lag buying + uploading: p50 {loaded['p50_ms']:7.1f} ms  p99 "
              f"{loaded['p99_ms']:7.1f} ms  max {loaded['max_ms']:7.1f} ms  "
              f"({loaded['samples']} samples)")
        for phase, window in (("buying", busy), ("buying + uploading", loaded)):
            for stall in window.get("stalls", [])[:3]:  # where the loop was (its watchdog)
                print(f"  stall while {phase}: {stall['ms']:.0f} ms, "
                      f"{stall['stack_share']:.0%} of {stall['samples']} samples in "
                      + " < ".join(stall["stack"][:3]))


if __name__ == "__main__":
    main()
