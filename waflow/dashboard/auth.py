"""Signing in and out: ``/login`` (form fields ``email``, ``password``, ``csrf_token``) and ``/logout`` (POST).

A failed login, for whatever reason (unknown address, wrong password, deactivated user, too many attempts),
gets the same message; the throttle (``security.throttle_login``) counts the 401 answers. A login starts a
new session: whatever the browser's session held before (a token or a locale an attacker may have planted)
is cleared first. ``next=`` is followed only to one of the dashboard's own pages (``security.safe_next``).
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_user, logout_user
from flask_limiter.errors import RateLimitExceeded

from waflow import users
from waflow.dashboard import i18n
from waflow.dashboard.security import LOGIN_FAILED_STATUS, DashboardUser, safe_next
from waflow.web import request_connection

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

FAILED = _l("That email and password did not sign you in. Check them and try again; "
            "after several tries, wait a few minutes.")
# The longest inputs looked at: more is no address or password of ours, and Argon2 need not hash it.
MAX_EMAIL, MAX_PASSWORD = 254, 1024


def _landing() -> str:
    return safe_next(request.args.get("next")) or url_for("inbox.index")


def _form(error: str | None = None, status: int = 200, email: str = "") -> tuple[str, int]:
    return render_template("dashboard/login.html", error=error, email=email,
                           next=safe_next(request.args.get("next"))), status


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int]:
    i18n.remember_chosen_locale()
    if current_user.is_authenticated:
        return redirect(_landing())
    if request.method == "GET":
        return _form()
    email = request.form.get("email", "")[:MAX_EMAIL]
    password = request.form.get("password", "")[:MAX_PASSWORD]
    conn = request_connection()
    try:
        with conn.begin():
            person = users.authenticate(conn, email, password)
    except users.UserError as exc:
        logger.info("dashboard: a login failed (%s) from %s", exc.code, request.remote_addr)
        return _form(str(FAILED), LOGIN_FAILED_STATUS, email)
    session.clear()  # a new session: nothing from before the login survives it
    login_user(DashboardUser(person))
    session.permanent = True  # idle expiry (security.SESSION_IDLE), renewed by each request
    logger.info("dashboard: user %s signed in", person.id)
    return redirect(_landing())


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.app_errorhandler(RateLimitExceeded)
def throttled(_exc: RateLimitExceeded) -> tuple[str, int]:
    logger.info("dashboard: a login was throttled from %s", request.remote_addr)
    return _form(str(FAILED), 429, request.form.get("email", "")[:MAX_EMAIL])
