"""The federated economy on the real databases (SQLite and PostgreSQL): projects over data
products (joining needs the ``federated`` entitlement or owning the product), the reward pool
in escrow, the contribution measure and its certified split paid in one multi-leg transfer,
and a co-owned model whose sales revenue splits exactly by the certified shares. Rounds run
through the real round functions (no crypto here: the split's crypto is in
test_fl_contribution.py). Bad input gets a 4xx naming the field with the ledger untouched."""

from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import func, select
from test_points import check_ledger, make_unit

from marketplace_ext import certlog, ledger_views, points, purchase
from marketplace_ext.auth import SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import Conflict, InvalidField, MarketError
from marketplace_ext.federated import coowned, economy, enrolment, keys, projects, rounds
from marketplace_ext.federated.orm import FLSettlement
from marketplace_ext.orm import (
    LedgerTransfer,
    LogEntry,
    Posting,
    Product,
    Unit,
    Version,
    write_transaction,
)

RULES = points.EconomyRules()
_names = itertools.count()


def publisher(unit: str) -> Caller:
    return Caller(f"pub-{unit}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), unit)


def subscriber(unit: str) -> Caller:
    return Caller(f"sub-{unit}", frozenset({SCOPE_SUBSCRIBE}), unit)


def make_data_product(s, owner: Unit, plans: dict[str, int] | None = None,
                      sharing=("federated", "download"), kind: str = "data") -> Product:
    """A data product on the shelf offering ``sharing``, as the catalogue leaves it."""
    name = f"fd{next(_names)}"
    product = Product(name=name, kind=kind, unit_id=owner.id, created_by="test")
    s.add(product)
    s.flush()
    manifest = {"name": name, "sharing": list(sharing),
                "plans": [{"type": t, "price": p} for t, p in (plans or {"month": 5}).items()]}
    version = Version(product_id=product.id, version="1.0.0", sha256="0" * 64, state="on_shelf",
                      title=name, summary="", tags="[]", manifest=json.dumps(manifest),
                      parameters="{}", files="[]", readme="", size=0, created_by="test")
    s.add(version)
    s.flush()
    product.current_version_id = version.id
    s.flush()
    s.refresh(product)
    return product


def open_project(s, blobs, paillier, model_b64, unit: str = "a", *, products=(), pool=0,
                 allow=("b", "c", "d"), quorum=3, n_rounds=1, measure="loo_weight"):
    body = {"name": f"fe-{next(_names)}-{unit}", "rounds": n_rounds, "quorum": quorum,
            "deadline_seconds": 600, "public_key": keys.public_key_to_json(paillier[0]),
            "model": model_b64, "allow_units": list(allow), "products": list(products),
            "pool": pool, "contribution_measure": measure}
    req = projects.parse_project_request(body)
    return projects.create_project(s, publisher(unit), req, blobs)


def run_rounds(s, project, weights: dict[str, int]) -> None:
    """Every round of ``project`` through the real round functions: one update per unit of
    ``weights`` (bytes stand in for ciphertexts: nothing here decrypts), then the aggregate."""
    rounds.start(s, publisher(project.unit.slug), project)
    for number in range(1, project.rounds + 1):
        for unit, weight in weights.items():
            req = rounds.check_update(s, publisher(unit), project, number, str(weight), "0",
                                      project.key_fingerprint)
            rounds.record_update(s, publisher(unit), project, req, f"{unit}{number}".ljust(64,
                                 "0"), 10)
        rnd = rounds.latest_round(s, project, number)
        if rnd.state == "open":  # fewer units than the quorum: the deadline closes it
            rounds._close(rnd, "deadline", rnd.deadline)
        job = rounds.aggregation_job(s, rnd.id)
        rounds.publish_aggregate(s, job, f"agg{number}".ljust(64, "0"), 10)
    assert project.state == "finished"


def post_loo(s, project, number: int, full: dict[str, float], loo: dict[str, dict[str, float]]):
    """Each evaluator's metrics: its AUC of the full model and of each leave-one-out model."""
    for evaluator, auc in full.items():
        rounds.post_metrics(s, publisher(evaluator), project, {
            "round": number,
            "metrics": {"auc": auc, **{f"loo.{u}": v for u, v in loo[evaluator].items()}}})


def ledger_snapshot(s) -> tuple:
    return (s.scalar(select(func.count()).select_from(LedgerTransfer)),
            s.scalar(select(func.count()).select_from(Posting)),
            tuple(sorted(check_ledger(s).items())))


@pytest.fixture
def world(session_factory):
    """Units a, b, c each with a data product offering federated; d owns nothing."""
    with session_factory() as s:
        write_transaction(s)
        units = {u: make_unit(s, u) for u in "abcde"}
        data = {u: make_data_product(s, units[u]).name for u in "abc"}
        s.commit()
    return data


def test_split_measure_gates_the_noisy_unit_and_sums_exactly():
    # c's updates make the model worse for both other evaluators: gated to zero
    evaluations = [(1, "a", {"auc": 0.90, "loo.b": 0.86, "loo.c": 0.93}),
                   (1, "b", {"auc": 0.88, "loo.a": 0.85, "loo.c": 0.91}),
                   (1, "c", {"auc": 0.80, "loo.a": 0.78, "loo.b": 0.77, "loo.c": 0.10})]
    deltas, counts = economy.loo_deltas(evaluations, ["a", "b", "c"])
    assert counts == {"a": 2, "b": 2, "c": 2}  # c's evaluation of itself is ignored
    assert deltas["c"] == pytest.approx(-0.03) and deltas["a"] == pytest.approx(0.025)
    shares = economy.shares_from({"a": 300, "b": 300, "c": 900}, deltas)
    assert shares["c"] == 0 and shares["a"] + shares["b"] == 10_000
    assert shares["a"] < shares["b"]  # b's removal costs more (0.04 against 0.03)
    # nobody measurable: the data weights alone; remainders by largest remainder
    only_weights = economy.shares_from({"a": 1, "b": 1, "c": 1}, {"a": None, "b": None,
                                                                   "c": None})
    assert sorted(only_weights.values()) == [3333, 3333, 3334]
    assert economy.shares_from({"a": 5}, {"a": -0.5}) == {}


def test_split_amount_is_exact_largest_remainder():
    assert points.split_amount(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert points.split_amount(5640, {"x": 4979, "y": 5021, "z": 0}) == \
        {"x": 2808, "y": 2832, "z": 0}
    for total in (0, 1, 7, 5639, 10**9 + 7):
        parts = points.split_amount(total, {"a": 3, "b": 7, "c": 11, "d": 0})
        assert sum(parts.values()) == total and parts["d"] == 0


def test_pool_split_and_co_owned_sales_end_to_end(session_factory, world, paillier, model_b64,
                                                   tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        project = open_project(s, blobs, paillier, model_b64, products=world.values(), pool=60)
        for u in "bc":
            enrolment.join(s, publisher(u), project, None)
        assert points.unit_account(s, project.unit).balance == 440_00
        run_rounds(s, project, {"a": 400, "b": 300, "c": 300})
        # c sent noise: both others see the model improve without it
        post_loo(s, project, 1, {"a": 0.90, "b": 0.91, "c": 0.80},
                 {"a": {"b": 0.87, "c": 0.93}, "b": {"a": 0.86, "c": 0.94},
                  "c": {"a": 0.5, "b": 0.5}})
        s.commit()
        estimate = economy.economy_json(s, publisher("b"), project)
        assert estimate["pool"]["held"] == "60.00" and estimate["estimate"]["shares"]["c"] == 0
        settlement = economy.settle(s, publisher("b"), project, RULES, {})
        s.commit()
        shares = json.loads(settlement.shares)
        assert shares["c"] == 0 and shares["a"] > 0 and shares["b"] > 0
        assert sum(shares.values()) == 10_000
        paid = json.loads(settlement.paid)
        assert settlement.fee == 360 and sum(paid.values()) == 60_00 - 360
        transfer = s.get(LedgerTransfer, settlement.transfer_id)
        assert transfer.kind == "fl_pool_split" and len(transfer.postings) == 4  # one transfer
        s.flush()
        entry = s.scalar(select(LogEntry).where(LogEntry.kind == "fl_split"))
        certified = json.loads(entry.details)
        assert certified["shares"] == shares and certified["measure"] == "loo_weight"
        assert certified["inputs"]["units"]["c"]["gated"] is True
        assert set(json.loads(entry.parties)) == {"a", "b", "c"}
        check_ledger(s)

        # the model, published as a co-owned tool product (the publishing hook's transaction)
        tool = make_data_product(s, project.unit, {"per_use": 17}, ("remote_run",), "tool")
        coowned.record_model_product(s, publisher("a"), project, tool.current_version, True)
        s.commit()
        before = {u: points.unit_account(s, s.scalar(select(Unit).where(Unit.slug == u))).balance
                  for u in "abcde"}
        order, _ = purchase.place_order(s, subscriber("d"), RULES, tool.name, "per_use",
                                      "fl-economy-order-1")
        s.commit()
        after = {u: points.unit_account(s, s.scalar(select(Unit).where(Unit.slug == u))).balance
                 for u in "abcde"}
        revenue = 17_00 - RULES.fee(17_00)
        got = {u: after[u] - before[u] for u in "abc"}
        assert got == points.split_amount(revenue, shares)
        assert sum(got.values()) == revenue and after["d"] - before["d"] == -17_00
        order_transfer = s.scalar(select(LedgerTransfer).where(LedgerTransfer.order_id ==
                                                               order.id))
        assert len(order_transfer.postings) == 4  # buyer, a, b, operator: c's 0 is no leg
        # each member's statement shows its own share of the sale
        for u in "ab":
            account = points.unit_account(s, s.scalar(select(Unit).where(Unit.slug == u)))
            row = ledger_views.statement(s, account, 5, 0)["transfers"][0]
            assert row["kind"] == "order" and row["centipoints"] == got[u]
        # a co-owner uses the model without buying it
        b = s.scalar(select(Unit).where(Unit.slug == "b"))
        assert points.check(s, b, tool, "remote_run") is None
        check_ledger(s)


def test_bad_input_is_refused_with_the_ledger_untouched(session_factory, world, paillier,
                                                        model_b64, tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    with session_factory() as s:
        write_transaction(s)
        before = ledger_snapshot(s)
        # a pool larger than the initiator's balance (500 points)
        with pytest.raises(points.InsufficientPoints) as e:
            open_project(s, blobs, paillier, model_b64, products=world.values(), pool=501)
        assert e.value.field == "pool" and e.value.status == 409
        s.rollback()
        write_transaction(s)
        assert ledger_snapshot(s) == before
        with pytest.raises(InvalidField) as e:
            open_project(s, blobs, paillier, model_b64, pool=-1)
        assert e.value.field == "pool"
        # a product that does not offer federated
        plain = make_data_product(s, s.scalar(select(Unit).where(Unit.slug == "a")),
                                  sharing=("download",))
        with pytest.raises(InvalidField) as e:
            open_project(s, blobs, paillier, model_b64, products=[plain.name])
        assert e.value.field == "products"
        s.rollback()
        write_transaction(s)

        project = open_project(s, blobs, paillier, model_b64, products=[world["a"], world["b"]],
                               pool=20)
        s.commit()
        write_transaction(s)
        before = ledger_snapshot(s)
        # joining without the entitlement (d owns none of the products and bought nothing)
        with pytest.raises(points.NoEntitlement) as e:
            enrolment.join(s, publisher("d"), project, None)
        assert e.value.field == "product" and e.value.status == 403
        # funding beyond the balance later on
        with pytest.raises(points.InsufficientPoints) as e:
            economy.fund_pool(s, publisher("a"), project, 481_00)
        assert e.value.field == "pool"
        s.rollback()
        write_transaction(s)
        # publishing a model of a project that has not finished
        with pytest.raises(Conflict) as e:
            coowned.check_publishable(s, publisher("a"), project)
        assert e.value.field == "project"
        # settling before the end
        with pytest.raises(Conflict) as e:
            economy.settle(s, publisher("a"), project, RULES, {})
        assert e.value.field == "project"
        assert ledger_snapshot(s) == before

        # with a federated plan of b's product, d may join
        purchase.place_order(s, subscriber("d"), RULES, world["b"], "month", "fl-econ-month-d")
        member, _ = enrolment.join(s, publisher("d"), project, None)
        enrolment.decide(s, publisher("a"), project, "d", {"decision": "approve"})
        enrolment.join(s, publisher("b"), project, None)
        run_rounds(s, project, {"a": 10, "b": 10, "d": 10})
        s.commit()
        write_transaction(s)
        before = ledger_snapshot(s)
        # shares that do not sum to the whole, or name a unit that sent nothing
        for bad in ({"a": 5000, "b": 4000, "d": 999}, {"a": 10_000, "e": 0}, {"a": "all"}, []):
            with pytest.raises(InvalidField) as e:
                economy.settle(s, publisher("a"), project, RULES, {"shares": bad})
            assert e.value.field == "shares"
        with pytest.raises(MarketError) as e:  # a partner does not submit shares
            economy.settle(s, publisher("b"), project, RULES, {"shares": {"b": 10_000}})
        assert e.value.field == "shares"
        with pytest.raises(Conflict) as e:  # finished, not settled: no shares own it yet
            coowned.check_publishable(s, publisher("b"), project)
        assert e.value.field == "project"
        s.rollback()
        write_transaction(s)
        assert ledger_snapshot(s) == before
        assert s.get(FLSettlement, project.id) is None

        # a submitted split that sums is certified as such and paid exactly
        settled = economy.settle(s, publisher("a"), project, RULES,
                                 {"shares": {"a": 3334, "b": 3333, "d": 3333}})
        s.commit()
        assert settled.measure == "submitted"
        assert sum(json.loads(settled.paid).values()) == 20_00 - RULES.fee(20_00)
        assert certlog.fsck(s)["ok"]
        check_ledger(s)
