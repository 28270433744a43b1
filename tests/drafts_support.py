"""Builders shared by the draft pipeline's tests: clients writing, drafts drafted, lawyers deciding.

Everything runs in the test process through the pipeline's plain functions (core's ``persist_event``, the
drafter's ``draft_request``, ``decisions``), on whichever database the test gives.
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from support import compact
from waflow import users
from waflow.config import settings
from waflow.core import persist_event
from waflow.db import transaction
from waflow.drafting import KnowledgeBase, OfflineDrafter
from waflow.drafting.knowledge import SAMPLE_DIR
from waflow.drafts import drafter
from waflow.drafts.requests import Requested
from waflow.events import NormalizedEvent
from waflow.ingestor import split_webhook

NUMBER = "1122334455"
CLIENT = "6281200001111"
PASSWORD = "correct horse battery staple"


def message(wamid: str, body: str | None = "Saya mau cerai, bagaimana caranya?", *, wa_id: str = CLIENT,
            kind: str = "text", at: float | None = None, **fields: Any) -> dict[str, Any]:
    """One client message object as Meta sends it (a text unless ``kind`` and its ``fields`` say otherwise)."""
    doc: dict[str, Any] = {"from": wa_id, "id": wamid, "timestamp": str(int(at or time.time())), "type": kind}
    if kind == "text":
        doc["text"] = {"body": body}
    doc.update(fields)
    return doc


def webhook(*messages: dict[str, Any], statuses: list[dict[str, Any]] = (), name: str = "Siti Aminah",
            phone_number_id: str = NUMBER) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp",
                             "metadata": {"display_phone_number": "15550009999", "phone_number_id": phone_number_id}}
    if messages:
        senders = dict.fromkeys(m["from"] for m in messages)
        value["contacts"] = [{"profile": {"name": name}, "wa_id": w} for w in senders]
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "100200300", "changes": [{"field": "messages", "value": value}]}]}


def events_of(doc: dict[str, Any]) -> list[NormalizedEvent]:
    batch = split_webhook(compact(doc), time.time())
    assert batch.rejected == []
    return [NormalizedEvent.model_validate(e.model_dump(mode="json", exclude_none=True)) for e in batch.events]


def receive(db: str, doc: dict[str, Any]) -> list[Requested]:
    """Core handles every event of the webhook, one transaction each; returns the drafting tasks it would queue."""
    queued: list[Requested] = []
    for event in events_of(doc):
        with transaction(db) as conn:
            persist_event(conn, event, [], queued)
    return queued


def client_writes(db: str, wamid: str, body: str = "Saya mau cerai, bagaimana caranya?", **kw: Any) -> Requested:
    [requested] = receive(db, webhook(message(wamid, body, **kw)))
    return requested


@functools.cache
def offline() -> OfflineDrafter:
    return OfflineDrafter(KnowledgeBase(SAMPLE_DIR))


def later(seconds: float | None = None) -> datetime:
    """A moment after the quiet period: when a drafting task would find its request due."""
    return datetime.now(timezone.utc) + timedelta(seconds=settings.draft_quiet_seconds + 1 if seconds is None
                                                  else seconds)


def draft(db: str, requested: Requested, *, task: str = "task-1", using: Any = None,
          now: datetime | None = None) -> drafter.Outcome:
    """The drafting task queued for ``requested``, run once its request is due."""
    return drafter.draft_request(requested.request_id, task, database_url=db,
                                 using=using or offline(), now=now or later())


def ready_draft(db: str, wamid: str = "wamid.D1", body: str = "Saya mau cerai, bagaimana caranya?",
                **kw: Any) -> int:
    """A client writes and the drafter drafts: the ready draft's id."""
    outcome = draft(db, client_writes(db, wamid, body, **kw))
    assert outcome.status == "ready", outcome
    return outcome.announce


def lawyer(db: str, email: str = "ratna@firma.id", name: str = "Ratna", role: str = "lawyer") -> users.Person:
    with transaction(db) as conn:
        return users.create(conn, email, name=name, role=role, locale="id", password=PASSWORD)


def one(db: str, sql: str, **params: Any) -> Any:
    with transaction(db) as conn:
        return conn.execute(sa.text(sql), params).first()


def rows(db: str, sql: str, **params: Any) -> list[Any]:
    with transaction(db) as conn:
        return conn.execute(sa.text(sql), params).all()


def scalar(db: str, sql: str, **params: Any) -> Any:
    with transaction(db) as conn:
        return conn.execute(sa.text(sql), params).scalar()
