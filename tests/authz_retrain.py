"""The authorization matrix's rows for further training (handlers/retrain.py), merged into
test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The retrain row asks for unit a's template tool, which offers no further training: its own
unit passes the sharing gate and is refused naming ``product`` (nothing is queued or spent),
other units have no entitlement, the operator belongs to no unit. No derived model exists on
the shared platform (a training run takes minutes), so the single-model row reads an id nobody
owns: 404 naming ``model`` for everyone; that a unit's derived model stays invisible and
uncallable to other units is tested in tests/test_retrain.py."""

from __future__ import annotations

from authz_objects import Builder, Call, Cell, R

NOENT = "403 no_entitlement"

EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    ("/api/products/{product}/retrain", "POST"): R(
        401, "400 field=product", NOENT, "400 field=product", NOENT, 403),
    ("/api/derived-models", "GET"): R(401, 200, 200, 200, 200, 200),
    ("/api/derived-models/{model}", "GET"): R(401, "404 field=model", "404 field=model",
                                              "404 field=model", "404 field=model",
                                              "404 field=model"),
}

BUILDERS: dict[tuple[str, str], Builder] = {
    ("/api/products/{product}/retrain", "POST"): lambda ctx, role, fresh: Call(
        "POST", f"api/products/{ctx['tool']['name']}/retrain", {"json": {"parameters": {}}}),
    ("/api/derived-models", "GET"): lambda ctx, role, fresh: Call("GET", "api/derived-models"),
    ("/api/derived-models/{model}", "GET"): lambda ctx, role, fresh: Call(
        "GET", "api/derived-models/987654321"),
}
