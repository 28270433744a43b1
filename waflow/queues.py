"""The queue names, from the seed design, and their broker declarations.

Names stay exactly as `../shared/seed/` gives them. Every queue is durable and
bound to one durable direct exchange, ``wa``, under its own name as routing key.
Whatever the seed topic, this module is the only place a queue name is spelled.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from waflow import embedded  # noqa: F401  (registers the embedded:// transport)

if TYPE_CHECKING:
    from waflow.config import Settings

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


def queue(name: str) -> Queue:
    """The kombu declaration of one queue: durable, bound to ``wa`` under its own name."""
    return Queue(name, EXCHANGE, routing_key=name, durable=True)


def declarations() -> list[Queue]:
    """Every queue's declaration."""
    return [queue(name) for name in ALL_QUEUES]


def transport_options(settings: "Settings") -> dict[str, Any]:
    """kombu transport options for the configured broker."""
    if settings.embedded_broker:
        # waflow.embedded (kombu's filesystem transport, atomic writes): one folder shared by the
        # web process and every worker. Absolute paths: kombu's default control folder is relative.
        broker_dir = settings.var_dir / "broker"
        for folder in ("queue", "control", "staging"):  # the transport expects them to exist
            (broker_dir / folder).mkdir(parents=True, exist_ok=True)
        return {
            "staging_folder": str(broker_dir / "staging"),
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "control_folder": str(broker_dir / "control"),
            "store_processed": False,
            # The transport polls; 0.1 s keeps a local stack snappy at negligible cost.
            "polling_interval": 0.1,
        }
    # Publisher confirms: a publish RabbitMQ refuses raises instead of vanishing.
    return {"confirm_publish": True}
