"""Workshops and competitions on the real platform (issue 16's acceptance): a trainee enrols,
finds the materials in their JupyterLab, passes one exercise and fails another (graded by the
host's checker notebook in the sandbox); a competition ranks three submissions correctly on its
public and private splits, the hidden labels reach nothing a trainee receives (canary check),
the host awards the winner from its unit's account, exactly and certified. Bad input: a full
workshop, a submission after the deadline. And enrolling in a browser."""

from __future__ import annotations

import json
import pwd
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from browser import SERVICE, assert_accessible, fits_narrow_window, screenshot
from canaries import find_canaries
from helpers import market_as, notebook, wait_until
from notebook_client import spawn_server, stop_server
from test_competitions import CANARIES, FEATURES, LABELS, PLAYERS, predictions_notebook
from test_workshops import CHECKER, answer_notebook

from marketplace_ext import accounts
from marketplace_ext.client import MarketAPIError
from marketplace_ext.hubsession import HubSession

HOST = "publisher-c"  # unit c hosts
TRAINEES = {"t1": "publisher-b", "t2": "subscriber-d", "t3": "subscriber-a"}
LAB_USER = TRAINEES["t1"]  # no other test starts publisher-b's server
DEADLINE_SECONDS = 45


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the templates, without a platform -----------------------------------------------------


def test_the_workshop_page_escapes_the_hosts_and_checkers_text():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(accounts.__file__).parent / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    caller = type("C", (), {"scopes": frozenset(), "unit": "a", "name": "t", "roles": [],
                            "is_operator": False})()
    w = {"id": 7, "title": "<script>x</script>", "summary": "<b>bold</b>",
         "starts_at": "2027-01-01T09:00:00Z", "capacity": 2, "enrolled": 2, "places_left": 0,
         "host": "h", "host_unit": "c", "materials": ["intro.ipynb"], "you_are_enrolled": False,
         "you_host": False, "lab_path": "Workshops/7-x", "exercises": [], "competitions": []}
    board = {"competition": "c", "title": "C", "metric": "accuracy", "closed": False,
             "deadline": "2027-01-01T00:00:00Z", "private": None,
             "public": [{"rank": 1, "user": "u1", "score": 0.75, "submissions": 2}]}
    mine = [{"exercise": "e", "competition": None, "status": "failed", "public_score": None,
             "feedback": "<img src=x onerror=alert(1)>"}]
    html = env.get_template("workshop.html").render(
        prefix="/services/marketplace/", hub_prefix="/hub/", caller=caller, xsrf="tok",
        nav="workshops", errors={"capacity": "the workshop is full"}, form={}, w=w,
        boards=[board], mine=mine, lab_url="/hub/user-redirect/lab/tree/Workshops/7-x",
        notice=None)
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "<b>bold</b>" not in html
    assert 'role="alert">the workshop is full' in html  # the refusal next to the button
    assert "0.7500" in html and "Final ranking" not in html  # no private split before the end


def test_the_new_workshop_form_becomes_the_apis_body():
    from marketplace_ext.errors import InvalidField
    from marketplace_ext.handlers.workshops_pages import workshop_form_body

    body = workshop_form_body(
        {"title": "T", "summary": "", "starts_at": "2027-03-01T09:30", "capacity": "12"},
        [{"filename": "intro.ipynb", "body": b"{}"}, {"filename": "C:\\Users\\x\\data.csv",
                                                     "body": b"id\n1\n"},
         {"filename": "", "body": b""}])
    assert body == {"title": "T", "summary": "", "starts_at": "2027-03-01T09:30:00Z",
                    "capacity": 12, "materials": {"intro.ipynb": "e30=",
                                                  "data.csv": "aWQKMQo="}}
    with pytest.raises(InvalidField) as e:
        workshop_form_body({"capacity": "many"}, [])
    assert e.value.field == "capacity"


@pytest.fixture(scope="module")
def course(hub_url, logins):
    """publisher-c's workshop: materials, two exercises, a competition closing soon; three
    trainees enrolled, each has submitted (graded in the background)."""
    host = market_as(hub_url, HOST, logins[HOST])
    users = {t: market_as(hub_url, u, logins[u]) for t, u in TRAINEES.items()}
    w = host.create_workshop(
        f"Theft detection hands-on {secrets.token_hex(2)}", _at(3600 * 6), 3,
        {"intro.ipynb": notebook("x = 1", "print('welcome')"), "features.csv": FEATURES.encode(),
         "data/meters.csv": b"id,kwh\n1,3\n"}, summary="Exercises and a small competition.")
    wid = w["id"]
    for name, n in (("sum-10", 10), ("sum-20", 20)):
        host.add_exercise(wid, name, f"Sum 1..{n}", json.loads(CHECKER), {"n": n})
    host.add_competition(wid, "theft", "Find the thieves", _at(DEADLINE_SECONDS), LABELS)
    for user in users.values():
        user.enrol(wid)
    # the competition's three submissions first: they must arrive before its deadline
    subs = {t: users[t].submit_predictions(wid, "theft", predictions_notebook(wrong))["id"]
            for t, wrong in PLAYERS.items()}
    t1 = users["t1"]
    subs["pass"] = t1.submit_exercise(wid, "sum-10", answer_notebook("sum(range(n + 1))"))["id"]
    subs["fail"] = t1.submit_exercise(wid, "sum-20", answer_notebook("sum(range(n))"))["id"]
    return {"id": wid, "host": host, "users": users, "subs": subs,
            "folder": w["lab_path"]}


def test_a_trainee_finds_the_materials_in_jupyterlab(course, hub_url, logins):
    session = HubSession(hub_url)
    session.login(LAB_USER, logins[LAB_USER])
    token = session.create_token("workshop materials test")
    url = spawn_server(hub_url, LAB_USER, token)
    headers = {"Authorization": f"token {token}"}
    try:
        listing = requests.get(f"{url}api/contents/{course['folder']}", headers=headers,
                               timeout=60)
        assert listing.status_code == 200, listing.text
        names = {item["name"] for item in listing.json()["content"]}
        assert {"intro.ipynb", "features.csv", "data"} <= names
        intro = requests.get(f"{url}api/contents/{course['folder']}/intro.ipynb",
                             headers=headers, timeout=60).json()
        assert intro["type"] == "notebook"
        assert "welcome" in json.dumps(intro["content"])
        home = Path(pwd.getpwnam(accounts.user_account(LAB_USER)).pw_dir)
        copied = home / course["folder"] / "intro.ipynb"
        assert copied.stat().st_uid == pwd.getpwnam(accounts.user_account(LAB_USER)).pw_uid
        # nothing of the competition's labels in the trainee's home
        for path in (home / "Workshops").rglob("*"):
            if path.is_file():
                assert find_canaries(path.read_bytes(), CANARIES) == [], path
    finally:
        stop_server(hub_url, LAB_USER, token)


def test_exercises_pass_and_fail_with_the_checkers_feedback(course):
    t1, wid = course["users"]["t1"], course["id"]
    passed = t1.wait_submission(wid, course["subs"]["pass"], timeout=600)
    failed = t1.wait_submission(wid, course["subs"]["fail"], timeout=600)
    assert (passed["status"], passed["passed"], passed["feedback"]) == ("passed", True,
                                                                       "well done")
    assert (failed["status"], failed["passed"]) == ("failed", False)
    assert failed["feedback"] == "expected 210, got 190"
    # another trainee does not see them
    with pytest.raises(MarketAPIError) as e:
        course["users"]["t2"].submission(wid, passed["id"])
    assert e.value.status == 404


def _balance(operator, unit: str) -> int:
    return operator.request("GET", f"units/{unit}/account")["centipoints"]


def test_a_competition_ranks_three_submissions_and_the_labels_stay_hidden(
        course, hub_url, logins):
    wid, users, host = course["id"], course["users"], course["host"]
    verdicts = {t: users[t].wait_submission(wid, course["subs"][t], timeout=600)
                for t in PLAYERS}
    assert {t: v["status"] for t, v in verdicts.items()} == dict.fromkeys(PLAYERS, "scored"), \
        {t: v["feedback"] for t, v in verdicts.items()}
    early = users["t2"].leaderboard(wid, "theft")
    assert [r["user"] for r in early["public"]] == [TRAINEES[t] for t in ("t1", "t2", "t3")]
    scores = [r["score"] for r in early["public"]]
    assert scores[0] == 1.0 and scores[2] == 0.0 and 0 < scores[1] < 1
    if not early["closed"]:
        assert early["private"] is None  # the final ranking waits for the deadline
        with pytest.raises(MarketAPIError) as e:
            host.award(wid, "theft", TRAINEES["t1"], 30)
        assert (e.value.status, e.value.field) == (409, "deadline")
    wait_until(lambda: users["t2"].leaderboard(wid, "theft")["closed"],
               DEADLINE_SECONDS + 120, "the competition's deadline", poll=1)
    final = users["t2"].leaderboard(wid, "theft")
    assert [r["user"] for r in final["private"]] == [TRAINEES[t] for t in ("t1", "t2", "t3")]
    assert [final["private"][0]["score"], final["private"][2]["score"]] == [1.0, 0.0]

    # bad input: a submission after the deadline, nothing stored
    before = len(users["t3"].request("GET", f"workshops/{wid}/submissions")["submissions"])
    with pytest.raises(MarketAPIError) as e:
        users["t3"].submit_predictions(wid, "theft", predictions_notebook("False"))
    assert (e.value.status, e.value.field) == (409, "deadline")
    assert len(users["t3"].request("GET", f"workshops/{wid}/submissions")[
        "submissions"]) == before

    # the host awards the winner from its unit's account: exactly, certified
    operator = market_as(hub_url, "operator", logins["operator"])
    c_before, b_before = _balance(operator, "c"), _balance(operator, "b")
    prize = host.award(wid, "theft", TRAINEES["t1"], 30)
    assert (_balance(operator, "c"), _balance(operator, "b")) == (c_before - 3000,
                                                                  b_before + 3000)
    entry = users["t1"].log_entry(prize["log_index"])  # the winner's unit is a party to it
    assert entry["type"] == "workshop_award" and entry["access"] != "public"
    assert (entry["statement"]["winner"], entry["statement"]["amount"],
            entry["statement"]["payer"]) == (TRAINEES["t1"], "30.00", "unit:c")
    with pytest.raises(MarketAPIError) as e:  # once per winner; the ledger untouched
        host.award(wid, "theft", TRAINEES["t1"], 30)
    assert (e.value.status, e.value.field) == (409, "user")
    assert (_balance(operator, "c"), _balance(operator, "b")) == (c_before - 3000,
                                                                  b_before + 3000)

    # the canary check: nothing any trainee received carries a hidden label
    received = [early, final]
    for user in users.values():
        received += [user.request("GET", f"workshops/{wid}"),
                     user.request("GET", f"workshops/{wid}/submissions"),
                     user.request("GET", f"workshops/{wid}/materials"),
                     user.leaderboard(wid, "theft"),
                     user.http.get(f"{user.url}workshops/{wid}", timeout=60).text]
    dump = json.dumps(received)
    assert find_canaries(dump, CANARIES) == []
    assert "theft,HIDDEN" not in dump and LABELS.splitlines()[1] not in dump
    assert find_canaries(LABELS, CANARIES)  # (the check can fail)


def test_a_full_workshop_refuses_the_next_trainee(course, hub_url, logins):
    host = course["host"]
    small = host.create_workshop(f"Small room {secrets.token_hex(2)}", _at(7200), 1,
                                 {"intro.ipynb": notebook("x = 1")})
    course["users"]["t2"].enrol(small["id"])
    with pytest.raises(MarketAPIError) as e:
        course["users"]["t3"].enrol(small["id"])
    assert (e.value.status, e.value.field) == (409, "capacity")
    assert host.request("GET", f"workshops/{small['id']}")["enrolled"] == 1


def test_enrolling_in_the_browser(course, page_as, hub_url, logins):
    host = course["host"]
    title = f"Load forecasting clinic {secrets.token_hex(2)}"
    open_one = host.create_workshop(title, _at(3600 * 30), 2,
                                    {"intro.ipynb": notebook("x = 1"),
                                     "notes.md": b"# Notes\n"})
    full = host.create_workshop(f"Full room {secrets.token_hex(2)}", _at(3600 * 30), 1,
                                {"intro.ipynb": notebook("x = 1")})
    course["users"]["t1"].enrol(full["id"])

    page = page_as("publisher-e")
    page.goto(f"{hub_url}{SERVICE}workshops")
    page.get_by_role("link", name=title).click()
    page.wait_for_url(f"**/workshops/{open_one['id']}")
    assert page.locator("#places").inner_text() == "2 left of 2"
    page.get_by_role("button", name="Enrol").click()
    page.wait_for_url(f"**/workshops/{open_one['id']}?done=enrolled")
    assert "You are enrolled" in page.locator(".notice").inner_text()
    link = page.get_by_role("link", name="Open the materials in JupyterLab")
    assert link.get_attribute("href").endswith(
        f"/hub/user-redirect/lab/tree/Workshops/{open_one['id']}-"
        + title.replace(" ", "-"))
    assert page.locator("#places").inner_text() == "1 left of 2"
    assert_accessible(page)
    screenshot(page, "workshop")
    page.goto(f"{hub_url}{SERVICE}workshops")
    assert_accessible(page)
    screenshot(page, "workshops")

    # a full workshop: the refusal next to the button, nothing written
    page.goto(f"{hub_url}{SERVICE}workshops/{full['id']}")
    page.get_by_role("button", name="Enrol").click()
    alert = page.get_by_role("alert")
    assert "full" in alert.inner_text()
    assert host.request("GET", f"workshops/{full['id']}")["enrolled"] == 1

    # a host opens a workshop with the form: a bad date next to its field, then created
    host_page = page_as(HOST)
    host_page.goto(f"{hub_url}{SERVICE}workshops")
    host_page.get_by_role("link", name="Host a workshop").click()
    host_page.wait_for_url("**/workshops/new")
    assert_accessible(host_page)
    screenshot(host_page, "workshop-new")
    new_title = f"Tariff audit lab {secrets.token_hex(2)}"
    host_page.get_by_label("Title").fill(new_title)
    host_page.get_by_label("Starts (UTC)").fill("2020-01-01T09:00")
    host_page.get_by_label("Places").fill("4")
    host_page.get_by_label("Materials").set_input_files([
        {"name": "audit.ipynb", "mimeType": "application/json",
         "buffer": notebook("x = 1", "print('audit')")},
        {"name": "tariffs.csv", "mimeType": "text/csv", "buffer": b"class,price\nA,1\n"}])
    host_page.get_by_role("button", name="Open the workshop").click()
    assert "in the future" in host_page.locator("#error-starts_at").inner_text()
    assert host_page.get_by_label("Title").input_value() == new_title  # nothing typed is lost
    assert not [w for w in host.workshops() if w["title"] == new_title]
    host_page.get_by_label("Starts (UTC)").fill(_at(3600 * 48)[:16])
    host_page.get_by_label("Materials").set_input_files([
        {"name": "audit.ipynb", "mimeType": "application/json",
         "buffer": notebook("x = 1", "print('audit')")}])
    host_page.get_by_role("button", name="Open the workshop").click()
    host_page.wait_for_url("**?done=created")
    assert host_page.get_by_role("heading", level=1).inner_text() == new_title
    made = [w for w in host.workshops() if w["title"] == new_title]
    assert len(made) == 1 and made[0]["capacity"] == 4 and made[0]["materials"] == [
        "audit.ipynb"]

    narrow = page_as("publisher-e", narrow=True)
    narrow.goto(f"{hub_url}{SERVICE}workshops/{course['id']}")
    assert fits_narrow_window(narrow)
