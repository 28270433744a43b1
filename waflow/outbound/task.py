"""The send task: one attempt at one message, at most once.

``send_message`` (wire name ``waflow.outbound.send_message``, consumed from both lanes)
claims the message (``claim``), sends it at its slot (``POST /{phone_number_id}/messages``,
with our id in ``biz_opaque_callback_data`` so status webhooks can settle a doubt), and
settles Meta's answer (``settle``). It carries the design card's ``rate_limit="80/s"``; the
workers' paced consumer (``waflow.consumer``) makes that one limit per phone number across
every sender, shared through ``waflow.limiter``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa

from waflow import limiter, mediastore, queues, tasks, whatsapp_media
from waflow.config import settings
from waflow.db import autocommit, get_engine, transaction
from waflow.outbound import attach
from waflow.outbound.claim import Defer, Skip, Upload, claim, claim_at_once, unclaim
from waflow.outbound.commands import LANES, SEND_TASK, Queued, enqueue
from waflow.outbound.operator import reopen
from waflow.outbound.settle import accept_at_once, settle
from waflow.tasks import MAX_COUNTDOWN, TransientError, stage_task
from waflow.whatsapp import Client

logger = logging.getLogger(__name__)

_client: Client | None = None


def client() -> Client:
    """This process's Graph client (one connection pool, shared by its threads)."""
    global _client
    if _client is None:
        _client = Client(settings.whatsapp_api_url, settings.access_token)
    return _client


@dataclass
class Wiring:
    """What a send attempt talks to: by default the configured database, the shared limiter store,
    this process's Graph client and the broker, and for a file to upload, Meta's media endpoints and
    the media store (looked up only when a message has a file); tests pass their own."""

    database_url: str | None = None
    store: limiter.Store | None = None
    client: Client | None = None
    dispatch: Callable[..., Any] | None = None
    media: whatsapp_media.MediaClient | None = None
    files: mediastore.Store | None = None

    def resolved(self) -> "Wiring":
        return Wiring(self.database_url, self.store or limiter.default_store(), self.client or client(),
                      self.dispatch or tasks.dispatch, self.media, self.files)


def deliver(outbound_id: int, request: Any, retries: int, max_retries: int, wiring: Wiring | None = None) -> str:
    """Claim, send at the slot, settle: one attempt at one message. Returns where it stands."""
    wiring = (wiring or Wiring()).resolved()
    store, url = wiring.store, wiring.database_url
    task_id = getattr(request, "id", None)
    one_statement = get_engine(url).dialect.name == "postgresql"
    step = None
    if one_statement:
        with autocommit(url) as conn:
            step = claim_at_once(conn, outbound_id, store, task_id)
    if step is None:
        with transaction(url) as conn:
            step = claim(conn, outbound_id, store, task_id)
    if isinstance(step, Upload):
        outcome, woken, reason = attach.upload(step, wiring.media or whatsapp_media.default_client(),
                                               wiring.files or mediastore.default_store(), url,
                                               last_attempt=retries >= max_retries)
        enqueue(woken, dispatch=wiring.dispatch)
        if outcome == "retry":
            raise TransientError(f"outbound {outbound_id}: {reason}")
        if outcome == "failed":
            logger.warning("send_message: outbound %s failed before its send: its file was not uploaded", outbound_id)
            return "failed"
        with transaction(url) as conn:  # uploaded: claimed again, now to send by Meta's id
            step = claim(conn, outbound_id, store, task_id)
        if isinstance(step, Upload):
            raise TransientError(f"outbound {outbound_id}: its upload was not recorded")
    if isinstance(step, Defer):
        _again(wiring, request, outbound_id, step.seconds, retries)
        return "deferred"
    if isinstance(step, Skip):
        enqueue(step.following, dispatch=wiring.dispatch)
        return step.reason
    try:
        # The wait for the slot runs last, once the request is ready to write.
        answer = wiring.client.send(step.phone_number_id, step.body, before=lambda: limiter.wait_for_slot(request))
    except limiter.LimiterUnavailable as exc:
        # Nothing went to Meta: hand the message back rather than leave it `sending` (in doubt).
        with transaction(url) as conn:
            unclaim(conn, step)
        raise TransientError(f"outbound {outbound_id}: no send slot ({exc})") from exc
    settled = None
    if one_statement:
        with autocommit(url) as conn:
            settled = accept_at_once(conn, step, answer)
    if settled is None:
        with transaction(url) as conn:
            _relaxed_commit(conn)
            settled = settle(conn, step, answer, last_attempt=retries >= max_retries)
    if settled.pause_number:
        store.pause(step.phone_number_id, settled.pause_number)
    if settled.pair_wait:
        store.pair_penalize(step.phone_number_id, step.row.recipient, settled.pair_wait)
    if settled.again_in is not None:
        _again(wiring, request, outbound_id, settled.again_in, retries)
    enqueue(settled.following, dispatch=wiring.dispatch)
    if settled.retry:
        raise TransientError(f"outbound {outbound_id}: {answer.reason}")
    logger.log(logging.WARNING if settled.status != "accepted" else logging.DEBUG,
               "send_message: outbound %s %s (%s)", outbound_id, settled.status, answer.reason)
    return settled.status


def _relaxed_commit(conn: sa.Connection) -> None:
    """Let this transaction's commit return before its WAL record is flushed (PostgreSQL only).

    Only for recording Meta's answer: the mark that matters for "never twice", ``sending``, was
    committed durably before the call. Should PostgreSQL crash in the few milliseconds before the
    flush, the message is found ``sending`` and left in doubt (settled by its status webhook), never
    sent again. In exchange a sender's commits stop queueing behind the WAL flushes of the inbound
    stages' commits on the same server (one fsync per send instead of two)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))


def _again(wiring: Wiring, request: Any, outbound_id: int, seconds: float, retries: int) -> None:
    """Put the message back on its lane after ``seconds``, keeping its retry count."""
    headers = dict(request.headers or {}) if request is not None else {}
    lane = headers.get("lane", "reply")
    queued = Queued(outbound_id, lane if lane in LANES else "reply",
                    headers.get("phone_number_id") or settings.phone_number_id,
                    headers.get("broadcast_id"))
    enqueue([queued], countdown=min(MAX_COUNTDOWN, seconds) or None, retries=retries, dispatch=wiring.dispatch)


# The design card's rate_limit="80/s" (WHATSAPP_SEND_RATE's default): the paced consumer makes it the
# number's limit across every worker, and a rate stored with `flask --app wsgi send-rate` overrides it.
@stage_task(name=SEND_TASK, queue=queues.OUTGOING_COMMAND, rate_limit=f"{settings.send_rate}/s",
            prepare_replay=reopen)
def send_message(outbound_id: int) -> str:
    """Send one outbound message to Meta, at most once."""
    request = send_message.request
    return deliver(outbound_id, request, request.retries or 0, send_message.max_retries)
