"""The audit page, its CSV and the weekly report (issue 19, item 6): who sees what, the filters, the keyset
pages, the word diff, hostile text rendered inert, formulas neutralised, and the report's figures on a known
week (``audit_support``, hand-computed)."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from audit_support import HEAVY, LIGHT_TAIL, NOTE, RATNA, SARI, at, client, make_week10
from dashboard_support import make_user
from waflow.dashboard import audit_csv
from waflow.db import transaction
from waflow.drafts import history, report
from waflow.drafts.sending import command_approved
from waflow.models import Draft, DraftDecision, OutboundMessage

ZONE = "Asia/Jakarta"


@pytest.fixture
def sari(db_url):
    return make_user(db_url, SARI, name="Sari", role="lawyer", locale="id")


@pytest.fixture
def week10(db_url, lawyer, admin, sari):
    return make_week10(db_url)


def _decision_ids(page_html: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="decision-(\d+)"', page_html)]


def _csv(answer) -> list[dict[str, str]]:
    body = answer.get_data()
    assert body.startswith("\ufeff".encode())
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


# --- who sees what ------------------------------------------------------------------------------------------------


def test_an_admin_sees_every_decision_newest_first(admin_client, week10):
    page = admin_client.get("/dashboard/audit")
    assert page.status_code == 200
    shown = _decision_ids(page.get_data(as_text=True))
    # Newest first: 12, 10, 9, 13, 8, 7, 6/5 (the same moment: the higher id first), 4, 3, 2, 1, 11.
    by_number = {v: k for k, v in week10.decisions.items()}
    assert [by_number[i] for i in shown] == [12, 10, 9, 13, 8, 7, 6, 5, 4, 3, 2, 1, 11]


def test_a_lawyer_sees_only_their_own_decisions_whatever_the_url_asks(lawyer_client, week10, sari):
    own = sorted(v for k, v in week10.decisions.items() if k != 9)
    for url in ("/dashboard/audit", f"/dashboard/audit?lawyer={sari.id}"):
        html = lawyer_client.get(url).get_data(as_text=True)
        assert sorted(_decision_ids(html)) == own
        assert client(9) not in html and "Klien 9" not in html
    assert 'name="lawyer"' not in lawyer_client.get("/dashboard/audit").get_data(as_text=True)  # no such filter


def test_an_admin_filters_by_lawyer(admin_client, week10, sari):
    html = admin_client.get(f"/dashboard/audit?lawyer={sari.id}").get_data(as_text=True)
    assert _decision_ids(html) == [week10.decisions[9]]
    assert f'<option value="{sari.id}" selected>Sari</option>' in html


def test_the_date_filter_takes_the_firms_days(admin_client, week10):
    # 2 to 8 March in Jakarta: #11 (Sunday 1 March 23:59:59 there) and #12 (Monday 9 March 00:00) are out,
    # #10 (Sunday 8 March 23:59:59 there, 16:59:59 UTC) is in.
    html = admin_client.get("/dashboard/audit?from=2026-03-02&to=2026-03-08").get_data(as_text=True)
    shown = set(_decision_ids(html))
    assert shown == {v for k, v in week10.decisions.items() if k not in (11, 12)}
    only_the_ninth = admin_client.get("/dashboard/audit?from=2026-03-09&to=2026-03-09").get_data(as_text=True)
    assert _decision_ids(only_the_ninth) == [week10.decisions[12]]
    assert "8 Mar 2026, 23:59" in html  # times in the firm's zone


def test_the_action_filter(admin_client, week10):
    html = admin_client.get("/dashboard/audit?action=reject").get_data(as_text=True)
    assert sorted(_decision_ids(html)) == sorted([week10.decisions[5], week10.decisions[6]])
    assert 'value="reject" selected' in html


@pytest.mark.parametrize("query", ["from=2026-02-30", "to=yesterday", "from=2026-03-09&to=2026-03-01", "action=delete",
                                   "after=12;DROP", "lawyer=abc"])
def test_a_filter_that_cannot_be_read_answers_400_saying_what_is_wrong(admin_client, week10, query):
    answer = admin_client.get(f"/dashboard/audit?{query}")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert 'role="alert"' in html and _decision_ids(html) == []
    assert admin_client.get(f"/dashboard/audit.csv?{query}").status_code == 400


def test_the_filters_speak_the_lawyers_language(lawyer_client, week10):
    html = lawyer_client.get("/dashboard/audit?from=2026-13-01").get_data(as_text=True)
    assert "Tanggal harus hari kalender" in html
    assert "Disetujui seperti draf" in lawyer_client.get("/dashboard/audit").get_data(as_text=True)


# --- pages -----------------------------------------------------------------------------------------------------------


def test_the_pages_follow_one_another_without_a_gap_or_a_repeat(admin_client, week10, monkeypatch, db_url):
    monkeypatch.setattr(history, "PAGE_SIZE", 2)
    seen, url, pages, urls = [], "/dashboard/audit?from=2026-03-01", 0, []
    while url:
        urls.append(url)
        html = admin_client.get(url).get_data(as_text=True)
        seen += _decision_ids(html)
        pages += 1
        if pages == 2:  # a decision made meanwhile is the newest: it does not push a row onto two pages
            from audit_support import decide, write_and_draft
            from waflow.drafts import decisions

            decide(db_url, decisions.approve, write_and_draft(db_url, 99, at("03-09 01:00")), RATNA,
                   "dashboard", now=at("03-09 01:01"))
        found = re.search(r'href="([^"]+)" rel="next"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
        assert pages < 20
    assert len(seen) == len(set(seen)) == 13 and pages == 7
    assert all("from=2026-03-01" in u for u in urls)  # every page keeps the filters


def test_a_page_size_of_one_walks_the_tie_in_id_order(db_url, week10):
    with transaction(db_url) as conn:
        first = history.page(conn, history.Filters(action="reject"), size=1)
        second = history.page(conn, history.Filters(action="reject"), first.older, size=1)
    assert [first.rows[0].id, second.rows[0].id] == [week10.decisions[6], week10.decisions[5]]
    assert second.older is None


def test_a_page_position_survives_its_url():
    cursor = history.Cursor(datetime(2026, 3, 5, 4, 10, 0, 123456, tzinfo=timezone.utc), 42)
    assert history.Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "1.2.3", "-5.1", "9" * 19 + ".1", "abc"):
        with pytest.raises(ValueError):
            history.Cursor.decode(bad)


# --- what each decision shows -----------------------------------------------------------------------------------


def test_each_decision_shows_who_when_the_drafts_provenance_and_the_send(admin_client, week10, db_url):
    with transaction(db_url) as conn:  # as the chat drafter records its drafts
        conn.execute(sa.update(Draft).where(Draft.id == _draft_of(conn, week10.decisions[1])).values(
            drafter="chat", model="qwen2.5-7b-instruct", prompt_version="reply-v3"))
    with transaction(db_url) as conn:  # core hands #1 and #2 to the sender; #2's send failed
        for n in (1, 2):
            approval = conn.execute(sa.select(DraftDecision.approval_id).where(
                DraftDecision.id == week10.decisions[n])).scalar_one()
            [queued] = command_approved(conn, approval)
        conn.execute(sa.update(OutboundMessage).where(OutboundMessage.id == queued.id).values(status="failed"))
    html = admin_client.get("/dashboard/audit?action=approve&from=2026-03-02&to=2026-03-02").get_data(as_text=True)
    assert _decision_ids(html) == [week10.decisions[1]]
    assert '<span class="by">by Ratna</span>' in html and "2 Mar 2026, 09:10" in html  # 02:10 UTC in Jakarta
    assert "<dd>AI model</dd>" in html and "<dd>qwen2.5-7b-instruct</dd>" in html and "<dd>reply-v3</dd>" in html
    assert re.search(r'<span class="source">cerai-[a-z-]+ <span class="muted">\(\d+\.\d+\)</span></span>', html)
    assert "Draft, sent unchanged" in html
    assert "Waiting to be sent" in html  # the approval is queued (nothing sends in these tests)
    assert "Klien 1" in html and client(1) in html
    offline = admin_client.get("/dashboard/audit?action=approve&from=2026-03-03&to=2026-03-03").get_data(as_text=True)
    assert "<dd>Knowledge base (no AI model)</dd>" in offline and offline.count("<dd>–</dd>") == 2  # no model, prompt
    assert "<dd>command line</dd>" in offline  # #2 was approved with bin/flask drafts approve
    assert "<dd>Not delivered</dd>" in offline


def _draft_of(conn, decision_id: int) -> int:
    return conn.execute(sa.select(DraftDecision.draft_id).where(DraftDecision.id == decision_id)).scalar_one()


def test_each_decision_links_to_its_conversation_once_the_conversation_page_exists(db_url, var_dir, admin, week10):
    from dashboard_support import login, make_app

    without, app = make_app(db_url, var_dir), make_app(db_url, var_dir)
    if "conversations.show" not in app.view_functions:  # the inbox branch's page; a stand-in before its merge
        before = without.test_client()
        login(before, admin.email)
        assert 'href="/dashboard/conversations/' not in before.get("/dashboard/audit").get_data(as_text=True)
        app.add_url_rule("/dashboard/conversations/<int:conversation_id>", "conversations.show",
                         lambda conversation_id: "")
    client = app.test_client()
    login(client, admin.email)
    html = client.get("/dashboard/audit?action=template").get_data(as_text=True)
    conversation = re.search(r'<a href="/dashboard/conversations/(\d+)">conversation (\d+)</a>', html)
    assert conversation and conversation.group(1) == conversation.group(2)


def test_the_draft_and_the_sent_words_are_shown_side_by_side_as_a_word_diff(admin_client, week10):
    light = admin_client.get("/dashboard/audit?from=2026-03-04&to=2026-03-04").get_data(as_text=True)
    assert f"<ins>{LIGHT_TAIL.strip()}</ins>" in light
    heavy = re.search(r'id="decision-%d".*?<h3>Sent</h3>\s*<p class="text">(.*?)</p>' % week10.decisions[4], light,
                      re.S).group(1)
    assert re.sub(r"</?ins>", "", heavy) == HEAVY and heavy.startswith("<ins>Mohon datang ke kantor")
    assert "<del>" in light
    written = admin_client.get(f"/dashboard/audit?action=write").get_data(as_text=True)
    assert "No draft: the lawyer wrote the reply." in written  # #13 had none open
    rejected = admin_client.get(f"/dashboard/audit?action=reject").get_data(as_text=True)
    assert "Nothing was sent." in rejected and "Wrong facts" in rejected and "Other reason" in rejected
    template = admin_client.get(f"/dashboard/audit?action=template").get_data(as_text=True)
    assert "[template case_update (id)] 2026-114" in template


def test_the_word_diff_marks_words_taken_out_and_put_in():
    from waflow.dashboard.worddiff import Segment, word_diff

    left, right = word_diff("Selamat pagi Bu, kami bisa bantu.", "Selamat siang Bu, kami bisa bantu besok.")
    assert left == [Segment("same", "Selamat "), Segment("removed", "pagi"), Segment("same", " Bu, kami bisa "),
                    Segment("removed", "bantu.")]
    assert right == [Segment("same", "Selamat "), Segment("added", "siang"), Segment("same", " Bu, kami bisa "),
                     Segment("added", "bantu besok.")]
    assert word_diff("Sama\npersis", "Sama\npersis") == ([Segment("same", "Sama\npersis")],) * 2
    assert word_diff(None, "Tulisan sendiri") == ([], [Segment("same", "Tulisan sendiri")])
    assert word_diff("Draf", None) == ([Segment("same", "Draf")], [])
    assert "".join(s.text for s in word_diff("  a  b\n", "a b")[0]) == "  a  b\n"  # every character kept


XSS_NAME = "<script>alert('name')</script>"
XSS_DRAFT = '"><img src=x onerror=alert(1)> Mohon maaf'
XSS_SENT = '<script>alert("sent")</script> <a href="javascript:alert(2)">klik</a>'


def test_hostile_client_names_draft_text_sent_text_and_notes_render_inert(admin_client, db_url, lawyer, admin,
                                                                          sari):
    made = make_week10(db_url, names={3: XSS_NAME}, drafts={3: XSS_DRAFT}, edits={3: XSS_SENT})
    html = admin_client.get("/dashboard/audit").get_data(as_text=True)
    assert made.decisions[3] in _decision_ids(html)
    for raw in ("<script>alert", "<img src=x", 'href="javascript', '<a href="javascript'):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html  # in the draft's side, escaped
    assert "&lt;script&gt;alert(&#34;sent&#34;)&lt;/script&gt;" in html  # in the sent side
    # The diff's own markup wraps the escaped words: the removed draft and the inserted reply.
    assert "<del>&#34;&gt;&lt;img src=x onerror=alert(1)&gt; Mohon maaf</del>" in html
    assert re.search(r"<ins>&lt;script&gt;alert\(&#34;sent&#34;\)&lt;/script&gt;", html)
    assert "Note: =cmd|&#39; /C calc&#39;!A0" in html


# --- the CSV ---------------------------------------------------------------------------------------------------------


def test_the_csv_export_is_utf8_with_a_bom_and_holds_the_filtered_rows(admin_client, week10):
    answer = admin_client.get("/dashboard/audit.csv?from=2026-03-02&to=2026-03-08")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="waflow-audit-\d{4}-\d{2}-\d{2}\.csv"',
                        answer.headers["Content-Disposition"])
    rows = _csv(answer)
    assert sorted(int(r["Decision"]) for r in rows) == sorted(
        v for k, v in week10.decisions.items() if k not in (11, 12))
    tenth = next(r for r in rows if int(r["Decision"]) == week10.decisions[10])
    assert tenth["Decided at (Asia/Jakarta)"] == "2026-03-08 23:59:59"
    assert tenth["Lawyer's email"] == RATNA and tenth["Action"] == "Approved as drafted"
    assert tenth["Client's number"] == client(10) and tenth["Drafter"] == "Knowledge base (no AI model)"
    assert re.fullmatch(r"[a-z0-9-]+ \(\d+\.\d+\)(; [a-z0-9-]+ \(\d+\.\d+\))*", tenth["Sources"])
    light = next(r for r in rows if int(r["Decision"]) == week10.decisions[3])
    assert light["Sent text"] == light["Draft text"] + LIGHT_TAIL
    assert light["Edit distance"] == str(len(LIGHT_TAIL))
    assert answer.headers["Cache-Control"] == "private, no-store"


def test_an_export_is_logged_with_who_and_which_filters_and_no_client_text(admin_client, week10, caplog):
    caplog.set_level("INFO", logger="waflow.dashboard.audit")
    assert admin_client.get("/dashboard/audit.csv?action=reject&from=2026-03-05").status_code == 200
    [line] = [r.getMessage() for r in caplog.records if "exported" in r.getMessage()]
    assert re.fullmatch(r"dashboard: user \d+ exported the audit CSV \(lawyer None, action reject, from 2026-03-05 "
                        r"to None\)", line)


def test_a_lawyers_csv_holds_only_their_own_decisions(lawyer_client, week10, sari):
    for url in ("/dashboard/audit.csv", f"/dashboard/audit.csv?lawyer={sari.id}"):
        rows = _csv(lawyer_client.get(url))
        assert {r["Email pengacara"] for r in rows} == {RATNA}  # Ratna reads Indonesian
        assert len(rows) == 12 and client(9) not in {r["Nomor klien"] for r in rows}


def test_the_csv_is_in_the_users_language(lawyer_client, week10):
    rows = _csv(lawyer_client.get("/dashboard/audit.csv?action=reject"))
    assert {r["Tindakan"] for r in rows} == {"Ditolak"}


def test_cells_a_spreadsheet_would_run_as_formulas_are_neutralised(admin_client, db_url, lawyer, admin, sari):
    made = make_week10(db_url, names={1: "@SUM(1+1)*cmd|' /C calc'!A0", 2: "+62 812"},
                       drafts={4: "-2+3 dan seterusnya"}, edits={4: "=HYPERLINK(\"http://evil.example\",\"klik\")"})
    rows = {int(r["Decision"]): r for r in _csv(admin_client.get("/dashboard/audit.csv"))}
    assert rows[made.decisions[1]]["Client"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert rows[made.decisions[2]]["Client"] == "'+62 812"
    assert rows[made.decisions[4]]["Draft text"] == "'-2+3 dan seterusnya"
    assert rows[made.decisions[4]]["Sent text"] == "'=HYPERLINK(\"http://evil.example\",\"klik\")"
    assert rows[made.decisions[6]]["Note"] == "'" + NOTE
    assert rows[made.decisions[5]]["Note"] == ""
    assert audit_csv.neutralise("\tx") == "'\tx" and audit_csv.neutralise("a=b") == "a=b"
    assert audit_csv.neutralise(-5) == -5  # numbers are ours, never a formula


def test_a_long_export_is_read_in_batches_without_a_gap_or_a_repeat(admin_client, week10, monkeypatch):
    monkeypatch.setattr(audit_csv, "BATCH", 2)
    monkeypatch.setattr(audit_csv, "CHUNK", 100)
    answer = admin_client.get("/dashboard/audit.csv")
    assert answer.is_streamed
    ids = [int(r["Decision"]) for r in _csv(answer)]
    assert sorted(ids) == sorted(week10.decisions.values()) and len(ids) == 13


# --- the weekly report -------------------------------------------------------------------------------------------


def test_the_weekly_report_counts_a_known_week_for_everyone_and_for_one_lawyer(db_url, week10, lawyer, sari):
    week = report.Week.parse("2026-W10", ZONE)
    with transaction(db_url) as conn:
        everyone = report.weekly(conn, week)
        ratna = report.weekly(conn, week, lawyer.id)
        only_sari = report.weekly(conn, week, sari.id)
    assert (ratna.approved_unedited, ratna.lightly_edited, ratna.heavily_edited, ratna.templates, ratna.written) == \
        (3, 1, 1, 1, 2)
    assert ratna.rejected == {"wrong_facts": 1, "wrong_tone": 0, "needs_lawyer": 0, "other": 1}
    assert ratna.total == 10
    assert ratna.reply_seconds == (120, 300, 600, 1200, 1800, 3599, 3600, 7200)
    assert (ratna.p50, ratna.p95) == (1200, 7200)
    assert everyone.approved_unedited == 4 and everyone.total == 11
    assert everyone.reply_seconds == (120, 300, 600, 1200, 1500, 1800, 3599, 3600, 7200)
    assert (everyone.p50, everyone.p95) == (1500, 7200)
    assert (only_sari.total, only_sari.p50, only_sari.p95) == (1, 1500, 1500)


def test_a_reply_written_with_no_draft_counts_from_the_clients_oldest_message_since_the_last_reply(
        db_url, lawyer):
    from audit_support import _conversation, decide
    from drafts_support import message, receive, webhook
    from waflow.drafts import decisions
    from waflow.models import Message

    def writes(wamid: str, when: str) -> None:
        receive(db_url, webhook(message(wamid, "Halo?", wa_id=client(50), at=at(when).timestamp())))

    writes("wamid.r1", "03-02 01:00")
    conversation = _conversation(db_url, client(50))
    decide(db_url, decisions.write_by_hand, conversation, RATNA, "dashboard", text="Baik.", now=at("03-02 01:10"))
    writes("wamid.r2", "03-02 02:00")
    writes("wamid.r3", "03-02 02:05")
    decide(db_url, decisions.write_by_hand, conversation, RATNA, "dashboard", text="Ya.", now=at("03-02 02:20"))
    writes("wamid.r4", "03-02 03:00")
    with transaction(db_url) as conn:  # a person's reply with `send` (not an approval), then the client again
        conn.execute(sa.insert(Message).values(
            wamid="wamid.sent-by-hand", conversation_id=conversation, contact_id=conn.execute(
                sa.select(Message.contact_id).where(Message.wamid == "wamid.r4")).scalar_one(),
            phone_number_id="1122334455", direction="outbound", type="text", body="Sebentar.",
            sent_at=at("03-02 03:01"), content={}))
    writes("wamid.r5", "03-02 03:30")
    decide(db_url, decisions.write_by_hand, conversation, RATNA, "dashboard", text="Oke.", now=at("03-02 03:40"))
    with transaction(db_url) as conn:
        found = report.weekly(conn, report.Week.parse("2026-W10", ZONE), lawyer.id)
    assert found.written == 3
    assert found.reply_seconds == (600, 600, 1200)  # 01:00→01:10, 03:30→03:40 (after 03:01), 02:00→02:20


def test_the_report_page_shows_the_figures(admin_client, week10, sari):
    html = admin_client.get("/dashboard/audit/report?week=2026-W10").get_data(as_text=True)
    assert "Week 10" in html and "2 Mar 2026 – 8 Mar 2026" in html and "everyone" in html
    figures = dict(re.findall(r'<th scope="row">([^<]+)</th><td class="num">(\d+)</td>', html))
    assert figures["Approved as drafted"] == "4"
    assert figures["Lightly edited (under 40% of the text changed)"] == "1"
    assert figures["Heavily edited (40% or more changed)"] == "1"
    assert figures["Template instead"] == "1" and figures["Rejected"] == "2" and figures["Wrong facts"] == "1"
    assert figures["Other reason"] == "1" and figures["Written by hand"] == "2" and figures["All decisions"] == "11"
    assert "<dd>25 min 0 s</dd>" in html and "<dd>2 h 0 min</dd>" in html and "<dd>9</dd>" in html
    assert 'href="/dashboard/audit/report?week=2026-W09"' in html and "week=2026-W11" in html
    sari_only = admin_client.get(f"/dashboard/audit/report?week=2026-W10&lawyer={sari.id}").get_data(as_text=True)
    assert "<dd>25 min 0 s</dd>" in sari_only and "Sari" in sari_only


def test_a_lawyers_report_is_their_own_and_in_their_language(lawyer_client, week10, sari):
    for url in ("/dashboard/audit/report?week=2026-W10", f"/dashboard/audit/report?week=2026-W10&lawyer={sari.id}"):
        html = lawyer_client.get(url).get_data(as_text=True)
        assert "Laporan mingguan" in html and "keputusan Anda" in html
        figures = dict(re.findall(r'<th scope="row">([^<]+)</th><td class="num">(\d+)</td>', html))
        assert figures["Disetujui seperti draf"] == "3" and figures["Semua keputusan"] == "10"
        assert "<dd>20 mnt 0 dtk</dd>" in html and "<dd>2 jam 0 mnt</dd>" in html


def test_the_report_opens_on_this_week_and_refuses_a_week_that_does_not_exist(admin_client):
    this_week = report.Week.containing(datetime.now(timezone.utc), ZONE)
    assert f'value="{this_week.label}"' in admin_client.get("/dashboard/audit/report").get_data(as_text=True)
    for bad in ("2025-W53", "2026-10", "soon"):
        answer = admin_client.get(f"/dashboard/audit/report?week={bad}")
        assert answer.status_code == 400 and 'role="alert"' in answer.get_data(as_text=True)


def test_a_week_is_monday_to_monday_in_the_firms_zone():
    week = report.Week.parse("2026-W10", ZONE)
    assert week.start == datetime(2026, 3, 1, 17, tzinfo=timezone.utc)
    assert week.end == datetime(2026, 3, 8, 17, tzinfo=timezone.utc)
    assert report.Week.containing(datetime(2026, 3, 8, 17, tzinfo=timezone.utc), ZONE).label == "2026-W11"
    assert report.Week.containing(datetime(2026, 3, 8, 16, 59, 59, tzinfo=timezone.utc), ZONE).label == "2026-W10"
    assert report.Week.parse("2026-W53", ZONE).shifted(1).label == "2027-W01"  # 2026 has 53 ISO weeks
    assert report.Week.parse("2027-W01", ZONE).shifted(-1).label == "2026-W53"
    with pytest.raises(ValueError):
        report.Week.parse("2025-W53", ZONE)  # 2025 has 52
    amsterdam = report.Week.parse("2026-W14", "Europe/Amsterdam")  # summer time began on 29 March
    assert amsterdam.start == datetime(2026, 3, 29, 22, tzinfo=timezone.utc)


def test_percentiles_are_by_nearest_rank():
    assert report.nearest_rank([], 50) is None
    assert report.nearest_rank([7], 95) == 7
    assert report.nearest_rank([1, 2, 3, 4], 50) == 2
    assert report.nearest_rank(list(range(1, 21)), 95) == 19
    assert report.nearest_rank(list(range(1, 101)), 95) == 95


def test_an_edit_is_light_under_40_percent_of_the_longer_text():
    assert history.change_ratio(39, "x" * 100, "y" * 60) == 0.39
    assert history.change_ratio(40, "x" * 100, "y" * 60) == 0.40  # heavy: 40% is not under 40%
    assert history.change_ratio(3, None, "abc") is None
    assert history.change_ratio(39, 100, 60) == 0.39  # the report passes the lengths
    assert report.LIGHT_EDIT_BELOW == 0.40


def test_the_audit_entry_shows_in_the_header_for_lawyers_and_admins(lawyer_client, admin_client):
    for signed_in in (lawyer_client, admin_client):
        assert 'href="/dashboard/audit"' in signed_in.get("/dashboard/").get_data(as_text=True)
    assert 'href="/dashboard/audit" aria-current="page"' in admin_client.get("/dashboard/audit/report").get_data(
        as_text=True)
