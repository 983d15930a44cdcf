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
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.attributes import set_committed_value

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
    ProductShare,
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


def _apply_balances(session: Session, legs: list[tuple[Account, int]]) -> None:
    """Move the balances of a recorded transfer's legs with guarded ``UPDATE``s, in account-id
    order (no deadlock between two transfers). Each row stays locked until the commit, so callers
    run this as late in their transaction as they can: it is the contended part (every purchase
    credits the operator's account)."""
    accounts = {a.id: a for a, _ in legs}
    totals: dict[int, int] = {}
    for account, amount in legs:
        totals[account.id] = totals.get(account.id, 0) + amount
    for account_id in sorted(totals):
        account, amount = accounts[account_id], totals[account_id]
        if amount == 0:
            continue
        change = update(Account).where(Account.id == account_id)
        if amount < 0 and account.kind != "mint":
            change = change.where(Account.balance >= -amount)
        balance = session.execute(change.values(balance=Account.balance + amount)
                                  .returning(Account.balance)).scalar()
        if balance is None:
            raise InsufficientPoints(f"account of {_owner(account)} has "
                                     f"{format_points(account.balance)} points; this needs "
                                     f"{format_points(-amount)}", "balance")
        set_committed_value(account, "balance", balance)


def _order_accounts(session: Session, units: list[Unit]) -> dict[int, Account]:
    """The points accounts of ``units`` (by unit id) in one statement; 404 naming ``unit`` for
    a unit without one."""
    found = {a.unit_id: a for a in session.scalars(
        select(Account).where(Account.unit_id.in_({u.id for u in units})))}
    for unit in units:
        if unit.id not in found:
            raise NotFound(f"unit {unit.slug!r} has no points account", "unit")
    return found


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

    # the product with its version and owner in one statement (no lazy loads)
    product = session.scalar(select(Product).where(Product.name == product_name).options(
        joinedload(Product.current_version), joinedload(Product.unit)))
    version = product.current_version if product else None
    if product is None or version is None or version.state != "on_shelf":
        raise NotFound(f"no product {product_name!r} on the shelf", "product")
    prices = {p["type"]: p["price"] for p in json.loads(version.manifest).get("plans", [])}
    if plan not in prices:
        raise InvalidField(
            f"{product_name!r} offers {', '.join(sorted(prices))}, not {plan}", "plan")
    if product.unit_id == buyer_unit.id and not rules.allow_self_purchase:
        raise Forbidden("a unit does not buy its own product (it may use it freely)", "product")
    shares = product_shares(session, product)  # a co-owned product: several payees
    if not rules.allow_self_purchase and any(s.unit_id == buyer_unit.id for s in shares):
        raise Forbidden(f"unit {buyer_unit.slug!r} co-owns {product_name!r} (a federated "
                        "project's model): it uses it freely and does not pay itself for it",
                        "product")
    price = int(prices[plan]) * CENTS
    if price <= 0:  # the catalogue enforces the bounds; never move points the wrong way
        raise InvalidField(f"{product_name!r} has an invalid price", "plan")

    accounts = _order_accounts(session, [buyer_unit, product.unit, *(s.unit for s in shares)])
    buyer, supplier = accounts[buyer_unit.id], accounts[product.unit_id]
    operator = operator_account(session)
    owners = {s.unit.slug: (accounts[s.unit_id], s.basis_points) for s in shares}
    if buyer.balance < price:  # unlocked, for the clear error; the guarded update decides
        raise InsufficientPoints(
            f"unit {buyer_unit.slug!r} has {format_points(buyer.balance)} points; "
            f"{plan} of {product_name!r} costs {format_points(price)}", "plan")
    fee = rules.fee(price)
    # Everything that does not need a lock comes first, so that concurrent purchases (and
    # several service processes) overlap; only the balances and the log's sequence number are
    # taken at the end and held until the commit.
    # relationships given as the objects at hand: the order's JSON then needs no lazy loads
    order = Order(unit=buyer_unit, product=product, version_id=version.id,
                  plan=plan, price=price, fee=fee, idempotency_key=key,
                  request_sha256=digest, status="paid", buyer=caller.name,
                  created_at=now or utcnow())
    # a savepoint for a concurrent order with the same key; SQLite's writers are serialised
    # (BEGIN IMMEDIATE), so none can race there and the savepoint's two statements are saved
    same_key_guard = nullcontext() if session.get_bind().dialect.name == "sqlite" \
        else session.begin_nested()
    try:
        with same_key_guard:
            session.add(order)
            session.flush()
    except IntegrityError as e:  # the same key raced in; the database waited for its commit
        replay = _replay(session, buyer_unit, key, digest)
        if replay is not None:
            return replay, False
        raise Conflict("a concurrent order with this idempotency_key is in progress",
                       "idempotency_key") from e
    split = split_amount(price - fee, {u: bp for u, (_, bp) in owners.items()}) if owners \
        else {product.unit.slug: price - fee}
    payees = [(owners[u][0] if owners else supplier, amount) for u, amount in split.items()]
    legs = [(buyer, -price), *payees, (operator, fee)]
    transfer = _record_transfer(session, "order", caller.name, legs, order=order,
                                memo=f"{plan} of {product.name}", at=now)
    now = now or utcnow()
    period = PLAN_PERIODS.get(plan)
    entitlement = Entitlement(
        order_id=order.id, unit_id=buyer_unit.id, product_id=product.id, plan=plan,
        valid_from=now, valid_until=now + period if period else None,
        uses_left=None if period else 1, status="active")
    session.add(entitlement)
    session.flush()
    # the new order has no other entitlement: set it without loading the (empty) old value
    set_committed_value(order, "entitlement", entitlement)
    try:
        _apply_balances(session, legs)
    except InsufficientPoints as e:  # spent by a concurrent purchase since the check above
        raise InsufficientPoints(
            f"unit {buyer_unit.slug!r} no longer has the {format_points(price)} points "
            f"{plan} of {product_name!r} costs", "plan") from e
    order.log_index = certlog.append(
        session, "order", caller.name, buyer_unit.slug, f"order:{order.id}",
        order=order.id, product=product.name, version=version.version,
        bundle_sha256=version.sha256, plan=plan, price=format_points(price),
        fee=format_points(fee), supplier=product.unit.slug, transfer=transfer.id,
        **({"co_owners": {u: format_points(a) for u, a in split.items()}} if owners else {}),
        idempotency_key_sha256=hashlib.sha256(key.encode()).hexdigest(),
        party_units=list(owners),
    )
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
