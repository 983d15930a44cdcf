"""ipywidgets front ends of the marketplace for notebooks, in the look of its pages.

- ``Shop()``: browse the shelf (search, kind), read a product's card, choose a plan, see the
  price and your unit's balance after buying, and buy (an idempotency key per choice: a
  double click buys once).
- ``RunForm(product)``: the run page's form, generated from the notebook's papermill
  parameters (:mod:`.run_form`: a typed input each, its default, its comment as help), the data
  to run on (your unit's tables or an uploaded CSV/Parquet file), a progress bar of cells done,
  cancel, and the output shown in the notebook (a sandboxed iframe) with the artifacts.

Both call the REST API through :class:`~marketplace_ext.client.Market` with the notebook's own
token; what the API refuses is shown next to the field it names, and nothing is half-sent.
Background threads only set widget values (an Output widget's capture follows the current
cell, so it is not used from a thread).
"""

from __future__ import annotations

import html
import json
import threading
import time
import uuid
from pathlib import Path

from . import run_form
from .client import Market, MarketAPIError
from .errors import InvalidField
from .reprs import BAD, GOOD, MUTED, Product, Run, badge, box, esc

FINAL = ("succeeded", "failed", "cancelled")
_WIDE = {"description_width": "initial"}


def _message(text: str, ok: bool) -> str:
    colour = GOOD if ok else BAD
    return (f'<div role="{"status" if ok else "alert"}" style="border-left:4px solid {colour};'
            f'padding:4px 10px;color:{colour}">{text}</div>')


def _field_error(message: str) -> str:
    return f'<div role="alert" style="color:{BAD}">{esc(message)}</div>' if message else ""


def _points(text: object) -> float:
    try:
        return float(str(text).replace(",", ""))
    except ValueError:
        return 0.0


class Shop:
    """``Shop().show()``: browse and buy. ``filters`` go to ``Market.products`` (kind, tag,
    unit, q)."""

    def __init__(self, market: Market | None = None, **filters):
        import ipywidgets as w

        self.market = market or Market()
        self.me = self.market.me()
        self.unit = (self.me.get("unit") or {}).get("slug")
        self.filters = filters
        self.orders: list[dict] = []  # what this shop bought
        self.search = w.Text(description="Search", placeholder="name, title or summary",
                             value=filters.get("q", ""), continuous_update=False, style=_WIDE)
        self.kind = w.Dropdown(description="Kind", options=[("any", ""), ("data", "data"),
                                                           ("tool", "tool"),
                                                           ("application", "application")],
                               value=filters.get("kind", ""), style=_WIDE)
        self.choice = w.Select(description="Product", rows=8, style=_WIDE,
                               layout={"width": "100%"})
        self.card = w.HTML()
        self.plan = w.Dropdown(description="Plan", style=_WIDE)
        self.summary = w.HTML()
        self.buy_button = w.Button(description="Buy", button_style="primary",
                                   icon="shopping-cart", tooltip="buy the chosen plan")
        self.run_button = w.Button(description="Run form", icon="play",
                                   tooltip="open the run form of this product")
        self.message = w.HTML()
        self.run_area = w.VBox()
        self.buy_button.on_click(lambda _: self.buy())
        self.run_button.on_click(lambda _: self.open_run_form())
        self.search.observe(lambda _: self.reload(), names="value")
        self.kind.observe(lambda _: self.reload(), names="value")
        self.choice.observe(lambda change: self.select(change["new"]), names="value")
        self.plan.observe(lambda _: self._new_choice(), names="value")
        self.widget = w.VBox([
            w.HTML(box("Grid Data Supermarket: the shelf",
                       f"{esc(self.me.get('name'))} &middot; unit "
                       f"<code>{esc(self.unit or 'none')}</code>")),
            w.HBox([self.search, self.kind]), self.choice, self.card,
            w.HBox([self.plan, self.buy_button, self.run_button]), self.summary, self.message,
            self.run_area])
        self._key = self._fresh_key()
        self.product: dict | None = None
        self.reload()

    @staticmethod
    def _fresh_key() -> str:
        return f"shop-{uuid.uuid4().hex}"

    def _new_choice(self) -> None:
        """Another product or plan: a new purchase, a new idempotency key."""
        self._key = self._fresh_key()
        self._show_price()

    def reload(self) -> None:
        filters = {k: v for k, v in self.filters.items() if k not in ("q", "kind")}
        if self.search.value.strip():
            filters["q"] = self.search.value.strip()
        if self.kind.value:
            filters["kind"] = self.kind.value
        self.products = self.market.products(**filters)
        options = [(f"{p['title']} ({p['kind']}, unit {p['unit']})", p["name"])
                   for p in self.products]
        self.choice.options = options
        if options:
            self.choice.value = options[0][1]
            self.select(options[0][1])
        else:
            self.product = None
            self.card.value = box("No product matches", "")
            self.plan.options = []

    def select(self, name: str | None) -> None:
        if not name:
            return
        if self.choice.value != name:
            self.choice.value = name  # observed: calls select again with the same name
            return
        self.product = Product(self.market.product(name))
        self.card.value = self.product._repr_html_()
        plans = self.product.get("plans", [])
        self.plan.options = [(f"{p['type'].replace('_', ' ')}: {p['price']} points", p["type"])
                             for p in plans]
        self.message.value = ""
        self._new_choice()

    def balance(self) -> str | None:
        if not self.unit:
            return None
        return self.market.request("GET", f"units/{self.unit}/account",
                                   params={"limit": 1})["balance"]

    def _price(self) -> int | None:
        for p in (self.product or {}).get("plans", []):
            if p["type"] == self.plan.value:
                return p["price"]
        return None

    def _show_price(self) -> None:
        price, balance = self._price(), self.balance()
        if self.product is None or price is None:
            self.summary.value = ""
            return
        if self.product.get("unit") == self.unit:
            self.summary.value = box("Your unit's own product", "using it costs nothing")
            return
        after = _points(balance) - price
        colour = BAD if after < 0 else GOOD
        self.summary.value = box(
            f"{esc(self.product['title'])}: {esc(self.plan.value.replace('_', ' '))}",
            f"price <b>{price}</b> points &middot; balance {esc(balance)} &middot; after "
            f'buying <b style="color:{colour}">{after:.2f}</b>'
            + ("" if after >= 0 else " (not enough points)"))

    def buy(self) -> dict | None:
        """Buy the chosen plan; returns the order (None if the API refused it, shown)."""
        if self.product is None or not self.plan.value:
            self.message.value = _message("choose a product and a plan first", False)
            return None
        self.buy_button.disabled = True
        try:
            order = self.market.order(self.product["name"], self.plan.value,
                                      idempotency_key=self._key)
        except MarketAPIError as e:
            text = e.message
            if e.error == "insufficient_points":
                text = f"Not enough points: {e.message}"
            self.message.value = _message(esc(text), False)
            return None
        finally:
            self.buy_button.disabled = False
        if not any(o["id"] == order["id"] for o in self.orders):
            self.orders.append(order)
        ent = order.get("entitlement") or {}
        left = ent.get("uses_left")
        until = ent.get("valid_until")
        self.message.value = _message(
            f"Order #{esc(order['id'])}: {esc(order['product'])}, {esc(order['plan'])} for "
            f"{esc(order['price'])} points. Entitlement {badge(ent.get('status', ''))}"
            + (f", {left} use{'s' if left != 1 else ''} left" if left is not None else "")
            + (f", valid until {esc(until[:16].replace('T', ' '))} UTC" if until else ""), True)
        self._show_price()  # the new balance (the key stays: a second click replays this order)
        return order

    def open_run_form(self) -> RunForm | None:
        if self.product is None:
            return None
        form = RunForm(self.product["name"], market=self.market)
        self.run_area.children = [form.widget]
        return form

    def show(self) -> Shop:
        from IPython.display import display

        display(self.widget)
        return self

    def _ipython_display_(self) -> None:
        self.show()


class RunForm:
    """``RunForm("product").show()``: the product's parameters as a form, then the run.

    ``download_to``: a directory the artifacts are saved to once the run has succeeded (under
    ``run-<id>/``); without it they are listed with their sha256."""

    def __init__(self, product: str, market: Market | None = None,
                 download_to: str | Path | None = None, poll: float = 1.0):
        import ipywidgets as w

        self.market = market or Market()
        self.name = product
        self.detail = Product(self.market.product(product))
        self.spec = self.detail.get("parameters") or {}
        self.fields = run_form.form_fields(self.spec)
        self.download_to = Path(download_to) if download_to is not None else None
        self.poll = poll
        self.run: dict | None = None
        self.files: dict[str, str] = {}
        self.inputs: dict[str, object] = {}
        self.errors: dict[str, object] = {}
        rows = []
        for f in self.fields:
            label = f"{f.name} ({f.type_name})" if f.type_name != "None" else f.name
            if f.kind == "bool":
                widget = w.Checkbox(value=f.default is True, description=label, indent=False)
            elif f.kind == "int" and isinstance(f.default, int) and not f.optional:
                widget = w.IntText(value=f.default, description=label, style=_WIDE)
            elif f.kind == "float" and isinstance(f.default, (int, float)) and not f.optional:
                widget = w.FloatText(value=float(f.default), description=label, style=_WIDE)
            elif f.kind in ("json", "any"):
                widget = w.Textarea(value=f.default_text, description=label, rows=2,
                                    style=_WIDE, layout={"width": "32em"})
            else:
                widget = w.Text(value=f.default_text, description=label, style=_WIDE,
                                layout={"width": "32em"})
            self.inputs[f.key] = widget
            self.errors[f.key] = w.HTML()
            help_text = f'<small style="color:{MUTED}">{esc(f.help)}</small>' if f.help else ""
            rows.append(w.VBox([widget, w.HTML(help_text), self.errors[f.key]]))
        self.data = w.RadioButtons(options=[("My unit's tables", "platform"),
                                            ("A file I upload (CSV or Parquet)", "upload")],
                                   value="platform", description="Data", style=_WIDE)
        self.upload = w.FileUpload(accept=".csv,.parquet", multiple=False,
                                   description="Choose file")
        self.errors["data"] = w.HTML()
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", button_style="danger",
                                      icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="cells",
                                      bar_style="info", style=_WIDE)
        self.status = w.HTML()
        self.message = w.HTML()
        self.artifacts = w.HTML()
        self.output = w.HTML()
        self.run_button.on_click(lambda _: self.submit())
        self.cancel_button.on_click(lambda _: self.cancel())
        head = w.HTML(box(f"Run {esc(self.detail.get('title') or product)}",
                          f"version {esc(self.detail.get('current_version'))} &middot; from "
                          f"unit <code>{esc(self.detail.get('unit'))}</code>"))
        params = rows or [w.HTML("<i>This notebook takes no parameters.</i>")]
        self.widget = w.VBox([head, *params, self.data, self.upload, self.errors["data"],
                              w.HBox([self.run_button, self.cancel_button]), self.message,
                              w.HBox([self.progress, self.status]), self.artifacts,
                              self.output])
        self._thread: threading.Thread | None = None

    # -- submitting ------------------------------------------------------------------------

    def values(self) -> dict:
        return {key: widget.value for key, widget in self.inputs.items()}

    def _show_error(self, field: str | None, message: str) -> None:
        target = self.errors.get(field or "")
        if target is not None:
            target.value = _field_error(message)
        else:
            self.message.value = _message(esc(message), False)

    def _upload_file(self) -> tuple[str, bytes] | None:
        value = self.upload.value
        if not value:
            return None
        item = value[0] if isinstance(value, (list, tuple)) else next(iter(value.values()))
        return item["name"], bytes(item["content"])

    def submit(self) -> dict | None:
        """Check the form and start the run; returns it (None: refused, shown next to its
        field). The run is then followed in the background (:meth:`wait`)."""
        if self._thread is not None and self._thread.is_alive():
            self.message.value = _message("a run of this form is still going", False)
            return None
        for err in self.errors.values():
            err.value = ""
        self.message.value = self.artifacts.value = self.output.value = ""
        try:
            parameters = run_form.parse_values(self.spec, self.values())
            upload = None
            if self.data.value == "upload":
                upload = self._upload_file()
                if upload is None:
                    raise InvalidField("choose a CSV or Parquet file to upload", "data")
        except InvalidField as e:
            self._show_error(e.field, e.message)
            return None
        body = {"product": self.name, "parameters": parameters}
        self.run_button.disabled = True
        try:
            if upload is None:
                run = self.market.request("POST", "runs", json=body)
            else:
                run = self.market.request("POST", "runs", data={"request": json.dumps(body)},
                                          files={"data": upload})
        except MarketAPIError as e:
            self.run_button.disabled = False
            self._show_error(e.field, e.message)
            return None
        self.run = Run(run)
        self.cancel_button.disabled = False
        self._update(self.run)
        self._thread = threading.Thread(target=self._follow, name=f"run-{run['id']}",
                                        daemon=True)
        self._thread.start()
        return self.run

    def cancel(self) -> dict | None:
        if self.run is None or self.run["status"] in FINAL:
            return None
        try:
            return self.market.cancel_run(self.run["id"])
        except MarketAPIError as e:
            self.message.value = _message(esc(e.message), False)
            return None

    def wait(self, timeout: float = 600) -> dict | None:
        """Block until the followed run has ended and its output is shown (or ``timeout``)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"run {self.run['id']} still {self.run['status']}")
        return self.run

    # -- following -------------------------------------------------------------------------

    def _update(self, run: dict) -> None:
        progress = run["progress"]
        self.progress.max = max(progress["cells_total"], 1)
        self.progress.value = min(progress["cells_done"], self.progress.max)
        self.progress.bar_style = {"succeeded": "success", "failed": "danger",
                                   "cancelled": "warning"}.get(run["status"], "info")
        error = (f' <span style="color:{BAD}">{esc(run["error"])}</span>'
                 if run.get("error") and run["status"] != "succeeded" else "")
        self.status.value = (f"run #{esc(run['id'])} {badge(run['status'])} "
                             f"{progress['cells_done']} of {progress['cells_total'] or '?'} "
                             f"cells{error}")

    def _follow(self) -> None:
        run = self.run
        # a run ends by its own time limit; past it (and a margin) stop following
        deadline = time.monotonic() + (run.get("timeout_seconds") or 3600) + 600
        try:
            while run["status"] not in FINAL and time.monotonic() < deadline:
                time.sleep(self.poll)
                try:
                    run = Run(self.market.request("GET", f"runs/{run['id']}"))
                except (MarketAPIError, OSError) as e:  # a hiccup: keep following
                    self.message.value = _message(esc(f"refresh failed: {e}"), False)
                    continue
                self.run = run
                self._update(run)
            self._finish(run)
        finally:
            self.run_button.disabled = False
            self.cancel_button.disabled = True

    def _finish(self, run: dict) -> None:
        if run.get("output_html"):
            r = self.market.http.get(self.market.url + f"api/runs/{run['id']}/output.html",
                                     timeout=self.market.timeout)
            if r.ok:
                # product code wrote it: a sandboxed frame (no scripts, no same origin)
                self.output.value = (
                    '<iframe sandbox title="run output" style="width:100%;height:32em;'
                    f'border:1px solid #d5dbe1" srcdoc="{html.escape(r.text, quote=True)}">'
                    "</iframe>")
        artifacts = run.get("artifacts") or {}
        if not artifacts:
            if run.get("outputs_withheld"):
                self.artifacts.value = _message("refunded: its outputs are withheld", False)
            return
        if self.download_to is not None and run["status"] == "succeeded":
            where = self.download_to / f"run-{run['id']}"
            self.files = {name: self.market.download(f"runs/{run['id']}/artifacts/{name}",
                                                     where / name) for name in artifacts}
            items = "".join(f"<li><code>{esc(path)}</code></li>" for path in self.files.values())
            self.artifacts.value = box("Artifacts (saved, sha256 checked)", f"<ul>{items}</ul>")
        else:
            items = "".join(f"<li><code>{esc(n)}</code> sha256 <code>{esc(a['sha256'])}</code>"
                            "</li>" for n, a in artifacts.items())
            self.artifacts.value = box("Artifacts (RunForm(..., download_to='dir') saves them)",
                                       f"<ul>{items}</ul>")

    def show(self) -> RunForm:
        from IPython.display import display

        display(self.widget)
        return self

    def _ipython_display_(self) -> None:
        self.show()
