"""What every page's layout (``templates/dashboard/base.html``) is given, and the error pages.

``NAV`` is the header's navigation: an entry shows once its endpoint exists (the audit page's blueprint adds
``audit.index``), and admin-only entries show to admins only. Error pages say what happened in the user's
language and nothing else: no exception text, no configuration.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NavItem:
    endpoint: str
    label: Any  # a lazy string: translated when the page is rendered
    admin_only: bool = False


NAV = (
    NavItem("inbox.index", _l("Inbox")),
    NavItem("audit.index", _l("Audit")),  # admins see every decision there, a lawyer their own
    NavItem("people.index", _l("Users"), admin_only=True),
)

ERRORS = {
    400: (_l("This page could not do that"), _l("Go back, reload the page and try again.")),
    403: (_l("Not for your account"), _l("This page is for the firm's admins.")),
    404: (_l("Page not found"), _l("The page you asked for does not exist (any more).")),
    405: (_l("Page not found"), _l("The page you asked for does not exist (any more).")),
    500: (_l("Something went wrong"), _l("The dashboard could not show this page. Try again in a moment.")),
}
CSRF_EXPIRED = (_l("This form has expired"), _l("Reload the page and try again."))


def nav_items() -> list[dict[str, Any]]:
    if not current_user.is_authenticated:
        return []
    shown = []
    for item in NAV:
        if item.endpoint not in current_app.view_functions or (item.admin_only and not current_user.is_admin):
            continue
        blueprint = item.endpoint.split(".", 1)[0]
        shown.append({"url": url_for(item.endpoint), "label": str(item.label),
                      "current": request.blueprint == blueprint})
    return shown


def _error_page(status: int, title: Any, message: Any) -> tuple[str, int]:
    if request.headers.get("HX-Request"):
        return str(message), status
    return render_template("dashboard/error.html", status=status, title=title, message=message), status


def _http_error(exc: HTTPException) -> tuple[str, int]:
    status = exc.code or 500
    title, message = ERRORS.get(status, ERRORS[400] if status < 500 else ERRORS[500])
    return _error_page(status, title, message)


def _csrf_error(_exc: CSRFError) -> tuple[str, int]:
    logger.info("dashboard: a %s to %s without a valid CSRF token", request.method, request.endpoint)
    return _error_page(400, *CSRF_EXPIRED)


def _server_error(_exc: Exception) -> tuple[str, int]:
    # Flask has logged the traceback already (ids and types only: database parameters are hidden).
    return _error_page(500, *ERRORS[500])


def init_app(app: Flask, firm_name: str) -> None:
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(500, _server_error)

    @app.context_processor
    def layout() -> dict[str, Any]:
        return {"firm_name": firm_name, "nav_items": nav_items}
