"""The authorization matrix's rows for the exchange's workshops routes (API and pages), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The workshop in the paths is hosted by publisher-a (unit a); subscriber-a is enrolled in it
and has one exercise submission. Hosting needs the publisher or operator role; enrolling needs
a unit (an operator has none) and the host does not enrol in their own workshop; materials and
submissions are for the participants; awards wait for the deadline (409 naming it: the host and
operators got past authorization)."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta

from authz_objects import Builder, Call, Cell, Ctx, R
from helpers import notebook

LOGIN, RELOGIN = 302, 303
W = "/api/workshops/{workshop}"


def _future(days: float = 1) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


NB = json.loads(notebook("n = 1", "import json, os\nos.makedirs('outputs', exist_ok=True)\n"
                         "json.dump({'n': n}, open('outputs/answer.json', 'w'))"))
CHECKER = json.loads(notebook('submission_dir = "submission"',
                              "import json, os\nos.makedirs('outputs', exist_ok=True)\n"
                              "json.dump({'passed': True, 'feedback': 'ok'}, "
                              "open('outputs/grade.json', 'w'))"))


def workshop_body() -> dict:
    return {"title": f"authz workshop {secrets.token_hex(3)}", "starts_at": _future(3),
            "capacity": 50, "materials": {"intro.ipynb": base64.b64encode(
                json.dumps(NB).encode()).decode()}}


def _workshop(ctx: Ctx) -> dict:
    """The shared objects, made once: publisher-a's workshop, subscriber-a enrolled with one
    exercise submission, a competition open for a day."""
    if "ws" not in ctx.objects:
        wid = ctx.pub.request("POST", "workshops", json=workshop_body())["id"]
        ctx.pub.request("POST", f"workshops/{wid}/exercises", json={
            "name": "hello", "title": "Hello", "checker": CHECKER})
        ctx.pub.request("POST", f"workshops/{wid}/competitions", json={
            "name": "guess", "title": "Guess", "deadline": _future(1),
            "labels": "id,label\n1,a\n2,b\n3,a\n"})
        trainee = ctx.users["subscriber-a"]
        trainee.request("POST", f"workshops/{wid}/enrolment")
        sub = trainee.request("POST", f"workshops/{wid}/exercises/hello/submissions",
                              json={"notebook": NB})["id"]
        ctx.objects["ws"] = {"id": wid, "submission": sub}
    return ctx.objects["ws"]


def _path(template: str) -> Builder:
    def build(ctx: Ctx, role: str, fresh: bool) -> Call:
        ws = _workshop(ctx)
        return Call("GET", template.format(w=ws["id"], s=ws["submission"]))
    return build


def _post(template: str, body) -> Builder:
    def build(ctx: Ctx, role: str, fresh: bool) -> Call:
        ws = _workshop(ctx)
        data = body() if callable(body) else body
        return Call("POST", template.format(w=ws["id"]), {"json": data})
    return build


def _enrol(ctx: Ctx, role: str, fresh: bool) -> Call:
    """A fresh workshop of publisher-a for each enrolment that should succeed."""
    wid = (ctx.pub.request("POST", "workshops", json=workshop_body())["id"] if fresh
           else _workshop(ctx)["id"])
    return Call("POST", f"api/workshops/{wid}/enrolment")


def _named(kind: str) -> dict:
    name = f"{kind}-{secrets.token_hex(3)}"
    if kind == "ex":
        return {"name": name, "title": "An exercise", "checker": CHECKER}
    return {"name": name, "title": "A competition", "deadline": _future(1),
            "labels": "id,label\n1,a\n2,b\n"}


def _page_form(ctx: Ctx, role: str, fresh: bool) -> Call:
    # no action: refused (400, field action) after the login and before anything is written
    return Call("POST", f"workshops/{_workshop(ctx)['id']}", {"data": {"action": ""}})


EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    ("/api/workshops", "GET"): R(401, 200, 200, 200, 200, 200),
    # publishers host for their unit, operators for the platform
    ("/api/workshops", "POST"): R(401, 403, 403, 201, 201, 201),
    (W, "GET"): R(401, 200, 200, 200, 200, 200),
    # the host (publisher-a) does not enrol in their own workshop; an operator has no unit
    (W + "/enrolment", "POST"): R(401, 201, 201, "409 field=workshop", 201, "403 field=unit"),
    (W + "/materials", "GET"): R(401, 200, "403 field=workshop", 200, "403 field=workshop",
                                 200),
    (W + "/exercises", "POST"): R(401, 403, 403, 201, 403, 201),
    (W + "/exercises/{exercise}/submissions", "POST"):
        R(401, 202, "403 field=workshop", "403 field=workshop", "403 field=workshop",
          "403 field=workshop"),
    (W + "/competitions", "POST"): R(401, 403, 403, 201, 403, 201),
    (W + "/competitions/{competition}", "GET"): R(401, 200, 200, 200, 200, 200),
    (W + "/competitions/{competition}/submissions", "POST"):
        R(401, 202, "403 field=workshop", "403 field=workshop", "403 field=workshop",
          "403 field=workshop"),
    (W + "/competitions/{competition}/awards", "POST"):
        R(401, 403, 403, "409 field=deadline", 403, "409 field=deadline"),
    # everyone sees their own submissions (none, for most)
    (W + "/submissions", "GET"): R(401, 200, 200, 200, 200, 200),
    # subscriber-a's submission: theirs, the host's and operators'
    (W + "/submissions/{submission}", "GET"):
        R(401, 200, "404 field=submission", 200, "404 field=submission", 200),
    ("/workshops", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    # hosting: publishers and operators; a form without materials is refused (400), nothing made
    ("/workshops/new", "GET"): R(LOGIN, 403, 403, 200, 200, 200),
    ("/workshops/new", "POST"): R(RELOGIN, 403, 403, 400, 400, 400),
    ("/workshops/{workshop}", "GET"): R(LOGIN, 200, 200, 200, 200, 200),
    # a form without an action: the page again with the error (400), nothing written
    ("/workshops/{workshop}", "POST"): R(RELOGIN, 400, 400, 400, 400, 400),
}

BUILDERS: dict[tuple[str, str], Builder] = {
    ("/api/workshops", "GET"): lambda ctx, role, fresh: Call("GET", "api/workshops"),
    ("/api/workshops", "POST"):
        lambda ctx, role, fresh: Call("POST", "api/workshops", {"json": workshop_body()}),
    (W, "GET"): _path("api/workshops/{w}"),
    (W + "/enrolment", "POST"): _enrol,
    (W + "/materials", "GET"): _path("api/workshops/{w}/materials"),
    (W + "/exercises", "POST"): _post("api/workshops/{w}/exercises", lambda: _named("ex")),
    (W + "/exercises/{exercise}/submissions", "POST"):
        _post("api/workshops/{w}/exercises/hello/submissions", {"notebook": NB}),
    (W + "/competitions", "POST"):
        _post("api/workshops/{w}/competitions", lambda: _named("comp")),
    (W + "/competitions/{competition}", "GET"): _path("api/workshops/{w}/competitions/guess"),
    (W + "/competitions/{competition}/submissions", "POST"):
        _post("api/workshops/{w}/competitions/guess/submissions", {"notebook": NB}),
    (W + "/competitions/{competition}/awards", "POST"):
        _post("api/workshops/{w}/competitions/guess/awards",
              {"user": "subscriber-a", "points": 1}),
    (W + "/submissions", "GET"): _path("api/workshops/{w}/submissions"),
    (W + "/submissions/{submission}", "GET"): _path("api/workshops/{w}/submissions/{s}"),
    ("/workshops", "GET"): lambda ctx, role, fresh: Call("GET", "workshops"),
    ("/workshops/new", "GET"): lambda ctx, role, fresh: Call("GET", "workshops/new"),
    ("/workshops/new", "POST"): lambda ctx, role, fresh: Call("POST", "workshops/new", {
        "data": {"title": "authz", "starts_at": _future(2)[:16], "capacity": "3"}}),
    ("/workshops/{workshop}", "GET"): _path("workshops/{w}"),
    ("/workshops/{workshop}", "POST"): _page_form,
}
