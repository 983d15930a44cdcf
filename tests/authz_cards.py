"""The authorization matrix's row for a product card's images (handlers/card_pages.py), merged
into test_authz_matrix's EXPECTED and BUILDERS. Same unit is ``a``, another unit ``b``.

The image belongs to a tool of unit a with a submitted version only, made on first use: its
own unit and operators see the card (200, for nothing), other units do not see the product
(404, as its page); a page sends an anonymous browser to the hub's login."""

from __future__ import annotations

import secrets

import yaml
from authz_objects import Builder, Call, Cell, R

from marketplace_ext.bundle import new_product

ROUTE = "/products/{product}/versions/{version}/card/{path}"
EXPECTED: dict[tuple[str, str], dict[str, Cell]] = {
    (ROUTE, "GET"): R(302, 200, 404, 200, 404, 200),
}
#: the smallest valid PNG (1 x 1, grey)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                    "3a7e9b550000000a49444154789c63680000008200816e3c9f0e0000000049454e44ae426082")


def _card_product(ctx) -> dict:
    if "card_product" not in ctx.objects:
        name = f"authz-card-{secrets.token_hex(3)}"
        bundle = new_product("tool", name, ctx.tmp / name)
        manifest = yaml.safe_load((bundle / "product.yaml").read_text())
        manifest["plans"] = [{"type": "per_use", "price": 10}]
        (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        (bundle / "card").mkdir()
        (bundle / "card" / "dot.png").write_bytes(PNG)
        with (bundle / "README.md").open("a") as f:
            f.write("\n![one grey pixel](card/dot.png)\n")
        version = ctx.pub.publish(bundle)["version"]
        ctx.objects["card_product"] = {"name": name, "version": version}
    return ctx.objects["card_product"]


def _card_image(ctx, role, fresh) -> Call:
    p = _card_product(ctx)
    return Call("GET", f"products/{p['name']}/versions/{p['version']}/card/card/dot.png")


BUILDERS: dict[tuple[str, str], Builder] = {(ROUTE, "GET"): _card_image}
