"""Read-only GET routes read the database off the event loop (issue 18, item 2).

The real handlers run in a small Tornado server on a migrated SQLite database. A database hook
holds the route's own query (the first statement naming its table) until the test releases it.
While it is held, another request (``api/openapi.json``, answered by the loop alone) must be
answered, and the held request must still be pending: a handler that queried on the loop
would hold the loop itself, and the second request would get no answer within its deadline.
After the release the held request completes with its normal answer. Nothing is timed: the
test asserts the order of events and that both requests complete.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import event
from tornado import web
from tornado.httpserver import HTTPServer

from marketplace_ext import dbutil, points, units
from marketplace_ext.app import HERE
from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_PUBLISH, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.executors import NamedExecutors
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
    """Holds the first statement naming ``table`` (once armed) until :meth:`release`."""

    def __init__(self) -> None:
        self.table: str | None = None
        self.entered = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()

    def arm(self, table: str) -> None:
        self.table = table
        self.entered.clear()
        self.released.clear()

    def hook(self, conn, cursor, statement, parameters, context, executemany) -> None:
        with self.lock:
            table = self.table
            hit = table is not None and f" {table}" in statement.lower()
            if hit:
                self.table = None  # only the first one
        if hit:
            self.entered.set()
            self.released.wait(DEADLINE)

    def release(self) -> None:
        self.released.set()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
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
    gate = Gate()
    event.listen(engine, "before_cursor_execute", gate.hook)

    class Market:
        service_prefix = "/services/marketplace/"
        hub_prefix = "/hub/"
        refunded_output_days = 30
        mail = SimpleNamespace(enabled=False)
        session_factory = factory
        tmp_dir = tmp
        # two db threads: the held query takes one
        executors = NamedExecutors({"db": 2, "io": 1, "spark": 1, "log": 1}, factory)

    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    handlers = [(path, as_alice(cls)) for path, cls, _, _ in ROUTES]
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
    engine.dispose()


@pytest.mark.parametrize(("path", "table", "key"), [(p, t, k) for p, _, t, k in ROUTES],
                         ids=[p for p, _, _, _ in ROUTES])
def test_a_held_read_does_not_hold_the_loop(server, path, table, key):
    base, gate = server
    gate.arm(table)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.get, base + path, timeout=2 * DEADLINE)
        try:
            assert gate.entered.wait(DEADLINE), f"{path} never queried {table}"
            # the loop answers another request while the read is held in the db executor
            other = requests.get(base + "/api/openapi.json", timeout=DEADLINE)
            assert other.status_code == 200 and "paths" in other.json()
            assert not held.done(), f"{path} answered before its read was released"
        finally:
            gate.release()
        answer = held.result(timeout=2 * DEADLINE)
    assert answer.status_code == 200, answer.text
    if key.startswith("<"):
        assert key in answer.text.lower()
    else:
        assert key in answer.json()
