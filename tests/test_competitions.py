"""Competitions without a platform: three prediction notebooks scored through papermill in the
real sandbox against labels that stay on the host's side, ranked on the public and the private
split (exact scores, computed here from the split key), a canary check that the labels reach
nothing a trainee receives, the deadline, and awards that move points exactly and are
certified (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from canaries import find_canaries
from helpers import notebook, sandbox_root, wait_until
from sqlalchemy import func, select
from test_workshops import b64, create, host, make_world, trainee

from marketplace_ext import points
from marketplace_ext.auth import SCOPE_APPROVE, Caller
from marketplace_ext.errors import Conflict, InvalidField
from marketplace_ext.exchange import competitions, workshops
from marketplace_ext.exchange.grading import Grader
from marketplace_ext.exchange.workshops_orm import Competition, Submission
from marketplace_ext.orm import Account, LogEntry, Unit, utcnow, write_transaction

pytest_plugins = ["sandbox_helpers"]

IDS = [f"m{i:02d}" for i in range(40)]
TRUTH = {i: ("theft" if k % 3 == 0 else "normal") for k, i in enumerate(IDS)}
CANARIES = {f"HIDDENLABEL-{k:02d}-7f3a" for k in range(len(IDS))}
LABELS = "id,label,note\n" + "".join(f"{i},{TRUTH[i]},HIDDENLABEL-{k:02d}-7f3a\n"
                                     for k, i in enumerate(IDS))
FEATURES = "id\n" + "".join(f"{i}\n" for i in IDS)


def predictions_notebook(wrong: str) -> dict:
    """Predicts every label right except where ``wrong`` (a Python condition on k) holds; it
    also looks for the hidden labels around it, and fails if it finds them."""
    truth = json.dumps(TRUTH)
    return json.loads(notebook("seed = 0", f"""\
import csv, json, os
truth = json.loads('{truth}')
ids = [r["id"] for r in csv.DictReader(open("features.csv"))]
leaks, marker = [], ("HIDDEN" + "LABEL").encode()
for top in (".", "/tmp", ".."):
    for dirpath, _, names in os.walk(top):
        for name in names:
            try:
                if marker in open(os.path.join(dirpath, name), "rb").read():
                    leaks.append(os.path.join(dirpath, name))
            except OSError:
                pass
assert not leaks, leaks
os.makedirs("outputs", exist_ok=True)
with open("outputs/predictions.csv", "w") as f:
    f.write("id,prediction\\n")
    for k, i in enumerate(ids):
        label = truth[i]
        if {wrong}:
            label = "normal" if label == "theft" else "theft"
        f.write(f"{{i}},{{label}}\\n")
"""))


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


PLAYERS = {"t1": "False", "t2": "k % 2 == 1", "t3": "True"}  # 100 %, ~50 %, 0 %


def expected(split_key: str, percent: int, wrong: str) -> tuple[float, float]:
    def public(i: str) -> bool:
        digest = hmac.new(split_key.encode(), i.encode(), hashlib.sha256).hexdigest()
        return int(digest[:8], 16) % 100 < percent

    right = {i: not eval(wrong, {"k": k}) for k, i in enumerate(IDS)}  # noqa: S307
    pub = [i for i in IDS if public(i)]
    priv = [i for i in IDS if not public(i)]
    return sum(right[i] for i in pub) / len(pub), sum(right[i] for i in priv) / len(priv)


def competition_body(**overrides) -> dict:
    body = {"name": "theft", "title": "Find the thieves", "metric": "accuracy",
            "deadline": (utcnow() + timedelta(hours=1)).isoformat() + "Z",
            "public_percent": 50, "labels": LABELS}
    body.update(overrides)
    return body


def setup_competition(sf, blobs, players=PLAYERS) -> int:
    wid = create(sf, blobs, capacity=10,
                 materials={"start.ipynb": b64(notebook("x = 1", "print(x)")),
                            "features.csv": b64(FEATURES)})
    with sf() as s:
        write_transaction(s)
        w = workshops.get_workshop(s, wid)
        for name in players:
            workshops.enrol(s, trainee(name), w)
        competitions.create_competition(s, blobs, host(), w, competition_body())
        s.commit()
    return wid


def test_three_submissions_are_ranked_and_the_labels_stay_hidden(sqlite_world, tmp_path):
    sf, blobs = sqlite_world
    wid = setup_competition(sf, blobs)
    ids = {}
    with sf() as s:
        write_transaction(s)
        w = workshops.get_workshop(s, wid)
        for name, wrong in PLAYERS.items():
            ids[name] = competitions.submit(s, blobs, trainee(name), w, "theft",
                                            {"notebook": predictions_notebook(wrong)}).id
        s.commit()
    grader = Grader(sf, blobs, sandbox_root(tmp_path), max_workers=2)
    try:
        for sub_id in ids.values():
            grader.submit(sub_id)

        def scored():
            with sf() as s:
                subs = {n: s.get(Submission, i) for n, i in ids.items()}
                return subs if all(x.status != "grading" for x in subs.values()) else None

        subs = wait_until(scored, 300, "three scores", poll=0.5)
    finally:
        grader.shutdown()
    assert {n: x.status for n, x in subs.items()} == dict.fromkeys(PLAYERS, "scored"), {
        n: x.feedback for n, x in subs.items()}
    with sf() as s:
        comp = s.scalar(select(Competition))
        key, percent = comp.split_key, comp.public_percent
        for name, wrong in PLAYERS.items():
            assert (subs[name].public_score, subs[name].private_score) == pytest.approx(
                expected(key, percent, wrong)), name
        w = workshops.get_workshop(s, wid)
        board = competitions.leaderboard(s, trainee("t2"), w, comp)
        assert [r["user"] for r in board["public"]] == ["t1", "t2", "t3"]
        assert board["private"] is None  # trainees see the final ranking after the deadline
        final = competitions.leaderboard(s, trainee("t2"), w, comp,
                                         now=comp.deadline + timedelta(seconds=1))
        assert [r["user"] for r in final["private"]] == ["t1", "t2", "t3"]
        assert [r["score"] for r in final["private"]] == pytest.approx(
            [expected(key, percent, PLAYERS[u])[1] for u in ("t1", "t2", "t3")])
        # the canary check: nothing a trainee receives carries a hidden label
        received = [board, final, workshops.workshop_json(s, trainee("t2"), w, True),
                    {k: b64(v) for k, v in workshops.materials(blobs, w).items()},
                    *(workshops.submission_json(s, x, False) for x in subs.values()),
                    *(workshops.submission_json(s, x, True) for x in subs.values())]
        dump = json.dumps(received)
        materials = json.dumps({k: v.decode() for k, v in workshops.materials(blobs, w).items()})
        assert find_canaries(dump + materials, CANARIES) == []
        assert key not in dump  # nor the split
        assert find_canaries(LABELS, CANARIES)  # (the check can fail)


def test_the_deadline_and_bad_labels(world):
    sf, blobs = world
    wid = setup_competition(sf, blobs, players={"t1": ""})
    with sf() as s:
        write_transaction(s)
        w = workshops.get_workshop(s, wid)
        for field, body in [("labels", competition_body(name="x", labels="id,label\n")),
                            ("labels", competition_body(name="x", labels="a,b\n1,2\n3,4\n")),
                            ("labels", competition_body(name="x",
                                                        labels="id,label\n1,a\n1,b\n")),
                            ("metric", competition_body(name="x", metric="auc")),
                            ("public_percent", competition_body(name="x", public_percent=100)),
                            ("deadline", competition_body(name="x", deadline="yesterday"))]:
            with pytest.raises(InvalidField) as e:
                competitions.create_competition(s, blobs, host(), w, body)
            assert e.value.field == field
        comp = competitions.get_competition(s, w, "theft")
        late = comp.deadline + timedelta(seconds=1)
        with pytest.raises(Conflict) as e:
            competitions.submit(s, blobs, trainee("t1"), w, "theft",
                                {"notebook": predictions_notebook("False")}, now=late)
        assert e.value.field == "deadline"
        with pytest.raises(Conflict) as e:  # awards wait for the deadline too
            competitions.award(s, host(), w, comp, {"user": "t1", "points": 5})
        assert e.value.field == "deadline"
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Submission)) == 0


def balances(s) -> dict[str, int]:
    return {(a.unit.slug if a.unit else a.kind): a.balance
            for a in s.scalars(select(Account))}


def test_awards_move_points_exactly_from_the_host_and_are_certified(world):
    sf, blobs = world
    wid = setup_competition(sf, blobs, players={"t1": "", "t2": ""})
    with sf() as s:
        write_transaction(s)
        comp = s.scalar(select(Competition))
        unit_t = s.scalar(select(Unit.id).where(Unit.slug == "t"))
        for name, score in (("t1", 0.9), ("t2", 0.5)):
            s.add(Submission(workshop_id=wid, competition_id=comp.id, user_name=name,
                             unit_id=unit_t, notebook_sha256="0" * 64, status="scored",
                             public_score=score, private_score=score))
        s.commit()
        deadline = comp.deadline
    after = deadline + timedelta(minutes=1)
    with sf() as s:
        before = balances(s)
    with sf() as s:
        write_transaction(s)
        w, comp = workshops.get_workshop(s, wid), s.scalar(select(Competition))
        for body, field, error in [({"user": "t9", "points": 5}, "user", InvalidField),
                                   ({"user": "t1", "points": 0}, "points", InvalidField),
                                   ({"user": "t1", "points": 1001}, "points", InvalidField)]:
            with pytest.raises(error) as e:
                competitions.award(s, host(), w, comp, body, now=after)
            assert e.value.field == field
        prize = competitions.award(s, host(), w, comp, {"user": "t1", "points": 30}, now=after)
        s.commit()
        log_index = prize.log_index
    with sf() as s:
        now = balances(s)
        assert now["h"] == before["h"] - 3000 and now["t"] == before["t"] + 3000
        assert sum(now.values()) == 0  # the mint's issue balances every account
        entry = s.scalar(select(LogEntry).where(LogEntry.idx == log_index))
        details = json.loads(entry.details)
        assert entry.kind == "workshop_award"
        assert (details["winner"], details["amount"], details["payer"]) == ("t1", "30.00",
                                                                           "unit:h")
        assert "t" in json.loads(entry.parties)
    with sf() as s:
        write_transaction(s)
        w, comp = workshops.get_workshop(s, wid), s.scalar(select(Competition))
        with pytest.raises(Conflict) as e:  # once per winner
            competitions.award(s, host(), w, comp, {"user": "t1", "points": 5}, now=after)
        assert e.value.field == "user"
        with pytest.raises(points.InsufficientPoints) as e:  # more than the host unit holds
            competitions.award(s, host(), w, comp, {"user": "t2", "points": 1000}, now=after)
        assert e.value.field == "points"
        s.rollback()
    with sf() as s:
        assert balances(s) == now  # the refused awards left the ledger as it was
    # an operator's workshop pays from the operator account
    operator = Caller(name="op", scopes=frozenset({SCOPE_APPROVE}), unit=None)
    with sf() as s:
        write_transaction(s)
        assert points.operator_account(s).balance == 0  # no order paid a fee here
        w2 = workshops.create_workshop(s, blobs, operator, {
            "title": "Ops", "starts_at": (utcnow() + timedelta(days=1)).isoformat() + "Z",
            "capacity": 3, "materials": {"a.ipynb": b64(notebook("x = 1"))}})
        workshops.enrol(s, trainee("t1"), w2)
        comp2 = competitions.create_competition(s, blobs, operator, w2, competition_body())
        s.add(Submission(workshop_id=w2.id, competition_id=comp2.id, user_name="t1",
                         unit_id=s.scalar(select(Unit.id).where(Unit.slug == "t")),
                         notebook_sha256="0" * 64, status="scored", public_score=1.0,
                         private_score=1.0))
        with pytest.raises(points.InsufficientPoints) as e:  # paid from the empty operator account
            competitions.award(s, operator, w2, comp2, {"user": "t1", "points": 1},
                               now=comp2.deadline + timedelta(seconds=1))
        assert e.value.field == "points"
