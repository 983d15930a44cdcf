"""Desensitization policies: checking one against its source table, and compiling it into
the ``CREATE OR REPLACE VIEW`` a data product publishes.

A policy is the ``view``/``source``/``columns``/``row_filter`` mapping of a product manifest
(see :func:`validate_policy` for the rules). The compiled view text holds per-unit keys
(:mod:`.keys`); it is sent to Spark and never logged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlglot
from pyspark.errors import PySparkException
from sqlglot import exp

from ..errors import InvalidField
from .common import _check_object_name, _first_line, _is_connection_error, _is_stale_session
from .guard import check_predicate
from .loader import table_names

#: the rules a policy column may use
POLICY_RULES = ("keep", "drop", "hash", "generalize", "round", "noise")
_RULE_PARAMS: dict[str, set[str]] = {
    "keep": set(),
    "drop": set(),
    "hash": set(),
    "generalize": {"to"},
    "round": {"digits"},
    "noise": {"scale"},
}
_TEMPORAL_LEVELS = {"month": "MM", "year": "YEAR"}
_NUMERIC_TYPES = re.compile(
    r"^(tinyint|smallint|int|integer|bigint|long|float|real|double|decimal.*|byte|short)$"
)
_TEMPORAL_TYPES = re.compile(r"^(date|timestamp.*)$")


def _columns_map(source_columns: Mapping[str, str] | Iterable[str]) -> dict[str, str | None]:
    if isinstance(source_columns, Mapping):
        return {
            str(k): (str(v).lower() if v is not None else None) for k, v in source_columns.items()
        }
    return {str(c): None for c in source_columns}


def validate_policy(
    policy: Mapping[str, Any], source_columns: Mapping[str, str] | Iterable[str]
) -> dict[str, Any]:
    """Check a desensitization policy against the source table's columns.

    *source_columns* is either ``{name: spark_type}`` (``df.schema`` simple strings such as
    ``"bigint"``, ``"date"``) or just the names; with types, rules are also checked against
    the column type (``round``/``noise`` need numbers, ``generalize to month`` a date).

    Returns a normalized copy of the policy. Raises :class:`InvalidField` whose ``field`` is
    the path of the first problem: ``view``, ``source``, ``columns``, ``columns.<col>``,
    ``columns.<col>.rule``, ``columns.<col>.<param>`` or ``row_filter``.

    Rules (columns not listed are **dropped**: a column added to the table later never
    appears in a published view by accident):

    - ``keep``: exposed as is.
    - ``drop``: not exposed (same as not listing it).
    - ``hash``: HMAC-SHA256 (hex) of the value's string form under a per-unit key: the same
      value gives the same pseudonym within a unit (joins still work), different units give
      different pseudonyms, NULL stays NULL.
    - ``generalize`` with ``to: month|year``: a date/timestamp truncated to the first day of
      its month/year (a DATE). With ``to: <column>``: the value of another column that the
      policy keeps (e.g. address -> district). ``month``/``year`` win over a column of that
      name.
    - ``round`` with ``digits`` (int, -9..9): ``round(col, digits)``.
    - ``noise`` with ``scale`` (> 0): adds Laplace(0, scale) noise, deterministic per row (see
      :meth:`DataPlatform.create_view`).

    ``row_filter`` (optional): one predicate over source columns (comparisons, AND/OR/NOT,
    IN lists, BETWEEN, LIKE, IS NULL, the scalar functions of the SQL guard's allow-list);
    no subqueries, aggregates or window functions (see :func:`.guard.check_predicate`).
    """
    if not isinstance(policy, Mapping):
        raise InvalidField("a desensitization policy must be a mapping", field="policy")
    cols = _columns_map(source_columns)
    known = {"view", "source", "columns", "row_filter"}
    for key in policy:
        if key not in known:
            raise InvalidField(
                f"unknown policy key {key!r}; expected {sorted(known)}", field=str(key)
            )
    view = _check_object_name(policy.get("view"), "view", "view")
    source = _check_object_name(policy.get("source"), "source", "source table")
    if view == source:
        raise InvalidField(
            f"the view may not have the name of its source table {source!r}", field="view"
        )

    columns = policy.get("columns")
    if not isinstance(columns, Mapping) or not columns:
        raise InvalidField(
            "columns must be a mapping of column name to {rule: ...}", field="columns"
        )
    normalized: dict[str, dict[str, Any]] = {}
    for name, spec in columns.items():
        path = f"columns.{name}"
        if name not in cols:
            raise InvalidField(
                f"{source} has no column {name!r} (columns: {', '.join(sorted(cols))})",
                field=path,
            )
        if isinstance(spec, str):  # shorthand: `name: drop`
            spec = {"rule": spec}
        if not isinstance(spec, Mapping):
            raise InvalidField(f"{path} must be a mapping such as {{rule: keep}}", field=path)
        rule = spec.get("rule")
        if rule not in _RULE_PARAMS:
            raise InvalidField(
                f"unknown rule {rule!r} for column {name!r}; expected one of "
                f"{', '.join(POLICY_RULES)}",
                field=f"{path}.rule",
            )
        for key in spec:
            if key != "rule" and key not in _RULE_PARAMS[rule]:
                allowed = ", ".join(sorted(_RULE_PARAMS[rule])) or "no parameters"
                raise InvalidField(
                    f"rule {rule!r} takes {allowed}, not {key!r}", field=f"{path}.{key}"
                )
        ctype = cols[name]
        out: dict[str, Any] = {"rule": rule}
        if rule == "round":
            digits = spec.get("digits", 0)
            if isinstance(digits, bool) or not isinstance(digits, int) or not -9 <= digits <= 9:
                raise InvalidField(
                    f"digits must be an integer between -9 and 9, not {digits!r}",
                    field=f"{path}.digits",
                )
            out["digits"] = digits
        if rule == "noise":
            scale = spec.get("scale")
            if (
                isinstance(scale, bool)
                or not isinstance(scale, int | float)
                or not math.isfinite(scale)
                or scale <= 0
            ):
                raise InvalidField(
                    f"scale must be a positive number, not {scale!r}", field=f"{path}.scale"
                )
            out["scale"] = float(scale)
        if rule in ("round", "noise") and ctype is not None and not _NUMERIC_TYPES.match(ctype):
            raise InvalidField(
                f"rule {rule!r} needs a numeric column; {name!r} is {ctype}", field=f"{path}.rule"
            )
        if rule == "generalize":
            to = spec.get("to")
            if not isinstance(to, str) or not to:
                raise InvalidField(
                    "generalize needs `to`: month, year or the name of a kept column",
                    field=f"{path}.to",
                )
            if to in _TEMPORAL_LEVELS:
                if ctype is not None and not _TEMPORAL_TYPES.match(ctype):
                    raise InvalidField(
                        f"generalizing to {to} needs a date or timestamp column; {name!r} is "
                        f"{ctype}",
                        field=f"{path}.to",
                    )
            elif to not in cols:
                raise InvalidField(
                    f"generalize target {to!r} is neither month, year nor a column of {source}",
                    field=f"{path}.to",
                )
            out["to"] = to
        normalized[name] = out

    # A column may only stand in for another if the policy exposes it verbatim anyway;
    # otherwise `address: {generalize, to: name}` would publish a dropped column.
    for name, spec in normalized.items():
        to = spec.get("to")
        if spec["rule"] == "generalize" and to not in _TEMPORAL_LEVELS:
            if to == name or normalized.get(to, {}).get("rule") != "keep":
                raise InvalidField(
                    f"generalize target {to!r} must be another column the policy keeps "
                    f"({to}: {{rule: keep}})",
                    field=f"columns.{name}.to",
                )
    if not any(spec["rule"] != "drop" for spec in normalized.values()):
        raise InvalidField("the policy exposes no column", field="columns")

    result: dict[str, Any] = {"view": view, "source": source, "columns": normalized}
    row_filter = policy.get("row_filter")
    if row_filter is not None and row_filter != "":
        result["row_filter"] = _parse_row_filter(row_filter, source, cols)
    return result


def _parse_row_filter(text: Any, source: str, cols: Mapping[str, Any]) -> exp.Expression:
    tree = check_predicate(text, "row_filter")
    root = tree.unnest() if isinstance(tree, exp.Paren) else tree
    if not isinstance(root, exp.Predicate | exp.Connector | exp.Not | exp.Boolean):
        raise InvalidField(
            "row_filter must be a predicate (a comparison, IN, BETWEEN, LIKE, IS NULL, or "
            "such terms joined by AND/OR/NOT)",
            field="row_filter",
        )
    for column in tree.find_all(exp.Column):
        if column.table and column.table != source:
            raise InvalidField(
                f"row_filter may only refer to columns of {source}, not {column.sql()!r}",
                field="row_filter",
            )
        if column.name not in cols:
            raise InvalidField(
                f"row_filter refers to unknown column {column.name!r}", field="row_filter"
            )
        # Re-qualify against the view's source alias.
        column.set("table", exp.to_identifier("src", quoted=True))
        column.set("db", None)
        column.set("catalog", None)
    return tree


# -- compiling a policy into a view -------------------------------------------------------------


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _hmac_sql(key: bytes, value: exp.Expression) -> exp.Expression:
    """HMAC-SHA256(key, utf8(value)) as hex, built from Spark's sha2/concat/unhex.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) with K padded to the 64-byte block.
    """
    key = key.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in key).hex()
    opad = bytes(b ^ 0x5C for b in key).hex()
    lit = exp.Literal.string
    inner = _fn(
        "sha2",
        _fn("concat", _fn("unhex", lit(ipad)), _fn("encode", value, lit("UTF-8"))),
        exp.Literal.number(256),
    )
    return _fn(
        "sha2",
        _fn("concat", _fn("unhex", lit(opad)), _fn("unhex", inner)),
        exp.Literal.number(256),
    )


def _noise_sql(key: bytes, column: str, scale: float, row_columns: list[str]) -> exp.Expression:
    """Laplace(0, scale) noise from a keyed hash of (column name, whole source row)."""
    row = _fn(
        "to_json", _fn("struct", *[exp.column(c, table="src", quoted=True) for c in row_columns])
    )
    digest = _fn(
        "sha2",
        _fn("concat", exp.Literal.string(f"{key.hex()}:{column}:"), row),
        exp.Literal.number(256),
    )
    # 52 bits of the digest -> u uniform in (0, 1); inverse CDF of Laplace(0, scale).
    bits = sqlglot.parse_one(
        "CAST(conv(substr(d, 1, 13), 16, 10) AS DOUBLE)", read="spark"
    ).transform(lambda n: digest.copy() if isinstance(n, exp.Column) and n.name == "d" else n)
    u_minus_half = sqlglot.parse_one(f"(b + 0.5) / {float(2**52)!r} - 0.5", read="spark").transform(
        lambda n: bits.copy() if isinstance(n, exp.Column) and n.name == "b" else n
    )
    return sqlglot.parse_one(
        f"-{scale!r} * signum(x) * ln(1 - 2 * abs(x))", read="spark"
    ).transform(lambda n: u_minus_half.copy() if isinstance(n, exp.Column) and n.name == "x" else n)


def view_sql(
    database: str,
    policy: Mapping[str, Any],
    source_columns: Mapping[str, str],
    *,
    hash_key: bytes,
    noise_key: bytes,
) -> str:
    """The ``CREATE OR REPLACE VIEW`` statement for *policy* in *database* (contains keys).

    *source_columns* maps the source table's columns to their Spark types; *hash_key* and
    *noise_key* are the unit's keys for the ``hash`` and ``noise`` rules.
    """
    checked = validate_policy(policy, source_columns)
    row_columns = list(source_columns)
    projections: list[exp.Expression] = []
    for name, spec in checked["columns"].items():
        rule = spec["rule"]
        col = exp.column(name, table="src", quoted=True)
        if rule == "drop":
            continue
        if rule == "keep":
            value: exp.Expression = col
        elif rule == "hash":
            value = _hmac_sql(hash_key, exp.cast(col, "string"))
        elif rule == "round":
            value = _fn("round", col, exp.Literal.number(spec["digits"]))
        elif rule == "noise":
            value = exp.Add(
                this=exp.cast(col, "double"),
                expression=exp.paren(_noise_sql(noise_key, name, spec["scale"], row_columns)),
            )
        elif spec["to"] in _TEMPORAL_LEVELS:
            value = _fn("trunc", col, exp.Literal.string(_TEMPORAL_LEVELS[spec["to"]]))
        else:
            value = exp.column(spec["to"], table="src", quoted=True)
        projections.append(exp.alias_(value, exp.to_identifier(name, quoted=True)))
    source = exp.Table(
        this=exp.to_identifier(checked["source"], quoted=True),
        db=exp.to_identifier(database, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier("src", quoted=True)),
    )
    select = exp.select(*projections).from_(source)
    if "row_filter" in checked:
        select = select.where(checked["row_filter"])
    body = select.sql(dialect="spark", identify=True, comments=False)
    return f"CREATE OR REPLACE VIEW `{database}`.`{checked['view']}` AS {body}"


def create_view(
    session: Any,
    database: str,
    policy: Mapping[str, Any],
    compile_view: Callable[[Mapping[str, str]], str],
) -> str:
    """Create (or replace) *policy*'s view in *database* on *session*; return its qualified
    name. *compile_view* turns the source table's ``{column: type}`` into the statement
    (:func:`view_sql` with the unit's keys)."""
    if not isinstance(policy, Mapping):
        raise InvalidField("a desensitization policy must be a mapping", field="policy")
    source = _check_object_name(policy.get("source"), "source", "source table")
    view = _check_object_name(policy.get("view"), "view", "view")
    try:
        schema = session.table(f"`{database}`.`{source}`").schema
    except PySparkException as e:
        if _is_connection_error(e) or _is_stale_session(e):
            raise
        raise InvalidField(
            f"source table {database}.{source} does not exist", field="source"
        ) from None
    columns = {f.name: f.dataType.simpleString() for f in schema.fields}
    statement = compile_view(columns)
    if view in table_names(session, database):
        if session.catalog.getTable(f"{database}.{view}").tableType != "VIEW":
            raise InvalidField(
                f"{database}.{view} is a table, not a view; choose another view name",
                field="view",
            )
    try:
        session.sql(statement)
    except PySparkException as e:
        if _is_connection_error(e) or _is_stale_session(e):
            raise
        raise InvalidField(
            f"creating view {database}.{view} failed: {_first_line(str(e))}", field="columns"
        ) from None
    return f"{database}.{view}"
