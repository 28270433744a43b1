"""The audit page and the weekly report in a real browser (issue 19, items 6 and 7): Debian's Chromium driven by
Playwright against the dashboard process as the Procfile runs it, on the known week of ``audit_support``; an
admin in English on a desktop, a lawyer in Indonesian on a phone.

Skipped, saying why, where Chromium is not installed; required in CI (WAFLOW_TEST_REQUIRE_SERVICES=1).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from audit_support import RATNA, SARI, make_week10
from dashboard_support import PASSWORD, make_user

PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def seeded(dashboard_server):
    """The known week in the server's database, decided by Ratna and Sari; an admin to see it all."""
    db = dashboard_server.database_url
    make_user(db, RATNA, name="Ratna Sari", role="lawyer", locale="id")
    make_user(db, SARI, name="Sari Dewi", role="lawyer", locale="id")
    admin = make_user(db, "budi.audit@firma.id", name="Budi Santoso", role="admin", locale="en")
    return {"server": dashboard_server, "week": make_week10(db), "admin": admin}


@pytest.fixture
def open_page(browser):
    opened = []

    def new(locale: str = "en-US", **options):
        context = browser.new_context(locale=locale, accept_downloads=True, **options)
        context.set_default_timeout(10_000)
        opened.append(context)
        page = context.new_page()
        page.complaints = []
        page.on("console", lambda m: page.complaints.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.complaints.append(str(e)))
        return page

    yield new
    for context in opened:
        context.close()


def _sign_in(page, server, email: str, button: str) -> None:
    page.goto(f"{server.url}/login")
    page.locator("#email").fill(email)
    page.locator("#password").fill(PASSWORD)
    page.get_by_role("button", name=button).click()
    page.wait_for_url(f"{server.url}/dashboard/")


def _figures(page) -> dict[str, str]:
    rows = page.locator("table.figures tr")
    return {rows.nth(i).locator("th").inner_text().strip(): rows.nth(i).locator("td").first.inner_text().strip()
            for i in range(rows.count()) if rows.nth(i).locator("td").count()}


def test_an_admin_reads_every_decision_filters_downloads_the_csv_and_opens_the_report(seeded, open_page):
    server = seeded["server"]
    page = open_page()
    _sign_in(page, server, seeded["admin"].email, "Sign in")
    page.get_by_role("link", name="Audit").click()
    page.wait_for_url(f"{server.url}/dashboard/audit")
    assert page.get_by_role("heading", name="Audit", exact=True).is_visible()
    assert page.locator("li.decision").count() == 13
    assert page.locator("li.decision ins").first.is_visible() and page.locator("li.decision del").first.is_visible()

    page.get_by_label("Decision", exact=True).select_option("reject")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"action=reject"))
    assert page.locator("li.decision").count() == 2
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    body = Path(download.value.path()).read_bytes()
    assert body.startswith("\ufeff".encode()) and body.decode("utf-8-sig").count("\r\n") == 3  # headings + 2

    page.get_by_role("link", name="Weekly report").click()
    page.locator("#week").fill("2026-W10")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"week=2026-W10"))
    figures = _figures(page)
    assert figures["All decisions"] == "11" and figures["Approved as drafted"] == "4"
    assert page.get_by_text("25 min 0 s").is_visible() and page.get_by_text("2 h 0 min").is_visible()
    page.get_by_role("link", name="Previous week").click()
    page.wait_for_url(re.compile(r"week=2026-W09"))
    assert _figures(page)["All decisions"] == "1"  # #11: Sunday 1 March, 23:59:59 in Jakarta
    assert page.complaints == []


def test_a_lawyer_reads_their_own_audit_and_report_in_indonesian_on_a_phone(seeded, open_page):
    server = seeded["server"]
    page = open_page("id-ID", viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    _sign_in(page, server, RATNA, "Masuk")
    page.goto(f"{server.url}/dashboard/audit")
    assert page.get_by_role("heading", name="Audit", exact=True).is_visible()
    assert page.locator("li.decision").count() == 12  # not Sari's
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    edited = page.locator(f"#decision-{seeded['week'].decisions[4]}")
    sides = edited.locator(".diff section")
    draft, sent = sides.nth(0).bounding_box(), sides.nth(1).bounding_box()
    assert sent["y"] >= draft["y"] + draft["height"] - 1 and sent["width"] > PHONE["width"] * 0.8  # one above the other
    for control in (page.get_by_label("Dari"), page.get_by_label("Keputusan", exact=True),
                    page.get_by_role("button", name="Tampilkan")):
        box = control.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["height"] >= 40

    page.get_by_role("link", name="Laporan mingguan").click()
    page.locator("#week").fill("2026-W10")
    page.get_by_role("button", name="Tampilkan").click()
    page.wait_for_url(re.compile(r"week=2026-W10"))
    assert page.get_by_role("heading", name="Laporan mingguan").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    figures = _figures(page)
    assert figures["Semua keputusan"] == "10" and figures["Ditulis sendiri"] == "2"
    assert page.get_by_text("20 mnt 0 dtk").is_visible() and page.get_by_text("2 jam 0 mnt").is_visible()
    assert page.complaints == []
