"""A pool is never stuck, on SQLite and PostgreSQL: a project that never finishes (cancelled by
its initiator or an operator, or failed by the coordinator's sweep after its round was void
three times) gives the whole pool back to the initiator's unit in one certified transfer,
exactly once, also under concurrent calls. Also: the contribution measure is the data weight
unless the project opted in to leave-one-out, and a co-owner neither buys nor rates the model
it co-owns (the ledger untouched)."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import test_fl_economy
from sqlalchemy import func, select
from test_fl_economy import (
    ledger_snapshot,
    make_data_product,
    open_project,
    post_loo,
    publisher,
    run_rounds,
    subscriber,
)
from test_points import check_ledger

from marketplace_ext import log_fsck, points, purchase
from marketplace_ext.auth import SCOPE_APPROVE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import Conflict, Forbidden, MarketError
from marketplace_ext.exchange import ratings
from marketplace_ext.federated import coowned, economy, ending, enrolment, loo, rounds
from marketplace_ext.federated.orm import FLProject, FLRound, FLSettlement
from marketplace_ext.orm import LedgerTransfer, LogEntry, Unit, write_transaction

RULES = points.EconomyRules()
world = test_fl_economy.world  # units on a migrated database (session_factory: conftest.py)
OPERATOR = Caller("op", frozenset({SCOPE_APPROVE}), None)


def balance(s, slug: str) -> int:
    return points.unit_account(s, s.scalar(select(Unit).where(Unit.slug == slug))).balance


def refunds(s, project_id: int) -> list[LedgerTransfer]:
    return list(s.scalars(select(LedgerTransfer).where(
        LedgerTransfer.kind == "fl_pool_refund",
        LedgerTransfer.memo.contains(f" {s.get(FLProject, project_id).name} "))))


def test_cancel_refunds_the_pool_exactly_once(session_factory, world, paillier, model_b64,
                                              tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, products=world.values(), pool=60)
        for u in "bc":
            enrolment.join(s, publisher(u), project, None)
        economy.fund_pool(s, publisher("a"), project, 15_00)
        rounds.start(s, publisher("a"), project)
        req = rounds.check_update(s, publisher("b"), project, 1, "10", "0",
                                  project.key_fingerprint)
        rounds.record_update(s, publisher("b"), project, req, "b1".ljust(64, "0"), 10)
        s.commit()
        write_transaction(s)
        assert balance(s, "a") == 425_00
        before = ledger_snapshot(s)
        # a partner, a subscriber of the initiator's unit, an outsider: refused, nothing moves
        for caller, field in ((publisher("b"), "unit"), (subscriber("a"), None),
                              (publisher("d"), "unit")):
            with pytest.raises(MarketError) as e:
                ending.cancel(s, caller, project)
            assert e.value.status == 403 and (field is None or e.value.field == field)
        s.rollback()
        write_transaction(s)
        assert ledger_snapshot(s) == before

        settlement, made = ending.cancel(s, publisher("a"), project, "the data changed")
        s.commit()
        assert made and project.state == "cancelled"
        assert balance(s, "a") == 500_00  # the whole pool, no fee: 60 + 15 points
        assert economy.pool_of(s, project)[1] == 0
        transfer = s.get(LedgerTransfer, settlement.transfer_id)
        assert transfer.kind == "fl_pool_refund" and len(transfer.postings) == 2
        assert settlement.measure == "refund" and json.loads(settlement.paid) == {"a": 75_00}
        entry = s.scalar(select(LogEntry).where(LogEntry.idx == settlement.log_index))
        certified = json.loads(entry.details)
        assert entry.kind == "fl_split" and certified["measure"] == "refund"
        assert certified["state"] == "cancelled" and certified["pool"] == "75.00"
        assert certified["reason"] == "the data changed" and certified["transfer"] == transfer.id
        rnd = rounds.latest_round(s, project, 1)
        assert rnd.state == "void" and rnd.close_reason == "cancelled"

        # once: again (the initiator, an operator) returns the same record and moves nothing
        write_transaction(s)
        check_ledger(s)
        before = ledger_snapshot(s)
        for caller in (publisher("a"), OPERATOR):
            again, made = ending.cancel(s, caller, project)
            assert not made and again.project_id == settlement.project_id
            assert again.transfer_id == settlement.transfer_id
        # nothing else happens to a cancelled project; the ledger is untouched
        for act in (lambda: economy.fund_pool(s, publisher("a"), project, 1_00),
                    lambda: economy.settle(s, publisher("b"), project, RULES, {}),
                    lambda: coowned.check_publishable(s, publisher("a"), project),
                    lambda: enrolment.join(s, publisher("d"), project, None),
                    lambda: rounds.check_update(s, publisher("c"), project, 1, "10", "0",
                                                project.key_fingerprint)):
            with pytest.raises(Conflict) as e:
                act()
            assert e.value.field in ("project", "round"), e.value
        s.rollback()
        assert ledger_snapshot(s) == before
        assert len(refunds(s, project.id)) == 1


def test_operator_cancels_and_a_finished_project_is_settled_not_cancelled(
        session_factory, world, paillier, model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        enrolling = open_project(s, blobs, paillier, model_b64, pool=30)
        answer, made = ending.cancel(s, OPERATOR, enrolling)
        s.commit()
        assert made and ending.ending_json(answer)["state"] == "cancelled"
        assert ending.ending_json(answer)["reason"] == "cancelled by an operator"
        # without a pool: cancelled all the same, certified, no transfer
        write_transaction(s)
        assert balance(s, "a") == 500_00
        empty = open_project(s, blobs, paillier, model_b64)
        none, _ = ending.cancel(s, publisher("a"), empty)
        s.commit()
        assert none.transfer_id is None and json.loads(none.paid) == {}
        assert none.log_index is not None

        write_transaction(s)
        done = open_project(s, blobs, paillier, model_b64, pool=20, allow=("b",), quorum=2)
        enrolment.join(s, publisher("b"), done, None)
        run_rounds(s, done, {"a": 5, "b": 5})
        s.commit()
        with pytest.raises(Conflict) as e:
            ending.cancel(s, publisher("a"), done)
        assert e.value.field == "project"
        s.rollback()
        check_ledger(s)


def test_a_stalled_project_fails_and_its_pool_comes_back(session_factory, world, paillier,
                                                          model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, pool=40, allow=("b",), quorum=2)
        enrolment.join(s, publisher("b"), project, None)
        rounds.start(s, publisher("a"), project)
        s.commit()
        pid = project.id
    coordinator = rounds.Coordinator(session_factory, blobs, lease_seconds=None)
    for attempt in range(1, ending.MAX_VOID_ATTEMPTS + 1):
        with session_factory() as s:
            assert s.get(FLProject, pid).state == "running", attempt
            deadline = rounds.latest_round(s, s.get(FLProject, pid), 1).deadline
        coordinator.tick(deadline + timedelta(seconds=1))  # nobody sent an update: void
    with session_factory() as s:
        write_transaction(s)
        project = s.get(FLProject, pid)
        assert project.state == "failed" and balance(s, "a") == 500_00
        attempts = s.scalars(select(FLRound).where(FLRound.project_id == pid)
                             .order_by(FLRound.attempt)).all()
        assert [r.state for r in attempts] == ["void"] * (ending.MAX_VOID_ATTEMPTS + 1)
        assert attempts[-1].close_reason == "failed"
        settlement = s.get(FLSettlement, pid)
        assert json.loads(settlement.inputs)["state"] == "failed"
        assert settlement.decided_by == "marketplace" and len(refunds(s, pid)) == 1
        # the sweep again, and the initiator's cancel: nothing more moves
        assert ending.sweep_stalled(s) == []
        _, made = ending.cancel(s, publisher("a"), project)
        s.commit()
        assert not made and len(refunds(s, pid)) == 1
        assert log_fsck.fsck(s)["ok"]
        check_ledger(s)


def test_concurrent_cancels_and_funding_refund_exactly_once(session_factory, world, paillier,
                                                             model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, pool=50)
        s.commit()
        pid = project.id
    start = threading.Barrier(4)
    outcomes: list = []

    def run(act):
        start.wait()
        with session_factory() as s:
            write_transaction(s)
            try:
                result = act(s, s.get(FLProject, pid))
                s.commit()
                outcomes.append(result)
            except MarketError as e:
                s.rollback()
                outcomes.append(e)

    acts = [lambda s, p: ending.cancel(s, publisher("a"), p)[1],
            lambda s, p: ending.cancel(s, OPERATOR, p)[1],
            lambda s, p: ending.cancel(s, publisher("a"), p)[1],
            lambda s, p: economy.fund_pool(s, publisher("a"), p, 7_00) and "funded"]
    threads = [threading.Thread(target=run, args=(a,)) for a in acts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(str, outcomes)).count("True") == 1, outcomes
    with session_factory() as s:
        assert len(refunds(s, pid)) == 1
        assert balance(s, "a") == 500_00  # the funding came before the refund or was refused
        assert economy.pool_of(s, s.get(FLProject, pid))[1] == 0
        assert s.scalar(select(func.count()).select_from(FLSettlement)
                        .where(FLSettlement.project_id == pid)) == 1
        check_ledger(s)


def test_the_measure_is_the_data_weight_unless_the_project_opts_in(
        session_factory, world, paillier, model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, pool=60, measure="weight")
        assert project.contribution_measure == "weight"
        for u in "bc":
            enrolment.join(s, publisher(u), project, None)
        run_rounds(s, project, {"a": 400, "b": 300, "c": 300})
        # no leave-one-out sums: a member asking for one is refused
        with pytest.raises(Conflict) as e:
            loo.loo_job(s, publisher("b"), project, 1, "c")
        assert e.value.field == "project"
        # evaluations posted anyway do not count: the data weights alone
        post_loo(s, project, 1, {"a": 0.9, "b": 0.9, "c": 0.8},
                 {"a": {"b": 0.8, "c": 0.95}, "b": {"a": 0.8, "c": 0.95},
                  "c": {"a": 0.5, "b": 0.5}})
        settled = economy.settle(s, publisher("b"), project, RULES, {})
        s.commit()
        assert settled.measure == "weight"
        assert json.loads(settled.shares) == {"a": 4000, "b": 3000, "c": 3000}
        assert json.loads(settled.inputs)["units"]["c"]["gated"] is False
        with pytest.raises(MarketError) as e:
            open_project(s, blobs, paillier, model_b64, measure="shapley")
        assert e.value.field == "contribution_measure" and e.value.status == 400


def test_a_co_owner_neither_buys_nor_rates_its_model(session_factory, world, paillier,
                                                     model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, pool=10)
        for u in "bc":
            enrolment.join(s, publisher(u), project, None)
        run_rounds(s, project, {"a": 1, "b": 1, "c": 1})
        economy.settle(s, publisher("a"), project, RULES,
                       {"shares": {"a": 5000, "b": 5000, "c": 0}})
        tool = make_data_product(s, project.unit, {"per_use": 9}, ("remote_run",), "tool")
        coowned.record_model_product(s, publisher("a"), project, tool.current_version, True)
        s.commit()
        write_transaction(s)
        before = ledger_snapshot(s)
        for buyer in "ab":  # the publishing unit, and a co-owner that did not publish it
            with pytest.raises(Forbidden) as e:
                purchase.place_order(s, subscriber(buyer), RULES, tool.name, "per_use",
                                   f"co-owner-{buyer}-1")
            assert e.value.field == "product" and e.value.status == 403
            with pytest.raises(Forbidden) as e:
                ratings.rate(s, subscriber(buyer), tool.name, None, 5, "excellent")
            assert e.value.field == "product"
        b = s.scalar(select(Unit).where(Unit.slug == "b"))
        found = ratings.eligibility(s, subscriber("b"), tool, tool.current_version)
        assert not found.allowed and "co-owns" in found.reason
        assert points.check(s, b, tool, "remote_run") is None  # it uses the model freely
        s.rollback()
        assert ledger_snapshot(s) == before
        # c's certified share is 0: it is no co-owner, and buys like anyone else
        order, created = purchase.place_order(s, subscriber("c"), RULES, tool.name, "per_use",
                                            "co-owner-c-1")
        s.commit()
        assert created and order.price == 9_00
        check_ledger(s)
