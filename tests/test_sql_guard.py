"""The allow-list SQL guard (marketplace_ext.platform.guard), against the real Spark server.

Every bypass attempt in BYPASSES is refused with an InvalidField on ``sql`` that names the
construct; run through ``DataPlatform.query`` they leave no trace on the server (no file
written, no JVM property set, no table created or cached, no jar added, no setting changed).
Every allowed category runs on the server and gives the right answer.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from spark_fixtures import platform, spark_server  # noqa: F401

from marketplace_ext.errors import Forbidden, InvalidField
from marketplace_ext.platform import check_sql, validate_policy
from marketplace_ext.platform.guard import allowed_functions

UNIT = "sqlguard"
DB = f"unit_{UNIT}"
GRANTS = {f"{DB}.meters_public", f"{DB}.districts_public"}
# Markers a script transform would create; /tmp and world-writable, so that a server running
# under its own account could write them too.
MARKER_DIR = tempfile.mkdtemp(prefix="market-guard-")
os.chmod(MARKER_DIR, 0o777)
MARKER = os.path.join(MARKER_DIR, "transform-ran")
PROPERTY = "market.guard.pwned"

METERS = pd.DataFrame(
    {
        "meter_id": ["m1", "m2", "m3", "m4", "m5"],
        "district": ["North", "North", "South", "South", "Nörd"],
        "day": [
            datetime.date(2024, 1, 15),
            datetime.date(2024, 2, 3),
            datetime.date(2024, 2, 28),
            datetime.date(2024, 3, 31),
            datetime.date(2024, 12, 1),
        ],
        "kwh": pd.array([1.5, 2.5, 4.0, 6.0, None], dtype="Float64"),
    }
)
DISTRICTS = pd.DataFrame({"district": ["North", "South"], "region": ["Upper", "Lower"]})


def _keep_all(view: str, source: str, columns: list[str]) -> dict:
    return {"view": view, "source": source, "columns": {c: {"rule": "keep"} for c in columns}}


@pytest.fixture(scope="module", autouse=True)
def _marker_dir():
    yield
    shutil.rmtree(MARKER_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def views(platform):  # noqa: F811
    platform.load_unit_tables(UNIT, {"meters": METERS, "districts": DISTRICTS})
    platform.create_view(UNIT, _keep_all("meters_public", "meters", list(METERS.columns)))
    platform.create_view(UNIT, _keep_all("districts_public", "districts", ["district", "region"]))
    return platform


def rows(platform, sql: str) -> list[list]:  # noqa: F811
    return platform.query(UNIT, sql, GRANTS, 100)["rows"]


# -- refused ------------------------------------------------------------------------------------

CYRILLIC_E = "\u0435"

#: (sql, a fragment of the refusal's message)
BYPASSES: list[tuple[str, str]] = [
    # quoted, backticked and case-varied function names
    ("SELECT `java_method`('java.lang.System', 'getProperty', 'user.dir') AS x", "java_method()"),
    ("SELECT `JAVA_METHOD`('java.lang.System', 'getProperty', 'user.dir')", "java_method()"),
    ("SELECT JaVa_MeThOd('java.lang.System', 'getProperty', 'user.dir')", "java_method()"),
    (f"SELECT java_method('java.lang.System', 'setProperty', '{PROPERTY}', '1')", "java_method()"),
    ("SELECT reflect('java.lang.System', 'getenv', 'HOME')", "reflect()"),
    ("SELECT `reflect`('java.lang.System', 'getenv', 'HOME')", "reflect()"),
    (f"SELECT ReFlEcT('java.lang.System', 'setProperty', '{PROPERTY}', '2')", "reflect()"),
    ("SELECT try_reflect('java.lang.System', 'getenv', 'HOME')", "try_reflect()"),
    ("SELECT `Try_Reflect`('java.lang.System', 'exit', 0)", "try_reflect()"),
    ("SELECT `input_file_name`() AS f FROM meters_public LIMIT 1", "input_file_name()"),
    ("SELECT INPUT_FILE_NAME() FROM meters_public", "input_file_name()"),
    ("SELECT input_file_block_start() FROM meters_public", "input_file_block_start()"),
    ("SELECT `input_file_block_length`() FROM meters_public", "input_file_block_length()"),
    ("SELECT my_udf(kwh) FROM meters_public", "my_udf()"),
    ("SELECT default.my_udf(kwh) FROM meters_public", "qualified name"),
    ("SELECT current_user()", "current_user()"),
    ("SELECT aes_decrypt(unhex('00'), 'key')", "aes_decrypt()"),
    ("SELECT transform(array(1), x -> x + 1)", "transform()"),
    # script transforms, with and without FROM
    (f"SELECT TRANSFORM(1) USING 'touch {MARKER}' AS (line STRING)", "TRANSFORM"),
    (
        f"SELECT TRANSFORM(district) USING 'touch {MARKER}' AS (line STRING) FROM meters_public",
        "TRANSFORM",
    ),
    (f"select transform(kwh) using 'touch {MARKER}' from meters_public", "TRANSFORM"),
    (f"SELECT TrAnSfOrM(*) USING 'touch {MARKER}' FROM meters_public", "TRANSFORM"),
    # file-reading sources and functions
    ("SELECT * FROM parquet.`/tmp`", "reading files"),
    ("SELECT * FROM csv.`/etc/passwd`", "reading files"),
    ("SELECT * FROM `csv`.`/etc/passwd`", "reading files"),
    ("SELECT * FROM CSV.`file:///etc/passwd`", "reading files"),
    ("SELECT * FROM json.`/etc/hostname`", "reading files"),
    ("SELECT * FROM text.`/etc/hostname`", "reading files"),
    ("SELECT * FROM `unit_sqlguard.meters_public`", "reading files or paths"),
    ("SELECT * FROM read_files('/etc/passwd')", "table-valued functions such as read_files"),
    ("SELECT * FROM `READ_FILES`('/etc/passwd')", "table-valued functions such as read_files"),
    ("SELECT read_files('/etc')", "read_files()"),
    # table-valued functions and generators
    ("SELECT * FROM range(10)", "table-valued functions such as range"),
    ("SELECT * FROM explode(array(1, 2))", "table-valued functions"),
    ("SELECT * FROM meters_public LATERAL VIEW explode(array(1, 2)) t AS x", "LATERAL VIEW"),
    (
        "SELECT * FROM meters_public LATERAL VIEW OUTER posexplode(array(1)) t AS p, x",
        "LATERAL VIEW",
    ),
    ("SELECT explode(array(1, 2))", "explode()"),
    ("SELECT stack(2, 'a', 'b')", "stack()"),
    ("SELECT inline(array(struct(1, 2)))", "inline()"),
    ("SELECT * FROM meters_public c, LATERAL (SELECT 1 AS one)", "LATERAL"),
    # TABLESAMPLE, VALUES
    ("SELECT * FROM meters_public TABLESAMPLE (50 PERCENT)", "TABLESAMPLE"),
    ("SELECT * FROM meters_public TABLESAMPLE (BUCKET 1 OUT OF 2)", "TABLESAMPLE"),
    ("SELECT * FROM VALUES (1, 2) AS v(a, b)", "VALUES"),
    ("VALUES (1), (2)", "VALUES"),
    # a CTE that shadows a granted view
    ("WITH meters_public AS (SELECT 1 AS kwh) SELECT kwh FROM meters_public", "granted view"),
    ("WITH `Meters_Public` AS (SELECT 1 AS kwh) SELECT kwh FROM meters_public", "granted view"),
    ("WITH a AS (SELECT 1 AS x), districts_public AS (SELECT 2) SELECT * FROM a", "granted view"),
    # comments and hints
    ("SELECT kwh FROM meters_public -- ; DROP TABLE meters", "comments"),
    ("SELECT kwh /* harmless */ FROM meters_public", "comments"),
    ("SELECT kwh FROM meters_public /* /* nested */ */", "comments"),
    ("SELECT kwh FROM meters_public --\nWHERE 1 = 1", "comments"),
    ("SELECT /*+ REPARTITION(100) */ kwh FROM meters_public", "hints"),
    ("SELECT /*+ BROADCAST(meters_public) */ * FROM meters_public", "hints"),
    ("SELECT /*+ COALESCE(1) */ kwh FROM meters_public", "hints"),
    ("SELECT * FROM meters_public m JOIN districts_public /*+ MERGE */ d USING (district)", "hint"),
    # Unicode look-alikes
    ("ＳＥＬＥＣＴ kwh FROM meters_public", "looks like 'S'"),
    ("SELECT ｒｅｆｌｅｃｔ('java.lang.System', 'getenv', 'HOME')", "looks like 'r'"),
    (f"SELECT kwh FROM m{CYRILLIC_E}ters_public", "U+0435"),
    (f"SELECT `java_m{CYRILLIC_E}thod`('java.lang.System', 'getenv', 'HOME')", "U+0435"),
    (f"SELECT refl{CYRILLIC_E}ct('java.lang.System', 'getenv', 'HOME')", "U+0435"),
    ("SELECT kwh\u00a0FROM meters_public", "U+00A0"),
    ("SELECT kwh FROM meters_public\u2028; DROP TABLE meters", "U+2028"),
    # SET, ADD JAR, CACHE
    ("SET spark.sql.shuffle.partitions=3", "not SET"),
    ("set spark.sql.ansi.enabled = false", "not SET"),
    ("ADD JAR /tmp/market-guard-evil.jar", "ADD JAR"),
    ("add jar ivy://org.example:evil:1.0", "ADD JAR"),
    ("ADD FILE /etc/passwd", "ADD FILE"),
    ("CACHE TABLE meters_public", "not CACHE"),
    ("CACHE LAZY TABLE evil AS SELECT * FROM meters", "not CACHE"),
    ("UNCACHE TABLE meters_public", "not UNCACHE"),
    # more than one statement, writes
    ("SELECT 1; DROP TABLE meters", "got 2 statements"),
    ("SELECT * FROM meters_public; CREATE TABLE evil AS SELECT 1", "got 2 statements"),
    ("CREATE TABLE evil AS SELECT * FROM meters_public", "not CREATE"),
    ("INSERT INTO meters SELECT * FROM meters_public", "not INSERT"),
    ("DROP VIEW meters_public", "not DROP"),
    # other constructs outside the list
    ("SELECT ${hiveconf:x}", "parameters"),
    ("SELECT kwh FROM meters_public DISTRIBUTE BY kwh", "DISTRIBUTE BY"),
    ("SELECT CAST(kwh AS ARRAY<INT>) FROM meters_public", "casting to"),
    ("SELECT * FROM meters_public PIVOT (sum(kwh) FOR district IN ('North'))", "PIVOT"),
    ("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
     "WITH RECURSIVE"),  # fmt: skip
    ("SELECT * FROM IDENTIFIER('meters')", "table-valued functions"),
    # memory bombs against the unit's server
    ("SELECT lpad(meter_id, 2000000000, 'x') FROM meters_public", "lpad/rpad"),
    ("SELECT rpad(meter_id, length(district) * 100000000, 'x') FROM meters_public", "lpad/rpad"),
    ("SELECT repeat('x', 2000000000)", "repeat()"),
    ("SELECT format_number(kwh, 1000000000) FROM meters_public", "format_number()"),
]


def test_at_least_forty_bypass_attempts():
    assert len(BYPASSES) >= 40
    assert len({sql for sql, _ in BYPASSES}) == len(BYPASSES)


@pytest.mark.parametrize(("sql", "fragment"), BYPASSES)
def test_bypass_is_refused_naming_the_construct(sql, fragment):
    with pytest.raises(InvalidField) as info:
        check_sql(sql, DB, GRANTS)
    assert info.value.field == "sql"
    assert fragment in info.value.message, info.value.message


def _server_state(platform) -> dict:  # noqa: F811
    session = platform.session_for(UNIT)
    return {
        "tables": sorted(
            r.tableName for r in session.sql(f"SHOW TABLES IN `{DB}`").collect()
        ),
        "meters": session.sql(f"SELECT count(*) FROM `{DB}`.`meters`").collect()[0][0],
        "view": session.sql(f"SELECT count(*) FROM `{DB}`.`meters_public`").collect()[0][0],
        "cached": session.catalog.isCached(f"{DB}.meters_public"),
        "jars": sorted(str(r[0]) for r in session.sql("LIST JARS").collect()),
        "partitions": session.conf.get("spark.sql.shuffle.partitions"),
        "property": session.sql(
            f"SELECT java_method('java.lang.System', 'getProperty', '{PROPERTY}')"
        ).collect()[0][0],
    }


def test_bypasses_through_the_platform_leave_no_trace(views):
    before = _server_state(views)
    assert before["property"] in (None, "null") and before["meters"] == 5 and not before["cached"]
    for sql, _ in BYPASSES:
        with pytest.raises(InvalidField) as info:
            views.query(UNIT, sql, GRANTS, 10)
        assert info.value.field == "sql", sql
    assert _server_state(views) == before
    assert not os.path.exists(MARKER)


def test_the_witness_sees_what_the_guard_stops(views):
    # Without the guard the same call does set the property: the check above could fail.
    session = views.session_for(UNIT)
    witness = f"{PROPERTY}.control"
    session.sql(
        f"SELECT java_method('java.lang.System', 'setProperty', '{witness}', 'x')"
    ).collect()
    got = session.sql(
        f"SELECT java_method('java.lang.System', 'getProperty', '{witness}')"
    ).collect()[0][0]
    assert got == "x"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM meters",  # the base table
        "SELECT * FROM unit_other.meters_public",
        "SELECT m.kwh FROM meters_public m JOIN districts d USING (district)",
        "SELECT kwh FROM meters_public WHERE district IN (SELECT district FROM districts)",
        "WITH d AS (SELECT * FROM meters) SELECT * FROM d",
        "SELECT * FROM other_catalog.unit_sqlguard.meters_public",
    ],
)
def test_tables_outside_the_grant_are_forbidden(sql):
    with pytest.raises(Forbidden) as info:
        check_sql(sql, DB, GRANTS)
    assert info.value.field == "sql"


def test_what_runs_is_regenerated_and_qualified():
    statement, read = check_sql("select KWH from METERS_PUBLIC m where m.kwh > 1", DB, GRANTS)
    assert statement == (
        "SELECT `KWH` FROM `unit_sqlguard`.`METERS_PUBLIC` AS `m` WHERE `m`.`kwh` > 1"
    )
    assert read == [f"{DB}.meters_public"]


# -- allowed ------------------------------------------------------------------------------------


def test_aggregates(views):
    assert rows(
        views,
        "SELECT district, count(*) AS n, count(kwh), sum(kwh), avg(kwh), min(kwh), max(kwh), "
        "count(DISTINCT day) FROM meters_public GROUP BY district HAVING count(*) > 1 "
        "ORDER BY district",
    ) == [["North", 2, 2, 4.0, 2.0, 1.5, 2.5, 2], ["South", 2, 2, 10.0, 5.0, 4.0, 6.0, 2]]
    [[sd, median, q]] = rows(
        views, "SELECT stddev_pop(kwh), median(kwh), percentile(kwh, 0.5) FROM meters_public"
    )
    assert (round(sd, 6), median, q) == (1.695582, 3.25, 3.25)


def test_arithmetic(views):
    assert rows(
        views,
        "SELECT kwh * 2 + 1, kwh / 2, kwh - 1, -kwh, 7 % 3, 7 div 2, round(kwh / 3, 2), "
        "abs(-kwh), ceil(kwh), floor(kwh), power(2, 3), sqrt(16.0), greatest(kwh, 3), "
        "least(kwh, 3) FROM meters_public WHERE meter_id = 'm1'",
    ) == [[4.0, 0.75, 0.5, -1.5, 1, 3, 0.5, 1.5, 2, 1, 8.0, 4.0, 3.0, 1.5]]


def test_comparison_and_logic(views):
    assert rows(
        views,
        "SELECT meter_id FROM meters_public WHERE (kwh > 2 AND kwh <= 6 AND kwh <> 4) "
        "OR kwh IS NULL OR (district LIKE 'No%' AND NOT kwh BETWEEN 2 AND 3) ORDER BY meter_id",
    ) == [["m1"], ["m2"], ["m4"], ["m5"]]
    assert rows(
        views,
        "SELECT meter_id FROM meters_public WHERE district IN ('South', 'East') "
        "AND kwh IS NOT NULL AND (kwh <=> 6.0) ORDER BY meter_id",
    ) == [["m4"]]
    # a string literal may hold any character; only names and keywords must be ASCII
    assert rows(views, "SELECT meter_id FROM meters_public WHERE district = 'Nörd'") == [["m5"]]


def test_strings(views):
    assert rows(
        views,
        "SELECT upper(district), lower(district), length(district), substr(district, 2, 3), "
        "concat(meter_id, '-', district), concat_ws('/', meter_id, district), "
        "meter_id || '!', trim('  x '), replace(district, 'th', 'TH'), lpad(meter_id, 4, '0'), "
        "instr(district, 'r'), regexp_replace(district, '[aeiou]', '_'), left(district, 2) "
        "FROM meters_public WHERE meter_id = 'm1'",
    ) == [
        [
            "NORTH", "north", 5, "ort", "m1-North", "m1/North", "m1!", "x", "NorTH", "00m1",
            3, "N_rth", "No",
        ]
    ]  # fmt: skip


def test_dates_and_times(views):
    assert rows(
        views,
        "SELECT year(day), month(day), dayofmonth(day), date_trunc('MONTH', day), "
        "trunc(day, 'YEAR'), datediff(day, DATE '2024-01-01'), date_add(day, 20), "
        "add_months(day, 1), date_format(day, 'yyyy/MM'), last_day(day), "
        "day + INTERVAL 1 DAY, to_date('2024-02-03') FROM meters_public WHERE meter_id = 'm1'",
    ) == [
        [
            2024, 1, 15, "2024-01-01T00:00:00", "2024-01-01", 14, "2024-02-04", "2024-02-15",
            "2024/01", "2024-01-31", "2024-01-16", "2024-02-03",
        ]
    ]  # fmt: skip


def test_conditionals(views):
    assert rows(
        views,
        "SELECT meter_id, CASE WHEN kwh > 3 THEN 'high' WHEN kwh > 2 THEN 'mid' ELSE 'low' END, "
        "if(kwh > 2, 1, 0), coalesce(kwh, 0), nullif(district, 'North'), nvl(kwh, -1), "
        "nvl2(kwh, 'y', 'n'), isnull(kwh) FROM meters_public ORDER BY meter_id",
    ) == [
        ["m1", "low", 0, 1.5, None, 1.5, "y", False],
        ["m2", "mid", 1, 2.5, None, 2.5, "y", False],
        ["m3", "high", 1, 4.0, "South", 4.0, "y", False],
        ["m4", "high", 1, 6.0, "South", 6.0, "y", False],
        ["m5", "low", 0, 0.0, "Nörd", -1.0, "n", True],
    ]


def test_casts(views):
    assert rows(
        views,
        "SELECT CAST(kwh AS INT), CAST('12' AS BIGINT), CAST(kwh AS STRING), "
        "CAST(kwh AS DECIMAL(10, 2)), CAST('2024-05-06' AS DATE), CAST(1 AS BOOLEAN), "
        "CAST(kwh AS DOUBLE) FROM meters_public WHERE meter_id = 'm2'",
    ) == [[2, 12, "2.5", 2.5, "2024-05-06", True, 2.5]]


def test_window_functions(views):
    assert rows(
        views,
        "SELECT meter_id, row_number() OVER (PARTITION BY district ORDER BY day), "
        "rank() OVER (ORDER BY kwh DESC NULLS LAST), lag(kwh) OVER (PARTITION BY district "
        "ORDER BY day), sum(kwh) OVER (ORDER BY day ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) "
        "FROM meters_public ORDER BY meter_id",
    ) == [
        ["m1", 1, 4, None, 1.5],
        ["m2", 2, 3, 1.5, 4.0],
        ["m3", 1, 2, None, 6.5],
        ["m4", 2, 1, 4.0, 10.0],
        ["m5", 1, 5, None, 6.0],
    ]


def test_query_structure(views):
    """CTEs (not shadowing a view), joins, subqueries, set operations, ORDER BY and LIMIT."""
    assert rows(
        views,
        "WITH per AS (SELECT district, sum(kwh) AS total FROM meters_public GROUP BY district) "
        "SELECT d.region, p.total FROM per p JOIN districts_public d ON p.district = d.district "
        "WHERE p.total > (SELECT min(kwh) FROM meters_public) "
        "AND EXISTS (SELECT 1 FROM districts_public) ORDER BY p.total DESC LIMIT 1",
    ) == [["Lower", 10.0]]
    assert rows(
        views,
        "SELECT district FROM meters_public WHERE district IN (SELECT district FROM "
        "districts_public) UNION SELECT region FROM districts_public ORDER BY 1",
    ) == [["Lower"], ["North"], ["South"], ["Upper"]]
    assert rows(
        views,
        "SELECT x.district FROM (SELECT DISTINCT district FROM meters_public) x "
        "LEFT JOIN districts_public d USING (district) WHERE d.region IS NULL",
    ) == [["Nörd"]]


def test_every_category_is_listed():
    listed = allowed_functions()
    for category in ("aggregate", "arithmetic", "string", "date/time", "conditional", "window"):
        assert listed[category], category
    assert "java_method" not in {f for names in listed.values() for f in names}


# -- the row filter of a policy uses the same allow-list ----------------------------------------


@pytest.mark.parametrize(
    "row_filter",
    [
        "`java_method`('java.lang.System', 'getenv', 'HOME') IS NULL",
        "input_file_name() <> ''",
        "district = 'x' -- comment",
        "dіstrict = 'x'",  # Cyrillic i
        "kwh > (SELECT 1)",
        "sum(kwh) > 1",
    ],
)
def test_row_filter_uses_the_allow_list(row_filter):
    policy = _keep_all("meters_public", "meters", list(METERS.columns))
    policy["row_filter"] = row_filter
    with pytest.raises(InvalidField) as info:
        validate_policy(policy, {c: "string" for c in METERS.columns})
    assert info.value.field == "row_filter"


def test_row_filter_with_allowed_functions(views):
    policy = _keep_all("meters_north", "meters", ["meter_id", "kwh"])
    policy["row_filter"] = "upper(district) = 'NORTH' AND coalesce(kwh, 0) > 2"
    views.create_view(UNIT, policy)
    got = views.query(UNIT, "SELECT meter_id FROM meters_north", {f"{DB}.meters_north"})
    assert got["rows"] == [["m2"]]


# -- pandas -------------------------------------------------------------------------------------


def test_pyspark_connect_imports_without_the_pandas_warning():
    """pyspark 4.3 warns on import with pandas >= 3; the pin keeps pandas 2.x."""
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pyspark.sql.connect.session"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    )
    assert "does not yet fully support pandas" not in out.stderr, out.stderr
    assert int(pd.__version__.split(".")[0]) < 3


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 3000 + "1" + ")" * 3000,
        "SELECT " + " + ".join(["kwh"] * 3000) + " FROM meters_public",
        "SELECT kwh FROM meters_public WHERE " + "NOT " * 3000 + "true",
    ],
)
def test_deep_nesting_is_refused_not_a_crash(sql):
    with pytest.raises(InvalidField) as info:
        check_sql(sql, DB, GRANTS)
    assert info.value.field == "sql" and "nested too deeply" in info.value.message
