"""Take the screenshots under docs/ from a running platform (`make run` in another terminal).

    .venv/bin/pip install playwright   # the Python driver only; it uses Debian's chromium
    .venv/bin/python docs/screenshots.py [--url http://127.0.0.1:8000] [--var var]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--var", type=Path, default=HERE.parent / "var")
    args = parser.parse_args()
    logins = {a["user"]: a["password"]
              for a in json.loads((args.var / "demo_logins.json").read_text())}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        page.goto(f"{args.url}/hub/login")
        page.fill("#username_input", "operator")
        page.fill("#password_input", logins["operator"])
        page.click("#login_submit")
        page.wait_for_url("**/hub/**")
        page.goto(f"{args.url}/hub/home")
        page.click("text=Services")
        page.screenshot(path=str(HERE / "hub-services-menu.png"))
        page.goto(f"{args.url}/services/marketplace/")
        page.wait_for_selector("#me-name")
        page.screenshot(path=str(HERE / "marketplace-shelf.png"), full_page=True)
        page.goto(f"{args.url}/services/marketplace/products/electricity-theft-detection")
        page.wait_for_selector("#units-using")
        page.screenshot(path=str(HERE / "marketplace-product.png"), full_page=True)
        page.goto(f"{args.url}/hub/authorize")
        page.screenshot(path=str(HERE / "authorize-signups.png"))
        browser.close()


if __name__ == "__main__":
    main()
