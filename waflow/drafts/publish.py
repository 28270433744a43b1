"""How each step of the draft pipeline hands the next one its ids: by task name, after the commit.

Every message carries ids only, never a client's words (``waflow.tasks.dispatch`` also redacts what
Flower and the logs show). Each is published after the transaction that made its state committed; a
publish lost in between is made good by a redelivery or by the drafter's sweep (``sweep``), and a
second copy is harmless: every consumer decides with a conditional update.
"""
from __future__ import annotations

from waflow import tasks
from waflow.drafts.requests import Requested

DRAFT_TASK = "waflow.drafts.drafter.draft_reply"  # wa.ai.draft.requested
CREATED_TASK = "waflow.drafts.announcer.announce_draft"  # wa.ai.draft.created
APPROVED_TASK = "waflow.core.send_approved"  # wa.ai.draft.approved


def request(requested: Requested) -> None:
    """Queue the drafting of a request for its due time."""
    draft_at(requested.request_id, requested.countdown)


def draft_at(request_id: int, countdown: float = 0.0) -> None:
    """Queue the drafting of a request in ``countdown`` seconds (a task found it not due yet; the sweep
    found it without a task): whichever task finds it due drafts it, the others stand down."""
    countdown = min(countdown, tasks.MAX_COUNTDOWN)
    tasks.dispatch(DRAFT_TASK, (request_id,), countdown=countdown if countdown > 0 else None)


def created(draft_id: int) -> None:
    """``wa.ai.draft.created``: the draft is ready, or drafting failed and a person must answer."""
    tasks.dispatch(CREATED_TASK, (draft_id,))


def approved(approval_id: int) -> None:
    """``wa.ai.draft.approved``: hand the approved words to the sender (core)."""
    tasks.dispatch(APPROVED_TASK, (approval_id,))
