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
from pathlib import Path

from .bundle import TEMPLATES_DIR
from .client import Market
from .hubsession import HubPageError, HubSession

DEMO_UNITS = {
    "a": "Provincial Company A",
    "b": "Provincial Company B",
    "c": "Provincial Company C",
    "d": "Provincial Company D",
    "e": "Provincial Company E",
}


# the example catalogue, each published by one unit's publisher and approved by the operator
DEMO_PRODUCTS = {
    "electricity-theft-detection": "a",
    "tariff-risk-prediction": "b",
    "ev-charger-layout": "c",
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


def seed(base_url: str, var_dir: Path, operator: str = "operator", log=print) -> list[dict]:
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
    existing = {u["slug"] for u in ops.market("GET", "units").json()["units"]}
    for slug, name in DEMO_UNITS.items():
        if slug not in existing:
            _check(ops.market("POST", "units", json={"slug": slug, "name": name}))
            log(f"  unit {slug}: {name}")
    for account in accounts:
        if account["unit"]:
            r = ops.market("PUT", f"units/{account['unit']}/members/{account['user']}",
                           json={"roles": account["roles"]})
            _check(r)
    _publish_catalogue(base_url, accounts, log)
    return accounts


def _market_as(base_url: str, account: dict) -> Market:
    # short-lived token: the seed runs on every `make run`
    return Market.login(base_url, account["user"], account["password"], note="demo seed",
                        expires_in=600)


def _publish_catalogue(base_url: str, accounts: list[dict], log) -> None:
    by_user = {a["user"]: a for a in accounts}
    operator = _market_as(base_url, accounts[0])
    on_shelf = {p["name"] for p in operator.products() if p["state"] == "on_shelf"}
    for name, unit in DEMO_PRODUCTS.items():
        if name in on_shelf:
            continue
        publisher = _market_as(base_url, by_user[f"publisher-{unit}"])
        submitted = publisher.publish(TEMPLATES_DIR / "catalogue" / name)
        if submitted["state"] == "submitted":
            operator.review(name, submitted["version"], "approve", "demo catalogue")
            log(f"  product {name} (unit {unit}) on the shelf")


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
