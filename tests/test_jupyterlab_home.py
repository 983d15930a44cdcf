"""A user's own JupyterLab, tried as a new user would: the "Start here" folder in the home (a
welcome notebook on the user's own unit data, the guided FL notebooks, "Publish a product"), a
Launcher card and a Help-menu entry opening the marketplace, and no "official Jupyter news"
prompt. A refresh of the folder never overwrites what the user changed."""

from __future__ import annotations

import json
import pwd
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
import requests
from notebook_client import execute, spawn_server, stop_server

from marketplace_ext import accounts, start_here
from marketplace_ext.hubsession import HubSession

USER = "subscriber-e"  # unit e; no other test starts this user's server
ROOT = Path(__file__).resolve().parent.parent


# --- the folder, without a platform ------------------------------------------------------------


def test_start_here_holds_the_welcome_the_publish_guide_and_the_fl_notebooks():
    files = start_here.sources()
    fl = {p.name for p in (ROOT / "fl_notebooks").glob("*.ipynb")}
    assert fl and {f"Federated learning/{n}" for n in fl} <= set(files)
    assert {"Welcome.ipynb", "Publish a product.ipynb"} <= set(files)
    welcome = nbformat.reads(files["Welcome.ipynb"].decode(), 4)
    nbformat.validate(welcome)
    code = "\n".join(c.source for c in welcome.cells if c.cell_type == "code")
    # the client, the widgets and the user's own unit database
    assert "Market()" in code and "Shop()" in code and "RunForm(" in code
    assert "UNIT_DATABASE" in code
    assert welcome.metadata.kernelspec.name == "grid-python"
    publish = nbformat.reads(files["Publish a product.ipynb"].decode(), 4)
    assert any("market new --kind" in c.source for c in publish.cells)


def test_a_refresh_never_overwrites_the_users_edits(tmp_path):
    v1 = {"Welcome.ipynb": b"welcome v1", "Federated learning/partner.ipynb": b"partner v1",
          "Publish a product.ipynb": b"publish v1"}
    done = start_here.install(tmp_path, v1)
    assert sorted(done["added"]) == sorted(v1)
    folder = tmp_path / start_here.START_HERE
    assert (folder / "Federated learning" / "partner.ipynb").read_bytes() == b"partner v1"

    (folder / "Welcome.ipynb").write_bytes(b"my own notes")  # the user edits one file
    (folder / "Publish a product.ipynb").unlink()  # and deletes another
    v2 = {k: v.replace(b"v1", b"v2") for k, v in v1.items()}
    done = start_here.install(tmp_path, v2)
    assert done == {"added": ["Publish a product.ipynb"],
                    "updated": ["Federated learning/partner.ipynb"], "kept": ["Welcome.ipynb"]}
    assert (folder / "Welcome.ipynb").read_bytes() == b"my own notes"
    assert (folder / "Federated learning" / "partner.ipynb").read_bytes() == b"partner v2"
    assert (folder / "Publish a product.ipynb").read_bytes() == b"publish v2"
    # and again: nothing to do, the edit still kept
    assert start_here.install(tmp_path, v2) == {"added": [], "updated": [],
                                                "kept": ["Welcome.ipynb"]}


def test_the_installer_never_writes_through_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / start_here.START_HERE).symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="symbolic link"):
        start_here.install(home, {"Welcome.ipynb": b"x"})
    assert list(elsewhere.iterdir()) == []
    (home / start_here.START_HERE).unlink()
    (home / start_here.START_HERE).mkdir()
    (home / start_here.START_HERE / "Welcome.ipynb").symlink_to(elsewhere / "target")
    assert start_here.install(home, {"Welcome.ipynb": b"x"})["kept"] == ["Welcome.ipynb"]
    assert not (elsewhere / "target").exists()


def test_lab_links_open_the_start_here_notebooks_in_the_users_own_server():
    links = start_here.lab_links("/hub/")
    assert links["partner"] == ("/hub/user-redirect/lab/tree/Start%20here/"
                                "Federated%20learning/partner.ipynb")
    assert links["welcome"].endswith("/lab/tree/Start%20here/Welcome.ipynb")


# --- the user's JupyterLab in a browser --------------------------------------------------------


@pytest.fixture(scope="module")
def lab_server(hub_url, logins):
    session = HubSession(hub_url)
    session.login(USER, logins[USER])
    token = session.create_token("jupyterlab home test")
    url = spawn_server(hub_url, USER, token)
    yield url, token
    stop_server(hub_url, USER, token)


def _home() -> Path:
    return Path(pwd.getpwnam(accounts.user_account(USER)).pw_dir)


def test_jupyterlab_opens_with_start_here_the_launcher_card_and_the_help_entry(
        lab_server, page_as, hub_url):
    from browser import screenshot

    url, token = lab_server
    folder = _home() / start_here.START_HERE
    installed = sorted(rel.as_posix() for rel in (p.relative_to(folder) for p in folder.rglob("*")
                                                  if p.is_file())
                       if not any(part.startswith(".") for part in rel.parts))
    assert sorted(start_here.sources()) == installed
    assert folder.stat().st_uid == pwd.getpwnam(accounts.user_account(USER)).pw_uid

    page = page_as(USER)
    page.set_default_timeout(60_000)
    page.goto(f"{url}lab/tree/{start_here.START_HERE}")
    page.wait_for_selector(".jp-LauncherCard")
    listing = page.locator(".jp-DirListing-content")
    listing.get_by_text("Welcome.ipynb").wait_for()
    names = page.locator(".jp-DirListing-itemText").all_inner_texts()
    assert {"Welcome.ipynb", "Publish a product.ipynb", "Federated learning"} <= set(names)

    card = page.locator(".jp-LauncherCard", has_text="Grid Data Supermarket")
    assert card.count() == 1
    # no "official Jupyter news" prompt: off in the settings, and none shown
    settings = page.request.get(
        f"{url}lab/api/settings/@jupyterlab/apputils-extension:notification",
        headers={"Authorization": f"token {token}"}).json()
    # (the site's overrides are the schema's defaults; the user changed nothing)
    assert settings["schema"]["properties"]["fetchNews"]["default"] == "false"
    assert "fetchNews" not in json.loads(settings.get("raw") or "{}")
    assert page.get_by_text("official Jupyter news").count() == 0
    screenshot(page, "jupyterlab-start-here")

    page.get_by_text("Help", exact=True).click()
    entry = page.locator(".lm-Menu-itemLabel", has_text="Grid Data Supermarket").first
    entry.wait_for()
    with page.context.expect_page() as opened:
        entry.click()
    market = opened.value
    market.wait_for_load_state()
    assert "/services/marketplace/" in market.url
    market.close()

    with page.context.expect_page() as opened:
        card.click()
    market = opened.value
    market.wait_for_load_state()
    assert market.url.startswith(f"{hub_url}/services/marketplace/")
    assert market.locator(".site-header .brand").inner_text() == "Grid Data Supermarket"
    assert page.get_by_text("official Jupyter news").count() == 0


def test_the_welcome_notebook_runs_on_the_users_own_unit_data(lab_server):
    """Its client and data cells, in the user's own (sandboxed) kernel; the widget cells are
    left to tests/test_widgets.py."""
    url, token = lab_server
    welcome = nbformat.reads(start_here.sources()["Welcome.ipynb"].decode(), 4)
    code = "\n".join(c.source for c in welcome.cells if c.cell_type == "code"
                     and "Shop" not in c.source and "RunForm" not in c.source)
    # a thread of its own: Playwright's sync API keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        out = pool.submit(execute, url, token, code, timeout=300).result()
    assert f"You are {USER} of unit e; roles: subscriber" in out
    count = int(out.split(" tables in ")[0].rsplit("\n", 1)[-1])
    assert count > 0, out  # the unit's own demo tables


def test_a_new_spawn_keeps_the_users_edit_of_the_welcome_notebook(lab_server, hub_url):
    url, token = lab_server
    headers = {"Authorization": f"token {token}"}
    path = f"{start_here.START_HERE}/Welcome.ipynb"
    nb = requests.get(f"{url}api/contents/{path}", headers=headers, timeout=30).json()["content"]
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": "my own note"})
    r = requests.put(f"{url}api/contents/{path}", headers=headers, timeout=30,
                     json={"type": "notebook", "format": "json", "content": nb})
    assert r.status_code == 200, r.text
    stop_server(hub_url, USER, token)
    url = spawn_server(hub_url, USER, token)  # the spawn refreshes the folder
    again = requests.get(f"{url}api/contents/{path}", headers=headers, timeout=30).json()
    assert again["content"]["cells"][0]["source"] == "my own note"
    manifest = json.loads((_home() / start_here.START_HERE / start_here.MANIFEST).read_text())
    assert set(start_here.sources()) <= set(manifest)
