"""The ledger, orders and entitlements against the real databases (SQLite and PostgreSQL):
focused cases, a Hypothesis state machine against a simple model, and concurrent buyers."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import timedelta

import pytest
from helpers import run_state_machine
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from marketplace_ext import certlog, dbutil, ledger_views, points, purchase
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.errors import Conflict, Forbidden, InvalidField, NotFound
from marketplace_ext.orm import (
    Account,
    Entitlement,
    LedgerTransfer,
    LogEntry,
    LogState,
    Order,
    Posting,
    Product,
    Unit,
    Version,
    make_engine,
    make_session_factory,
    utcnow,
    write_transaction,
)

RULES = points.EconomyRules()
_names = itertools.count()


def make_unit(session, slug: str) -> Unit:
    unit = Unit(slug=slug, name=slug.upper(), created_by="test")
    session.add(unit)
    session.flush()
    points.open_account(session, unit, RULES, "test")
    return unit


def make_product(session, owner: Unit, plans: dict[str, int], on_shelf: bool = True) -> Product:
    """A product row with a current version, as the catalogue leaves it after approval."""
    name = f"p{next(_names)}"
    product = Product(name=name, kind="tool", unit_id=owner.id, created_by="test")
    session.add(product)
    session.flush()
    manifest = {"name": name, "plans": [{"type": t, "price": p} for t, p in plans.items()],
                "sharing": ["remote_run", "download"]}
    version = Version(product_id=product.id, version="1.0.0", sha256="0" * 64,
                      state="on_shelf" if on_shelf else "off_shelf", title=name, summary="",
                      tags="[]", manifest=json.dumps(manifest), parameters="{}", files="[]",
                      readme="", size=0, created_by="test")
    session.add(version)
    session.flush()
    product.current_version_id = version.id
    session.flush()
    session.refresh(product)
    return product


def subscriber(unit: Unit, name: str = "buyer") -> Caller:
    return Caller(name=name, scopes=frozenset({SCOPE_SUBSCRIBE}), unit=unit.slug)


def check_ledger(session) -> dict[int, int]:
    """The invariants: zero sum, no overdraft but the mint, balances = postings, transfers
    balanced. Returns balances by account id."""
    accounts = session.scalars(select(Account)).all()
    assert sum(a.balance for a in accounts) == 0
    for a in accounts:
        assert a.kind == "mint" or a.balance >= 0, (a.kind, a.balance)
        posted = session.scalar(select(func.coalesce(func.sum(Posting.amount), 0))
                                .where(Posting.account_id == a.id))
        assert a.balance == posted
    unbalanced = session.execute(
        select(Posting.transfer_id).group_by(Posting.transfer_id)
        .having(func.sum(Posting.amount) != 0)).all()
    assert unbalanced == []
    return {a.id: a.balance for a in accounts}


def test_worked_example_monthly_plan_of_30_points(session_factory):
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        product = make_product(s, a, {"month": 30, "per_use": 10})
        order, created = purchase.place_order(s, subscriber(b), RULES, product.name, "month",
                                            "key-00000001")
        s.commit()
        assert created
        assert (order.price, order.fee) == (3000, 180)
        assert points.unit_account(s, a).balance == 500_00 + 28_20
        assert points.unit_account(s, b).balance == 500_00 - 30_00
        assert points.operator_account(s).balance == 1_80
        assert points.mint_account(s).balance == -1000_00
        ent = order.entitlement
        assert ent.valid_until - ent.valid_from == timedelta(days=30) and ent.uses_left is None
        check_ledger(s)
        statement = ledger_views.statement(s, points.unit_account(s, a), 10, 0)
        sale = statement["transfers"][0]
        assert sale["amount"] == "28.20" and sale["product"] == product.name
        assert {c["account"] for c in sale["counterparties"]} == {"unit:b", "operator"}


def test_fee_rounds_down_and_supplier_gets_the_rest():
    rules = points.EconomyRules()
    for price in range(1000, 5001, 100):
        fee = rules.fee(price)
        assert fee == price * 6 // 100 and 0 <= fee < price


def test_orders_refuse_bad_requests_and_write_nothing(session_factory):
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        on = make_product(s, a, {"per_use": 50})
        off = make_product(s, a, {"per_use": 10}, on_shelf=False)
        s.commit()
        before = check_ledger(s)
        cases = [
            (subscriber(b), on.name, "year", InvalidField, "plan"),
            (subscriber(b), off.name, "per_use", NotFound, "product"),
            (subscriber(b), "nope", "per_use", NotFound, "product"),
            (subscriber(a), on.name, "per_use", Forbidden, "product"),
            (Caller("lost", frozenset({SCOPE_SUBSCRIBE}), None), on.name, "per_use", Forbidden,
             "unit"),
            (Caller("x", frozenset({SCOPE_APPROVE}), "b"), on.name, "per_use", Forbidden, None),
        ]
        for i, (caller, name, plan, error, field) in enumerate(cases):
            with pytest.raises(error) as e:
                purchase.place_order(s, caller, RULES, name, plan, f"bad-key-{i:04d}")
            assert e.value.field == field
            s.rollback()
        for body in ({"product": "x", "plan": "per_use", "idempotency_key": "short"},
                     {"product": "x", "plan": "per_use", "idempotency_key": "has space 123"},
                     {"product": "x", "plan": "daily", "idempotency_key": "good-key-1"},
                     {"product": 5, "plan": "per_use", "idempotency_key": "good-key-1"}):
            with pytest.raises(InvalidField):
                purchase.validate_order_request(body)
        # ten 50-point uses drain b; the eleventh is refused
        for i in range(10):
            purchase.place_order(s, subscriber(b), RULES, on.name, "per_use", f"drain-{i:04d}")
        s.commit()
        with pytest.raises(points.InsufficientPoints) as e:
            purchase.place_order(s, subscriber(b), RULES, on.name, "per_use", "drain-last")
        assert e.value.field == "plan" and "0.00" in e.value.message
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Order)) == 10
        assert check_ledger(s)[points.unit_account(s, b).id] == 0
        assert before[points.unit_account(s, b).id] == 500_00


def test_idempotency_and_refunds(session_factory):
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        product = make_product(s, a, {"per_use": 20, "week": 10})
        order, created = purchase.place_order(s, subscriber(b), RULES, product.name, "per_use",
                                            "retry-me-1")
        s.commit()
        again, created_again = purchase.place_order(s, subscriber(b), RULES, product.name,
                                                  "per_use", "retry-me-1")
        assert (again.id, created, created_again) == (order.id, True, False)
        with pytest.raises(Conflict) as e:
            purchase.place_order(s, subscriber(b), RULES, product.name, "week", "retry-me-1")
        assert e.value.field == "idempotency_key"
        s.rollback()
        # the gate: per-use consumed once, then refused; refunded once, then refused
        ent = points.check(s, b, product, "remote_run")
        points.consume(s, ent)
        with pytest.raises(points.NoEntitlement):
            points.check(s, b, product, "remote_run")
        with pytest.raises(Forbidden):
            points.check(s, b, product, "remote_call")  # not a sharing mode of the product
        assert points.check(s, a, product, "download") is None  # the owner needs no order
        points.refund(s, order, "runner", "run failed")
        s.commit()
        with pytest.raises(Conflict):
            points.refund(s, order, "runner", "again")
        s.rollback()
        assert points.unit_account(s, b).balance == 500_00
        reversal = s.scalar(select(LedgerTransfer).where(LedgerTransfer.kind == "reversal"))
        assert reversal.reverses_id is not None and reversal.order_id == order.id
        # a subscription is preferred over a bought use
        week, _ = purchase.place_order(s, subscriber(b), RULES, product.name, "week", "week-1234")
        use, _ = purchase.place_order(s, subscriber(b), RULES, product.name, "per_use", "use-1234")
        assert points.check(s, b, product, "remote_run").id == week.entitlement.id
        assert points.check(s, b, product, "remote_run",
                            now=utcnow() + timedelta(days=8)).id == use.entitlement.id
        with pytest.raises(Conflict):
            points.refund(s, week, "op", "periods are not refunded")
        s.rollback()
        check_ledger(s)


def test_refund_never_overdraws_the_supplier(session_factory):
    with session_factory() as s:
        write_transaction(s)
        a, b, c = make_unit(s, "a"), make_unit(s, "b"), make_unit(s, "c")
        sold = make_product(s, a, {"per_use": 50})
        sink = make_product(s, c, {"per_use": 50, "week": 10})
        order, _ = purchase.place_order(s, subscriber(b), RULES, sold.name, "per_use", "sale-0001")
        for i in range(10):  # a spends what it earned from the sale
            purchase.place_order(s, subscriber(a, "spender"), RULES, sink.name, "per_use",
                               f"spend-{i:04d}")
        purchase.place_order(s, subscriber(a, "spender"), RULES, sink.name, "week", "spend-week")
        s.commit()
        assert points.unit_account(s, a).balance == 37_00  # less than the 47.00 to give back
        with pytest.raises(points.InsufficientPoints):
            points.refund(s, order, "runner", "run failed")
        s.rollback()
        check_ledger(s)


def test_fifty_concurrent_buyers_never_overdraw(session_factory):
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        product = make_product(s, a, {"per_use": 30})
        s.commit()
        name, buyer = product.name, subscriber(b)
    outcomes: list[str] = []
    barrier = threading.Barrier(50)

    def buy(i: int) -> None:
        barrier.wait()
        for _attempt in range(20):
            with session_factory() as s:
                try:
                    write_transaction(s)
                    purchase.place_order(s, buyer, RULES, name, "per_use", f"burst-{i:04d}")
                    s.commit()
                    outcomes.append("ok")
                except points.InsufficientPoints:
                    outcomes.append("insufficient")
                except Exception as e:  # SQLite busy beyond the timeout: retry like a client
                    if "locked" not in str(e):
                        outcomes.append(f"error:{e}")
                        return
                    continue
                return
        outcomes.append("gave up")

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(outcomes)) == ["insufficient", "ok"], outcomes
    assert outcomes.count("ok") == 16  # 500 // 30
    with session_factory() as s:
        balances = check_ledger(s)
        assert balances[points.unit_account(s, s.get(Unit, b.id)).id] == 500_00 - 16 * 30_00


class LedgerMachine(RuleBasedStateMachine):
    """Random units, products, orders, retries and refunds against a model of the balances."""

    db_url: str = ""

    def __init__(self):
        super().__init__()
        dbutil.upgrade(self.db_url)
        self.engine = make_engine(self.db_url)
        self.factory = make_session_factory(self.engine)
        self.model: dict[str, int] = {"operator": 0}
        self.units: list[str] = []
        self.products: list[tuple[str, str, dict[str, int]]] = []  # name, owner, prices
        self.orders: list[dict] = []
        self.keys = itertools.count()

    def teardown(self):
        self.engine.dispose()

    @rule()
    def add_unit(self):
        slug = f"u{len(self.units)}"
        with self.factory() as s:
            write_transaction(s)
            make_unit(s, slug)
            s.commit()
        self.units.append(slug)
        self.model[slug] = RULES.initial_grant

    @precondition(lambda self: self.units)
    @rule(data=st.data(), prices=st.dictionaries(st.sampled_from(points.PLAN_TYPES),
                                                 st.integers(10, 50), min_size=1))
    def add_product(self, data, prices):
        owner = data.draw(st.sampled_from(self.units))
        with self.factory() as s:
            write_transaction(s)
            unit = s.scalar(select(Unit).where(Unit.slug == owner))
            name = make_product(s, unit, prices).name
            s.commit()
        self.products.append((name, owner, prices))

    @precondition(lambda self: self.units and self.products)
    @rule(data=st.data(), plan=st.sampled_from(points.PLAN_TYPES))
    def order(self, data, plan):
        buyer = data.draw(st.sampled_from(self.units))
        name, owner, prices = data.draw(st.sampled_from(self.products))
        key = f"key-{next(self.keys):06d}"
        self._order(buyer, name, owner, prices, plan, key, retry=None)

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), same_body=st.booleans())
    def retry(self, data, same_body):
        previous = data.draw(st.sampled_from(self.orders))
        plan = previous["plan"] if same_body else next(
            p for p in points.PLAN_TYPES if p != previous["plan"])
        name, owner, prices = next(p for p in self.products if p[0] == previous["product"])
        self._order(previous["buyer"], name, owner, prices, plan, previous["key"],
                    retry=previous if same_body else "conflict")

    def _order(self, buyer, name, owner, prices, plan, key, retry):
        price = prices.get(plan, 0) * points.CENTS
        with self.factory() as s:
            write_transaction(s)
            unit = s.scalar(select(Unit).where(Unit.slug == buyer))
            try:
                order, created = purchase.place_order(s, subscriber(unit), RULES, name, plan, key)
                s.commit()
            except Conflict:
                assert retry == "conflict"
                return
            except InvalidField:
                assert plan not in prices and retry is None
                return
            except Forbidden:
                assert buyer == owner and retry is None
                return
            except points.InsufficientPoints:
                assert self.model[buyer] < price and retry is None
                return
            if retry is not None:
                assert not created and order.id == retry["id"]
                return
            assert created and buyer != owner and self.model[buyer] >= price
            fee = RULES.fee(price)
            self.model[buyer] -= price
            self.model[owner] += price - fee
            self.model["operator"] += fee
            self.orders.append({"id": order.id, "buyer": buyer, "owner": owner, "plan": plan,
                                "product": name, "key": key, "price": price, "fee": fee,
                                "refunded": False})

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def refund(self, data):
        o = data.draw(st.sampled_from(self.orders))
        with self.factory() as s:
            write_transaction(s)
            try:
                points.refund(s, s.get(Order, o["id"]), "test", "failed run")
                s.commit()
            except Conflict:
                assert o["plan"] != "per_use" or o["refunded"]
                return
            except points.InsufficientPoints:
                assert (self.model[o["owner"]] < o["price"] - o["fee"]
                        or self.model["operator"] < o["fee"])
                return
        assert o["plan"] == "per_use" and not o["refunded"]
        o["refunded"] = True
        self.model[o["buyer"]] += o["price"]
        self.model[o["owner"]] -= o["price"] - o["fee"]
        self.model["operator"] -= o["fee"]

    @invariant()
    def ledger_holds(self):
        with self.factory() as s:
            check_ledger(s)
            for slug in self.units:
                unit = s.scalar(select(Unit).where(Unit.slug == slug))
                assert points.unit_account(s, unit).balance == self.model[slug]
            if self.units:
                assert points.operator_account(s).balance == self.model["operator"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ledger_state_machine(kind, tmp_path, request):
    run_state_machine(LedgerMachine, kind, tmp_path, request,
                      max_examples=25 if kind == "sqlite" else 12)


def test_two_uses_of_one_per_use_order_cannot_both_succeed(session_factory):
    """points.consume is one conditional UPDATE: a second session that read the entitlement
    while it still had its use (a concurrent request) is refused once the first has spent it."""
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        product = make_product(s, a, {"per_use": 20})
        purchase.place_order(s, subscriber(b), RULES, product.name, "per_use", "race-0001")
        s.commit()
        product_id, b_id = product.id, b.id
    with session_factory() as first, session_factory() as second:
        late = points.check(second, second.get(Unit, b_id), second.get(Product, product_id),
                            "remote_run")
        assert late.uses_left == 1  # read before the first use is spent
        write_transaction(first)
        early = points.check(first, first.get(Unit, b_id), first.get(Product, product_id),
                             "remote_run")
        points.consume(first, early)
        first.commit()
        # PostgreSQL: the UPDATE finds no use left. SQLite refuses to upgrade the stale read
        # transaction to a write (SQLITE_BUSY_SNAPSHOT, "database is locked"). Either way the
        # second use does not happen.
        refused = ((points.NoEntitlement,) if "postgresql" in str(second.get_bind().url)
                   else (points.NoEntitlement, OperationalError))
        with pytest.raises(refused):
            points.consume(second, late)
        second.rollback()
    with session_factory() as s:
        ent = s.get(Entitlement, early.id)
        assert (ent.uses_left, ent.status) == (0, "used")


def test_an_order_entry_names_the_parties_certlog_finds(session_factory):
    """purchase.buy writes its log entry through the driver with the parties it knows; they
    are the ones certlog.party_units_of finds from the entry's details (who reads it)."""
    with session_factory() as s:
        write_transaction(s)
        a, b, c, d = (make_unit(s, slug) for slug in ("a", "b", "c", "d"))
        plain = make_product(s, a, {"per_use": 10})
        shared = make_product(s, a, {"per_use": 20})
        points.set_product_shares(s, shared, {a: 5000, c: 5000}, "test")
        for product in (plain, shared):
            order, _ = purchase.place_order(s, subscriber(b), RULES, product.name, "per_use",
                                            f"parties-{product.name}")
            entry = s.get(LogEntry, order.log_index)
            details = json.loads(entry.details)
            expected = certlog.party_units_of(s, "order", "b", details,
                                              details.get("co_owners", {}))
            assert json.loads(entry.parties) == expected
            assert set(expected) == ({"a", "b", "c"} if product is shared else {"a", "b"})
        assert "d" not in expected
        s.commit()
        check_ledger(s)


def test_the_same_key_racing_on_postgresql_is_one_order(postgres_session_factory):
    """Two transactions buy with the same key at once: the second's insert waits for the
    first's commit, then answers with the first's order (no 409, no second debit)."""
    factory = postgres_session_factory
    engine = factory.kw["bind"]
    with factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        name = make_product(s, a, {"per_use": 10}).name
        s.commit()
    answers: list = []
    with factory() as first:
        write_transaction(first)
        first_id, created = purchase.buy(first, subscriber(b), RULES, name, "per_use",
                                         "race-key-1")

        def second_buyer() -> None:
            with factory() as second:
                write_transaction(second)
                answers.append(purchase.buy(second, subscriber(b), RULES, name, "per_use",
                                            "race-key-1"))
                second.commit()

        thread = threading.Thread(target=second_buyer)
        thread.start()
        with engine.connect() as watch:  # until the second insert waits on the first's row
            deadline = time.monotonic() + 30
            while not watch.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO orders%%'").scalar():
                assert time.monotonic() < deadline, "the second purchase never waited"
                watch.rollback()
        first.commit()
        thread.join(timeout=30)
    assert created and answers == [(first_id, False)]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 1
        assert points.unit_account(s, s.get(Unit, b.id)).balance == 500_00 - 10_00
        check_ledger(s)


def test_balance_moves_follow_the_lock_order():
    """By account id, the operator's account last (it is every purchase's hottest row); a
    debit is guarded, legs on one account are summed, and a zero move is no statement."""
    moves = points.BalanceMoves([(1, 60), (7, -1000), (3, 940), (5, 10), (5, -10)],
                                operator_id=1)
    statements = moves.statements()
    assert [params[1] for _, params in statements] == [3, 7, 1]
    assert [params[0] for _, params in statements] == [940, -1000, 60]
    assert "balance >= ?" in statements[1][0] and statements[1][1][2] == 1000
    assert all("balance >= ?" not in sql for sql, _ in (statements[0], statements[2]))


def test_the_purchase_answer_is_the_order_as_the_lists_show_it(session_factory):
    """The API answers a purchase with ledger_views.order_document (one driver statement);
    the order lists render the ORM object with order_json: both say the same."""
    with session_factory() as s:
        write_transaction(s)
        a, b = make_unit(s, "a"), make_unit(s, "b")
        product = make_product(s, a, {"per_use": 10, "month": 30})
        for plan in ("per_use", "month"):
            order_id, _ = purchase.buy(s, subscriber(b), RULES, product.name, plan,
                                       f"answer-{plan}")
            s.commit()
            assert ledger_views.order_document(s, order_id) == \
                ledger_views.order_json(s.get(Order, order_id))
            write_transaction(s)


def test_a_purchase_can_be_the_logs_first_entry(session_factory):
    """Accounts opened without a logged grant (a ledger older than the log): the purchase's
    entry creates the log's state row and lands at index 0."""
    with session_factory() as s:
        write_transaction(s)
        a, b = (Unit(slug=slug, name=slug, created_by="test") for slug in ("a", "b"))
        s.add_all([a, b])
        s.flush()
        s.add_all([Account(kind="unit", unit_id=u.id, balance=500_00) for u in (a, b)])
        product = make_product(s, a, {"per_use": 10})
        order, created = purchase.place_order(s, subscriber(b), RULES, product.name,
                                              "per_use", "first-entry")
        s.commit()
        assert created and order.log_index == 0
        assert s.get(LogState, 1).next_index == 1
        assert json.loads(s.get(LogEntry, 0).details)["order"] == order.id
