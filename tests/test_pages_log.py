"""The log pages in a real browser: the checkpoints and the caller's own entries, and an entry's
inclusion proof checked by the browser itself (WebCrypto: SHA-256, Ed25519) against the signed
checkpoint; a tampered proof, or tampered details, make the browser's verdict fail."""

from __future__ import annotations

import base64

from browser import SERVICE, assert_accessible, fits_narrow_window, screenshot

ALL_CHECKS = {"key-id", "signature", "checkpoint", "leaf", "inclusion", "details"}


def _checks(page) -> dict[str, str]:
    return {li.get_attribute("data-check"): li.get_attribute("data-status")
            for li in page.locator("#checks li").all()}


def _verify(page, verdict: str) -> dict[str, str]:
    page.click("#verify-button")
    page.wait_for_selector(f'#verdict[data-verdict="{verdict}"]')
    return _checks(page)


def _own_entry(page, hub_url: str) -> int:
    """The oldest entry on the caller's list (long in a signed checkpoint, from the demo's
    history): the last row of the last page, since earlier tests add newer entries."""
    page.goto(f"{hub_url}{SERVICE}log")
    for _ in range(100):  # pages of the caller's entries; the demo's history fills a few
        older = page.get_by_role("link", name="Older entries")
        if older.count() == 0:
            break
        older.click()
        page.wait_for_load_state()
    else:
        raise AssertionError("the caller's entries did not end within 100 pages")
    link = page.locator("#own-entries tbody a").last
    return int(link.inner_text().lstrip("#"))


def test_the_log_page_lists_checkpoints_and_the_callers_own_entries(page_as, hub_url):
    page = page_as("subscriber-a")
    page.goto(f"{hub_url}{SERVICE}log")
    assert int(page.locator("#latest-size").inner_text()) > 0
    rows = page.locator("#own-entries tbody tr")
    assert rows.count() >= 1
    readers = page.locator("#own-entries tbody td:nth-child(4)").all_inner_texts()
    assert set(readers) <= {"actor", "party"}  # the caller's own, or its unit's
    assert_accessible(page)
    screenshot(page, "log")

    # a bad entry number: the error next to the field, the value kept
    page.fill("#f-index", "abc")
    page.click("form.filters button[type=submit]")
    error = page.locator("#error-index")
    assert "not an entry number" in error.inner_text()
    assert page.locator("#f-index").get_attribute("aria-invalid") == "true"
    assert page.locator("#f-index").input_value() == "abc"
    assert_accessible(page)


def test_an_entry_is_verified_in_the_browser_and_tampering_fails(page_as, hub_url):
    page = page_as("subscriber-a")
    index = _own_entry(page, hub_url)
    page.goto(f"{hub_url}{SERVICE}log/{index}")
    checks = _verify(page, "passed")
    # every check ran here, the Ed25519 signature and the party's details included
    assert checks == dict.fromkeys(ALL_CHECKS, "passed")
    assert "Verified in this browser" in page.locator("#verdict").inner_text()
    assert_accessible(page)
    screenshot(page, "log-entry-verified")

    def flip_proof(route):
        response = route.fetch()
        body = response.json()
        first = bytearray(base64.b64decode(body["proof"][0]))
        first[0] ^= 1
        body["proof"][0] = base64.b64encode(bytes(first)).decode()
        route.fulfill(response=response, json=body)

    page.route("**/api/log/proof/inclusion*", flip_proof)
    checks = _verify(page, "failed")
    assert checks["inclusion"] == "failed" and checks["signature"] == "passed"
    assert "FAILED" in page.locator("#verdict").inner_text()
    screenshot(page, "log-entry-tampered")
    page.unroute("**/api/log/proof/inclusion*")

    def change_details(route):
        response = route.fetch()
        body = response.json()
        # a field added to the details (whatever the entry's type: which entry is the oldest
        # one listed depends on what ran before in the session)
        tampered = body["details"].replace("{", '{"tampered":1,', 1)
        assert tampered != body["details"]
        body["details"] = tampered
        route.fulfill(response=response, json=body)

    page.route("**/api/log/entries/*", change_details)
    checks = _verify(page, "failed")
    assert checks["details"] == "failed" and checks["inclusion"] == "passed"
    page.unroute("**/api/log/entries/*")
    assert _verify(page, "passed") == dict.fromkeys(ALL_CHECKS, "passed")


def test_a_stranger_checks_the_inclusion_without_reading_the_details(page_as, hub_url):
    owner = page_as("subscriber-a")
    index = _own_entry(owner, hub_url)
    page = page_as("subscriber-b", narrow=True)
    page.goto(f"{hub_url}{SERVICE}log/{index}")
    assert "public" in page.locator(".log-facts").inner_text()
    assert page.locator("table.statement").count() == 0  # no details for another unit
    checks = _verify(page, "passed")
    assert checks["details"] == "skipped" and checks["inclusion"] == "passed"
    assert checks["signature"] == "passed"
    assert fits_narrow_window(page)
    assert_accessible(page)
