"""``Market``: the Python client of the marketplace, for notebooks and the ``market`` CLI.

In a notebook server everything comes from the environment the hub gives it
(``MARKETPLACE_URL``, ``JUPYTERHUB_API_TOKEN``), so ``Market()`` needs no arguments::

    from marketplace_ext.client import Market
    m = Market()
    m.me()
    m.publish("my_product/")
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import requests

from .bundle import BundleInvalid, canonical_archive, validate_dir
from .reprs import Product, ProductList, Run, RunList, Statement


class MarketAPIError(RuntimeError):
    """The service refused a request; carries its ``{error, message, field}``."""

    def __init__(self, status: int, error: str, message: str, field: str | None):
        where = f" (field: {field})" if field else ""
        super().__init__(f"{status} {error}: {message}{where}")
        self.status, self.error, self.message, self.field = status, error, message, field

    @classmethod
    def from_response(cls, r: requests.Response) -> MarketAPIError:
        try:
            err = r.json()
        except ValueError:
            err = {"error": "http_error", "message": r.text[:500] or r.reason}
        return cls(r.status_code, err.get("error", "http_error"), err.get("message", ""),
                   err.get("field"))


class Market:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120):
        url = url or os.environ.get("MARKETPLACE_URL")
        token = token or os.environ.get("MARKET_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
        if not url:
            raise ValueError("no marketplace URL: pass url= or set MARKETPLACE_URL")
        if not token:
            raise ValueError("no API token: pass token= or set JUPYTERHUB_API_TOKEN")
        self.url = url.rstrip("/") + "/"
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    @classmethod
    def login(cls, hub_url: str, user: str, password: str, note: str = "market",
              expires_in: int | None = None) -> Market:
        """Log in at the hub as ``user`` (its login form) and use a new API token: for scripts,
        benchmarks and the demo seed outside a notebook."""
        from .hubsession import HubSession

        session = HubSession(hub_url)
        session.login(user, password)
        token = session.create_token(note, expires_in=expires_in)
        return cls(f"{hub_url.rstrip('/')}/services/marketplace/", token)

    def __repr__(self) -> str:  # never show the token
        return f"Market({self.url!r})"

    def request(self, method: str, path: str, **kwargs) -> dict | None:
        r = self.http.request(method, self.url + "api/" + path.lstrip("/"),
                              timeout=self.timeout, allow_redirects=False, **kwargs)
        if r.status_code >= 400:
            raise MarketAPIError.from_response(r)
        return r.json() if r.content else None

    def me(self) -> dict:
        return self.request("GET", "me")

    def units(self) -> list[dict]:
        return self.request("GET", "units")["units"]

    def terms(self) -> str:
        return self.request("GET", "terms")["terms"]

    def products(self, **filters) -> list[dict]:
        """The shelf; filters: kind, tag, unit, q, limit, offset (a table in a notebook)."""
        return ProductList(Product(p) for p in
                           self.request("GET", "products", params=filters)["products"])

    def product(self, name: str) -> dict:
        """One product with its plans, versions and parameters (a card in a notebook)."""
        return Product(self.request("GET", f"products/{name}"))

    def publish(self, path: str | Path, accept_terms: bool = True) -> dict:
        """Submit the bundle directory ``path`` as a new version (validated again server-side).

        Publishing accepts the sharing agreement (:meth:`terms`) on behalf of your unit.
        Raises :class:`BundleInvalid` listing every problem before anything is uploaded.
        """
        problems = validate_dir(Path(path))
        if problems:
            raise BundleInvalid(problems)
        archive = canonical_archive(Path(path))
        return self.request(
            "POST", "products",
            files={"bundle": ("bundle.zip", io.BytesIO(archive), "application/zip")},
            data={"accept_terms": "true" if accept_terms else "false"},
        )

    # --- a federated project's economy (the protocol itself: federated.client) -------------

    def fl_fund_pool(self, project: int, points: int) -> dict:
        """Escrow ``points`` more of your unit's points in the reward pool of ``project``
        (your unit opened it); returns the project's economy."""
        return self.request("POST", f"fl/projects/{int(project)}/pool",
                            json={"amount": int(points)})

    def fl_contributions(self, project: int) -> dict:
        """The pool, the contribution estimate so far and the settlement, if any."""
        return self.request("GET", f"fl/projects/{int(project)}/contributions")

    def fl_settle(self, project: int, shares: dict[str, int] | None = None) -> dict:
        """Settle a finished project: the certified measure (or, for the initiator's unit, an
        agreed split ``shares`` in basis points summing to 10000) and the pool's payout."""
        return self.request("POST", f"fl/projects/{int(project)}/settlement",
                            json={} if shares is None else {"shares": shares})

    def fl_cancel(self, project: int, reason: str | None = None) -> dict:
        """Cancel an enrolling or running project (the initiator's unit, operators): its pool
        goes back to the initiator's unit, once; cancelling again returns the same record."""
        return self.request("POST", f"fl/projects/{int(project)}/cancel",
                            json={} if reason is None else {"reason": reason})

    def fl_settlement(self, project: int) -> dict:
        return self.request("GET", f"fl/projects/{int(project)}/settlement")

    def fl_publish_model(self, project: int, path: str | Path,
                         accept_terms: bool = True) -> dict:
        """Publish the bundle directory ``path`` (a tool holding the project's final model) as
        a new product co-owned by the settled project's members; it goes to review."""
        problems = validate_dir(Path(path))
        if problems:
            raise BundleInvalid(problems)
        archive = canonical_archive(Path(path))
        return self.request(
            "POST", f"fl/projects/{int(project)}/product",
            files={"bundle": ("bundle.zip", io.BytesIO(archive), "application/zip")},
            data={"accept_terms": "true" if accept_terms else "false"})

    def fl_model_product(self, project: int) -> dict:
        return self.request("GET", f"fl/projects/{int(project)}/product")

    def review(self, product: str, version: str, decision: str, reason: str | None = None):
        return self.request("POST", f"products/{product}/versions/{version}/review",
                            json={"decision": decision, "reason": reason})

    def order(self, product: str, plan: str, idempotency_key: str | None = None) -> dict:
        """Buy ``plan`` of ``product`` for your unit (a fresh key unless you retry one)."""
        import uuid

        return self.request("POST", "orders", json={
            "product": product, "plan": plan,
            "idempotency_key": idempotency_key or f"client-{uuid.uuid4().hex}"})

    def run(self, product: str, parameters: dict | None = None, version: str | None = None,
            timeout_seconds: int | None = None, wait: bool = True, progress: bool = True,
            download_to: str | Path | None = None, poll: float = 1.0,
            data: str | Path | None = None) -> dict:
        """Run ``product`` on your unit's data; with ``wait``, show progress until it ends.

        Returns the run (status, error, ``output_html`` URL, artifacts). With ``download_to``
        the artifacts are saved there and their local paths put under ``"files"``. ``data``
        is a local CSV or Parquet file to run on instead of your unit's platform (the notebook
        gets its path as ``input_path``).
        """
        import time

        body: dict = {"product": product, "parameters": parameters or {}}
        if version is not None:
            body["version"] = version
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        if data is None:
            run = self.request("POST", "runs", json=body)
        else:
            path = Path(data)
            run = self.request("POST", "runs", data={"request": json.dumps(body)},
                               files={"data": (path.name, path.read_bytes())})
        bar = _progress_bar(f"{product} run {run['id']}") if wait and progress else None
        while wait and run["status"] in ("queued", "running"):
            time.sleep(poll)
            run = self.request("GET", f"runs/{run['id']}")
            if bar is not None:
                bar.total = max(run["progress"]["cells_total"], 1)
                bar.n = run["progress"]["cells_done"]
                bar.set_postfix_str(run["status"])
                bar.refresh()
        if bar is not None:
            bar.close()
        if download_to is not None and run["artifacts"]:
            run["files"] = {name: self.download(f"runs/{run['id']}/artifacts/{name}",
                                                Path(download_to) / name)
                            for name in run["artifacts"]}
        return Run(run)

    def runs(self, scope: str = "mine", status: str | None = None, limit: int = 20,
             offset: int = 0) -> dict:
        """Your runs (``scope="mine"``) or your unit's (``"unit"``), newest first:
        ``{"runs": [...], "total": n, ...}``."""
        params: dict = {"scope": scope, "limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        page = self.request("GET", "runs", params=params)
        return RunList(page, runs=[Run(r) for r in page["runs"]])

    def get_run(self, run: int) -> dict:
        """One run as it is now (status, progress, outputs)."""
        return Run(self.request("GET", f"runs/{run}"))

    def cancel_run(self, run: int) -> dict:
        return Run(self.request("POST", f"runs/{run}/cancel"))

    def orders(self, limit: int = 50, offset: int = 0) -> dict:
        """Your unit's orders, newest first: ``{"orders": [...], "total": n, ...}``."""
        return self.request("GET", "orders", params={"limit": limit, "offset": offset})

    def statement(self, limit: int = 50, offset: int = 0, unit: str | None = None) -> dict:
        """Your unit's account (``unit``: another, for operators): the balance and its
        transfers, newest first (a table in a notebook)."""
        slug = unit or self.me()["unit"]["slug"]
        return Statement(self.request("GET", f"units/{slug}/account",
                                      params={"limit": limit, "offset": offset}))

    def download(self, path: str, local: str | Path) -> str:
        """Save ``api/<path>`` to ``local``, checked against its X-Content-SHA256."""
        import hashlib

        r = self.http.get(self.url + "api/" + path, timeout=self.timeout)
        if r.status_code >= 400:
            raise MarketAPIError.from_response(r)
        expected = r.headers.get("X-Content-SHA256")
        if expected and hashlib.sha256(r.content).hexdigest() != expected:
            raise MarketAPIError(r.status_code, "integrity",
                                 f"{path} does not match its X-Content-SHA256", None)
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(r.content)
        return str(local)

    def download_file(self, product: str, version: str, path: str,
                      local: str | Path) -> dict:
        """Download sharing mode: spend a use on file ``path`` of ``version`` (a POST), then
        fetch it through the short-lived link the service answers with; checked against its
        sha256. Returns the link's details with ``"file"``: the local path."""
        link = self.request("POST", f"products/{product}/versions/{version}/files/{path}")
        return {**link, "file": self._fetch_link(link, local)}

    def export_view(self, product: str, view: str, local: str | Path,
                    fmt: str = "csv") -> dict:
        """Download a data product's desensitized view as ``fmt`` (csv or parquet): a POST
        spends the use, the link serves the bytes. Returns rows, truncated, sha256, log_index
        and ``"file"``."""
        link = self.request("POST", f"products/{product}/views/{view}/export",
                            json={"format": fmt})
        return {**link, "file": self._fetch_link(link, local)}

    def _fetch_link(self, link: dict, local: str | Path) -> str:
        from urllib.parse import urljoin

        url = urljoin(self.url, link["url"])
        return self.download(url[len(self.url) + len("api/"):], local)

    def predict(self, product: str, rows: list[dict], model: int | None = None) -> list:
        """Remote call: the tool product's predictions for ``rows`` (answered by a warm kernel,
        so repeated calls are quick); ``model``: your unit's derived model (:meth:`retrain`)."""
        body: dict = {"rows": rows} if model is None else {"rows": rows, "model": model}
        return self.request("POST", f"products/{product}/predict", json=body)["predictions"]

    # --- further training (issue 17: marketplace_ext/retrain.py) ---

    def retrain(self, product: str, parameters: dict | None = None, wait: bool = True,
                timeout: float = 1800, poll: float = 2.0) -> dict:
        """Retrain a tool on your unit's data: a derived model private to your unit. With
        ``wait``, until it is ``ready`` or ``failed``; then call it with
        ``predict(product, rows, model=derived["id"])``."""
        import time

        derived = self.request("POST", f"products/{product}/retrain",
                               json={"parameters": parameters or {}})
        deadline = time.monotonic() + timeout
        while wait and derived["state"] == "training" and time.monotonic() < deadline:
            time.sleep(poll)
            derived = self.derived_model(derived["id"])
        return derived

    def derived_models(self, product: str | None = None) -> list[dict]:
        """Your unit's derived models, newest first."""
        params = {"product": product} if product else None
        return self.request("GET", "derived-models", params=params)["models"]

    def derived_model(self, model: int) -> dict:
        """One derived model of your unit and its lineage (certified at ``log_index``)."""
        return self.request("GET", f"derived-models/{model}")

    def query(self, product: str, sql: str, limit: int | None = None) -> dict:
        """Interface: one SELECT over a data product's granted views, run on its publisher's
        platform: ``{"columns", "rows", "truncated", "log_index"}``."""
        body: dict = {"sql": sql}
        if limit is not None:
            body["limit"] = limit
        return self.request("POST", f"products/{product}/query", json=body)

    def send_model(self, product: str, notebook: str | Path | dict, outputs: list[str],
                   parameters: dict | None = None, purpose: str = "",
                   timeout_seconds: int | None = None,
                   output_schemas: dict[str, dict] | None = None) -> dict:
        """Model-to-data: ask the owner of data product ``product`` to run ``notebook`` on its
        private tables and return the declared ``outputs`` (e.g. ``["outputs/model.pt"]``).
        Each ``.json`` output needs a schema in ``output_schemas`` (numbers, booleans, bounded
        arrays, objects with named properties; no strings)."""
        if not isinstance(notebook, dict):
            notebook = json.loads(Path(notebook).read_text())
        body: dict = {"product": product, "notebook": notebook, "outputs": outputs,
                      "parameters": parameters or {}, "purpose": purpose,
                      "output_schemas": output_schemas or {}}
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        return self.request("POST", "m2d", json=body)

    def decide_model(self, request: int, decision: str, reason: str | None = None) -> dict:
        """The data owner's publisher approves or rejects a model-to-data request."""
        return self.request("POST", f"m2d/{request}/decision",
                            json={"decision": decision, "reason": reason})

    def wait_model(self, request: int, download_to: str | Path | None = None,
                   timeout: float = 3600, poll: float = 1.0) -> dict:
        """Wait until a model-to-data request is decided and its run has ended; with
        ``download_to`` save the released files there (under ``"files"``)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = self.request("GET", f"m2d/{request}")
            run = found["run"]
            if found["status"] == "rejected" or (
                    run is not None and run["status"] not in ("queued", "running")
                    and found["log_index"] is not None
                    and (found["released"] or found["withheld"] or run["status"] != "succeeded")):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"model-to-data request {request} is still {found['status']}")
            time.sleep(poll)
        if download_to is not None:
            found["files"] = {p: self.download(f"m2d/{request}/files/{p}", Path(download_to) / p)
                              for p in found["released"]}
        return found

    def shelf(self, product: str, state: str, reason: str | None = None) -> dict:
        return self.request("POST", f"products/{product}/shelf",
                            json={"state": state, "reason": reason})

    # -- the certification log ---------------------------------------------------------------

    def log_checkpoint(self, size: int | None = None) -> dict:
        return self.request("GET", "log/checkpoint",
                            params={} if size is None else {"size": size})

    def log_entry(self, index: int) -> dict:
        """Entry ``index``: its public part (type, time, commitment) for everyone; also its
        ``details``, ``salt`` and parsed ``statement`` when the caller is one of its parties
        or an operator (``access`` says which)."""
        return self.request("GET", f"log/entries/{index}")

    # -- ratings, ranking, the Table 2 report (exchange/ratings.py, ranking.py, report.py) -----

    def rate(self, product: str, stars: int, text: str = "", version: str | None = None) -> dict:
        """Rate a version your unit used (default: the one on sale), 1-5 stars and a text."""
        body: dict = {"stars": stars, "text": text}
        if version is not None:
            body["version"] = version
        return self.request("POST", f"products/{product}/reviews", json=body)

    def reviews(self, product: str, limit: int = 50, offset: int = 0) -> dict:
        """A product's rating (``aggregate``), its reviews and whether you may rate it."""
        return self.request("GET", f"products/{product}/reviews",
                            params={"limit": limit, "offset": offset})

    def edit_review(self, review: int, stars: int, text: str = "") -> dict:
        return self.request("PUT", f"reviews/{review}", json={"stars": stars, "text": text})

    def reply_review(self, review: int, reply: str) -> dict:
        return self.request("POST", f"reviews/{review}/reply", json={"reply": reply})

    def hide_review(self, review: int, reason: str) -> dict:
        return self.request("POST", f"reviews/{review}/hide", json={"reason": reason})

    def ranking(self) -> dict:
        """The shelf's published formula, each product's score, Featured, Trending, New."""
        return self.request("GET", "ranking")

    def feature(self, product: str, days: int, reason: str,
                starts_at: str | None = None) -> dict:
        body: dict = {"product": product, "days": days, "reason": reason}
        if starts_at is not None:
            body["starts_at"] = starts_at
        return self.request("POST", "features", json=body)

    def features(self, include_past: bool = False) -> list[dict]:
        return self.request("GET", "features",
                            params={"all": "1"} if include_past else {})["features"]

    def report(self, sort: str | None = None, order: str | None = None,
               unit_type: str | None = None, csv: bool = False) -> dict | str:
        """The Table 2 report (rows, totals); with ``csv`` the CSV text."""
        params = {k: v for k, v in (("sort", sort), ("order", order),
                                    ("unit_type", unit_type)) if v}
        if csv:
            r = self.http.get(self.url + "api/report", params={**params, "format": "csv"},
                              timeout=self.timeout)
            if r.status_code >= 400:
                raise MarketAPIError.from_response(r)
            return r.text
        return self.request("GET", "report", params=params)

    def set_unit_type(self, unit: str, unit_type: str) -> dict:
        return self.request("POST", f"units/{unit}/type", json={"type": unit_type})


    # -- topic requests with escrowed bounties (exchange/topics.py) ----------------------------

    def topics(self, status: str | None = None, unit: str | None = None, limit: int = 50,
               offset: int = 0) -> list[dict]:
        """Topic requests, newest first (status: open, assigned, delivered, accepted,
        expired; unit: the requesting unit)."""
        params = {"limit": limit, "offset": offset, "status": status, "unit": unit}
        return self.request("GET", "topics", params={k: v for k, v in params.items()
                                                     if v is not None})["topics"]

    def topic(self, topic: int) -> dict:
        """One topic: bounty, escrow, status, proposals you may read, delivery, certified steps."""
        return self.request("GET", f"topics/{topic}")

    def post_topic(self, title: str, description: str, bounty: int, deadline,
                   data_offered: str = "") -> dict:
        """Post a topic for your unit; ``bounty`` whole points move into escrow at once.
        ``deadline``: an aware or UTC ``datetime``, or an RFC 3339 string."""
        if hasattr(deadline, "isoformat"):
            deadline = (deadline.isoformat() if deadline.tzinfo is not None
                        else deadline.isoformat() + "Z")
        return self.request("POST", "topics", json={
            "title": title, "description": description, "data_offered": data_offered,
            "bounty": bounty, "deadline": deadline})

    def volunteer(self, topic: int, text: str) -> dict:
        """Volunteer your unit for a topic with a proposal (publishers of another unit)."""
        return self.request("POST", f"topics/{topic}/proposals", json={"text": text})

    def assign_topic(self, topic: int, proposal: int) -> dict:
        return self.request("POST", f"topics/{topic}/assignment", json={"proposal": proposal})

    def deliver_topic(self, topic: int, product: str, version: str) -> dict:
        """Link a version of your unit's product (on the shelf) as the topic's delivery."""
        return self.request("POST", f"topics/{topic}/delivery",
                            json={"product": product, "version": version})

    def decide_topic(self, topic: int, decision: str, reason: str | None = None) -> dict:
        """``accept`` (pays the bounty less the fee) or ``reject`` (reopens the topic)."""
        return self.request("POST", f"topics/{topic}/decision",
                            json={"decision": decision, "reason": reason})

    # -- workshops and competitions (exchange/workshops.py, exchange/competitions.py) ----------

    def workshops(self, limit: int = 200, offset: int = 0) -> list[dict]:
        """Workshops, upcoming first."""
        return self.request("GET", "workshops",
                            params={"limit": limit, "offset": offset})["workshops"]

    def create_workshop(self, title: str, starts_at: str, capacity: int,
                        materials: dict[str, bytes | str | Path], summary: str = "") -> dict:
        """Host a workshop; ``materials`` maps a path in the trainees' folder to its content
        (bytes, or a local file to read)."""
        import base64

        files = {k: base64.b64encode(v if isinstance(v, bytes) else Path(v).read_bytes())
                 .decode() for k, v in materials.items()}
        return self.request("POST", "workshops", json={
            "title": title, "starts_at": starts_at, "capacity": capacity,
            "summary": summary, "materials": files})

    def enrol(self, workshop: int) -> dict:
        return self.request("POST", f"workshops/{workshop}/enrolment")

    def workshop_materials(self, workshop: int, dest: str | Path | None = None) -> dict:
        """The materials (path -> bytes); written under ``dest`` when given (a running
        server's way to get them before its next spawn)."""
        import base64

        found = self.request("GET", f"workshops/{workshop}/materials")
        files = {k: base64.b64decode(v) for k, v in found["files"].items()}
        if dest is not None:
            for rel, data in files.items():
                target = Path(dest) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return files

    def add_exercise(self, workshop: int, name: str, title: str, checker: dict | str | Path,
                     parameters: dict | None = None, outputs: list[str] | None = None) -> dict:
        return self.request("POST", f"workshops/{workshop}/exercises", json={
            "name": name, "title": title, "checker": _notebook_json(checker),
            "parameters": parameters or {}, "outputs": outputs or ["answer.json"]})

    def submit_exercise(self, workshop: int, exercise: str, notebook: dict | str | Path) -> dict:
        return self.request("POST", f"workshops/{workshop}/exercises/{exercise}/submissions",
                            json={"notebook": _notebook_json(notebook)})

    def add_competition(self, workshop: int, name: str, title: str, deadline: str,
                        labels: str, metric: str = "accuracy", public_percent: int = 50) -> dict:
        return self.request("POST", f"workshops/{workshop}/competitions", json={
            "name": name, "title": title, "deadline": deadline, "labels": labels,
            "metric": metric, "public_percent": public_percent})

    def submit_predictions(self, workshop: int, competition: str,
                           notebook: dict | str | Path) -> dict:
        return self.request("POST", f"workshops/{workshop}/competitions/{competition}"
                                    "/submissions", json={"notebook": _notebook_json(notebook)})

    def leaderboard(self, workshop: int, competition: str) -> dict:
        return self.request("GET", f"workshops/{workshop}/competitions/{competition}")

    def award(self, workshop: int, competition: str, user: str, points: int) -> dict:
        return self.request("POST", f"workshops/{workshop}/competitions/{competition}/awards",
                            json={"user": user, "points": points})

    def submission(self, workshop: int, submission: int) -> dict:
        return self.request("GET", f"workshops/{workshop}/submissions/{submission}")

    def wait_submission(self, workshop: int, submission: int, timeout: float = 600,
                        poll: float = 1.0) -> dict:
        """The submission once graded (status no longer ``grading``)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = self.submission(workshop, submission)
            if found["status"] != "grading":
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"submission {submission} is still grading after {timeout} s")
            time.sleep(poll)

    # -- the forum and the inbox (exchange/forum.py, exchange/inbox.py) -----------------------

    def forum_threads(self, product: str | None = None, topic: int | None = None,
                      category: str | None = None, q: str | None = None, page: int = 1,
                      per_page: int = 20) -> dict:
        """Threads (all, or one product's, topic's or category's), latest activity first;
        ``q`` searches titles and posts. ``{"threads", "total", "page", ...}``."""
        params = {k: v for k, v in {"product": product, "topic": topic, "category": category,
                                    "q": q, "page": page, "per_page": per_page}.items()
                  if v is not None}
        return self.request("GET", "forum/threads", params=params)

    def forum_post_thread(self, title: str, body: str, product: str | None = None,
                          topic: int | None = None, category: str | None = None) -> dict:
        """Start a thread (Markdown ``body``; ``@name`` notifies) on one product, topic or
        category; returns the thread and its first post."""
        target = {k: v for k, v in {"product": product, "topic": topic,
                                    "category": category}.items() if v is not None}
        return self.request("POST", "forum/threads", json={"title": title, "body": body,
                                                           **target})

    def forum_thread(self, thread: int, page: int = 1, per_page: int = 20) -> dict:
        return self.request("GET", f"forum/threads/{thread}",
                            params={"page": page, "per_page": per_page})

    def forum_reply(self, thread: int, body: str) -> dict:
        return self.request("POST", f"forum/threads/{thread}/posts", json={"body": body})

    def forum_moderate(self, thread: int | None = None, post: int | None = None,
                       hidden: bool = True, reason: str | None = None) -> dict:
        """Operators: hide (with a reason) or show again a thread or a post."""
        path = f"forum/threads/{thread}" if post is None else f"forum/posts/{post}"
        return self.request("POST", f"{path}/moderation",
                            json={"hidden": hidden, "reason": reason})

    def inbox(self, unread: bool = False, page: int = 1, per_page: int = 20) -> dict:
        """Your notifications, newest first: ``{"notifications", "total", "unread", ...}``."""
        return self.request("GET", "inbox", params={"unread": "true" if unread else "false",
                                                    "page": page, "per_page": per_page})

    def mark_read(self, ids: list[int] | None = None) -> dict:
        """Mark notifications ``ids`` read (all of them with None)."""
        return self.request("POST", "inbox/read",
                            json={"all": True} if ids is None else {"ids": list(ids)})

    def inbox_settings(self, email: str | None = None, enabled: bool | None = None) -> dict:
        """Read your e-mail copy setting; with ``enabled``, change it first."""
        if enabled is None:
            return self.request("GET", "inbox/settings")
        return self.request("PUT", "inbox/settings", json={"enabled": enabled, "email": email})


def _notebook_json(notebook: dict | str | Path) -> dict:
    """A notebook as its JSON object, from a dict or a local .ipynb file."""
    if isinstance(notebook, dict):
        return notebook
    return json.loads(Path(notebook).read_text(encoding="utf-8"))


def _progress_bar(description: str):
    """tqdm's notebook bar in a notebook, its text bar elsewhere."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=1, desc=description, unit="cell")
