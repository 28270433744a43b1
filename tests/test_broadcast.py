"""Broadcasts and the sending commands, through the command line (Flask's test CLI runner), on the scratch database.

What would be queued is recorded instead of published; template lookups go to a
live Meta simulator.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from support import SimulatorProcess, orm, wipe
from waflow import config, limiter, tasks
from waflow.outbound import broadcast, commands
from waflow.models import Broadcast, OutboundMessage


@pytest.fixture(scope="module")
def meta():
    sim = SimulatorProcess("--no-status-webhooks").start()
    yield sim
    sim.stop()


@pytest.fixture
def cli_with(default_db, meta, var_dir, monkeypatch, tmp_path):
    """``cli_with(**environment)``: run ``flask --app wsgi`` commands on the settings that environment gives.
    What they queue is kept in ``.queued``, not published."""
    from waflow import create_app
    from support import RecordingPublisher

    wipe(default_db)
    store = limiter.FileStore(tmp_path / "limiter", 80)
    monkeypatch.setattr(limiter, "default_store", lambda: store)
    queued: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(tasks, "dispatch", lambda name, args, **kw: queued.append((tuple(args), kw)))

    def make(**environment: str):
        settings = config.load({"WAFLOW_VAR_DIR": var_dir, "WHATSAPP_API_URL": meta.api_url, **environment})
        app = create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": RecordingPublisher()})
        runner = app.test_cli_runner()

        def invoke(*args: str, **kw):
            return runner.invoke(args=list(args), **kw)

        invoke.queued, invoke.db, invoke.store = queued, default_db, store
        return invoke

    return make


@pytest.fixture
def cli(cli_with):
    return cli_with()


def csv_file(tmp_path, text: str, name: str = "clients.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_broadcast_queues_one_template_send_per_recipient_on_the_broadcast_lane(cli, tmp_path):
    path = csv_file(tmp_path, "+15550100001,Tuesday,10:00\n\nUS.13491208655302741918,Friday,15:30\n")
    result = cli("broadcast", "appointment_reminder", path, "--no-wait")
    assert result.exit_code == 0, result.output
    assert "2 recipient(s), 2 parameter(s) each, checked with Meta" in result.output
    assert "queued 2 send(s)" in result.output
    assert {kw["queue"] for _, kw in cli.queued} == {"wa.outgoing.broadcast"}
    assert {kw["headers"]["lane"] for _, kw in cli.queued} == {"broadcast"}
    with orm(cli.db) as session:
        rows = session.scalars(sa.select(OutboundMessage).order_by(OutboundMessage.id)).all()
        b = session.scalars(sa.select(Broadcast)).one()
    assert b.name == "appointment_reminder-clients" and b.total == 2
    assert [r.recipient for r in rows] == ["+15550100001", "US.13491208655302741918"]
    assert rows[0].payload["to"] == "+15550100001" and rows[1].payload["recipient"] == "US.13491208655302741918"
    params = rows[0].payload["template"]["components"][0]["parameters"]
    assert [p["text"] for p in params] == ["Tuesday", "10:00"]
    assert rows[0].payload["template"]["language"] == {"code": "en_US"}


def test_the_parameter_count_is_checked_with_meta_before_anything_is_queued(cli, tmp_path):
    path = csv_file(tmp_path, "15550100002,Tuesday\n15550100003,Friday\n")
    result = cli("broadcast", "appointment_reminder", path)
    assert result.exit_code == 1
    assert "nothing queued: the template takes 2 parameter(s); 2 row(s) differ (lines 1, 2)" in result.output
    assert cli.queued == []
    unknown = cli("broadcast", "no_such_template", path)
    assert "nothing queued: no approved template 'no_such_template' in en_US" in unknown.output


def test_rows_that_disagree_are_refused_with_their_line_numbers(cli, tmp_path):
    path = csv_file(tmp_path, "15550100004,A\n15550100005,B\n15550100006\n15550100004,C\n")
    result = cli("broadcast", "case_update", path)
    assert result.exit_code == 1 and "line 4: 15550100004 is already on line 1" in result.output
    with pytest.raises(broadcast.BroadcastError, match=r"most rows give 1 parameter\(s\); 1 row\(s\) differ \(lines 3\)"):
        broadcast.check_parameters([broadcast.Recipient(1, "a", ("x",)), broadcast.Recipient(2, "b", ("y",)),
                                    broadcast.Recipient(3, "c", ())], None)
    assert cli.queued == []


def test_a_dry_run_checks_everything_and_queues_nothing(cli, tmp_path):
    path = csv_file(tmp_path, "15550100007,2026-114\n")
    result = cli("broadcast", "case_update", path, "--dry-run")
    assert result.exit_code == 0 and "dry run: nothing queued" in result.output
    assert "would send to 15550100007: ['2026-114']" in result.output
    with orm(cli.db) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboundMessage)) == 0
    assert cli.queued == []


def test_running_an_interrupted_broadcast_again_queues_only_the_recipients_not_yet_queued(cli, tmp_path):
    path = csv_file(tmp_path, "15550100008,A\n15550100009,B\n")
    assert cli("broadcast", "case_update", path, "--name", "dec", "--no-wait").exit_code == 0
    assert len(cli.queued) == 2
    # Interrupted between storing and queueing: two more rows exist that were never queued.
    path = csv_file(tmp_path, "15550100008,A\n15550100009,B\n15550100010,C\n15550100011,D\n")
    with orm(cli.db) as session:
        session.execute(sa.update(OutboundMessage).values(status="accepted"))  # the first two went out
    cli.queued.clear()
    again = cli("broadcast", "case_update", path, "--name", "dec", "--no-wait")
    assert "queued 2 send(s)" in again.output
    with orm(cli.db) as session:
        wanted = set(session.scalars(sa.select(OutboundMessage.id).where(OutboundMessage.recipient.in_(
            ["15550100010", "15550100011"]))))
    assert {args[0] for args, _ in cli.queued} == wanted
    cli.queued.clear()
    assert "queued 0 send(s)" in cli("broadcast", "case_update", path, "--name", "dec", "--no-wait").output
    # After the queues were purged, --requeue queues every unsent one again.
    assert "queued 2 send(s)" in cli("broadcast", "case_update", path, "--name", "dec", "--no-wait",
                                     "--requeue").output


def test_cancelling_a_broadcast_stops_everything_not_yet_sent(cli, tmp_path):
    path = csv_file(tmp_path, "15550100012,A\n15550100013,B\n15550100014,C\n")
    cli("broadcast", "case_update", path, "--name", "stopme", "--no-wait")
    with orm(cli.db) as session:
        first = session.scalars(sa.select(OutboundMessage).order_by(OutboundMessage.id)).first()
        first.status = "accepted"
        token = session.scalars(sa.select(Broadcast.token)).one()
    result = cli("broadcast-cancel", "stopme")
    assert result.exit_code == 0 and "2 unsent message(s) will not be sent" in result.output
    assert cli.store.is_cancelled(token)
    with orm(cli.db) as session:
        statuses = sorted(session.scalars(sa.select(OutboundMessage.status)))
    assert statuses == ["accepted", "cancelled", "cancelled"]
    assert "no broadcast named 'nope'" in cli("broadcast-cancel", "nope").output
    assert "was cancelled; choose another --name" in cli("broadcast", "case_update", path, "--name", "stopme").output


def test_the_summary_counts_accepted_failed_by_code_and_still_queued(cli, tmp_path):
    path = csv_file(tmp_path, "15550100015,A\n15550100016,B\n15550100017,C\n15550100018,D\n")
    cli("broadcast", "case_update", path, "--name", "summary", "--no-wait")
    with orm(cli.db) as session:
        rows = session.scalars(sa.select(OutboundMessage).order_by(OutboundMessage.id)).all()
        rows[0].status = "accepted"
        rows[1].status, rows[1].error_code, rows[1].error_title = "failed", 131026, "(#131026) Message undeliverable"
        rows[2].status, rows[2].error_code, rows[2].error_title = "failed", 131026, "(#131026) Message undeliverable"
        rows[3].status = "cancelled"
    result = cli("broadcast", "case_update", path, "--name", "summary")
    assert "accepted 1, failed 2, in doubt 0, cancelled 1, still queued 0" in result.output
    # Meta's code once, beside its title (Meta's title begins with it too).
    assert "failed #131026: 2 (Message undeliverable)" in result.output
    assert "(#131026)" not in result.output
    assert result.exit_code == 1  # Meta refused some


def _broadcast_ending(cli, tmp_path, name: str, statuses: list[str]):
    """Run a broadcast whose messages have ended in ``statuses``; return the watching run's result."""
    path = csv_file(tmp_path, "".join(f"1555010{i:04d},A\n" for i in range(len(statuses))), f"{name}.csv")
    cli("broadcast", "case_update", path, "--name", name, "--no-wait")
    with orm(cli.db) as session:
        rows = session.scalars(sa.select(OutboundMessage).where(OutboundMessage.broadcast_id.isnot(None))
                               .order_by(OutboundMessage.id)).all()
        for r, status in zip(rows, statuses):
            r.status = status
    return cli("broadcast", "case_update", path, "--name", name)


@pytest.mark.parametrize("statuses, exit_code", [
    (["accepted", "accepted"], 0),
    (["accepted", "cancelled"], 0),
    (["accepted", "in_doubt"], 3),
    (["in_doubt", "failed"], 1),
], ids=["all accepted", "one cancelled", "one in doubt", "one refused"])
def test_a_broadcast_exits_non_zero_when_meta_refused_a_message_or_one_is_in_doubt(cli, tmp_path, statuses,
                                                                                   exit_code):
    assert _broadcast_ending(cli, tmp_path, "ending", statuses).exit_code == exit_code


def test_a_broadcast_refuses_a_header_row_and_empty_or_non_numeric_recipients_with_line_numbers(cli, tmp_path):
    path = csv_file(tmp_path, "nomor,perkara\n,2026-1\nBudi Santoso,2026-2\n0812 3456 7000,2026-3\n"
                              "+62 812 3456 7000,2026-4\n12345,2026-5\n")
    result = cli("broadcast", "case_update", path)
    assert result.exit_code == 1
    out = result.output
    assert "nothing queued: line 1: the recipient is not a phone number" in out and "(a header row?" in out
    assert "line 2: no recipient in the first column" in out
    assert "line 3: the recipient is not a phone number" in out and "Budi" not in out
    assert "line 5: +6281234567000 is already on line 4" in out  # the same number, written two ways
    assert "line 6: the recipient has 5 digits" in out
    assert cli.queued == []
    with orm(cli.db) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(OutboundMessage)) == 0


def test_numbers_with_a_leading_zero_get_the_default_country_code_and_the_dry_run_shows_them(cli, tmp_path):
    path = csv_file(tmp_path, "0812-3456-7001,2026-1\n+44 7700 900123,2026-2\n")
    dry = cli("broadcast", "case_update", path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2 number(s) rewritten for Meta (separators dropped; a leading 0 is country code +62):" in dry.output
    assert "line 1: 0812-3456-7001 -> +6281234567001" in dry.output
    assert "line 2: +44 7700 900123 -> +447700900123" in dry.output
    assert "would send to +447700900123: ['2026-2']" in dry.output
    assert cli("broadcast", "case_update", path, "--no-wait").exit_code == 0
    with orm(cli.db) as session:
        assert sorted(session.scalars(sa.select(OutboundMessage.recipient))) == ["+447700900123", "+6281234567001"]


def test_a_configured_country_code_is_the_one_a_leading_zero_gets(cli_with, tmp_path):
    cli = cli_with(WAFLOW_DEFAULT_COUNTRY_CODE="60")  # a firm in Malaysia
    path = csv_file(tmp_path, "012-345 6789,2026-1\n")
    dry = cli("broadcast", "case_update", path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "a leading 0 is country code +60" in dry.output
    assert "line 1: 012-345 6789 -> +60123456789" in dry.output
    assert cli("broadcast", "case_update", path, "--no-wait").exit_code == 0
    with orm(cli.db) as session:
        assert list(session.scalars(sa.select(OutboundMessage.recipient))) == ["+60123456789"]


def test_send_rate_is_stored_for_every_sender_and_shown(cli):
    assert "80 msg/s (default), paced at 78.4/s" in cli("send-rate").output
    assert "250 msg/s (stored), paced at 245.0/s" in cli("send-rate", "250").output
    assert cli.store.get_rate(config.settings.phone_number_id) == 250
    assert cli("send-rate", "1001").exit_code == 2
    assert "80 msg/s (default)" in cli("send-rate", "--clear").output


def test_send_queues_a_reply_and_refuses_a_bad_one_with_its_reason(cli):
    ok = cli("send", "15550100019", "Your hearing is on Monday.", "--wait", "0", "--key", "k-1")
    assert ok.exit_code == 0 and "queued" in ok.output
    [(args, kw)] = cli.queued
    assert kw["queue"] == "wa.outgoing.command" and kw["headers"]["lane"] == "reply"
    # The same key again while it is still unsent: one message, queued again (a lost publish made good).
    again = cli("send", "15550100019", "Your hearing is on Monday.", "--wait", "0", "--key", "k-1")
    assert "was already commanded under that key (queued)" in again.output
    assert [args for args, _ in cli.queued] == [args, args]
    with orm(cli.db) as session:
        session.execute(sa.update(OutboundMessage).values(status="accepted"))
    once_sent = cli("send", "15550100019", "Your hearing is on Monday.", "--wait", "0", "--key", "k-1")
    assert "(accepted)" in once_sent.output and len(cli.queued) == 2  # sent: never queued again
    bad = cli("send", "15550100019", "x" * 4097, "--wait", "0")
    assert bad.exit_code == 1 and "not sent: body: String should have at most 4096 characters" in bad.output


def _send_ending(cli, key: str, **outcome):
    """``send`` run again under ``key`` after its message ended as ``outcome`` (status, error_code, ...)."""
    from waflow.db import transaction

    with transaction(cli.db) as conn:
        queued, _ = commands.command(conn, key=key, recipient="15550100021", message={"kind": "text", "body": "Hi"})
        if outcome:
            conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == queued.id).values(**outcome))
    return cli("send", "15550100021", "Hi", "--key", key, "--wait", "0.5")


def test_send_exits_non_zero_when_meta_refused_the_message_or_it_is_in_doubt_and_says_why_once(cli):
    accepted = _send_ending(cli, "exit-0", status="accepted", wamid="wamid.OK")
    assert accepted.exit_code == 0 and "accepted (wamid.OK)" in accepted.output
    refused = _send_ending(cli, "exit-1", status="failed", error_code=131009,
                           error_title="(#131009) Parameter value is not valid", error_details="text.body")
    assert refused.exit_code == 1
    assert refused.output.endswith(": failed: #131009 Parameter value is not valid text.body\n")
    doubt = _send_ending(cli, "exit-3", status="in_doubt", error_title="connection lost before Meta answered")
    assert doubt.exit_code == 3
    assert doubt.output.endswith(": in_doubt: connection lost before Meta answered\n")
    assert "#None" not in doubt.output
    unanswered = _send_ending(cli, "exit-4")  # queued, and no sender runs here
    assert unanswered.exit_code == 4 and "still queued after" in unanswered.output
    assert "Exit status:" in cli("send", "--help").output and "Exit status:" in cli("broadcast", "--help").output


def test_send_refuses_param_on_a_text_message_and_a_reused_key_with_another_text(cli):
    with_param = cli("send", "15550100022", "Hello", "--param", "2026-114", "--wait", "0")
    assert with_param.exit_code == 2 and "--param fills a template's parameters" in with_param.output
    assert cli.queued == []
    assert cli("send", "15550100022", "Hello", "--key", "k-2", "--wait", "0").exit_code == 0
    same = cli("send", "15550100022", "Hello", "--key", "k-2", "--wait", "0")
    assert same.exit_code == 0 and "was already commanded under that key (queued)" in same.output
    other = cli("send", "15550100022", "Goodbye", "--key", "k-2", "--wait", "0")
    assert other.exit_code == 1
    assert "not sent: the key 'k-2' was given to outbound" in other.output and "a different message" in other.output
    with orm(cli.db) as session:
        assert [r.text for r in session.scalars(sa.select(OutboundMessage))] == ["Hello"]


def test_send_to_a_number_with_a_leading_zero_says_where_it_goes(cli):
    result = cli("send", "0812 3456 7002", "--template", "hello_world", "--wait", "0")
    assert result.exit_code == 0 and "outbound 1 to +6281234567002 queued" in result.output


def test_a_send_in_doubt_is_settled_by_a_persons_decision(cli):
    from waflow.db import transaction

    with transaction(cli.db) as conn:
        queued, _ = commands.command(conn, key="doubt-1", recipient="15550100020",
                                     message={"kind": "text", "body": "did it go?"})
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == queued.id).values(status="in_doubt"))
    listed = cli("outbox", "list")
    assert f"outbound {queued.id} to 15550100020: in_doubt" in listed.output
    assert cli("outbox", "resolve", str(queued.id)).exit_code == 2  # a decision is required
    resent = cli("outbox", "resolve", str(queued.id), "--resend", "--by", "lawyer-mia")
    assert resent.exit_code == 0 and "settled by lawyer-mia" in resent.output
    assert [args for args, _ in cli.queued] == [(queued.id,)]
    assert "is queued, not in doubt" in cli("outbox", "resolve", str(queued.id), "--failed").output
