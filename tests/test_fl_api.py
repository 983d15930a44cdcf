"""The federated-learning API through the real hub and service: opening projects (key sizes, the
parameter cap), joining (allow-list, the initiator's approval, pending units taking no part),
units' signing keys and signed member keys, key wrapping for late joiners, what non-members
see, bad updates (each a 4xx naming its field, the round left as it was), rounds closing on
quorum, at the deadline with the partners that sent, or void and reopened when too few did."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import fl_signing_key, market_as, project_name, save_model

from marketplace_ext.client import Market, MarketAPIError
from marketplace_ext.federated import keys, packing
from marketplace_ext.federated.client import (
    FederatedClient,
    FederatedError,
    UnverifiedMemberKey,
    bundle_zip,
)


def upload(m: Market, project: int, number: int, data: bytes, **params) -> requests.Response:
    return m.http.post(m.url + f"api/fl/projects/{project}/rounds/{number}/updates",
                       params=params, data=data,
                       headers={"Content-Type": "application/octet-stream"}, timeout=60)


def wait_until(predicate, timeout: float = 30, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(poll)


@pytest.fixture(scope="module")
def users(platform_proc):
    url, logins = platform_proc.url, platform_proc.logins()
    cache: dict[str, Market] = {}

    def get(user: str) -> Market:
        if user not in cache:
            cache[user] = market_as(url, user, logins[user])
        return cache[user]

    return get


@pytest.fixture(scope="module")
def clients(users, tmp_path_factory, platform_proc):
    """A federated client per unit (its publisher), each with a home of its own and the unit's
    signing key of this test session."""
    homes = tmp_path_factory.mktemp("fl-homes")
    return {u: FederatedClient(users(f"publisher-{u}"), home=homes / u, progress=False,
                               poll=0.3, signing_key=fl_signing_key(platform_proc.var_dir, u))
            for u in "abcde"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("fl-model") / "bundle")


def open_running(clients, model_dir, units: str = "abc", **options) -> dict:
    """A started project of ``units`` (the first one initiates, the others on its allow-list),
    keys wrapped for all."""
    settings = dict(rounds=2, quorum=len(units), deadline_seconds=60, max_parties=5,
                    max_weight=1000, clip=1.0, allow_units=list(units[1:]))
    settings.update(options)
    first = clients[units[0]]
    project = first.open_project(project_name(), model_dir, **settings)
    for u in units[1:]:
        assert clients[u].join(project["id"])["status"] == "approved"
    assert sorted(first.wrap_pending(project["id"])) == sorted(units[1:])
    first.start(project["id"])
    return first.project(project["id"])


def weights_zip(parameters: int) -> str:
    """A model bundle claiming ``parameters`` parameters (the service reads only model.json)."""
    weights = b"weights"
    meta = {"spec": {}, "parameters": parameters,
            "weights_sha256": hashlib.sha256(weights).hexdigest()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("weights.pt", weights)
    return base64.b64encode(out.getvalue()).decode()


def update_of(client: FederatedClient, project: dict, seed: int, weight: int):
    spec = client.spec(project)
    vector = np.random.default_rng(seed).normal(0, 0.2, spec.length)
    return vector, client.encrypt_update(project, vector, weight)


def test_key_sizes(clients, model_dir, users):
    a = clients["a"]
    big = a.open_project(project_name(), model_dir, rounds=1, quorum=2, deadline_seconds=30,
                         key_size=3072)
    assert big["key_size"] == 3072 and len(big["public_key"]["n"]) > 900
    assert packing.PackSpec.from_json(big["pack"]).n.bit_length() == 3072

    pk2048, _ = keys.generate_paillier_keypair(2048)
    body = {"name": project_name(), "rounds": 1, "quorum": 2, "deadline_seconds": 30,
            "public_key": keys.public_key_to_json(pk2048),
            "model": base64.b64encode(bundle_zip(model_dir)).decode()}
    pub = users("publisher-a")
    for size, field in [(4096, "key_size"), (1024, "key_size"), ("2048", "key_size"),
                        (3072, "public_key")]:
        r = pub.http.post(pub.url + "api/fl/projects", json={**body, "key_size": size})
        assert r.status_code == 400 and r.json()["field"] == field, (size, r.text)
    r = pub.http.post(pub.url + "api/fl/projects", json={**body, "key_size": 2048})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("change,field", [
    ({"name": "Bad Name"}, "name"),
    ({"rounds": 0}, "rounds"),
    ({"quorum": 1}, "quorum"),
    ({"quorum": 11}, "quorum"),  # above max_parties (10 by default)
    ({"min_updates": 1}, "min_updates"),
    ({"deadline_seconds": "soon"}, "deadline_seconds"),
    ({"public_key": {"n": "12345"}}, "public_key"),
    ({"model": "bm90IGEgemlw"}, "model"),
    ({"pack": {"bits": 32, "max_weight": 2**40}}, "pack"),  # slots would exceed 64 bits
    ({"pack": {"bits": 40}}, "pack.bits"),
    ({"pack": {"clip": -1}}, "pack.clip"),
    ({"dp": {"clip_norm": 1.0}}, "dp.noise_multiplier"),
    ({"allow_units": ["b", "no-such-unit"]}, "allow_units"),
    ({"allow_units": "b"}, "allow_units"),
    ({"model": weights_zip(10**7)}, "model"),  # over fl_max_parameters: unbounded before
])
def test_bad_project_requests(users, model_dir, change, field):
    pk, _ = keys.generate_paillier_keypair(2048)
    body = {"name": project_name(), "rounds": 1, "quorum": 2, "deadline_seconds": 30,
            "public_key": keys.public_key_to_json(pk),
            "model": base64.b64encode(bundle_zip(model_dir)).decode(), **change}
    pub = users("publisher-b")
    r = pub.http.post(pub.url + "api/fl/projects", json=body)
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    names = [p["name"] for p in pub.request("GET", "fl/projects")["projects"]]
    assert body["name"] not in names


def test_only_publishers_of_a_unit_open_and_join(users, clients, model_dir):
    sub = users("subscriber-b")
    r = sub.http.post(sub.url + "api/fl/projects", json={"name": project_name()})
    assert r.status_code == 403
    project = clients["a"].open_project(project_name(), model_dir, rounds=1, quorum=2,
                                        deadline_seconds=30)
    r = sub.http.post(sub.url + f"api/fl/projects/{project['id']}/join", json={})
    assert r.status_code == 403
    listed = {p["id"]: p for p in sub.request("GET", "fl/projects")["projects"]}
    assert listed[project["id"]]["is_member"] is False
    assert listed[project["id"]]["may_join"] is False  # subscribers do not join
    # starting needs min_updates members
    with pytest.raises(MarketAPIError) as e:
        clients["a"].start(project["id"])
    assert e.value.status == 409 and e.value.field == "members"


def test_bad_updates_change_nothing(clients, users, model_dir):
    project = open_running(clients, model_dir, "abc")
    pid = project["id"]
    a, b = clients["a"], clients["b"]
    spec = a.spec(project)
    fp = project["key_fingerprint"]
    _, packed = update_of(b, project, 1, 20)
    good = packing.ciphertexts_to_bytes(spec, packed.ciphertexts)
    pub_b, pub_d = users("publisher-b"), users("publisher-d")
    ok = {"weight": 20, "clipped": packed.clipped, "key_fingerprint": fp}
    out_of_range = (spec.nsquare + 5).to_bytes(spec.ciphertext_bytes + 1, "big")[1:]
    zero = bytes(spec.ciphertext_bytes)
    multiple_of_n = (spec.n * 3).to_bytes(spec.ciphertext_bytes, "big")
    before = a.round(pid, 1)
    cases = [
        (pub_b, 1, good[:-1], ok, 400, "body"),                       # wrong size
        (pub_b, 1, good + b"\0", ok, 413, "body"),                    # too big
        (pub_b, 1, out_of_range + good[spec.ciphertext_bytes:], ok, 400, "body"),
        (pub_b, 1, zero + good[spec.ciphertext_bytes:], ok, 400, "body"),
        (pub_b, 1, multiple_of_n + good[spec.ciphertext_bytes:], ok, 400, "body"),
        (pub_d, 1, good, ok, 403, "unit"),                            # not a member
        (users("subscriber-b"), 1, good, ok, 403, None),              # no publish scope
        (pub_b, 1, good, {**ok, "key_fingerprint": "ab" * 32}, 409, "key_fingerprint"),
        (pub_b, 1, good, {**ok, "weight": 0}, 400, "weight"),
        (pub_b, 1, good, {**ok, "weight": spec.max_weight + 1}, 400, "weight"),
        (pub_b, 1, good, {**ok, "weight": "many"}, 400, "weight"),
        (pub_b, 1, good, {"weight": 20, "key_fingerprint": fp}, 400, "clipped"),
        (pub_b, 2, good, ok, 404, "round"),                           # not open yet
        (pub_b, 0, good, ok, 400, "round"),
    ]
    for market, number, data, params, status, field in cases:
        r = upload(market, pid, number, data, **params)
        assert r.status_code == status, (status, field, r.text)
        assert r.json()["field"] == field, r.text
        assert a.round(pid, 1) == before
    assert a.project(pid)["round"]["updates"] == []

    r = upload(pub_b, pid, 1, good, **ok)
    assert r.status_code == 201, r.text
    receipt = r.json()
    assert receipt["round_state"] == "open" and receipt["log_index"] is not None
    after_one = a.round(pid, 1)
    again = upload(pub_b, pid, 1, good, **ok)  # twice from one partner
    assert again.status_code == 409 and again.json()["field"] == "round"
    assert a.round(pid, 1) == after_one

    # quorum: a and c complete the round; it closes and is aggregated
    for u, seed in (("a", 2), ("c", 3)):
        _, p = update_of(clients[u], project, seed, 10)
        clients[u].upload(project, 1, p)
    done = wait_until(lambda: (r := a.round(pid, 1))["state"] == "published" and r)
    assert done["close_reason"] == "quorum" and done["aggregate"]["parties"] == 3
    late = upload(pub_b, pid, 1, good, **ok)  # a closed round
    assert late.status_code == 409 and late.json()["field"] == "round"
    assert a.round(pid, 1) == done
    assert a.project(pid)["round"]["number"] == 2


def test_deadline_closes_with_those_who_sent_then_voids_when_too_few(clients, model_dir):
    project = open_running(clients, model_dir, "abc", deadline_seconds=4, rounds=2)
    pid = project["id"]
    a, b, c = clients["a"], clients["b"], clients["c"]
    vectors = {}
    for client, seed, weight in ((a, 11, 30), (b, 12, 10)):  # c never sends
        vectors[client.unit], packed = update_of(client, project, seed, weight)
        client.upload(project, 1, packed)
    assert a.round(pid, 1)["state"] == "open"  # quorum is 3
    done = wait_until(lambda: (r := a.round(pid, 1))["state"] == "published" and r, timeout=20)
    assert done["close_reason"] == "deadline"
    assert done["aggregate"]["parties"] == 2 and done["aggregate"]["total_weight"] == 40
    spec = a.spec(project)
    for client in (a, b, c):  # every member decrypts the same mean of what arrived
        mean = client.mean_update(project, 1)
        expected = packing.plain_fedavg([vectors["a"], vectors["b"]], [30, 10], clip=spec.clip)
        assert np.max(np.abs(mean - expected)) <= spec.quantization_bound(40)

    # round 2: only a sends before the deadline -> void, reopened on the same global model
    first = a.round(pid, 2)
    assert first["base_round"] == 1 and first["base_sha256"] == done["aggregate"]["sha256"]
    _, packed = update_of(a, project, 13, 5)
    a.upload(project, 2, packed)
    reopened = wait_until(lambda: (r := a.round(pid, 2))["attempt"] == 2 and r, timeout=20)
    assert reopened["state"] == "open" and reopened["updates"] == []
    assert reopened["base_sha256"] == first["base_sha256"]
    assert [x["state"] for x in reopened["attempts"]] == ["void", "open"]
    assert reopened["attempts"][0]["close_reason"] == "too_few"
    r = a.market.http.get(a.market.url + f"api/fl/projects/{pid}/rounds/2/aggregate")
    assert r.status_code == 404 and r.json()["field"] == "round"  # a void attempt: nothing

    # c drops out; a and b are then every active member and close the round at once
    c.market.request("DELETE", f"fl/projects/{pid}/members/c")
    with pytest.raises(MarketAPIError) as e:
        c.upload(project, 2, update_of(c, project, 14, 5)[1])
    assert e.value.status == 403 and e.value.field == "unit"
    for client in (a, b):
        client.upload(project, 2, update_of(client, project, 15, 5)[1])
    final = wait_until(lambda: (r := a.round(pid, 2))["state"] == "published" and r)
    assert final["close_reason"] == "all_members" and final["attempt"] == 2
    assert a.project(pid)["state"] == "finished"
    r = c.market.http.get(c.market.url + f"api/fl/projects/{pid}/rounds/2/aggregate")
    assert r.status_code == 403 and r.json()["field"] == "unit"  # a unit that left


def test_late_joiner_gets_a_wrapped_key_from_any_member(clients, users, model_dir):
    project = open_running(clients, model_dir, "ab", rounds=3)
    pid = project["id"]
    a, b, e = clients["a"], clients["b"], clients["e"]
    # b holds the key only as unwrapped from what a's client posted
    assert not b.holds_key(project)
    private_b = b.private_key(pid)
    assert private_b.public_key.n == a.private_key(pid).public_key.n and b.holds_key(project)

    # e is not on the allow-list: it waits for a's approval and is served nothing meanwhile
    assert e.join(pid)["status"] == "pending"
    assert a.wrap_pending(pid) == [] and b.wrap_pending(pid) == []
    r = e.market.http.get(e.market.url + f"api/fl/projects/{pid}/keys")
    assert r.status_code == 403 and r.json()["field"] == "unit"
    a.approve(pid, "e")
    assert e.join(pid)["status"] == "approved"  # now registers its signed X25519 key
    awaiting = e.market.request("GET", f"fl/projects/{pid}/keys")
    assert awaiting["wrapped_key"] is None and awaiting["holds_key"] is False
    assert [w["unit"] for w in awaiting["awaiting"]] == ["e"]
    with pytest.raises(FederatedError, match="no wrapped key"):
        e.private_key(pid)
    # e cannot wrap for anyone before it holds the key
    r = e.market.http.post(e.market.url + f"api/fl/projects/{pid}/keys", json={
        "unit": "e", "x25519_public_key": awaiting["x25519_public_key"],
        "key_fingerprint": project["key_fingerprint"], "wrapped_key": {"v": 1}})
    assert r.status_code == 403 and r.json()["field"] == "unit"
    # a wrapped key for a stale X25519 key or another Paillier key is refused
    other = keys.encode_public(keys.partner_public_bytes(keys.generate_partner_key()))
    for change, status, field in [({"x25519_public_key": other}, 409, "x25519_public_key"),
                                  ({"key_fingerprint": "cd" * 32}, 409, "key_fingerprint"),
                                  ({"unit": "d"}, 404, "unit"),
                                  ({"wrapped_key": "secret"}, 400, "wrapped_key")]:
        body = {"unit": "e", "x25519_public_key": awaiting["x25519_public_key"],
                "key_fingerprint": project["key_fingerprint"], "wrapped_key": {"v": 1},
                **change}
        r = b.market.http.post(b.market.url + f"api/fl/projects/{pid}/keys", json=body)
        assert r.status_code == status and r.json()["field"] == field, (change, r.text)

    assert b.wrap_pending(pid) == ["e"]  # b, not the initiator, serves the late joiner
    assert a.wrap_pending(pid) == []
    assert e.private_key(pid).p in (private_b.p, private_b.q)
    keys_e = e.market.request("GET", f"fl/projects/{pid}/keys")
    assert keys_e["holds_key"] and keys_e["wrapped_by"] == "publisher-b"
    path = e.key_dir(project) / "paillier.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (e.key_dir(project) / "partner.key").stat().st_mode & 0o777 == 0o600

    # re-registering a key (signed) drops the wrapped one: e waits again
    signed = {"x25519_public_key": other, "x25519_signature": keys.sign_member_key(
        e.unit_signing_key(), pid, "e", other)}
    e.market.request("PUT", f"fl/projects/{pid}/members/e", json=signed)
    assert e.market.request("GET", f"fl/projects/{pid}/keys")["wrapped_key"] is None
    r = b.market.http.put(b.market.url + f"api/fl/projects/{pid}/members/e", json=signed)
    assert r.status_code == 403 and r.json()["field"] == "unit"


def test_other_units_are_refused(clients, users, model_dir):
    project = open_running(clients, model_dir, "ab", rounds=1)
    pid = project["id"]
    d = users("publisher-d")
    for path in (f"fl/projects/{pid}", f"fl/projects/{pid}/members",
                 f"fl/projects/{pid}/rounds/1", f"fl/projects/{pid}/rounds/1/aggregate",
                 f"fl/projects/{pid}/keys", f"fl/projects/{pid}/metrics",
                 f"fl/projects/{pid}/model", f"fl/projects/{pid}/rounds"):
        r = d.http.get(d.url + "api/" + path)
        assert r.status_code == 403 and r.json()["field"] == "unit", (path, r.text)
    r = d.http.post(d.url + f"api/fl/projects/{pid}/metrics",
                    json={"round": 1, "metrics": {"accuracy": 0.5}})
    assert r.status_code == 403
    r = d.http.delete(d.url + f"api/fl/projects/{pid}/members/b")
    assert r.status_code == 403
    b = users("publisher-b")
    r = b.http.post(b.url + f"api/fl/projects/{pid}/rounds")  # only the initiator starts
    assert r.status_code in (403, 409)
    r = b.http.get(b.url + f"api/fl/projects/{pid}/rounds/1/aggregate")
    assert r.status_code == 404 and r.json()["field"] == "round"
    r = b.http.get(b.url + "api/fl/projects/99999")
    assert r.status_code == 404 and r.json()["field"] == "project"
    # metrics: plaintext numbers per round, members only
    clients["b"].post_metrics(pid, 0, {"accuracy": 0.5, "auc": float("nan")})
    r = b.http.post(b.url + f"api/fl/projects/{pid}/metrics",
                    json={"round": 1, "metrics": {"weights": [0.1, 0.2]}})
    assert r.status_code == 400 and r.json()["field"] == "metrics.weights"
    listed = clients["a"].metrics(pid)
    assert listed == [{**listed[0], "round": 0, "unit": "b",
                       "metrics": {"accuracy": 0.5, "auc": None}}]


def test_differential_privacy_settings_are_kept(clients, model_dir):
    dp = {"clip_norm": 0.5, "noise_multiplier": 1.1, "delta": 1e-5}
    project = clients["c"].open_project(project_name(), model_dir, rounds=1, quorum=2,
                                        deadline_seconds=30, dp=dp)
    assert project["dp"] == dp and clients["c"].project(project["id"])["dp"] == dp


class _StubClient:
    unit = "b"

    def project(self, project):
        return {"title": "Theft <A-E>", "state": "running", "rounds": 3, "is_member": True,
                "dp": {"noise_multiplier": 1.1, "clip_norm": 1.0, "delta": 1e-5},
                "members": [{"unit": "a", "left_at": None}, {"unit": "b", "left_at": None},
                            {"unit": "c", "left_at": "2026-01-01T00:00:00Z"}],
                "round": {"number": 2, "attempt": 1, "state": "open", "quorum": 2,
                          "deadline": "2099-01-01T00:00:00Z", "updates": [{"unit": "a"}]}}

    def metrics(self, project):
        return [{"round": 1, "unit": "a", "metrics": {"auc": 0.6}},
                {"round": 1, "unit": "b", "metrics": {"auc": 0.7, "epsilon": 1.5}},
                {"round": 2, "unit": "b", "metrics": {"auc": None, "epsilon": 2.5}}]

    def contributions(self, project):
        return {"pool": {"held": "60.00", "funded": "60.00"}, "settlement": None,
                "estimate": {"shares": {"a": 10_000, "b": 0}, "units": {
                    "a": {"weight": 5, "delta": 0.02, "evaluations": 1, "gated": False},
                    "b": {"weight": 5, "delta": -0.1, "evaluations": 1, "gated": True}}}}

    def run_round(self, project, train, timeout):
        from marketplace_ext.federated.client import RoundResult

        update, weight = train(np.zeros(3))
        return RoundResult(2, 1, weight, 0, 2, 7, update, update, "ab" * 32, 5)


def test_round_panel_shows_the_round_the_chart_and_the_budget():
    from marketplace_ext.federated.panel import RoundPanel, metric_series

    panel = RoundPanel(_StubClient(), 1, lambda v: (v, 1))
    panel.refresh()
    assert "round <b>2</b> of 3" in panel.status.value
    assert "updates in: 1 / quorum 2 (a)" in panel.status.value
    assert "2 units: a, b" in panel.status.value and "&lt;A-E&gt;" in panel.status.value
    assert "&epsilon; = 2.50" in panel.budget.value
    assert "Reward pool: 60.00 points" in panel.economy.value
    assert "leave-one-out -0.1000 (gated), share <b>0.00 %</b>" in panel.economy.value
    assert panel.button.disabled is False  # b has not sent its update yet
    assert bytes(panel.chart.value).startswith(b"\x89PNG")
    assert metric_series(_StubClient().metrics(1), "auc") == {"a": [(1, 0.6)], "b": [(1, 0.7)]}

    seen = []
    panel = RoundPanel(_StubClient(), 1, lambda v: (v + 1, 4), on_result=seen.append)
    panel._run_round()
    wait_until(lambda: seen, timeout=10)
    assert seen[0].weight == 4 and list(seen[0].mean_update) == [1.0, 1.0, 1.0]
    assert "round 2: 2 units, total weight 7" in panel.log.value


def test_joining_needs_the_initiators_approval_and_pending_units_take_no_part(clients, users,
                                                                             model_dir):
    """Before: any publisher's unit joined at once, the initiator's client wrapped the Paillier
    key for it, and with two updates per round it could subtract its own and read the
    partner's."""
    a, b, d = clients["a"], clients["b"], clients["d"]
    project = a.open_project(project_name(), model_dir, rounds=1, quorum=2, deadline_seconds=60,
                             max_parties=5, max_weight=1000, allow_units=["b"])
    pid = project["id"]
    assert b.join(pid)["status"] == "approved"
    listed = {p["id"]: p for p in d.projects()}[pid]
    assert listed["may_join"] is True and listed["membership"] is None
    # no members, rounds or weights for a non-member; the contribution measure, as the
    # project's terms, is shown before joining
    assert set(listed) == {"id", "name", "title", "unit", "state", "may_join", "membership",
                           "is_member", "contribution_measure"}
    assert listed["contribution_measure"] == "weight"
    assert d.join(pid)["status"] == "pending"
    assert {p["id"]: p for p in d.projects()}[pid]["membership"] == "pending"
    assert a.requests(pid) == [m for m in a.project(pid)["members"] if m["unit"] == "d"]
    assert sorted(a.wrap_pending(pid)) == ["b"]  # nothing for d
    dm = users("publisher-d")
    for path in (f"fl/projects/{pid}", f"fl/projects/{pid}/keys", f"fl/projects/{pid}/model",
                 f"fl/projects/{pid}/rounds", f"fl/projects/{pid}/metrics"):
        r = dm.http.get(dm.url + "api/" + path)
        assert r.status_code == 403 and r.json() == {**r.json(), "error": "forbidden",
                                                     "field": "unit"}, (path, r.text)
    with pytest.raises(MarketAPIError) as err:
        d.private_key(pid)
    assert err.value.status == 403
    # only the initiator's unit decides
    for who in ("publisher-b", "publisher-d", "operator"):
        m = users(who)
        r = m.http.post(m.url + f"api/fl/projects/{pid}/members/d/decision",
                        json={"decision": "approve"})
        assert r.status_code == 403, (who, r.text)
    for body, field in (({"decision": "maybe"}, "decision"), ({"decision": {"x": 1}}, "decision"),
                        ({"decision": "approve", "why": "x"}, "why")):
        r = a.market.http.post(a.market.url + f"api/fl/projects/{pid}/members/d/decision",
                               json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    a.start(pid)  # a and b: a pending d does not count, and sends nothing
    _, packed = update_of(b, a.project(pid), 1, 10)
    data = packing.ciphertexts_to_bytes(a.spec(project), packed.ciphertexts)
    r = upload(dm, pid, 1, data, weight=10, clipped=packed.clipped,
               key_fingerprint=project["key_fingerprint"])
    assert r.status_code == 403 and r.json()["field"] == "unit"
    assert a.round(pid, 1)["updates"] == [] and a.round(pid, 1)["active_members"] == 2
    # approved late, d registers its signed key and gets the Paillier key wrapped
    assert a.approve(pid, "d")["status"] == "approved"
    assert d.join(pid)["x25519_signature"] is not None
    assert a.wrap_pending(pid) == ["d"]
    assert d.private_key(pid).public_key.n == a.private_key(pid).public_key.n
    # a refused unit gets nothing and may not ask again
    c = clients["c"]
    assert c.join(pid)["status"] == "pending"
    assert a.refuse(pid, "c")["status"] == "refused"
    with pytest.raises(FederatedError, match="refused"):
        c.join(pid)


def test_member_keys_are_signed_and_clients_verify_them(clients, users, model_dir):
    """Before: a member's X25519 key was taken as registered, with nothing tying it to its
    unit, and the initiator's client wrapped the Paillier key for whatever key was there."""
    project = open_running(clients, model_dir, "ab", rounds=1)
    pid = project["id"]
    a, b = clients["a"], clients["b"]
    key = b.partner_public(project)
    url = b.market.url + f"api/fl/projects/{pid}/members/b"
    stranger = keys.generate_signing_key()
    for body in ({"x25519_public_key": key},
                 {"x25519_public_key": key, "x25519_signature": "A" * 86},
                 {"x25519_public_key": key,
                  "x25519_signature": keys.sign_member_key(stranger, pid, "b", key)}):
        r = b.market.http.put(url, json=body)
        assert r.status_code == 400 and r.json()["field"] == "x25519_signature", r.text

    # the unit's signing key: public to read, first registered by the unit, replaced only by
    # an operator, each certified
    registered = users("publisher-c").request("GET", "fl/units/b/signing-key")
    assert registered["ed25519_public_key"] == keys.signing_public_text(b.unit_signing_key())
    assert registered["log_index"] is not None
    new = keys.signing_public_text(stranger)
    for who, status, field in (("publisher-c", 403, "unit"),
                               ("publisher-b", 409, "ed25519_public_key"),
                               ("subscriber-b", 403, None)):
        m = users(who)
        r = m.http.put(m.url + "api/fl/units/b/signing-key", json={"ed25519_public_key": new})
        assert r.status_code == status and r.json()["field"] == field, (who, r.text)
    for body, field in (({"ed25519_public_key": "xyz"}, "ed25519_public_key"),
                        ({"ed25519_public_key": new, "more": 1}, "more")):
        r = users("operator").http.put(users("operator").url + "api/fl/units/b/signing-key",
                                       json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    r = users("publisher-b").http.get(users("publisher-b").url + "api/fl/units/nope/signing-key")
    assert r.status_code == 404

    # a new member of b, then the operator replaces b's unit key: b's member key no longer
    # verifies; a's client refuses to wrap for it (pinned key changed), and so does the service
    e_project = a.open_project(project_name(), model_dir, rounds=1, quorum=2,
                               deadline_seconds=60, allow_units=["b"])
    b.join(e_project["id"])
    operator = users("operator")
    try:
        replaced = operator.request("PUT", "fl/units/b/signing-key",
                                    json={"ed25519_public_key": new})
        assert replaced["log_index"] > registered["log_index"]
        with pytest.raises(UnverifiedMemberKey, match="changed") as err:
            a.wrap_pending(e_project["id"])
        assert err.value.units == ["b"]
        assert a.market.request("GET", f"fl/projects/{e_project['id']}/keys")["awaiting"][0][
            "unit"] == "b"  # nothing was wrapped
        with pytest.warns(UserWarning, match="changed"):  # the round loops' mode
            assert a.wrap_pending(e_project["id"], strict=False) == []
        # trusting the new key is not enough: b's member key is signed with the old one
        a.trust_unit_key("b", new)
        with pytest.raises(UnverifiedMemberKey, match="not signed"):
            a.wrap_pending(e_project["id"])
    finally:
        operator.request("PUT", "fl/units/b/signing-key",
                         json={"ed25519_public_key": registered["ed25519_public_key"]})
        a.trust_unit_key("b", registered["ed25519_public_key"])
    assert a.wrap_pending(e_project["id"]) == ["b"]
