"""The authorization matrix's rows for a federated project's economy (handlers/fl_economy.py),
merged into test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The rows act on the matrix's running project of unit a (partner c, round 1 open, no pool): the
pool row asks for more points than unit a holds (409 naming ``pool``, nothing moves), the
settlement and the model product are refused while the project runs (409 naming ``project``),
and nothing is settled or published yet (404 naming ``project`` for those who may see it);
the project did not opt in to the leave-one-out measure, so its leave-one-out sums are a 409
naming ``project`` for members. That these succeed on a finished project is tested in
tests/test_fl_economy_api.py. Cancelling succeeds for the initiator's publishers and operators,
on a fresh project of unit a (the refund itself is tested in tests/test_fl_economy_end.py)."""

from __future__ import annotations

from authz_objects import Builder, Call, Cell, R

F = "/api/fl/projects/{project}"
NOPROJECT = "404 field=project"

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    (F + "/pool", "POST"): R(401, 403, 403, "409 field=pool", 403, 403),
    (F + "/contributions", "GET"): R(401, 200, 403, 200, 403, 200),
    (F + "/settlement", "GET"): R(401, NOPROJECT, 403, NOPROJECT, 403, NOPROJECT),
    (F + "/settlement", "POST"): R(401, 403, 403, "409 field=project", 403, 403),
    (F + "/rounds/{number}/loo/{unit}", "GET"):
        R(401, "409 field=project", 403, "409 field=project", 403, 403),
    (F + "/cancel", "POST"): R(401, 403, 403, 200, 403, 200),
    (F + "/product", "GET"): R(401, NOPROJECT, 403, NOPROJECT, 403, NOPROJECT),
    (F + "/product", "POST"): R(401, 403, 403, "409 field=project", 403, 403),
}

FP = "api/fl/projects/{fl}"


def _get(path: str) -> Builder:
    return lambda ctx, role, fresh: Call("GET", path.format(fl=ctx["fl"]))


BUILDERS: dict[tuple[str, str], Builder] = {
    (F + "/pool", "POST"): lambda ctx, role, fresh: Call(
        "POST", FP.format(fl=ctx["fl"]) + "/pool", {"json": {"amount": 999_999}}),
    (F + "/contributions", "GET"): _get(FP + "/contributions"),
    (F + "/settlement", "GET"): _get(FP + "/settlement"),
    (F + "/settlement", "POST"): lambda ctx, role, fresh: Call(
        "POST", FP.format(fl=ctx["fl"]) + "/settlement", {"json": {}}),
    (F + "/rounds/{number}/loo/{unit}", "GET"): _get(FP + "/rounds/1/loo/c"),
    (F + "/product", "GET"): _get(FP + "/product"),
    (F + "/cancel", "POST"): lambda ctx, role, fresh: Call(
        "POST", FP.format(fl=ctx.fl_project(partner=None) if fresh else ctx["fl"]) + "/cancel",
        {"json": {"reason": "authorization matrix"}}),
    (F + "/product", "POST"): lambda ctx, role, fresh: Call(
        "POST", FP.format(fl=ctx["fl"]) + "/product",
        {"files": {"bundle": ("model.zip", b"PK\x05\x06" + b"\0" * 18)},
         "data": {"accept_terms": "true"}}),
}
