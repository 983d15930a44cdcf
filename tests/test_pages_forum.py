"""The forum's and the inbox's pages.

Without a platform: the templates rendered as the service renders them (hostile titles escaped,
a post's sanitized HTML shown as it is stored, operators' moderation forms, the nav's unread
count). On the session platform: the API end to end (a mention reaches the inbox, marking read,
an operator's hiding, a version decision's notification), then a browser: publisher-b starts a
thread with a script in it and mentions subscriber-c, who sees the unread count in the
navigation, opens the notification and lands on the post; an operator hides it with a reason.
Each page is checked with axe-core and photographed for docs/.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketplace_ext.auth import SCOPE_APPROVE, SCOPE_SUBSCRIBE, Caller
from marketplace_ext.exchange import forum

TEMPLATES = Path(__file__).resolve().parent.parent / "marketplace_ext" / "templates"
SERVICE = "/services/marketplace/"
HOSTILE = '<img src=x onerror="alert(1)">'
SCRIPT_POST = "Hello <script>window.__forum_xss = 1</script> **world**"

# --- the templates ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jinja():
    return Environment(loader=FileSystemLoader(str(TEMPLATES)),
                       autoescape=select_autoescape(default=True, default_for_string=True))


SUB = Caller(name="subscriber-a", unit="a", scopes=frozenset({SCOPE_SUBSCRIBE}))
OP = Caller(name="operator", unit=None, scopes=frozenset({SCOPE_SUBSCRIBE, SCOPE_APPROVE}))


def _ns(caller: Caller = SUB, **ns) -> dict:
    return {"prefix": SERVICE, "hub_prefix": "/hub/", "caller": caller, "xsrf": "2|tok",
            "nav": "forum", "errors": {}, "form": {}, "unread": 0, **ns}


def _thread(**change) -> dict:
    return {"id": 7, "title": HOSTILE, "target": {"kind": "category", "ref": "general",
                                                  "label": "General",
                                                  "link": "forum?category=general"},
            "author": "publisher-a", "author_unit": "a", "created_at": "2026-12-01T10:00:00Z",
            "last_post_at": "2026-12-01T11:00:00Z", "post_count": 2, "hidden": False,
            "hidden_reason": None, **change}


def _post(ident: int, **change) -> dict:
    return {"id": ident, "thread": 7, "author": "subscriber-b", "author_unit": "b",
            "created_at": "2026-12-01T10:00:00Z", "body": SCRIPT_POST,
            "html": forum.render(SCRIPT_POST), "mentions": [], "hidden": False,
            "hidden_reason": None, **change}


def test_forum_list_escapes_titles_and_keeps_the_filter_in_the_pager(jinja):
    html = jinja.get_template("forum.html").render(**_ns(
        threads=[_thread()], total=45, page=2, pages=3, categories=forum.CATEGORIES,
        target={"kind": "category", "ref": "data", "label": "Data and the platform",
                "link": "forum?category=data"},
        q="loss", keep="category=data&q=loss", new_link="forum/new?category=data"))
    assert HOSTILE not in html and "&lt;img src=x" in html
    assert 'href="/services/marketplace/forum?category=data&amp;q=loss&page=3"' in html
    assert 'href="/services/marketplace/forum?category=data&amp;q=loss&page=1"' in html
    assert re.search(r'href="/services/marketplace/forum\?category=data" aria-current="page"',
                     html)
    assert 'href="/services/marketplace/forum/new?category=data"' in html


def test_thread_page_shows_stored_html_inert_and_moderation_to_operators_only(jinja):
    posts = [_post(1), _post(2, hidden=True, hidden_reason="insults", body="", html="")]
    ns = dict(thread=_thread(), posts=posts, total=2, page=1, pages=1, per_page=20,
              max_body=forum.MAX_BODY, notice=None)
    html = jinja.get_template("forum_thread.html").render(**_ns(**ns))
    assert "<script" not in html.split("<main", 1)[1]  # the post's script is gone
    assert "<strong>world</strong>" in html
    assert "Hidden by an operator: insults" in html
    assert "moderate_post" not in html and "moderate_thread" not in html
    assert 'id="reply-form"' in html and "/forum/7?_xsrf=2%7Ctok" in html
    as_operator = jinja.get_template("forum_thread.html").render(**_ns(OP, **ns))
    assert as_operator.count('value="moderate_post"') == 2
    assert "Show again" in as_operator and 'id="moderate-thread"' in as_operator
    hidden = jinja.get_template("forum_thread.html").render(**_ns(**{
        **ns, "thread": _thread(hidden=True, hidden_reason="spam", title="(hidden)"),
        "posts": []}))
    assert 'id="thread-hidden"' in hidden and 'id="reply-form"' not in hidden


def test_new_thread_form_keeps_what_was_typed_next_to_the_error(jinja):
    html = jinja.get_template("forum_new.html").render(**_ns(
        categories=forum.CATEGORIES, max_body=forum.MAX_BODY, max_title=forum.MAX_TITLE,
        form={"product": "theft", "title": "ab", "body": HOSTILE},
        errors={"title": "title is required: text of 3 to 200 characters"}))
    assert 'name="product" value="theft"' in html and 'id="f-category"' not in html
    assert 'id="error-title"' in html and 'aria-invalid="true"' in html
    assert "&lt;img src=x" in html and HOSTILE not in html


def test_inbox_page_and_the_unread_count_in_the_navigation(jinja):
    notes = [{"id": 3, "kind": "mention", "kind_label": "You were mentioned",
              "subject": HOSTILE, "body": "", "link": "forum/7#post-2",
              "created_at": "2026-12-01T10:00:00Z", "read": False, "read_at": None},
             {"id": 2, "kind": "version_decided", "kind_label": "A version was decided",
              "subject": "Version 1.0.1 was approved", "body": "", "link": "publish/x",
              "created_at": "2026-12-01T09:00:00Z", "read": True, "read_at": "x"}]
    html = jinja.get_template("inbox.html").render(**_ns(
        nav="inbox", unread=1, notifications=notes, total=2, page=1, pages=1,
        unread_only=False, notice=None,
        mail={"enabled": False, "email": None, "mail_available": False}))
    assert HOSTILE not in html and "&lt;img" in html
    assert re.search(r'id="nav-inbox" aria-current="page">Inbox <span class="unread-count">1'
                     r'</span><span class="visually-hidden"> unread</span>', html)
    assert html.count('value="open"') == 2 and html.count('value="read"') == 1
    assert 'id="read-all-form"' in html and 'id="mail-unavailable"' in html
    nothing = jinja.get_template("inbox.html").render(**_ns(
        nav="inbox", unread=0, notifications=[], total=0, page=1, pages=1, unread_only=True,
        notice=None, mail={"enabled": True, "email": "a@b.example", "mail_available": True}))
    assert "unread-count" not in nothing and 'id="read-all-form"' not in nothing
    assert "Copies go to <strong>a@b.example</strong>" in nothing


# --- on the session platform --------------------------------------------------------------------


@pytest.fixture(scope="module")
def users(hub_url, logins):
    from helpers import market_as

    cache = {}

    def get(user: str):
        if user not in cache:
            cache[user] = market_as(hub_url, user, logins[user])
        return cache[user]

    return get


def test_forum_and_inbox_api_end_to_end(users, tmp_path):
    from marketplace_ext.bundle import new_product
    from marketplace_ext.client import MarketAPIError

    pub, sub, op = users("publisher-a"), users("subscriber-b"), users("operator")
    tag = secrets.token_hex(3)
    made = pub.forum_post_thread(f"Theft scores {tag}", f"{SCRIPT_POST} @subscriber-b",
                                 product="electricity-theft-detection")
    thread, first = made["thread"], made["posts"][0]
    assert first["body"].startswith("Hello <script>") and "<script" not in first["html"]
    assert first["mentions"] == ["subscriber-b"]
    link = f"forum/{thread['id']}#post-{first['id']}"

    def mention_of(notes: list[dict]) -> list[dict]:
        return [n for n in notes if n["link"] == link]

    inbox = sub.inbox(unread=True, per_page=100)
    # (other events may notify subscriber-b meanwhile: the counts are checked relative to it)
    assert [n["kind"] for n in mention_of(inbox["notifications"])] == ["mention"]
    mention = mention_of(inbox["notifications"])[0]
    assert inbox["unread"] >= 1 and tag in mention["subject"]
    # found by product and by search; bad input names its field
    listed = sub.forum_threads(product="electricity-theft-detection", q=tag)
    assert [t["id"] for t in listed["threads"]] == [thread["id"]]
    for call, field in [(lambda: sub.forum_post_thread("ab", "x", category="general"), "title"),
                        (lambda: sub.forum_post_thread("Fine", "x", category="gossip"),
                         "category"),
                        (lambda: sub.forum_reply(thread["id"], "   "), "body"),
                        (lambda: sub.forum_threads(q="x"), "q"),
                        (lambda: sub.mark_read([mention["id"] + 10**12]), "ids"),
                        (lambda: sub.inbox_settings("not-an-address", True), "email"),
                        (lambda: sub.forum_moderate(thread["id"], hidden=True,
                                                    reason="not mine"), None)]:
        with pytest.raises(MarketAPIError) as e:
            call()
        assert 400 <= e.value.status < 500 and e.value.field == field, (field, e.value)
    # someone else cannot mark your notification read
    with pytest.raises(MarketAPIError) as e:
        pub.mark_read([mention["id"]])
    assert e.value.status == 404 and e.value.field == "ids"
    assert sub.mark_read([mention["id"]])["marked"] == 1
    assert mention_of(sub.inbox(per_page=100)["notifications"])[0]["read"] is True
    assert mention_of(sub.inbox(unread=True, per_page=100)["notifications"]) == []
    # an operator hides a reply; others see only the reason
    reply = sub.forum_reply(thread["id"], "a rude reply")
    op.forum_moderate(post=reply["id"], hidden=True, reason="rude")
    seen = pub.forum_thread(thread["id"])["posts"][-1]
    assert seen["hidden"] and seen["body"] == "" and seen["hidden_reason"] == "rude"
    assert op.forum_thread(thread["id"])["posts"][-1]["body"] == "a rude reply"
    # the mail setting round-trips (this platform sends no e-mail)
    assert sub.inbox_settings("subscriber-b@b.example", True)["email"] == "subscriber-b@b.example"
    assert sub.inbox_settings(enabled=False) == {"enabled": False, "email": None,
                                                 "mail_available": False}
    # a version's decision reaches its unit's inbox, in the transaction that decided it
    name = f"inbox-{tag}"
    bundle = new_product("tool", name, tmp_path / name)
    manifest = yaml.safe_load((bundle / "product.yaml").read_text())
    manifest["plans"] = [{"type": "per_use", "price": 10}]
    (bundle / "product.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    version = pub.publish(bundle)["version"]
    op.review(name, version, "reject", "no README worth reading")
    subscriber_a = users("subscriber-a")
    decided = [n for n in subscriber_a.inbox(per_page=50)["notifications"]
               if n["kind"] == "version_decided" and name in n["subject"]]
    assert len(decided) == 1 and decided[0]["subject"].endswith("was rejected")
    assert decided[0]["body"] == "no README worth reading"
    assert decided[0]["link"] == f"publish/{name}"


def test_a_mention_in_the_browser_reaches_the_inbox(page_as, users, hub_url):
    from browser import assert_accessible, fits_narrow_window, screenshot

    tag = secrets.token_hex(3)
    users("subscriber-c").mark_read()  # a known starting point: nothing unread
    page = page_as("publisher-b")
    page.goto(f"{hub_url}{SERVICE}forum")
    assert_accessible(page)
    with page.expect_navigation():
        page.click("#new-thread")
    page.select_option("#f-category", "models")
    page.fill("#f-title", "x")  # too short: the error comes back next to the field
    page.fill("#f-body", f"{SCRIPT_POST}\n\nWhat do you think, @subscriber-c? ({tag})")
    with page.expect_navigation():
        page.click("text=Post the thread")
    assert page.locator("#error-title").is_visible()
    assert page.input_value("#f-body").startswith("Hello <script>")  # nothing typed is lost
    assert_accessible(page)
    page.fill("#f-title", f"Load forecasting with weather {tag}")
    with page.expect_navigation():
        page.click("text=Post the thread")
    assert re.search(r"/forum/\d+$", page.url)
    body = page.locator(".post-body").first
    assert "world" in body.inner_text() and body.locator("strong").count() == 1
    assert body.locator("script").count() == 0
    assert page.evaluate("() => window.__forum_xss === undefined")
    assert_accessible(page)
    screenshot(page, "forum-thread")
    thread_url = page.url

    reader = page_as("subscriber-c")
    badge = reader.locator("#nav-inbox .unread-count")
    assert int(badge.inner_text()) >= 1
    with reader.expect_navigation():
        reader.click("#nav-inbox")
    assert_accessible(reader)
    screenshot(reader, "inbox")
    mention = reader.locator("#notifications .open-form button", has_text=tag)
    assert mention.count() == 1
    with reader.expect_navigation():
        mention.click()
    assert reader.url.split("#")[0] == thread_url and "#post-" in reader.url
    # opened is read: it is no longer among the unread ones
    notes = users("subscriber-c").inbox(unread=True, per_page=100)["notifications"]
    assert not [n for n in notes if tag in n["subject"]]
    reader.goto(f"{hub_url}{SERVICE}forum?category=models&q={tag}")
    assert reader.locator("#forum-threads tbody tr").count() == 1
    screenshot(reader, "forum")

    operator = page_as("operator")
    operator.goto(thread_url)
    first = operator.locator(".post").first
    first.locator("input[name=reason]").fill("off topic for the models category")
    with operator.expect_navigation():
        first.get_by_role("button", name="Hide", exact=True).click()
    assert operator.locator("#forum-notice").is_visible()
    assert_accessible(operator)
    reader.goto(thread_url)
    assert "Hidden by an operator: off topic for the models category" in reader.locator(
        ".post").first.inner_text()
    assert reader.locator(".post-body").count() == 0
    # a product's page leads to its threads
    reader.goto(f"{hub_url}{SERVICE}products/electricity-theft-detection")
    with reader.expect_navigation():
        reader.click("#forum-link a")
    assert "product=electricity-theft-detection" in reader.url
    assert "electricity-theft-detection" in reader.locator("h1").inner_text()
    narrow = page_as("subscriber-c", narrow=True)
    for path in ("forum", "inbox", thread_url.split(SERVICE, 1)[1]):
        narrow.goto(f"{hub_url}{SERVICE}{path}")
        assert fits_narrow_window(narrow), f"{path} scrolls sideways in a narrow window"
