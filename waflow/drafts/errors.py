"""Why a person's decision on a draft is refused: the errors the CLI and the dashboard show.

Each carries a ``code`` for scripts (``--json``) and a message a lawyer can act on; none quotes a
client's words. The user errors (``UnknownUser``, ``Deactivated``) are ``waflow.users``' own,
re-exported here so a caller catches every refusal from one place.
"""
from __future__ import annotations

from datetime import datetime

from waflow.users import Deactivated, UnknownUser, UserError

__all__ = ["AlreadyDecided", "Deactivated", "DraftRefused", "InvalidDecision", "NotFound", "NotReady",
           "NothingToDraft", "OutsideWindow", "REFUSALS", "Stale", "UnknownUser", "UserError"]


class DraftRefused(Exception):
    """A decision that cannot be made; nothing changed."""

    code = "refused"


class NotFound(DraftRefused):
    code = "not_found"


class NotReady(DraftRefused):
    """The draft is still being written, or drafting failed and no words were given."""

    code = "not_ready"


# Why a draft went stale, as a lawyer is told.
STALE_REASONS = {
    "client_wrote": "the client wrote again",
    "replied": "a reply already reached the client another way",
    "redraft": "a new draft was asked for",
}


class Stale(DraftRefused):
    """The draft no longer answers the conversation as it stands."""

    code = "stale"

    def __init__(self, reason: str | None) -> None:
        self.reason = reason or "client_wrote"
        super().__init__(STALE_REASONS.get(self.reason, self.reason))


class AlreadyDecided(DraftRefused):
    """Someone decided on this draft first: who, what, and when."""

    code = "already_decided"

    def __init__(self, by: str | None, action: str | None, at: datetime | None = None) -> None:
        self.by, self.action, self.at = by, action, at
        when = f" at {at:%Y-%m-%d %H:%M:%S} UTC" if at else ""
        super().__init__(f"already decided: {by or 'someone'} chose {action or 'a decision'}{when}")


class OutsideWindow(DraftRefused):
    """Meta takes free-form words only within 24 hours of the client's last message."""

    code = "outside_window"

    def __init__(self, last_inbound_at: datetime | None) -> None:
        self.last_inbound_at = last_inbound_at
        when = f"the client last wrote at {last_inbound_at:%Y-%m-%d %H:%M} UTC" if last_inbound_at else \
            "the client has not written"
        super().__init__(f"outside Meta's 24-hour window ({when}): approve an approved template instead "
                         "(--template NAME --param P ...)")


class NothingToDraft(DraftRefused):
    code = "nothing_to_draft"


class InvalidDecision(DraftRefused):
    """The decision itself is malformed: a missing or unknown reason, words Meta would refuse..."""

    code = "invalid"


# Every refusal a decision function raises, for ``except REFUSALS``.
REFUSALS = (DraftRefused, UserError)
