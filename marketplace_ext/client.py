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

    def predict(self, product: str, rows: list[dict]) -> list:
        """Remote call: the tool product's predictions for ``rows`` (answered by a warm kernel,
        so repeated calls are quick)."""
        return self.request("POST", f"products/{product}/predict", json={"rows": rows})[
            "predictions"]

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


def _progress_bar(description: str):
    """tqdm's notebook bar in a notebook, its text bar elsewhere."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=1, desc=description, unit="cell")
