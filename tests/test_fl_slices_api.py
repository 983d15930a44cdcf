"""Split decryption through the real hub and service (issue 18 item 4): three units send
encrypted updates, two decrypt and post their slices of the aggregate, the third is away and one
of the others takes its slice over after the take-over window; every unit ends with the mean a
whole decryption gives, bit for bit. Bad posts are 4xx naming the field, with nothing stored."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from helpers import save_model
from test_fl_api import clients, open_running, users, wait_until  # noqa: F401  (fixtures)

from marketplace_ext.federated import packing

MODEL = {"weeks": 2, "pool_weeks": 1, "conv": 4, "wide": 4, "hidden": 8}  # 337 parameters


def post(market, pid: int, index: int, data: bytes) -> requests.Response:
    return market.http.post(market.url + f"api/fl/projects/{pid}/rounds/1/slices/{index}",
                            data=data, headers={"Content-Type": "application/octet-stream"},
                            timeout=60)


def test_split_decryption_with_a_take_over(clients, users, tmp_path):  # noqa: F811
    model = save_model(tmp_path / "model", MODEL)
    project = open_running(clients, model, "abc", rounds=1, max_weight=25)
    pid = project["id"]
    a, b, c = clients["a"], clients["b"], clients["c"]
    spec = a.spec(project)
    assert spec.ciphertexts == 4  # 337 values, 88 per plaintext: slices of 1, 1 and 2
    rng = np.random.default_rng(18)
    vectors = {u: rng.normal(0, 0.3, spec.length) for u in "abc"}
    weights = {"a": 25, "b": 4, "c": 13}
    pub_a = users("publisher-a")
    # before the aggregate: nothing to post, nothing to read (the authorization matrix's rows)
    r = post(pub_a, pid, 0, b"x" * 100)
    assert r.status_code == 409 and r.json()["field"] == "round", r.text
    base = f"api/fl/projects/{pid}/rounds/1/slices"
    for user, status, field in (("publisher-a", 404, "round"), ("subscriber-a", 404, "round"),
                                ("publisher-d", 403, "unit"), ("operator", 403, "unit")):
        for path in (base, base + "/0"):
            r = users(user).http.get(pub_a.url + path, timeout=60)
            assert r.status_code == status and r.json()["field"] == field, (user, path, r.text)
    assert requests.get(pub_a.url + base, timeout=60).status_code == 401
    for u in "abc":
        clients[u].submit(project, 1, vectors[u], weights[u])
    wait_until(lambda: a.round(pid, 1)["state"] == "published", 120)

    listing = a.slices(project, 1)
    assert listing["units"] == ["a", "b", "c"] and not any(s["posted"] for s in listing["slices"])
    size0 = listing["slices"][0]["size"]
    for market, index, data, status, field in [
            (pub_a, 3, b"x" * size0, 404, "slice"),  # the layout has slices 0..2
            (pub_a, 0, b"x" * (size0 - 1), 400, "body"),  # not the sealed size
            (users("publisher-d"), 0, b"x" * size0, 403, "unit"),  # not a member
            (users("subscriber-a"), 0, b"x" * size0, 403, None)]:  # no publish scope
        r = post(market, pid, index, data)
        assert r.status_code == status and r.json()["field"] == field, r.text
    assert a.slices(project, 1) == listing
    r = pub_a.http.get(pub_a.url + f"api/fl/projects/{pid}/rounds/1/slices/0", timeout=60)
    assert r.status_code == 404 and r.json()["field"] == "slice"

    # a and b decrypt their slices together; c is away: its slice is taken over
    with ThreadPoolExecutor(2) as pool:
        means = list(pool.map(lambda cl: cl.split_mean_update(project, 1, wait=60, takeover=10),
                              (a, b)))
    assert np.array_equal(means[0], means[1])
    assert 0 in a.last_split["decrypted"] and 1 in b.last_split["decrypted"]
    # whoever reached the window first took slice 2 over; the other took it over too (and
    # lost the race to post it) or fetched it
    taken = [cl.last_split["taken_over"] for cl in (a, b)]
    assert [2] in taken and all(t in ([], [2]) for t in taken)
    listing = a.slices(project, 1)
    assert [s["posted_by"] for s in listing["slices"]][:2] == ["a", "b"]
    assert listing["slices"][2]["posted_by"] in ("a", "b")  # the first post won
    r = post(pub_a, pid, 2, b"x" * listing["slices"][2]["size"])
    assert r.status_code == 409 and r.json()["field"] == "slice", r.text
    assert a.slices(project, 1) == listing

    # c comes back: it fetches and opens all three slices, decrypting nothing
    mean_c = c.split_mean_update(project, 1, wait=60, takeover=60)
    assert c.last_split["decrypted"] == [] and sorted(c.last_split["fetched"]) == [0, 1, 2]
    assert np.array_equal(mean_c, means[0])
    # ... the mean a whole decryption gives, and FedAvg within the quantization bound
    data, headers = c._aggregate_bytes(project, 1, 0)
    whole = packing.unpack_aggregate(spec, packing.ciphertexts_from_bytes(spec, data),
                                     c.private_key(project), int(headers["X-FL-Total-Weight"]),
                                     int(headers["X-FL-Parties"]))
    assert np.array_equal(whole, mean_c)
    fedavg = packing.plain_fedavg([vectors[u] for u in "abc"], [weights[u] for u in "abc"],
                                  clip=spec.clip)
    assert np.max(np.abs(mean_c - fedavg)) <= spec.quantization_bound(sum(weights.values()))
