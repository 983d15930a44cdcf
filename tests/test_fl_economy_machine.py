"""A Hypothesis state machine over the federated economy, on SQLite and PostgreSQL: projects opened
with pools (some larger than the balance), further funding, projects run to the end with one
noisy partner or none, settlements (computed, submitted, or submitted wrongly), co-owned models
published and bought (never by a co-owner), projects cancelled (again and again: the pool comes
back once) or failed by the coordinator's sweep after their round stalled. The ledger must match
a simple model throughout: no point created or lost, every refusal leaving it untouched."""

from __future__ import annotations

import base64
import collections
import itertools
import json
from datetime import timedelta

import pytest
from helpers import save_model
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import select
from test_fl_economy import (
    make_data_product,
    open_project,
    post_loo,
    publisher,
    run_rounds,
    subscriber,
)
from test_points import check_ledger, make_unit

from marketplace_ext import dbutil, points, purchase
from marketplace_ext.auth import SCOPE_APPROVE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import MarketError
from marketplace_ext.federated import coowned, economy, ending, enrolment, keys, rounds
from marketplace_ext.federated.client import bundle_zip
from marketplace_ext.federated.orm import FLProject
from marketplace_ext.orm import Account, Unit, make_engine, make_session_factory, write_transaction

RULES = points.EconomyRules()
OPERATOR = Caller("operator", frozenset({SCOPE_APPROVE}), None)
SLUGS = ("a", "b", "c", "d")
_KEY: list = []
_keys = itertools.count()


def _paillier():
    if not _KEY:
        _KEY.append(keys.generate_paillier_keypair(2048))
    return _KEY[0]


class EconomyMachine(RuleBasedStateMachine):
    seen: collections.Counter = collections.Counter()  # what the runs reached
    db_url: str = ""
    tmp: str = ""
    model_b64: str = ""

    def __init__(self):
        super().__init__()
        dbutil.upgrade(self.db_url)
        self.engine = make_engine(self.db_url)
        self.factory = make_session_factory(self.engine)
        self.blobs = BlobStore(f"{self.tmp}/blobs")
        self.model = {u: RULES.initial_grant for u in SLUGS} | {"operator": 0}
        self.projects: dict[int, dict] = {}  # id -> {pool, state, members, product}
        with self.factory() as s:
            write_transaction(s)
            units = {u: make_unit(s, u) for u in SLUGS}
            self.data = {u: make_data_product(s, units[u]).name for u in "abc"}
            s.commit()

    def teardown(self):
        self.engine.dispose()

    def _do(self, action):
        with self.factory() as s:
            write_transaction(s)
            try:
                result = action(s)
            except MarketError as e:
                s.rollback()
                return e
            s.commit()
            return result

    @rule(unit=st.sampled_from("abc"), pool=st.integers(0, 700), partners=st.integers(1, 2))
    def open(self, unit, pool, partners):
        others = [u for u in "abc" if u != unit][:partners]

        def act(s):
            project = open_project(s, self.blobs, _paillier(), self.model_b64, unit,
                                   products=self.data.values(), pool=pool, allow=others,
                                   quorum=1 + partners)
            for u in others:
                enrolment.join(s, publisher(u), project, None)
            return project.id

        result = self._do(act)
        if pool * 100 > self.model[unit]:
            assert isinstance(result, points.InsufficientPoints) and result.field == "pool"
            self.seen["pool_refused"] += 1
            return
        assert isinstance(result, int), result
        self.model[unit] -= pool * 100
        self.projects[result] = {"pool": pool * 100, "state": "enrolling", "unit": unit,
                                 "members": [unit, *others], "product": None}

    @precondition(lambda self: self.projects)
    @rule(data=st.data(), amount=st.integers(1, 300))
    def fund(self, data, amount):
        pid = data.draw(st.sampled_from(sorted(self.projects)))
        m = self.projects[pid]
        result = self._do(lambda s: economy.fund_pool(s, publisher(m["unit"]),
                                                      s.get(FLProject, pid), amount * 100))
        if m["state"] in ("settled", "cancelled", "failed"):
            assert isinstance(result, MarketError) and result.field == "project"
        elif amount * 100 > self.model[m["unit"]]:
            assert isinstance(result, points.InsufficientPoints) and result.field == "pool"
        else:
            assert not isinstance(result, MarketError), result
            self.model[m["unit"]] -= amount * 100
            m["pool"] += amount * 100

    @precondition(lambda self: any(m["state"] == "enrolling" for m in self.projects.values()))
    @rule(data=st.data(), noisy=st.booleans())
    def finish(self, data, noisy):
        pid = data.draw(st.sampled_from(sorted(p for p, m in self.projects.items()
                                               if m["state"] == "enrolling")))
        m = self.projects[pid]
        weights = {u: data.draw(st.integers(1, 500)) for u in m["members"]}

        def act(s):
            project = s.get(FLProject, pid)
            run_rounds(s, project, weights)
            if len(m["members"]) == 3:
                bad = m["members"][-1] if noisy else None
                full = {u: 0.8 for u in m["members"]}
                loo = {e: {u: (0.85 if u == bad else 0.78) for u in m["members"] if u != e}
                       for e in m["members"]}
                post_loo(s, project, 1, full, loo)

        assert self._do(act) is None
        m["state"] = "finished"

    @precondition(lambda self: self.projects)
    @rule(data=st.data(), by_operator=st.booleans())
    def cancel(self, data, by_operator):
        pid = data.draw(st.sampled_from(sorted(self.projects)))
        m = self.projects[pid]
        caller = OPERATOR if by_operator else publisher(m["unit"])
        result = self._do(lambda s: ending.cancel(s, caller, s.get(FLProject, pid)))
        if m["state"] in ("finished", "settled"):
            assert isinstance(result, MarketError) and result.field == "project"
            return
        assert not isinstance(result, MarketError), result
        settlement, made = result
        assert made == (m["state"] == "enrolling"), (made, m)
        if made:
            assert json.loads(settlement.paid) == ({m["unit"]: m["pool"]} if m["pool"] else {})
            self.model[m["unit"]] += m["pool"]
            self.seen["refund" if m["pool"] else "cancel"] += 1
            m.update(state="cancelled", pool=0)
        else:
            self.seen["cancel_again"] += 1

    @precondition(lambda self: any(m["state"] == "enrolling" for m in self.projects.values()))
    @rule(data=st.data())
    def stall(self, data):
        pid = data.draw(st.sampled_from(sorted(p for p, m in self.projects.items()
                                               if m["state"] == "enrolling")))
        m = self.projects[pid]

        def act(s):
            project = s.get(FLProject, pid)
            rounds.start(s, publisher(m["unit"]), project)
            ended = []
            for _ in range(ending.MAX_VOID_ATTEMPTS):  # nobody sends an update
                late = rounds.latest_round(s, project, 1).deadline + timedelta(seconds=1)
                rounds.close_expired(s, late)
                ended += ending.sweep_stalled(s, late)
            return ended

        assert self._do(act) == [pid]
        self.model[m["unit"]] += m["pool"]
        self.seen["failed"] += 1
        m.update(state="failed", pool=0)

    @precondition(lambda self: self.projects)
    @rule(data=st.data(), how=st.sampled_from(["computed", "submitted", "bad"]))
    def settle(self, data, how):
        pid = data.draw(st.sampled_from(sorted(self.projects)))
        m = self.projects[pid]
        body = {}
        if how != "computed":
            first, *rest = m["members"]
            body = {"shares": {first: 10_000 - (1 if how == "bad" else 0),
                               **{u: 0 for u in rest}}}
        result = self._do(lambda s: economy.settle(s, publisher(m["unit"]),
                                                   s.get(FLProject, pid), RULES, body))
        if m["state"] != "finished":
            assert isinstance(result, MarketError) and result.field == "project"
            return
        if how == "bad":
            assert isinstance(result, MarketError) and result.field == "shares"
            return
        assert not isinstance(result, MarketError), result
        paid = json.loads(result.paid)
        shares = json.loads(result.shares)
        if m["pool"]:
            if sum(shares.values()) == 10_000:
                assert result.fee == RULES.fee(m["pool"])
                assert paid == points.split_amount(m["pool"] - result.fee, shares)
            else:
                assert paid == {m["unit"]: m["pool"]} and result.fee == 0
        assert sum(paid.values()) + result.fee == m["pool"]
        self.seen["split" if result.transfer_id and result.fee else "settle"] += 1
        for u, amount in paid.items():
            self.model[u] += amount
        self.model["operator"] += result.fee
        m.update(state="settled", pool=0, shares=shares)

    @precondition(lambda self: any(m["state"] == "settled" and m["product"] is None
                                   for m in self.projects.values()))
    @rule(data=st.data(), price=st.integers(1, 90))
    def publish(self, data, price):
        pid = data.draw(st.sampled_from(sorted(p for p, m in self.projects.items()
                                               if m["state"] == "settled"
                                               and m["product"] is None)))
        m = self.projects[pid]

        def act(s):
            unit = s.scalar(select(Unit).where(Unit.slug == m["unit"]))
            tool = make_data_product(s, unit, {"per_use": price}, ("remote_run",), "tool")
            coowned.record_model_product(s, publisher(m["unit"]), s.get(FLProject, pid),
                                         tool.current_version, True)
            return tool.name

        result = self._do(act)
        if not any(m["shares"].values()):
            assert isinstance(result, MarketError) and result.field == "project"
            m["product"] = False
            return
        assert isinstance(result, str), result
        m["product"], m["price"] = result, price * 100

    @precondition(lambda self: any(m["product"] for m in self.projects.values()))
    @rule(data=st.data(), buyer=st.sampled_from(SLUGS))
    def buy(self, data, buyer):
        pid = data.draw(st.sampled_from(sorted(p for p, m in self.projects.items()
                                               if m["product"])))
        m = self.projects[pid]
        key = f"fl-machine-{next(_keys)}"
        result = self._do(lambda s: purchase.place_order(s, subscriber(buyer), RULES,
                                                       m["product"], "per_use", key))
        if buyer == m["unit"] or m["shares"].get(buyer):  # its own, or co-owned: refused
            assert isinstance(result, MarketError) and result.field == "product"
            self.seen["co_owner_refused" if buyer != m["unit"] else "owner_refused"] += 1
            return
        if m["price"] > self.model[buyer]:
            assert isinstance(result, points.InsufficientPoints)
            return
        assert not isinstance(result, MarketError), result
        fee = RULES.fee(m["price"])
        split = points.split_amount(m["price"] - fee,
                                    {u: bp for u, bp in m["shares"].items() if bp})
        self.seen["co_owned_sale"] += 1
        self.model[buyer] -= m["price"]
        for u, amount in split.items():
            self.model[u] += amount
        self.model["operator"] += fee

    @invariant()
    def conservation(self):
        with self.factory() as s:
            check_ledger(s)
            for u in SLUGS:
                unit = s.scalar(select(Unit).where(Unit.slug == u))
                assert points.unit_account(s, unit).balance == self.model[u], u
            assert points.operator_account(s).balance == self.model["operator"]
            held = 0
            for pid, m in self.projects.items():
                pool, now = economy.pool_of(s, s.get(FLProject, pid))
                assert now == m["pool"], (pid, m)
                if pool is not None:
                    assert s.get(Account, pool.account_id).kind == "escrow"
                held += now
            total = sum(self.model[u] for u in SLUGS) + self.model["operator"] + held
            assert total == len(SLUGS) * RULES.initial_grant


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fl_economy_state_machine(kind, tmp_path, request):
    counter = itertools.count()
    model_b64 = base64.b64encode(bundle_zip(save_model(tmp_path / "model"))).decode()

    def fresh_url() -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/m{next(counter)}.sqlite"
        from conftest import _new_postgres_db

        return _new_postgres_db(request.getfixturevalue("postgres_server"))

    class Machine(EconomyMachine):
        def __init__(self):
            self.db_url = fresh_url()
            self.tmp = str(tmp_path / f"b{next(counter)}")
            self.model_b64 = model_b64
            super().__init__()

    Machine.TestCase.settings = settings(
        max_examples=10 if kind == "sqlite" else 5, stateful_step_count=25, deadline=None,
        derandomize=True, database=None,  # the same runs each time: the reach check is stable
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    EconomyMachine.seen.clear()
    Machine.TestCase().runTest()
    # the runs reached pools refused and pools split. A co-owned sale needs a settled project
    # with submitted shares, its model published and a buyer in one run: reached in most runs
    # but not all (a full suite's run of 10 examples missed it), so it is not required here;
    # test_fl_economy.py's end-to-end test sells a co-owned model every time
    print(f"\n{kind}: reached {dict(EconomyMachine.seen)}")
    assert {"pool_refused", "split", "refund", "failed"} <= set(EconomyMachine.seen), \
        EconomyMachine.seen
