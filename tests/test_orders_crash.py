"""A burst of concurrent purchases, the service killed with SIGKILL in the middle and restarted
by the hub: the ledger is conserved and no idempotency key was applied twice. On the session's
SQLite platform and on a second platform whose service database is PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import RunningPlatform, _new_postgres_db
from helpers import market_as, publish_on_shelf

from marketplace_ext.client import Market

BUYERS = ("b", "c", "d", "e")
KEYS_PER_UNIT = 25
PRICE = 10


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def crash_platform(request, platform_proc, tmp_path_factory):
    if request.param == "sqlite":
        yield platform_proc
        return
    url = _new_postgres_db(request.getfixturevalue("postgres_server"))
    running = RunningPlatform(tmp_path_factory.mktemp("pg-platform") / "var",
                              platform_proc.env.get("MARKET_SPARK_REMOTE"))
    # the first platform's unit servers, as remote endpoints: no second set of servers
    running.env["MARKET_SPARK_ENDPOINTS"] = json.dumps(
        {u: platform_proc.spark_remote_for(u) for u in "abcde"})
    running.env["MARKET_DB_URL"] = url
    running.env["MARKET_DEMO_DATA"] = "0"  # the first platform's servers hold the units' data
    running.start()
    yield running
    running.stop()


def service_pid(var_dir: Path) -> int:
    return int((var_dir / "marketplace.pid").read_text())


def wait_for_new_service(platform: RunningPlatform, old_pid: int, timeout: float = 120) -> None:
    """The hub notices a dead service on its 30-second poll and starts it again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = service_pid(platform.var_dir)
            r = requests.get(f"{platform.url}/services/marketplace/api/health", timeout=3)
            if pid != old_pid and r.status_code == 200:
                return
        except (OSError, ValueError, requests.RequestException):
            pass
        time.sleep(0.5)
    raise TimeoutError("the hub did not restart the marketplace service")


def buy(m: Market, product: str, key: str) -> str:
    try:
        r = m.http.post(m.url + "api/orders", timeout=30, json={
            "product": product, "plan": "per_use", "idempotency_key": key})
        return str(r.status_code)
    except requests.RequestException as e:
        return type(e).__name__


def test_sigkill_during_a_purchase_burst_loses_nothing(crash_platform, tmp_path):
    logins = crash_platform.logins()
    url = crash_platform.url
    op = market_as(url, "operator", logins["operator"])
    name = publish_on_shelf(market_as(url, "publisher-a", logins["publisher-a"]), op, tmp_path,
                            [{"type": "per_use", "price": PRICE}])
    buyers = {u: market_as(url, f"subscriber-{u}", logins[f"subscriber-{u}"]) for u in BUYERS}
    before = {a["account"]: a["centipoints"] for a in op.request("GET", "accounts")["accounts"]}
    jobs = [(u, f"crash-{u}-{i:04d}") for i in range(KEYS_PER_UNIT) for u in BUYERS]

    old_pid = service_pid(crash_platform.var_dir)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(buy, buyers[u], name, key) for u, key in jobs]
        # kill once some purchases have gone through and others are in flight
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < len(jobs) // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(old_pid, signal.SIGKILL)
        first_round = [f.result() for f in futures]
    assert "201" in first_round, first_round
    assert any(r != "201" for r in first_round), "the kill came too late to interrupt anything"

    wait_for_new_service(crash_platform, old_pid)
    # clients retry everything with the same keys: each key ends as exactly one order
    replies = [buy(buyers[u], name, key) for u, key in jobs]
    assert set(replies) <= {"200", "201"}, replies
    for m in buyers.values():
        orders = [o for o in m.request("GET", "orders", params={"limit": 200})["orders"]
                  if o["product"] == name]
        keys = [o["idempotency_key"] for o in orders]
        assert len(keys) == len(set(keys)) == KEYS_PER_UNIT

    after = {a["account"]: a["centipoints"] for a in op.request("GET", "accounts")["accounts"]}
    assert sum(after.values()) == 0
    spent = KEYS_PER_UNIT * PRICE * 100
    fee = PRICE * 100 * 6 // 100
    for u in BUYERS:
        assert after[f"unit:{u}"] == before[f"unit:{u}"] - spent
    sold = len(BUYERS) * KEYS_PER_UNIT
    assert after["unit:a"] == before["unit:a"] + sold * (PRICE * 100 - fee)
    assert after["operator"] == before["operator"] + sold * fee
