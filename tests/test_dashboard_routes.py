"""Every route of the dashboard against its rules (issue 19, "Security"): private unless allowlisted, admin
pages closed to lawyers, no secret ever rendered, client text inert, the headers every page carries."""
from __future__ import annotations

import hashlib

from werkzeug.routing import IntegerConverter

from dashboard_support import login, make_app, make_user, seed_conversation
from support import ROOT
from waflow.dashboard import security

# Every method a browser or script could send; HEAD and OPTIONS are Flask's own answers to GET and any route.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _routes(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, a URL of it) for every route and method of ``app``; arguments get sample values."""
    adapter = app.url_map.bind("localhost")
    found = []
    for rule in app.url_map.iter_rules():
        values = {arg: 1 if isinstance(rule._converters[arg], IntegerConverter) else "x" for arg in rule.arguments}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, adapter.build(rule.endpoint, values, method=method)))
    return found


def test_an_anonymous_visitor_is_sent_to_login_from_every_route_but_the_allowlisted(dashboard_app):
    client = dashboard_app.test_client()
    routes = _routes(dashboard_app)
    assert {endpoint for endpoint, _, _ in routes} >= security.PUBLIC_ENDPOINTS | {"inbox.index", "auth.logout"}
    problems = []
    for endpoint, method, url in routes:
        if endpoint in security.PUBLIC_ENDPOINTS:
            continue
        answer = client.open(url, method=method)
        if answer.status_code != 302 or not answer.headers["Location"].startswith("/login"):
            problems.append((endpoint, method, answer.status_code))
        htmx = client.open(url, method=method, headers={"HX-Request": "true"})
        if htmx.status_code != 401 or not htmx.headers.get("HX-Redirect", "").startswith("/login"):
            problems.append((endpoint, method, "htmx", htmx.status_code))
    assert problems == []


def test_the_public_endpoints_are_only_login_static_files_and_the_health_check():
    assert security.PUBLIC_ENDPOINTS == {"auth.login", "static", "healthz"}


def test_a_route_added_without_any_decorator_is_private_all_the_same(db_url, var_dir):
    app = make_app(db_url, var_dir)

    @app.route("/dashboard/forgotten")
    def forgotten():
        return "client data"

    answer = app.test_client().get("/dashboard/forgotten")
    assert answer.status_code == 302 and answer.headers["Location"] == "/login?next=/dashboard/forgotten"


def test_an_anonymous_visitor_reaches_the_login_page_static_files_and_the_health_check(dashboard_client):
    assert dashboard_client.get("/login").status_code == 200
    with dashboard_client.get("/static/dashboard.css") as css:
        assert css.status_code == 200
    assert dashboard_client.get("/healthz").get_data(as_text=True) == "ok\n"


def _admin_endpoints(app) -> list[str]:
    return sorted(e for e, view in app.view_functions.items() if getattr(view, "admin_only", False))


def test_a_lawyer_cannot_reach_any_admin_page(dashboard_app, lawyer_client):
    admin_only = _admin_endpoints(dashboard_app)
    assert "people.index" in admin_only
    for endpoint, method, url in _routes(dashboard_app):
        if endpoint in admin_only:
            assert lawyer_client.open(url, method=method).status_code == 403, (endpoint, method)


def test_an_admin_reaches_the_admin_pages_and_a_lawyer_does_not_see_them_in_the_menu(admin_client, lawyer_client):
    page = admin_client.get("/dashboard/users")
    assert page.status_code == 200 and "budi@firma.id" in page.get_data(as_text=True)
    assert 'href="/dashboard/users"' in admin_client.get("/dashboard/").get_data(as_text=True)
    assert 'href="/dashboard/users"' not in lawyer_client.get("/dashboard/").get_data(as_text=True)


def test_the_users_page_marks_demo_users(admin_client, db_url):
    make_user(db_url, "lawyer@demo.invalid", is_demo=True)
    assert "demo" in admin_client.get("/dashboard/users").get_data(as_text=True)


# --- what pages never show -------------------------------------------------------------------------------------------

SECRETS = {"SECRET_KEY": "dashboard-signing-key-0123456789-abcdef",
           "WHATSAPP_APP_SECRET": "meta-app-secret-0123456789abcdef",
           "WHATSAPP_ACCESS_TOKEN": "EAAG-access-token-0123456789",
           "WHATSAPP_VERIFY_TOKEN": "verify-token-0123456789",
           "FLOWER_BASIC_AUTH": "ops:flower-password-0123456789",
           "DRAFT_LLM_API_KEY": "llm-api-key-0123456789",
           "AWS_SECRET_ACCESS_KEY": "aws-secret-key-0123456789"}


def test_no_secret_is_ever_rendered(db_url, var_dir):
    app = make_app(db_url, var_dir, **SECRETS)

    @app.route("/dashboard/broken")
    def broken():
        raise RuntimeError(f"failed with {SECRETS['WHATSAPP_ACCESS_TOKEN']} and {SECRETS['SECRET_KEY']}")

    admin = make_user(db_url, "budi@firma.id", role="admin")
    seed_conversation(db_url, name="Klien", wa_id="6281234567890", bodies=["Selamat siang"])
    anonymous, client = app.test_client(), app.test_client()
    signed_in = login(client, admin.email)
    answers = [signed_in, anonymous.get("/login"), anonymous.get("/nowhere"),
               login(anonymous, admin.email, "wrong password here"), anonymous.post("/login")]
    for endpoint, method, url in _routes(app):
        answers.append(client.open(url, method=method))
    answers += [client.get("/nowhere"), client.post("/dashboard/language", data={"locale": "en"})]
    statuses = {a.status_code for a in answers}
    assert {200, 302, 400, 401, 404, 500} <= statuses
    for answer in answers:
        shown = answer.get_data(as_text=True) + "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        for name, value in SECRETS.items():
            assert value not in shown, name
            assert value.split(":")[-1] not in shown, name
        assert "correct horse battery staple" not in shown  # a user's password, never echoed


def test_client_names_and_text_render_inert(lawyer_client, db_url):
    seed_conversation(db_url, name="<script>alert('name')</script>", wa_id="6281111111111",
                      bodies=['"><img src=x onerror=alert(1)>'])
    seed_conversation(db_url, name="javascript:alert(3)", wa_id="6282222222222", bodies=["javascript:alert(2)"])
    page = lawyer_client.get("/dashboard/").get_data(as_text=True)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "javascript:alert(2)" in page and 'href="javascript' not in page  # shown as text, never a link


def test_every_page_carries_the_security_headers(lawyer_client, dashboard_client):
    for answer in (lawyer_client.get("/dashboard/"), dashboard_client.get("/login")):
        headers = answer.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Cache-Control"] == "private, no-store"


def test_the_root_leads_to_the_inbox(lawyer_client):
    assert lawyer_client.get("/").headers["Location"] == "/dashboard/"


def test_the_vendored_htmx_is_the_recorded_file_of_the_recorded_version():
    static = ROOT / "waflow" / "dashboard" / "static"
    recorded = (static / "VENDORED.md").read_text()
    digest = hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest()
    assert f"`htmx.min.js` sha256: `{digest}`" in recorded
    assert 'version:"2.0.11"' in (static / "htmx.min.js").read_text()
    assert "| `htmx.min.js` | htmx | 2.0.11 |" in recorded


def test_every_form_and_htmx_request_of_the_layout_carries_the_csrf_token(lawyer_client):
    page = lawyer_client.get("/dashboard/").get_data(as_text=True)
    forms = page.count("<form method=\"post\"")
    assert forms >= 2 and page.count('name="csrf_token"') == forms
    assert "hx-headers='{\"X-CSRFToken\": \"" in page
