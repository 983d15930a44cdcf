"""Workshops without a platform: creating one (and the field each bad input names), enrolment
against the capacity, reminders, the materials staged for and installed into a trainee's
JupyterLab home, and exercises graded by the host's checker notebook through papermill in the
real sandbox (pass, fail with the checker's feedback, a notebook that raises)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import timedelta

import nbformat
import pytest
from helpers import notebook, sandbox_root, wait_until
from sqlalchemy import func, select

from marketplace_ext import dbutil, points
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.errors import Conflict, Forbidden, InvalidField
from marketplace_ext.exchange import workshops
from marketplace_ext.exchange.grading import Grader
from marketplace_ext.exchange.inbox_orm import Notification
from marketplace_ext.exchange.workshops_orm import Enrolment, Submission
from marketplace_ext.orm import Unit, make_engine, make_session_factory, utcnow, write_transaction

pytest_plugins = ["sandbox_helpers"]

RULES = points.EconomyRules()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


INTRO = notebook("x = 1", "print('welcome')")


def workshop_body(**overrides) -> dict:
    body = {"title": "Theft detection 101", "summary": "hands-on",
            "starts_at": (utcnow() + timedelta(days=2)).isoformat() + "Z", "capacity": 2,
            "materials": {"intro.ipynb": b64(INTRO), "data/meters.csv": b64("id,kwh\n1,3\n")}}
    body.update(overrides)
    return body


def host(unit: str = "h") -> Caller:
    return Caller(name="host-user", scopes=frozenset({SCOPE_PUBLISH, SCOPE_SUBSCRIBE}),
                  unit=unit)


def trainee(name: str, unit: str = "t") -> Caller:
    return Caller(name=name, scopes=frozenset({SCOPE_SUBSCRIBE}), unit=unit)


def make_world(db_url: str, tmp_path):
    dbutil.upgrade(db_url)
    engine = make_engine(db_url)
    sf = make_session_factory(engine)
    with sf() as s:
        write_transaction(s)
        for slug in ("h", "t"):
            unit = Unit(slug=slug, name=slug.upper(), created_by="test")
            s.add(unit)
            s.flush()
            points.open_account(s, unit, RULES, "test")
        s.commit()
    return engine, sf, BlobStore(tmp_path / "blobs")


@pytest.fixture
def world(db_url, tmp_path):
    engine, sf, blobs = make_world(db_url, tmp_path)
    yield sf, blobs
    engine.dispose()


@pytest.fixture
def sqlite_world(tmp_path):
    engine, sf, blobs = make_world(f"sqlite:///{tmp_path / 'market.sqlite'}", tmp_path)
    yield sf, blobs
    engine.dispose()


def create(sf, blobs, **overrides):
    with sf() as s:
        write_transaction(s)
        w = workshops.create_workshop(s, blobs, host(), workshop_body(**overrides))
        s.commit()
        return w.id


BAD = [
    ("title", ""), ("title", "x" * 201), ("capacity", 0), ("capacity", "3"),
    ("starts_at", "2020-01-01T00:00:00Z"), ("starts_at", "tomorrow"),
    ("materials", {}), ("materials", {"../escape.ipynb": b64(INTRO)}),
    ("materials", {"notes.md": b64("# only notes")}),
    ("materials", {"intro.ipynb": b64("{not a notebook")}),
    ("materials", {"intro.ipynb": "***"}), ("materials", {"run.sh": b64("rm -rf /")}),
    ("materials", {"outputs/x.ipynb": b64(INTRO)}),
]


def test_bad_workshops_name_the_field_and_write_nothing(sqlite_world):
    sf, blobs = sqlite_world
    for field, value in BAD:
        with sf() as s:
            write_transaction(s)
            with pytest.raises(InvalidField) as e:
                workshops.create_workshop(s, blobs, host(), workshop_body(**{field: value}))
            assert e.value.field == field, (field, value)
            s.rollback()
            assert workshops.list_workshops(s)[1] == 0


def test_only_publishers_and_operators_host(world):
    sf, blobs = world
    with sf() as s:
        write_transaction(s)
        with pytest.raises(Forbidden):
            workshops.create_workshop(s, blobs, trainee("t1"), workshop_body())
        operator = Caller(name="op", scopes=frozenset({SCOPE_APPROVE}), unit=None)
        w = workshops.create_workshop(s, blobs, operator, workshop_body())
        assert w.host_unit_id is None and w.host == "op"


def test_enrolment_stops_at_the_capacity(world):
    sf, blobs = world
    wid = create(sf, blobs, capacity=2)
    for name in ("t1", "t2"):
        with sf() as s:
            write_transaction(s)
            workshops.enrol(s, trainee(name), workshops.get_workshop(s, wid))
            s.commit()
    refusals = {"t3": "capacity", "t1": "workshop", "host-user": "workshop"}
    for name, field in refusals.items():
        caller = host() if name == "host-user" else trainee(name)
        with sf() as s:
            write_transaction(s)
            with pytest.raises(Conflict) as e:
                workshops.enrol(s, caller, workshops.get_workshop(s, wid))
            assert e.value.field == field, name
            s.rollback()
    with sf() as s:
        assert s.scalar(select(func.count()).select_from(Enrolment)) == 2
        seen = workshops.workshop_json(s, trainee("t1"), workshops.get_workshop(s, wid), True)
        assert seen["places_left"] == 0 and seen["you_are_enrolled"]
        assert "trainees" not in seen  # the host's view only
        assert workshops.workshop_json(s, host(), workshops.get_workshop(s, wid),
                                       True)["trainees"] == ["t1", "t2"]


def test_reminders_go_once_to_each_trainee_of_a_workshop_starting_soon(world):
    sf, blobs = world
    soon = create(sf, blobs, starts_at=(utcnow() + timedelta(hours=12)).isoformat() + "Z",
                  title="Soon")
    later = create(sf, blobs, title="Later")  # in two days
    with sf() as s:
        write_transaction(s)
        for wid in (soon, later):
            workshops.enrol(s, trainee("t1"), workshops.get_workshop(s, wid))
        workshops.enrol(s, trainee("t2"), workshops.get_workshop(s, soon))
        s.commit()
    with sf() as s:
        write_transaction(s)
        assert workshops.send_reminders(s) == 2
        s.commit()
    with sf() as s:
        write_transaction(s)
        assert workshops.send_reminders(s) == 0  # once each
        s.commit()
        notes = s.scalars(select(Notification).order_by(Notification.id)).all()
    assert [(n.user_name, n.kind) for n in notes] == [("t1", "workshop_reminder"),
                                                     ("t2", "workshop_reminder")]
    assert "Soon" in notes[0].subject and notes[0].link == f"workshops/{soon}"
    assert f"Workshops/{soon}-Soon" in notes[0].body


def test_materials_reach_the_home_and_a_refresh_keeps_the_trainees_edits(tmp_path):
    staged = tmp_path / "workshop_homes"
    files = {"intro.ipynb": INTRO, "data/meters.csv": b"id,kwh\n1,3\n"}
    workshops.write_home_materials(staged, "trainee-1", "7-Theft-101", files)
    found = workshops.read_home_materials(staged, "trainee-1")
    assert found == {"7-Theft-101/intro.ipynb": INTRO, "7-Theft-101/data/meters.csv":
                     b"id,kwh\n1,3\n"}
    assert workshops.read_home_materials(staged, "../etc") == {}
    assert workshops.read_home_materials(staged, "nobody") == {}

    home = tmp_path / "home"
    home.mkdir()

    def install(payload: dict[str, bytes]) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "marketplace_ext.start_here", str(home), "--stdin",
             workshops.HOME_FOLDER],
            input=json.dumps({k: b64(v) for k, v in payload.items()}), capture_output=True,
            text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    assert sorted(install(found)["added"]) == sorted(found)
    folder = home / "Workshops" / "7-Theft-101"
    assert (folder / "intro.ipynb").read_bytes() == INTRO
    (folder / "intro.ipynb").write_bytes(b"my notes")  # the trainee works in it
    done = install({**found, "7-Theft-101/data/meters.csv": b"id,kwh\n1,4\n"})
    assert done["kept"] == ["7-Theft-101/intro.ipynb"]
    assert done["updated"] == ["7-Theft-101/data/meters.csv"]
    assert (folder / "intro.ipynb").read_bytes() == b"my notes"


# --- exercises graded through papermill in the sandbox ----------------------------------------

CHECKER = nbformat.writes(nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell('submission_dir = "submission"\nn = 0',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, os\n"
            "answer = json.load(open(os.path.join(submission_dir, 'answer.json')))['sum']\n"
            "expected = n * (n + 1) // 2\n"
            "passed = answer == expected\n"
            "feedback = 'well done' if passed else f'expected {expected}, got {answer}'\n"
            "os.makedirs('outputs', exist_ok=True)\n"
            "json.dump({'passed': passed, 'feedback': feedback}, "
            "open('outputs/grade.json', 'w'))"),
    ],
    metadata={"kernelspec": {"name": "grid-python", "display_name": "grid",
                             "language": "python"}}))


def answer_notebook(expression: str) -> dict:
    nb = notebook("n = 3", "import json, os, csv\n"
                  "rows = list(csv.DictReader(open('data/meters.csv')))  # the materials\n"
                  "assert rows[0]['kwh'] == '3'\n"
                  f"total = {expression}\n"
                  "os.makedirs('outputs', exist_ok=True)\n"
                  "json.dump({'sum': total}, open('outputs/answer.json', 'w'))")
    return json.loads(nb)


def test_exercises_pass_fail_and_error_with_the_checkers_feedback(sqlite_world, tmp_path):
    sf, blobs = sqlite_world
    wid = create(sf, blobs, capacity=5)
    with sf() as s:
        write_transaction(s)
        w = workshops.get_workshop(s, wid)
        for name in ("t1", "t2", "t3"):
            workshops.enrol(s, trainee(name), w)
        with pytest.raises(InvalidField) as e:  # the checker must be a notebook
            workshops.add_exercise(s, blobs, host(), w, {"name": "sum", "title": "Sum",
                                                         "checker": {"cells": 1}})
        assert e.value.field == "checker"
        with pytest.raises(Forbidden):
            workshops.add_exercise(s, blobs, trainee("t1"), w, {
                "name": "sum", "title": "Sum", "checker": json.loads(CHECKER)})
        workshops.add_exercise(s, blobs, host(), w, {
            "name": "sum", "title": "Sum 1..n", "parameters": {"n": 10},
            "outputs": ["answer.json"], "checker": json.loads(CHECKER)})
        s.commit()
    notebooks = {"t1": answer_notebook("sum(range(n + 1))"),  # 55: passes
                 "t2": answer_notebook("sum(range(n))"),  # 45: fails
                 "t3": answer_notebook("1 / 0")}  # raises
    ids = {}
    with sf() as s:
        write_transaction(s)
        w = workshops.get_workshop(s, wid)
        with pytest.raises(Forbidden):  # not enrolled
            workshops.submit_exercise(s, blobs, trainee("t9"), w, "sum",
                                      {"notebook": notebooks["t1"]})
        for name, nb in notebooks.items():
            ids[name] = workshops.submit_exercise(s, blobs, trainee(name), w, "sum",
                                                  {"notebook": nb}).id
        s.commit()
    work_root = sandbox_root(tmp_path)
    grader = Grader(sf, blobs, work_root, max_workers=2)
    try:
        # as a restarted service does: everything still "grading" is graded
        assert grader.recover() == 3

        def verdicts():
            with sf() as s:
                subs = {n: s.get(Submission, i) for n, i in ids.items()}
                return subs if all(x.status != "grading" for x in subs.values()) else None

        subs = wait_until(verdicts, 300, "the three verdicts", poll=0.5)
    finally:
        grader.shutdown()
    assert (subs["t1"].status, subs["t1"].passed, subs["t1"].feedback) == ("passed", True,
                                                                         "well done")
    assert (subs["t2"].status, subs["t2"].passed) == ("failed", False)
    assert subs["t2"].feedback == "expected 55, got 45"  # the checker's own words
    assert subs["t3"].status == "failed"
    assert subs["t3"].feedback.startswith("your notebook stopped: ZeroDivisionError")
    assert list(work_root.iterdir()) == []  # every sandbox directory removed
    with sf() as s:
        mine = workshops.list_submissions(s, trainee("t2"), workshops.get_workshop(s, wid))
        assert [x.user_name for x in mine] == ["t2"]  # a trainee sees only their own
