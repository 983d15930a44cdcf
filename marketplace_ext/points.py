"""The points economy: a double-entry ledger, orders, entitlements.

Rules (section 2.4 of the source paper):

- every unit's account starts with 500 points, issued from the *mint*, the only account that
  may go below zero; the sum of all balances is therefore always zero;
- amounts are integer centipoints; an order of price p debits the buyer p and credits the
  operator fee = floor(6 % of p) and the supplier p - fee, in one transaction;
- transfers are immutable; a correction (a refund) is a new transfer reversing an old one.

A purchase locks the accounts it touches (``SELECT ... FOR UPDATE`` in id order on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite) before it checks the balance, so concurrent buyers cannot
overdraw a unit, and it either commits whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import certlog
from .auth import SCOPE_SUBSCRIBE, Caller
from .errors import Conflict, Forbidden, InvalidField, MarketError, NotFound
from .ids import parse_id
from .orm import (
    Account,
    Entitlement,
    LedgerTransfer,
    Order,
    Posting,
    Product,
    Unit,
    utcnow,
)

log = logging.getLogger(__name__)

CENTS = 100
PLAN_PERIODS = {"week": timedelta(days=7), "month": timedelta(days=30),
                "year": timedelta(days=365)}
PLAN_TYPES = ("per_use", *PLAN_PERIODS)
IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class InsufficientPoints(MarketError):
    status = 409
    code = "insufficient_points"


class NoEntitlement(MarketError):
    status = 403
    code = "no_entitlement"


@dataclass(frozen=True)
class EconomyRules:
    """The operator's settings (``MarketplaceApp`` traits feed these)."""

    initial_grant: int = 500 * CENTS
    fee_basis_points: int = 600  # 6 %
    allow_self_purchase: bool = False

    def fee(self, price: int) -> int:
        return price * self.fee_basis_points // 10_000


def format_points(centipoints: int) -> str:
    sign = "-" if centipoints < 0 else ""
    whole, cents = divmod(abs(centipoints), CENTS)
    return f"{sign}{whole}.{cents:02d}"


# --- accounts ----------------------------------------------------------------------------------


def _system_account(session: Session, kind: str) -> Account:
    account = session.scalar(select(Account).where(Account.kind == kind))
    if account is None:
        account = Account(kind=kind, balance=0)
        session.add(account)
        session.flush()
    return account


def mint_account(session: Session) -> Account:
    return _system_account(session, "mint")


def operator_account(session: Session) -> Account:
    return _system_account(session, "operator")


def unit_account(session: Session, unit: Unit) -> Account:
    account = session.scalar(select(Account).where(Account.unit_id == unit.id))
    if account is None:
        raise NotFound(f"unit {unit.slug!r} has no points account", "unit")
    return account


def _post(session: Session, kind: str, actor: str, legs: list[tuple[Account, int]], *,
          order: Order | None = None, reverses: LedgerTransfer | None = None,
          memo: str = "", at: datetime | None = None) -> LedgerTransfer:
    if sum(amount for _, amount in legs) != 0:
        raise AssertionError("a transfer's legs must sum to zero")  # a bug, never user input
    transfer = LedgerTransfer(kind=kind, actor=actor, memo=memo,
                              order_id=order.id if order else None,
                              reverses_id=reverses.id if reverses else None,
                              created_at=at or utcnow())
    session.add(transfer)
    session.flush()
    for account, amount in legs:
        if amount == 0:
            continue
        session.add(Posting(transfer_id=transfer.id, account_id=account.id, amount=amount))
        account.balance += amount
        if account.balance < 0 and account.kind != "mint":
            raise InsufficientPoints(
                f"account of {_owner(account)} would go below zero "
                f"({format_points(account.balance)})", "balance")
    session.flush()
    return transfer


def _owner(account: Account) -> str:
    return f"unit {account.unit.slug!r}" if account.unit else f"the {account.kind}"


def open_account(session: Session, unit: Unit, rules: EconomyRules, actor: str) -> Account:
    """Open ``unit``'s account with the initial grant from the mint (idempotent)."""
    existing = session.scalar(select(Account).where(Account.unit_id == unit.id))
    if existing is not None:
        return existing
    account = Account(kind="unit", unit_id=unit.id, unit=unit, balance=0)
    session.add(account)
    session.flush()
    transfer = _post(session, "grant", actor, [(mint_account(session), -rules.initial_grant),
                                               (account, rules.initial_grant)],
                     memo=f"initial grant to unit {unit.slug}")
    certlog.append(session, "unit_grant", actor, unit.slug, f"transfer:{transfer.id}",
                   transfer=transfer.id, amount=format_points(rules.initial_grant))
    return account


def open_missing_accounts(session: Session, rules: EconomyRules) -> int:
    """Accounts for units created before the economy existed; returns how many were opened."""
    missing = session.scalars(
        select(Unit).where(~select(Account.id).where(Account.unit_id == Unit.id).exists())
    ).all()
    for unit in missing:
        open_account(session, unit, rules, "system")
    operator_account(session)
    return len(missing)


def _lock(session: Session, accounts: list[Account]) -> None:
    # in id order, so two purchases between the same units cannot deadlock
    ids = sorted({a.id for a in accounts})
    session.execute(select(Account.id).where(Account.id.in_(ids)).order_by(Account.id)
                    .with_for_update())
    for account in accounts:
        session.refresh(account)


# --- orders ------------------------------------------------------------------------------------


def _request_digest(product: str, plan: str) -> str:
    body = json.dumps({"product": product, "plan": plan}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def validate_order_request(body: dict) -> tuple[str, str, str]:
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


def _replay(session: Session, unit: Unit, key: str, digest: str) -> Order | None:
    existing = session.scalar(select(Order).where(Order.unit_id == unit.id,
                                                  Order.idempotency_key == key))
    if existing is not None and existing.request_sha256 != digest:
        raise Conflict("idempotency_key was already used for a different order",
                       "idempotency_key")
    return existing


def place_order(session: Session, caller: Caller, rules: EconomyRules, product_name: str,
                plan: str, key: str, now: datetime | None = None) -> tuple[Order, bool]:
    """Buy ``plan`` of ``product_name`` for the caller's unit; returns (order, created).
    ``now`` backdates the order (the demo's history, ``demo.seed_history``); default: now.

    The same key with the same request returns the first order; with another request, 409.
    The caller's session must have been started with :func:`write_transaction`.
    """
    caller.require(SCOPE_SUBSCRIBE, "ordering a product")
    if caller.unit is None:
        raise Forbidden(f"{caller.name} is not a member of any unit; ask an operator", "unit")
    buyer_unit = session.scalar(select(Unit).where(Unit.slug == caller.unit))
    digest = _request_digest(product_name, plan)
    replay = _replay(session, buyer_unit, key, digest)
    if replay is not None:
        return replay, False

    product = session.scalar(select(Product).where(Product.name == product_name))
    version = product.current_version if product else None
    if product is None or version is None or version.state != "on_shelf":
        raise NotFound(f"no product {product_name!r} on the shelf", "product")
    prices = {p["type"]: p["price"] for p in json.loads(version.manifest).get("plans", [])}
    if plan not in prices:
        raise InvalidField(
            f"{product_name!r} offers {', '.join(sorted(prices))}, not {plan}", "plan")
    if product.unit_id == buyer_unit.id and not rules.allow_self_purchase:
        raise Forbidden("a unit does not buy its own product (it may use it freely)", "product")
    price = int(prices[plan]) * CENTS
    if price <= 0:  # the catalogue enforces the bounds; never move points the wrong way
        raise InvalidField(f"{product_name!r} has an invalid price", "plan")

    buyer = unit_account(session, buyer_unit)
    supplier = unit_account(session, product.unit)
    operator = operator_account(session)
    _lock(session, [buyer, supplier, operator])
    # the same key may have been committed by a concurrent request while we waited
    replay = _replay(session, buyer_unit, key, digest)
    if replay is not None:
        return replay, False
    if buyer.balance < price:
        raise InsufficientPoints(
            f"unit {buyer_unit.slug!r} has {format_points(buyer.balance)} points; "
            f"{plan} of {product_name!r} costs {format_points(price)}", "plan")
    fee = rules.fee(price)
    order = Order(unit_id=buyer_unit.id, product_id=product.id, version_id=version.id,
                  plan=plan, price=price, fee=fee, idempotency_key=key,
                  request_sha256=digest, status="paid", buyer=caller.name,
                  created_at=now or utcnow())
    session.add(order)
    try:
        session.flush()
    except IntegrityError as e:  # the same key raced in on another connection
        raise Conflict("a concurrent order with this idempotency_key is in progress",
                       "idempotency_key") from e
    transfer = _post(session, "order", caller.name,
                     [(buyer, -price), (supplier, price - fee), (operator, fee)], order=order,
                     memo=f"{plan} of {product.name}", at=now)
    order.log_index = certlog.append(
        session, "order", caller.name, buyer_unit.slug, f"order:{order.id}",
        order=order.id, product=product.name, version=version.version,
        bundle_sha256=version.sha256, plan=plan, price=format_points(price),
        fee=format_points(fee), supplier=product.unit.slug, transfer=transfer.id,
        idempotency_key_sha256=hashlib.sha256(key.encode()).hexdigest(),
    )
    now = now or utcnow()
    period = PLAN_PERIODS.get(plan)
    session.add(Entitlement(
        order_id=order.id, unit_id=buyer_unit.id, product_id=product.id, plan=plan,
        valid_from=now, valid_until=now + period if period else None,
        uses_left=None if period else 1, status="active"))
    session.flush()
    return order, True


def get_order(session: Session, order_id: str) -> Order:
    order = session.get(Order, parse_id(order_id, "order", "order"))
    if order is None:
        raise NotFound(f"no order {order_id!r}", "order")
    return order


def refund(session: Session, order: Order, actor: str, reason: str) -> LedgerTransfer:
    """Reverse a per-use order's transfer (a failed run, an operator's correction).

    Refused if it was refunded already, or if the supplier or the operator no longer holds
    the points (balances never go below zero).
    """
    if order.plan != "per_use":
        raise Conflict("only per-use orders are refunded; periods simply run out", "order")
    if order.status == "refunded":
        raise Conflict(f"order {order.id} was refunded already", "order")
    original = session.scalar(select(LedgerTransfer).where(
        LedgerTransfer.order_id == order.id, LedgerTransfer.kind == "order"))
    accounts = [p.account for p in original.postings]
    _lock(session, accounts)
    reversal = _post(session, "reversal", actor,
                     [(p.account, -p.amount) for p in original.postings],
                     order=order, reverses=original, memo=reason)
    certlog.append(session, "refund", actor, order.unit.slug, f"order:{order.id}",
                   order=order.id, transfer=reversal.id, reverses=original.id, reason=reason)
    order.status = "refunded"
    if order.entitlement is not None:
        order.entitlement.status = "refunded"
        order.entitlement.uses_left = 0
    session.flush()
    return original


def refund_use(session: Session, entitlement_id: int | None, actor: str, reason: str) -> bool:
    """Give back the per-use order behind a use that bought nothing (a failed run, a rejected
    request); periods and owners' uses are not refunded. False if there was nothing to give
    back or the supplier no longer holds the points. ``reason`` is certified in the log and
    shown in both units' ledgers: a status or a decision, never a run's error text."""
    if entitlement_id is None:
        return False
    order = session.get(Order, session.get(Entitlement, entitlement_id).order_id)
    if order.plan != "per_use" or order.status == "refunded":
        return False
    try:
        refund(session, order, actor, reason[:300])
    except InsufficientPoints as e:  # the supplier spent it meanwhile
        log.warning("refund of order %s refused: %s", order.id, e)
        return False
    return True


# --- escrow: points held for a topic's bounty (exchange/topics.py) ----------------------------
# An escrow account belongs to no unit (kind ``escrow``); it is funded once from a unit and
# emptied once, to a payee (less the fee) or back to the unit. Transfer kinds: ``escrow_in``,
# ``bounty``, ``escrow_refund``.


def open_escrow_account(session: Session) -> Account:
    """A new, empty escrow account (one per topic)."""
    account = Account(kind="escrow", unit_id=None, balance=0)
    session.add(account)
    session.flush()
    return account


def escrow_deposit(session: Session, unit: Unit, escrow: Account, amount: int, actor: str,
                   memo: str) -> LedgerTransfer:
    """Move ``amount`` centipoints from ``unit``'s account into ``escrow``; 409 naming
    ``bounty`` when the unit has fewer points."""
    if amount <= 0 or escrow.kind != "escrow":
        raise AssertionError("an escrow deposit is positive and goes into an escrow account")
    payer = unit_account(session, unit)
    _lock(session, [payer, escrow])
    if payer.balance < amount:
        raise InsufficientPoints(
            f"unit {unit.slug!r} has {format_points(payer.balance)} points; the bounty is "
            f"{format_points(amount)}", "bounty")
    return _post(session, "escrow_in", actor, [(payer, -amount), (escrow, amount)], memo=memo)


def escrow_release(session: Session, escrow: Account, payee: Unit, rules: EconomyRules,
                   actor: str, memo: str) -> tuple[LedgerTransfer, int]:
    """Pay the whole escrow to ``payee`` less the operator's fee; returns (transfer, fee)."""
    to = unit_account(session, payee)
    operator = operator_account(session)
    _lock(session, [escrow, to, operator])
    held = escrow.balance
    if held <= 0:
        raise AssertionError("releasing an empty escrow")  # a topic pays out once
    fee = rules.fee(held)
    transfer = _post(session, "bounty", actor,
                     [(escrow, -held), (to, held - fee), (operator, fee)], memo=memo)
    return transfer, fee


def escrow_refund(session: Session, escrow: Account, unit: Unit, actor: str,
                  memo: str) -> LedgerTransfer:
    """Give the whole escrow back to ``unit`` (no fee)."""
    to = unit_account(session, unit)
    _lock(session, [escrow, to])
    held = escrow.balance
    if held <= 0:
        raise AssertionError("refunding an empty escrow")
    return _post(session, "escrow_refund", actor, [(escrow, -held), (to, held)], memo=memo)


# --- awards: a workshop host pays a competition's winner (exchange/competitions.py) ---------


def award(session: Session, payer: Account, payee: Unit, amount: int, actor: str,
          memo: str) -> LedgerTransfer:
    """Move ``amount`` centipoints from ``payer`` (the host's unit account, or the operator
    account for an operator host) to ``payee``'s account, no fee (transfer kind ``award``);
    409 naming ``points`` when the payer has fewer."""
    to = unit_account(session, payee)
    if amount <= 0 or payer.id == to.id:
        raise AssertionError("an award is positive and goes to another account")
    _lock(session, [payer, to])
    if payer.balance < amount:
        raise InsufficientPoints(
            f"{_owner(payer)} has {format_points(payer.balance)} points; the award is "
            f"{format_points(amount)}", "points")
    return _post(session, "award", actor, [(payer, -amount), (to, amount)], memo=memo)


# --- entitlements: the one gate every use goes through -----------------------------------------


def offered_modes(product: Product) -> list[str]:
    """The sharing modes the product's current version offers."""
    manifest = json.loads(product.current_version.manifest) if product.current_version else {}
    return list(manifest.get("sharing", []))


def check(session: Session, unit: Unit, product: Product, mode: str,
          now: datetime | None = None) -> Entitlement | None:
    """The entitlement that lets ``unit`` use ``product`` in ``mode``.

    The owning unit needs none (returns None). A period plan is preferred over a per-use one,
    so an active subscription never burns a bought use. Raises :class:`NoEntitlement`.
    """
    if mode not in offered_modes(product):
        raise Forbidden(f"{product.name!r} is not shared by {mode}", "mode")
    if product.unit_id == unit.id:
        return None
    now = now or utcnow()
    candidates = session.scalars(
        select(Entitlement).where(
            Entitlement.unit_id == unit.id, Entitlement.product_id == product.id,
            Entitlement.status == "active",
            or_(Entitlement.valid_until > now, Entitlement.uses_left > 0),
        ).order_by(Entitlement.valid_until.is_(None), Entitlement.id)
    ).all()
    if not candidates:
        raise NoEntitlement(
            f"unit {unit.slug!r} has no active plan for {product.name!r}: order one first",
            "product")
    return candidates[0]


def consume(session: Session, entitlement: Entitlement | None) -> None:
    """Use up one per-use entitlement (periods and owners are unaffected)."""
    if entitlement is None or entitlement.uses_left is None:
        return
    # one conditional UPDATE, not read-modify-write: two concurrent uses of one order (two
    # service threads, or two replicas on PostgreSQL) cannot both see a use left
    session.flush()
    taken = session.execute(
        update(Entitlement)
        .where(Entitlement.id == entitlement.id, Entitlement.uses_left > 0)
        .values(uses_left=Entitlement.uses_left - 1,
                status=case((Entitlement.uses_left == 1, "used"), else_=Entitlement.status))
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(entitlement)
    if taken != 1:
        raise NoEntitlement("this per-use order was used already", "product")


# --- statements --------------------------------------------------------------------------------


def statement(session: Session, account: Account, limit: int, offset: int) -> dict:
    """Balance and transfers (newest first) of one account, with counterparties."""
    total = session.scalar(select(func.count()).select_from(Posting)
                           .where(Posting.account_id == account.id))
    postings = session.scalars(
        select(Posting).where(Posting.account_id == account.id)
        .order_by(Posting.id.desc()).limit(limit).offset(offset)
    ).all()
    rows = []
    for posting in postings:
        transfer = posting.transfer
        order = session.get(Order, transfer.order_id) if transfer.order_id else None
        rows.append({
            "transfer": transfer.id, "kind": transfer.kind,
            "at": transfer.created_at.isoformat() + "Z",
            "amount": format_points(posting.amount), "centipoints": posting.amount,
            "counterparties": [
                {"account": _owner_label(p.account), "amount": format_points(p.amount)}
                for p in transfer.postings if p.account_id != account.id
            ],
            "order": order.id if order else None,
            "product": order.product.name if order else None,
            "plan": order.plan if order else None,
            "memo": transfer.memo,
        })
    return {"account": _owner_label(account), "balance": format_points(account.balance),
            "centipoints": account.balance, "transfers": rows, "total": total}


def _owner_label(account: Account) -> str:
    if account.kind == "escrow":  # a topic's bounty held in escrow (the memo names the topic)
        return f"escrow:{account.id}"
    return f"unit:{account.unit.slug}" if account.unit else account.kind


def all_accounts(session: Session) -> list[dict]:
    return [
        {"account": _owner_label(a), "balance": format_points(a.balance),
         "centipoints": a.balance}
        for a in session.scalars(select(Account).order_by(Account.kind, Account.id))
    ]


def order_json(order: Order) -> dict:
    ent = order.entitlement
    return {
        "id": order.id, "product": order.product.name, "plan": order.plan,
        "price": format_points(order.price), "fee": format_points(order.fee),
        "supplier_share": format_points(order.price - order.fee), "status": order.status,
        "buyer": order.buyer, "unit": order.unit.slug, "idempotency_key": order.idempotency_key,
        "created_at": order.created_at.isoformat() + "Z", "log_index": order.log_index,
        "entitlement": None if ent is None else {
            "id": ent.id, "plan": ent.plan, "status": ent.status,
            "valid_from": ent.valid_from.isoformat() + "Z",
            "valid_until": ent.valid_until.isoformat() + "Z" if ent.valid_until else None,
            "uses_left": ent.uses_left,
        },
    }


def list_orders(session: Session, unit: Unit, limit: int, offset: int) -> tuple[list[Order], int]:
    query = select(Order).where(Order.unit_id == unit.id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    orders = session.scalars(query.order_by(Order.id.desc()).limit(limit).offset(offset)).all()
    return list(orders), total


def usage_stats(session: Session, product: Product) -> dict:
    """The paper's Table 2: units using the product (the owner and every unit that bought it)
    and the investment saved (each user but the builder did not build it again)."""
    buyers = session.scalar(
        select(func.count(func.distinct(Order.unit_id))).where(
            Order.product_id == product.id, Order.status == "paid",
            Order.unit_id != product.unit_id))
    units_using = 1 + (buyers or 0)
    return {"units_using": units_using, "investment_saved": units_using - 1,
            "orders": session.scalar(select(func.count()).select_from(Order)
                                     .where(Order.product_id == product.id))}


def buyers_count_expr():
    """A correlated count of the other units that bought a product (paid orders), to sort the
    shelf by use; ``Product`` is the outer query's row."""
    return (select(func.count(func.distinct(Order.unit_id)))
            .where(Order.product_id == Product.id, Order.status == "paid",
                   Order.unit_id != Product.unit_id)
            .correlate(Product).scalar_subquery())


def units_using_counts(session: Session, products: list[Product]) -> dict[int, int]:
    """Units using each product (:func:`usage_stats`' ``units_using``) in one query."""
    ids = [p.id for p in products]
    if not ids:
        return {}
    rows = session.execute(
        select(Order.product_id, func.count(func.distinct(Order.unit_id)))
        .join(Product, Product.id == Order.product_id)
        .where(Order.product_id.in_(ids), Order.status == "paid",
               Order.unit_id != Product.unit_id)
        .group_by(Order.product_id)).all()
    bought = dict(rows)
    return {i: 1 + bought.get(i, 0) for i in ids}


def entitlement_json(ent: Entitlement, now: datetime | None = None) -> dict:
    """An entitlement as pages and clients show it, with ``usable``: whether a use would pass
    :func:`check` today."""
    now = now or utcnow()
    usable = ent.status == "active" and (
        (ent.valid_until is not None and ent.valid_until > now)
        or (ent.uses_left is not None and ent.uses_left > 0))
    return {"id": ent.id, "order": ent.order_id, "product": ent.order.product.name,
            "plan": ent.plan, "status": ent.status, "usable": usable,
            "valid_from": ent.valid_from.isoformat() + "Z",
            "valid_until": ent.valid_until.isoformat() + "Z" if ent.valid_until else None,
            "uses_left": ent.uses_left}


def list_entitlements(session: Session, unit: Unit, product: Product | None = None,
                      limit: int = 200) -> list[dict]:
    """The unit's entitlements (of one product, or all), usable ones first, newest first."""
    query = select(Entitlement).where(Entitlement.unit_id == unit.id)
    if product is not None:
        query = query.where(Entitlement.product_id == product.id)
    found = session.scalars(query.order_by(Entitlement.id.desc()).limit(limit)).all()
    now = utcnow()
    items = [entitlement_json(e, now) for e in found]
    return sorted(items, key=lambda e: not e["usable"])

