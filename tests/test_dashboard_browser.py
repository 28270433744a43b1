"""The dashboard in a real browser (issue 19, "In a real browser"): Debian's Chromium driven by Playwright
against the dashboard process as the Procfile runs it (fixtures ``browser`` and ``dashboard_server``).

Skipped, saying why, where Chromium is not installed; required in CI (WAFLOW_TEST_REQUIRE_SERVICES=1).
"""
from __future__ import annotations

import re
import uuid

import pytest

from dashboard_support import PASSWORD, make_user, seed_conversation

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def context(browser):
    """One browser profile per test (its own cookies); set ``locale`` with ``context.new(locale=...)``."""
    opened = []

    class Contexts:
        def new(self, locale: str = "id-ID", **options):
            made = browser.new_context(locale=locale, **options)
            made.set_default_timeout(10_000)
            opened.append(made)
            return made

    yield Contexts()
    for made in opened:
        made.close()


def _page(context, locale: str = "id-ID", **options):
    """A page that records what the browser complains about (script errors, refused CSP, failed requests)."""
    page = context.new(locale=locale, **options).new_page()
    page.complaints = []
    page.on("console", lambda m: page.complaints.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.complaints.append(str(e)))
    return page


def _user(server, locale: str = "id", role: str = "lawyer", name: str = "Ratna Sari"):
    return make_user(server.database_url, f"{uuid.uuid4().hex[:10]}@firma.id", role=role, locale=locale, name=name)


def _sign_in(page, server, email: str, password: str = PASSWORD, button: str = "Masuk") -> None:
    page.goto(f"{server.url}/login")
    page.get_by_label("Email").fill(email)
    page.locator("#password").fill(password)
    page.get_by_role("button", name=button).click()


def test_a_lawyer_signs_in_in_indonesian_and_sees_the_inbox(context, dashboard_server):
    seed_conversation(dashboard_server.database_url, name="Budi Santoso", wa_id="6281234500001",
                      bodies=["Selamat siang, saya mau tanya soal kontrak sewa ruko."])
    person = _user(dashboard_server)
    page = _page(context)
    page.goto(f"{dashboard_server.url}/dashboard/")
    assert re.search(r"/login\?next=/dashboard/$", page.url)
    assert page.locator("html").get_attribute("lang") == "id"
    assert page.get_by_role("heading", name="Masuk").is_visible()
    _sign_in(page, dashboard_server, person.email)
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    assert page.get_by_role("heading", name="Kotak masuk").is_visible()
    assert page.get_by_text("Budi Santoso").first.is_visible()
    assert page.get_by_text("Ratna Sari").is_visible()
    assert page.evaluate("window.htmx && window.htmx.version") == "2.0.11"
    assert page.complaints == []


def test_an_english_speaking_browser_and_user_get_english(context, dashboard_server):
    person = _user(dashboard_server, locale="en", name="Sarah Lee")
    page = _page(context, locale="en-US")
    page.goto(f"{dashboard_server.url}/login")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.get_by_label("Password").is_visible()
    _sign_in(page, dashboard_server, person.email, button="Sign in")
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    assert page.get_by_role("heading", name="Inbox").is_visible()
    assert page.get_by_role("button", name="Log out").is_visible()
    assert page.complaints == []


def test_the_language_links_and_the_header_switch_change_the_language(context, dashboard_server):
    person = _user(dashboard_server, locale="id")
    page = _page(context)
    page.goto(f"{dashboard_server.url}/login")
    page.get_by_role("link", name="English").click()
    assert page.get_by_role("heading", name="Sign in").is_visible()
    _sign_in(page, dashboard_server, person.email, button="Sign in")
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    assert page.get_by_role("heading", name="Kotak masuk").is_visible()  # the user's own language now
    page.get_by_role("button", name="EN").click()
    assert page.get_by_role("heading", name="Inbox").is_visible()


def test_logging_out_ends_the_session(context, dashboard_server):
    person = _user(dashboard_server)
    page = _page(context)
    _sign_in(page, dashboard_server, person.email)
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    page.get_by_role("button", name="Keluar").click()
    page.wait_for_url(f"{dashboard_server.url}/login")
    page.goto(f"{dashboard_server.url}/dashboard/")
    assert "/login" in page.url


def test_a_wrong_password_shows_the_generic_message(context, dashboard_server):
    person = _user(dashboard_server)
    page = _page(context)
    _sign_in(page, dashboard_server, person.email, "not my password at all")
    alert = page.get_by_role("alert")
    assert "Email atau kata sandi tidak cocok" in alert.inner_text()
    assert page.url.endswith("/login")
    assert page.get_by_label("Email").input_value() == person.email  # kept, so only the password is retyped


def test_on_a_phone_the_login_and_the_inbox_fit_the_screen_and_work(context, dashboard_server):
    seed_conversation(dashboard_server.database_url, name="Siti Rahmawati binti Abdullah Panjang Namanya",
                      wa_id="6281234500002", bodies=["Pak, berkas perceraian saya sudah sampai mana ya? " * 4])
    person = _user(dashboard_server, name="Ratna Sari")
    page = _page(context, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page.goto(f"{dashboard_server.url}/login")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for field in (page.get_by_label("Email"), page.locator("#password"), page.get_by_role("button", name="Masuk")):
        box = field.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["height"] >= 40
    _sign_in(page, dashboard_server, person.email)
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.get_by_role("heading", name="Kotak masuk").is_visible()
    assert page.get_by_text("Siti Rahmawati").first.is_visible()
    logout = page.get_by_role("button", name="Keluar")
    assert logout.is_visible() and logout.bounding_box()["x"] + logout.bounding_box()["width"] <= PHONE["width"]
    assert page.complaints == []


def test_question_mark_opens_the_keyboard_help_and_escape_closes_it(context, dashboard_server):
    person = _user(dashboard_server)
    page = _page(context)
    _sign_in(page, dashboard_server, person.email)
    page.wait_for_url(f"{dashboard_server.url}/dashboard/")
    help_panel = page.locator("#keyboard-help")
    assert not help_panel.is_visible()
    page.keyboard.press("?")
    assert help_panel.is_visible()
    for key in ("j", "k", "Enter", "a", "e", "r"):
        assert help_panel.locator("kbd", has_text=re.compile(f"^{key}$")).count() == 1
    page.keyboard.press("Escape")
    assert not help_panel.is_visible()


def test_the_browser_tests_skip_without_chromium_and_fail_in_ci(monkeypatch):
    import dashboard_support

    monkeypatch.setattr(dashboard_support, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("WAFLOW_TEST_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium is not installed"):
        dashboard_support.chromium_or_skip()
    monkeypatch.setenv("WAFLOW_TEST_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="WAFLOW_TEST_REQUIRE_SERVICES=1 but /nonexistent/chromium"):
        dashboard_support.chromium_or_skip()
