"""Helpers of the browser tests (fixtures are in conftest.py): logging in through the hub's
form, the axe-core accessibility check, and screenshots for docs/.

Playwright drives Debian's chromium (``/usr/bin/chromium``, installed by ``make test``); no
browser is ever downloaded."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
AXE_JS = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
SERVICE = "/services/marketplace/"
#: a narrow window (a phone held upright) for the "fits a narrow window" checks
NARROW = {"width": 390, "height": 844}


def login(page, hub_url: str, user: str, password: str, next_path: str = SERVICE) -> None:
    """Log ``page`` in through the hub's login form, then open ``next_path`` (the service's
    pages pass hub OAuth by redirects, with no confirmation for the hub's own service)."""
    page.goto(f"{hub_url}/hub/login?next={quote(next_path)}")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    with page.expect_navigation():
        page.click("#login_submit")
    page.goto(hub_url + next_path)
    page.wait_for_load_state("load")
    assert "/hub/login" not in page.url, f"{user} is not logged in: at {page.url}"


def axe_violations(page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict]:
    """Run axe-core (from npm, injected into the page) and return the violations of the
    given impacts, each as ``{id, impact, help, targets}``."""
    # evaluated through the DevTools protocol, which the page's CSP (no inline script) does
    # not govern; add_script_tag would be refused by it, and the CSP stays on in the tests
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_JS.read_text() + "\n;undefined")
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"],
         "targets": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"] if v["impact"] in impacts
    ]


def assert_accessible(page) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    violations = axe_violations(page)
    assert not violations, f"axe-core on {page.url}: {violations}"


def fits_narrow_window(page) -> bool:
    """True if the page, at the narrow viewport, needs no horizontal scrolling of the whole
    document (tables may scroll inside their own wrappers)."""
    return page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def screenshot(page, name: str) -> Path:
    """Save what the test sees as ``docs/screenshots/<name>.png`` (the README's pictures come
    from here, so they show what the tests saw)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
