"""Reading the points economy: statements, account lists, orders, entitlements and use counts.

The write side (the ledger's transfers, orders, refunds, escrow, entitlement checks) is
:mod:`.points`; this module only reads its tables, for pages, the API and reports.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .driver_sql import DriverSql, read_timestamp
from .errors import NotFound
from .orm import Account, Entitlement, Order, Posting, Product, Unit, utcnow
from .points import format_points

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
    return _order_document(
        order.id, order.product.name, order.plan, order.price, order.fee, order.status,
        order.buyer, order.unit.slug, order.idempotency_key, order.created_at, order.log_index,
        None if ent is None else (ent.id, ent.plan, ent.status, ent.valid_from,
                                  ent.valid_until, ent.uses_left))


def order_document(session: Session, order_id: int) -> dict:
    """:func:`order_json` of order ``order_id`` in one statement to the driver (a purchase's
    answer, :mod:`marketplace_ext.purchase`)."""
    row = DriverSql(session).one(
        "SELECT o.id, p.name, o.plan, o.price, o.fee, o.status, o.buyer, u.slug, "
        "o.idempotency_key, o.created_at, o.log_index, "
        "e.id, e.plan, e.status, e.valid_from, e.valid_until, e.uses_left "
        "FROM orders o JOIN products p ON p.id = o.product_id JOIN units u ON u.id = o.unit_id "
        "LEFT JOIN entitlements e ON e.order_id = o.id WHERE o.id = ?", order_id)
    if row is None:
        raise NotFound(f"no order {order_id!r}", "order")
    (*order, created_at, log_index), ent = row[:11], row[11:]
    return _order_document(
        *order, read_timestamp(created_at), log_index,
        None if ent[0] is None else (*ent[:3], read_timestamp(ent[3]), read_timestamp(ent[4]),
                                     ent[5]))


def _order_document(order_id: int, product: str, plan: str, price: int, fee: int, status: str,
                    buyer: str, unit: str, key: str, created_at: datetime,
                    log_index: int | None, entitlement: tuple | None) -> dict:
    return {
        "id": order_id, "product": product, "plan": plan,
        "price": format_points(price), "fee": format_points(fee),
        "supplier_share": format_points(price - fee), "status": status,
        "buyer": buyer, "unit": unit, "idempotency_key": key,
        "created_at": created_at.isoformat() + "Z", "log_index": log_index,
        "entitlement": None if entitlement is None else {
            "id": entitlement[0], "plan": entitlement[1], "status": entitlement[2],
            "valid_from": entitlement[3].isoformat() + "Z",
            "valid_until": entitlement[4].isoformat() + "Z" if entitlement[4] else None,
            "uses_left": entitlement[5],
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
    :func:`.points.check` today."""
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

