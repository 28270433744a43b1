"""The dashboard's languages: Indonesian and English (Flask-Babel), and the firm's time zone.

Which language a page speaks: a signed-in user's own (``users.locale``, changed with the header's switch);
before login, the one chosen on the login page (``?lang=``, kept in the session until login starts a new
one), else the browser's ``Accept-Language``, else Indonesian.

Strings are English in the code and templates (``_()``, ``{% trans %}``); the catalogs are
``translations/<locale>/LC_MESSAGES/messages.po``, extracted with ``babel.cfg``. ``bin/_venv`` and the
Procfile's ``release`` line compile them; the app also compiles any catalog whose ``.mo`` is missing or older
than its ``.po`` when it starts (a platform's release step may not keep its files).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Blueprint, Flask, Response, redirect, request, session, url_for
from flask_babel import Babel, get_locale
from flask_login import current_user

from waflow import users
from waflow.config import Settings
from waflow.dashboard.security import safe_next
from waflow.models import USER_LOCALES
from waflow.web import request_connection

logger = logging.getLogger(__name__)

TRANSLATIONS = Path(__file__).resolve().parent / "translations"
DEFAULT_LOCALE = "id"
LOCALE_NAMES = {"id": "Bahasa Indonesia", "en": "English"}

bp = Blueprint("language", __name__)


def select_locale() -> str:
    if current_user.is_authenticated:
        return current_user.locale
    chosen = session.get("locale")
    if chosen in USER_LOCALES:
        return chosen
    return request.accept_languages.best_match(USER_LOCALES) or DEFAULT_LOCALE


def remember_chosen_locale() -> None:
    """Before login: keep the language chosen with the login page's links (``?lang=en``)."""
    chosen = request.args.get("lang")
    if chosen in USER_LOCALES:
        session["locale"] = chosen


@bp.route("/dashboard/language", methods=["POST"])
def switch() -> Response:
    """The header's language switch: the user's own language from now on, on every device."""
    locale = request.form.get("locale", "")
    if locale in USER_LOCALES:
        conn = request_connection()
        with conn.begin():
            users.set_locale(conn, current_user.email, locale)
    return redirect(safe_next(request.form.get("next")) or url_for("inbox.index"))


def compile_catalogs(directory: Path = TRANSLATIONS) -> list[Path]:
    """Compile each ``.po`` whose ``.mo`` is missing or older (written whole, then renamed, so processes
    starting together never read half a file); the ``.mo`` files written. Fuzzy entries are left out."""
    written = []
    for po in sorted(directory.glob("*/LC_MESSAGES/*.po")):
        mo = po.with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        with po.open("rb") as source:
            catalog = read_po(source)
        temporary = mo.with_name(f"{mo.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("wb") as out:
                write_mo(out, catalog)
            os.replace(temporary, mo)
        except OSError as exc:  # a read-only install: the release step must have compiled them
            logger.warning("dashboard: cannot write %s (%s); run pybabel compile", mo, exc.strerror)
            continue
        written.append(mo)
    return written


def init_app(app: Flask, settings: Settings) -> None:
    compile_catalogs()
    app.config.from_mapping(
        BABEL_DEFAULT_LOCALE=DEFAULT_LOCALE,
        BABEL_DEFAULT_TIMEZONE=settings.timezone,
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS),
    )
    Babel(app, locale_selector=select_locale)
    app.register_blueprint(bp)

    @app.context_processor
    def languages() -> dict[str, object]:
        return {"current_locale": str(get_locale() or DEFAULT_LOCALE), "locale_names": LOCALE_NAMES}
