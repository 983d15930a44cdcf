"""Placing an order: a unit buys a plan of a product with points.

One purchase, in the caller's write transaction:

1. the buying unit's earlier order with the same idempotency key, if any, is the answer (a
   retry); the same key for a different request is a 409;
2. the product must be on the shelf and offer the plan; a unit neither buys its own product
   nor one it co-owns (unless the rules allow it); the buyer must hold the price;
3. the order, its transfer (buyer -> supplier or co-owners, and the operator's fee) and its
   entitlement are written;
4. only then are the balances moved, with guarded updates in the lock order
   (:class:`points.BalanceMoves`), and the log's index taken
   (:func:`certlog.append_statements`): the rows every purchase contends for (the supplier's
   and the operator's accounts, the log's state row) are held from these last statements,
   which travel to PostgreSQL in one round trip (:meth:`DriverSql.batch`), to the commit.

The statements go to the database driver (:mod:`marketplace_ext.driver_sql`): this is the
service's hot write path, and the ORM's objects and flushes cost thirty times the database's
work here. The rules are those of :mod:`marketplace_ext.points`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime

from sqlalchemy.orm import Session

from . import certlog
from .auth import SCOPE_SUBSCRIBE, Caller
from .driver_sql import DriverSql
from .errors import Conflict, Forbidden, InvalidField, NotFound
from .orm import Order, utcnow
from .points import (
    CENTS,
    PLAN_PERIODS,
    PLAN_TYPES,
    BalanceMoves,
    EconomyRules,
    InsufficientPoints,
    format_points,
    operator_account,
    record_transfer_by_sql,
    split_amount,
)

IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def validate_order_request(body: dict) -> tuple[str, str, str]:
    """An order request's product, plan and idempotency key; 400 naming the bad field."""
    product, plan, key = body.get("product"), body.get("plan"), body.get("idempotency_key")
    if not isinstance(product, str) or not product:
        raise InvalidField("product is required: the product's name", "product")
    if plan not in PLAN_TYPES:
        raise InvalidField(f"plan must be one of {', '.join(PLAN_TYPES)}", "plan")
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.match(key):
        raise InvalidField(
            "idempotency_key must be 8-128 characters of letters, digits and ._:- "
            "(a fresh one per purchase; repeat it to retry safely)", "idempotency_key")
    return product, plan, key


def _request_digest(product: str, plan: str) -> str:
    body = json.dumps({"product": product, "plan": plan}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(sql: DriverSql, unit_id: int, key: str, digest: str) -> int | None:
    """The id of the unit's order with this key, if any; 409 if it was another request."""
    existing = sql.one("SELECT id, request_sha256 FROM orders "
                       "WHERE unit_id = ? AND idempotency_key = ?", unit_id, key)
    if existing is None:
        return None
    if existing[1] != digest:
        raise Conflict("idempotency_key was already used for a different order",
                       "idempotency_key")
    return existing[0]


def buy(session: Session, caller: Caller, rules: EconomyRules, product_name: str, plan: str,
        key: str, now: datetime | None = None) -> tuple[int, bool]:
    """Buy ``plan`` of ``product_name`` for the caller's unit (see the module docstring);
    returns (order id, created). ``now`` backdates the order (the demo's history); default:
    now. The caller's session must have been started with :func:`orm.write_transaction`, and
    rolls back on an error (this writes before its last checks)."""
    caller.require(SCOPE_SUBSCRIBE, "ordering a product")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    sql = DriverSql(session)
    buyer_id = sql.scalar("SELECT id FROM units WHERE slug = ?", caller.unit)
    if buyer_id is None:
        raise NotFound(f"unit {caller.unit!r} does not exist", "unit")
    digest = _request_digest(product_name, plan)
    replay = _replay(sql, buyer_id, key, digest)
    if replay is not None:
        return replay, False

    # the product with its current version and its owner's slug
    found = sql.one(
        "SELECT p.id, p.unit_id, u.slug, v.id, v.state, v.manifest, v.version, v.sha256 "
        "FROM products p JOIN versions v ON v.id = p.current_version_id "
        "JOIN units u ON u.id = p.unit_id WHERE p.name = ?", product_name)
    if found is None or found[4] != "on_shelf":
        raise NotFound(f"no product {product_name!r} on the shelf", "product")
    product_id, owner_id, owner, version_id, _, manifest, version, sha256 = found
    prices = {p["type"]: p["price"] for p in json.loads(manifest).get("plans", [])}
    if plan not in prices:
        raise InvalidField(
            f"{product_name!r} offers {', '.join(sorted(prices))}, not {plan}", "plan")
    if owner_id == buyer_id and not rules.allow_self_purchase:
        raise Forbidden("a unit does not buy its own product (it may use it freely)", "product")
    # a co-owned product (a federated project's model) pays its co-owners, not its owner
    shares = sql.all("SELECT s.unit_id, u.slug, s.basis_points FROM product_shares s "
                     "JOIN units u ON u.id = s.unit_id WHERE s.product_id = ? ORDER BY s.id",
                     product_id)
    if not rules.allow_self_purchase and any(unit_id == buyer_id for unit_id, _, _ in shares):
        raise Forbidden(f"unit {caller.unit!r} co-owns {product_name!r} (a federated "
                        "project's model): it uses it freely and does not pay itself for it",
                        "product")
    price = int(prices[plan]) * CENTS
    if price <= 0:  # the catalogue enforces the bounds; never move points the wrong way
        raise InvalidField(f"{product_name!r} has an invalid price", "plan")

    units = {buyer_id: caller.unit, owner_id: owner, **{u: slug for u, slug, _ in shares}}
    accounts = _accounts(session, sql, units)
    buyer_account, buyer_balance = accounts[buyer_id]
    if buyer_balance < price:  # for the clear error; the guarded update decides
        raise InsufficientPoints(
            f"unit {caller.unit!r} has {format_points(buyer_balance)} points; "
            f"{plan} of {product_name!r} costs {format_points(price)}", "plan")
    fee = rules.fee(price)
    # everything that needs no lock first, so concurrent purchases (and several service
    # processes) overlap; the balances and the log's index are taken last
    now = now or utcnow()
    order_id = sql.scalar(
        "INSERT INTO orders (unit_id, product_id, version_id, plan, price, fee, "
        "idempotency_key, request_sha256, status, buyer, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'paid', ?, ?) "
        "ON CONFLICT (unit_id, idempotency_key) DO NOTHING RETURNING id",
        buyer_id, product_id, version_id, plan, price, fee, key, digest, caller.name,
        sql.timestamp(now))
    if order_id is None:  # the same key committed meanwhile (the database waited for it)
        replay = _replay(sql, buyer_id, key, digest)
        if replay is not None:
            return replay, False
        raise Conflict("a concurrent order with this idempotency_key is in progress",
                       "idempotency_key")
    split = split_amount(price - fee, {slug: bp for _, slug, bp in shares}) if shares \
        else {owner: price - fee}
    account_of = {slug: accounts[unit_id][0] for unit_id, slug in units.items()}
    payees = [(account_of[slug], amount) for slug, amount in split.items()]
    legs = [(buyer_account, -price), *payees, (accounts[None][0], fee)]
    transfer_id = record_transfer_by_sql(sql, "order", caller.name, legs, order_id=order_id,
                                         memo=f"{plan} of {product_name}", at=now)
    period = PLAN_PERIODS.get(plan)
    sql.execute("INSERT INTO entitlements (order_id, unit_id, product_id, plan, valid_from, "
                "valid_until, uses_left, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'active')",
                order_id, buyer_id, product_id, plan, sql.timestamp(now),
                sql.timestamp(now + period if period else None), None if period else 1)
    # the contended part, last and in one round trip on PostgreSQL: the balances in the lock
    # order, the log's index and entry, the order's log index
    moves = BalanceMoves(legs, operator_id=accounts[None][0])
    co_owners = [slug for _, slug, _ in shares]
    logged = certlog.append_statements(
        session, sql, "order", caller.name, caller.unit, f"order:{order_id}",
        # who may read the entry: as certlog.party_units_of finds it from these details
        parties=list(dict.fromkeys([caller.unit, owner, *co_owners])),
        order=order_id, product=product_name, version=version, bundle_sha256=sha256,
        plan=plan, price=format_points(price), fee=format_points(fee), supplier=owner,
        transfer=transfer_id,
        **({"co_owners": {u: format_points(a) for u, a in split.items()}} if shares else {}),
        idempotency_key_sha256=hashlib.sha256(key.encode()).hexdigest(),
    )
    logged.append((f"UPDATE orders SET log_index = {certlog.TAKEN_INDEX} WHERE id = ?",
                   (order_id,)))
    rows = sql.batch([*moves.statements(), *logged])
    try:
        moves.check(session, rows[:len(moves)])
    except InsufficientPoints as e:  # spent by a concurrent purchase since the check above
        raise InsufficientPoints(
            f"unit {caller.unit!r} no longer has the {format_points(price)} points "
            f"{plan} of {product_name!r} costs", "plan") from e
    return order_id, True


def _accounts(session: Session, sql: DriverSql,
              units: dict[int, str]) -> dict[int | None, tuple[int, int]]:
    """(account id, balance) of each unit in ``units`` (id -> slug) and, under None, of the
    operator's fee account; 404 naming ``unit`` for a unit without an account."""
    marks = ", ".join("?" * len(units))
    query = ("SELECT unit_id, id, balance FROM accounts "
             f"WHERE unit_id IN ({marks}) OR kind = 'operator'")
    found = {unit_id: (account_id, balance)
             for unit_id, account_id, balance in sql.all(query, *units)}
    if None not in found:  # no operator account yet (a new ledger): opened the ORM's way
        operator_account(session)
        found = {unit_id: (account_id, balance)
                 for unit_id, account_id, balance in sql.all(query, *units)}
    for unit_id, slug in units.items():
        if unit_id not in found:
            raise NotFound(f"unit {slug!r} has no points account", "unit")
    return found


def place_order(session: Session, caller: Caller, rules: EconomyRules, product_name: str,
                plan: str, key: str, now: datetime | None = None) -> tuple[Order, bool]:
    """:func:`buy`, answered with the order object (pages, the demo, tests)."""
    order_id, created = buy(session, caller, rules, product_name, plan, key, now)
    return session.get(Order, order_id), created
