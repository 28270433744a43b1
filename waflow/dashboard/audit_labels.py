"""What the audit page, its CSV and the weekly report call things, in the reader's language.

The database keeps codes (``approve``, ``wrong_facts``, ``delivered``); people read these words. A code
without a label here (one a later version adds) is shown as the code itself.
"""
from __future__ import annotations

from typing import Any

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

ACTIONS = {
    "approve": _l("Approved as drafted"),
    "edit": _l("Edited, then approved"),
    "template": _l("Template instead"),
    "reject": _l("Rejected"),
    "write": _l("Written by hand"),
}
REASONS = {
    "wrong_facts": _l("Wrong facts"),
    "wrong_tone": _l("Wrong tone"),
    "needs_lawyer": _l("Needs a lawyer's own answer"),
    "other": _l("Other reason"),
}
SENDS = {
    "queued": _l("Waiting to be sent"),
    "sending": _l("Being sent"),
    "accepted": _l("Accepted by WhatsApp"),
    "sent": _l("Sent"),
    "delivered": _l("Delivered"),
    "read": _l("Read"),
    "played": _l("Played"),
    "failed": _l("Not delivered"),
    "in_doubt": _l("Unclear whether sent"),
    "cancelled": _l("Cancelled"),
}
VIAS = {"dashboard": _l("dashboard"), "cli": _l("command line")}
DRAFTERS = {"offline": _l("Knowledge base (no AI model)"), "chat": _l("AI model")}


# The words of each decision on the audit page: translated once a page, not fifty times (a translation lookup
# costs tens of microseconds, and a row has twenty words).
ROW_WORDS = {
    "by": _l("by %(name)s"), "client": _l("Client"), "unknown_client": _l("Unknown client"),
    "conversation": _l("conversation %(id)s"), "note": _l("Note"), "unchanged": _l("Draft, sent unchanged"),
    "draft": _l("Draft"), "no_draft": _l("No draft: the lawyer wrote the reply."), "sent": _l("Sent"),
    "nothing_sent": _l("Nothing was sent."), "changed": _l("Changed"),
    "distance": _l("edit distance %(distance)d"), "drafted_by": _l("Drafted by"), "model": _l("Model"),
    "prompt": _l("Prompt version"), "sources": _l("Sources"), "none": _l("none"), "reply": _l("Reply"),
    "through": _l("Through"),
}


def translated(table: dict[str, Any]) -> dict[str, str]:
    """``table`` with each lazy string translated now, in the request's language."""
    return {code: str(words) for code, words in table.items()}


def label(table: dict[str, Any], code: str | None) -> str:
    if code is None:
        return ""
    return str(table.get(code, code))


def duration(seconds: float | None) -> str:
    """A wait as a person says it: "45 s", "12 min 5 s", "3 h 20 min", "2 d 4 h"; "–" for none."""
    if seconds is None:
        return "–"
    whole = int(round(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return _("%(days)d d %(hours)d h", days=days, hours=hours)
    if hours:
        return _("%(hours)d h %(minutes)d min", hours=hours, minutes=minutes)
    if minutes:
        return _("%(minutes)d min %(seconds)d s", minutes=minutes, seconds=secs)
    return _("%(seconds)d s", seconds=secs)
