"""The dashboard in Indonesian and English (issue 19, item 7): every string translated, the language chosen
per user and, before login, from the browser; times in the firm's time zone."""
from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from dashboard_support import csrf_token, login, make_app, seed_conversation
from support import ROOT
from waflow import users
from waflow.dashboard import i18n
from waflow.db import transaction

DASHBOARD = ROOT / "waflow" / "dashboard"


def extracted() -> set[str]:
    """Every string of the dashboard's code and templates, as ``pybabel extract -F babel.cfg -k _l`` finds it."""
    with open(ROOT / "babel.cfg") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    keywords = {**DEFAULT_KEYWORDS, "_l": None}
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(DASHBOARD, method_map, options_map,
                                                                       keywords=keywords):
        found.add(message if isinstance(message, str) else message[0])
    return found


def catalog(locale: str) -> Catalog:
    with open(i18n.TRANSLATIONS / locale / "LC_MESSAGES" / "messages.po", "rb") as po:
        return read_po(po)


def untranslated(messages: set[str], translations: Catalog) -> list[str]:
    """The messages ``translations`` lacks, leaves empty, or marks fuzzy."""
    problems = []
    for message in sorted(messages):
        entry = translations.get(message)
        if entry is None or not entry.string or (isinstance(entry.string, tuple) and not all(entry.string)):
            problems.append(f"no translation: {message!r}")
        elif entry.fuzzy:
            problems.append(f"fuzzy: {message!r}")
    return problems


def test_every_string_of_the_code_and_templates_has_an_indonesian_translation():
    messages = extracted()
    assert {"Sign in", "Password", "Log out", "Inbox", "Approve the draft"} <= messages  # extraction sees both
    assert untranslated(messages, catalog("id")) == []


def test_the_english_catalog_lists_every_string_too():
    english = catalog("en")
    assert sorted(m for m in extracted() if m not in english) == []


def test_the_check_reports_a_missing_an_empty_and_a_fuzzy_translation():
    partial = Catalog(locale="id")
    partial.add("Sign in", "Masuk")
    partial.add("Password", "")
    partial.add("Log out", "Keluar", flags=["fuzzy"])
    assert untranslated({"Sign in", "Password", "Log out", "Inbox"}, partial) == [
        "no translation: 'Inbox'", "fuzzy: 'Log out'", "no translation: 'Password'"]


def test_a_catalog_changed_since_it_was_compiled_is_compiled_again(tmp_path):
    copy = tmp_path / "translations"
    shutil.copytree(i18n.TRANSLATIONS, copy, ignore=shutil.ignore_patterns("*.mo"))
    assert sorted(p.parent.parent.name for p in i18n.compile_catalogs(copy)) == ["en", "id"]
    assert i18n.compile_catalogs(copy) == []  # up to date
    po = copy / "id" / "LC_MESSAGES" / "messages.po"
    po.write_text(po.read_text().replace('msgstr "Masuk"', 'msgstr "Masuk ke dasbor"'))
    assert [p.parent.parent.name for p in i18n.compile_catalogs(copy)] == ["id"]
    from babel.support import Translations

    assert Translations.load(str(copy), ["id"]).gettext("Sign in") == "Masuk ke dasbor"


# --- which language a page speaks --------------------------------------------------------------------------------


def test_before_login_the_page_speaks_indonesian_unless_the_browser_asks_for_english(dashboard_client):
    page = dashboard_client.get("/login").get_data(as_text=True)
    assert '<html lang="id">' in page and "Kata sandi" in page
    english = dashboard_client.get("/login", headers={"Accept-Language": "en-US,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in english and "Password" in english
    french = dashboard_client.get("/login", headers={"Accept-Language": "fr-FR,fr;q=0.9"}).get_data(as_text=True)
    assert '<html lang="id">' in french


def test_the_login_pages_language_links_keep_their_choice_until_login(dashboard_client, admin):
    assert "Password" in dashboard_client.get("/login?lang=en").get_data(as_text=True)
    assert "Password" in dashboard_client.get("/login").get_data(as_text=True)
    login(dashboard_client, admin.email)
    with dashboard_client.session_transaction() as session:
        assert "locale" not in session  # the login started a new session; the user's own locale speaks now


def test_a_signed_in_user_gets_their_own_language_whatever_the_browser_says(lawyer_client, admin_client):
    indonesian = lawyer_client.get("/dashboard/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="id">' in indonesian and "Kotak masuk" in indonesian and "Keluar" in indonesian
    english = admin_client.get("/dashboard/", headers={"Accept-Language": "id"}).get_data(as_text=True)
    assert '<html lang="en">' in english and "Inbox" in english and "Log out" in english


def test_the_language_switch_changes_the_users_language_for_good(lawyer_client, lawyer, db_url):
    token = csrf_token(lawyer_client, "/dashboard/")
    answer = lawyer_client.post("/dashboard/language", data={"locale": "en", "next": "/dashboard/?x=1",
                                                             "csrf_token": token})
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/?x=1"
    assert "Log out" in lawyer_client.get("/dashboard/").get_data(as_text=True)
    with transaction(db_url) as conn:
        assert users.get(conn, lawyer.email).locale == "en"
    refused = lawyer_client.post("/dashboard/language", data={"locale": "fr", "next": "https://evil.example/",
                                                              "csrf_token": token})
    assert refused.headers["Location"] == "/dashboard/"
    with transaction(db_url) as conn:
        assert users.get(conn, lawyer.email).locale == "en"


# A year before this one: the inbox shows the year of a message from another year only.
@pytest.mark.parametrize("zone, hour", [(None, "17:30"), ("Asia/Makassar", "18:30")])
def test_times_are_shown_in_the_firms_time_zone(db_url, var_dir, lawyer, zone, hour):
    year = datetime.now(timezone.utc).year - 1
    shown = f"2 Mar {year}, {hour}"
    app = make_app(db_url, var_dir, **({"WAFLOW_TIMEZONE": zone} if zone else {}))
    seed_conversation(db_url, name="Andi", wa_id="6281234567890", bodies=["Halo"],
                      last_at=datetime(year, 3, 2, 10, 30, tzinfo=timezone.utc))
    client = app.test_client()
    login(client, lawyer.email)
    assert shown in client.get("/dashboard/").get_data(as_text=True)
