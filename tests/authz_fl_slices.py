"""The authorization matrix's rows for split decryption (handlers/fl_slices.py), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The rows act on the matrix's running project of unit a (partner c, round 1 open): slices are
for approved members only (403 naming ``unit`` for others; posting also takes the publish
scope), and round 1 is not published, so members read a 404 naming ``round`` and a member's
post is a 409 naming ``round`` (nothing stored). That posting, fetching and reassembling
slices work on a published round is tested in tests/test_fl_slices_api.py."""

from __future__ import annotations

from authz_objects import Builder, Call, Cell, R

F = "/api/fl/projects/{project}/rounds/{number}/slices"
NOROUND = "404 field=round"

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    (F, "GET"): R(401, NOROUND, 403, NOROUND, 403, 403),
    (F + "/{index}", "GET"): R(401, NOROUND, 403, NOROUND, 403, 403),
    (F + "/{index}", "POST"): R(401, 403, 403, "409 field=round", 403, 403),
}

FP = "api/fl/projects/{fl}/rounds/1/slices"

BUILDERS: dict[tuple[str, str], Builder] = {
    (F, "GET"): lambda ctx, role, fresh: Call("GET", FP.format(fl=ctx["fl"])),
    (F + "/{index}", "GET"): lambda ctx, role, fresh: Call("GET", FP.format(fl=ctx["fl"]) + "/0"),
    (F + "/{index}", "POST"): lambda ctx, role, fresh: Call(
        "POST", FP.format(fl=ctx["fl"]) + "/0",
        {"data": b"x" * 40, "headers": {"Content-Type": "application/octet-stream"}}),
}
