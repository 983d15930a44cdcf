"""Rich notebook reprs of what :class:`~marketplace_ext.client.Market` returns, in the look of
the marketplace's pages (same colours as ``static/market.css``).

The API's JSON objects stay plain ``dict``/``list`` underneath (``run["status"]`` works as
before, ``json.dumps`` too); JupyterLab shows them through ``_repr_html_``. Everything a user
or a product wrote is escaped.
"""

from __future__ import annotations

import html

# the pages' palette (static/market.css): every pair meets WCAG AA contrast
BRAND, INK, MUTED, LINE, SOFT = "#0b4f6c", "#1d2733", "#4f5b66", "#d5dbe1", "#f3f5f7"
BAD, GOOD = "#a4161a", "#1b5e20"
STATUS_BG = {"queued": "#fff3c4", "running": "#e3f2fd", "succeeded": "#c8e6c9",
             "failed": "#ffcdd2", "cancelled": "#eceff1", "on_shelf": "#c8e6c9",
             "submitted": "#fff3c4", "rejected": "#ffcdd2", "open": "#e3f2fd",
             "active": "#c8e6c9", "used": "#eceff1", "refunded": "#eceff1"}
KIND_BG = {"data": "#e3f2fd", "tool": "#ede7f6", "application": "#e8f5e9"}
FONT = "font-family:system-ui,sans-serif;font-size:14px;line-height:1.45;"
BOX = (f"{FONT}color:{INK};border:1px solid {LINE};border-radius:4px;padding:8px 12px;"
       "max-width:720px;")
TABLE = "border-collapse:collapse;width:100%;"
TH = f"text-align:left;padding:4px 8px;background:{SOFT};border-bottom:1px solid {LINE};"
TD = f"text-align:left;padding:4px 8px;border-bottom:1px solid {LINE};vertical-align:top;"


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def badge(text: object, background: str | None = None) -> str:
    bg = background or STATUS_BG.get(str(text), "#eceff1")
    return (f'<span style="display:inline-block;padding:0 8px;border-radius:9px;'
            f'background:{bg};color:{INK};font-size:.85em">{esc(str(text).replace("_", " "))}'
            "</span>")


def box(title: str, body: str) -> str:
    """A bordered card with a navy title, as a page section looks."""
    return (f'<div style="{BOX}"><div style="color:{BRAND};font-weight:600;margin-bottom:4px">'
            f"{title}</div>{body}</div>")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape what you put in them)."""
    head = "".join(f'<th style="{TH}">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td style="{TD}">{c}</td>' for c in row) + "</tr>"
                   for row in rows)
    return f'<table style="{TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def plans_text(plans: list[dict]) -> str:
    return ", ".join(f"{esc(str(p.get('type', '')).replace('_', ' '))}: {esc(p.get('price'))} "
                     "points" for p in plans or []) or "no plans"


class Product(dict):
    """A product of the shelf (``Market.product``, each of ``Market.products``)."""

    def _repr_html_(self) -> str:
        head = (f"{esc(self.get('title') or self.get('name'))} "
                f"{badge(self.get('kind'), KIND_BG.get(self.get('kind')))} "
                f"{badge(self.get('state', ''))}")
        rows = [f"<code>{esc(self.get('name'))}</code> from unit "
                f"<code>{esc(self.get('unit'))}</code> &middot; version "
                f"{esc(self.get('current_version') or 'none on sale')}",
                esc(self.get("summary")), f"Plans: {plans_text(self.get('plans', []))}"]
        params = self.get("parameters") or {}
        if params:
            rows.append("Parameters: " + ", ".join(
                f"<code>{esc(n)}</code> ({esc(p.get('inferred_type_name'))}) = "
                f"<code>{esc(p.get('default'))}</code>" for n, p in params.items()))
        return box(head, "".join(f"<div>{r}</div>" for r in rows if r))


class ProductList(list):
    """The shelf (``Market.products``)."""

    def _repr_html_(self) -> str:
        rows = [[f"<code>{esc(p.get('name'))}</code>", esc(p.get("title")),
                 badge(p.get("kind"), KIND_BG.get(p.get("kind"))), esc(p.get("unit")),
                 plans_text(p.get("plans", []))] for p in self]
        return box(f"{len(self)} product{'s' if len(self) != 1 else ''}",
                   table(["Name", "Title", "Kind", "Unit", "Plans"], rows))


def progress_bar(done: int, total: int) -> str:
    pct = 0 if not total else min(100, round(100 * done / total))
    return (f'<span role="img" aria-label="{done} of {total} cells" style="display:inline-block;'
            f'width:120px;height:10px;background:{SOFT};border:1px solid {LINE};'
            f'vertical-align:middle"><span style="display:block;height:100%;width:{pct}%;'
            f'background:{BRAND}"></span></span> {done} / {total} cells')


class Run(dict):
    """A run (``Market.run``, each of ``Market.runs``)."""

    def _repr_html_(self) -> str:
        progress = self.get("progress") or {}
        bar = progress_bar(progress.get("cells_done", 0), progress.get("cells_total", 0))
        rows = [f"{badge(self.get('status'))} {bar}",
                f"version {esc(self.get('version'))} &middot; by {esc(self.get('user'))} "
                f"&middot; started {esc((self.get('created_at') or '')[:19].replace('T', ' '))}"]
        if self.get("parameters"):
            rows.append(f"parameters <code>{esc(self['parameters'])}</code>")
        if self.get("error") and self.get("status") != "succeeded":
            rows.append(f'<span style="color:{BAD}">{esc(self["error"])}</span>')
        artifacts = self.get("artifacts") or {}
        if artifacts:
            rows.append("artifacts: " + ", ".join(
                f"<code>{esc(n)}</code>" for n in artifacts))
        if self.get("outputs_withheld"):
            rows.append("refunded: its outputs are withheld")
        return box(f"Run #{esc(self.get('id'))}: {esc(self.get('product'))}",
                   "".join(f"<div>{r}</div>" for r in rows))


class RunList(dict):
    """A page of runs (``Market.runs``): ``{"runs": [...], "total", "limit", "offset"}``."""

    def _repr_html_(self) -> str:
        runs = self.get("runs", [])
        rows = [[f"#{esc(r.get('id'))}", esc(r.get("product")), esc(r.get("user")),
                 badge(r.get("status")),
                 f"{r.get('progress', {}).get('cells_done', 0)} / "
                 f"{r.get('progress', {}).get('cells_total', 0)}",
                 esc((r.get("created_at") or "")[:16].replace("T", " "))] for r in runs]
        first = self.get("offset", 0) + 1
        title = (f"Runs ({esc(self.get('scope', 'mine'))}): {first} to "
                 f"{first + len(runs) - 1} of {self.get('total', len(runs))}"
                 if runs else "No runs")
        return box(title, table(["Run", "Product", "By", "Status", "Cells", "Started"], rows))


class Statement(dict):
    """A unit account's statement (``Market.statement``): balance and transfers."""

    def _repr_html_(self) -> str:
        rows = []
        for t in self.get("transfers", []):
            amount = str(t.get("amount", ""))
            colour = BAD if amount.startswith("-") else GOOD
            rows.append([esc((t.get("at") or "")[:16].replace("T", " ")), esc(t.get("kind")),
                         f'<span style="color:{colour}">{esc(amount)}</span>',
                         esc(t.get("product") or ""), esc(t.get("plan") or ""),
                         esc(t.get("memo") or "")])
        title = (f"{esc(self.get('account'))}: balance <b>{esc(self.get('balance'))}</b> points "
                 f"&middot; {esc(self.get('total', len(rows)))} transfers")
        return box(title, table(["When", "Kind", "Amount", "Product", "Plan", "Memo"], rows))
