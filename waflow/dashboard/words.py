"""What the dashboard says for waflow's codes: Meta's error codes, why a file failed, a draft's flags, a
decision, a refusal. Lazy strings, translated when a page is rendered; the codes themselves stay in the
database and the logs. Meta's own title, where it gave one, is shown beside ours (it is Meta's text, in
English, never a client's).
"""
from __future__ import annotations

from typing import Any

from flask_babel import lazy_gettext as _l

# Meta's error codes (../shared/reference/whatsapp-cloud-api.md, section 7.2) as a lawyer reads them.
META_ERRORS: dict[int, Any] = {
    0: _l("WhatsApp refused the firm's access token: ask the admin to renew it."),
    190: _l("WhatsApp refused the firm's access token: ask the admin to renew it."),
    100: _l("WhatsApp did not accept this message's form."),
    130429: _l("Too many messages at once: WhatsApp asked us to slow down."),
    131026: _l("The message could not be delivered: the number may not be on WhatsApp, or the client's app "
               "is too old."),
    131047: _l("More than 24 hours have passed since the client last wrote: only a template can be sent."),
    131048: _l("WhatsApp held the message back (too many of the firm's messages were marked as spam)."),
    131049: _l("WhatsApp held the message back to keep the client from getting too many messages."),
    131050: _l("The client has stopped marketing messages from the firm."),
    131051: _l("WhatsApp does not support this kind of message."),
    131052: _l("The client's file could not be downloaded."),
    131053: _l("The file could not be uploaded to WhatsApp."),
    131056: _l("Too many messages to this client in a short time."),
    130403: _l("The firm has blocked this client's number."),
    131021: _l("The message was addressed to the firm's own number."),
    131031: _l("The firm's WhatsApp account is locked."),
    131042: _l("The firm's WhatsApp payment method has a problem."),
    132000: _l("The template was given the wrong number of values."),
    132001: _l("WhatsApp has no approved template by that name and language."),
    132015: _l("The template is paused."),
    132016: _l("The template is disabled."),
    368: _l("WhatsApp has temporarily blocked the firm's number for a policy reason."),
}
META_UNKNOWN = _l("WhatsApp could not deliver the message.")

MEDIA_FAILURES: dict[str, Any] = {
    "media id expired": _l("The file expired at WhatsApp before it could be fetched (WhatsApp keeps a client's "
                           "files for 7 days)."),
    "over 100 MB": _l("The file is larger than WhatsApp's limit of 100 MB."),
    "sha256 mismatch": _l("The file arrived damaged twice in a row."),
    "retries exhausted": _l("Fetching the file failed again and again."),
}
MEDIA_UNKNOWN = _l("The file could not be fetched.")

FLAGS: dict[str, Any] = {
    "urgent": _l("urgent"),
    "low_confidence": _l("unsure"),
    "first_contact": _l("first contact"),
    "has_media": _l("has a file"),
    "incomplete": _l("needs details"),
    "fallback": _l("written without the model"),
}

REJECT_REASONS: dict[str, Any] = {
    "wrong_facts": _l("Wrong facts"),
    "wrong_tone": _l("Wrong tone"),
    "needs_lawyer": _l("Needs a lawyer's own answer"),
    "other": _l("Other"),
}

# What someone did, as in "Budi approved it at 14:03".
ACTIONS: dict[str, Any] = {
    "approve": _l("approved it as drafted"),
    "edit": _l("edited and approved it"),
    "template": _l("approved a template instead"),
    "reject": _l("rejected it"),
    "write": _l("wrote a reply by hand"),
}

STALE: dict[str, Any] = {
    "client_wrote": _l("The client wrote again: read the new messages. A new draft is on its way."),
    "replied": _l("A reply already reached the client another way."),
    "redraft": _l("A new draft was asked for."),
}

SEND_STATES: dict[str, Any] = {
    "queued": _l("waiting to be sent"),
    "sending": _l("sending"),
    "accepted": _l("sent to WhatsApp"),
    "sent": _l("sent"),
    "delivered": _l("delivered"),
    "read": _l("read"),
    "played": _l("played"),
    "failed": _l("failed"),
    "in_doubt": _l("not sure it was sent: ask the admin"),
    "cancelled": _l("cancelled"),
}


def meta_error(code: int | None) -> Any:
    return META_ERRORS.get(code, META_UNKNOWN) if code is not None else META_UNKNOWN


def media_failure(reason: str | None) -> Any:
    for start, words in MEDIA_FAILURES.items():
        if (reason or "").startswith(start):
            return words
    return MEDIA_UNKNOWN
