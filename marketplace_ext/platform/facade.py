""":class:`DataPlatform`: what the service talks to, a small facade over the platform modules.

Endpoints, databases and sessions come from :class:`~.sessions.PlatformEndpoints` (which it
extends, so every trait is configured as ``c.DataPlatform.<trait>``); each other method checks
its arguments and hands one Spark session to the module of its concern: :mod:`.loader`,
:mod:`.policy`, :mod:`.guard` with :mod:`.query`, :mod:`.export`.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pyspark.errors import PySparkException
from traitlets import Bytes, Float, Integer, Unicode, default, validate

from ..errors import InvalidField, MarketError
from . import export, guard, loader
from . import policy as policies
from .common import _first_line, check_unit
from .keys import load_or_create_secret, pseudonym, unit_key
from .query import QueryTimedOut, check_limit, run_query
from .sessions import PlatformEndpoints

_QUALIFIED_VIEW_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


class DataPlatform(PlatformEndpoints):
    """Where each unit's data lives, and the operations the marketplace runs on it.

    A unit's data platform is a Spark Connect endpoint (:attr:`endpoints`, else
    :attr:`default_endpoint`) and a Hive database on it (:attr:`database_template`).

    All methods block on the network; call them from an executor, not the IO loop
    (``await loop.run_in_executor(None, platform.query, ...)``). They are safe to call from
    several executor threads at once.
    """

    var_dir = Unicode(
        "var",
        help="Directory for the platform's local state (the hash secret file by default).",
    ).tag(config=True)

    hash_secret_file = Unicode(
        help="""File holding the secret that per-unit hashing keys are derived from (hex).
        Created with mode 0600 on first use; refused if group or others can read it.
        Defaults to <var_dir>/platform_hash_secret.""",
    ).tag(config=True)

    @default("hash_secret_file")
    def _default_hash_secret_file(self) -> str:
        return os.path.join(self.var_dir, "platform_hash_secret")

    hash_secret = Bytes(
        help="""The secret behind the keyed hashes of desensitized views (at least 32 bytes).
        Set it through the environment or leave it empty to use hash_secret_file. Changing
        it changes every pseudonym. Never logged.""",
    ).tag(config=True)

    @default("hash_secret")
    def _default_hash_secret(self) -> bytes:
        env = os.environ.get("MARKET_PLATFORM_HASH_SECRET")
        if env:
            return bytes.fromhex(env)
        return load_or_create_secret(self.hash_secret_file, self.log)

    @validate("hash_secret")
    def _validate_hash_secret(self, proposal: Any) -> bytes:
        value = proposal["value"]
        if len(value) < 32:
            raise ValueError("DataPlatform.hash_secret must be at least 32 bytes")
        return value

    max_rows = Integer(
        1000,
        help="""Default and upper bound of the row limit of query(): a subscriber's query
        returns at most this many rows (and says whether more existed).""",
    ).tag(config=True)

    query_timeout = Float(
        120.0,
        help="Seconds a subscriber's query may run before it is cancelled on the server.",
    ).tag(config=True)

    export_max_rows = Integer(
        200_000,
        help="""Rows an export of a data product's view (download mode) may hold; a larger view
        is cut at this many rows and the response says so (X-Truncated).""",
    ).tag(config=True)

    load_chunk_bytes = Integer(
        32 * 1024 * 1024,
        help="""Arrow bytes per batch sent to the server when loading a table (~1M rows of a
        four-column table). The server holds a batch as rows in its heap while writing it:
        3.5M rows in one batch exhausted a 1g server; bigger batches only save a little
        per-batch overhead.""",
    ).tag(config=True)

    load_parallelism = Integer(
        2,
        help="""Tables of one load written at the same time. The server converts each batch on
        a single thread, so on a multi-core server a few parallel writes load faster.""",
    ).tag(config=True)

    # -- pseudonyms -----------------------------------------------------------------------------

    def hash_value(self, unit: str, value: Any) -> str | None:
        """The pseudonym the ``hash`` rule gives *value* in *unit*'s views.

        Lets a data owner find a customer's pseudonym without querying. *value* is compared
        by its Spark string form (``str()`` matches for ints and strings).
        """
        return pseudonym(self.hash_secret, unit, value)

    # -- loading --------------------------------------------------------------------------------

    def load_unit_tables(self, unit: str, tables: Mapping[str, Any]) -> dict[str, int]:
        """Write pandas DataFrames as managed tables ``<unit db>.<name>``; all or nothing.

        Returns ``{table: rows}``. Tables not named in *tables* are left alone, and views
        over the replaced tables keep working (they refer to tables by name). How the staged
        swap works: :mod:`marketplace_ext.platform.loader`.
        """
        check_unit(unit)
        loader.check_frames(tables)
        database = self.database_for(unit)
        token = uuid.uuid4().hex[:8]

        def load(session: Any) -> dict[str, int]:
            return loader.load_tables(
                session,
                database,
                tables,
                token=token,
                chunk_bytes=self.load_chunk_bytes,
                parallelism=self.load_parallelism,
                log=self.log,
            )

        with self._unit_lock(unit):
            t0 = time.monotonic()
            try:
                counts = self._run(unit, load, field="tables")
            except MarketError:
                raise
            except PySparkException as e:
                raise InvalidField(
                    f"loading tables into {database} failed: {_first_line(str(e))}",
                    field="tables",
                ) from None
        self.log.info(
            "Loaded %s into %s in %.1f s",
            ", ".join(f"{t} ({n} rows)" for t, n in counts.items()),
            database,
            time.monotonic() - t0,
        )
        return counts

    # -- views ----------------------------------------------------------------------------------

    def view_sql(
        self, unit: str, policy: Mapping[str, Any], source_columns: Mapping[str, str]
    ) -> str:
        """The ``CREATE OR REPLACE VIEW`` statement for a validated policy (contains keys)."""
        return policies.view_sql(
            self.database_for(unit),
            policy,
            source_columns,
            hash_key=unit_key(self.hash_secret, unit, "hash"),
            noise_key=unit_key(self.hash_secret, unit, "noise"),
        )

    def create_view(self, unit: str, policy: Mapping[str, Any]) -> str:
        """Create (or replace) the desensitized view a data product publishes.

        *policy* is the ``view``/``source``/``columns``/``row_filter`` mapping from the
        product manifest; see :func:`~.policy.validate_policy` for the rules. Columns the
        policy does not list are dropped. Returns the qualified view name
        ``unit_<slug>.<view>``.

        Noise is deterministic per row: a keyed hash of the column name and the whole source
        row (as JSON) picks the Laplace sample, so repeating a query cannot average the noise
        away, identical rows get identical noise and changing any field of a row re-draws it.

        Limitation: Spark has no keyed hash and no secret store a view can read, so the
        per-unit keys (derived from :attr:`hash_secret` by HMAC; never the secret itself)
        are literals in the view text in the metastore. Anyone who can read the view's
        definition (``SHOW CREATE TABLE`` on the unit's platform) can recompute pseudonyms
        from candidate values; subscribers cannot, since :meth:`query` only runs SELECTs.
        With per-unit platforms that is only the unit itself, which holds the raw data
        anyway. Error messages are scrubbed of key material.
        """
        database = self.database_for(unit)

        def create(session: Any) -> str:
            return policies.create_view(
                session, database, policy, lambda cols: self.view_sql(unit, policy, cols)
            )

        return self._run(unit, create, field="policy")

    # -- guarded SQL ----------------------------------------------------------------------------

    def check_query(self, unit: str, sql: str, grants: Iterable[str]) -> tuple[str, list[str]]:
        """Check a subscriber's SQL against the allow-list (:mod:`.guard`); return (the SQL to
        run, the qualified views it reads). Nothing reaches Spark."""
        return guard.check_sql(sql, self.database_for(unit), grants)

    def query(
        self, unit: str, sql: str, grants: Iterable[str], limit: int | None = None
    ) -> dict[str, Any]:
        """Run a subscriber's SELECT on *unit*'s platform, reading only *grants*.

        *grants* are qualified view names (``unit_x.customers_public``); unqualified names in
        *sql* resolve against the unit's database. *limit* defaults to :attr:`max_rows` and
        may not exceed it. Returns ``{"columns": [{"name", "type"}], "rows": [[...]],
        "truncated"}`` with JSON-ready values (dates as ISO strings, decimals as floats,
        binary as base64).

        Raises InvalidField(field="sql"/"limit") for bad SQL or a construct outside the
        allow-list, Forbidden(field="sql") for a table outside the grant,
        UpstreamUnavailable if the platform is down.
        """
        limit = check_limit(self.max_rows if limit is None else limit, self.max_rows)
        statement, tables = self.check_query(unit, sql, grants)
        t0 = time.monotonic()
        try:
            result = self._run(
                unit,
                lambda session: run_query(session, statement, limit, self.query_timeout),
                field="sql",
            )
        except MarketError:
            raise
        except QueryTimedOut:
            raise InvalidField(
                f"the query ran longer than {self.query_timeout:.0f} s and was cancelled",
                field="sql",
            ) from None
        except PySparkException as e:
            raise InvalidField(f"the query failed: {_first_line(str(e))}", field="sql") from None
        self.log.info(
            "Query on %s read %s: %d rows in %.2f s",
            unit,
            ", ".join(sorted(set(tables))) or "no table",
            len(result["rows"]),
            time.monotonic() - t0,
        )
        return result

    # -- export ---------------------------------------------------------------------------------

    def export_view(self, unit: str, view: str, fmt: str) -> tuple[bytes, int, bool]:
        """A published view of *unit* as CSV or Parquet bytes.

        *view* is a qualified view name the caller was granted. Returns (bytes, rows,
        truncated) with at most :attr:`export_max_rows` rows, in the view's column order.
        """
        export.check_format(fmt)
        if not isinstance(view, str) or not _QUALIFIED_VIEW_RE.match(view):
            raise InvalidField(f"{view!r} is not a qualified view name (db.view)", field="view")
        limit = self.export_max_rows
        try:
            return self._run(
                unit, lambda session: export.export_view(session, view, fmt, limit), field="view"
            )
        except MarketError:
            raise
        except PySparkException as e:
            raise InvalidField(f"the export failed: {_first_line(str(e))}", field="view") from None
