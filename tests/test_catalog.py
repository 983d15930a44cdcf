"""The publisher's journey through the real hub: template, validate, publish, review, shelf."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import market_as
from notebook_client import execute, spawn_server, stop_server

from marketplace_ext import signing
from marketplace_ext.bundle import new_product, validate_dir
from marketplace_ext.client import Market, MarketAPIError
from marketplace_ext.hubsession import HubSession

ROOT = Path(__file__).resolve().parent.parent
NAME = f"meter-check-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def as_(hub_url, logins):
    cache: dict[str, Market] = {}

    def get(user: str) -> Market:
        if user not in cache:
            cache[user] = market_as(hub_url, user, logins[user])
        return cache[user]

    return get


def set_manifest(bundle: Path, **changes) -> None:
    path = bundle / "product.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest.update(changes)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))


def names(products: list[dict]) -> set[str]:
    return {p["name"] for p in products}


def test_publish_review_and_shelf_journey(as_, tmp_path):
    pub_a, sub_b, pub_b, op = as_("publisher-a"), as_("subscriber-b"), as_("publisher-b"), \
        as_("operator")
    bundle = new_product("tool", NAME, tmp_path)
    assert validate_dir(bundle) == []
    set_manifest(bundle, version="1.0.0", tags=["theft", "Meters"])

    first = pub_a.publish(bundle)
    assert first["created"] and first["state"] == "submitted" and len(first["sha256"]) == 64
    again = pub_a.publish(bundle)
    assert again == {**first, "created": False}

    # not on the shelf: invisible to other units, visible to its own unit and operators
    assert NAME not in names(sub_b.products())
    with pytest.raises(MarketAPIError) as e:
        sub_b.product(NAME)
    assert e.value.status == 404
    assert NAME in names(pub_a.products())
    assert NAME in names(op.products())

    with pytest.raises(MarketAPIError) as e:
        op.review(NAME, "1.0.0", "reject")
    assert e.value.status == 400 and e.value.field == "reason"
    with pytest.raises(MarketAPIError) as e:
        pub_a.review(NAME, "1.0.0", "approve")
    assert e.value.status == 403
    rejected = op.review(NAME, "1.0.0", "reject", "README does not say which tables it reads")
    assert rejected["state"] == "rejected"
    assert [t["to"] for t in rejected["transitions"]] == ["draft", "submitted", "rejected"]
    assert rejected["transitions"][-1]["actor"] == "operator"
    with pytest.raises(MarketAPIError) as e:
        op.review(NAME, "1.0.0", "approve")
    assert e.value.status == 409

    # the same version number with other content is refused; a bumped version is fine
    (bundle / "README.md").write_text("# Meter check\n\nReads `consumption_daily`.\n"
                                      "<script>alert('x')</script>\n")
    with pytest.raises(MarketAPIError) as e:
        pub_a.publish(bundle)
    assert e.value.status == 409 and e.value.field == "version"
    set_manifest(bundle, version="1.0.1")
    second = pub_a.publish(bundle)
    assert second["state"] == "submitted" and second["sha256"] != first["sha256"]
    assert op.review(NAME, "1.0.1", "approve")["state"] == "on_shelf"

    for who in (sub_b, pub_b, op, pub_a):
        assert NAME in names(who.products())
    card = sub_b.product(NAME)
    assert card["current_version"] == "1.0.1" and card["state"] == "on_shelf"
    assert [v["version"] for v in card["versions"]] == ["1.0.1"]  # others see what is on sale
    assert "<script>" not in card["card_html"] and "consumption_daily" in card["card_html"]
    cert = card["certification"][0]
    assert signing.verify(cert["statement"], cert["signature"], cert["public_key"])
    assert first["sha256"] not in cert["statement"] and second["sha256"] in cert["statement"]
    assert not signing.verify(cert["statement"].replace("1.0.1", "9.9.9"), cert["signature"],
                              cert["public_key"])
    assert len(pub_a.product(NAME)["versions"]) == 2  # the owner sees the whole history

    # filters
    assert NAME in names(sub_b.products(tag="meters"))
    assert NAME not in names(sub_b.products(tag="tariff"))
    assert NAME in names(sub_b.products(q="METER-CHECK"))
    assert NAME in names(sub_b.products(unit="a", kind="tool"))
    assert NAME not in names(sub_b.products(kind="data"))

    # only publishers of the owning unit submit versions
    set_manifest(bundle, version="2.0.0")
    with pytest.raises(MarketAPIError) as e:
        pub_b.publish(bundle)
    assert e.value.status == 403 and e.value.field == "name"
    with pytest.raises(MarketAPIError) as e:
        sub_b.publish(bundle)
    assert e.value.status == 403

    # shelf: the owner takes it off and puts it back; an operator's removal stands
    with pytest.raises(MarketAPIError) as e:
        sub_b.shelf(NAME, "off")
    assert e.value.status == 403
    assert pub_a.shelf(NAME, "off", "updating the model")["state"] == "off_shelf"
    assert NAME not in names(sub_b.products())
    assert pub_a.shelf(NAME, "on")["state"] == "on_shelf"
    assert op.shelf(NAME, "off", "complaint under review")["state"] == "off_shelf"
    with pytest.raises(MarketAPIError) as e:
        pub_a.shelf(NAME, "on")
    assert e.value.status == 403
    assert op.shelf(NAME, "on", "resolved")["state"] == "on_shelf"


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _upload(market: Market, data: bytes, accept: str = "true"):
    return market.http.post(market.url + "api/products", timeout=60,
                            files={"bundle": ("b.zip", io.BytesIO(data), "application/zip")},
                            data={"accept_terms": accept})


def test_hostile_or_broken_uploads_store_nothing(as_, tmp_path, platform_proc):
    pub_a = as_("publisher-a")
    bundle = new_product("application", f"hostile-{secrets.token_hex(2)}", tmp_path)
    good = {str(p.relative_to(bundle)): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    blobs = platform_proc.var_dir / "blobs"
    before_blobs = sorted(blobs.rglob("*")) if blobs.exists() else []
    before = pub_a.products()

    cases = {
        "zip slip": {**good, "../evil.txt": b"x"},
        "absolute": {**good, "/etc/evil": b"x"},
        "bad yaml": {**good, "product.yaml": b"name: [unclosed"},
        "bad notebook": {**good, "main.ipynb": b"{not json"},
        "unknown plan": {**good, "product.yaml": good["product.yaml"].replace(
            b"per_use", b"forever")},
    }
    for label, entries in cases.items():
        r = _upload(pub_a, _zip(entries))
        assert 400 <= r.status_code < 500, label
        err = r.json()
        assert err["error"] and err["message"], label
    assert _upload(pub_a, b"not a zip at all").status_code == 400
    r = _upload(pub_a, _zip(good), accept="false")
    assert r.status_code == 400 and r.json()["field"] == "accept_terms"
    r = pub_a.http.post(pub_a.url + "api/products", data={"accept_terms": "true"}, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "bundle"

    assert pub_a.products() == before
    after_blobs = sorted(blobs.rglob("*")) if blobs.exists() else []
    assert after_blobs == before_blobs


def run_market(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "market"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_new_validate_and_publish(as_, tmp_path, hub_url):
    created = run_market("new", "--kind", "data", "--dir", str(tmp_path), "feeder-stats")
    assert created.returncode == 0, created.stderr
    bundle = tmp_path / "feeder-stats"
    assert run_market("validate", str(bundle)).returncode == 0

    again = run_market("new", "--kind", "data", "--dir", str(tmp_path), "feeder-stats")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr

    set_manifest(bundle, kernel="no-such-kernel",
                 plans=[{"type": "per_use", "price": 60}, {"type": "forever", "price": 10}])
    (bundle / "README.md").unlink()
    broken = run_market("validate", str(bundle))
    assert broken.returncode == 1
    for expected in ("kernel", "plans[0].price", "plans[1].type", "README.md"):
        assert expected in broken.stderr, expected
    assert "4 problem(s)" in broken.stderr or "problem(s)" in broken.stderr

    # publish from the command line with the publisher's token in the environment
    fresh = new_product("tool", f"cli-tool-{secrets.token_hex(2)}", tmp_path)
    pub_c = as_("publisher-c")
    env = {**os.environ, "MARKET_TOKEN": pub_c.http.headers["Authorization"].split()[1],
           "MARKETPLACE_URL": f"{hub_url}/services/marketplace/"}
    refused = run_market("publish", str(fresh), env=env)
    assert refused.returncode == 2 and "not accepted" in refused.stderr
    published = run_market("publish", "--accept-terms", str(fresh), env=env)
    assert published.returncode == 0, published.stderr
    assert "submitted: state submitted" in published.stdout
    assert fresh.name in names(pub_c.products(unit="c"))


def test_publish_from_a_notebook(hub_url, logins):
    user = "publisher-d"
    session = HubSession(hub_url)
    session.login(user, logins[user])
    token = session.create_token("nb")
    server = spawn_server(hub_url, user, token)
    name = f"nb-data-{secrets.token_hex(2)}"
    try:
        out = execute(server, token, f"""
from pathlib import Path
from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market
bundle = new_product("data", "{name}", Path.cwd())
result = Market().publish(bundle)
print(result["product"], result["state"], Market().me()["unit"]["slug"])
""")
    finally:
        stop_server(hub_url, user, token)
    assert out.split() == [name, "submitted", "d"]


def test_shelf_and_product_pages(hub_url, logins):
    browser = HubSession(hub_url)
    browser.login("subscriber-e", logins["subscriber-e"])
    home = browser.open_marketplace().text
    assert 'id="me-balance"' in home and "Electricity theft detection" in home
    assert "Waiting for review" not in home  # operators only
    assert 'id="log-checkpoint"' in home
    filtered = browser.http.get(browser.url("services/marketplace/"),
                                params={"kind": "tool", "q": "tariff"}).text
    assert "Tariff risk prediction" in filtered and "EV charger layout" not in filtered
    response = browser.http.get(browser.url(
        "services/marketplace/products/electricity-theft-detection"))
    page = response.text
    assert 'id="units-using"' in page and "Sharing agreement" in page
    # every page: a policy with no inline script, and no type sniffing
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in page and " onclick=" not in page
    missing = browser.http.get(browser.url("services/marketplace/products/no-such-thing"))
    assert missing.status_code == 404 and "no product" in missing.text
