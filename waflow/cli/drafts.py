"""``flask --app wsgi drafts ...``: everything the lawyers' dashboard will do with drafts, from a terminal.

Every command calls the same plain function the dashboard calls (``waflow.drafts.decisions``,
``queries``, ``audit``). ``--json`` prints one JSON document for scripts. A refused decision (stale,
already decided, outside the 24-hour window, an unknown or deactivated user ...) exits 1 with a
message saying why; with ``--json`` the document is ``{"ok": false, "error": CODE, "message": ...}``.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import click
import requests
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from waflow import whatsapp
from waflow.db import transaction
from waflow.drafts import audit as auditing, decisions, publish, queries
from waflow.drafts.errors import REFUSALS, NotFound, OutsideWindow
from waflow.models import DRAFT_STATUSES, REJECT_REASONS, OutboundMessage

logger = logging.getLogger(__name__)


@click.group("drafts", cls=AppGroup)
def drafts_group() -> None:
    """AI reply drafts: list, show, approve, reject, write by hand, redraft, audit."""


def _emit(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, default=str))


def _refused(exc: Exception, as_json: bool) -> None:
    """Say why a decision was refused, and exit 1."""
    if as_json:
        _emit({"ok": False, "error": getattr(exc, "code", "refused"), "message": str(exc)})
        raise SystemExit(1)
    message = str(exc)
    if isinstance(exc, OutsideWindow):
        message += _template_offer()
    raise click.ClickException(message)


def _template_offer() -> str:
    """The account's approved templates, to choose from outside the window (best effort: Meta may be away)."""
    settings = current_app.config["WAFLOW_SETTINGS"]
    if not settings.waba_id:
        return ""
    try:
        found = whatsapp.approved_templates(whatsapp.Client(settings.whatsapp_api_url, settings.access_token),
                                            settings.waba_id)
    except (requests.RequestException, ValueError) as exc:
        return f"\n(the approved templates could not be listed: {type(exc).__name__})"
    lines = [f"  --template {t.name} --language {t.language}" + " --param P" * t.parameters for t in found]
    return "\napproved templates:\n" + "\n".join(lines) if lines else ""


def _summary(d: dict[str, Any]) -> str:
    flags = ",".join(d["flags"]) or "-"
    send = f" send={d['send']['state']}" if d["send"] else ""
    preview = (d["text"] or d["error"] or "").replace("\n", " ")
    preview = preview[:60] + ("…" if len(preview) > 60 else "")
    return (f"draft {d['id']}  conversation {d['conversation_id']}  {d['wa_id'] or d['user_id']}  {d['status']}"
            f"  {d['language'] or '-'}  flags={flags}  {d['drafter'] or '-'}  answers={len(d['answers'])}{send}"
            f"  {preview}")


@drafts_group.command("list")
@click.option("--status", type=click.Choice(DRAFT_STATUSES), help="Only drafts in this status.")
@click.option("--conversation", "conversation_id", type=int, help="Only this conversation's drafts.")
@click.option("--limit", default=queries.LIST_LIMIT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_drafts(status: str | None, conversation_id: int | None, limit: int, as_json: bool) -> None:
    """The newest drafts first."""
    with transaction() as conn:
        found = queries.list_drafts(conn, status=status, conversation_id=conversation_id, limit=limit)
    if as_json:
        _emit(found)
        return
    if not found:
        click.echo("no drafts" + (f" {status}" if status else ""))
    for d in found:
        click.echo(_summary(d))


@drafts_group.command("show")
@click.argument("draft_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def show(draft_id: int, as_json: bool) -> None:
    """One draft: its words, what it answers, how it was made, and where its send stands."""
    with transaction() as conn:
        d = queries.show_draft(conn, draft_id)
    if d is None:
        _refused(NotFound(f"no draft {draft_id}"), as_json)
        return
    if as_json:
        _emit(d)
        return
    click.echo(_summary(d))
    sources = ", ".join(f"{s['entry_id']} ({s['score']:.2f})" for s in d["sources"]) or "-"
    click.echo(f"made by {d['drafter'] or '-'} {d['model'] or ''} prompt {d['prompt_version'] or '-'}; "
               f"confidence {d['confidence']}; sources {sources}; {d['latency_ms']} ms")
    if d["fallback_reason"]:
        click.echo(f"fell back to the offline drafter: {d['fallback_reason']}")
    if d["error"]:
        click.echo(f"drafting failed: {d['error']}")
    if d["decision"]:
        dec = d["decision"]
        click.echo(f"decided: {dec['action']} by {dec['by']} via {dec['via']} at {dec['at']}"
                   + (f" ({dec['reason']})" if dec["reason"] else ""))
    if d["send"]:
        s = d["send"]
        click.echo(f"send: outbound {s['outbound_id']} {s['state']}" + (f" {s['wamid']}" if s["wamid"] else "")
                   + (f" #{s['error_code']}" if s["error_code"] is not None else ""))
    click.echo("answers: " + ", ".join(d["answers"]))
    click.echo("")
    click.echo(d["text"] or "(no text)")


def _hand_over(result: decisions.Approved, as_json: bool, wait: float) -> None:
    """After the commit: publish the approval to core, and say (or wait for) where its send stands."""
    published = True
    try:
        publish.approved(result.approval_id)
    except Exception as exc:  # noqa: BLE001 - the approval is committed: the drafter's sweep publishes it again
        published = False
        logger.warning("drafts: approval %s not published now (%s); the sweep will", result.approval_id,
                       type(exc).__name__)
    state = _wait_send(result.approval_id, wait) if wait > 0 else None
    if as_json:
        _emit({"ok": True, "approval_id": result.approval_id, "draft_id": result.draft_id,
               "conversation_id": result.conversation_id, "action": result.action, "by": result.by,
               "published": published, "send": state})
        return
    what = f"draft {result.draft_id}" if result.draft_id else f"a reply for conversation {result.conversation_id}"
    click.echo(f"{what} approved by {result.by} ({result.action}): approval {result.approval_id}")
    if not published:
        click.echo("the broker did not take it now: the drafter's sweep hands it to the sender within a minute",
                   err=True)
    if state is not None:
        click.echo(f"send: {state}")


def _wait_send(approval_id: int, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        with transaction() as conn:
            row = conn.execute(sa.select(OutboundMessage.id, OutboundMessage.status, OutboundMessage.wamid,
                                         OutboundMessage.error_code)
                               .where(OutboundMessage.approval_id == approval_id)).first()
        if row is not None and row.status not in ("queued", "sending"):
            return f"outbound {row.id} {row.status}" + (f" ({row.wamid})" if row.wamid else "") + \
                (f" #{row.error_code}" if row.error_code is not None else "")
        if time.monotonic() > deadline:
            return f"outbound {row.id} still {row.status}" if row else "not handed to the sender yet"
        time.sleep(0.2)


@drafts_group.command("approve")
@click.argument("draft_id", type=int)
@click.option("--by", "by", required=True, help="The approving lawyer's email.")
@click.option("--text", help="Send these words instead of the draft's (edit, then approve).")
@click.option("--template", help="Send this approved template instead (outside the 24-hour window, the only way).")
@click.option("--param", "params", multiple=True, help="The template's body parameters, in order.")
@click.option("--language", help="The template's language code (default: from the draft's language).")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for Meta's answer.")
@click.option("--json", "as_json", is_flag=True)
def approve(draft_id, by, text, template, params, language, wait, as_json) -> None:
    """Approve DRAFT_ID: its words, your --text, or a --template; then it is sent."""
    if params and not template:
        raise click.UsageError("--param goes with --template")
    try:
        with transaction() as conn:
            result = decisions.approve(conn, draft_id, by, "cli", text=text, template=template, params=params,
                                       language=language)
    except REFUSALS as exc:
        _refused(exc, as_json)
        return
    _hand_over(result, as_json, wait)


@drafts_group.command("reject")
@click.argument("draft_id", type=int)
@click.option("--by", "by", required=True, help="The rejecting lawyer's email.")
@click.option("--reason", type=click.Choice(REJECT_REASONS), required=True)
@click.option("--note", help="Why, in words (required with --reason other).")
@click.option("--json", "as_json", is_flag=True)
def reject(draft_id, by, reason, note, as_json) -> None:
    """Reject DRAFT_ID with a reason; nothing is sent."""
    try:
        with transaction() as conn:
            result = decisions.reject(conn, draft_id, by, "cli", reason=reason, note=note)
    except REFUSALS as exc:
        _refused(exc, as_json)
        return
    if as_json:
        _emit({"ok": True, "draft_id": result.draft_id, "decision_id": result.decision_id, "reason": result.reason,
               "by": result.by})
    else:
        click.echo(f"draft {result.draft_id} rejected by {result.by} ({result.reason})")


@drafts_group.command("write")
@click.argument("conversation_id", type=int)
@click.option("--by", "by", required=True, help="The writing lawyer's email.")
@click.option("--text", required=True, help="The reply, in your own words.")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for Meta's answer.")
@click.option("--json", "as_json", is_flag=True)
def write(conversation_id, by, text, wait, as_json) -> None:
    """Reply to CONVERSATION_ID in your own words (its open draft goes stale)."""
    try:
        with transaction() as conn:
            result = decisions.write_by_hand(conn, conversation_id, by, "cli", text=text)
    except REFUSALS as exc:
        _refused(exc, as_json)
        return
    _hand_over(result, as_json, wait)


@drafts_group.command("redraft")
@click.argument("conversation_id", type=int)
@click.option("--by", "by", help="Who asks (recorded in the log).")
@click.option("--json", "as_json", is_flag=True)
def redraft(conversation_id, by, as_json) -> None:
    """Ask for a new draft of CONVERSATION_ID's reply (its open draft is superseded)."""
    try:
        with transaction() as conn:
            requested = decisions.redraft(conn, conversation_id, by)
    except REFUSALS as exc:
        _refused(exc, as_json)
        return
    publish.request(requested)
    if as_json:
        _emit({"ok": True, "conversation_id": conversation_id, "request_id": requested.request_id})
    else:
        click.echo(f"a new draft for conversation {conversation_id} is on its way (request {requested.request_id})")


@drafts_group.command("audit")
@click.option("--json", "as_json", is_flag=True)
def audit(as_json: bool) -> None:
    """List every approved reply whose words, as sent to Meta, are not the approved ones (there should be none)."""
    with transaction() as conn:
        findings = auditing.audit(conn)
    if as_json:
        _emit([f.as_dict() for f in findings])
    elif not findings:
        click.echo("audit: every send that carries out an approval sent exactly the approved words")
    else:
        for f in findings:
            click.echo(f"outbound {f.outbound_id} (approval {f.approval_id}, draft {f.draft_id}, {f.status}): "
                       f"{f.reason}")
    if findings:
        raise SystemExit(1)


@drafts_group.command("knowledge")
def knowledge() -> None:
    """Check the knowledge base the drafter reads (WAFLOW_KNOWLEDGE_DIR): entries, and each problem's file and line."""
    from waflow.drafting import KnowledgeBase

    settings = current_app.config["WAFLOW_SETTINGS"]
    loaded = KnowledgeBase(settings.knowledge_dir).current()
    click.echo(f"{settings.knowledge_dir}: {len(loaded.entries)} entries, {len(loaded.errors)} problem(s)")
    for error in loaded.errors:
        click.echo(f"  {error}")
    if loaded.errors:
        raise SystemExit(1)
