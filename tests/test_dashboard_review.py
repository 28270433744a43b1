"""Draft review on the dashboard (issue 19, item 4): every action through the CLI's own functions
(``waflow.drafts.decisions``, ``via="dashboard"``), published after the commit, and every refusal said in words:
the client wrote again, someone decided first (who and what), outside the 24-hour window (a template offered).
Flask test client on SQLite and, when set, PostgreSQL; publishing is recorded, not sent to a broker.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from markupsafe import escape

from dashboard_support import login, make_user
from drafts_support import client_writes, draft, one, ready_draft, receive, message, rows, scalar, webhook
from waflow import whatsapp
from waflow.db import transaction
from waflow.drafts import decisions, publish
from waflow.models import Assignment, Conversation

TEMPLATES = [whatsapp.ApprovedTemplate("case_update", "id", 1, "Perkembangan perkara {{1}} sudah ada.")]


@pytest.fixture
def published(monkeypatch):
    sent: list[tuple[str, tuple]] = []
    monkeypatch.setattr("waflow.tasks.dispatch", lambda name, args=(), **kw: sent.append((name, tuple(args))))
    return sent


@pytest.fixture
def templates(dashboard_app, monkeypatch):
    reference = dashboard_app.extensions["waflow.reference"]
    monkeypatch.setattr(reference, "templates", lambda: TEMPLATES)
    return TEMPLATES


def page_of(client, conversation_id: int) -> str:
    return client.get(f"/dashboard/conversations/{conversation_id}").get_data(as_text=True)


def htmx(client, conversation_id: int) -> dict[str, str]:
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page_of(client, conversation_id)).group(1)
    return {"HX-Request": "true", "X-CSRFToken": token}


def conversation_of(db: str, draft_id: int) -> int:
    return one(db, "SELECT conversation_id FROM drafts WHERE id = :d", d=draft_id).conversation_id


def decisions_made(db: str) -> list[tuple]:
    return [(r.action, r.via, r.reason)
            for r in rows(db, "SELECT action, via, reason FROM draft_decisions ORDER BY id")]


def holder(db: str, conversation_id: int) -> int | None:
    with transaction(db) as conn:
        return conn.execute(sa.select(Assignment.user_id).where(Assignment.conversation_id == conversation_id)).scalar()


def test_the_panel_shows_the_draft_its_flags_and_the_knowledge_base_entries_it_used(lawyer_client, db_url):
    draft_id = ready_draft(db_url, "wamid.A1", "Pak, suami saya ditangkap polisi semalam, harus bagaimana?")
    page = page_of(lawyer_client, conversation_of(db_url, draft_id))
    text = one(db_url, "SELECT text FROM drafts").text
    assert 'id="draft-text"' in page and str(escape(text.split(".")[0])) in page
    assert "mendesak" in page and "kontak pertama" in page  # flags, in words
    assert "Berdasarkan" in page and "<code>ditangkap</code>" in page  # the entry, with its title
    assert "Setujui dan kirim" in page and "Tolak" in page and "Minta draf baru" in page


def test_approving_as_drafted_goes_through_decisions_takes_the_conversation_and_publishes_after_the_commit(
        lawyer_client, lawyer, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    text = one(db_url, "SELECT text FROM drafts").text
    answer = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": text},
                                headers=htmx(lawyer_client, conversation))
    assert answer.status_code == 200 and "Disetujui: balasan sedang dikirim" in answer.get_data(as_text=True)
    assert answer.headers["HX-Trigger"] == "waflow:messages"
    assert decisions_made(db_url) == [("approve", "dashboard", None)]
    approval = one(db_url, "SELECT id FROM draft_approvals").id
    assert published == [(publish.APPROVED_TASK, (approval,))]
    assert holder(db_url, conversation) == lawyer.id


def test_an_edited_draft_is_approved_with_the_lawyers_words(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "Baik Bu, kami telepon jam 2 siang."},
                       headers=htmx(lawyer_client, conversation))
    assert decisions_made(db_url) == [("edit", "dashboard", None)]
    assert one(db_url, "SELECT text FROM draft_approvals").text == "Baik Bu, kami telepon jam 2 siang."


def test_rejecting_needs_a_reason_and_other_needs_words(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    headers = htmx(lawyer_client, conversation)
    refused = lawyer_client.post(f"/dashboard/drafts/{draft_id}/reject", data={"reason": "other"}, headers=headers)
    assert "Tulis singkat mengapa draf ini salah" in refused.get_data(as_text=True)
    refused = lawyer_client.post(f"/dashboard/drafts/{draft_id}/reject", data={"reason": "bad"}, headers=headers)
    assert "Pilih alasan draf ini salah" in refused.get_data(as_text=True)
    assert decisions_made(db_url) == []
    done = lawyer_client.post(f"/dashboard/drafts/{draft_id}/reject", data={"reason": "wrong_tone"}, headers=headers)
    assert "Ditolak" in done.get_data(as_text=True)
    assert decisions_made(db_url) == [("reject", "dashboard", "wrong_tone")]
    assert published == []  # nothing to send
    assert "menolaknya" in page_of(lawyer_client, conversation)  # "Ratna rejected it at ..."


def test_a_reply_by_hand_is_approved_as_written_and_sets_the_draft_aside(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    answer = lawyer_client.post(f"/dashboard/conversations/{conversation}/reply",
                                data={"text": "Selamat siang Bu, saya Ratna. Boleh kami telepon?"},
                                headers=htmx(lawyer_client, conversation))
    assert "Terkirim: balasan Anda sedang dikirim" in answer.get_data(as_text=True)
    assert decisions_made(db_url) == [("write", "dashboard", None)]
    assert one(db_url, "SELECT status, status_reason FROM drafts") == ("superseded", "replied")
    assert [name for name, _ in published] == [publish.APPROVED_TASK]
    empty = lawyer_client.post(f"/dashboard/conversations/{conversation}/reply", data={"text": "  "},
                               headers=htmx(lawyer_client, conversation))
    assert "Tulis balasannya dulu" in empty.get_data(as_text=True)


def test_asking_for_a_new_draft_queues_one(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    answer = lawyer_client.post(f"/dashboard/conversations/{conversation}/redraft",
                                headers=htmx(lawyer_client, conversation))
    assert "Draf baru sedang dibuat" in answer.get_data(as_text=True)
    assert one(db_url, "SELECT status_reason FROM drafts WHERE id = :d", d=draft_id).status_reason == "redraft"
    assert [name for name, _ in published] == [publish.DRAFT_TASK]


def test_when_the_client_wrote_again_approving_is_refused_and_the_words_are_kept(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    headers = htmx(lawyer_client, conversation)  # the lawyer opened the page, and edits...
    receive(db_url, webhook(message("wamid.again", "oh iya pak, satu lagi: anak saya dua")))
    answer = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "Baik Bu, kata saya sendiri"},
                                headers=headers)
    shown = answer.get_data(as_text=True)
    assert "Klien menulis lagi: baca pesan barunya" in shown
    assert re.search(r'<textarea id="reply-text"[^>]*>Baik Bu, kata saya sendiri</textarea>', shown)
    assert answer.headers["HX-Trigger"] == "waflow:messages"  # the page fetches the new messages
    assert decisions_made(db_url) == [] and published == []
    assert "satu lagi: anak saya dua" in lawyer_client.get(
        f"/dashboard/conversations/{conversation}/messages").get_data(as_text=True)


def test_when_another_lawyer_decided_first_the_page_says_who_and_what(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    headers = htmx(lawyer_client, conversation)
    budi = make_user(db_url, "budi@firma.id", name="Budi")
    with transaction(db_url) as conn:
        decisions.approve(conn, draft_id, budi, "dashboard", text="Kata-kata Budi.")
    answer = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "x"}, headers=headers)
    shown = answer.get_data(as_text=True)
    assert re.search(r"Sudah ada yang memutuskan lebih dulu: Budi mengubah lalu menyetujuinya pukul \d\d:\d\d", shown)
    assert published == []
    refreshed = lawyer_client.get(f"/dashboard/conversations/{conversation}/draft?was={draft_id}")
    assert "Budi mengubah lalu menyetujuinya" in refreshed.get_data(as_text=True)


def test_outside_the_window_free_words_are_refused_and_a_template_is_offered_and_approved(
        lawyer_client, db_url, published, templates):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    headers = htmx(lawyer_client, conversation)
    with transaction(db_url) as conn:  # the client last wrote 25 hours ago
        conn.execute(sa.update(Conversation).values(last_inbound_at=datetime.now(timezone.utc) - timedelta(hours=25)))
    page = page_of(lawyer_client, conversation)
    assert "Jendela 24 jam tertutup" in page and 'value="case_update|id"' in page
    assert "Perkembangan perkara {{1}} sudah ada." in page and 'id="draft-text"' not in page
    refused = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "halo"}, headers=headers)
    assert "hanya menerima templat yang disetujui" in refused.get_data(as_text=True)
    refused = lawyer_client.post(f"/dashboard/conversations/{conversation}/reply", data={"text": "halo"},
                                 headers=headers)
    assert "hanya menerima templat yang disetujui" in refused.get_data(as_text=True)
    assert decisions_made(db_url) == []
    done = lawyer_client.post(f"/dashboard/drafts/{draft_id}/template",
                              data={"template": "case_update|id", "params": "2026-114\n"}, headers=headers)
    assert "templat sedang dikirim" in done.get_data(as_text=True)
    assert decisions_made(db_url) == [("template", "dashboard", None)]
    assert '"2026-114"' in one(db_url, "SELECT text FROM draft_approvals").text


def test_without_scripts_a_form_post_comes_back_to_the_page_with_what_happened(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page_of(lawyer_client, conversation)).group(1)
    receive(db_url, webhook(message("wamid.again", "halo lagi")))
    answer = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"csrf_token": token, "text": "x"})
    assert answer.status_code == 303 and answer.headers["Location"] == f"/dashboard/conversations/{conversation}"
    said = '<p class="alert" role="alert">Klien menulis lagi'
    assert said in page_of(lawyer_client, conversation)
    assert said not in page_of(lawyer_client, conversation)  # said once


def test_a_decision_without_the_csrf_token_is_refused(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    answer = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "x"})
    assert answer.status_code == 400 and decisions_made(db_url) == []


def test_an_unknown_draft_or_conversation_is_404(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    headers = htmx(lawyer_client, conversation_of(db_url, draft_id))
    assert lawyer_client.post("/dashboard/drafts/999/approve", headers=headers).status_code == 404
    assert lawyer_client.post("/dashboard/conversations/999/reply", data={"text": "x"},
                              headers=headers).status_code == 404


def test_a_pending_draft_says_it_is_being_written(lawyer_client, db_url):
    from drafts_support import later
    from waflow.drafts import claiming, drafter

    requested = client_writes(db_url, "wamid.P1", "halo")
    with transaction(db_url) as conn:
        claiming.claim(conn, requested.request_id, "t", lease=drafter.lease(), now=later())
    page = page_of(lawyer_client, scalar(db_url, "SELECT conversation_id FROM drafts"))
    assert "Draf sedang dibuat" in page and 'id="approve"' not in page


def test_a_failed_draft_asks_for_the_lawyers_own_words(lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    with transaction(db_url) as conn:
        conn.execute(sa.text("UPDATE drafts SET status = 'failed', text = NULL, error = 'ChatFailure'"))
    conversation = conversation_of(db_url, draft_id)
    page = page_of(lawyer_client, conversation)
    assert "Draf untuk pesan ini tidak berhasil dibuat" in page and "Kirim teks ini" in page
    headers = htmx(lawyer_client, conversation)
    refused = lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": ""}, headers=headers)
    assert "Belum ada teks untuk disetujui" in refused.get_data(as_text=True)
    lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", data={"text": "Kata saya."}, headers=headers)
    assert decisions_made(db_url) == [("edit", "dashboard", None)]


def test_the_draft_panel_says_what_became_of_the_draft_the_page_showed(lawyer_client, db_url):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    receive(db_url, webhook(message("wamid.again", "halo lagi")))
    panel = lawyer_client.get(f"/dashboard/conversations/{conversation}/draft?was={draft_id}").get_data(as_text=True)
    assert "Klien menulis lagi" in panel
    kept = lawyer_client.post(f"/dashboard/conversations/{conversation}/draft",
                              data={"was": draft_id, "text": "kata-kata saya"},
                              headers=htmx(lawyer_client, conversation)).get_data(as_text=True)
    assert re.search(r'<textarea id="reply-text"[^>]*>kata-kata saya</textarea>', kept)


def test_two_lawyers_approving_at_once_make_one_approval(dashboard_app, lawyer_client, db_url, published):
    draft_id = ready_draft(db_url)
    conversation = conversation_of(db_url, draft_id)
    budi = make_user(db_url, "budi@firma.id", name="Budi")
    other = dashboard_app.test_client()
    login(other, budi.email)
    first, second = htmx(lawyer_client, conversation), htmx(other, conversation)
    answers = [lawyer_client.post(f"/dashboard/drafts/{draft_id}/approve", headers=first),
               other.post(f"/dashboard/drafts/{draft_id}/approve", headers=second)]
    assert scalar(db_url, "SELECT count(*) FROM draft_approvals") == 1 and len(published) == 1
    assert "Sudah ada yang memutuskan lebih dulu: Ratna menyetujuinya apa adanya" in answers[1].get_data(as_text=True)


def test_the_keys_are_bound_by_the_pages_own_scripts(lawyer_client, db_url):
    draft(db_url, client_writes(db_url, "wamid.K1", "halo"))
    page = page_of(lawyer_client, scalar(db_url, "SELECT conversation_id FROM drafts"))
    assert "/static/conversation.js" in page and "/static/live.js" in page
    assert 'id="approve"' in page and 'id="edit"' in page and 'id="reject"' in page
