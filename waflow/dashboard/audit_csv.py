"""The audit page's CSV export: the filtered decisions, one row each, for a spreadsheet.

UTF-8 with a byte-order mark, so Excel reads Indonesian names right; times in the firm's zone, written as
Excel reads a date and time (``2026-03-02 17:30:05``), the zone named in the column's heading. Cells hold
client text, and a spreadsheet runs a cell starting with ``=``, ``+``, ``-`` or ``@`` as a formula (a
client's message ``=HYPERLINK(...)`` would become a link, or worse): such a cell gets a leading ``'``, which
spreadsheets read as "this is text" (``neutralise``; tab and carriage return too, as OWASP advises).

Rows are read a batch at a time, each batch in its own short transaction (``history.page``), and sent as they
are written, so a long export holds neither a transaction nor the whole file.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import gettext as _

from waflow.dashboard import audit_labels as labels
from waflow.drafts import history

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Decisions read per transaction.
BATCH = 500
# How many bytes of CSV to gather before handing them to the server.
CHUNK = 64 * 1024


def neutralise(value: Any) -> Any:
    """A cell as a spreadsheet will not run it (module docstring)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def headings(zone: str) -> list[str]:
    return [_("Decision"), _("Decided at (%(zone)s)", zone=zone), _("Lawyer"), _("Lawyer's email"), _("Via"),
            _("Action"), _("Reason"), _("Note"), _("Conversation"), _("Client"), _("Client's number"),
            _("Draft"), _("Draft text"), _("Sent text"), _("Edit distance"), _("Changed (%)"), _("Drafter"),
            _("Model"), _("Prompt version"), _("Sources"), _("Send")]


def row(d: history.Decision, zone: ZoneInfo) -> list[Any]:
    change = d.change
    return [d.id, _local(d.decided_at, zone), d.user_name, d.user_email, labels.label(labels.VIAS, d.via),
            labels.label(labels.ACTIONS, d.action), labels.label(labels.REASONS, d.reason), d.note or "",
            d.conversation_id, d.client_name or "", d.client_number or "", d.draft_id or "", d.original_text or "",
            d.sent_words or "", "" if d.edit_distance is None else d.edit_distance,
            "" if change is None else round(change * 100, 1), labels.label(labels.DRAFTERS, d.drafter),
            d.model or "", d.prompt_version or "", _sources(d.sources), labels.label(labels.SENDS, d.send)]


def _local(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _sources(sources: list[dict[str, Any]]) -> str:
    return "; ".join(f"{s['entry_id']} ({s['score']})" if s.get("score") is not None else s["entry_id"]
                     for s in sources)


def stream(connect: Callable[[], sa.Connection], filters: history.Filters, zone: str) -> Iterator[bytes]:
    """The CSV file, in chunks: the byte-order mark and headings, then every decision ``filters`` selects.

    ``connect`` is called once the response streams (``waflow.web.request_connection``): Flask ends the view's
    context, and returns its connection, before the first chunk is sent; ``stream_with_context`` gives the
    streaming its own."""
    tz = ZoneInfo(zone)
    conn = connect()
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # Excel's dialect: commas, quotes where needed, CRLF line ends
    buffer.write("\ufeff")
    writer.writerow([neutralise(h) for h in headings(zone)])
    after = None
    while True:
        with conn.begin():
            found = history.page(conn, filters, after, BATCH)
        for decision in found.rows:
            writer.writerow([neutralise(cell) for cell in row(decision, tz)])
            if buffer.tell() >= CHUNK:
                yield _drain(buffer)
        if found.older is None:
            break
        after = found.older
    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data
