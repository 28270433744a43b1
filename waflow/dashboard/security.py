"""What guards every dashboard page: the session, sign-in, CSRF, throttled logins, proxies, roles, headers.

- **Private by default.** Every route needs a signed-in user unless its endpoint is in ``PUBLIC_ENDPOINTS``
  (the login page, static files, the health check): one ``before_request`` check, so a new route cannot be
  forgotten. An anonymous visitor is sent to ``/login?next=<where they were>``; an htmx request gets 401 with
  ``HX-Redirect`` (htmx then loads the login page whole, instead of swapping it into a fragment).
- **Sessions** are Flask's signed cookie: HttpOnly, SameSite=Lax, Secure in production, ended by 12 hours
  without a request. Flask-Login keeps ``"<user id>:<session epoch>"`` in it (``DashboardUser.get_id``); the
  user is read again on every request, and a session whose epoch is not the user's current one (a password
  change or a deactivation bumps it) or whose user is deactivated is over.
- **CSRF** (Flask-WTF): every POST carries the session's token, as the ``csrf_token`` form field or the
  ``X-CSRFToken`` header (htmx: ``hx-headers`` on ``<body>``). The token lives as long as the session, so a
  page left open all day still posts; it changes at every login.
- **Failed logins** are throttled per account and per address (Flask-Limiter; Redis of ``REDIS_URL``, or each
  process's memory on the embedded default). The account's key is an HMAC of the address typed, so a password
  typed into the email field never reaches Flask-Limiter's log line.
- **Proxies**: ``X-Forwarded-For``/``-Proto``/``-Host`` are believed for ``WAFLOW_TRUSTED_PROXIES`` hops only
  (werkzeug's ProxyFix); with 0, the default, never.
- **Roles**: ``admin_required`` refuses lawyers (403).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
from datetime import timedelta
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, abort, current_app, redirect, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from waflow import users
from waflow.config import Settings
from waflow.web import request_connection

logger = logging.getLogger(__name__)

# The only endpoints an anonymous visitor reaches. tests/test_dashboard_routes.py walks app.url_map and
# checks that every other route sends an anonymous visitor to /login.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "healthz"})

SESSION_IDLE = timedelta(hours=12)
# Failed logins allowed per window (a moving window): per account, and per client address (a firm's office
# may share one address, so it allows more).
ACCOUNT_LIMIT = "5 per 15 minutes"
ADDRESS_LIMIT = "20 per 15 minutes"
LOGIN_FAILED_STATUS = 401

# Where a page's own scripts and styles may come from: this origin only, no inline script or style, and no
# eval: htmx runs with allowEval off (base.html), and the live pages check their visibility in their own
# script (static/live.js) instead of in an hx-trigger filter, which htmx would evaluate as code.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")

csrf = CSRFProtect()
View = TypeVar("View", bound=Callable[..., Any])


class DashboardUser(UserMixin):
    """The signed-in person, as Flask-Login holds them for one request."""

    def __init__(self, person: users.Person) -> None:
        self.person = person

    def get_id(self) -> str:
        return f"{self.person.id}:{self.person.session_epoch}"

    @property
    def is_active(self) -> bool:
        return self.person.active

    @property
    def is_admin(self) -> bool:
        return self.person.role == "admin"

    def __getattr__(self, name: str) -> Any:  # id, email, name, role, locale, is_demo
        if name == "person":
            raise AttributeError(name)
        return getattr(self.person, name)


_SESSION_ID = re.compile(r"(\d{1,18}):(\d{1,9})")


def load_user(session_id: str) -> DashboardUser | None:
    """The user a session names, if that session still stands (the user active, the epoch current)."""
    match = _SESSION_ID.fullmatch(session_id or "")
    if match is None:
        return None
    conn = request_connection()
    with conn.begin():
        person = users.by_id(conn, int(match.group(1)))
    if person is None or not person.active or person.session_epoch != int(match.group(2)):
        return None
    return DashboardUser(person)


def admin_required(view: View) -> View:
    """For a view only admins may use: lawyers get 403. (Signing in is checked for every view already.)"""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not current_user.is_authenticated or not current_user.is_admin:
            abort(403)
        return view(*args, **kwargs)

    guarded.admin_only = True  # type: ignore[attr-defined]  # tests/test_dashboard_routes.py finds them by it
    return guarded  # type: ignore[return-value]


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a page of this dashboard (a path of ours, not a public one), else None.

    Refused: anything with a scheme or host (``https://evil``, ``javascript:``), ``//evil`` and ``/\\evil``
    (which browsers read as another host), backslashes, spaces and control characters anywhere, non-ASCII,
    and paths that no dashboard route answers with GET."""
    if not target or len(target) > 2000 or not target.isascii():
        return None
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    try:
        endpoint, _ = current_app.url_map.bind("dashboard").match(parts.path, method="GET")
    except HTTPException:
        return None
    return None if endpoint in PUBLIC_ENDPOINTS else target


def _here() -> str:
    return request.full_path.rstrip("?")


def _unauthorized() -> Response:
    target = url_for("auth.login", next=_here()) if request.method == "GET" else url_for("auth.login")
    if request.headers.get("HX-Request"):
        response = Response(status=401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)


def _require_login() -> Response | None:
    if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS:
        return None  # a public page, or no route at all (404)
    if current_user.is_authenticated:
        return None
    return _unauthorized()


def _account_key() -> str:
    """Failed logins are counted per address typed, under a keyed hash of it (never the text itself)."""
    typed = request.form.get("email", "").strip().lower().encode()
    digest = hmac.new(current_app.config["SECRET_KEY"].encode(), typed, hashlib.sha256).hexdigest()[:32]
    return f"account:{digest}"


def _address_key() -> str:
    return f"address:{get_remote_address()}"


def _failed(response: Response) -> bool:
    return response.status_code == LOGIN_FAILED_STATUS


def throttle_login(app: Flask, settings: Settings) -> Limiter:
    """Count failed logins (``LOGIN_FAILED_STATUS``) per account and per address; past either limit the login
    view answers 429 without checking the password. One limiter per app (tests build many apps)."""
    limiter = Limiter(_address_key, app=app, storage_uri=settings.limiter_storage_uri, strategy="moving-window",
                      key_prefix="waflow-dashboard", in_memory_fallback_enabled=True)
    view = app.view_functions["auth.login"]
    for limit, key in ((ADDRESS_LIMIT, _address_key), (ACCOUNT_LIMIT, _account_key)):
        view = limiter.limit(limit, key_func=key, deduct_when=_failed, methods=["POST"])(view)
    app.view_functions["auth.login"] = view
    return limiter


def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # CSRF checks the Referer of HTTPS posts (WTF_CSRF_SSL_STRICT): keep it within the origin, never beyond.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "static":
        response.headers.setdefault("Cache-Control", "private, no-store")
    return response


def init_app(app: Flask, settings: Settings) -> None:
    """Configure the session, CSRF, sign-in, proxies, the login throttle and the security headers."""
    app.config.from_mapping(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="waflow_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        PERMANENT_SESSION_LIFETIME=SESSION_IDLE,
        SESSION_REFRESH_EACH_REQUEST=True,
        # The token lives as long as the session (which 12 idle hours end), not a fixed hour: a page left
        # open for a working day still posts.
        WTF_CSRF_TIME_LIMIT=None,
    )
    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    manager = LoginManager(app)
    manager.user_loader(load_user)
    manager.unauthorized_handler(_unauthorized)
    # Before CSRF's own check: an anonymous POST is sent to the login page, whatever it carries.
    app.before_request(_require_login)
    csrf.init_app(app)
    app.after_request(_headers)
    app.extensions["waflow.limiter"] = throttle_login(app, settings)
