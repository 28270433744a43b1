"""The queue names, from the seed design, and their broker declarations.

Names stay exactly as `../shared/seed/` gives them. Every queue is durable and
bound to one durable direct exchange, ``wa``, under its own name as routing key.
Whatever the seed topic, this module is the only place a queue name is spelled.
"""
from __future__ import annotations

from kombu import Exchange, Queue

INCOMING_RAW = "wa.incoming.raw"
INCOMING_NORMALIZED = "wa.incoming.normalized"
OUTGOING_COMMAND = "wa.outgoing.command"
MEDIA_PROCESSING = "wa.media.processing"
AI_DRAFT_CREATED = "wa.ai.draft.created"
AI_DRAFT_APPROVED = "wa.ai.draft.approved"
DEAD_LETTER = "wa.dead_letter"

SEED_QUEUES = (
    INCOMING_RAW,
    INCOMING_NORMALIZED,
    OUTGOING_COMMAND,
    MEDIA_PROCESSING,
    AI_DRAFT_CREATED,
    AI_DRAFT_APPROVED,
)
ALL_QUEUES = SEED_QUEUES + (DEAD_LETTER,)

EXCHANGE = Exchange("wa", type="direct", durable=True)


def declarations() -> list[Queue]:
    """Kombu queue objects for every queue, durable, each bound to ``wa``."""
    return [Queue(name, EXCHANGE, routing_key=name, durable=True) for name in ALL_QUEUES]
