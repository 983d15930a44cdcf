"""Group commit on SQLite (``write_batches.py``): purchases queued together commit as one
transaction, a failing one is rolled back alone, a failed commit writes nothing, and the
transparency log stays dense through all of it."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from test_points import RULES, check_ledger, make_product, make_unit

from marketplace_ext import certlog, ledger_views, points, purchase
from marketplace_ext.auth import SCOPE_SUBSCRIBE, Caller
from marketplace_ext.executors import NamedExecutors
from marketplace_ext.orm import (
    LogEntry,
    Order,
    make_engine,
    make_session_factory,
    write_transaction,
)
from marketplace_ext.write_batches import WriteBatcher

#: seconds any single step may take on a loaded machine (a deadline, never a measurement)
DEADLINE = 60.0


@pytest.fixture
def shop(sqlite_session_factory):
    factory = sqlite_session_factory
    with factory() as s:
        write_transaction(s)
        seller = make_unit(s, "seller")
        buyers = [make_unit(s, f"buyer{i}").slug for i in range(3)]
        product = make_product(s, seller, {"per_use": 10}).name
        s.commit()
    batcher = WriteBatcher(factory, max_batch=32)
    yield factory, batcher, buyers, product
    batcher.close()


def buy(session, unit: str, product: str, key: str) -> dict:
    buyer = Caller(name=f"buyer-of-{unit}", scopes=frozenset({SCOPE_SUBSCRIBE}), unit=unit)
    order, _ = purchase.place_order(session, buyer, RULES, product, "per_use", key)
    return ledger_views.order_json(order)


def log_indices(session) -> list[int]:
    return list(session.scalars(select(LogEntry.idx).order_by(LogEntry.idx)))


def test_purchases_queued_together_commit_as_one_batch(shop):
    factory, batcher, buyers, product = shop
    held, release = threading.Event(), threading.Event()

    def first(session):  # keeps the batcher busy while the others queue up behind it
        held.set()
        assert release.wait(DEADLINE)
        return buy(session, buyers[0], product, "first")

    futures = [batcher.submit(first)]
    assert held.wait(DEADLINE)
    futures += [batcher.submit(buy, buyers[n % 3], product, f"k{n}") for n in range(20)]
    release.set()
    orders = [f.result(timeout=DEADLINE) for f in futures]

    # the 20 queued purchases went in one transaction: two commits for 21 purchases
    assert (batcher.batches, batcher.works) == (2, 21)
    assert len({o["id"] for o in orders}) == 21
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 21
        check_ledger(s)
        indices = log_indices(s)
        assert indices == list(range(len(indices)))  # dense
        assert {o["log_index"] for o in orders} <= set(indices)


def test_a_failing_purchase_is_rolled_back_alone(shop):
    """The middle work of a batch appends a log entry and then fails before flushing it: its
    savepoint and its entry go, its caller gets the error, its neighbours commit."""
    factory, batcher, buyers, product = shop
    held, release = threading.Event(), threading.Event()
    with factory() as s:
        before = len(log_indices(s))

    def first(session):
        held.set()
        assert release.wait(DEADLINE)
        return buy(session, buyers[0], product, "a")

    def fails_after_appending(session):
        certlog.append(session, "order", "mallory", buyers[1], "order:none", product=product)
        raise points.InsufficientPoints("refused after its log entry was appended", "plan")

    futures = [batcher.submit(first)]
    assert held.wait(DEADLINE)
    futures.append(batcher.submit(fails_after_appending))
    futures.append(batcher.submit(buy, buyers[2], product, "c"))
    release.set()

    assert futures[0].result(timeout=DEADLINE)["unit"] == buyers[0]
    with pytest.raises(points.InsufficientPoints):
        futures[1].result(timeout=DEADLINE)
    assert futures[2].result(timeout=DEADLINE)["unit"] == buyers[2]
    with factory() as s:
        check_ledger(s)
        assert s.scalar(select(func.count()).select_from(Order)) == 2
        indices = log_indices(s)
        assert indices == list(range(before + 2))  # dense, and the failed entry is not there
        actors = set(s.scalars(select(LogEntry.actor).where(LogEntry.idx >= before)))
        assert "mallory" not in actors


def test_a_failed_commit_fails_every_purchase_of_the_batch(shop):
    factory, batcher, buyers, product = shop
    held, release = threading.Event(), threading.Event()

    def first(session):  # batch 1, alone; the two below queue up as batch 2
        held.set()
        assert release.wait(DEADLINE)
        return buy(session, buyers[0], product, "w")

    def sabotage_then_buy(session):
        # a row the database accepts now and refuses at COMMIT (a deferred foreign key to a
        # transfer that does not exist): the batch's commit fails, as on an I/O error
        session.execute(text("PRAGMA defer_foreign_keys = ON"))
        session.execute(text("INSERT INTO postings (transfer_id, account_id, amount) "
                             "VALUES (999999, 1, 0)"))
        return buy(session, buyers[1], product, "x")

    futures = [batcher.submit(first)]
    assert held.wait(DEADLINE)
    with factory() as s:
        before = len(log_indices(s))
    futures += [batcher.submit(sabotage_then_buy), batcher.submit(buy, buyers[2], product, "y")]
    release.set()
    assert futures[0].result(timeout=DEADLINE)["unit"] == buyers[0]
    for f in futures[1:]:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            f.result(timeout=DEADLINE)
    with factory() as s:
        assert [o.idempotency_key for o in s.scalars(select(Order))] == ["w"]
        assert len(log_indices(s)) == before + 1  # batch 1's entry only
        check_ledger(s)
    # and the batcher goes on with the next purchase
    assert batcher.submit(buy, buyers[2], product, "z").result(timeout=DEADLINE)["id"]


def test_sqlite_batches_and_postgresql_does_not(shop):
    factory = shop[0]
    sizes = {"db": 1, "io": 1, "spark": 1, "log": 1}
    pools = NamedExecutors(sizes, factory)
    assert pools.batcher is not None
    pools.shutdown()
    one_by_one = NamedExecutors(sizes, factory, write_batch=1)
    assert one_by_one.batcher is None
    one_by_one.shutdown()
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # (never connected)
    on_postgres = NamedExecutors(sizes, make_session_factory(engine))
    assert on_postgres.batcher is None
    on_postgres.shutdown()
    engine.dispose()


def test_the_same_key_twice_in_one_batch_is_one_order(shop):
    factory, batcher, buyers, product = shop
    held, release = threading.Event(), threading.Event()
    key = uuid.uuid4().hex

    def first(session):
        held.set()
        assert release.wait(DEADLINE)
        return buy(session, buyers[0], product, key)

    futures = [batcher.submit(first)]
    assert held.wait(DEADLINE)
    futures.append(batcher.submit(buy, buyers[0], product, key))
    release.set()
    a, b = (f.result(timeout=DEADLINE) for f in futures)
    assert a["id"] == b["id"]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 1
        check_ledger(s)
