"""A known week of decisions for the audit page's and the weekly report's tests (hand-computed figures).

The week is 2026-W10 in Asia/Jakarta (UTC+7): Monday 2 March 2026 00:00 there is Sunday 1 March 17:00 UTC,
and it ends at Monday 9 March 00:00 there, Sunday 8 March 17:00 UTC. Every decision goes through the
pipeline's own functions: a client writes (core), the offline drafter drafts, a lawyer decides
(``waflow.drafts.decisions``) at a chosen moment.

| #  | client  | who   | what                           | client wrote (UTC) | decided (UTC)    | to reply | week |
|----|---------|-------|--------------------------------|--------------------|------------------|----------|------|
| 1  | …0001   | Ratna | approve                        | 03-02 02:00        | 03-02 02:10      | 600 s    | 10   |
| 2  | …0002   | Ratna | approve                        | 03-03 03:00        | 03-03 03:05      | 300 s    | 10   |
| 3  | …0003   | Ratna | edit, light (one sentence more) | 03-04 01:00       | 03-04 01:20      | 1200 s   | 10   |
| 4  | …0004   | Ratna | edit, heavy (all new words)    | 03-04 05:00        | 03-04 06:00      | 3600 s   | 10   |
| 5  | …0005   | Ratna | reject, wrong_facts            | 03-05 02:00        | 03-05 04:10      | –        | 10   |
| 6  | …0006   | Ratna | reject, other (a formula note) | 03-05 04:00        | 03-05 04:10      | –        | 10   |
| 7  | …0007   | Ratna | write (a draft open)           | 03-06 01:00        | 03-06 01:02      | 120 s    | 10   |
| 8  | …0008   | Ratna | template                       | 03-06 07:00        | 03-06 09:00      | 7200 s   | 10   |
| 9  | …0009   | Sari  | approve                        | 03-07 10:00        | 03-07 10:25      | 1500 s   | 10   |
| 10 | …0010   | Ratna | approve: Sunday 23:59:59 WIB   | 03-08 16:00        | 03-08 16:59:59   | 3599 s   | 10   |
| 11 | …0011   | Ratna | approve: Sunday 1 March, WIB   | 03-01 16:00        | 03-01 16:59:59   | 3599 s   | 9    |
| 12 | …0012   | Ratna | approve: Monday 00:00 WIB      | 03-08 16:30        | 03-08 17:00      | 1800 s   | 11   |
| 13 | …0013   | Ratna | write, no draft (two messages) | 03-06 10:00, 10:05 | 03-06 10:30      | 1800 s   | 10   |

#5 and #6 share their moment (the keyset's tie). Week 10, Ratna: 3 approved as drafted (1, 2, 10), 1 light
(3), 1 heavy (4), 1 template (8), rejected 1 wrong_facts + 1 other, 2 written (7, 13): 10 decisions; times
120, 300, 600, 1200, 1800, 3599, 3600, 7200: p50 (4th of 8) 1200 s, p95 (8th) 7200 s. Everyone: + Sari's
1500 s: 11 decisions; p50 (5th of 9) 1500 s, p95 (9th) 7200 s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from drafts_support import draft, message, receive, webhook
from waflow.db import transaction
from waflow.drafts import decisions
from waflow.models import Draft

RATNA, SARI = "ratna@firma.id", "sari@firma.id"
NOTE = "=cmd|' /C calc'!A0"
HEAVY = "Mohon datang ke kantor kami besok jam 10 dengan membawa KTP."
LIGHT_TAIL = " Terima kasih."


def at(month_day_time: str) -> datetime:
    """``03-02 02:10`` (or with seconds) in March 2026, UTC."""
    stamp = f"2026-{month_day_time}" + (":00" if month_day_time.count(":") == 1 else "")
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)


@dataclass
class Week10:
    """What the fixture made: the draft texts by decision number, the decision ids by number."""

    drafts: dict[int, str] = field(default_factory=dict)
    decisions: dict[int, int] = field(default_factory=dict)


def client(n: int) -> str:
    return f"628120000{n:04d}"


def write_and_draft(db: str, n: int, wrote: datetime, *, name: str | None = None, body: str | None = None,
                    draft_text: str | None = None) -> int:
    """Client ``n`` writes at ``wrote``; the offline drafter drafts (its text replaced by ``draft_text``, as a
    model might have written it). The ready draft's id."""
    [requested] = receive(db, webhook(message(f"wamid.audit-{n}", body or "Saya mau cerai, bagaimana caranya?",
                                              wa_id=client(n), at=wrote.timestamp()), name=name or f"Klien {n}"))
    outcome = draft(db, requested)
    assert outcome.status == "ready", outcome
    if draft_text is not None:
        with transaction(db) as conn:
            conn.execute(sa.update(Draft).where(Draft.id == outcome.announce).values(text=draft_text))
    return outcome.announce


def draft_text(db: str, draft_id: int) -> str:
    with transaction(db) as conn:
        return conn.execute(sa.select(Draft.text).where(Draft.id == draft_id)).scalar_one()


def decide(db: str, fn: Any, *args: Any, **kw: Any) -> Any:
    with transaction(db) as conn:
        return fn(conn, *args, **kw)


def decision_id(db: str, approval_or_rejection: Any) -> int:
    from waflow.models import DraftDecision

    with transaction(db) as conn:
        if isinstance(approval_or_rejection, decisions.Rejected):
            return approval_or_rejection.decision_id
        return conn.execute(sa.select(DraftDecision.id).where(
            DraftDecision.approval_id == approval_or_rejection.approval_id)).scalar_one()


def make_week10(db: str, *, names: dict[int, str] | None = None, drafts: dict[int, str] | None = None,
                edits: dict[int, str] | None = None) -> Week10:
    """The table of the module's docstring. ``names``, ``drafts`` and ``edits`` replace a client's name, a
    draft's text or an edited text by decision number (the security tests put hostile text there)."""
    names, drafts, edits = names or {}, drafts or {}, edits or {}
    made = Week10()

    def ready(n: int, wrote: str) -> int:
        draft_id = write_and_draft(db, n, at(wrote), name=names.get(n), draft_text=drafts.get(n))
        made.drafts[n] = draft_text(db, draft_id)
        return draft_id

    def record(n: int, result: Any) -> None:
        made.decisions[n] = decision_id(db, result)

    approve, reject, write = decisions.approve, decisions.reject, decisions.write_by_hand
    record(1, decide(db, approve, ready(1, "03-02 02:00"), RATNA, "dashboard", now=at("03-02 02:10")))
    record(2, decide(db, approve, ready(2, "03-03 03:00"), RATNA, "cli", now=at("03-03 03:05")))
    d3 = ready(3, "03-04 01:00")
    record(3, decide(db, approve, d3, RATNA, "dashboard", text=edits.get(3, made.drafts[3] + LIGHT_TAIL),
                     now=at("03-04 01:20")))
    record(4, decide(db, approve, ready(4, "03-04 05:00"), RATNA, "dashboard", text=edits.get(4, HEAVY),
                     now=at("03-04 06:00")))
    record(5, decide(db, reject, ready(5, "03-05 02:00"), RATNA, "dashboard", reason="wrong_facts",
                     now=at("03-05 04:10")))
    record(6, decide(db, reject, ready(6, "03-05 04:00"), RATNA, "dashboard", reason="other", note=NOTE,
                     now=at("03-05 04:10")))
    ready(7, "03-06 01:00")
    conversation_7 = _conversation(db, client(7))
    record(7, decide(db, write, conversation_7, RATNA, "dashboard", text="Baik, kami telepon siang ini.",
                     now=at("03-06 01:02")))
    record(8, decide(db, approve, ready(8, "03-06 07:00"), RATNA, "dashboard", template="case_update",
                     params=["2026-114"], now=at("03-06 09:00")))
    record(9, decide(db, approve, ready(9, "03-07 10:00"), SARI, "dashboard", now=at("03-07 10:25")))
    record(10, decide(db, approve, ready(10, "03-08 16:00"), RATNA, "dashboard", now=at("03-08 16:59:59")))
    record(11, decide(db, approve, ready(11, "03-01 16:00"), RATNA, "dashboard", now=at("03-01 16:59:59")))
    record(12, decide(db, approve, ready(12, "03-08 16:30"), RATNA, "dashboard", now=at("03-08 17:00")))
    # 13: two messages and no draft yet (the request still waits): the reply answers both.
    receive(db, webhook(
        message("wamid.audit-13a", "Pak, saya ditipu", wa_id=client(13), at=at("03-06 10:00").timestamp()),
        message("wamid.audit-13b", "Tolong dibantu", wa_id=client(13), at=at("03-06 10:05").timestamp()),
        name=names.get(13, "Klien 13")))
    record(13, decide(db, write, _conversation(db, client(13)), RATNA, "dashboard", text="Kami bantu, Pak.",
                      now=at("03-06 10:30")))
    return made


def _conversation(db: str, wa_id: str) -> int:
    from waflow.models import Contact, Conversation

    with transaction(db) as conn:
        return conn.execute(sa.select(Conversation.id).join(Contact, Contact.id == Conversation.contact_id)
                            .where(Contact.wa_id == wa_id)).scalar_one()
