"""Per-unit servers' start time and memory, and a warm aggregate over ``consumption_daily``
through Spark Connect next to what an in-process (classic) SparkSession needs for it.

Starts ``--units`` unit servers in parallel the way the service does (``UnitServers``: each as
its own account when root, 512m heap, token required) and prints the time until all answer
and each server's resident memory. Then loads a synthetic ``consumption_daily`` into the first
unit's server (or uses ``--remote``), runs the aggregate through :meth:`DataPlatform.query`
(the marketplace's interface path: the SQL guard included), starts
``SparkSession.builder.master("local[2]")`` in this process over the same parquet files and
runs the same SQL. Prints the figures and their ratio. Not a test: nothing is asserted.

    .venv/bin/python benchmarks/platform_query.py [--units 5] [--rows 1000000] [--repeat 5]
    .venv/bin/python benchmarks/platform_query.py --quick      # small, for tests (2 units)
    .venv/bin/python benchmarks/platform_query.py --remote sc://127.0.0.1:15002 [--reload]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marketplace_ext.platform import DataPlatform  # noqa: E402
from marketplace_ext.platform.supervisor import UnitServers  # noqa: E402

QUERY = """
SELECT date_trunc('MONTH', day) AS month,
       count(DISTINCT customer_id) AS customers,
       sum(kwh) AS kwh,
       avg(kwh) AS mean_kwh
FROM {table}
GROUP BY 1
ORDER BY 1
"""


def synthetic_consumption(rows: int, seed: int = 7) -> pd.DataFrame:
    """Daily readings shaped like griddata's consumption_daily (customer_id, day, kwh, ...)."""
    rng = np.random.default_rng(seed)
    customers = max(1, rows // 365)
    ids = rng.integers(0, customers, rows)
    days = pd.Timestamp("2013-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D")
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids).map(lambda i: f"C{i:06d}").astype("str"),
            "day": days.date,
            "kwh": rng.gamma(2.0, 5.0, rows).round(3),
            "n_halfhours": np.full(rows, 48, dtype="int32"),
        }
    )


def table_location(session, table: str) -> str | None:
    rows = session.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
    for row in rows:
        if row.col_name == "Location":
            return row.data_type
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", help="use this Spark Connect server instead of starting one")
    parser.add_argument("--unit", default="bench", help="unit whose database holds the table")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows to load")
    parser.add_argument("--reload", action="store_true", help="reload even if the table exists")
    parser.add_argument("--repeat", type=int, default=5, help="warm query repetitions")
    parser.add_argument("--master", default="local[2]", help="master of both Spark flavours")
    parser.add_argument("--skip-classic", action="store_true", help="Spark Connect figures only")
    parser.add_argument("--units", type=int, default=5, help="unit servers to start in parallel")
    parser.add_argument("--memory", default="512m", help="driver memory of each unit server")
    parser.add_argument("--quick", action="store_true",
                        help="small run for tests: 2 units, 20,000 rows, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.units, args.rows, args.repeat = min(args.units, 2), 20_000, 2

    warnings.simplefilter("ignore", FutureWarning)  # pyspark 4.3 about pandas 3
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="market-bench-spark-"))
    tmp.chmod(0o711)  # the unit servers' accounts pass through to their own directories
    servers = None
    try:
        if args.remote:
            platform = DataPlatform(default_endpoint=args.remote, var_dir=str(tmp), max_rows=1000)
            remote = args.remote
        else:
            units = [args.unit] + [f"{args.unit}{i}" for i in range(2, args.units + 1)]
            servers = UnitServers(var_dir=str(tmp / "platform"), master=args.master,
                                  driver_memory=args.memory)
            t0 = time.perf_counter()
            servers.start(units)
            down = servers.wait_up(timeout=600)
            took = time.perf_counter() - t0
            if down:
                raise SystemExit(f"unit servers did not come up: {down}")
            print(f"start {len(units)} unit servers in parallel ({args.memory} each, until "
                  f"SELECT 1 + SHOW DATABASES answer on all): {took:.1f} s")
            for unit, state in sorted(servers.status().items()):
                rss = (state["rss_bytes"] or 0) / 2**20
                print(f"  unit {unit}: resident memory {rss:.0f} MB (pid {state['pid']})")
            platform = DataPlatform(servers=servers, var_dir=str(tmp), max_rows=1000,
                                    load_chunk_bytes=8 * 2**20)
            remote = f"unit {args.unit}'s server"
        database = platform.database_for(args.unit)
        table = f"{database}.consumption_daily"
        session = platform.session_for(args.unit)
        exists = session.catalog.tableExists(table)
        frame = None
        if args.reload or not exists:
            frame = synthetic_consumption(args.rows)
            t0 = time.perf_counter()
            platform.load_unit_tables(args.unit, {"consumption_daily": frame})
            took = time.perf_counter() - t0
            print(
                f"load {len(frame):,} rows (Arrow batches, staging + swap): {took:.1f} s "
                f"({len(frame) / took:,.0f} rows/s)"
            )
        rows = session.table(table).count()
        print(f"{table}: {rows:,} rows at {remote}")

        sql = QUERY.format(table=table)
        grants = {table}
        t0 = time.perf_counter()
        result = platform.query(args.unit, sql, grants)
        first = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            platform.query(args.unit, sql, grants)
            warm.append(time.perf_counter() - t0)
        connect_warm = statistics.median(warm)
        print(f"Spark Connect first query: {first:.2f} s ({len(result['rows'])} result rows)")
        print(
            f"Spark Connect warm query: median {connect_warm:.3f} s, min {min(warm):.3f} s "
            f"over {args.repeat} runs"
        )

        if args.skip_classic:
            return
        location = table_location(session, table)
        local_path = location[len("file:") :] if location and location.startswith("file:") else None
        if local_path is None or not os.path.isdir(local_path):
            if frame is None:
                print(
                    "classic: the table's files are not on this machine and it was not "
                    "generated here; rerun with --reload"
                )
                return
            local_path = None
        platform.close()
        if servers is not None:
            servers.stop()  # the classic session runs alone, as the Connect query did
            servers = None

        from pyspark.sql import SparkSession

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # as the server: loopback only
        t0 = time.perf_counter()
        spark = (
            SparkSession.builder.master(args.master)
            .appName("platform_query classic")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "8")  # as the Connect server
            .config("spark.local.dir", str(tmp / "classic"))
            .getOrCreate()
        )
        started = time.perf_counter() - t0
        spark.sparkContext.setLogLevel("ERROR")
        if local_path:
            df = spark.read.parquet(local_path)
        else:
            df = spark.createDataFrame(frame)
        df.createOrReplaceTempView("consumption_daily")
        classic_sql = QUERY.format(table="consumption_daily")
        t1 = time.perf_counter()
        spark.sql(classic_sql).collect()
        classic_first = time.perf_counter() - t1
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        spark.sql(classic_sql).collect()
        classic_warm = time.perf_counter() - t1
        spark.stop()
        source = "the same parquet files" if local_path else "the same frame (createDataFrame)"
        print(
            f"classic SparkSession ({args.master}, no Hive, over {source}): start {started:.1f} s "
            f"+ first query {classic_first:.2f} s = {total:.1f} s; its warm query "
            f"{classic_warm:.3f} s"
        )
        print(
            f"ratio: classic start+query / Spark Connect warm query = {total / connect_warm:.0f}x"
        )
        print(f"ratio: classic warm / Spark Connect warm = {classic_warm / connect_warm:.2f}x")
    finally:
        if servers is not None:
            servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
