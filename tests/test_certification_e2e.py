"""End to end through the running service: publish, approve, buy, download, verify the file
and the order with the CLI (online and offline); an order's details reach its parties and
operators only, while anyone can check that an order entry exists; witnesses co-sign until
final; a tampered file, tampered details and a forked or rolled-back checkpoint are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from helpers import market_as, publish_on_shelf, wait_until

from marketplace_ext import merkle, tiles
from marketplace_ext.client import MarketAPIError

ROOT = Path(__file__).resolve().parent.parent


def market_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "market"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def wait_integrated(m, index: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = m.request("GET", "log/checkpoint")
        if cp["size"] > index:
            return cp
        time.sleep(0.3)
    raise TimeoutError(f"log entry {index} not integrated")


@pytest.fixture(scope="module")
def bought(platform_proc, tmp_path_factory):
    url, logins = platform_proc.url, platform_proc.logins()
    op = market_as(url, "operator", logins["operator"])
    pub = market_as(url, "publisher-a", logins["publisher-a"])
    sub = market_as(url, "subscriber-b", logins["subscriber-b"])
    name = publish_on_shelf(pub, op, tmp_path_factory.mktemp("e2e"),
                            [{"type": "per_use", "price": 10}])
    order = sub.request("POST", "orders", json={"product": name, "plan": "per_use",
                                                "idempotency_key": f"e2e-{name}"})
    return {"name": name, "order": order, "sub": sub, "op": op, "url": url}


def test_download_verify_and_tamper(bought, tmp_path):
    sub, name = bought["sub"], bought["name"]
    version = sub.product(name)["current_version"]
    file_url = f"{sub.url}api/products/{name}/versions/{version}/files/files/model.json"
    # a GET (an <img> in a product card, a prefetch) never spends the use
    r = sub.http.get(file_url)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    fetched = sub.download_file(name, version, "files/model.json", tmp_path / "model.json")
    r = sub.http.get(urljoin(sub.url, fetched["url"]))
    assert r.status_code == 200, r.text
    import hashlib

    assert r.headers["X-Content-SHA256"] == hashlib.sha256(r.content).hexdigest()
    assert (tmp_path / "model.json").read_bytes() == r.content
    download_index = int(r.headers["X-Log-Index"])
    # the per-use order is used up: a second download needs a new order
    again = sub.http.post(f"{sub.url}api/products/{name}/versions/{version}/files/README.md")
    assert again.status_code == 403 and again.json()["error"] == "no_entitlement"
    missing = bought["op"].http.post(
        f"{sub.url}api/products/{name}/versions/{version}/files/../product.yaml")
    assert missing.status_code in (400, 404)

    wait_integrated(sub, download_index)
    entry = sub.log_entry(download_index)["statement"]
    assert entry["type"] == "download" and entry["subject"] == r.headers["X-Content-SHA256"]
    assert entry["actor"] == "subscriber-b" and entry["order"] == bought["order"]["id"]

    model = tmp_path / "model.json"
    model.write_bytes(r.content)
    env = {**os.environ, "MARKETPLACE_URL": sub.url,
           "MARKET_TOKEN": sub.http.headers["Authorization"].split()[1]}
    log_key = sub.request("GET", "log/key")["log_key"]
    ok = market_cli("verify", str(model), "--product", name, "--version", version,
                    "--log-key", log_key, "--save-proof", str(tmp_path / "proof.json"), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "certified at log index" in ok.stdout

    offline_env = {k: v for k, v in env.items() if k not in ("MARKETPLACE_URL", "MARKET_TOKEN")}
    offline = market_cli("verify", str(model), "--product", name, "--version", version,
                         "--proof", str(tmp_path / "proof.json"), "--log-key", log_key,
                         env=offline_env)
    assert offline.returncode == 0, offline.stderr

    tampered = tmp_path / "tampered.json"
    data = bytearray(r.content)
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    bad = market_cli("verify", str(tampered), "--product", name, "--version", version,
                     "--log-key", log_key, env=env)
    assert bad.returncode == 1 and "VERIFICATION FAILED" in bad.stderr

    # a proof bundle whose details or public part was altered no longer verifies offline
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert name in proof["details"] and name not in proof["entry"]  # the leaf commits to it
    (tmp_path / "forged.json").write_text(json.dumps(
        {**proof, "details": proof["details"].replace(name, name + "x")}))
    forged = market_cli("verify", str(model), "--product", name + "x", "--version", version,
                        "--proof", str(tmp_path / "forged.json"), "--log-key", log_key,
                        env=offline_env)
    assert forged.returncode == 1 and "do not match" in forged.stderr, forged.stderr
    commitment = json.loads(proof["entry"])["commitment"]
    (tmp_path / "forged.json").write_text(json.dumps(
        {**proof, "entry": proof["entry"].replace(commitment, commitment[::-1])}))
    forged = market_cli("verify", str(model), "--product", name, "--version", version,
                        "--proof", str(tmp_path / "forged.json"), "--log-key", log_key,
                        env=offline_env)
    assert forged.returncode == 1 and "inclusion proof" in forged.stderr, forged.stderr

    wrong_key = market_cli("verify", str(model), "--product", name, "--version", version,
                           "--proof", str(tmp_path / "proof.json"), "--log-key",
                           log_key.replace(log_key.split("+")[2], "A" * 44), env=offline_env)
    assert wrong_key.returncode != 0


def test_verify_order(bought):
    sub = bought["sub"]
    wait_integrated(sub, bought["order"]["log_index"])
    env = {**os.environ, "MARKETPLACE_URL": sub.url,
           "MARKET_TOKEN": sub.http.headers["Authorization"].split()[1]}
    ok = market_cli("verify", "order", str(bought["order"]["id"]), env=env)
    assert ok.returncode == 0, ok.stderr
    assert bought["name"] in ok.stdout and "trusting the log key" in ok.stderr
    other = market_cli("verify", "order", "999999", env=env)
    assert other.returncode == 1


def test_order_details_reach_its_parties_only(bought, platform_proc):
    sub, op, name = bought["sub"], bought["op"], bought["name"]
    index = bought["order"]["log_index"]
    wait_integrated(sub, index)
    logins = platform_proc.logins()
    stranger = market_as(platform_proc.url, "subscriber-c", logins["subscriber-c"])
    supplier = market_as(platform_proc.url, "publisher-a", logins["publisher-a"])
    hidden = stranger.log_entry(index)
    assert hidden["type"] == "order" and hidden["access"] == "public"
    assert {"details", "salt", "statement"}.isdisjoint(hidden)
    for secret in (name, "subscriber-b", '"price"', '"actor"', '"product"'):
        assert str(secret) not in json.dumps(hidden), secret
    for reader, access in ((sub, "actor"), (op, "operator"), (supplier, "party")):
        entry = reader.log_entry(index)
        assert entry["access"] == access
        statement = entry["statement"]
        assert (statement["product"], statement["actor"], statement["unit"]) == (
            name, "subscriber-b", "b")
        assert statement["price"] == bought["order"]["price"]
        assert entry["data"] == hidden["data"]  # the same public part, the same leaf

    # a stranger can still check that an order entry is at that index, not what it says
    env = {**os.environ, "MARKETPLACE_URL": stranger.url,
           "MARKET_TOKEN": stranger.http.headers["Authorization"].split()[1]}
    ok = market_cli("verify", "entry", str(index), "--type", "order", env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"log index {index}: an entry of type order" in ok.stdout, ok.stdout
    assert name not in ok.stdout
    wrong = market_cli("verify", "entry", str(index), "--type", "refund", env=env)
    assert wrong.returncode == 1 and "not refund" in wrong.stderr


def test_witnesses_cosign_and_refuse_rollback_and_fork(bought, platform_proc, tmp_path):
    sub = bought["sub"]
    env = {**os.environ, "MARKETPLACE_URL": sub.url,
           "MARKET_TOKEN": sub.http.headers["Authorization"].split()[1]}
    wa, wb = platform_proc.witness_dirs["witness-a"], platform_proc.witness_dirs["witness-b"]
    first = market_cli("witness", "--state", str(wa), env=env)
    assert first.returncode == 0, first.stderr
    assert "first contact" in first.stdout and "not final" in first.stdout
    second = market_cli("witness", "--state", str(wb), env=env)
    assert second.returncode == 0, second.stderr
    assert "final" in second.stdout and "not final" not in second.stdout
    cp = sub.request("GET", "log/checkpoint")
    if cp["witnesses"]:  # unless a new checkpoint appeared meanwhile
        assert cp["final"] == (len(cp["witnesses"]) >= 2)

    # more entries, then the witness checks consistency from what it stored
    more = sub.request("POST", "orders", json={"product": bought["name"], "plan": "per_use",
                                               "idempotency_key": f"e2e-more-{time.time_ns()}"})
    wait_integrated(sub, more["log_index"])  # a checkpoint the witness has not seen yet
    again = market_cli("witness", "--state", str(wa), env=env)
    assert again.returncode == 0 and "consistent with" in again.stdout, again.stderr

    # a witness whose stored checkpoint is ahead of the log: rollback, refused loudly
    state = json.loads((wa / "checkpoint.json").read_text())
    for label, change in {
        "rollback": lambda body: body.replace(f"\n{body.split(chr(10))[1]}\n",
                                              f"\n{int(body.split(chr(10))[1]) + 1000}\n"),
        "fork": lambda body: body.replace(body.split("\n")[2], "A" * 43 + "="),
    }.items():
        forked = tmp_path / label
        shutil.copytree(wa, forked)
        (forked / "checkpoint.json").write_text(json.dumps(
            {**state, "checkpoint": change(state["checkpoint"])}))
        refused = market_cli("witness", "--state", str(forked), env=env)
        assert refused.returncode == 3, (label, refused.stdout, refused.stderr)
        assert "REFUSED" in refused.stderr

    with pytest.raises(MarketAPIError) as e:
        sub.request("POST", "log/cosignatures", json={"cosignature": "nonsense"})
    assert e.value.status == 400


def test_a_running_witness_cosigns_each_new_checkpoint(bought, platform_proc, tmp_path):
    """`market witness --every`, as `make run` starts it: a process of its own that co-signs
    every new checkpoint until it is stopped (SIGTERM: status 0)."""
    sub = bought["sub"]
    state = tmp_path / "witness-b"
    shutil.copytree(platform_proc.witness_dirs["witness-b"], state)
    (state / "checkpoint.json").unlink(missing_ok=True)  # its own history starts here
    env = {**os.environ, "MARKETPLACE_URL": sub.url,
           "MARKET_TOKEN": sub.http.headers["Authorization"].split()[1]}
    witness = subprocess.Popen([str(ROOT / ".venv" / "bin" / "market"), "witness", "--state",
                                str(state), "--every", "0.2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # a checkpoint it has not seen, then another one
            more = sub.request("POST", "orders", json={
                "product": bought["name"], "plan": "per_use",
                "idempotency_key": f"e2e-witness-{time.time_ns()}"})
            index = more["log_index"]

            def cosigned(index=index) -> bool:
                latest = sub.request("GET", "log/checkpoint")
                return latest["size"] > index and "witness-b" in latest["witnesses"]

            wait_until(cosigned, timeout=60,
                       what=f"witness-b's cosignature on a checkpoint holding entry {index}")
    finally:
        witness.terminate()
        out, err = witness.communicate(timeout=30)
    assert witness.returncode == 0, err
    assert out.count("co-signed checkpoint") >= 2 and "consistent with" in out, out


def test_log_endpoints_reject_bad_input(bought):
    sub = bought["sub"]
    size = sub.request("GET", "log/checkpoint")["size"]
    for params, field in [({"index": 0}, "size"), ({"index": -1, "size": 1}, "index"),
                          ({"index": 0, "size": size + 10}, "size"),
                          ({"index": "x", "size": 1}, "index")]:
        r = sub.http.get(f"{sub.url}api/log/proof/inclusion", params=params)
        assert r.status_code == 400 and r.json()["field"] == field, (params, r.text)
    r = sub.http.get(f"{sub.url}api/log/proof/consistency", params={"old": 5, "new": 2})
    assert r.status_code == 400
    # an index that is not plain ASCII decimal within 64 bits names no entry (ids.parse_id)
    for index in ("999999999", "abc", "\u00b2", str(2**64)):
        r = sub.http.get(f"{sub.url}api/log/entries/{index}")
        assert r.status_code == 404 and r.json()["field"] == "index", (index, r.text)


def test_a_monitor_mirrors_the_running_log_as_tiles(bought):
    """C2SP tlog-tiles as a third-party monitor reads them with an API token: the checkpoint
    note verifies with the log's key, the level-0 tiles rebuild its root, the entry bundle
    hashes to those tiles; a bad path is a 400, a tile beyond the tree a 404, both naming
    ``path``."""
    sub = bought["sub"]
    base = f"{sub.url}api/log/tlog/"
    keys = [merkle.parse_vkey(sub.request("GET", "log/key")["log_key"])]
    r = sub.http.get(base + "checkpoint")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    checkpoint, _ = merkle.open_checkpoint(r.text, keys)
    size = checkpoint.size
    assert size > 0
    leaves = b""
    for n in range((size + 255) // 256):
        width = min(256, size - 256 * n)
        r = sub.http.get(base + "tile/0/" + tiles.tile_path(0, n, width).split("/", 1)[1])
        assert r.status_code == 200, r.text
        leaves += r.content
    hashes = [leaves[i:i + 32] for i in range(0, len(leaves), 32)]
    assert len(hashes) == size
    assert merkle_tree_hash(hashes) == checkpoint.root
    last = (size - 1) // 256
    bundle = sub.http.get(base + "tile/" + tiles.tile_path("entries", last,
                                                           size - 256 * last)).content
    at, entries = 0, []
    while at < len(bundle):
        length = int.from_bytes(bundle[at:at + 2], "big")
        entries.append(bundle[at + 2:at + 2 + length])
        at += 2 + length
    assert [merkle.leaf_hash(e) for e in entries] == hashes[256 * last:]
    for path, status in [(f"tile/0/{tiles.format_index(last + 1)}", 404),
                         ("tile/0/1", 400), ("tile/9/000", 400), ("tile/0/000.p/0", 400)]:
        r = sub.http.get(base + path)
        assert r.status_code == status and r.json()["field"] == "path", (path, r.text)
    assert requests.get(base + "checkpoint", timeout=30).status_code == 401


def merkle_tree_hash(hashes: list[bytes]) -> bytes:
    """RFC 9162's MTH over leaf hashes, written out naively (the monitor's own reference)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_tree_hash(hashes[:k])
                          + merkle_tree_hash(hashes[k:])).digest()


def test_fsck_of_the_running_log(platform_proc):
    out = market_cli("--var-dir", str(platform_proc.var_dir), "log", "fsck",
                     env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("log ok:")
