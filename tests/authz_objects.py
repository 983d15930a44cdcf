"""The objects test_authz_matrix's paths name, made through the API as their users would, and
factories of fresh ones for the rows that change state."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from helpers import market_as, save_model, training_notebook, wait_until

from marketplace_ext.bundle import new_product
from marketplace_ext.client import Market

ROLES = ("anonymous", "subscriber_same", "subscriber_other", "publisher_same",
         "publisher_other", "operator")

Cell = int | str


def R(anonymous: Cell, subscriber_same: Cell, subscriber_other: Cell, publisher_same: Cell,
      publisher_other: Cell, operator: Cell) -> dict[str, Cell]:
    """One row of the authorization matrix: an int status, or ``"403 no_entitlement"`` (status
    and error code), or ``"404 field=path"`` (status and the field the error names)."""
    return dict(zip(ROLES, (anonymous, subscriber_same, subscriber_other, publisher_same,
                            publisher_other, operator), strict=True))


PREDICT_BODY = {"rows": [{"mean_kwh": 1.0, "cv": 0.2, "zero_share": 0.0, "drop": 0.0}]}


@dataclass
class Call:
    method: str
    path: str  # relative to the service's base URL
    kwargs: dict = field(default_factory=dict)


@dataclass
class Ctx:
    """The objects the paths name, and factories of fresh ones for rows that change state."""

    url: str
    users: dict[str, Market]
    tmp: Path
    objects: dict = field(default_factory=dict)
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    def __getitem__(self, key: str):
        return self.objects[key]

    @property
    def pub(self) -> Market:
        return self.users["publisher-a"]

    @property
    def op(self) -> Market:
        return self.users["operator"]

    # --- fresh objects ------------------------------------------------------------------------

    def product(self, kind: str, sharing: list[str] | None = None, approve: bool = True,
                prefix: str = "authz") -> dict:
        name = f"{prefix}-{kind}-{secrets.token_hex(3)}"
        bundle = new_product(kind, name, self.tmp / name)
        manifest = yaml.safe_load((bundle / "product.yaml").read_text())
        manifest["plans"] = [{"type": "per_use", "price": 10}]
        if sharing is not None:
            manifest["sharing"] = sharing
        (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        version = self.pub.publish(bundle)["version"]
        if approve:
            self.op.review(name, version, "approve")
        return {"name": name, "version": version, "bundle": bundle}

    def run(self) -> int:
        run = self.pub.request("POST", "runs", json={"product": self["tool"]["name"]})
        self.cleanup.append(lambda: self.pub.http.post(self.pub.url + f"api/runs/{run['id']}"
                                                       "/cancel"))
        return run["id"]

    def m2d_request(self) -> int:
        demander = self.users["subscriber-e"]
        demander.order(self["data"]["name"], "per_use")
        request = demander.send_model(self["data"]["name"], training_notebook(),
                                      ["outputs/model.pt"], purpose="authorization matrix")
        # a pending request holds the demander's use: rejecting it refunds
        self.cleanup.append(lambda: self.pub.http.post(
            self.pub.url + f"api/m2d/{request['id']}/decision",
            json={"decision": "reject", "reason": "authorization matrix"}))
        return request["id"]

    def fl_project(self, partner: str | None = "c", start: bool = False,
                   allow: bool = True) -> int:
        """A project of unit a; ``partner`` asks to join, approved through the allow-list
        unless ``allow`` is false (then its request waits for the initiator)."""
        body = {**self["fl_body"], "name": f"authz-{secrets.token_hex(4)}",
                "allow_units": [partner] if partner and allow else []}
        project = self.pub.request("POST", "fl/projects", json=body)["id"]
        if partner:
            self.users[f"publisher-{partner}"].request("POST", f"fl/projects/{project}/join")
        if start:
            self.pub.request("POST", f"fl/projects/{project}/rounds")
        return project

    def member(self) -> str:
        user = f"authz-{secrets.token_hex(4)}"
        self.op.request("PUT", f"units/{self['unit']}/members/{user}", json={"roles": []})
        return user


def make_objects(url: str, logins: dict[str, str], tmp: Path) -> Ctx:
    """Log in as everyone involved and create the objects the paths name."""
    users = {name: market_as(url, name, logins[name]) for name in (
        "operator", "subscriber-a", "subscriber-b", "publisher-a", "publisher-b",
        "subscriber-e", "publisher-c")}
    c = Ctx(url=users["operator"].url, users=users, tmp=tmp)
    o = c.objects
    o["tool"] = c.product("tool")
    o["data"] = c.product("data", ["download", "interface", "model_to_data"])
    o["orderable"] = c.product("tool", prefix="authz-order")
    o["submitted"] = c.product("tool", approve=False)
    # a throwaway unit for the member routes (never a demo unit)
    o["unit"] = f"authz{secrets.token_hex(3)}"
    c.op.request("POST", "units", json={"slug": o["unit"], "name": "authorization matrix"})
    # an order of unit a (the buyer) that the operator's row refunds... and the refused rows'
    o["order"] = users["subscriber-a"].order("ev-charger-layout", "per_use")["id"]
    c.cleanup.append(lambda: c.op.http.post(c.op.url + f"api/orders/{o['order']}/refund",
                                            json={"reason": "authorization matrix"}))
    # a download link minted for publisher-a
    link = c.pub.request("POST", f"products/{o['tool']['name']}/versions/"
                         f"{o['tool']['version']}/files/README.md")
    o["link"] = link["url"][len("/services/marketplace/"):]
    # a finished run of unit a (the owner runs its own tool freely)
    o["run"] = c.pub.request("POST", "runs", json={"product": o["tool"]["name"]})["id"]
    # a pending model-to-data request of unit e to unit a's data
    o["m2d"] = c.m2d_request()
    # federated learning: a project of unit a with partner c, round 1 open; one enrolling
    from marketplace_ext.federated import keys
    from marketplace_ext.federated.client import bundle_zip

    public, _ = keys.generate_paillier_keypair(2048)
    model = save_model(c.tmp / "fl-model")
    o["fl_body"] = {"title": "authorization matrix", "rounds": 2, "quorum": 2,
                    "min_updates": 2, "deadline_seconds": 3600, "key_size": 2048,
                    "public_key": keys.public_key_to_json(public),
                    "pack": {"bits": 16, "clip": 1.0, "max_parties": 5, "max_weight": 1000},
                    "model": base64.b64encode(bundle_zip(model)).decode()}
    o["x25519"] = base64.urlsafe_b64encode(
        X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    o["fl"] = c.fl_project(start=True)
    o["fl_enrolling"] = c.fl_project()
    o["size"] = c.pub.request("GET", "log/checkpoint")["size"]
    # the owner's first remote call starts the tool's warm kernel (slow on a loaded machine,
    # where a call may time out while the kernel starts): started here, the matrix's calls
    # find it warm
    predict = f"{c.pub.url}api/products/{o['tool']['name']}/predict"
    wait_until(lambda: c.pub.http.post(predict, json=PREDICT_BODY, timeout=400).status_code
               == 200, 900, "a warm predict kernel", poll=1)
    wait_until(lambda: c.pub.request("GET", f"runs/{o['run']}")["status"]
               not in ("queued", "running"), 600, "the fixture's run", poll=1)
    return c


# --- the HTML pages' requests -----------------------------------------------------------------
# Token-authenticated, as every row (a token needs no xsrf token; a browser's cookie does). A
# form POST carries a value the domain refuses only after its authorization checks, so no
# demo unit spends a point and no demo product changes.

Builder = Callable[[Ctx, str, bool], Call]


def page(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path.format(**ctx.objects))


def form(path: str, data: dict[str, str]) -> Builder:
    return lambda ctx, role, fresh: Call("POST", path.format(**ctx.objects), {
        "data": {k: v.format(**ctx.objects) for k, v in data.items()}})


def _link_page(ctx: Ctx, role: str, fresh: bool) -> Call:
    """The page of a download link minted for publisher-a (free: its own unit's tool), minted
    again when the row's older one may be near its 5-minute lifetime."""
    token, minted = ctx.objects.get("page_link", ("", 0.0))
    if time.monotonic() - minted > 60:
        tool = ctx["tool"]
        link = ctx.pub.request("POST", f"products/{tool['name']}/versions/{tool['version']}"
                                       "/files/README.md")
        token = link["url"].rsplit("/", 1)[1]
        ctx.objects["page_link"] = (token, time.monotonic())
    return Call("GET", f"products/{ctx['tool']['name']}/download?link={quote(token, safe='')}")


def _buy_form(ctx: Ctx, role: str, fresh: bool) -> Call:
    return Call("POST", f"products/{ctx['orderable']['name']}/buy", {"data": {
        "plan": "year", "idempotency_key": f"authz-page-{secrets.token_hex(8)}"}})


P = "products/{tool[name]}"
S = "products/{submitted[name]}"
PAGE_BUILDERS: dict[tuple[str, str], Builder] = {
    ("/account", "GET"): page("account"),
    ("/products/{product}/buy", "GET"): page(S + "/buy"),
    ("/products/{product}/buy", "POST"): _buy_form,
    ("/products/{product}/try", "GET"): page(S + "/try"),
    ("/products/{product}/try", "POST"): form(P + "/try", {"rows": "[]", "format": "json"}),
    ("/products/{product}/sql", "GET"): page(S + "/sql"),
    ("/products/{product}/sql", "POST"):
        form("products/{data[name]}/sql", {"sql": "", "limit": ""}),
    ("/products/{product}/download", "GET"): _link_page,
    ("/products/{product}/download", "POST"):
        form(P + "/download", {"version": "{tool[version]}", "path": "no-such-file.txt"}),
    ("/products/{product}/export", "GET"): page("products/{data[name]}/export"),
    ("/products/{product}/export", "POST"):
        form("products/{data[name]}/export", {"view": "customers_public", "format": "xlsx"}),
    ("/products/{product}/run", "GET"): page(S + "/run?version={submitted[version]}"),
    ("/products/{product}/run", "POST"):
        form(P + "/run", {"data": "platform", "timeout_seconds": "999999999"}),
    ("/runs", "GET"): page("runs"),
    ("/runs/{run}", "GET"): page("runs/{run}"),
    ("/runs/{run}", "POST"): form("runs/{run}", {"action": ""}),
    ("/publish", "GET"): page("publish"),
    ("/publish", "POST"): form("publish", {"intent": "submit", "accept_terms": ""}),
    ("/publish/{product}", "GET"): page("publish/{submitted[name]}"),
    ("/publish/{product}", "POST"): form("publish/{tool[name]}", {"state": "on", "reason": ""}),
    ("/review", "GET"): page("review"),
    ("/review", "POST"): form("review", {"product": "{tool[name]}", "state": "neither"}),
    ("/review/{product}/{version}", "GET"): page("review/{submitted[name]}/{submitted[version]}"),
    ("/review/{product}/{version}", "POST"):
        form("review/{submitted[name]}/{submitted[version]}", {"decision": "", "reason": ""}),
    ("/admin", "GET"): page("admin"),
    ("/admin", "POST"): form("admin", {"slug": "", "name": ""}),
    ("/admin/units/{unit}", "GET"): page("admin/units/{unit}"),
    ("/admin/units/{unit}", "POST"): form("admin/units/{unit}", {"action": ""}),
    ("/m2d/{request}", "GET"): page("m2d/{m2d}"),
    ("/m2d/{request}", "POST"): form("m2d/{m2d}", {"decision": "", "reason": ""}),
    ("/m2d/{request}/notebook.html", "GET"): page("m2d/{m2d}/notebook.html"),
}
