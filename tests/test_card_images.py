"""Product cards' images (issue 17): the catalogue's output pictures, the README rewrite that
points a card's images at the service's card-image route and drops every other image source,
and the route itself on the session platform (visibility as the product page, no spending,
types, headers, traversal refused naming ``path``).

The first tests need no platform."""

from __future__ import annotations

import hashlib
import http.client
import io
import re
import secrets
import zipfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import yaml
from helpers import market_as

from marketplace_ext import catalog
from marketplace_ext.blobs import BlobStore
from marketplace_ext.bundle import load_bundle, new_product
from marketplace_ext.card_images import MAGIC, CardImage, read_card_image
from marketplace_ext.catalogue_pictures import MAX_BYTES, PICTURE, PICTURES
from marketplace_ext.errors import NotFound

CATALOGUE = Path(__file__).resolve().parent.parent / "product_templates" / "catalogue"
BASE = "/services/marketplace/products/p/versions/1.0.0/card/"
PNG = MAGIC["image/png"]


def test_card_image_paths_are_relative_png_or_jpeg_inside_the_bundle():
    good = {"card/output.png": "card/output.png", "./files/a.JPG": "files/a.JPG",
            "x.jpeg": "x.jpeg", "card/a%20b.png": "card/a b.png"}
    for src, path in good.items():
        assert catalog.card_image_path(src) == path, src
    for src in ("https://evil.example/x.png", "//evil.example/x.png", "/etc/x.png",
                "../x.png", "card/../../x.png", "%2e%2e/x.png", "card%2F..%2F..%2Fx.png",
                "%2Fetc%2Fx.png", "card/x.svg", "card/x.png?v=1", "card/x.png#a",
                "data:image/png;base64,AAAA", "javascript:x.png", "card//x.png", "a\\b.png",
                "card/x.png\n", "README.md", ""):
        assert catalog.card_image_path(src) is None, src


def test_render_readme_points_card_images_at_the_route_and_drops_every_other_source():
    md = ("![chart](card/output.png) ![far](https://evil.example/x.png) ![up](../x.png) "
          "![enc](%2e%2e/x.png) ![vec](card/x.svg) ![inline](data:image/png;base64,AAAA) "
          '<img src="card/raw.png" onerror="alert(1)" alt="raw">')
    html = catalog.render_readme(md, BASE)
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources == [BASE + "card/output.png", BASE + "card/raw.png"], html
    assert "evil" not in html and "onerror" not in html and "data:" not in html
    assert 'alt="far"' in html and 'alt="chart"' in html  # the alt text stays
    # without a base (forum posts, reviews) no image source survives
    assert "src=" not in catalog.render_readme(md)
    assert catalog.card_image_paths(md) == {"card/output.png", "card/raw.png"}
    base = catalog.card_image_base("/services/marketplace/", "a b", "1.0.0")
    assert base == "/services/marketplace/products/a%20b/versions/1.0.0/card/"


def test_reading_a_card_image_checks_its_digest_and_its_type(tmp_path):
    blobs = BlobStore(tmp_path / "blobs")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("card/ok.png", PNG + b"rest")
        zf.writestr("card/fake.png", b"<svg onload=alert(1)>")
    sha = blobs.put(buf.getvalue())

    def image(path: str, digest: str | None = None) -> CardImage:
        with zipfile.ZipFile(io.BytesIO(blobs.get(sha))) as zf:
            real = hashlib.sha256(zf.read(path)).hexdigest()
        return CardImage(sha, path, digest or real, "image/png")

    assert read_card_image(blobs, image("card/ok.png")) == PNG + b"rest"
    for bad in (image("card/fake.png"), image("card/ok.png", "0" * 64)):
        with pytest.raises(NotFound) as e:
            read_card_image(blobs, bad)
        assert e.value.field == "path"


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_cards_without_ground_truth_show_a_small_output_picture(name):
    bundle = load_bundle(CATALOGUE / name)
    assert PICTURE in bundle.files
    data = (CATALOGUE / name / PICTURE).read_bytes()
    assert data.startswith(PNG) and 1000 < len(data) < MAX_BYTES, len(data)
    assert catalog.card_image_paths(bundle.readme) == {PICTURE}
    alt = re.search(r"!\[([^\]]+)\]\(" + re.escape(PICTURE) + r"\)", bundle.readme)
    assert alt and len(alt.group(1).split()) >= 5, "the picture needs a describing alt text"


# --- the route, on the session platform ---------------------------------------------------------


@pytest.fixture(scope="module")
def card(platform_proc, tmp_path_factory):
    """A tool of unit a, submitted (not on the shelf: other units may not see it), whose card
    shows one PNG and one file that only pretends to be one; the bundle holds another PNG
    that the card does not show."""
    url, logins = platform_proc.url, platform_proc.logins()
    users = {u: market_as(url, u, logins[u]) for u in (
        "publisher-a", "subscriber-a", "subscriber-b", "subscriber-c", "operator")}
    name = f"card-{secrets.token_hex(3)}"
    bundle = new_product("tool", name, tmp_path_factory.mktemp("card") / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    picture = (CATALOGUE / "customer-portrait" / PICTURE).read_bytes()
    (bundle / "card").mkdir()
    (bundle / "card" / "pic.png").write_bytes(picture)
    (bundle / "card" / "hidden.png").write_bytes(picture)
    (bundle / "card" / "fake.png").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    with (bundle / "README.md").open("a") as f:
        f.write("\n![the output](card/pic.png) ![fake](card/fake.png) "
                "![far](https://evil.example/x.png)\n")
    version = users["publisher-a"].publish(bundle)["version"]
    return {"users": users, "name": name, "version": version, "picture": picture}


def page(market, path: str):
    return market.http.get(market.url + path, allow_redirects=False, timeout=60)


def test_the_card_shows_its_image_to_who_sees_the_product(card):
    users, name, version = card["users"], card["name"], card["version"]
    html = page(users["publisher-a"], f"products/{name}").text
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    route = f"products/{name}/versions/{version}/card/card/pic.png"
    assert any(s.endswith(route) for s in sources), sources
    assert "evil.example" not in html
    for who in ("publisher-a", "subscriber-a", "operator"):
        r = page(users[who], route)
        assert r.status_code == 200, (who, r.status_code)
        assert r.content == card["picture"]
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "private" in r.headers["Cache-Control"]
    # another unit does not see a product that is not on the shelf, nor its card
    assert page(users["subscriber-b"], route).status_code == 404
    assert page(users["subscriber-b"], f"products/{name}").status_code == 404
    anonymous = requests.get(users["publisher-a"].url + route, allow_redirects=False,
                             timeout=60)
    assert anonymous.status_code == 302 and "/hub/" in anonymous.headers["Location"]


def test_only_the_cards_own_images_are_served_and_traversal_is_refused(card):
    pub, name, version = card["users"]["publisher-a"], card["name"], card["version"]
    base = f"products/{name}/versions/{version}/card/"
    # in the bundle but not shown by the card; shown but not a PNG; not there
    for path in ("card/hidden.png", "card/fake.png", "card/none.png"):
        assert page(pub, base + path).status_code == 404, path
    assert page(pub, f"products/{name}/versions/9.9.9/card/card/pic.png").status_code == 404
    for path in ("..%2Fproduct.yaml", "card%2F..%2F..%2Fx.png", "%2Fetc%2Fpasswd.png",
                 "README.md", "card/x.svg"):
        status, text = raw_get(pub, base + path)
        assert status == 400, (path, status)
        assert "path" in text, path
    # dot segments, plain or encoded, are resolved before the service sees them (the hub's
    # proxy parses URLs as WHATWG does): they leave the route, and nothing is served
    for path in ("%2e%2e/%2e%2e/x.png", "../x.png", "card/../../../product.yaml"):
        status, text = raw_get(pub, base + path)
        assert status in (400, 404), (path, status)


def raw_get(market, path: str) -> tuple[int, str]:
    """GET ``path`` exactly as written: requests would resolve ``..`` and ``%2e`` itself."""
    url = urlsplit(market.url + path)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("GET", url.path, headers={
            "Authorization": market.http.headers["Authorization"]})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_a_catalogue_card_picture_is_served_for_nothing(card):
    sub = card["users"]["subscriber-c"]  # unit c owns no picture product and bought nothing
    before = sub.request("GET", "units/c/account")["balance"]
    html = page(sub, "products/customer-portrait").text
    src = re.search(r'<img[^>]*src="([^"]+/card/card/output\.png)"', html)
    assert src, "the portrait's card shows no picture"
    r = sub.http.get(urljoin(sub.url, src.group(1)), timeout=60)
    assert r.status_code == 200
    assert r.content == (CATALOGUE / "customer-portrait" / PICTURE).read_bytes()
    assert sub.request("GET", "units/c/account")["balance"] == before
