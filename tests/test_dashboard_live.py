"""The dashboard live, in a real browser, against the whole stack (issue 19, "In a real browser", items 2-5, 8):
a client's webhook reaches the inbox and its draft appears without a reload; a lawyer edits and approves it;
the Meta simulator receives exactly those words and its status webhooks turn the ticks to read on the open
page; two browsers approving one draft make one send and the second is told who; English and a phone.

The stack is the Procfile's (tests/support.py ``Stack``: gunicorn's webhook, the ingestor, core, media, drafter
and announcer workers, the dead-letter recorder, plus a sender) with the dashboard's own gunicorn and a Meta
simulator posting signed status webhooks, on RabbitMQ + PostgreSQL when their URLs are set (as in CI), on the
embedded default otherwise. Chromium is Debian's (fixture ``browser``); skipped without it, required in CI.
"""
from __future__ import annotations

import re
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from dashboard_support import PASSWORD, DashboardProcess, chromium_or_skip, make_user
from drafting_support import copy_sample
from support import AMQP_URL, PG_URL, SimulatorProcess, Stack, migrate, wait_for
from waflow import config
from waflow.db import get_engine

PHONE = {"width": 390, "height": 844}
# What "within 2 s" comes to: the page polls every 2 s, then fetches the fragment the change names.
LIVE_WITHIN = 3.0


@pytest.fixture(scope="module")
def stack():
    chromium_or_skip()
    var_dir = tempfile.mkdtemp(prefix="waflow-dashboard-live-")
    if PG_URL and AMQP_URL:
        database_url, broker_url = PG_URL, AMQP_URL
    else:
        database_url, broker_url = f"sqlite:///{var_dir}/waflow.db", "embedded://"
    url = config.load({"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url,
                       "WAFLOW_VAR_DIR": var_dir}).database_url
    migrate(url, fresh=True)
    running = Stack(database_url=database_url, broker_url=broker_url, var_dir=var_dir, simulator=False)
    running.db = url
    running.env.update(WAFLOW_KNOWLEDGE_DIR=str(copy_sample(Path(var_dir))), DRAFT_QUIET_SECONDS="1",
                       SIMULATOR_WEBHOOK_URL=running.url)
    running.meta = SimulatorProcess("--status-delay", "0.3", env=running.env, log_dir=var_dir).start()
    running.env["WHATSAPP_API_URL"] = running.meta.api_url
    dashboard = DashboardProcess({k: v for k, v in running.env.items() if k.startswith(("WAFLOW_", "WHATSAPP_"))} |
                                 {"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url},
                                 Path(var_dir) / "logs" / "dashboard.log")
    try:
        running.start()
        running.start_worker("sender", "wa.outgoing.command,wa.outgoing.broadcast", "-P", "threads")
        running.wait_ready("sender")
        running.dashboard = dashboard.start()
        yield running
    finally:
        dashboard.stop()
        running.stop()
        running.meta.stop()


@pytest.fixture
def pages(browser, stack):
    """New browser pages, each in a profile of its own, recording what the browser complains about."""
    opened = []

    def new(locale: str = "id-ID", **options):
        context = browser.new_context(locale=locale, **options)
        context.set_default_timeout(15_000)
        opened.append(context)
        page = context.new_page()
        page.complaints = []
        page.on("console", lambda m: page.complaints.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.complaints.append(str(e)))
        return page

    yield new
    for context in opened:
        context.close()


def query(stack, sql: str, **params):
    with get_engine(stack.db).connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def waiting(stack, what: str, predicate, timeout: float = 60):
    try:
        return wait_for(predicate, timeout, interval=0.1, what=what)
    except AssertionError:
        print(stack.logs())
        raise


def signed_in(page, stack, *, locale: str = "id", name: str = "Ratna Sari") -> None:
    person = make_user(stack.db, f"{uuid.uuid4().hex[:10]}@firma.id", name=name, locale=locale)
    page.goto(f"{stack.dashboard.url}/login")
    page.fill("#email", person.email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.dashboard.url}/dashboard/")


def client_writes(stack, wa_id: str, name: str, text: str) -> str:
    answer = stack.meta.control("POST", "inbound", {"from": wa_id, "name": name, "text": text})
    assert answer["gateway_status"] == 200, answer
    return answer["wamid"]


def new_client() -> str:
    return f"62812{uuid.uuid4().int % 10**8:08d}"


def test_a_clients_message_and_its_draft_appear_live_then_edited_approved_sent_and_read(stack, pages):
    page = pages()
    signed_in(page, stack)
    page.evaluate("window.stayed = true")  # gone if the page reloads
    wa_id = new_client()
    wamid = client_writes(stack, wa_id, "Dewi Lestari", "Selamat pagi Bu, sy mau konsultasi soal hak asuh anak "
                                                       "stlh cerai, kira2 bisa ketemu minggu ini?")
    waiting(stack, "the message in the database", lambda: query(stack, "SELECT id FROM messages WHERE wamid = :w",
                                                                w=wamid))
    stored = time.monotonic()
    row = page.locator("#inbox-list li", has_text="Dewi Lestari")
    row.wait_for(timeout=LIVE_WITHIN * 1000 + 1000)
    assert time.monotonic() - stored <= LIVE_WITHIN
    assert "hak asuh anak" in row.inner_text() and "menunggu" in row.inner_text()
    draft = waiting(stack, "the draft, announced", lambda: query(
        stack, "SELECT d.id FROM drafts d JOIN changes c ON c.draft_id = d.id AND c.kind = 'draft.ready'"))
    announced = time.monotonic()
    row.locator(".tag.draft").wait_for(timeout=LIVE_WITHIN * 1000 + 1000)
    assert time.monotonic() - announced <= LIVE_WITHIN
    assert page.evaluate("window.stayed") is True

    row.locator("a.row").click()
    page.wait_for_url(re.compile(r"/dashboard/conversations/\d+$"))
    text = page.locator("#draft-text")
    assert text.get_attribute("readonly") is not None  # read-only until Edit
    page.get_by_role("button", name=re.compile("^Ubah")).click()
    page.locator("#people", has_text="Percakapan ini Anda pegang").wait_for()  # editing took it
    edited = "Selamat pagi Bu Dewi. Bisa, Kamis jam 10 di kantor kami. Mohon bawa akta cerai dan akta lahir anak."
    text.fill(edited)
    page.locator("#approve").click()
    page.locator("#draft", has_text="Disetujui").wait_for()

    sent = waiting(stack, "the simulator to receive the reply", lambda: stack.meta.sends(to=wa_id), 30)
    assert [s["body"]["text"]["body"] for s in sent] == [edited]
    page.locator(".msg.outbound .tick.read").wait_for(timeout=30_000)  # Meta's webhooks, without a reload
    assert edited in page.locator(".msg.outbound").last.inner_text()
    assert query(stack, "SELECT action, via FROM draft_decisions WHERE draft_id = :d", d=draft[0].id) == [
        ("edit", "dashboard")]
    assert page.complaints == []


def test_two_browsers_approving_one_draft_make_one_send_and_the_second_is_told_who(stack, pages):
    wa_id = new_client()
    wamid = client_writes(stack, wa_id, "Andi Pratama", "Pak, kontrak sewa ruko saya diputus sepihak. Bisa minta "
                                                      "ganti rugi?")
    conversation = waiting(stack, "the draft", lambda: query(
        stack, "SELECT d.conversation_id FROM drafts d JOIN messages m ON m.conversation_id = d.conversation_id "
               "WHERE m.wamid = :w AND d.status = 'ready'", w=wamid))[0][0]
    first, second = pages(), pages("en-US")
    signed_in(first, stack, name="Ratna Sari")
    signed_in(second, stack, locale="en", name="Budi Santoso")
    for page in (first, second):
        page.goto(f"{stack.dashboard.url}/dashboard/conversations/{conversation}")
        page.locator("#approve").wait_for()
    second.locator("#people", has_text="Ratna Sari is viewing").wait_for()  # presence, live
    first.locator("#approve").click()
    second.locator("#approve").click()  # at once: its page still shows the draft
    first.locator("#draft", has_text="Disetujui").wait_for()
    told = second.locator("#draft .alert, #draft .notice", has_text="Ratna Sari approved it as drafted")
    told.first.wait_for()
    waiting(stack, "the send", lambda: stack.meta.sends(to=wa_id), 30)
    time.sleep(2)
    assert len(stack.meta.sends(to=wa_id)) == 1
    assert len(query(stack, "SELECT id FROM draft_approvals WHERE conversation_id = :c", c=conversation)) == 1
    assert first.complaints == [] and second.complaints == []


def test_on_a_phone_the_inbox_and_a_conversation_fit_and_a_lawyer_replies_by_hand(stack, pages):
    wa_id = new_client()
    client_writes(stack, wa_id, "Siti Nurhaliza binti Abdullah", "Halo, berkas gugatan warisan saya sudah sampai "
                                                                 "mana ya? Sudah 3 minggu blm ada kabar")
    page = pages(viewport=PHONE, is_mobile=True, has_touch=True)
    signed_in(page, stack, locale="en", name="Sarah Lee")
    row = page.locator("#inbox-list li", has_text="Siti Nurhaliza")
    row.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    row.locator("a.row").click()
    page.wait_for_url(re.compile(r"/dashboard/conversations/\d+$"))
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.get_by_text("Write a reply by hand").click()
    page.locator("#reply-text").fill("Hello Bu Siti, we will check with the court today and call you.")
    page.get_by_role("button", name="Send my reply").click()
    page.locator("#draft", has_text="Sent: your reply is on its way").wait_for()
    waiting(stack, "the reply at the simulator", lambda: stack.meta.sends(to=wa_id), 30)
    page.locator(".msg.outbound .tick").last.wait_for()
    assert page.complaints == []


def test_the_keyboard_moves_opens_edits_and_approves(stack, pages):
    wa_id = new_client()
    wamid = client_writes(stack, wa_id, "Rudi Hartono", "Maaf ganggu malam2, besok sidang jam berapa ya pak?")
    waiting(stack, "the draft", lambda: query(
        stack, "SELECT d.id FROM drafts d JOIN messages m ON m.conversation_id = d.conversation_id "
               "WHERE m.wamid = :w AND d.status = 'ready'", w=wamid))
    page = pages()
    signed_in(page, stack)
    page.locator("#inbox-list li", has_text="Rudi Hartono").wait_for()
    assert page.locator("#inbox-list li").first.inner_text().startswith("Rudi Hartono")  # urgent: pinned
    page.keyboard.press("j")
    assert "Rudi Hartono" in page.locator("#inbox-list li.selected").inner_text()
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert "Rudi Hartono" in page.locator("#inbox-list li.selected").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/dashboard/conversations/\d+$"))
    page.keyboard.press("r")
    assert page.locator("#reject").get_attribute("open") is not None
    page.evaluate("document.activeElement.blur()")  # out of the reasons' radio buttons, where keys are typed
    page.keyboard.press("e")
    assert page.locator("#draft-text").get_attribute("readonly") is None
    page.keyboard.type(" Salam.")  # typed into the draft: "a" here is a letter, not approve
    page.locator("#draft-text").evaluate("e => e.blur()")
    page.keyboard.press("a")
    page.locator("#draft", has_text="Disetujui").wait_for()
    sent = waiting(stack, "the send", lambda: stack.meta.sends(to=wa_id), 30)
    assert sent[0]["body"]["text"]["body"].endswith(" Salam.")
    assert page.complaints == []


def test_the_page_stops_polling_while_hidden(stack, pages):
    page = pages()
    signed_in(page, stack)
    polls = []
    page.on("request", lambda r: polls.append(time.monotonic()) if "/dashboard/changes" in r.url else None)
    page.wait_for_timeout(4500)
    assert len(polls) >= 2
    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "hidden", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    polls.clear()
    page.wait_for_timeout(4500)
    assert polls == []
    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {value: "visible", configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    page.wait_for_timeout(500)
    assert len(polls) == 1  # at once when visible again
    assert page.complaints == []


def test_nothing_was_dead_lettered_along_the_way(stack):
    assert query(stack, "SELECT queue, error_type FROM dead_letters") == []
