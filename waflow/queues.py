"""The queue names, from the seed design, and their broker declarations.

Names stay exactly as `../shared/seed/` gives them, plus one lane the outbound
stage adds (``wa.outgoing.broadcast``, so a broadcast never holds up a reply) and
the drafter's own queue (``wa.ai.draft.requested``, so a slow model never holds up core).
Every queue is durable and bound to one durable exchange, ``wa``, under its own
name as routing key. Whatever the seed topic, this module is the only place a
queue name is spelled.

Every work queue dead-letters into ``wa.dead_letter`` through the exchange
``wa.dlx``: whatever RabbitMQ itself drops from a work queue (a rejection
without requeue, a quorum queue's delivery limit) lands there, never nowhere.
``wa.dead_letter`` is also bound to ``wa``, where the failure handler publishes
its dead-letter records. Nothing but the dead-letter recorder consumes it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue, binding

from waflow import embedded  # also registers the embedded:// transport

if TYPE_CHECKING:
    from waflow.config import Settings

INCOMING_RAW = "wa.incoming.raw"
INCOMING_NORMALIZED = "wa.incoming.normalized"
OUTGOING_COMMAND = "wa.outgoing.command"
MEDIA_PROCESSING = "wa.media.processing"
AI_DRAFT_CREATED = "wa.ai.draft.created"
AI_DRAFT_APPROVED = "wa.ai.draft.approved"
# The broadcast lane: bulk sends wait here, so replies in wa.outgoing.command go first.
OUTGOING_BROADCAST = "wa.outgoing.broadcast"
# Conversations whose reply is to be drafted: the drafter stage's own queue (waflow/drafts/drafter.py).
AI_DRAFT_REQUESTED = "wa.ai.draft.requested"
DEAD_LETTER = "wa.dead_letter"

SEED_QUEUES = (
    INCOMING_RAW,
    INCOMING_NORMALIZED,
    OUTGOING_COMMAND,
    MEDIA_PROCESSING,
    AI_DRAFT_CREATED,
    AI_DRAFT_APPROVED,
)
WORK_QUEUES = SEED_QUEUES + (OUTGOING_BROADCAST, AI_DRAFT_REQUESTED)
ALL_QUEUES = WORK_QUEUES + (DEAD_LETTER,)

# Quorum queues take countdowns (retries) through RabbitMQ's native delayed delivery, which
# works only through topic exchanges; classic queues keep the simpler direct exchange. Routing
# keys are whole queue names either way, and none is a dotted suffix of another.
EXCHANGE_TYPES = {"classic": "direct", "quorum": "topic"}
# A quorum queue dead-letters a message redelivered this many times (a message that keeps
# killing its worker). Classic queues have no such count: waflow.tasks counts redeliveries.
QUORUM_DELIVERY_LIMIT = 5


def _queue_type() -> str:
    from waflow.config import settings

    return settings.queue_type


def exchange(queue_type: str | None = None) -> Exchange:
    """The exchange every queue is bound to."""
    return Exchange("wa", type=EXCHANGE_TYPES[queue_type or _queue_type()], durable=True)


def dead_letter_exchange(queue_type: str | None = None) -> Exchange:
    """Where RabbitMQ sends what a work queue dead-letters; only ``wa.dead_letter`` is bound to it."""
    return Exchange("wa.dlx", type=EXCHANGE_TYPES[queue_type or _queue_type()], durable=True)


EXCHANGE = exchange()
DEAD_LETTER_EXCHANGE = dead_letter_exchange()


def queue(name: str, queue_type: str | None = None) -> Queue:
    """The kombu declaration of one queue: durable, bound to ``wa`` under its own name."""
    queue_type = queue_type or _queue_type()
    wa = exchange(queue_type)
    arguments: dict[str, Any] = {}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    if name == DEAD_LETTER:
        return Queue(name, bindings=[binding(wa, routing_key=name),
                                     binding(dead_letter_exchange(queue_type), routing_key=name)],
                     durable=True, queue_arguments=arguments or None)
    arguments.update({"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name, "x-dead-letter-routing-key": DEAD_LETTER})
    if queue_type == "quorum":
        # At-least-once dead-lettering (confirmed inside the cluster), which needs reject-publish.
        arguments.update({"x-delivery-limit": QUORUM_DELIVERY_LIMIT, "x-dead-letter-strategy": "at-least-once",
                          "x-overflow": "reject-publish"})
    return Queue(name, wa, routing_key=name, durable=True, queue_arguments=arguments)


def declarations(queue_type: str | None = None) -> list[Queue]:
    """Every queue's declaration."""
    return [queue(name, queue_type) for name in ALL_QUEUES]


def transport_options(settings: "Settings") -> dict[str, Any]:
    """kombu transport options for the configured broker."""
    if settings.embedded_broker:
        # waflow.embedded (kombu's filesystem transport, made safe for several processes): one folder
        # shared by the web process and every worker. Absolute paths: kombu's default control folder is relative.
        return {
            **embedded.folders(settings.var_dir / "broker"),
            "store_processed": False,
            # The transport polls; 0.1 s keeps a local stack snappy at negligible cost.
            "polling_interval": 0.1,
        }
    # Publisher confirms: a publish RabbitMQ refuses raises instead of vanishing.
    return {"confirm_publish": True}
