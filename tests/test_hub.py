"""Acceptance of the foundation through the real hub: NativeAuthenticator pages, hub OAuth into
the marketplace, a notebook server's own token, scopes, bad input, restart with state."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from notebook_client import execute, run_in_terminal, spawn_server, stop_server

from marketplace_ext.demo import DEMO_UNITS
from marketplace_ext.hubsession import HubPageError, HubSession
from marketplace_ext.platform.supervisor import read_unit_endpoints

NEWBIE = f"newbie-{secrets.token_hex(3)}"
NEWBIE_PASSWORD = secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def operator(hub_url, logins) -> HubSession:
    session = HubSession(hub_url)
    session.login("operator", logins["operator"])
    session.open_marketplace()
    return session


def login(hub_url: str, user: str, password: str) -> HubSession:
    session = HubSession(hub_url)
    session.login(user, password)
    session.open_marketplace()
    return session


def test_demo_units_and_members_are_mirrored_in_hub_groups(operator):
    r = operator.market("GET", "units")
    assert r.status_code == 200
    # other test modules sharing the platform may add throwaway units (the authorization
    # matrix does): the demo's five are what the seed made
    units = {u["slug"]: u for u in r.json()["units"] if u["slug"] in DEMO_UNITS}
    assert sorted(units) == ["a", "b", "c", "d", "e"]
    assert all(u["member_count"] == 2 for u in units.values())

    detail = operator.market("GET", "units/a").json()
    assert {m["user"]: m["roles"] for m in detail["members"]} == {
        "publisher-a": ["publisher"], "subscriber-a": []}
    group = operator.hub_api("GET", "groups/unit-a").json()
    assert sorted(group["users"]) == ["publisher-a", "subscriber-a"]
    assert "publisher-a" in operator.hub_api("GET", "groups/publishers").json()["users"]


def test_sign_up_needs_operator_authorization(hub_url, operator):
    newbie = HubSession(hub_url)
    message = newbie.signup(NEWBIE, NEWBIE_PASSWORD)
    assert "sent to the admin" in message
    with pytest.raises(HubPageError):
        newbie.login(NEWBIE, NEWBIE_PASSWORD)
    assert operator.sign_ups()[NEWBIE] is False

    operator.authorize(NEWBIE)
    assert operator.sign_ups()[NEWBIE] is True
    operator.authorize(NEWBIE)  # idempotent: the page's toggle is not flipped back
    assert operator.sign_ups()[NEWBIE] is True

    newbie.login(NEWBIE, NEWBIE_PASSWORD)
    page = newbie.open_marketplace()
    assert f'<span id="me-name">{NEWBIE}</span>' in page.text
    me = newbie.market("GET", "me").json()
    assert me == {"name": NEWBIE, "unit": None, "roles": ["subscriber"],
                  "scopes": ["custom:marketplace:subscribe"]}


def test_subscriber_gets_403_on_operator_endpoints(hub_url, logins):
    sub = login(hub_url, "subscriber-a", logins["subscriber-a"])
    assert sub.market("GET", "me").json()["unit"]["slug"] == "a"
    r = sub.market("POST", "units", json={"slug": "zz", "name": "Mine"})
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "forbidden" and "operator" in body["message"]
    r = sub.market("PUT", "units/a/members/subscriber-a", json={"roles": ["operator"]})
    assert r.status_code == 403
    # members of another unit are not listed to a subscriber
    assert sub.market("GET", "units/b").status_code == 403
    assert sub.market("GET", "units/a").status_code == 200


def test_cookie_writes_need_the_xsrf_header(operator):
    r = operator.http.post(operator.url("services/marketplace/api/units"),
                           json={"slug": "xsrf", "name": "No header"}, allow_redirects=False)
    assert r.status_code in (401, 403)
    assert "xsrf" not in {u["slug"] for u in operator.market("GET", "units").json()["units"]}


def test_unauthenticated_api_call_is_refused_without_redirect(hub_url):
    r = requests.get(f"{hub_url}/services/marketplace/api/me", allow_redirects=False)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated"
    r = requests.get(f"{hub_url}/services/marketplace/api/me",
                     headers={"Authorization": "token not-a-token"}, allow_redirects=False)
    assert r.status_code in (401, 403)


@pytest.mark.parametrize(
    "method,path,body,status,field",
    [
        ("POST", "units", b"{not json", 400, "body"),
        ("POST", "units", b"[1, 2]", 400, "body"),
        ("POST", "units", b"", 400, "body"),
        ("POST", "units", {"name": "No slug"}, 400, "slug"),
        ("POST", "units", {"slug": "Bad Slug", "name": "x"}, 400, "slug"),
        ("POST", "units", {"slug": "zz"}, 400, "name"),
        ("POST", "units", {"slug": "a", "name": "Second A"}, 409, "slug"),
        ("PUT", "units/nosuch/members/subscriber-a", {}, 404, "unit"),
        ("PUT", "units/b/members/subscriber-a", {}, 409, "user"),
        ("PUT", "units/a/members/subscriber-a", {"roles": ["king"]}, 400, "roles"),
        ("PUT", "units/a/members/subscriber-a", {"roles": "publisher"}, 400, "roles"),
        ("PUT", "units/a/members/Not%20A%20User", {}, 400, "user"),
        ("DELETE", "units/b/members/subscriber-a", None, 404, "user"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(operator, method, path, body, status, field):
    before = operator.market("GET", "units").json()
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    r = operator.market(method, path, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and err["message"] and err["error"]
    assert operator.market("GET", "units").json() == before  # nothing half-created
    assert operator.hub_api("GET", "groups/unit-zz").status_code == 404
    assert "unit-a" not in operator.hub_api("GET", "users/subscriber-b").json()["groups"]


def test_member_changes_are_mirrored_and_html_is_escaped(hub_url, operator):
    r = operator.market("POST", "units", json={"slug": "lab", "name": "<b>Grid</b> Lab & Co"})
    assert r.status_code == 201, r.text
    assert operator.hub_api("GET", "groups/unit-lab").status_code == 200

    r = operator.market("PUT", f"units/lab/members/{NEWBIE}", json={"roles": ["publisher"]})
    assert r.status_code == 201, r.text
    assert r.json() == {"user": NEWBIE, "unit": "lab", "roles": ["publisher"]}
    assert operator.market("PUT", f"units/lab/members/{NEWBIE}").status_code == 200
    assert NEWBIE in operator.hub_api("GET", "groups/unit-lab").json()["users"]
    assert NEWBIE in operator.hub_api("GET", "groups/publishers").json()["users"]

    newbie = login(hub_url, NEWBIE, NEWBIE_PASSWORD)  # a new login picks up the new role
    assert newbie.market("GET", "me").json()["roles"] == ["publisher", "subscriber"]
    page = newbie.open_marketplace().text
    assert "&lt;b&gt;Grid&lt;/b&gt; Lab &amp; Co" in page and "<b>Grid</b>" not in page

    extra = f"temp-{secrets.token_hex(3)}"
    assert operator.market("PUT", f"units/lab/members/{extra}").status_code == 201
    assert operator.market("DELETE", f"units/lab/members/{extra}").status_code == 204
    assert extra not in operator.hub_api("GET", "groups/unit-lab").json()["users"]
    members = [m["user"] for m in operator.market("GET", "units/lab").json()["members"]]
    assert members == [NEWBIE]


def test_notebook_token_calls_the_service_with_the_users_rights(hub_url, logins):
    """The server's own JUPYTERHUB_API_TOKEN, used from the user's JupyterLab terminal (the
    kernels are sandboxed without a network: see test_confinement_users)."""
    user = "subscriber-b"
    session = HubSession(hub_url)
    session.login(user, logins[user])
    token = session.create_token("test")
    script_dir = Path(tempfile.mkdtemp(prefix="hub-test-"))  # the account reads it: not in
    script_dir.chmod(0o755)  # pytest's 0700 temporary root
    script = script_dir / "call.py"
    script.write_text("""
import json, os, urllib.request, urllib.error
def call(method, path, body=None):
    req = urllib.request.Request(os.environ["MARKETPLACE_URL"] + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
result = {"unit_env": os.environ.get("MARKET_UNIT"), "me": call("GET", "api/me"),
          "create": call("POST", "api/units", {"slug": "nb", "name": "From NB"})}
print("@@RESULT" + json.dumps(result) + "RESULT@@")
""")
    script.chmod(0o644)
    server = spawn_server(hub_url, user, token)
    try:
        out = run_in_terminal(server, token, f"python {script}")
    finally:
        stop_server(hub_url, user, token)
        shutil.rmtree(script_dir)
    result = json.loads(out.split("@@RESULT")[1].split("RESULT@@")[0])
    assert result["unit_env"] == "b"
    status, me = result["me"]
    assert status == 200 and me["name"] == user and me["unit"]["slug"] == "b"
    assert me["roles"] == ["subscriber"]
    status, err = result["create"]
    assert status == 403 and err["error"] == "forbidden"


def test_openapi_describes_every_route(hub_url):
    import re

    from marketplace_ext.handlers import default_handlers

    spec = requests.get(f"{hub_url}/services/marketplace/api/openapi.json").json()
    routes = {re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern) for pattern, _ in default_handlers
              if pattern.startswith("/api/")}
    assert set(spec["paths"]) == routes
    for pattern, handler in default_handlers:
        if pattern.startswith("/api/"):
            path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
            implemented = {m.lower() for m in ("GET", "POST", "PUT", "DELETE")
                           if m.lower() in handler.__dict__}
            documented = set(spec["paths"][path]) - {"parameters"}
            assert documented == implemented, path


def test_restart_keeps_state_and_ctrl_c_leaves_nothing_behind(platform_proc, hub_url, logins):
    left = platform_proc.stop()
    assert platform_proc.started_pids, "the launcher started no processes?"
    assert left == set(), f"processes left after Ctrl-C: {left}"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{hub_url}/hub/api", timeout=5)

    platform_proc.start()
    assert "Seeding the demo" not in platform_proc.output().split("Starting JupyterHub")[-1]
    assert platform_proc.logins() == logins
    operator = login(hub_url, "operator", logins["operator"])
    units = {u["slug"]: u["member_count"] for u in operator.market("GET", "units").json()["units"]
             if u["slug"] in (*DEMO_UNITS, "lab")}
    assert units == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "lab": 1}
    newbie = login(hub_url, NEWBIE, NEWBIE_PASSWORD)
    assert newbie.market("GET", "me").json()["unit"]["slug"] == "lab"


def test_notebook_reaches_its_units_data_platform(hub_url, logins, platform_proc):
    """The acceptance of the data middle platform: no code, just the notebook's environment."""
    user = "subscriber-a"
    session = HubSession(hub_url)
    session.login(user, logins[user])
    token = session.create_token("spark")
    server = spawn_server(hub_url, user, token)
    try:
        out = execute(server, token, """
import json, os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print(json.dumps({"remote": os.environ["SPARK_REMOTE"],
                  "rows": spark.table("unit_a.consumption_daily").count()}))
""", timeout=180)
    finally:
        stop_server(hub_url, user, token)
    result = json.loads(out.strip().splitlines()[-1])
    # the unit's own server (its endpoint and token), or the one shared by every unit when
    # the platform was started with MARKET_SPARK_REMOTE
    endpoints = read_unit_endpoints(platform_proc.var_dir / "platform")
    assert result["remote"] == (endpoints["a"] if endpoints
                                else platform_proc.env["MARKET_SPARK_REMOTE"])
    loaded = json.loads((platform_proc.var_dir / "demo_data.json").read_text())
    assert result["rows"] == loaded["tables"]["a"]["consumption_daily"] > 0
