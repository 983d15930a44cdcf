"""The data middle platform against a real Spark Connect server (one per test session).

Frames are built here, tiny, with canary markers (``CANARY-<unit>-<field>-<n>``) in every
sensitive column, so that a leak shows up as a marker in the fetched rows.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import stat

import pandas as pd
import pytest
from canaries import find_canaries
from spark_fixtures import platform, spark_server  # noqa: F401

from marketplace_ext.errors import Forbidden, InvalidField, UpstreamUnavailable
from marketplace_ext.platform import DataPlatform, validate_policy

SOURCE_COLUMNS = {
    "customer_id": "string",
    "name": "string",
    "phone": "string",
    "address": "string",
    "district": "string",
    "day": "date",
    "kwh": "double",
    "amount": "double",
}

POLICY = {
    "view": "customers_public",
    "source": "customers",
    "columns": {
        "customer_id": {"rule": "hash"},
        "name": {"rule": "drop"},
        "address": {"rule": "generalize", "to": "district"},
        "day": {"rule": "generalize", "to": "month"},
        "kwh": {"rule": "round", "digits": 1},
        "amount": {"rule": "noise", "scale": 0.5},
        "district": {"rule": "keep"},
        # phone is not listed: dropped by default
    },
    "row_filter": "district <> 'Test'",
}


def customers(unit: str) -> pd.DataFrame:
    """Five rows; customer 1 appears twice (two days), one row is in the filtered district."""
    ids = [f"CANARY-{unit}-meter-1", f"CANARY-{unit}-meter-2", "C3", f"CANARY-{unit}-meter-1", "C5"]
    return pd.DataFrame(
        {
            "customer_id": ids,
            "name": [f"CANARY-{unit}-name-{i}" for i in range(1, 6)],
            "phone": [f"CANARY-{unit}-phone-{i}" for i in range(1, 6)],
            "address": [f"CANARY-{unit}-address-{i}" for i in range(1, 6)],
            "district": ["Northgate", "Millbrook", "Test", "Northgate", "Riverside"],
            "day": [
                datetime.date(2024, 1, 15),
                datetime.date(2024, 2, 3),
                datetime.date(2024, 2, 28),
                datetime.date(2024, 3, 31),
                datetime.date(2024, 12, 1),
            ],
            "kwh": [1.234, 2.345, 3.456, 4.567, 5.678],
            "amount": [10.0, 20.0, 30.0, 40.0, 50.0],
        }
    )


@pytest.fixture(scope="module")
def published(platform):  # noqa: F811
    """Units alpha and beta, each with the same customers table and the public view."""
    views = {}
    for unit in ("alpha", "beta"):
        counts = platform.load_unit_tables(unit, {"customers": customers(unit)})
        assert counts == {"customers": 5}
        views[unit] = platform.create_view(unit, POLICY)
    return views


def table_names(platform, unit: str) -> set[str]:  # noqa: F811
    session = platform.session_for(unit)
    return {
        r.tableName for r in session.sql(f"SHOW TABLES IN {platform.database_for(unit)}").collect()
    }


def test_server_answers(spark_server, platform):  # noqa: F811
    health = platform.health()
    assert health["ok"] and health["endpoint"] == spark_server.remote
    assert platform.spark_remote_for("alpha") == spark_server.remote
    assert platform.database_for("alpha") == "unit_alpha"


def test_view_exposes_no_sensitive_marker(platform, published):  # noqa: F811
    assert published["alpha"] == "unit_alpha.customers_public"
    grants = {"unit_alpha.customers_public"}
    result = platform.query("alpha", "SELECT * FROM customers_public ORDER BY day", grants, 100)
    names = [c["name"] for c in result["columns"]]
    assert names == ["customer_id", "address", "day", "kwh", "amount", "district"]
    assert {"name": "day", "type": "date"} in result["columns"]
    dump = json.dumps(result)
    # no marker of any kind: names dropped, phones dropped by default, meters hashed,
    # addresses replaced by the district
    assert find_canaries(dump) == []
    rows = [dict(zip(names, row, strict=True)) for row in result["rows"]]
    assert len(rows) == 4  # the 'Test' district row is filtered out
    assert {r["district"] for r in rows} == {"Northgate", "Millbrook", "Riverside"}
    assert all(r["address"] == r["district"] for r in rows)
    assert [r["day"] for r in rows] == ["2024-01-01", "2024-02-01", "2024-03-01", "2024-12-01"]
    assert [r["kwh"] for r in rows] == [1.2, 2.3, 4.6, 5.7]
    # noise: deterministic per row, and it does move the values
    again = platform.query("alpha", "SELECT * FROM customers_public ORDER BY day", grants, 100)
    assert again["rows"] == result["rows"]
    amounts = [r["amount"] for r in rows]
    assert amounts != [10.0, 20.0, 40.0, 50.0]
    assert all(abs(a - b) < 10 for a, b in zip(amounts, [10.0, 20.0, 40.0, 50.0], strict=True))


def test_hash_is_stable_within_a_unit_and_differs_across_units(platform, published):  # noqa: F811
    def hashes(unit: str) -> list[str]:
        sql = f"SELECT customer_id FROM unit_{unit}.customers_public ORDER BY day"
        result = platform.query(unit, sql, {f"unit_{unit}.customers_public"}, 10)
        return [row[0] for row in result["rows"]]

    alpha, beta = hashes("alpha"), hashes("beta")
    # rows 1 and 3 (ordered by day) are the same customer, CANARY-<unit>-meter-1
    assert alpha[0] == alpha[2] and alpha[0] != alpha[1]
    assert alpha[0] == platform.hash_value("alpha", "CANARY-alpha-meter-1")
    assert len(alpha[0]) == 64
    # C5 exists in both units with the same value: different pseudonyms
    assert alpha[3] == platform.hash_value("alpha", "C5") != beta[3]
    assert not set(alpha) & set(beta)


def test_failed_load_leaves_old_tables_and_no_staging(platform):  # noqa: F811
    old = pd.DataFrame({"meter": [1, 2, 3], "kwh": [0.5, 1.5, 2.5]})
    assert platform.load_unit_tables("gamma", {"meters": old}) == {"meters": 3}
    new = pd.DataFrame({"meter": [7], "kwh": [9.9]})
    # Arrow cannot type a column mixing ints, strings and dicts; "meters" is written to its
    # staging table first, so the failure really happens midway through the load.
    broken = pd.DataFrame({"x": [1, "a", {"k": 2}]})
    with pytest.raises(InvalidField) as info:
        platform.load_unit_tables("gamma", {"meters": new, "broken": broken})
    assert info.value.field == "tables.broken"
    assert "cannot be converted" in info.value.message
    assert table_names(platform, "gamma") == {"meters"}  # no staging table, no "broken"
    session = platform.session_for("gamma")
    assert sorted(r.meter for r in session.table("unit_gamma.meters").collect()) == [1, 2, 3]

    # a failed first load leaves no database behind
    with pytest.raises(InvalidField):
        platform.load_unit_tables("delta", {"ok": new, "broken": broken})
    databases = {r[0] for r in session.sql("SHOW DATABASES").collect()}
    assert "unit_delta" not in databases

    # a successful reload replaces the data; views over the table keep working
    platform.create_view(
        "gamma",
        {"view": "meters_public", "source": "meters", "columns": {"kwh": {"rule": "keep"}}},
    )
    assert platform.load_unit_tables("gamma", {"meters": new}) == {"meters": 1}
    result = platform.query("gamma", "SELECT kwh FROM meters_public", {"unit_gamma.meters_public"})
    assert result["rows"] == [[9.9]]
    assert table_names(platform, "gamma") == {"meters", "meters_public"}


@pytest.mark.parametrize(
    ("sql", "error", "fragment"),
    [
        ("DROP TABLE customers_public", InvalidField, "only SELECT queries are allowed, not DROP"),
        (
            "INSERT INTO customers_public SELECT * FROM customers_public",
            InvalidField,
            "not INSERT",
        ),
        ("SELECT 1; SELECT 2", InvalidField, "got 2 statements"),
        ("SELECT * FROM customers_public; DROP TABLE customers", InvalidField, "2 statements"),
        ("CACHE TABLE customers_public", InvalidField, "not CACHE"),
        ("SET spark.sql.ansi.enabled=false", InvalidField, "not SET"),
        ("SELECT * FROM customers", Forbidden, "table unit_alpha.customers is not granted"),
        ("SELECT * FROM unit_beta.customers_public", Forbidden, "unit_beta.customers_public"),
        (
            "SELECT p.district FROM customers_public p JOIN customers c ON p.district = c.district",
            Forbidden,
            "unit_alpha.customers is not granted",
        ),
        (
            "SELECT * FROM customers_public WHERE district IN (SELECT district FROM customers)",
            Forbidden,
            "unit_alpha.customers is not granted",
        ),
        (
            "WITH c AS (SELECT * FROM unit_alpha.customers) SELECT * FROM c",
            Forbidden,
            "unit_alpha.customers is not granted",
        ),
        # a CTE named like the base table does not hide the real table in its own body ...
        (
            "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
            Forbidden,
            "unit_alpha.customers is not granted",
        ),
        # ... nor outside its scope
        (
            "SELECT * FROM (WITH customers AS (SELECT 1 AS x) SELECT * FROM customers) a, "
            "customers",
            Forbidden,
            "unit_alpha.customers is not granted",
        ),
        ("SELECT * FROM range(10)", InvalidField, "table-valued functions"),
        ("SELECT * FROM read_files('/etc')", InvalidField, "table-valued functions"),
        ("SELECT * FROM parquet.`/tmp/warehouse`", InvalidField, "reading files"),
        ("SELECT reflect('java.lang.System', 'getenv', 'HOME')", InvalidField, "reflect()"),
        ("SELECT * FROM other_catalog.unit_alpha.customers_public", Forbidden, "catalog"),
    ],
)
def test_guarded_query_refuses(platform, sql, error, fragment):  # noqa: F811
    # Rejected before anything reaches Spark, so these need no data.
    with pytest.raises(error) as info:
        platform.query("alpha", sql, {"unit_alpha.customers_public"}, 10)
    assert info.value.field == "sql"
    assert fragment in info.value.message


def test_guarded_query_allows_granted_ctes_and_set_operations(platform, published):  # noqa: F811
    grants = {"unit_alpha.customers_public"}
    sql = (
        "WITH customers AS (SELECT district FROM customers_public) "
        "SELECT district FROM customers UNION SELECT district FROM unit_alpha.customers_public"
    )
    result = platform.query("alpha", sql, grants, 10)
    assert sorted(r[0] for r in result["rows"]) == ["Millbrook", "Northgate", "Riverside"]


def test_row_limit_truncates(platform, published):  # noqa: F811
    grants = {"unit_alpha.customers_public"}
    sql = "SELECT district, kwh FROM customers_public ORDER BY kwh"
    cut = platform.query("alpha", sql, grants, 2)
    assert cut["truncated"] is True
    assert cut["rows"] == [["Northgate", 1.2], ["Millbrook", 2.3]]
    whole = platform.query("alpha", sql, grants, 4)
    assert whole["truncated"] is False and len(whole["rows"]) == 4
    with pytest.raises(InvalidField) as info:
        platform.query("alpha", sql, grants, platform.max_rows + 1)
    assert info.value.field == "limit"


def test_spark_errors_are_short_and_keyless(platform, published):  # noqa: F811
    with pytest.raises(InvalidField) as info:
        platform.query(
            "alpha", "SELECT nope FROM customers_public", {"unit_alpha.customers_public"}
        )
    message = info.value.message
    assert info.value.field == "sql" and "nope" in message
    # Spark appends the analyzed plan, which names the base table and holds the view's keys.
    assert "\n" not in message and "unit_alpha.customers[" not in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"columns": {"nope": {"rule": "keep"}}}, "columns.nope"),
        ({"columns": {"kwh": {"rule": "scramble"}}}, "columns.kwh.rule"),
        ({"columns": {"kwh": {"rule": "round", "digits": "one"}}}, "columns.kwh.digits"),
        ({"columns": {"kwh": {"rule": "round", "digits": 1, "scale": 2}}}, "columns.kwh.scale"),
        ({"columns": {"amount": {"rule": "noise", "scale": -1}}}, "columns.amount.scale"),
        ({"columns": {"name": {"rule": "round", "digits": 1}}}, "columns.name.rule"),
        ({"columns": {"day": {"rule": "generalize", "to": "fortnight"}}}, "columns.day.to"),
        ({"columns": {"name": {"rule": "generalize", "to": "month"}}}, "columns.name.to"),
        # generalizing to a column the policy does not keep would publish that column
        ({"columns": {"address": {"rule": "generalize", "to": "name"}}}, "columns.address.to"),
        ({"columns": {"name": {"rule": "drop"}}}, "columns"),
        ({"row_filter": "district = 'x'; DROP TABLE customers"}, "row_filter"),
        ({"row_filter": "customer_id IN (SELECT customer_id FROM customers)"}, "row_filter"),
        ({"row_filter": "nope > 1"}, "row_filter"),
        ({"row_filter": "kwh + 1"}, "row_filter"),
        ({"row_filter": "reflect('java.lang.System', 'exit', 0) IS NULL"}, "row_filter"),
        ({"row_filter": "`Java_Method`('java.lang.System', 'exit', 0) IS NULL"}, "row_filter"),
        ({"view": "Bad-Name"}, "view"),
        ({"view": "customers"}, "view"),
        ({"frobnicate": True}, "frobnicate"),
    ],
)
def test_bad_policy_names_the_path(change, field):
    policy = copy.deepcopy(POLICY)
    if "columns" in change:
        policy["columns"] = change.pop("columns")
    policy.update(change)
    with pytest.raises(InvalidField) as info:
        validate_policy(policy, SOURCE_COLUMNS)
    assert info.value.field == field, info.value.message


def test_create_view_checks_source_and_view_names(platform, published):  # noqa: F811
    missing = dict(POLICY, source="no_such_table")
    with pytest.raises(InvalidField) as info:
        platform.create_view("alpha", missing)
    assert info.value.field == "source" and "unit_alpha.no_such_table" in info.value.message
    # a view may not replace a table (here: another unit-table name)
    platform.load_unit_tables("alpha", {"plain": pd.DataFrame({"district": ["x"]})})
    clash = {"view": "plain", "source": "customers", "columns": {"district": {"rule": "keep"}}}
    with pytest.raises(InvalidField) as info:
        platform.create_view("alpha", clash)
    assert info.value.field == "view"


def test_unreachable_endpoint_is_upstream_unavailable(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"sc://127.0.0.1:{port}"
    dp = DataPlatform(endpoints={"gamma": endpoint}, var_dir=str(tmp_path))
    grants = {"unit_gamma.t"}
    with pytest.raises(UpstreamUnavailable) as info:
        dp.query("gamma", "SELECT * FROM t", grants, 10)
    assert endpoint in info.value.message
    with pytest.raises(UpstreamUnavailable):
        dp.load_unit_tables("gamma", {"t": pd.DataFrame({"x": [1]})})
    with pytest.raises(UpstreamUnavailable):
        dp.health("gamma")


@pytest.mark.parametrize("unit", ["Alpha", "1unit", "a-b", "x" * 32, ""])
def test_bad_unit_slug(unit, tmp_path):
    dp = DataPlatform(var_dir=str(tmp_path))
    with pytest.raises(InvalidField) as info:
        dp.database_for(unit)
    assert info.value.field == "unit"
    with pytest.raises(InvalidField):
        dp.query(unit, "SELECT 1", set(), 1)


def test_sessions_are_per_endpoint(spark_server, tmp_path):  # noqa: F811
    port = spark_server.remote.rsplit(":", 1)[1]
    dp = DataPlatform(
        default_endpoint=spark_server.remote,
        endpoints={"beta": f"sc://localhost:{port}"},
        var_dir=str(tmp_path),
    )
    try:
        assert dp.spark_remote_for("beta") == f"sc://localhost:{port}"
        assert dp.session_for("alpha") is dp.session_for("gamma")
        assert dp.session_for("alpha") is not dp.session_for("beta")
    finally:
        dp.close()


def test_hash_secret_file_is_private(tmp_path):
    dp = DataPlatform(var_dir=str(tmp_path))
    first = dp.hash_value("alpha", "x")
    path = tmp_path / "platform_hash_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # the same file gives the same pseudonyms in a new process
    assert DataPlatform(var_dir=str(tmp_path)).hash_value("alpha", "x") == first
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        DataPlatform(var_dir=str(tmp_path)).hash_value("alpha", "x")


def test_long_query_is_cancelled(spark_server, published, tmp_path):  # noqa: F811
    dp = DataPlatform(default_endpoint=spark_server.remote, var_dir=str(tmp_path), query_timeout=1)
    # 4 rows joined with itself 14 times: 4**14 combinations, minutes of work
    sql = "SELECT count(*) FROM " + ", ".join(f"customers_public t{i}" for i in range(14))
    try:
        with pytest.raises(InvalidField) as info:
            dp.query("alpha", sql, {"unit_alpha.customers_public"}, 1)
        assert info.value.field == "sql"
        assert "longer than 1 s and was cancelled" in info.value.message
    finally:
        dp.close()
