"""The account page: the caller's unit's balance, its statement with a chart of the balance
over time (server-side SVG: no script, and it prints), its orders and its entitlements.
Operators, who act for the whole marketplace, also see every account (``GET api/accounts``)."""

from __future__ import annotations

from datetime import datetime

from tornado import web

from .. import ledger_views, points
from ..auth import SCOPE_APPROVE
from .base import PageHandler
from .pages import unit_balance

STATEMENT_ROWS = 100
ORDER_ROWS = 50
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 640, 220, 44


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.rstrip("Z"))


def balance_chart(transfers: list[dict], balance: int, width: int = CHART_WIDTH,
                  height: int = CHART_HEIGHT, pad: int = CHART_PAD) -> dict | None:
    """The balance after each transfer, oldest first, as SVG coordinates.

    ``transfers`` are a statement's rows, newest first (``centipoints`` signed for this
    account); ``balance`` is the balance now. Time runs along x (evenly spaced if all
    transfers share one instant); y spans the lowest to the highest balance. Returns None
    without transfers."""
    if not transfers:
        return None
    series, after = [], balance
    for row in transfers:  # newest first: walk the balance back in time
        series.append((_at(row["at"]), after))
        after -= row["centipoints"]
    series.reverse()
    start, end = series[0][0], series[-1][0]
    span = (end - start).total_seconds()
    low = min(0, min(b for _, b in series))
    high = max(b for _, b in series)
    rise = (high - low) or 1
    inner_w, inner_h = width - 2 * pad, height - 2 * pad

    def x(i: int, at: datetime) -> float:
        if span <= 0:
            return pad + (inner_w * i / max(len(series) - 1, 1))
        return pad + inner_w * (at - start).total_seconds() / span

    def y(value: int) -> float:
        return pad + inner_h * (high - value) / rise

    coords = [(round(x(i, at), 1), round(y(b), 1)) for i, (at, b) in enumerate(series)]
    # a step line: a balance holds until the next transfer changes it
    steps = [coords[0]]
    for cx, cy in coords[1:]:
        steps += [(cx, steps[-1][1]), (cx, cy)]
    label = "%m-%d %H:%M" if span < 2 * 86400 else "%Y-%m-%d"
    return {
        "width": width, "height": height, "pad": pad,
        "points": " ".join(f"{cx},{cy}" for cx, cy in steps),
        "start_label": start.strftime(label), "end_label": end.strftime(label),
        "dots": [{"x": cx, "y": cy, "balance": points.format_points(b),
                  "at": at.strftime("%Y-%m-%d %H:%M")}
                 for (cx, cy), (at, b) in zip(coords, series, strict=True)],
        "high": points.format_points(high), "low": points.format_points(low),
        "y_high": round(y(high), 1), "y_low": round(y(low), 1),
        "start": start.strftime("%Y-%m-%d %H:%M"), "end": end.strftime("%Y-%m-%d %H:%M"),
        "first": points.format_points(series[0][1]), "last": points.format_points(series[-1][1]),
        "count": len(series),
    }


class AccountPage(PageHandler):
    """Balance, statement and its chart, orders, entitlements of the caller's unit."""

    nav = "account"

    @web.authenticated
    async def get(self):
        await self.render_from_db("account.html", account_namespace, self.caller)


def account_namespace(session, caller) -> dict:
    """Blocking (the db executor): the account page's namespace."""
    unit, _ = unit_balance(session, caller)
    ns: dict = {"unit": unit, "accounts": None}
    if caller.is_operator and SCOPE_APPROVE in caller.scopes:
        ns["accounts"] = ledger_views.all_accounts(session)
    if unit is not None:
        account = points.unit_account(session, unit)
        statement = ledger_views.statement(session, account, STATEMENT_ROWS, 0)
        orders, order_total = ledger_views.list_orders(session, unit, ORDER_ROWS, 0)
        ns.update(
            statement=statement,
            chart=balance_chart(statement["transfers"], statement["centipoints"]),
            orders=[ledger_views.order_json(o) for o in orders], order_total=order_total,
            entitlements=ledger_views.list_entitlements(session, unit))
    return ns


default_handlers = [
    (r"/account", AccountPage),
]
