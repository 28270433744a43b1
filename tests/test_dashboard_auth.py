"""Signing in to the dashboard, and every way around it that must fail (issue 19, item 1 and "Security").

Each test runs on SQLite and, when WAFLOW_TEST_DATABASE_URL is set, on PostgreSQL (fixture ``db_url``).
"""
from __future__ import annotations

import time

import pytest
import redis

from dashboard_support import PASSWORD, csrf_token, login, make_app, make_user, production_settings
from support import REDIS_URL
from waflow import users
from waflow.dashboard import security
from waflow.db import transaction

# The generic message, in Indonesian: the language of a browser that asks for none, and of the lawyer fixture.
GENERIC = "Email atau kata sandi tidak cocok"


def test_a_lawyer_signs_in_and_lands_on_the_inbox(dashboard_client, lawyer):
    answer = login(dashboard_client, "ratna@firma.id")
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/"
    page = dashboard_client.get("/dashboard/")
    assert page.status_code == 200
    assert "Ratna" in page.get_data(as_text=True)


def test_the_email_is_matched_whatever_its_case_and_surrounding_spaces(dashboard_client, lawyer):
    assert login(dashboard_client, "  Ratna@Firma.ID ").status_code == 302


@pytest.mark.parametrize("email, password", [
    ("ratna@firma.id", "not the password at all"),
    ("nobody@firma.id", PASSWORD),
    ("not an address", PASSWORD),
    ("", ""),
])
def test_every_failed_login_gets_the_same_generic_message(dashboard_client, lawyer, email, password):
    answer = login(dashboard_client, email, password)
    assert answer.status_code == security.LOGIN_FAILED_STATUS
    text = answer.get_data(as_text=True)
    assert GENERIC in text
    assert dashboard_client.get("/dashboard/").status_code == 302  # still not signed in


def test_a_deactivated_user_with_the_right_password_gets_the_generic_message(dashboard_client, db_url, lawyer):
    with transaction(db_url) as conn:
        users.deactivate(conn, lawyer.email)
    answer = login(dashboard_client, lawyer.email)
    assert answer.status_code == security.LOGIN_FAILED_STATUS and GENERIC in answer.get_data(as_text=True)


def test_logging_out_takes_a_post_with_the_csrf_token_and_ends_the_session(lawyer_client):
    assert lawyer_client.get("/logout").status_code == 405
    assert lawyer_client.post("/logout").status_code == 400  # no token
    assert lawyer_client.get("/dashboard/").status_code == 200
    token = csrf_token(lawyer_client, "/dashboard/")
    answer = lawyer_client.post("/logout", data={"csrf_token": token})
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"
    assert lawyer_client.get("/dashboard/").headers["Location"].startswith("/login")


def test_the_session_cookie_is_httponly_samesite_lax_and_not_secure_in_development(dashboard_client, lawyer):
    answer = login(dashboard_client, lawyer.email)
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("waflow_dashboard=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_the_session_cookie_is_secure_in_production(db_url, var_dir):
    app = make_app(db_url, var_dir, settings=production_settings(db_url, var_dir))
    make_user(db_url, "ratna@firma.id")
    answer = login(app.test_client(), "ratna@firma.id", base_url="https://dashboard.firma.id",
                   headers={"Referer": "https://dashboard.firma.id/login"})
    assert answer.status_code == 302
    assert "; Secure" in answer.headers["Set-Cookie"]


# --- session fixation and stale sessions ---------------------------------------------------------------------


def test_signing_in_starts_a_new_session_so_a_planted_one_learns_nothing(dashboard_app, lawyer):
    victim = dashboard_app.test_client()
    with victim.session_transaction() as planted:  # what an attacker could have put in the victim's browser
        planted["planted"] = "by an attacker"
    token_before = csrf_token(victim)
    login(victim, lawyer.email)
    with victim.session_transaction() as session:
        assert "planted" not in session
        assert session["_user_id"] == f"{lawyer.id}:0"
    # The token the attacker saw before the login is not the session's any more.
    assert victim.post("/logout", data={"csrf_token": token_before}).status_code == 400
    assert victim.get("/dashboard/").status_code == 200


def test_a_session_cookie_from_before_the_login_is_not_signed_in(dashboard_app, lawyer):
    browser = dashboard_app.test_client()
    browser.get("/login")
    before = browser.get_cookie("waflow_dashboard").value
    login(browser, lawyer.email)
    assert browser.get_cookie("waflow_dashboard").value != before
    replay = dashboard_app.test_client()
    replay.set_cookie("waflow_dashboard", before)
    assert replay.get("/dashboard/").status_code == 302


@pytest.mark.parametrize("change", ["deactivate", "set_password"])
def test_deactivation_or_a_password_change_ends_every_open_session(dashboard_app, db_url, lawyer, change):
    phone, desktop = dashboard_app.test_client(), dashboard_app.test_client()
    login(phone, lawyer.email)
    login(desktop, lawyer.email)
    assert phone.get("/dashboard/").status_code == 200 and desktop.get("/dashboard/").status_code == 200
    with transaction(db_url) as conn:
        if change == "deactivate":
            users.deactivate(conn, lawyer.email)
        else:
            users.set_password(conn, lawyer.email, "a brand new passphrase")
    for client in (phone, desktop):
        answer = client.get("/dashboard/")
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    if change == "set_password":
        assert login(phone, lawyer.email, "a brand new passphrase").status_code == 302
        assert phone.get("/dashboard/").status_code == 200


def test_a_forged_session_id_is_not_signed_in(dashboard_app, lawyer):
    client = dashboard_app.test_client()
    for forged in (f"{lawyer.id}", f"{lawyer.id}:1", f"{lawyer.id}:0:0", "x:0", f"{lawyer.id + 1}:0"):
        with client.session_transaction() as session:
            session["_user_id"] = forged
        assert client.get("/dashboard/").status_code == 302, forged


# --- next= ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "https://evil.example/", "http://evil.example/dashboard/", "//evil.example/", "///evil.example/",
    "/\\evil.example/", "\\\\evil.example/", "/\\/evil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)",
    " /dashboard/", "/dashboard/\r\nSet-Cookie: x=1", "data:text/html,<script>alert(1)</script>",
    "/login", "/nowhere-we-serve", "dashboard/", "/%2F%2Fevil.example", "/dashboard/\u2028",
])
def test_next_never_leads_off_the_dashboard(dashboard_client, lawyer, target):
    answer = login(dashboard_client, lawyer.email, next=target)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/dashboard/", target


def test_next_leads_to_a_page_of_ours_with_its_query(dashboard_client, lawyer, admin):
    answer = login(dashboard_client, admin.email, next="/dashboard/users?sort=name")
    assert answer.headers["Location"] == "/dashboard/users?sort=name"


def test_an_anonymous_visitor_is_sent_to_login_and_back_where_they_were(dashboard_client, admin):
    answer = dashboard_client.get("/dashboard/users?sort=name")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login?next=/dashboard/users?sort%3Dname"
    back = login(dashboard_client, admin.email, next="/dashboard/users?sort=name")
    assert back.headers["Location"] == "/dashboard/users?sort=name"


def test_a_signed_in_user_who_opens_login_goes_on_to_next_or_the_inbox(lawyer_client):
    assert lawyer_client.get("/login").headers["Location"] == "/dashboard/"
    assert lawyer_client.get("/login?next=//evil.example").headers["Location"] == "/dashboard/"


# --- CSRF ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "forged-token", "the other session's"])
def test_a_post_without_this_sessions_csrf_token_is_refused(dashboard_app, lawyer, admin, token):
    client = dashboard_app.test_client()
    login(client, lawyer.email)
    if token == "the other session's":
        other = dashboard_app.test_client()
        login(other, admin.email)
        token = csrf_token(other, "/dashboard/")
    data = {"locale": "en", "next": "/dashboard/"}
    if token is not None:
        data["csrf_token"] = token
    answer = client.post("/dashboard/language", data=data)
    assert answer.status_code == 400
    assert "Formulir ini sudah kedaluwarsa" in answer.get_data(as_text=True)
    with transaction(dashboard_app.config["WAFLOW_SETTINGS"].database_url) as conn:
        assert users.get(conn, lawyer.email).locale == "id"  # nothing changed


def test_the_login_form_itself_needs_its_csrf_token(dashboard_client, lawyer):
    answer = dashboard_client.post("/login", data={"email": lawyer.email, "password": PASSWORD})
    assert answer.status_code == 400
    assert dashboard_client.get("/dashboard/").status_code == 302


def test_an_htmx_post_carries_the_token_in_its_header(lawyer_client):
    token = csrf_token(lawyer_client, "/dashboard/")
    refused = lawyer_client.post("/dashboard/language", data={"locale": "en"}, headers={"HX-Request": "true"})
    assert refused.status_code == 400
    accepted = lawyer_client.post("/dashboard/language", data={"locale": "en"},
                                  headers={"HX-Request": "true", "X-CSRFToken": token})
    assert accepted.status_code == 302


def test_the_csrf_token_of_a_page_left_open_for_a_working_day_still_posts(lawyer_client, monkeypatch):
    import itsdangerous.timed

    token = csrf_token(lawyer_client, "/dashboard/")
    started = time.time()
    # The page polls while it is open (htmx, every 2 s): each request renews the session, not the page's token.
    for hours in (6, 11, 15):
        monkeypatch.setattr(itsdangerous.timed.time, "time", lambda h=hours: started + h * 3600)
        assert lawyer_client.get("/dashboard/").status_code == 200
    answer = lawyer_client.post("/dashboard/language", data={"locale": "en", "csrf_token": token})
    assert answer.status_code == 302


def test_a_session_idle_for_longer_than_twelve_hours_is_over(lawyer_client, monkeypatch):
    import itsdangerous.timed

    started = time.time()
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: started + 12 * 3600 + 60)
    assert lawyer_client.get("/dashboard/").status_code == 302


# --- throttling ------------------------------------------------------------------------------------------------------


def _fail(client, email: str, **environ):
    return login(client, email, "a wrong password!", **environ)


def test_failed_logins_are_throttled_per_account_even_from_many_addresses(dashboard_app, lawyer):
    client = dashboard_app.test_client()
    for n in range(5):
        answer = _fail(client, lawyer.email, environ_base={"REMOTE_ADDR": f"10.0.0.{n}"})
        assert answer.status_code == security.LOGIN_FAILED_STATUS
    throttled = login(client, lawyer.email, environ_base={"REMOTE_ADDR": "10.0.0.99"})  # even the right password
    assert throttled.status_code == 429
    assert GENERIC in throttled.get_data(as_text=True)
    assert client.get("/dashboard/").status_code == 302
    # Another account from the same addresses is not affected.
    make_user(dashboard_app.config["WAFLOW_SETTINGS"].database_url, "sari@firma.id")
    assert login(client, "sari@firma.id", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 302


def test_failed_logins_are_throttled_per_address_across_accounts(dashboard_app, lawyer):
    client = dashboard_app.test_client()
    for n in range(20):
        assert _fail(client, f"guess{n}@firma.id").status_code == security.LOGIN_FAILED_STATUS
    assert login(client, lawyer.email).status_code == 429
    other_address = dashboard_app.test_client()
    assert login(other_address, lawyer.email, environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 302


def test_successful_logins_are_not_counted(dashboard_app, lawyer):
    client = dashboard_app.test_client()
    for _ in range(8):
        assert login(client, lawyer.email).status_code == 302
        client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard/")})


def test_the_throttle_is_shared_through_redis_when_redis_url_is_set(db_url, var_dir, lawyer):
    if not REDIS_URL:
        pytest.skip("WAFLOW_TEST_REDIS_URL is not set: no Redis to test against (see README, 'Test it')")
    redis.Redis.from_url(REDIS_URL).flushdb()
    first, second = (make_app(db_url, var_dir, REDIS_URL=REDIS_URL) for _ in range(2))  # two processes' worth
    assert first.extensions["waflow.limiter"]._storage.__class__.__name__.startswith("Redis")
    for n in range(3):
        _fail(first.test_client(), lawyer.email)
    for n in range(2):
        _fail(second.test_client(), lawyer.email)
    assert login(first.test_client(), lawyer.email).status_code == 429
    assert login(second.test_client(), lawyer.email).status_code == 429
    keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).keys("*")]
    assert keys and all(lawyer.email not in k for k in keys)  # the account's key is a hash of its address
    redis.Redis.from_url(REDIS_URL).flushdb()


# --- proxies ---------------------------------------------------------------------------------------------------------


def test_forwarded_addresses_are_ignored_without_trusted_proxies(dashboard_app, lawyer):
    client = dashboard_app.test_client()
    for n in range(20):  # an attacker rotating X-Forwarded-For still counts as one address
        _fail(client, f"guess{n}@firma.id", headers={"X-Forwarded-For": f"203.0.113.{n}"})
    assert login(client, lawyer.email, headers={"X-Forwarded-For": "203.0.113.200"}).status_code == 429


def test_with_one_trusted_proxy_the_address_and_https_come_from_its_headers(db_url, var_dir, lawyer):
    app = make_app(db_url, var_dir, WAFLOW_TRUSTED_PROXIES="1")
    client = app.test_client()
    for n in range(20):
        _fail(client, f"guess{n}@firma.id", headers={"X-Forwarded-For": "198.51.100.7"})
    # The proxy appends the real client's address last: a forged first entry changes nothing.
    assert login(client, lawyer.email, headers={"X-Forwarded-For": "1.2.3.4, 198.51.100.7"}).status_code == 429
    # Behind the proxy the request was https: CSRF now also checks that the post came from our own pages.
    https = {"X-Forwarded-For": "198.51.100.8", "X-Forwarded-Proto": "https"}
    assert login(client, lawyer.email, headers=https).status_code == 400
    answer = login(client, lawyer.email, headers={**https, "Referer": "https://localhost/login"})
    assert answer.status_code == 302
    assert "; Secure" not in answer.headers["Set-Cookie"]  # development: SESSION_COOKIE_SECURE is production's


def test_without_trusted_proxies_a_forwarded_https_is_not_believed(dashboard_client, lawyer):
    answer = login(dashboard_client, lawyer.email, headers={"X-Forwarded-Proto": "https"})
    assert answer.status_code == 302  # plain http: no Referer check
