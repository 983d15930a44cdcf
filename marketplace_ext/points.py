"""The points economy: a double-entry ledger, orders, entitlements.

Rules (section 2.4 of the source paper):

- every unit's account starts with 500 points, issued from the *mint*, the only account that
  may go below zero; the sum of all balances is therefore always zero;
- amounts are integer centipoints; an order of price p debits the buyer p and credits the
  operator fee = floor(6 % of p) and the supplier p - fee, in one transaction;
- transfers are immutable; a correction (a refund) is a new transfer reversing an old one.

Placing an order is :mod:`.purchase`. Balances move with guarded updates (``balance >=
amount`` for a debit), as late in the transaction as possible, so concurrent buyers cannot
overdraw a unit, and a transfer either commits whole or not at all.

Lock order: every transaction locks account rows by id, the operator's fee account last, so two
cannot deadlock. Every purchase credits the operator's account; last, it is held for the fewest
statements before the commit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from . import certlog
from .driver_sql import DriverSql
from .errors import Conflict, Forbidden, InvalidField, MarketError, NotFound
from .ids import parse_id
from .orm import (
    Account,
    Entitlement,
    LedgerTransfer,
    Order,
    Posting,
    Product,
    ProductShare,
    Unit,
    utcnow,
)

log = logging.getLogger(__name__)

CENTS = 100
PLAN_PERIODS = {"week": timedelta(days=7), "month": timedelta(days=30),
                "year": timedelta(days=365)}
PLAN_TYPES = ("per_use", *PLAN_PERIODS)


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
    """Record a transfer and move the balances of accounts the caller has locked (``_lock``)."""
    transfer = _record_transfer(session, kind, actor, legs, order=order, reverses=reverses,
                                memo=memo, at=at)
    for account, amount in legs:
        account.balance += amount
        if account.balance < 0 and account.kind != "mint":
            raise InsufficientPoints(
                f"account of {_owner(account)} would go below zero "
                f"({format_points(account.balance)})", "balance")
    session.flush()
    return transfer


def _record_transfer(session: Session, kind: str, actor: str, legs: list[tuple[Account, int]],
                     *, order: Order | None = None, reverses: LedgerTransfer | None = None,
                     memo: str = "", at: datetime | None = None) -> LedgerTransfer:
    """The transfer's rows (header and postings), balances untouched."""
    if sum(amount for _, amount in legs) != 0:
        raise AssertionError("a transfer's legs must sum to zero")  # a bug, never user input
    transfer = LedgerTransfer(kind=kind, actor=actor, memo=memo,
                              order_id=order.id if order else None,
                              reverses_id=reverses.id if reverses else None,
                              created_at=at or utcnow())
    session.add(transfer)
    session.flush()
    rows = [{"transfer_id": transfer.id, "account_id": account.id, "amount": amount}
            for account, amount in legs if amount != 0]
    if rows:  # one multi-row insert, not an ORM object (and a RETURNING) per posting
        session.connection().execute(insert(Posting), rows)
    return transfer


def record_transfer_by_sql(sql: DriverSql, kind: str, actor: str, legs: list[tuple[int, int]],
                           *, order_id: int | None, memo: str, at: datetime) -> int:
    """:func:`_record_transfer` for a caller writing through ``sql`` (a purchase): the header
    and its postings (``legs`` of account id and amount), balances untouched; the id."""
    if sum(amount for _, amount in legs) != 0:
        raise AssertionError("a transfer's legs must sum to zero")  # a bug, never user input
    transfer_id = sql.scalar(
        "INSERT INTO transfers (kind, order_id, memo, actor, created_at) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id", kind, order_id, memo, actor, sql.timestamp(at))
    rows = [(transfer_id, account_id, amount) for account_id, amount in legs if amount != 0]
    sql.execute("INSERT INTO postings (transfer_id, account_id, amount) VALUES "
                + ", ".join(["(?, ?, ?)"] * len(rows)), *(v for row in rows for v in row))
    return transfer_id


class BalanceMoves:
    """The balance updates of a recorded transfer's legs (account id, amount), as statements
    for :meth:`DriverSql.batch`: guarded ``UPDATE ... RETURNING``, a debit only where the
    account holds the amount, in the lock order (see the module docstring; ``operator_id`` is
    the operator's fee account). Each row stays locked until the commit, so callers run them
    as late in their transaction as they can: they are the contended part. The mint, which
    may go below zero, is never debited this way."""

    def __init__(self, legs: list[tuple[int, int]], operator_id: int):
        totals: dict[int, int] = {}
        for account_id, amount in legs:
            totals[account_id] = totals.get(account_id, 0) + amount
        self.moves = [(account_id, totals[account_id])
                      for account_id in sorted(totals, key=lambda a: (a == operator_id, a))
                      if totals[account_id] != 0]

    def __len__(self) -> int:
        return len(self.moves)

    def statements(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("UPDATE accounts SET balance = balance + ? WHERE id = ? AND balance >= ? "
                 "RETURNING balance", (amount, account_id, -amount)) if amount < 0 else
                ("UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
                 (amount, account_id)) for account_id, amount in self.moves]

    def check(self, session: Session, rows: list) -> None:
        """After the statements ran (``rows``, their results): :class:`InsufficientPoints` if
        a debit found its account short (the caller then rolls back: the other moves were
        made); otherwise account objects the session holds get their new balances."""
        for (account_id, amount), row in zip(self.moves, rows, strict=True):
            if row is None:
                raise InsufficientPoints(f"account {account_id} does not hold "
                                         f"{format_points(-amount)} points", "balance")
        for (account_id, _), (balance,) in zip(self.moves, rows, strict=True):
            held = session.identity_map.get(identity_key(Account, account_id))
            if held is not None:
                set_committed_value(held, "balance", balance)


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
    # in the lock order (module docstring), so two transfers cannot deadlock
    ids = sorted({a.id for a in accounts})
    session.execute(select(Account.id).where(Account.id.in_(ids))
                    .order_by(Account.kind == "operator", Account.id).with_for_update())
    for account in accounts:
        session.refresh(account)


# --- orders ------------------------------------------------------------------------------------


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
                   memo: str, *, field: str = "bounty", kind: str = "escrow_in") -> LedgerTransfer:
    """Move ``amount`` centipoints from ``unit``'s account into ``escrow``; 409 naming
    ``field`` (a topic's ``bounty``, a federated project's ``pool``) when the unit has fewer
    points."""
    if amount <= 0 or escrow.kind != "escrow":
        raise AssertionError("an escrow deposit is positive and goes into an escrow account")
    payer = unit_account(session, unit)
    _lock(session, [payer, escrow])
    if payer.balance < amount:
        raise InsufficientPoints(
            f"unit {unit.slug!r} has {format_points(payer.balance)} points; the {field} is "
            f"{format_points(amount)}", field)
    return _post(session, kind, actor, [(payer, -amount), (escrow, amount)], memo=memo)


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
                  memo: str, *, kind: str = "escrow_refund") -> LedgerTransfer:
    """Give the whole escrow back to ``unit`` (no fee)."""
    to = unit_account(session, unit)
    _lock(session, [escrow, to])
    held = escrow.balance
    if held <= 0:
        raise AssertionError("refunding an empty escrow")
    return _post(session, kind, actor, [(escrow, -held), (to, held)], memo=memo)


def escrow_split(session: Session, escrow: Account, shares: dict[Unit, int],
                 rules: EconomyRules, actor: str, memo: str,
                 kind: str = "fl_pool_split") -> tuple[LedgerTransfer, int, dict[str, int]]:
    """Pay the whole escrow, less the operator's fee (as a topic's bounty), to several units
    by ``shares`` (basis points summing to 10 000) in ONE transfer; the remainders go by
    largest remainder, so no centipoint is created or lost. Returns (transfer, fee,
    {unit slug: centipoints})."""
    payees = {unit: unit_account(session, unit) for unit in shares}
    operator = operator_account(session)
    _lock(session, [escrow, operator, *payees.values()])
    held = escrow.balance
    if held <= 0:
        raise AssertionError("splitting an empty escrow")
    fee = rules.fee(held)
    amounts = split_amount(held - fee, {u.slug: bp for u, bp in shares.items()})
    legs = [(escrow, -held), (operator, fee)]
    legs += [(payees[u], amounts[u.slug]) for u in shares]
    return _post(session, kind, actor, legs, memo=memo), fee, amounts


def split_amount(total: int, weights: dict[str, int]) -> dict[str, int]:
    """``total`` centipoints divided in proportion to ``weights`` (non-negative integers, not
    all zero) by largest remainder: the parts are integers summing exactly to ``total``; ties
    in the remainder go to the larger weight, then to the key in sorted order."""
    whole = sum(weights.values())
    if total < 0 or whole <= 0 or any(w < 0 for w in weights.values()):
        raise AssertionError("a split needs a non-negative total and positive weights")
    parts = {k: total * w // whole for k, w in weights.items()}
    left = total - sum(parts.values())
    order = sorted(weights, key=lambda k: (-(total * weights[k] % whole), -weights[k], k))
    for k in order[:left]:
        parts[k] += 1
    return parts


# --- co-owned products: a federated project's model (federated/coowned.py) -------------------


def product_shares(session: Session, product: Product) -> list[ProductShare]:
    """The co-owners of ``product`` with their certified basis points (none: one owner)."""
    return list(session.scalars(select(ProductShare).where(ProductShare.product_id == product.id)
                                .order_by(ProductShare.id)))


def co_owns(session: Session, product: Product, unit_id: int) -> bool:
    """Whether the unit is one of ``product``'s co-owners (it neither buys nor rates it)."""
    return session.scalar(select(ProductShare.id).where(
        ProductShare.product_id == product.id, ProductShare.unit_id == unit_id)
        .limit(1)) is not None


def set_product_shares(session: Session, product: Product, shares: dict[Unit, int],
                       source: str) -> None:
    """Make ``product`` co-owned by ``shares`` (basis points summing to 10 000) once: its
    sales revenue after the fee then goes to those units (:func:`place_order`)."""
    if sum(shares.values()) != 10_000 or any(bp < 0 for bp in shares.values()):
        raise InvalidField("shares must be non-negative basis points summing to 10000",
                           "shares")
    if product_shares(session, product):
        raise Conflict(f"product {product.name!r} has its co-owners already", "product")
    for unit, bp in shares.items():
        session.add(ProductShare(product_id=product.id, unit_id=unit.id, basis_points=bp,
                                 source=source))
    session.flush()


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
    if product.unit_id == unit.id or session.scalar(select(ProductShare.id).where(
            ProductShare.product_id == product.id, ProductShare.unit_id == unit.id)):
        return None  # the owner, or a co-owner of a federated project's model
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
