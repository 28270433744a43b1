"""Database tables: contacts, conversations, messages, statuses, media, raw payloads, dead letters,
outbound messages, and the AI reply drafts with their users, approvals, decisions and change log.

Every table a stage writes has a unique key from Meta's data, so that a
redelivered webhook or task leaves one row: the database judges "already done".
The schema itself is owned by the Alembic migrations in ``migrations/``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapped, mapped_column

from waflow.db import Base

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
intpk = Annotated[int, mapped_column(BigId, primary_key=True, autoincrement=True)]
tstamp = Annotated[datetime, mapped_column(sa.DateTime(timezone=True))]
json_doc = Annotated[dict[str, Any], mapped_column()]
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
json_list = Annotated[list[Any], mapped_column(JSON_VALUE)]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


created_at = Annotated[datetime, mapped_column(sa.DateTime(timezone=True), default=utcnow)]

# Delivery statuses in the order they can only move forward. `failed` outranks
# sent and delivered, never read or played, so the fold is order-independent:
# whatever order Meta delivers the webhooks in, the final status is the same.
STATUS_RANK = {"sent": 1, "delivered": 2, "failed": 3, "read": 4, "played": 5}


def status_rank(column: Any) -> Any:
    """A status column's rank (STATUS_RANK) in SQL; 0 for a status without one."""
    return sa.case(*((column == name, rank) for name, rank in STATUS_RANK.items()), else_=0)


class WebhookPayload(Base):
    """Every distinct webhook body exactly as Meta signed it, for audit."""

    __tablename__ = "webhook_payloads"

    id: Mapped[intpk]
    sha256: Mapped[str] = mapped_column(sa.Text, unique=True)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    size: Mapped[int]
    received_at: Mapped[tstamp]
    created_at: Mapped[created_at]


class Contact(Base):
    """A WhatsApp user, known by phone-based ``wa_id``, business-scoped ``user_id``, or both."""

    __tablename__ = "contacts"
    __table_args__ = (sa.CheckConstraint("wa_id IS NOT NULL OR user_id IS NOT NULL", name="contact_has_an_id"),)

    id: Mapped[intpk]
    wa_id: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    user_id: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    parent_user_id: Mapped[str | None] = mapped_column(sa.Text)
    name: Mapped[str | None] = mapped_column(sa.Text)
    username: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[created_at]
    updated_at: Mapped[created_at]


class Conversation(Base):
    """One contact talking to one of the firm's business numbers.

    The inbox's columns (``waflow.conversation_state``) are kept in the transactions that store the
    messages: core for a client's message, the sender for a reply Meta accepted, the drafter for an urgent
    draft. ``waiting_since`` is when the client's oldest message still without a reply from a person (or an
    approved draft) was sent, None when nobody waits; ``urgent`` is only ever true while someone waits.
    ``inbound_count`` counts the client's messages, so a lawyer's unread count is one subtraction
    (``ConversationRead``). Who has it is its ``Assignment``."""

    __tablename__ = "conversations"
    __table_args__ = (
        sa.UniqueConstraint("contact_id", "phone_number_id", name="conversation_per_number"),
        # The inbox's order (urgent first, then the longest wait, then the newest message): walked, never sorted.
        sa.Index("ix_conversations_inbox", sa.desc("urgent"), "waiting_since", sa.desc("last_message_at"),
                 sa.desc("id")),
    )

    id: Mapped[intpk]
    contact_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("contacts.id"))
    phone_number_id: Mapped[str] = mapped_column(sa.Text)
    display_phone_number: Mapped[str | None] = mapped_column(sa.Text)
    # Opens the 24-hour customer-service window; the outbound stage checks it.
    last_inbound_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]
    waiting_since: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    urgent: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    last_message_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_message_direction: Mapped[str | None] = mapped_column(sa.Text)
    last_message_type: Mapped[str | None] = mapped_column(sa.Text)
    # The first PREVIEW_LENGTH characters of the last message's text or caption (client content).
    last_message_preview: Mapped[str | None] = mapped_column(sa.Text)
    inbound_count: Mapped[int] = mapped_column(default=0, server_default="0")


class Message(Base):
    """A message in a conversation; ``wamid`` is Meta's id and the dedupe key."""

    __tablename__ = "messages"
    # A conversation's messages in the order they were sent: the dashboard reads a page of them by keyset
    # (sent_at, id), from the newest back, without counting the rest.
    __table_args__ = (sa.Index("ix_messages_conversation_sent", "conversation_id", "sent_at", "id"),)

    id: Mapped[intpk]
    wamid: Mapped[str] = mapped_column(sa.Text, unique=True)
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"))
    contact_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("contacts.id"))
    phone_number_id: Mapped[str] = mapped_column(sa.Text)
    direction: Mapped[str] = mapped_column(sa.Text)  # inbound | outbound
    type: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[str | None] = mapped_column(sa.Text)
    sent_at: Mapped[tstamp]
    received_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    context_wamid: Mapped[str | None] = mapped_column(sa.Text)
    content: Mapped[json_doc]
    # Current delivery status of an outbound message (see STATUS_RANK).
    status: Mapped[str | None] = mapped_column(sa.Text)
    status_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]


class MessageStatus(Base):
    """Every status webhook, kept as history even for a wamid waflow has not seen."""

    __tablename__ = "message_statuses"
    __table_args__ = (sa.UniqueConstraint("wamid", "status", name="one_row_per_status"),)

    id: Mapped[intpk]
    wamid: Mapped[str] = mapped_column(sa.Text, index=True)
    status: Mapped[str] = mapped_column(sa.Text)
    timestamp: Mapped[tstamp]
    phone_number_id: Mapped[str | None] = mapped_column(sa.Text)
    recipient_id: Mapped[str | None] = mapped_column(sa.Text)
    recipient_user_id: Mapped[str | None] = mapped_column(sa.Text)
    biz_opaque_callback_data: Mapped[str | None] = mapped_column(sa.Text)
    error_code: Mapped[int | None]
    content: Mapped[json_doc]
    received_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]


class Media(Base):
    """A media file: an attachment a client sent (``inbound``), or a file waflow sends (``outbound``).

    An inbound row is keyed by Meta's media id and moves from ``pending`` to ``stored`` (the bytes
    durably in the media store, their SHA-256 checked against Meta's) or ``failed`` (``error`` says
    why); retention moves a stored one to ``deleted``. ``storage_key`` names the file in the store: it
    is derived from the content's SHA-256, so rows of the same bytes share one file. An outbound row
    is ``stored`` from the start; the sender uploads it and keeps Meta's id on its outbound message."""

    __tablename__ = "media"
    __table_args__ = (sa.Index("ix_media_status_created", "status", "created_at"),)

    id: Mapped[intpk]
    media_id: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    wamid: Mapped[str | None] = mapped_column(sa.Text, index=True)
    direction: Mapped[str] = mapped_column(sa.Text, default="inbound", server_default="inbound")
    phone_number_id: Mapped[str | None] = mapped_column(sa.Text)
    kind: Mapped[str] = mapped_column(sa.Text)
    # The type Meta declared (inbound) or that waflow sends the file as (outbound), and the type its
    # bytes turned out to be (puremagic): the two can differ, and only the second says what it is.
    mime_type: Mapped[str | None] = mapped_column(sa.Text)
    detected_mime_type: Mapped[str | None] = mapped_column(sa.Text)
    # Meta's SHA-256 as the webhook gave it (base64 or hex), and the hex SHA-256 of the stored bytes.
    declared_sha256: Mapped[str | None] = mapped_column(sa.Text)
    sha256: Mapped[str | None] = mapped_column(sa.Text)
    size: Mapped[int | None] = mapped_column(BigId)
    filename: Mapped[str | None] = mapped_column(sa.Text)
    url: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, default="pending")  # pending | stored | failed | deleted
    storage_key: Mapped[str | None] = mapped_column(sa.Text, index=True)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class WebhookEvent(Base):
    """Any other webhook field (account, template, calls, ...) and payload-level errors."""

    __tablename__ = "webhook_events"

    id: Mapped[intpk]
    event_id: Mapped[str] = mapped_column(sa.Text, unique=True)
    kind: Mapped[str] = mapped_column(sa.Text)  # field | error
    field: Mapped[str] = mapped_column(sa.Text, index=True)
    waba_id: Mapped[str | None] = mapped_column(sa.Text)
    phone_number_id: Mapped[str | None] = mapped_column(sa.Text)
    content: Mapped[json_doc]
    received_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]


class DeadLetter(Base):
    """What failed for good, kept for a person to inspect and replay (``waflow.dlq``).

    One row per failed task run (``key``: its task id), or per input the ingestor set aside
    (``key``: the body's SHA-256, with the update's position for a single update), which a
    redelivery or a replay that fails again updates. The failure handler's record and the
    broker's dead-lettered copy of the same message merge into the one row. Holds client content:
    see docs/reliability.md for who may read it and how long it is kept."""

    __tablename__ = "dead_letters"

    id: Mapped[intpk]
    key: Mapped[str] = mapped_column(sa.Text, unique=True)
    queue: Mapped[str] = mapped_column(sa.Text, index=True)
    task: Mapped[str | None] = mapped_column(sa.Text)
    task_id: Mapped[str | None] = mapped_column(sa.Text)
    args: Mapped[list[Any] | None] = mapped_column(sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))
    kwargs: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))
    error_type: Mapped[str | None] = mapped_column(sa.Text, index=True)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    detail: Mapped[str | None] = mapped_column(sa.Text)
    retries: Mapped[int | None]
    first_failed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_failed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    received_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # handler: the failure handler's record; broker: RabbitMQ dead-lettered the message itself
    # (broker_reason: rejected, delivery_limit, ...); unknown: a message waflow did not write;
    # unstorable: one the database refused as it came, kept escaped in `raw`.
    source: Mapped[str] = mapped_column(sa.Text)
    broker_reason: Mapped[str | None] = mapped_column(sa.Text)
    raw: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, default="dead")  # dead | replayed
    replay_count: Mapped[int] = mapped_column(default=0)
    recorded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)


class DeadLetterReplay(Base):
    """One replay of a dead letter: when, by whom, and the task id it was sent under."""

    __tablename__ = "dead_letter_replays"

    id: Mapped[intpk]
    dead_letter_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("dead_letters.id", ondelete="CASCADE"),
                                                index=True)
    task_id: Mapped[str] = mapped_column(sa.Text)
    queue: Mapped[str] = mapped_column(sa.Text)
    replayed_by: Mapped[str] = mapped_column(sa.Text)
    replayed_at: Mapped[created_at]


class Redelivery(Base):
    """How often the broker redelivered one task message (``StageTask`` counts it), so that a
    message that keeps killing its worker is dead-lettered instead of run forever."""

    __tablename__ = "redeliveries"

    task_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    count: Mapped[int]
    last_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)


# Where an outbound message stands. `sending` is set just before the call to Meta; a message
# found `sending` after a crash is `in_doubt` (Meta has no idempotency key) and is never sent
# again automatically: status webhooks (biz_opaque_callback_data) or a person settle it.
OUTBOUND_STATUSES = ("queued", "sending", "accepted", "failed", "in_doubt", "cancelled")
OUTBOUND_FINAL = ("accepted", "failed", "cancelled", "in_doubt")


class Broadcast(Base):
    """One template sent to a list of recipients, under a name an operator can resume or cancel."""

    __tablename__ = "broadcasts"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    # Unique for good (a uuid), unlike the row id, which a recreated database hands out again: the
    # send limiter's record of cancelled broadcasts outlives any database (waflow.limiter).
    token: Mapped[str] = mapped_column(sa.Text, unique=True)
    template: Mapped[str] = mapped_column(sa.Text)
    language: Mapped[str] = mapped_column(sa.Text)
    phone_number_id: Mapped[str] = mapped_column(sa.Text)
    total: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.Text, default="running")  # running | cancelled
    created_at: Mapped[created_at]
    cancelled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class OutboundMessage(Base):
    """One command to send a message: its request, where it stands, and Meta's answer.

    ``idempotency_key`` makes a repeated command a no-op; ``wamid`` is set once Meta accepted
    it (the message then also has its row in ``messages``, where status webhooks move it)."""

    __tablename__ = "outbound_messages"
    __table_args__ = (sa.Index("ix_outbound_recipient_order", "phone_number_id", "recipient", "id"),
                      sa.Index("ix_outbound_broadcast_status", "broadcast_id", "status"))

    id: Mapped[intpk]
    idempotency_key: Mapped[str] = mapped_column(sa.Text, unique=True)
    phone_number_id: Mapped[str] = mapped_column(sa.Text)
    # As given: a phone number goes to Meta as `to`, a business-scoped user id as `recipient`.
    recipient: Mapped[str] = mapped_column(sa.Text)
    lane: Mapped[str] = mapped_column(sa.Text)  # reply | broadcast
    kind: Mapped[str] = mapped_column(sa.Text)
    # A file to send (a media row of ours, stored), and Meta's id for it once uploaded: recorded so
    # that a retry after a successful upload sends by that id instead of uploading again.
    media_file_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("media.id"))
    media_id: Mapped[str | None] = mapped_column(sa.Text)
    # Meta's request body (without the callback data added at send time), and its words.
    payload: Mapped[json_doc]
    text: Mapped[str | None] = mapped_column(sa.Text)
    broadcast_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("broadcasts.id"))
    status: Mapped[str] = mapped_column(sa.Text, default="queued", index=True)
    # Its task exited because an earlier message to the same recipient was still on its way;
    # that message's outcome sends this one on (waflow.outbound).
    parked: Mapped[bool] = mapped_column(default=False)
    wamid: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    # A lawyer's approved reply (waflow.drafts): the sender sends it only while its words are the approval's.
    approval_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("draft_approvals.id", name="outbound_messages_approval_id_fkey"), unique=True)
    # For such a send: the sha256 of the words (compose.approved_text) of the body posted to Meta at its
    # latest attempt, the sender's own record for `flask --app wsgi drafts audit`.
    posted_sha256: Mapped[str | None] = mapped_column(sa.Text)
    error_code: Mapped[int | None]
    error_title: Mapped[str | None] = mapped_column(sa.Text)
    error_details: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    pair_attempts: Mapped[int] = mapped_column(default=0)
    # The task run that marked it `sending`, and when: a second copy of the task finding it
    # `sending` within the call's time limit leaves it to that run instead of calling it in doubt.
    claimed_by: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When its send task was queued (broadcasts: a resumed broadcast queues only the rest).
    enqueued_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]
    updated_at: Mapped[created_at]
    accepted_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


# --- AI reply drafts (waflow/drafts/) ---------------------------------------------------------------------------

USER_ROLES = ("lawyer", "admin")
USER_LOCALES = ("id", "en")


class User(Base):
    """A person who signs in: a lawyer who decides on drafts, or an admin.

    ``email`` is stored lower-cased, so its unique key is case-insensitive. ``session_epoch`` grows
    when the user is deactivated or their password changes; a session made under an older epoch is
    over (the dashboard keeps the epoch in its session)."""

    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint("role IN ('lawyer', 'admin')", name="user_role"),
                      sa.CheckConstraint("locale IN ('id', 'en')", name="user_locale"),
                      # Stored lower-cased, so the unique key is case-insensitive even for a row written by hand.
                      sa.CheckConstraint("email = lower(email)", name="user_email_lower_case"))

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(sa.Text, unique=True)
    name: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.Text)
    locale: Mapped[str] = mapped_column(sa.Text)
    password_hash: Mapped[str] = mapped_column(sa.Text)  # Argon2id (argon2-cffi's encoded form)
    active: Mapped[bool] = mapped_column(default=True)
    session_epoch: Mapped[int] = mapped_column(default=0)
    is_demo: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[created_at]
    updated_at: Mapped[created_at]
    deactivated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


# A request is `waiting` (its due time still moves with each client message), `drafting` (claimed by a
# drafter), then `done`; `cancelled` when a reply reached the client before it was drafted.
REQUEST_STATUSES = ("waiting", "drafting", "done", "cancelled")


class DraftRequest(Base):
    """A conversation's reply to be drafted once the client has been quiet until ``due_at``.

    At most one request per conversation is `waiting`: each new client message pushes its due time
    and adds itself to it, so lines typed in a row get one draft."""

    __tablename__ = "draft_requests"
    __table_args__ = (
        sa.Index("one_waiting_request_per_conversation", "conversation_id", unique=True,
                 postgresql_where=sa.text("status = 'waiting'"), sqlite_where=sa.text("status = 'waiting'")),
        # What the sweep looks through. Not on due_at: each client message moves the due time, and an
        # update that touches no indexed column stays on its page (HOT), on core's hot path.
        sa.Index("ix_draft_requests_unfinished", "id", postgresql_where=sa.text("status IN ('waiting', 'drafting')"),
                 sqlite_where=sa.text("status IN ('waiting', 'drafting')")),
    )

    id: Mapped[intpk]
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"))
    status: Mapped[str] = mapped_column(sa.Text, default="waiting")
    due_at: Mapped[tstamp]
    # How many client messages it holds; a drafting task carries the count it was queued for, so only
    # the task queued for the latest message waits for the due time (the earlier ones stand down).
    messages: Mapped[int] = mapped_column(default=0)
    # Who asked for it: core (a client message) or a person (`redraft`).
    origin: Mapped[str] = mapped_column(sa.Text, default="client")
    claimed_by: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When a reply reached the client that answers its messages (an approval, a reply by hand or `send`).
    answered_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    created_at: Mapped[created_at]
    updated_at: Mapped[created_at]


class DraftRequestMessage(Base):
    """A client message a draft request answers."""

    __tablename__ = "draft_request_messages"

    request_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("draft_requests.id"), primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("messages.id"), primary_key=True, index=True)


# pending (being drafted) -> ready | failed -> approved | rejected | superseded (pending too may be superseded).
DRAFT_STATUSES = ("pending", "ready", "failed", "approved", "rejected", "superseded")
OPEN_DRAFT_STATUSES = ("pending", "ready", "failed")


class Draft(Base):
    """One reply draft: what it answers, how it was made, its words, and where it stands.

    Once approved, its send's state is read from the send itself (``outbound_messages`` and the
    message's status webhooks), never copied here."""

    __tablename__ = "drafts"
    __table_args__ = (
        sa.Index("one_open_draft_per_conversation", "conversation_id", unique=True,
                 postgresql_where=sa.text("status IN ('pending', 'ready', 'failed')"),
                 sqlite_where=sa.text("status IN ('pending', 'ready', 'failed')")),
        sa.Index("ix_drafts_conversation", "conversation_id", "id"),
    )

    id: Mapped[intpk]
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"))
    request_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("draft_requests.id"), unique=True)
    status: Mapped[str] = mapped_column(sa.Text, default="pending", index=True)
    # Why it was superseded: client_wrote, replied (a reply reached the client another way), redraft.
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    # The wamids of the client messages it answers, oldest first.
    answers: Mapped[json_list]
    drafter: Mapped[str | None] = mapped_column(sa.Text)  # offline | chat: whose text it is
    model: Mapped[str | None] = mapped_column(sa.Text)
    prompt_version: Mapped[str | None] = mapped_column(sa.Text)
    # The knowledge-base entries used, with their retrieval scores: [{"entry_id", "score"}].
    sources: Mapped[list[Any] | None] = mapped_column(JSON_VALUE)
    text: Mapped[str | None] = mapped_column(sa.Text)
    language: Mapped[str | None] = mapped_column(sa.Text)
    flags: Mapped[list[Any] | None] = mapped_column(JSON_VALUE)
    confidence: Mapped[float | None]
    latency_ms: Mapped[int | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    finish_reason: Mapped[str | None] = mapped_column(sa.Text)
    fallback_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Why drafting failed (an error's type, never client text).
    error: Mapped[str | None] = mapped_column(sa.Text)
    claimed_by: Mapped[str | None] = mapped_column(sa.Text)  # the drafting task run that holds it pending
    created_at: Mapped[created_at]
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # When the announcer recorded it in the change log (wa.ai.draft.created): a sweep announces it again if not.
    announced_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class DraftApproval(Base):
    """A person's approval of the exact words to send to a conversation, and the outbox of
    ``wa.ai.draft.approved``: core hands it to the sender (``handed_at``), and an approval not handed
    over is published again. ``text`` is a text's words, or a template's canonical form
    (``compose.approved_text``); ``sha256`` is its digest, which the sender checks before it sends.
    The database refuses any change to what was approved."""

    __tablename__ = "draft_approvals"

    id: Mapped[intpk]
    draft_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("drafts.id"), unique=True)
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"), index=True)
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"))
    via: Mapped[str] = mapped_column(sa.Text)  # cli | dashboard
    kind: Mapped[str] = mapped_column(sa.Text)  # text | template
    text: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[created_at]
    handed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    # Why core refused to hand it to the sender (its text no longer matches its digest).
    refused: Mapped[str | None] = mapped_column(sa.Text)


DECISION_ACTIONS = ("approve", "edit", "template", "reject", "write")
REJECT_REASONS = ("wrong_facts", "wrong_tone", "needs_lawyer", "other")


class DraftDecision(Base):
    """The audit log: one row per decision a person made on a conversation's reply, never changed.

    action: approve (as drafted), edit (edited, then approved), template (an approved template
    instead), reject (with a reason code), write (a reply written by hand)."""

    __tablename__ = "draft_decisions"

    id: Mapped[intpk]
    draft_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("drafts.id"), index=True)
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"), index=True)
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"), index=True)
    via: Mapped[str] = mapped_column(sa.Text)
    action: Mapped[str] = mapped_column(sa.Text)
    reason: Mapped[str | None] = mapped_column(sa.Text)
    note: Mapped[str | None] = mapped_column(sa.Text)
    original_text: Mapped[str | None] = mapped_column(sa.Text)
    final_text: Mapped[str | None] = mapped_column(sa.Text)
    # Levenshtein distance between the original and the final text (rapidfuzz), in characters.
    edit_distance: Mapped[int | None]
    approval_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("draft_approvals.id"))
    decided_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)


class Change(Base):
    """The change log (``waflow.changelog``): what changed, in order, for pages that ask "what changed
    since N". ``key`` makes a repeated record (a redelivered task) one row."""

    __tablename__ = "changes"

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(sa.Text)
    conversation_id: Mapped[int | None] = mapped_column(BigId)
    draft_id: Mapped[int | None] = mapped_column(BigId)
    message_id: Mapped[int | None] = mapped_column(BigId)
    key: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    created_at: Mapped[created_at]


class Assignment(Base):
    """Who has a conversation: the lawyer who last acted on it (started an edit or a reply, decided), at
    ``assigned_at``. Theirs until they let it go, or until a quiet while has passed since then (the
    dashboard's ``claims.QUIET``); a row past that is nobody's, and the next lawyer to act takes it."""

    __tablename__ = "assignments"

    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"), index=True)
    assigned_at: Mapped[tstamp]


class ConversationRead(Base):
    """How many of a conversation's client messages a lawyer has seen: their unread count is the
    conversation's ``inbound_count`` less ``inbound_seen``."""

    __tablename__ = "conversation_reads"

    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"), primary_key=True)
    inbound_seen: Mapped[int] = mapped_column(default=0)
    read_at: Mapped[created_at]


PRESENCE_STATES = ("viewing", "editing")


class Presence(Base):
    """Who has a conversation open on the dashboard, and whether they are writing in it: refreshed by the
    page every so often (throttled), and shown while ``seen_at`` is recent."""

    __tablename__ = "presence"
    __table_args__ = (sa.CheckConstraint("state IN ('viewing', 'editing')", name="presence_state"),)

    conversation_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("conversations.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("users.id"), primary_key=True)
    state: Mapped[str] = mapped_column(sa.Text)
    seen_at: Mapped[tstamp]
