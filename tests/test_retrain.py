"""Further training (marketplace_ext/retrain.py): a subscriber unit retrains a tool that offers it
into a derived model private to its unit, callable through predict, its lineage certified.

The domain tests run on SQLite and PostgreSQL with the transformer-overload-prediction bundle
of the catalogue; the end-to-end test trains it for real (papermill in the sandbox, on the
bundle's sample since no platform is set) and calls both the original and the derived model in
warm predict kernels."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import sandbox_root

from marketplace_ext import certlog, dbutil, points, purchase, remote_call, retrain
from marketplace_ext.auth import SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.bundle import TEMPLATES_DIR, canonical_archive, load_bundle, validate_dir
from marketplace_ext.errors import Conflict, InvalidField, NotFound
from marketplace_ext.orm import (
    Entitlement,
    LogEntry,
    Order,
    Product,
    Run,
    Unit,
    Version,
    make_engine,
    make_session_factory,
    write_transaction,
)
from marketplace_ext.predict import PredictPool
from marketplace_ext.remote_run import bundle_for
from marketplace_ext.retrain_orm import DerivedModel
from marketplace_ext.runner import Runner

pytest_plugins = ["sandbox_helpers"]

TOOL = TEMPLATES_DIR / "catalogue" / "transformer-overload-prediction"
RULES = points.EconomyRules()


def caller(unit: str, name: str | None = None) -> Caller:
    return Caller(name=name or f"subscriber-{unit}", scopes=frozenset({SCOPE_SUBSCRIBE}),
                  unit=unit)


def setup_market(sf, blobs: BlobStore, bundle_dir: Path = TOOL) -> str:
    """Units a (the publisher), b and c; the tool on the shelf, as approval leaves it."""
    loaded = load_bundle(bundle_dir)
    data = canonical_archive(bundle_dir)
    with sf() as s:
        write_transaction(s)
        units = {}
        for slug in "abc":
            units[slug] = Unit(slug=slug, name=slug.upper(), created_by="test")
            s.add(units[slug])
            s.flush()
            points.open_account(s, units[slug], RULES, "test")
        name = loaded.manifest["name"]
        product = Product(name=name, kind="tool", unit_id=units["a"].id, created_by="test")
        s.add(product)
        s.flush()
        version = Version(product_id=product.id, version="1.0.0", sha256=blobs.put(data),
                          state="on_shelf", title="t", summary="", tags="[]",
                          manifest=json.dumps(loaded.manifest),
                          parameters=json.dumps(loaded.parameters), files="[]", readme="",
                          size=len(data), created_by="test")
        s.add(version)
        s.flush()
        product.current_version_id = version.id
        s.commit()
    return name


@pytest.fixture
def market(db_url, tmp_path):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    sf = make_session_factory(engine)
    blobs = BlobStore(tmp_path / "blobs")
    yield sf, blobs, setup_market(sf, blobs)
    engine.dispose()


def order(sf, unit: str, product: str, plan: str, key: str) -> None:
    with sf() as s:
        write_transaction(s)
        purchase.place_order(s, caller(unit), RULES, product, plan, key)
        s.commit()


def submit(sf, unit: str, product: str, parameters: dict | None = None) -> tuple[int, int]:
    with sf() as s:
        write_transaction(s)
        derived, run = retrain.submit(s, caller(unit), product,
                                      {"parameters": parameters or {}}, 600, 3600)
        s.commit()
        return derived.id, run.id


def end_run(sf, blobs: BlobStore, run_id: int, status: str, artifacts: dict[str, bytes]) -> None:
    """What the runner records when a run ends, with its on_finished (retrain.finish)."""
    with sf() as s:
        write_transaction(s)
        run = s.get(Run, run_id)
        run.status = status
        run.artifacts = json.dumps({k: blobs.put(v) for k, v in artifacts.items()})
        retrain.finish(s, blobs, run)
        s.commit()


def zip_files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_lineage_privacy_refund_and_the_call_plan(market):
    sf, blobs, name = market
    order(sf, "b", name, "month", "b-month-0001")
    # the training switch is the tool's to set: turning it off is refused, naming it
    with sf() as s, pytest.raises(InvalidField) as e:
        write_transaction(s)
        retrain.submit(s, caller("b"), name, {"parameters": {"retrain": False}}, 600, 3600)
    assert e.value.field == "parameters.retrain"
    with sf() as s, pytest.raises(InvalidField) as e:
        write_transaction(s)
        retrain.submit(s, caller("b"), name, {"parameters": {"horizon": "soon"}}, 600, 3600)
    assert e.value.field.startswith("parameters")

    derived_id, run_id = submit(sf, "b", name, {"horizon": 3})
    with sf() as s:
        run = s.get(Run, run_id)
        assert run.mode == "retrain" and run.status == "queued"
        assert json.loads(run.parameters) == {"horizon": 3, "retrain": True}
        assert s.get(DerivedModel, derived_id).state == "training"
    model = json.dumps({"horizon": 3, "weights": [1.0]}).encode()
    digest = {"table": "transformer_load", "rows": 1234, "sha256": "ab" * 32}
    end_run(sf, blobs, run_id, "succeeded", {"outputs/model.json": model,
                                              "outputs/training_data.json":
                                                  json.dumps(digest).encode()})
    with sf() as s:
        derived = s.get(DerivedModel, derived_id)
        version = s.get(Version, derived.base_version_id)
        assert derived.state == "ready" and derived.data_rows == 1234
        assert derived.data_sha256 == "ab" * 32
        assert derived.model_sha256 == hashlib.sha256(model).hexdigest()
        # the derived bundle is the base one with the model file alone replaced
        base, new = zip_files(blobs.get(version.sha256)), zip_files(blobs.get(
            derived.bundle_sha256))
        assert new.keys() == base.keys() and new["files/model.json"] == model
        assert {k: v for k, v in new.items() if k != "files/model.json"} == \
            {k: v for k, v in base.items() if k != "files/model.json"}
        entry = s.get(LogEntry, derived.log_index)
        details = json.loads(entry.details)
        assert entry.kind == "derived_model" and details["subject"] == derived.bundle_sha256
        assert details["base_bundle_sha256"] == version.sha256
        assert details["parameters"] == {"horizon": 3, "retrain": True}
        assert details["data_sha256"] == "ab" * 32 and details["model_sha256"] == \
            derived.model_sha256
        assert details["run_log_index"] == s.get(Run, run_id).log_index
        assert s.get(LogEntry, details["run_log_index"]).kind == "run"
        assert certlog.party_units_of(s, entry.kind, details["unit"], details) == ["b", "a"]
        shown = retrain.model_json(s, derived)
        assert shown["lineage"]["bundle_sha256"] == derived.bundle_sha256
        assert shown["unit"] == "b" and shown["log_index"] == derived.log_index

        # the call plan runs the derived bundle for its unit only
        rows = {"rows": [{"transformer_id": "T", "day": "2013-01-01", "peak_kw": 1.0,
                          "rated_kw": 2.0}]}
        plan = remote_call.plan_call(s, caller("b"), name, {**rows, "model": derived_id}, 100)
        assert plan.bundle_sha256 == derived.bundle_sha256 != version.sha256
        assert remote_call.plan_call(s, caller("b"), name, rows, 100).bundle_sha256 == \
            version.sha256
        for other in ("c", "a"):
            with pytest.raises(NotFound) as e:
                retrain.get_model(s, caller(other), derived_id)
            assert e.value.field == "model"
        assert retrain.list_models(s, caller("c")) == []
        assert [m.id for m in retrain.list_models(s, caller("b"), name)] == [derived_id]
    order(sf, "c", name, "month", "c-month-0001")
    with sf() as s, pytest.raises(NotFound):  # c has an entitlement, not b's model
        remote_call.plan_call(s, caller("c"), name, {**rows, "model": derived_id}, 100)

    # a failed training run makes no model, and the call plan refuses it
    failed_id, failed_run = submit(sf, "b", name)
    end_run(sf, blobs, failed_run, "failed", {})
    with sf() as s:
        failed = s.get(DerivedModel, failed_id)
        assert failed.state == "failed" and failed.bundle_sha256 is None
        assert "failed" in failed.error
        with pytest.raises(Conflict) as e:
            retrain.model_for_call(s, caller("b"), remote_call.plan_call(
                s, caller("b"), name, rows, 100).grant, failed_id)
        assert e.value.field == "model"


def test_a_failed_training_refunds_its_per_use_order(market):
    sf, blobs, name = market
    order(sf, "c", name, "per_use", "c-use-0002")
    derived_id, run_id = submit(sf, "c", name)
    with sf() as s:
        entitlement = s.get(Entitlement, s.get(Run, run_id).entitlement_id)
        assert entitlement.uses_left == 0
    end_run(sf, blobs, run_id, "failed", {})
    with sf() as s:
        entitlement = s.get(Entitlement, s.get(Run, run_id).entitlement_id)
        assert s.get(Order, entitlement.order_id).status == "refunded"
        assert s.get(DerivedModel, derived_id).state == "failed"
    # a tool that offers no further training is refused before anything is spent
    with sf() as s:
        write_transaction(s)
        version = s.get(Version, s.get(DerivedModel, derived_id).base_version_id)
        manifest = json.loads(version.manifest)
        manifest.pop("further_training")
        version.manifest = json.dumps(manifest)
        s.commit()
    order(sf, "c", name, "per_use", "c-use-0003")
    with sf() as s, pytest.raises(InvalidField) as e:
        write_transaction(s)
        retrain.submit(s, caller("c"), name, {}, 600, 3600)
    assert e.value.field == "product"


def test_the_manifest_entry_is_validated(tmp_path):
    bundle = tmp_path / "tool"
    shutil.copytree(TOOL, bundle)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["further_training"] = {"parameter": "horizon", "model": "files/missing.json",
                                    "output": "outputs/nowhere.json",
                                    "data_digest": "outputs/metrics.json"}
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    fields = {p.field for p in validate_dir(bundle)}
    assert fields == {"further_training.parameter", "further_training.model",
                      "further_training.output"}
    manifest["further_training"] = {"parameter": "retrain"}
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert validate_dir(bundle)  # the schema wants all four keys
    assert validate_dir(TOOL) == []


def test_train_for_real_and_call_the_derived_model(tmp_path):
    """The catalogue tool trained by the real runner (papermill in the sandbox) on its sample,
    then both models answer the same rows in warm kernels: the derived one differently."""
    url = f"sqlite:///{tmp_path / 'market.sqlite'}"
    dbutil.upgrade(url)
    engine = make_engine(url)
    sf = make_session_factory(engine)
    blobs = BlobStore(tmp_path / "blobs")
    name = setup_market(sf, blobs)
    order(sf, "b", name, "month", "b-month-0002")
    derived_id, run_id = submit(sf, "b", name, {"horizon": 3, "test_share": 0.5})
    runner = Runner(sf, blobs, sandbox_root(tmp_path), max_workers=1,
                    bundle_for=bundle_for(blobs), env_for=lambda s, run: {},
                    on_finished=lambda s, run: retrain.finish(s, blobs, run),
                    poll_interval=0.2)

    async def train() -> Run:
        await runner.start()
        try:
            return await runner.wait(run_id, 300)
        finally:
            await runner.stop()

    run = asyncio.run(train())
    assert run.status == "succeeded", run.error
    with sf() as s:
        derived = s.get(DerivedModel, derived_id)
        base_sha = s.get(Version, derived.base_version_id).sha256
        assert derived.state == "ready", derived.error
        trained = json.loads(zip_files(blobs.get(derived.bundle_sha256))["files/model.json"])
        assert trained["horizon"] == 3
        assert derived.data_rows > 1000 and len(derived.data_sha256) == 64
    sample = zip_files(blobs.get(base_sha))["files/sample_transformer_load.csv.gz"]
    import pandas as pd

    load = pd.read_csv(io.BytesIO(sample), compression="gzip")
    load = load[load["transformer_id"] == load["transformer_id"].iloc[0]].tail(30)
    rows = json.loads(load.to_json(orient="records"))
    pool = PredictPool(sandbox_root(tmp_path), max_workers=2)

    async def call() -> tuple[list, list]:
        try:
            base = await pool.predict(base_sha, lambda: blobs.get(base_sha), rows, {}, unit="b")
            mine = await pool.predict(derived.bundle_sha256,
                                      lambda: blobs.get(derived.bundle_sha256), rows, {},
                                      unit="b")
            return base, mine
        finally:
            await pool.shutdown()

    base, mine = asyncio.run(call())
    engine.dispose()
    assert [p["transformer_id"] for p in base] == [p["transformer_id"] for p in mine]
    assert 0 <= mine[0]["overload_probability"] <= 1
    assert mine[0]["overload_probability"] != base[0]["overload_probability"]


# --- through the API, on the session platform ----------------------------------------------------


def test_retrain_and_predict_through_the_api(platform_proc):
    """Unit a or b retrains unit c's demo tool on its own demo data and calls its derived model;
    unit e sees nothing of it. One month plan of that unit and one per-use order of unit e.
    (At 1 % b's demo tables hold five overload episodes, a's four, d's and e's one each: too
    few to train on, the tool refuses fewer than 5 overloaded transformer-days.)"""
    from helpers import market_as, wait_until

    from marketplace_ext.client import MarketAPIError

    url, logins = platform_proc.url, platform_proc.logins()
    # units a and b hold enough overload episodes to train on; the one the suite has left
    # more points retrains (a month plan is 45 points)
    operator = market_as(url, "operator", logins["operator"])
    slug = max("ab", key=lambda u: operator.request("GET", f"units/{u}/account")["centipoints"])
    sub = market_as(url, f"subscriber-{slug}", logins[f"subscriber-{slug}"])
    other = market_as(url, "subscriber-e", logins["subscriber-e"])
    name = "transformer-overload-prediction"
    sub.order(name, "month")
    with pytest.raises(MarketAPIError) as e:
        sub.retrain(name, {"retrain": False}, wait=False)
    assert e.value.status == 400 and e.value.field == "parameters.retrain", e.value
    started = sub.retrain(name, {"horizon": 3}, wait=False)
    assert started["state"] == "training" and started["unit"] == slug
    derived = wait_until(lambda: (m := sub.derived_model(started["id"]))["state"] != "training"
                         and m, 600, "the training run to end")
    assert derived["state"] == "ready", (derived, sub.request("GET", f"runs/{derived['run']}"))
    lineage = derived["lineage"]
    assert lineage["data_rows"] > 0 and len(lineage["data_sha256"]) == 64
    entry = sub.request("GET", f"log/entries/{derived['log_index']}")
    assert entry["type"] == "derived_model"
    assert entry["statement"]["subject"] == lineage["bundle_sha256"]
    assert entry["statement"]["base_bundle_sha256"] == lineage["base_bundle_sha256"]
    assert [m["id"] for m in sub.derived_models(name)][0] == derived["id"]

    rows = [{"transformer_id": "D-T9999", "day": f"2013-11-{d:02d}", "peak_kw": 5.0 + 0.15 * d,
             "rated_kw": 10.0} for d in range(1, 29)]
    base = sub.predict(name, rows)
    mine = sub.request("POST", f"products/{name}/predict",
                       json={"rows": rows, "model": derived["id"]})
    assert mine["model"] == derived["id"]
    assert mine["predictions"][0]["transformer_id"] == "D-T9999"
    assert mine["predictions"][0]["overload_probability"] != base[0]["overload_probability"]

    # private: another unit can neither see it nor call it, even holding an entitlement
    r = other.http.get(other.url + f"api/derived-models/{derived['id']}")
    assert r.status_code == 404 and r.json()["field"] == "model"
    assert other.derived_models(name) == []
    other.order(name, "per_use")
    r = other.http.post(other.url + f"api/products/{name}/predict",
                        json={"rows": rows, "model": derived["id"]})
    assert r.status_code == 404 and r.json()["field"] == "model", r.text
