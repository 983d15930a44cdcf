"""The pages' common ground in a real browser: login through the hub, the navigation, the
accessibility check on the shelf, a narrow window, and an expired login returning the user
to the page they were on."""

from __future__ import annotations

from browser import assert_accessible, fits_narrow_window, screenshot

SERVICE = "/services/marketplace/"


def test_shelf_after_login_is_accessible_and_fits_a_narrow_window(page_as):
    page = page_as("subscriber-b")
    assert page.locator("#me-name").inner_text() == "subscriber-b"
    nav = page.get_by_role("navigation", name="Marketplace")
    assert nav.get_by_role("link", name="Shelf").get_attribute("aria-current") == "page"
    # operators' entries are not offered to a subscriber
    assert nav.get_by_role("link", name="Review").count() == 0
    assert_accessible(page)
    screenshot(page, "shelf")
    narrow = page_as("subscriber-b", narrow=True)
    assert fits_narrow_window(narrow), "the shelf scrolls sideways in a 390 px window"


def test_expired_login_returns_to_the_page_after_logging_in_again(page_as, hub_url, logins):
    page = page_as("subscriber-b")
    target = f"{hub_url}{SERVICE}m2d"
    page.goto(target)
    page.context.clear_cookies()  # the login expired
    page.goto(target)
    assert "/hub/login" in page.url
    page.fill("#username_input", "subscriber-b")
    page.fill("#password_input", logins["subscriber-b"])
    page.click("#login_submit")
    page.wait_for_url(target)
    assert page.url == target
