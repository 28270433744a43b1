"""Jinja filters for times and numbers as a lawyer reads them, in their language and the firm's time zone
(``WAFLOW_TIMEZONE``; Flask-Babel converts from UTC, which the database stores).

- ``when``: "14:03" today, "2 Mar, 14:03" this year, "2 Mar 2025, 14:03" before (never 2/3, where the day and
  the month can be mistaken for each other);
- ``waited``: how long ago, rounded down ("1 h 30 min", "1 jam 30 menit"; "3 days");
- ``left``: time left, in hours and minutes, rounded down ("5 h 12 min");
- ``day``: a conversation's day heading ("Today", "Yesterday", "Monday 2 March 2026");
- ``phone``: a WhatsApp id as a number with its +;
- ``filesize``: "1.2 MB";
- ``inline_media``: whether a detected type is one the browser may show (``waflow.media.serve``).

``words`` (``waflow.dashboard.words``) is a global of every template.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import Flask
from flask_babel import format_date, format_datetime, format_decimal, gettext, ngettext, to_user_timezone

from waflow.dashboard import words
from waflow.media.serve import INLINE_TYPES


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


def when(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return ""
    local, today = to_user_timezone(_aware(at)), to_user_timezone(now or datetime.now(timezone.utc))
    if local.date() == today.date():
        return format_datetime(at, "HH:mm")
    if local.year == today.year:
        return format_datetime(at, "d MMM, HH:mm")
    return format_datetime(at, "d MMM y, HH:mm")


def full(at: datetime | None) -> str:
    """The whole date and time, for a title attribute."""
    return format_datetime(_aware(at), "EEEE d MMMM y, HH:mm:ss") if at is not None else ""


def waited(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return ""
    delta = max((now or datetime.now(timezone.utc)) - _aware(at), timedelta(0))
    if delta < timedelta(minutes=1):
        return gettext("less than a minute")
    if delta < timedelta(days=1):
        return left(delta)
    return ngettext("%(num)d day", "%(num)d days", delta.days)


def left(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return gettext("%(hours)d h %(minutes)d min", hours=hours, minutes=minutes)
    return gettext("%(minutes)d min", minutes=minutes)


def day(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return ""
    local, today = to_user_timezone(_aware(at)).date(), to_user_timezone(now or datetime.now(timezone.utc)).date()
    if local == today:
        return gettext("Today")
    if (today - local).days == 1:
        return gettext("Yesterday")
    return format_date(local, "EEEE d MMMM y")


def filesize(size: int | None) -> str:
    if not size:
        return ""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{format_decimal(size / scale, '#,##0.#')} {unit}"
    return gettext("%(num)d bytes", num=size)


def inline_media(detected_mime_type: str | None) -> bool:
    return detected_mime_type in INLINE_TYPES


def phone(wa_id: str | None) -> str:
    return f"+{wa_id}" if wa_id and wa_id.isdigit() else (wa_id or "")


def init_app(app: Flask) -> None:
    for function in (when, full, waited, left, day, phone, filesize, inline_media):
        app.add_template_filter(function, function.__name__)
    app.jinja_env.globals["words"] = words
