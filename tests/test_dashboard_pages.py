"""The inbox, a conversation, its files and the change log as a signed-in lawyer gets them (issue 19, items 2, 3, 5
and "Security"), through the Flask test client on SQLite and, when set, PostgreSQL. Clients write through core's
own function (``persist_event``), the drafter drafts in-process, so the rows are what the pipeline writes.
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from dashboard_support import login, make_user, seed_conversation
from drafts_support import NUMBER, client_writes, later, message, offline, receive, ready_draft, webhook
from waflow.dashboard import claims, queries, thread
from waflow.drafts import claiming, drafter
from waflow.db import get_engine, transaction
from waflow.mediastore import default_store, stream_into_store
from waflow.models import Assignment, Conversation, Media, Presence

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
       b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


def text_of(answer) -> str:
    return answer.get_data(as_text=True)


def conversation_of(db: str, wa_id: str) -> int:
    with transaction(db) as conn:
        return conn.execute(sa.text("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id "
                                    "WHERE k.wa_id = :w"), {"w": wa_id}).scalar_one()


def writes(db: str, wa_id: str, body: str, ago: int = 0, name: str = "Siti Aminah") -> int:
    """The client ``wa_id`` writes ``body`` (sent ``ago`` seconds ago); their conversation's id."""
    receive(db, webhook(message(f"wamid.{wa_id}.{time.time_ns()}", body, wa_id=wa_id,
                                at=time.time() - ago), name=name))
    return conversation_of(db, wa_id)


def order_in(page: str, *names: str) -> list[int]:
    return [page.index(name) for name in names]


# --- the inbox ----------------------------------------------------------------------------------------------------


def test_the_inbox_puts_urgent_clients_first_then_the_longest_wait_then_the_rest_by_newest_message(
        lawyer_client, db_url):
    writes(db_url, "6281200000001", "Selamat siang, mau tanya soal sertifikat tanah", ago=3600, name="Lama Menunggu")
    writes(db_url, "6281200000002", "halo pak, soal kontrak kerja", ago=600, name="Baru Menunggu")
    writes(db_url, "6281200000003", "Tolong pak, suami sy ditangkap polisi", ago=60, name="Mendesak Sekali")
    answered = writes(db_url, "6281200000004", "terima kasih", ago=7200, name="Sudah Dijawab")
    with transaction(db_url) as conn:  # a reply reached this client: nobody waits there
        conn.execute(sa.update(Conversation).where(Conversation.id == answered).values(waiting_since=None))
    page = text_of(lawyer_client.get("/dashboard/"))
    positions = order_in(page, "Mendesak Sekali", "Lama Menunggu", "Baru Menunggu", "Sudah Dijawab")
    assert positions == sorted(positions)
    assert "3 klien menunggu jawaban" in page
    assert re.search(r'class="tag urgent">mendesak<', page)
    assert "menunggu 1 jam" in page  # the longest wait, in the lawyer's language


def test_each_row_shows_the_last_message_the_lawyers_unread_count_the_draft_and_who_has_it(
        lawyer_client, db_url, dashboard_app):
    ready_draft(db_url, "wamid.R1", "Pak, saya mau cerai, bagaimana caranya?")
    writes(db_url, "6281200001111", "oh iya, anak kami dua")
    conversation = conversation_of(db_url, "6281200001111")
    page = text_of(lawyer_client.get("/dashboard/"))
    assert "oh iya, anak kami dua" in page and "2 belum dibaca" in page
    budi = make_user(db_url, "budi@firma.id", name="Budi", locale="en")
    with transaction(db_url) as conn:
        claims.take(conn, conversation, budi.id)
    assert "dipegang Budi" in text_of(lawyer_client.get("/dashboard/"))
    lawyer_client.get(f"/dashboard/conversations/{conversation}")  # Ratna reads it: her count only
    assert "belum dibaca" not in text_of(lawyer_client.get("/dashboard/"))
    other = dashboard_app.test_client()
    login(other, budi.email)
    english = text_of(other.get("/dashboard/"))
    assert "2 unread" in english and "you have it" in english


def test_a_draft_in_the_making_ready_or_failed_is_said_in_the_row(lawyer_client, db_url):
    requested = client_writes(db_url, "wamid.P1", "halo, saya mau konsultasi")
    with transaction(db_url) as conn:  # a drafter holds it: pending
        claimed = claiming.claim(conn, requested.request_id, "task-1", lease=drafter.lease(), now=later())
    assert "draf sedang dibuat" in text_of(lawyer_client.get("/dashboard/"))
    with transaction(db_url) as conn:
        claiming.finish(conn, claimed, "task-1", offline().draft(claimed.input))
    assert "draf siap" in text_of(lawyer_client.get("/dashboard/"))
    with transaction(db_url) as conn:
        conn.execute(sa.text("UPDATE drafts SET status = 'failed', error = 'ChatFailure'"))
    assert "tanpa draf: jawab sendiri" in text_of(lawyer_client.get("/dashboard/"))


def test_the_filters_mine_unassigned_urgent_and_the_search_by_name_or_number(lawyer_client, lawyer, db_url):
    mine = writes(db_url, "6281211112222", "soal warisan", name="Dewi Lestari")
    writes(db_url, "6281233334444", "soal sewa ruko", name="Andi Pratama")
    writes(db_url, "6281255556666", "besok sidang jam berapa pak?", name="Rudi Hartono")
    with transaction(db_url) as conn:
        claims.take(conn, mine, lawyer.id)

    def names(**args) -> set[str]:
        page = text_of(lawyer_client.get("/dashboard/", query_string=args))
        return {n for n in ("Dewi Lestari", "Andi Pratama", "Rudi Hartono") if n in page}

    assert names() == {"Dewi Lestari", "Andi Pratama", "Rudi Hartono"}
    assert names(filter="mine") == {"Dewi Lestari"}
    assert names(filter="unassigned") == {"Andi Pratama", "Rudi Hartono"}
    assert names(filter="urgent") == {"Rudi Hartono"}  # "sidang": the firm's urgency words
    assert names(q="andi") == {"Andi Pratama"}
    assert names(q="0812-3333-4444") == {"Andi Pratama"}  # the number as Indonesians write it
    assert names(q="5555 6666") == {"Rudi Hartono"}
    assert names(q="100%_") == set()  # LIKE's wildcards are searched for, not obeyed
    with transaction(db_url) as conn:  # a quiet while later, the conversation is nobody's again
        conn.execute(sa.update(Assignment).values(assigned_at=datetime.now(timezone.utc) - claims.QUIET))
    assert names(filter="mine") == set()


def test_an_htmx_refresh_gets_the_list_alone_and_pages_go_on(lawyer_client, db_url, monkeypatch):
    for i in range(3):
        writes(db_url, f"628120000900{i}", f"pesan {i}", ago=100 - i, name=f"Klien {i}")
    fragment = text_of(lawyer_client.get("/dashboard/", headers={"HX-Request": "true"}))
    assert fragment.lstrip().startswith('<div id="inbox-list"') and "<html" not in fragment
    monkeypatch.setattr(queries, "PAGE", 2)
    first = text_of(lawyer_client.get("/dashboard/"))
    assert "Klien 0" in first and "Klien 1" in first and "Klien 2" not in first
    assert 'href="/dashboard/?page=2"' in first
    second = text_of(lawyer_client.get("/dashboard/?page=2"))
    assert "Klien 2" in second and "Klien 0" not in second


def test_the_inbox_polls_the_change_log_without_eval(lawyer_client):
    answer = lawyer_client.get("/dashboard/")
    page = text_of(answer)
    assert re.search(r'id="live"[^>]*hx-trigger="every 2s, waflow:poll"', page, re.S)
    assert "[document" not in page  # no trigger filter: htmx would evaluate it as code
    assert "'unsafe-eval'" not in answer.headers["Content-Security-Policy"]
    assert '"allowEval": false' in page


# --- a conversation ---------------------------------------------------------------------------------------------


def test_a_conversation_shows_its_messages_in_order_with_times_in_the_firms_zone(lawyer_client, db_url):
    at = datetime.now(timezone.utc).replace(hour=2, minute=15, second=0, microsecond=0)
    receive(db_url, webhook(message("wamid.T1", "pagi pak, mau tanya", at=at.timestamp())))
    receive(db_url, webhook(message("wamid.T2", "soal hak asuh anak", at=at.timestamp() + 60)))
    conversation = conversation_of(db_url, "6281200001111")
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    assert page.index("pagi pak, mau tanya") < page.index("soal hak asuh anak")
    assert ">09:15<" in page and ">09:16<" in page  # Asia/Jakarta, UTC+7
    assert "Jendela terbuka" in page


def test_our_replies_show_their_ticks_and_metas_reason_when_they_failed(lawyer_client, db_url):
    conversation = writes(db_url, "6281200001111", "halo")
    with transaction(db_url) as conn:
        contact = conn.execute(sa.text("SELECT contact_id FROM conversations WHERE id = :c"),
                               {"c": conversation}).scalar()
        for i, status in enumerate(("sent", "delivered", "read", "failed")):
            conn.execute(sa.text(
                "INSERT INTO messages (wamid, conversation_id, contact_id, phone_number_id, direction, type, body, "
                "sent_at, status, content, created_at) VALUES (:w, :c, :k, :p, 'outbound', 'text', :b, :t, :s, "
                "'{}', :t)"), {"w": f"wamid.out{i}", "c": conversation, "k": contact, "p": NUMBER,
                               "b": f"balasan {status}", "t": datetime.now(timezone.utc), "s": status})
        conn.execute(sa.text(
            "INSERT INTO message_statuses (wamid, status, timestamp, error_code, content, created_at) "
            "VALUES ('wamid.out3', 'failed', :t, 131026, :c, :t)"),
            {"t": datetime.now(timezone.utc), "c": '{"errors": [{"code": 131026, "title": "Message undeliverable"}]}'})
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    assert re.search(r'class="tick sent">.*terkirim', page, re.S)
    assert re.search(r'class="tick delivered">.*sampai', page, re.S)
    assert re.search(r'class="tick read">.*dibaca', page, re.S)
    assert "tidak sampai" in page and "Pesan tidak dapat diantar" in page and "Message undeliverable" in page


def test_a_reply_refused_before_meta_took_it_shows_with_its_reason(lawyer_client, db_url):
    conversation = writes(db_url, "6281200001111", "halo", ago=90000)  # the window closed an hour ago
    with transaction(db_url) as conn:
        conn.execute(sa.text(
            "INSERT INTO outbound_messages (idempotency_key, phone_number_id, recipient, lane, kind, payload, text, "
            "status, error_code, error_title, attempts, pair_attempts, parked, created_at, updated_at) VALUES "
            "('k1', :p, '6281200001111', 'reply', 'text', '{}', 'Baik, kami telepon', 'failed', 131047, "
            "'Re-engagement message', 0, 0, :f, :t, :t)"),
            {"p": NUMBER, "t": datetime.now(timezone.utc), "f": False})
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    assert "Baik, kami telepon" in page and "hanya templat yang bisa dikirim" in page
    assert "Jendela 24 jam tertutup" in page


def test_the_newest_page_comes_first_and_older_pages_follow_by_keyset(lawyer_client, db_url):
    conversation = seed_conversation(db_url, name="Panjang", wa_id="6281200007777",
                                     bodies=[f"pesan nomor {i:03d}" for i in range(120)])
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    assert "pesan nomor 119" in page and "pesan nomor 070" in page and "pesan nomor 069" not in page
    older = re.search(r'href="(/dashboard/conversations/\d+\?before=\d+)">Pesan sebelumnya', page).group(1)
    second = text_of(lawyer_client.get(older))
    assert "pesan nomor 069" in second and "pesan nomor 020" in second and "pesan nomor 070" not in second
    third = text_of(lawyer_client.get(re.search(r'href="([^"]+before=\d+)">Pesan sebelumnya', second).group(1)))
    assert "pesan nomor 000" in third and "Pesan sebelumnya" not in third and "Pesan terbaru" in third
    assert 'hx-trigger="waflow:refresh"' not in third.split('id="messages"')[1].split(">")[0]  # not live


def test_an_unknown_conversation_is_404(lawyer_client):
    assert lawyer_client.get("/dashboard/conversations/999").status_code == 404
    assert lawyer_client.get("/dashboard/conversations/999/messages").status_code == 404


def test_viewing_marks_read_and_shows_presence_but_takes_nothing(lawyer_client, db_url, dashboard_app):
    conversation = writes(db_url, "6281200001111", "halo")
    lawyer_client.get(f"/dashboard/conversations/{conversation}")
    with transaction(db_url) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Assignment)).scalar() == 0
        assert conn.execute(sa.select(Presence.state)).scalars().all() == ["viewing"]
    budi = make_user(db_url, "budi@firma.id", name="Budi", locale="en")
    other = dashboard_app.test_client()
    login(other, budi.email)
    page = text_of(other.get(f"/dashboard/conversations/{conversation}"))
    assert "Ratna is viewing" in page and "Nobody has this conversation" in page


def test_taking_and_letting_go_and_the_editing_marker(lawyer_client, db_url, dashboard_app):
    conversation = writes(db_url, "6281200001111", "halo")
    headers = {"HX-Request": "true", "X-CSRFToken": token_of(lawyer_client, conversation)}
    taken = text_of(lawyer_client.post(f"/dashboard/conversations/{conversation}/take", headers=headers))
    assert "Percakapan ini Anda pegang" in taken
    budi = make_user(db_url, "budi@firma.id", name="Budi", locale="en")
    other = dashboard_app.test_client()
    login(other, budi.email)
    page = text_of(other.get(f"/dashboard/conversations/{conversation}"))
    assert "Ratna has this conversation" in page and "Ratna is writing" in page
    released = text_of(lawyer_client.post(f"/dashboard/conversations/{conversation}/release", headers=headers))
    assert "Belum ada yang memegang" in released
    assert "Ratna has this conversation" not in text_of(other.get(f"/dashboard/conversations/{conversation}"))


def token_of(client, conversation: int) -> str:
    page = text_of(client.get(f"/dashboard/conversations/{conversation}"))
    return re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)


def test_the_presence_heartbeat_writes_only_when_something_changed(lawyer_client, db_url):
    conversation = writes(db_url, "6281200001111", "halo")
    headers = {"HX-Request": "true", "X-CSRFToken": token_of(lawyer_client, conversation)}

    def seen() -> datetime:
        with transaction(db_url) as conn:
            return conn.execute(sa.select(Presence.seen_at)).scalar_one()

    first = seen()
    answer = lawyer_client.post(f"/dashboard/conversations/{conversation}/presence", data={"state": "viewing"},
                                headers=headers)
    assert answer.status_code == 204 and seen() == first  # within the throttle: no write
    lawyer_client.post(f"/dashboard/conversations/{conversation}/presence", data={"state": "editing"}, headers=headers)
    with transaction(db_url) as conn:
        assert conn.execute(sa.select(Presence.state)).scalar_one() == "editing"
    assert lawyer_client.post(f"/dashboard/conversations/{conversation}/presence", data={"state": "owner"},
                              headers=headers).status_code == 400


# --- files ----------------------------------------------------------------------------------------------------------


def _media_message(db: str, wamid: str, kind: str, media_id: str, **media) -> None:
    fields = {kind: {"id": media_id, "mime_type": media.pop("mime_type", "image/png"), **media}}
    receive(db, webhook(message(wamid, None, kind=kind, **fields)))


def _record(db: str, media_id: str, wamid: str, kind: str, status: str, data: bytes | None = None,
            detected: str | None = None, filename: str | None = None, error: str | None = None) -> int:
    key = stream_into_store(default_store(), [data])[0] if data is not None else None
    with transaction(db) as conn:
        return conn.execute(sa.insert(Media).values(
            media_id=media_id, wamid=wamid, kind=kind, status=status, storage_key=key, size=len(data or b""),
            detected_mime_type=detected, filename=filename, error=error).returning(Media.id)).scalar_one()


def test_files_show_as_thumbnails_players_downloads_or_why_not(lawyer_client, db_url):
    _media_message(db_url, "wamid.M1", "image", "m-1", caption="foto KTP saya")
    _media_message(db_url, "wamid.M2", "audio", "m-2", mime_type="audio/ogg", voice=True)
    _media_message(db_url, "wamid.M3", "document", "m-3", mime_type="application/pdf", filename="surat.pdf")
    _media_message(db_url, "wamid.M4", "image", "m-4")
    _media_message(db_url, "wamid.M5", "video", "m-5", mime_type="video/mp4")
    image = _record(db_url, "m-1", "wamid.M1", "image", "stored", PNG, "image/png")
    audio = _record(db_url, "m-2", "wamid.M2", "audio", "stored", b"OggS" + b"\0" * 60, "audio/ogg")
    document = _record(db_url, "m-3", "wamid.M3", "document", "stored", b"%PDF-1.4 ...", "application/pdf",
                       filename="surat.pdf")
    _record(db_url, "m-4", "wamid.M4", "image", "failed", error="media id expired: Meta no longer has it")
    conversation = conversation_of(db_url, "6281200001111")
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    assert f'<img class="thumb" src="/dashboard/media/{image}"' in page and "foto KTP saya" in page
    assert f'<audio class="player" controls preload="metadata" src="/dashboard/media/{audio}">' in page
    assert f'href="/dashboard/media/{document}" download>surat.pdf' in page
    assert "Berkas sudah kedaluwarsa di WhatsApp" in page  # the failed one, in words
    assert "sedang diambil dari WhatsApp" in page  # the video, still pending
    served = lawyer_client.get(f"/dashboard/media/{image}")
    assert served.status_code == 200 and served.data == PNG and served.headers["Content-Type"] == "image/png"
    pdf = lawyer_client.get(f"/dashboard/media/{document}")
    assert pdf.headers["Content-Type"] == "application/octet-stream"
    assert pdf.headers["Content-Disposition"].startswith("attachment")


def test_media_refuses_anonymous_visitors_and_unknown_guessed_or_unready_ids(lawyer_client, dashboard_client,
                                                                            db_url):
    _media_message(db_url, "wamid.M1", "image", "m-1")
    stored = _record(db_url, "m-1", "wamid.M1", "image", "stored", PNG, "image/png")
    _media_message(db_url, "wamid.M2", "image", "m-2")
    pending = _record(db_url, "m-2", "wamid.M2", "image", "pending")
    anonymous = dashboard_client.get(f"/dashboard/media/{stored}")
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login")
    assert PNG not in anonymous.data
    for guessed in (pending, stored + 1000, 0, 99999999):
        refused = lawyer_client.get(f"/dashboard/media/{guessed}")
        assert refused.status_code == 404 and PNG not in refused.data
    assert lawyer_client.get("/dashboard/media/abc").status_code == 404
    assert lawyer_client.get("/dashboard/media/-1").status_code == 404


# --- client content renders inert ---------------------------------------------------------------------------------

PAYLOADS = ("<script>alert('x')</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(2)")


def test_payloads_in_names_texts_captions_and_file_names_render_inert(lawyer_client, db_url):
    for i, payload in enumerate(PAYLOADS):
        receive(db_url, webhook(message(f"wamid.X{i}", payload, wa_id=f"62812000055{i}"), name=payload))
    receive(db_url, webhook(message("wamid.XM", None, kind="document", wa_id="628120000550",
                                    document={"id": "m-x", "mime_type": "text/html", "filename": PAYLOADS[1],
                                              "caption": PAYLOADS[0]})))
    _record(db_url, "m-x", "wamid.XM", "document", "stored", b"<html><script>alert(1)</script></html>",
            "text/html", filename=PAYLOADS[1])
    pages = [text_of(lawyer_client.get("/dashboard/"))]
    for i in range(len(PAYLOADS)):
        conversation = conversation_of(db_url, f"62812000055{i}")
        pages.append(text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}")))
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
        assert 'href="javascript' not in page and 'src="javascript' not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in pages[1]
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[1]  # the file's name, as text


# --- the change log -----------------------------------------------------------------------------------------------


def test_the_changes_endpoint_hands_out_ids_only_from_a_cursor(lawyer_client, db_url):
    start = lawyer_client.get("/dashboard/changes").get_json()
    assert start == {"cursor": 0, "changes": []}
    conversation = writes(db_url, "6281200001111", "rahasia klien: hutang 50 juta")
    answer = lawyer_client.get("/dashboard/changes?since=0")
    body = answer.get_json()
    assert body["cursor"] >= 1 and "rahasia" not in answer.get_data(as_text=True)
    assert [(c["kind"], c["conversation_id"]) for c in body["changes"]] == [("message.new", conversation)]
    assert set(body["changes"][0]) == {"id", "kind", "conversation_id", "draft_id", "message_id"}
    assert lawyer_client.get(f"/dashboard/changes?since={body['cursor']}").get_json() == {
        "cursor": body["cursor"], "changes": []}
    assert lawyer_client.get("/dashboard/changes?since=nonsense").get_json()["cursor"] == body["cursor"]


def test_the_changes_endpoint_is_private(dashboard_client):
    assert dashboard_client.get("/dashboard/changes?since=0").status_code == 302
    htmx = dashboard_client.get("/dashboard/changes?since=0", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["HX-Redirect"].startswith("/login")


def test_the_conversation_page_starts_its_poll_at_the_change_log_as_it_was_read(lawyer_client, db_url):
    conversation = writes(db_url, "6281200001111", "halo")
    page = text_of(lawyer_client.get(f"/dashboard/conversations/{conversation}"))
    cursor = int(re.search(r'data-cursor="(\d+)"', page).group(1))
    assert cursor >= 1


def test_the_window_left_is_meta_s_24_hours_from_the_clients_last_message():
    now = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
    assert thread.window_left(now - timedelta(hours=23), now) == timedelta(hours=1)
    assert thread.window_left(now - timedelta(hours=24), now) is None
    assert thread.window_left(None, now) is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("chosen", ["all", "urgent", "unassigned"])
def test_the_inbox_query_walks_its_index_on_postgresql_instead_of_sorting(db_url, lawyer, chosen):
    for i in range(30):
        seed_conversation(db_url, name=f"Klien {i}", wa_id=f"62812000{i:05d}", bodies=["halo"])
    query = queries.inbox_query(lawyer.id, filter=chosen).limit(queries.PAGE + 1)
    sql = str(query.compile(dialect=get_engine(db_url).dialect, compile_kwargs={"literal_binds": True}))
    with transaction(db_url) as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # 30 rows: the planner would rather scan them
        plan = "\n".join(conn.execute(sa.text(f"EXPLAIN {sql}")).scalars())
    assert "ix_conversations_inbox" in plan, plan
    assert not re.search(r"^\s*(->\s*)?Sort\b", plan, re.M), plan
