"""The staged table loader: a unit's pandas frames become managed tables, all or nothing.

How the swap works: Spark refuses ``ALTER TABLE a.t RENAME TO b.t`` across databases
(``RENAME_TABLE_SOURCE_DESTINATION_DATABASE_MISMATCH``) and Hive has no database rename, so a
separate staging database cannot be swapped in. Instead each frame is written (Arrow batches
of ``chunk_bytes``, ``saveAsTable`` as parquet) into a staging table ``<t>__staging_<token>``
of the unit's database; that is the slow part where conversion errors, full disks or a dying
server happen, and a failure there drops the staging tables (and the database itself if this
load created it). Once every table is written, each ``t`` is renamed to
``t__previous_<token>`` and ``t__staging_<token>`` to ``t`` (metastore renames, the managed
directory moves with them); if a rename fails, the renames done so far are undone in reverse.
The old tables are dropped last. Queries during the swap may briefly miss a table; a crash
during it is repaired by the next load (orphaned ``__previous_`` tables are renamed back).
``__`` in names is reserved for this.

Every function takes a Spark Connect session and blocks on it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pyspark.errors import PySparkException

from ..errors import InvalidField
from .common import _check_object_name, _first_line, _is_connection_error, _is_stale_session

Log = logging.Logger | logging.LoggerAdapter

# The loader's reserved name parts: ``<table>__staging_<token>``, ``<table>__previous_<token>``.
_STAGING = "staging"
_PREVIOUS = "previous"
_RESERVED_RE = re.compile(r"^(?P<table>[a-z][a-z0-9_]*?)__(?P<kind>staging|previous)_[0-9a-f]{8}$")


def check_frames(tables: Any) -> None:
    """Raise InvalidField (``tables`` / ``tables.<name>``) unless *tables* maps valid table
    names to pandas DataFrames with at least one column."""
    import pandas as pd

    if not isinstance(tables, Mapping) or not tables:
        raise InvalidField(
            "tables must be a non-empty mapping of name to DataFrame", field="tables"
        )
    for name, frame in tables.items():
        _check_object_name(name, f"tables.{name}", "table")
        if not isinstance(frame, pd.DataFrame):
            raise InvalidField(
                f"table {name!r} must be a pandas DataFrame, not {type(frame).__name__}",
                field=f"tables.{name}",
            )
        if len(frame.columns) == 0:
            raise InvalidField(f"table {name!r} has no columns", field=f"tables.{name}")


def table_names(session: Any, database: str) -> set[str]:
    """Names of the tables and views in *database* (not temporary views)."""
    rows = session.sql(f"SHOW TABLES IN `{database}`").collect()
    return {r.tableName for r in rows if not r.isTemporary}


def database_exists(session: Any, database: str) -> bool:
    rows = session.sql("SHOW DATABASES").collect()
    return database in {r[0] for r in rows}


def load_tables(
    session: Any,
    database: str,
    tables: Mapping[str, Any],
    *,
    token: str,
    chunk_bytes: int,
    parallelism: int,
    log: Log,
) -> dict[str, int]:
    """Write *tables* (checked by :func:`check_frames`) into *database*; return row counts.

    *token* (8 hex digits) names this load's staging tables. The caller holds the unit's
    lock: two loads into one database must not interleave.
    """
    created_db = not database_exists(session, database)
    session.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    if not created_db:
        _recover(session, database, log)
    staged = [f"{name}__{_STAGING}_{token}" for name in tables]
    try:
        counts = _write_frames(session, database, tables, staged, chunk_bytes, parallelism)
        _swap(session, database, list(tables), token, log)
    except BaseException:
        _discard(session, database, staged, drop_database=created_db, log=log)
        raise
    return counts


def _recover(session: Any, database: str, log: Log) -> None:
    """Undo what a crashed load left: restore orphaned backups, drop staging tables."""
    names = table_names(session, database)
    for name in sorted(names):
        m = _RESERVED_RE.match(name)
        if not m:
            continue
        table = m["table"]
        if m["kind"] == _PREVIOUS and table not in names:
            log.warning("Restoring %s.%s from an interrupted load", database, table)
            session.sql(f"ALTER TABLE `{database}`.`{name}` RENAME TO `{database}`.`{table}`")
            names.add(table)
        else:
            session.sql(f"DROP TABLE IF EXISTS `{database}`.`{name}`")


def _write_frames(
    session: Any,
    database: str,
    tables: Mapping[str, Any],
    staged: list[str],
    chunk_bytes: int,
    parallelism: int,
) -> dict[str, int]:
    """Write every frame to its staging table, *parallelism* at a time.

    The server turns each Arrow batch into rows on one thread, so writing two tables at
    once keeps two cores busy. On the first failure, writes not yet started are cancelled
    and running ones finish (the pool waits) before the caller drops the staging tables.
    """
    names = list(tables)
    if parallelism <= 1 or len(names) == 1:
        return {
            name: _write_frame(session, database, stg, name, tables[name], chunk_bytes)
            for name, stg in zip(names, staged, strict=True)
        }
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(parallelism, thread_name_prefix="platform-load") as pool:
        futures = {
            pool.submit(
                _write_frame, session, database, stg, name, tables[name], chunk_bytes
            ): name
            for name, stg in zip(names, staged, strict=True)
        }
        try:
            for future in as_completed(futures):
                counts[futures[future]] = future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return {name: counts[name] for name in names}


def _write_frame(
    session: Any, database: str, staging: str, name: str, frame: Any, chunk_bytes: int
) -> int:
    import pyarrow as pa

    try:
        # Convert on the client, once: a column Arrow cannot type fails here, clearly.
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except Exception as e:
        raise InvalidField(
            f"table {name!r} cannot be converted for Spark: {_first_line(str(e), 300)}",
            field=f"tables.{name}",
        ) from None
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    step = max(1000, chunk_bytes // row_bytes)
    target = f"`{database}`.`{staging}`"
    # Write the first batch even if the frame is empty so the table gets its schema.
    for start in range(0, max(table.num_rows, 1), step):
        try:
            sdf = session.createDataFrame(table.slice(start, step))
        except (PySparkException, pa.ArrowException) as e:
            if _is_connection_error(e) or _is_stale_session(e):
                raise
            raise InvalidField(
                f"table {name!r} cannot be loaded: {_first_line(str(e), 300)}",
                field=f"tables.{name}",
            ) from None
        sdf.write.format("parquet").mode("error" if start == 0 else "append").saveAsTable(target)
    return table.num_rows


def _swap(session: Any, database: str, names: list[str], token: str, log: Log) -> None:
    existing = table_names(session, database)
    done: list[tuple[str, str]] = []

    def rename(old: str, new: str) -> None:
        session.sql(f"ALTER TABLE `{database}`.`{old}` RENAME TO `{database}`.`{new}`")
        done.append((old, new))

    try:
        for name in names:
            if name in existing:
                rename(name, f"{name}__{_PREVIOUS}_{token}")
            rename(f"{name}__{_STAGING}_{token}", name)
    except BaseException:
        for old, new in reversed(done):
            try:
                session.sql(f"ALTER TABLE `{database}`.`{new}` RENAME TO `{database}`.`{old}`")
            except Exception:
                log.exception("Could not undo rename %s -> %s in %s", old, new, database)
        raise
    for name in names:
        if name in existing:
            session.sql(f"DROP TABLE IF EXISTS `{database}`.`{name}__{_PREVIOUS}_{token}`")


def _discard(
    session: Any, database: str, staged: list[str], *, drop_database: bool, log: Log
) -> None:
    try:
        if drop_database:
            session.sql(f"DROP DATABASE IF EXISTS `{database}` CASCADE")
        else:
            for staging in staged:
                session.sql(f"DROP TABLE IF EXISTS `{database}`.`{staging}`")
    except Exception:
        # The next load's _recover() drops them; the original error matters more.
        log.exception("Could not clean up the staging tables of %s", database)
