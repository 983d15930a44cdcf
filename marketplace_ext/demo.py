"""The demo: an operator and five provincial units, each with a publisher and a subscriber.

Seeded through the same public surface people use - NativeAuthenticator's sign-up and
authorization pages, then the marketplace API as the operator - so the demo also proves those
paths work. Passwords are generated once into ``var/demo_logins.json`` (mode 0600); they are
for the demo only.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

from .bundle import TEMPLATES_DIR
from .client import Market, MarketAPIError
from .hubsession import HubPageError, HubSession

DEMO_UNITS = {
    "a": "Provincial Company A",
    "b": "Provincial Company B",
    "c": "Provincial Company C",
    "d": "Research Institute D",
    "e": "Industry Unit E",
}
#: the paper's unit types (section 2.2) of the demo units; the others are provincial companies
DEMO_UNIT_TYPES = {"d": "research_institute", "e": "industry_unit"}


# the example catalogue, each published by one unit's publisher and approved by the operator
DEMO_PRODUCTS = {
    "electricity-theft-detection": "a",
    "tariff-risk-prediction": "b",
    "ev-charger-layout": "c",
    # the rest of the paper's Table 2 (issue 17), numbered as there
    "customer-service-panorama": "e",  # 4
    "business-hall-efficiency": "d",  # 5
    "customer-portrait": "a",  # 6
    "abnormal-consumption-detection": "d",  # 7
    "transformer-overload-prediction": "c",  # 8
    "service-efficiency-analysis": "b",  # 9
    "power-resumption-index": "e",  # 10
    "power-marketing-data": "b",  # 11
    "abnormal-price-detection": "e",  # 12
    "traffic-prediction": "c",  # 13
}


def demo_accounts(operator: str = "operator") -> list[dict]:
    accounts = [{"user": operator, "unit": None, "roles": ["operator"]}]
    for slug in DEMO_UNITS:
        accounts.append({"user": f"publisher-{slug}", "unit": slug, "roles": ["publisher"]})
        accounts.append({"user": f"subscriber-{slug}", "unit": slug, "roles": []})
    return accounts


def logins_path(var_dir: Path) -> Path:
    return Path(var_dir) / "demo_logins.json"


def load_logins(var_dir: Path) -> list[dict] | None:
    path = logins_path(var_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _write_logins(var_dir: Path, accounts: list[dict]) -> None:
    path = logins_path(var_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(accounts, f, indent=1)


def seed(base_url: str, var_dir: Path, operator: str = "operator", log=print,
         publish: bool = True) -> list[dict]:
    """Create the demo accounts, units and memberships; safe to run again after a crash.

    The passwords are written before any account is made, so a re-run after a partial seed
    knows them and continues where it stopped.
    """
    accounts = load_logins(var_dir)
    if accounts is None:
        accounts = demo_accounts(operator)
        for account in accounts:
            account["password"] = secrets.token_urlsafe(9)
        _write_logins(var_dir, accounts)

    op_account = accounts[0]
    ops = HubSession(base_url)
    _sign_up(HubSession(base_url), op_account)
    ops.login(op_account["user"], op_account["password"])
    for account in accounts[1:]:
        _sign_up(HubSession(base_url), account)
        ops.authorize(account["user"])
    ops.open_marketplace()
    existing = {u["slug"]: u for u in ops.market("GET", "units").json()["units"]}
    for slug, name in DEMO_UNITS.items():
        unit_type = DEMO_UNIT_TYPES.get(slug, "provincial_company")
        if slug not in existing:
            _check(ops.market("POST", "units", json={"slug": slug, "name": name,
                                                     "type": unit_type}))
            log(f"  unit {slug}: {name}")
        elif existing[slug].get("type") != unit_type:  # a demo made before unit types
            _check(ops.market("POST", f"units/{slug}/type", json={"type": unit_type}))
    for account in accounts:
        if account["unit"]:
            r = ops.market("PUT", f"units/{account['unit']}/members/{account['user']}",
                           json={"roles": account["roles"]})
            _check(r)
    if publish:
        publish_catalogue(base_url, accounts, log)
    return accounts


def _market_as(base_url: str, account: dict) -> Market:
    # short-lived token: the seed runs on every `make run`
    return Market.login(base_url, account["user"], account["password"], note="demo seed",
                        expires_in=600)


#: how long seeding waits for a unit's data platform (publishing a data product needs it)
PLATFORM_WAIT = 600


def publish_catalogue(base_url: str, accounts: list[dict], log=print) -> None:
    """Publish and approve the example catalogue (:data:`DEMO_PRODUCTS`) that is not on the
    shelf yet. A data product's tables must be on its unit's platform first (the launcher
    loads the demo data before it calls this)."""
    by_user = {a["user"]: a for a in accounts}
    operator = _market_as(base_url, accounts[0])
    on_shelf = {p["name"] for p in operator.products() if p["state"] == "on_shelf"}
    for name, unit in DEMO_PRODUCTS.items():
        if name in on_shelf:
            continue
        publisher = _market_as(base_url, by_user[f"publisher-{unit}"])
        try:
            submitted = _when_platform_ready(publisher.publish,
                                             TEMPLATES_DIR / "catalogue" / name)
            if submitted["state"] == "submitted":
                _when_platform_ready(operator.review, name, submitted["version"], "approve",
                                     "demo catalogue")
        except MarketAPIError as e:
            # e.g. a data product whose unit has no demo tables (no smart-meter data here):
            # the rest of the demo still works, so say so and go on
            print(f"warning: product {name} is not on the shelf: {e}", file=sys.stderr)
            continue
        log(f"  product {name} (unit {unit}) on the shelf")


def _when_platform_ready(action, *args):
    """Run ``action(*args)``; while a unit's data platform is still starting (503
    ``platform_unavailable``: nothing was written), try again for up to
    :data:`PLATFORM_WAIT` seconds."""
    deadline = time.monotonic() + PLATFORM_WAIT
    while True:
        try:
            return action(*args)
        except MarketAPIError as e:
            if e.status != 503 or e.error != "platform_unavailable" \
                    or time.monotonic() > deadline:
                raise
        time.sleep(2)  # the Spark servers take a minute or two to start


# --- the demo's history (issue 16 item 7) -----------------------------------------------------

HISTORY_MONTHS = 4
#: a unit's history spends at most this much, so the demo units keep most of their points
HISTORY_BUDGET = 150
HISTORY_COMMENTS = {
    5: ["Saved us a quarter of building our own; ran first time on our meters.",
        "Clear card, sensible parameters, results our field team trusted."],
    4: ["Useful after tuning the threshold for our districts.",
        "Good results; the output notebook could explain the columns better."],
    3: ["Works, but slow on our full customer table.",
        "Fine as a start; we had to clean our tariff codes first."],
    2: ["Too many false alarms on rural feeders."],
}


def history_marker(var_dir: Path) -> Path:
    return Path(var_dir) / "demo_history.json"


def history_plan(products: dict[str, str], units: list[str], seed: int = 7) -> list[dict]:
    """A plausible, deterministic history: for each product (name -> owning unit), one to
    three other units buy it at days spread over :data:`HISTORY_MONTHS` months, and most of
    them rate it a few days later. Returns events sorted by time (days ago, oldest first)."""
    import random

    rng = random.Random(seed)
    events = []
    for product, owner in sorted(products.items()):
        others = [u for u in units if u != owner]
        quality = rng.choice((5, 4, 4, 3))  # how good this product is, on the whole
        for buyer in rng.sample(others, k=min(len(others), rng.randint(1, 3))):
            first = rng.randint(14, HISTORY_MONTHS * 30)
            uses = [first] + [d for d in (first - rng.randint(7, 40),) if d > 2]
            for i, days_ago in enumerate(uses):
                events.append({"kind": "order", "product": product, "unit": buyer,
                               "plan": "per_use", "days_ago": days_ago, "n": i})
            if rng.random() < 0.8:
                stars = max(2, min(5, quality + rng.choice((-1, 0, 0, 1))))
                events.append({"kind": "rating", "product": product, "unit": buyer,
                               "days_ago": max(1, first - rng.randint(1, 6)), "stars": stars,
                               "text": rng.choice(HISTORY_COMMENTS[stars])})
    return sorted(events, key=lambda e: (-e["days_ago"], e["kind"] != "order", e["product"],
                                         e["unit"]))


def seed_history(db_url: str, var_dir: Path, now=None, log=print) -> dict:
    """Seed the demo's history once (``var/demo_history.json`` remembers it): orders and
    ratings by the demo units over the last months, through the same domain functions the
    API calls, with their time set to when they happened (``now`` minus the event's days).
    The ledger and the reviews carry those times; each is certified in the log when seeded.
    Units spend at most :data:`HISTORY_BUDGET` points; products not on the shelf are
    skipped. Safe to run again: orders repeat their idempotency keys and ratings are made
    once per user and version."""
    from datetime import timedelta

    from sqlalchemy import select

    from . import points, purchase
    from .auth import SCOPE_SUBSCRIBE, Caller
    from .errors import MarketError
    from .exchange import ratings
    from .orm import Product, make_engine, make_session_factory, utcnow, write_transaction

    marker = history_marker(var_dir)
    if marker.exists():
        return json.loads(marker.read_text())
    now = now or utcnow()
    rules = points.EconomyRules()
    engine = make_engine(db_url)
    counts = {"orders": 0, "ratings": 0, "skipped": 0}
    spent: dict[str, int] = {}
    try:
        factory = make_session_factory(engine)
        with factory() as session:
            shelf = {p.name: p.unit.slug for p in session.scalars(select(Product))
                     if p.current_version is not None and p.current_version.state == "on_shelf"
                     and p.unit.slug in DEMO_UNITS}
        for event in history_plan({n: u for n, u in DEMO_PRODUCTS.items() if n in shelf},
                                  list(DEMO_UNITS)):
            unit, product = event["unit"], event["product"]
            caller = Caller(f"subscriber-{unit}", frozenset({SCOPE_SUBSCRIBE}), unit)
            at = now - timedelta(days=event["days_ago"], hours=ord(unit[0]) % 7 + 9)
            with factory() as session:
                write_transaction(session)
                try:
                    if event["kind"] == "order":
                        price = _per_use_price(session, product)
                        if price is None or spent.get(unit, 0) + price > HISTORY_BUDGET:
                            counts["skipped"] += 1
                            continue
                        _, created = purchase.buy(
                            session, caller, rules, product, "per_use",
                            f"demo-history-{product}-{unit}-{event['n']}"[:128], now=at)
                        spent[unit] = spent.get(unit, 0) + price
                        counts["orders"] += created
                    else:
                        ratings.rate(session, caller, product, None, event["stars"],
                                     event["text"], now=at)
                        counts["ratings"] += 1
                    session.commit()
                except MarketError as e:  # no use to rate (an order skipped), rated already
                    session.rollback()
                    counts["skipped"] += 1
                    log(f"  history: {event['kind']} of {product} by unit {unit} skipped: "
                        f"{e.message}")
        from .exchange import topics  # a finished topic request with its bounty (item 3)
        counts["topics"] = int(topics.seed_demo_topic(factory, rules, log) is not None)
    finally:
        engine.dispose()
    record = {**counts, "months": HISTORY_MONTHS, "seeded_at": now.isoformat() + "Z"}
    marker.write_text(json.dumps(record, indent=1))
    log(f"  history: {counts['orders']} orders and {counts['ratings']} ratings over "
        f"{HISTORY_MONTHS} months")
    return record


def _per_use_price(session, product: str) -> int | None:
    from sqlalchemy import select

    from .orm import Product

    found = session.scalar(select(Product).where(Product.name == product))
    manifest = json.loads(found.current_version.manifest)
    prices = {p["type"]: int(p["price"]) for p in manifest.get("plans", [])}
    return prices.get("per_use")


def _sign_up(session: HubSession, account: dict) -> None:
    try:
        session.signup(account["user"], account["password"])
    except HubPageError as e:
        if "already in use" not in str(e):
            raise


def _check(r) -> None:
    if r.status_code >= 400:
        raise HubPageError(f"{r.request.method} {r.url} -> {r.status_code} {r.text}")


def format_logins(accounts: list[dict]) -> str:
    lines = ["Demo logins (demo only - generated passwords, kept in var/demo_logins.json):"]
    for a in accounts:
        role = ", ".join(a["roles"]) or "subscriber"
        where = f"unit {a['unit']}" if a["unit"] else "all units"
        lines.append(f"  {a['user']:<14} {a['password']:<14} {role} ({where})")
    return "\n".join(lines)


def data_marker(var_dir: Path) -> Path:
    return Path(var_dir) / "demo_data.json"


def load_demo_data(var_dir: Path, remote: str | None, scale: float = 1.0, seed: int = 7,
                   data_dir: Path | None = None, log=print,
                   endpoints: dict[str, str] | None = None) -> dict:
    """Build units A-E's business tables from the London smart-meter readings and load them
    into each unit's Hive database: on the unit's own server (the service's, found in
    ``var/platform``) or, with *remote*, on that shared server. Records what it loaded in
    ``var/demo_data.json`` (no tokens) so `make run` does it once. *endpoints* are units'
    remote servers ($MARKET_SPARK_ENDPOINTS), which win over both."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from . import griddata
    from .platform import DataPlatform
    from .platform.supervisor import EndpointsFile
    from .platform.tls import redact_url

    data_dir = Path(data_dir) if data_dir else griddata.default_data_dir()
    started = time.monotonic()
    log(f"Building the demo units' tables from {data_dir} (scale {scale}) ...")
    tables = griddata.build_unit_tables(data_dir, units=tuple(DEMO_UNITS), scale=scale,
                                        seed=seed)
    if remote:
        platform = DataPlatform(default_endpoint=remote, var_dir=str(var_dir),
                                endpoints=endpoints or {})
    else:
        # Each unit's server has a small heap (512m): smaller batches than the shared default.
        platform = DataPlatform(servers=EndpointsFile(Path(var_dir) / "platform"),
                                endpoints=endpoints or {}, var_dir=str(var_dir),
                                load_chunk_bytes=8 * 2**20)
    loaded = {}

    def load(unit: str) -> None:
        counts = platform.load_unit_tables(unit, tables[unit])
        loaded[unit] = counts
        log(f"  unit_{unit}: " + ", ".join(f"{t} {n:,}" for t, n in sorted(counts.items())))

    try:
        # Units with their own servers load side by side (one per core).
        with ThreadPoolExecutor(1 if remote else 2) as pool:
            for future in [pool.submit(load, unit) for unit in tables]:
                future.result()
    finally:
        platform.close()
    where = redact_url(remote) if remote else "per-unit servers"
    record = {"scale": scale, "seed": seed, "remote": where, "tables": loaded,
              "seconds": round(time.monotonic() - started, 1)}
    data_marker(var_dir).write_text(json.dumps(record, indent=1))
    return record
