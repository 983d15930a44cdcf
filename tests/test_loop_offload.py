"""Read-only GET routes read the database off the event loop (issue 18, item 2), and the
federated-learning write routes run their write transaction there too.

The real handlers run in a small Tornado server on a migrated SQLite database. A database hook
holds the route's own query (the first statement naming its table) until the test releases it.
While it is held, another request (``api/openapi.json``, answered by the loop alone) must be
answered, and the held request must still be pending: a handler that queried on the loop
would hold the loop itself, and the second request would get no answer within its deadline.
After the release the held request completes with its normal answer. Nothing is timed: the
test asserts the order of events and that both requests complete. For a write route the held
statement is its write (the INSERT or UPDATE on the route's table), inside its transaction.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import event
from tornado import web
from tornado.httpserver import HTTPServer

from marketplace_ext import dbutil, points, units
from marketplace_ext.app import HERE
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.blobs import BlobStore
from marketplace_ext.executors import NamedExecutors
from marketplace_ext.federated import common, enrolment, keys, packing, projects, rounds
from marketplace_ext.federated.encryptor import Encryptor
from marketplace_ext.handlers import (
    admin_pages,
    api,
    fl,
    forum,
    forum_pages,
    inbox,
    inbox_pages,
    m2d,
    retrain,
    reviews,
    reviews_pages,
    runs,
    topics,
    topics_pages,
    workshops,
    workshops_pages,
)
from marketplace_ext.orm import make_engine, make_session_factory, write_transaction

#: seconds any single step may take on a loaded machine (a deadline, never a measurement)
DEADLINE = 60.0
CALLER = Caller(name="alice", scopes=frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH, SCOPE_APPROVE}),
                unit="a")


class AsAlice:
    """Known caller without a hub: alice of unit a, with every role."""

    def get_current_user(self):
        return {"name": CALLER.name}

    @property
    def caller(self) -> Caller:
        return CALLER

    @property
    def xsrf_token(self) -> bytes:  # (the hub's; a page only prints it into its forms)
        return b"test-xsrf"


def as_alice(handler: type) -> type:
    return type(f"Test{handler.__name__}", (AsAlice, handler), {})


#: (path, the handler, a table its read queries, a key of its answer: a JSON key, or a text
#: of the HTML page)
ROUTES = [
    ("/api/units", api.UnitsHandler, "units", "units"),
    ("/api/products", api.ProductsHandler, "products", "products"),
    ("/api/orders", api.OrdersHandler, "orders", "orders"),
    ("/api/accounts", api.AccountsHandler, "accounts", "accounts"),
    ("/api/forum/threads", forum.ThreadsHandler, "forum_threads", "threads"),
    ("/api/topics", topics.TopicsHandler, "topics", "topics"),
    ("/api/inbox", inbox.InboxHandler, "notifications", "notifications"),
    ("/api/workshops", workshops.WorkshopsHandler, "workshops", "workshops"),
    ("/api/ranking", reviews.RankingHandler, "features", "featured"),
    ("/api/report", reviews.ReportHandler, "units", "rows"),
    ("/api/inbox/settings", inbox.SettingsHandler, "mail_settings", "enabled"),
    ("/api/runs", runs.RunsHandler, "runs", "runs"),
    ("/api/m2d", m2d.ModelToDataHandler, "m2d_requests", "requests"),
    ("/api/derived-models", retrain.DerivedModelsHandler, "derived_models", "models"),
    ("/api/fl/projects", fl.ProjectsHandler, "fl_projects", "projects"),
    ("/forum", forum_pages.ForumPage, "forum_threads", "<html"),
    ("/topics", topics_pages.TopicsPage, "topics", "<html"),
    ("/inbox", inbox_pages.InboxPage, "mail_settings", "<html"),
    ("/workshops", workshops_pages.WorkshopsPage, "workshops", "<html"),
    ("/features", reviews_pages.FeaturesPage, "features", "<html"),
    ("/report", reviews_pages.ReportPage, "units", "<html"),
    ("/admin", admin_pages.AdminPage, "accounts", "<html"),
]


class Gate:
    """Holds the first statement naming ``table`` (once armed; with ``verb``, the first one
    that also starts with it: ``insert``, ``update``, ``select``) until :meth:`release`."""

    def __init__(self) -> None:
        self.table: str | None = None
        self.verb: str | None = None
        self.entered = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()

    def arm(self, table: str, verb: str | None = None) -> None:
        self.table, self.verb = table, verb
        self.entered.clear()
        self.released.clear()

    def hook(self, conn, cursor, statement, parameters, context, executemany) -> None:
        with self.lock:
            table, text = self.table, statement.lower()
            hit = table is not None and f" {table}" in text and (
                self.verb is None or text.lstrip().startswith(self.verb))
            if hit:
                self.table = None  # only the first one
        if hit:
            self.entered.set()
            # (longer than the other request's deadline: a loop held here fails that request)
            self.released.wait(2 * DEADLINE)

    def release(self) -> None:
        self.released.set()


#: the federated-learning routes under test (the project ones at their service patterns)
FL_WRITES = (fl.JoinHandler, fl.MemberHandler, fl.DecisionHandler, fl.UnitKeyHandler,
             fl.RoundsHandler, fl.MetricsHandler, fl.UpdatesHandler)


class Kicks:
    """The FL coordinator's wake-up, counted (the handler kicks it when a round closes)."""

    def __init__(self) -> None:
        self.count = 0

    def kick(self) -> None:  # (on the event loop)
        self.count += 1


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """(tmp dir, engine, session factory) of the migrated SQLite database: unit a with alice."""
    tmp = tmp_path_factory.mktemp("offload")
    url = f"sqlite:///{tmp / 'market.sqlite'}"
    dbutil.upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as s:
        write_transaction(s)
        unit = units.create_unit(s, "a", "A", "test")
        points.open_account(s, unit, points.EconomyRules(), "test")
        units.add_member(s, "a", CALLER.name, "test")
        s.commit()
    yield tmp, engine, factory
    engine.dispose()


@pytest.fixture(scope="module")
def kicks() -> Kicks:
    return Kicks()


@pytest.fixture(scope="module")
def server(database, kicks):
    tmp, engine, factory = database
    gate = Gate()
    event.listen(engine, "before_cursor_execute", gate.hook)

    class Market:
        service_prefix = "/services/marketplace/"
        hub_prefix = "/hub/"
        refunded_output_days = 30
        mail = SimpleNamespace(enabled=False)
        session_factory = factory
        tmp_dir = tmp
        blobs = BlobStore(tmp / "blobs")
        fl = kicks
        # two db threads: the held query takes one
        executors = NamedExecutors({"db": 2, "io": 1, "spark": 1, "log": 1}, factory)

    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    handlers = [(path, as_alice(cls)) for path, cls, _, _ in ROUTES]
    handlers += [(path, as_alice(cls)) for path, cls in fl.default_handlers if cls in FL_WRITES]
    handlers.append((r"/api/openapi.json", api.OpenAPIHandler))

    async def start():
        jinja_env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                                autoescape=select_autoescape(default=True))
        app = web.Application(handlers, market=Market(), hub_auth=None, jinja_env=jinja_env)
        HTTPServer(app).listen(port, "127.0.0.1")

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", gate
    gate.release()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    Market.executors.shutdown()


def held_answer(server, table: str, send, verb: str | None = None) -> requests.Response:
    """``send(base)``'s answer, its statement on ``table`` (starting with ``verb``) held until
    the loop has answered another request; the held request must still be pending then."""
    base, gate = server
    gate.arm(table, verb)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(send, base)
        try:
            assert gate.entered.wait(DEADLINE), f"the request never ran {verb or ''} on {table}"
            # the loop answers another request while the statement is held in the db executor
            other = requests.get(base + "/api/openapi.json", timeout=DEADLINE)
            assert other.status_code == 200 and "paths" in other.json()
            assert not held.done(), "the request answered before its statement was released"
        finally:
            gate.release()
        return held.result(timeout=2 * DEADLINE)


@pytest.mark.parametrize(("path", "table", "key"), [(p, t, k) for p, _, t, k in ROUTES],
                         ids=[p for p, _, _, _ in ROUTES])
def test_a_held_read_does_not_hold_the_loop(server, path, table, key):
    answer = held_answer(server, table,
                         lambda base: requests.get(base + path, timeout=2 * DEADLINE))
    assert answer.status_code == 200, answer.text
    if key.startswith("<"):
        assert key in answer.text.lower()
    else:
        assert key in answer.json()


# --- the federated-learning writes ----------------------------------------------------------


def publisher(unit: str) -> Caller:
    return Caller(f"publisher-{unit}", frozenset({SCOPE_SUBSCRIBE, SCOPE_PUBLISH}), unit)


class World:
    """Projects and memberships set up through the domain functions, each in a transaction."""

    def __init__(self, factory, blobs: BlobStore, paillier, model_b64: str) -> None:
        self.factory, self.blobs = factory, blobs
        self.paillier, self.model_b64 = paillier, model_b64
        self.made = 0

    def write(self, work):
        with self.factory() as s:
            write_transaction(s)
            result = work(s)
            s.commit()
            return result

    def project(self, initiator: Caller, **change) -> int:
        """A new project of ``initiator``'s unit (quorum 2, an hour per round); its id."""
        self.made += 1
        body = {"name": f"offload-{self.made}", "rounds": 2, "quorum": 2,
                "deadline_seconds": 3600, "public_key": keys.public_key_to_json(self.paillier[0]),
                "model": self.model_b64, **change}
        req = projects.parse_project_request(body)
        return self.write(lambda s: projects.create_project(s, initiator, req, self.blobs).id)

    def join(self, caller: Caller, project: int) -> str:
        return self.write(lambda s: enrolment.join(s, caller, common.get_project(s, project),
                                                   None)[0].status)

    def running(self) -> int:
        """A project of alice's unit with b approved, round 1 open, b's update recorded: the
        next update (alice's) completes the quorum."""
        project = self.project(CALLER, allow_units=["b"])
        assert self.join(publisher("b"), project) == "approved"

        def start_and_send_b(s):
            found = common.get_project(s, project)
            rounds.start(s, CALLER, found)
            s.flush()
            req = rounds.check_update(s, publisher("b"), found, 1, "1", "0",
                                      found.key_fingerprint)
            rounds.record_update(s, publisher("b"), found, req, self.blobs.put(b"b's update"), 10)

        self.write(start_and_send_b)
        return project

    def update_of(self, project: int) -> tuple[bytes, dict]:
        """Alice's update for the project's round 1: its bytes and query arguments."""
        with self.factory() as s:
            found = common.get_project(s, project)
            spec, fingerprint = common.spec_of(found), found.key_fingerprint
        packed = packing.pack_update(spec, np.zeros(spec.length), 3, Encryptor(*self.paillier))
        return (packing.ciphertexts_to_bytes(spec, packed.ciphertexts),
                {"weight": 3, "clipped": packed.clipped, "key_fingerprint": fingerprint})


@pytest.fixture(scope="module")
def world(database, paillier, model_b64):
    tmp, _engine, factory = database
    with factory() as s:
        write_transaction(s)
        units.create_unit(s, "b", "B", "test")
        s.commit()
    # (the service's blob store: the models are stored there)
    return World(factory, BlobStore(tmp / "blobs"), paillier, model_b64)


def fl_url(base: str, project: int, tail: str) -> str:
    return f"{base}/api/fl/projects/{project}/{tail}"


def test_join_writes_off_the_loop(server, world):
    project = world.project(publisher("b"))
    answer = held_answer(server, "fl_members", lambda base: requests.post(
        fl_url(base, project, "join"), timeout=2 * DEADLINE), "insert")
    assert answer.status_code == 201, answer.text
    assert answer.json()["unit"] == "a" and answer.json()["status"] == "pending"


def test_decision_writes_off_the_loop(server, world):
    project = world.project(CALLER)
    assert world.join(publisher("b"), project) == "pending"
    answer = held_answer(server, "fl_members", lambda base: requests.post(
        fl_url(base, project, "members/b/decision"), json={"decision": "approve"},
        timeout=2 * DEADLINE), "update")
    assert answer.status_code == 200, answer.text
    assert answer.json()["unit"] == "b" and answer.json()["status"] == "approved"
    assert answer.json()["decided_by"] == CALLER.name


def test_leaving_writes_off_the_loop(server, world):
    project = world.project(publisher("b"))
    assert world.join(CALLER, project) == "pending"
    answer = held_answer(server, "fl_members", lambda base: requests.delete(
        fl_url(base, project, "members/a"), timeout=2 * DEADLINE), "update")
    assert answer.status_code == 200, answer.text
    assert answer.json()["unit"] == "a" and answer.json()["state"] == "left"


def test_a_unit_key_is_registered_off_the_loop(server, world):
    key = keys.signing_public_text(keys.generate_signing_key())
    answer = held_answer(server, "fl_unit_keys", lambda base: requests.put(
        f"{base}/api/fl/units/a/signing-key", json={"ed25519_public_key": key},
        timeout=2 * DEADLINE), "insert")
    assert answer.status_code == 201, answer.text
    assert answer.json()["ed25519_public_key"] == key
    assert isinstance(answer.json()["log_index"], int)


def test_a_round_starts_off_the_loop(server, world):
    project = world.project(CALLER, allow_units=["b"])
    assert world.join(publisher("b"), project) == "approved"
    answer = held_answer(server, "fl_rounds", lambda base: requests.post(
        fl_url(base, project, "rounds"), timeout=2 * DEADLINE), "insert")
    assert answer.status_code == 201, answer.text
    got = answer.json()  # (projects.round_json, built in the same transaction)
    assert (got["project"], got["number"], got["state"]) == (project, 1, "open")
    assert [a["attempt"] for a in got["attempts"]] == [1]


def test_metrics_are_posted_off_the_loop(server, world):
    project = world.project(CALLER)
    answer = held_answer(server, "fl_metrics", lambda base: requests.post(
        fl_url(base, project, "metrics"), json={"round": 0, "metrics": {"accuracy": 0.5}},
        timeout=2 * DEADLINE), "insert")
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"round": 0, "unit": "a"}


@pytest.mark.parametrize("verb", ["select", "insert"],
                         ids=["checked-in-prepare", "recorded-in-post"])
def test_an_update_is_checked_and_recorded_off_the_loop(server, world, kicks, verb):
    project = world.running()
    data, params = world.update_of(project)
    before = kicks.count
    answer = held_answer(server, "fl_updates", lambda base: requests.post(
        fl_url(base, project, "rounds/1/updates"), params=params, data=data,
        headers={"Content-Type": "application/octet-stream"}, timeout=2 * DEADLINE), verb)
    assert answer.status_code == 201, answer.text
    got = answer.json()
    assert (got["round"], got["attempt"], got["unit"], got["size"], got["weight"]) == (
        1, 1, "a", len(data), 3)
    assert isinstance(got["log_index"], int)
    # b's update and this one make the quorum: the round closed and the coordinator was woken
    assert got["round_state"] == "aggregating"
    assert kicks.count == before + 1


@pytest.mark.parametrize(("tail", "body", "status", "field"), [
    ("join", None, 404, "project"),
    ("rounds", None, 409, "members"),
    ("metrics", {"round": 0, "metrics": {}}, 400, "metrics"),
    ("members/b/decision", {"decision": "approve"}, 404, "unit"),
], ids=["join-unknown-project", "start-too-few", "empty-metrics", "decide-unasked"])
def test_a_refused_write_keeps_its_status_and_json(server, world, tail, body, status, field):
    base, _gate = server
    project = world.project(CALLER) if field != "project" else 10**6
    answer = requests.post(fl_url(base, project, tail), json=body, timeout=DEADLINE)
    assert answer.status_code == status, answer.text
    got = answer.json()
    assert set(got) == {"error", "message", "field"} and got["field"] == field, got
    if field == "members":  # refused in the transaction: the project is still enrolling
        with world.factory() as s:
            found = common.get_project(s, project)
            assert (found.state, found.current_round) == ("enrolling", 0)
