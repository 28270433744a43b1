"""``flask --app wsgi drafts ...``: the names the issue pins, ``--json`` for scripts, and a non-zero exit with a
clear message whenever a decision is refused (issue 17, items 8 and 9's check of the knowledge base)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import sqlalchemy as sa

from drafts_support import client_writes, lawyer, ready_draft, scalar
from support import SimulatorProcess
from waflow import create_app, users
from waflow.db import transaction
from waflow.drafts import publish

BY = "ratna@firma.id"
PINNED_KEYS = {"id", "conversation_id", "wa_id", "status", "language", "flags", "text", "answers", "drafter", "model"}


@pytest.fixture(scope="module")
def meta():
    sim = SimulatorProcess("--no-status-webhooks").start()
    yield sim
    sim.stop()


@pytest.fixture
def cli(db_url, settings, monkeypatch, meta):
    """The commands on the test database, with the simulator as Meta; what they publish is recorded."""
    import waflow.db

    monkeypatch.setattr(waflow.db, "settings", replace(waflow.db.settings, database_url=db_url))
    published: list[tuple[str, tuple]] = []
    monkeypatch.setattr("waflow.tasks.dispatch", lambda name, args=(), **kw: published.append((name, tuple(args))))
    app = create_app({"TESTING": True, "WAFLOW_SETTINGS": replace(settings, whatsapp_api_url=meta.api_url),
                      "WAFLOW_PUBLISHER": object()})
    runner = app.test_cli_runner()

    def run(*args: str):
        return runner.invoke(args=["drafts", *map(str, args)])

    run.db, run.published, run.app = db_url, published, app
    lawyer(db_url)
    return run


def test_drafts_list_and_show_give_the_pinned_fields_in_json(cli):
    draft_id = ready_draft(cli.db, "wamid.J1")
    listed = json.loads(cli("list", "--json").output)
    assert len(listed) == 1 and PINNED_KEYS <= set(listed[0])
    d = listed[0]
    assert (d["id"], d["status"], d["answers"], d["drafter"], d["model"], d["language"]) == (
        draft_id, "ready", ["wamid.J1"], "offline", None, "id")
    assert d["wa_id"] == "6281200001111" and "first_contact" in d["flags"] and d["text"]
    shown = json.loads(cli("show", draft_id, "--json").output)
    assert {k: shown[k] for k in PINNED_KEYS} == {k: d[k] for k in PINNED_KEYS}
    assert json.loads(cli("list", "--status", "approved", "--json").output) == []
    human = cli("show", draft_id).output
    assert f"draft {draft_id}" in human and d["text"] in human


def test_drafts_approve_decides_and_hands_the_approval_to_core(cli):
    draft_id = ready_draft(cli.db)
    done = cli("approve", draft_id, "--by", BY, "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert (result["ok"], result["draft_id"], result["action"], result["by"], result["published"]) == (
        True, draft_id, "approve", BY, True)
    assert cli.published == [(publish.APPROVED_TASK, (result["approval_id"],))]


def test_drafts_approve_with_text_or_a_template(cli):
    edited = ready_draft(cli.db, "wamid.T1")
    done = cli("approve", edited, "--by", BY, "--text", "Baik Bu, kami telepon besok pagi.")
    assert done.exit_code == 0 and "approved by ratna@firma.id (edit)" in done.output
    template = ready_draft(cli.db, "wamid.T2", wa_id="6281200002222")
    done = cli("approve", template, "--by", BY, "--template", "case_update", "--param", "2026-114")
    assert done.exit_code == 0 and "(template)" in done.output


@pytest.mark.parametrize("setup, message, code", [
    ("again", "already decided: ratna@firma.id chose approve", "already_decided"),
    ("client_wrote", "the client wrote again", "stale"),
    ("unknown", "no user nobody@firma.id", "unknown_user"),
    ("deactivated", "user gone@firma.id is deactivated", "deactivated"),
])
def test_a_refused_approval_exits_non_zero_saying_why(cli, setup, message, code):
    draft_id = ready_draft(cli.db, "wamid.X1")
    by = BY
    if setup == "again":
        assert cli("approve", draft_id, "--by", BY).exit_code == 0
    elif setup == "client_wrote":
        client_writes(cli.db, "wamid.X2", "halo? masih di sana?")
    elif setup == "unknown":
        by = "nobody@firma.id"
    else:
        lawyer(cli.db, "gone@firma.id", "Gone")
        with transaction(cli.db) as conn:
            users.deactivate(conn, "gone@firma.id")
        by = "gone@firma.id"
    done = cli("approve", draft_id, "--by", by)
    assert done.exit_code == 1 and message in done.output
    as_json = cli("approve", draft_id, "--by", by, "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.output) == {"ok": False, "error": code, "message": json.loads(as_json.output)["message"]}
    assert message in json.loads(as_json.output)["message"]


def test_outside_the_window_approve_is_refused_and_offers_the_approved_templates(cli):
    from datetime import datetime, timedelta, timezone

    draft_id = ready_draft(cli.db, at=(datetime.now(timezone.utc) - timedelta(days=2)).timestamp())
    done = cli("approve", draft_id, "--by", BY)
    assert done.exit_code == 1
    assert "outside Meta's 24-hour window" in done.output
    assert "--template case_update --language id --param P" in done.output  # from Meta's list (the simulator)
    assert scalar(cli.db, "SELECT status FROM drafts") == "ready"


def test_drafts_reject_write_and_redraft(cli):
    draft_id = ready_draft(cli.db)
    bad = cli("reject", draft_id, "--by", BY, "--reason", "meh")
    assert bad.exit_code == 2 and "meh" in bad.output
    done = cli("reject", draft_id, "--by", BY, "--reason", "wrong_facts", "--json")
    assert done.exit_code == 0 and json.loads(done.output)["reason"] == "wrong_facts"
    conversation = scalar(cli.db, "SELECT conversation_id FROM drafts")
    redraft = cli("redraft", conversation, "--json")
    assert redraft.exit_code == 0, redraft.output
    request_id = json.loads(redraft.output)["request_id"]
    assert (publish.DRAFT_TASK, (request_id,)) in cli.published
    written = cli("write", conversation, "--by", BY, "--text", "Saya telepon Ibu jam 3.")
    assert written.exit_code == 0 and "(write)" in written.output
    nothing = cli("redraft", conversation)
    assert nothing.exit_code == 1 and "no unanswered message" in nothing.output


def test_drafts_audit_lists_nothing_when_every_send_was_approved_and_exits_1_when_one_was_not(cli):
    clean = cli("audit")
    assert clean.exit_code == 0 and "sent exactly the approved words" in clean.output
    client_writes(cli.db, "wamid.AU")
    with transaction(cli.db) as conn:  # a send keyed as an approval's, posted without one
        conn.execute(sa.text(
            "INSERT INTO outbound_messages (idempotency_key, phone_number_id, recipient, lane, kind, payload, text, "
            "status, parked, attempts, pair_attempts, created_at, updated_at, posted_sha256) VALUES "
            "('approval:77', '1122334455', '6281200001111', 'reply', 'text', :p, 'secret words', 'accepted', "
            "false, 1, 0, :t, :t, 'x')"),
            {"p": json.dumps({"type": "text", "text": {"body": "secret words"}}),
             "t": __import__("datetime").datetime.now(__import__("datetime").timezone.utc)})
    found = cli("audit")
    assert found.exit_code == 1 and "sent as an approval's, with no approval" in found.output
    assert "secret words" not in found.output
    assert json.loads(cli("audit", "--json").output)[0]["reason"] == "sent as an approval's, with no approval"


def test_drafts_knowledge_reports_each_broken_entry_with_its_file_and_line(cli, tmp_path, settings, meta):
    from drafting_support import copy_sample

    assert "0 problem(s)" in cli("knowledge").output
    folder = copy_sample(tmp_path)
    (folder / "broken.md").write_text("---\nid: broken\nquestions: [unclosed\n---\nbody\n")
    app = create_app({"TESTING": True, "WAFLOW_SETTINGS": replace(settings, knowledge_dir=folder),
                      "WAFLOW_PUBLISHER": object()})
    done = app.test_cli_runner().invoke(args=["drafts", "knowledge"])
    assert done.exit_code == 1 and "broken.md:" in done.output
    assert "1 problem(s)" in done.output
