"""The simulator as an independent client library sees it: pywa 4.5.0 (MIT, pinned in
``requirements-test.txt``) against a simulator on a loopback port (issue 16).

- pywa's client sends every kind of request the simulator serves (text, template, media upload
  and send by id, reactions, read receipts and typing, media look-up, download and delete, the
  template list) and parses every answer, including Meta's typed errors.
- pywa's webhook receiver (its Flask routes, signature check on, filtering by phone number id
  and WABA id on) is fed by the simulator: each webhook runs its handler exactly once with the
  expected typed update, and pywa logs nothing at WARNING or above.
- The same webhooks, teed to pywa and to waflow's gateway (gunicorn and Celery workers, on
  RabbitMQ and PostgreSQL when their URLs are set), are stored as they are today.

pywa addresses ``https://graph.facebook.com/v25.0``; an httpx transport sends those requests to
the simulator, changing only the URL: the ``Host`` header stays Meta's, as with a proxy.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest
import sqlalchemy as sa
from flask import Flask, request
from pywa import WhatsApp, errors, types
from pywa.types.sent_update import SentMediaMessage, SentReaction
from pywa.types.templates import BodyText, TemplateLanguage
from werkzeug.serving import make_server

from simulator_support import NUMBER, SECRET, TOKEN, make, clock, serve  # noqa: F401
from support import Stack, free_port, prepared_stack, running, wait_for, wipe
from waflow import config
from waflow.db import get_engine
from waflow.simulator.users import business_scoped_id

PDF = b"%PDF-1.4 engagement letter\n" + bytes(range(256)) * 8
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
SITI = "6281234567001"
SITI_BSUID = business_scoped_id(SITI, config.DEV_WABA_ID)


class ToSimulator(httpx.HTTPTransport):
    """Sends pywa's Graph API requests to the simulator; other URLs (such as media URLs) go where they say."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https" and request.url.host == "graph.facebook.com":
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return super().handle_request(request)


@pytest.fixture
def simulator(make, serve) -> Iterator[tuple[str, int]]:
    port = free_port()
    app = make(base_url=f"http://127.0.0.1:{port}/", clock=time.time)
    yield serve(app, port), port


@pytest.fixture
def wa(simulator) -> Iterator[WhatsApp]:
    base, port = simulator
    session = httpx.Client(transport=ToSimulator(port), timeout=10)
    yield WhatsApp(phone_id=NUMBER, token=TOKEN, session=session, waba_id=config.DEV_WABA_ID, api_version="25.0")
    session.close()


def _sends(base: str) -> list[dict[str, Any]]:
    return httpx.get(f"{base}/_sim/sends").json()["sends"]


# -- the client ---------------------------------------------------------------------------------


def test_pywa_sends_a_text_and_a_template_and_parses_the_answers(wa, simulator):
    base, _ = simulator
    sent = wa.send_message(to="+15551230001", text="Your documents are ready.", tracker="case-42")
    template = wa.send_template(to="+15551230002", name="appointment_reminder", language=TemplateLanguage.ENGLISH_US,
                                params=[BodyText.params("Ana Pereira", "12 May")])
    assert isinstance(sent, types.SentMessage) and sent.id.startswith("wamid.") and sent.input == "+15551230001"
    assert isinstance(template, types.SentTemplate) and template.status == types.SentTemplateStatus.ACCEPTED
    assert [(s["wamid"], s["type"]) for s in _sends(base)] == [(sent.id, "text"), (template.id, "template")]
    assert _sends(base)[0]["biz_opaque_callback_data"] == "case-42"


def test_pywa_uploads_media_sends_it_by_id_and_downloads_and_deletes_it(wa, simulator, tmp_path):
    base, _ = simulator
    document = wa.upload_media(media=PDF, mime_type="application/pdf", filename="letter.pdf")
    image = wa.upload_media(media=base64.b64decode(PNG_B64), mime_type="image/png", filename="id.png")
    sent = [wa.send_document(to="+15551230001", document=document.id, filename="letter.pdf", caption="Signed"),
            wa.send_image(to="+15551230001", image=image.id)]
    assert all(isinstance(s, SentMediaMessage) for s in sent)
    bodies = [s["body"] for s in _sends(base)]
    assert bodies[0]["document"]["id"] == document.id and bodies[1]["image"]["id"] == image.id
    url = wa.get_media_url(document.id)
    assert url.url.startswith(f"{base}/") and url.file_size == len(PDF) and url.mime_type == "application/pdf"
    assert url.sha256 == base64.b64encode(hashlib.sha256(PDF).digest()).decode()
    assert wa.get_media_bytes(url.url) == PDF
    assert wa.download_media(url=url.url, path=tmp_path, filename="letter.pdf").read_bytes() == PDF
    assert wa.delete_media(document.id).success is True
    with pytest.raises(errors.WhatsAppError) as refused:
        wa.get_media_url(document.id)
    assert refused.value.code == 100


def test_pywa_sends_and_removes_a_reaction_and_marks_a_message_read(wa, simulator):
    base, _ = simulator
    reaction = wa.send_reaction(to="+15551230001", emoji="\U0001f44d", message_id="wamid.client-1")
    removed = wa.remove_reaction(to="+15551230001", message_id="wamid.client-1")
    assert isinstance(reaction, SentReaction) and isinstance(removed, SentReaction)
    assert [s["body"]["reaction"] for s in _sends(base)] == [
        {"message_id": "wamid.client-1", "emoji": "\U0001f44d"}, {"message_id": "wamid.client-1", "emoji": ""}]
    assert wa.mark_message_as_read(message_id="wamid.client-1").success is True
    assert wa.indicate_typing(message_id="wamid.client-2").success is True
    reads = httpx.get(f"{base}/_sim/reads").json()["reads"]
    assert [(r["message_id"], r["typing_indicator"]) for r in reads] == [("wamid.client-1", False),
                                                                          ("wamid.client-2", True)]


def test_pywa_reads_the_template_list_with_its_examples_and_summary(wa):
    result = wa.get_templates()
    assert result.total_count == 5 and result.message_template_count == 5 and result.message_template_limit == 250
    found = {(t.name, t.language): t for t in result}
    reminder = found[("appointment_reminder", TemplateLanguage.ENGLISH_US)]
    assert reminder.parameter_format == types.templates.ParamFormat.POSITIONAL
    (body,) = reminder.components
    assert isinstance(body, BodyText)
    assert body.preview() == ("Hello Ana Pereira, this is a reminder of your appointment with our firm on "
                              "12 May at 10:00. Reply to this message if you need to reschedule.")
    assert len(list(wa.get_templates(name="case_update", languages=[TemplateLanguage.INDONESIAN]))) == 1


@pytest.mark.parametrize("setup,call,error", [
    ({"config": {"open_windows": False}}, lambda wa: wa.send_message(to="+15551230009", text="Hi"),
     errors.ReEngagementMessage),
    ({"config": {"pair_burst": 1}}, lambda wa: [wa.send_message(to="+15551230009", text="Hi") for _ in range(2)],
     errors.TooManyMessages),
    ({}, lambda wa: wa.send_template(to="+15551230009", name="case_update", language=TemplateLanguage.ENGLISH_US,
                                     params=[]), errors.TemplateParamCountMismatch),
    ({}, lambda wa: wa.send_template(to="+15551230009", name="no_such_template",
                                     language=TemplateLanguage.ENGLISH_US), errors.TemplateNotExists),
    ({}, lambda wa: wa.send_message(to="+15551230009", text="x" * 4097), errors.InvalidParameter),
    ({"token": "not-the-token"}, lambda wa: wa.send_message(to="+15551230009", text="Hi"), errors.ExpiredAccessToken),
])
def test_pywa_raises_metas_typed_error_for_each_refusal(wa, simulator, setup, call, error):
    base, _ = simulator
    if "config" in setup:
        assert httpx.post(f"{base}/_sim/config", json=setup["config"]).status_code == 200
    if "token" in setup:
        wa.token = setup["token"]
    with pytest.raises(error) as raised:
        call(wa)
    assert raised.value.code == error.__error_codes__[0] and raised.value.details


# -- the webhook receiver -----------------------------------------------------------------------


class PywaReceiver:
    """pywa's Flask webhook routes on a loopback port; records each POST and each handler call."""

    def __init__(self) -> None:
        self.app = Flask("pywa-receiver")
        self.bodies: list[bytes] = []
        self.updates: list[Any] = []
        self._lock = threading.Lock()

        @self.app.before_request
        def record() -> None:
            if request.method == "POST":
                with self._lock:
                    self.bodies.append(request.get_data())

        self.wa = WhatsApp(phone_id=NUMBER, server=self.app, webhook_endpoint="/webhooks/whatsapp",
                           verify_token="let-me-in", app_secret=SECRET, waba_id=config.DEV_WABA_ID)
        self.wa.on_message()(self._handle)
        self.wa.on_message_status()(self._handle)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/whatsapp"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _handle(self, _: WhatsApp, update: Any) -> None:
        with self._lock:
            self.updates.append(update)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pywa_receiver() -> Iterator[PywaReceiver]:
    receiver = PywaReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def feeding(make, pywa_receiver) -> Any:
    """A simulator posting its webhooks to pywa's receiver, with real time and quick statuses."""
    return make(webhook_url=pywa_receiver.url, clock=time.time, status_webhooks=True, status_delay=0.02,
                pair_limit=False).test_client()


def _key(update: Any) -> tuple[str, str, str]:
    if isinstance(update, types.MessageStatus):
        return "status", update.id, update.status.value
    return "message", update.id, update.type.value


def _expected(body: bytes) -> tuple[str, str, str]:
    value = json.loads(body)["entry"][0]["changes"][0]["value"]
    if "statuses" in value:
        status = value["statuses"][0]
        return "status", status["id"], status["status"]
    message = value["messages"][0]
    return "message", message["id"], message["type"]


def _settle(receiver: PywaReceiver, count: int) -> None:
    wait_for(lambda: len(receiver.bodies) >= count and len(receiver.updates) >= count, 10,
             what=f"{count} webhooks handled by pywa")
    time.sleep(0.1)  # nothing more is on its way


INBOUND = [
    {"text": "Can you review my lease?"},
    {"type": "image", "text": "My ID card"},
    {"media": {"kind": "image", "mime_type": "image/png", "data_base64": PNG_B64}},
    {"text": "The hearing", "media": {"kind": "video", "mime_type": "video/mp4", "size": 2048}},
    {"text": "The contract", "media": {"kind": "document", "mime_type": "application/pdf", "size": 2048,
                                       "filename": "contract.pdf"}},
    {"media": {"kind": "audio", "mime_type": "audio/mpeg", "size": 2048}},
    {"media": {"kind": "audio", "mime_type": "audio/ogg; codecs=opus", "size": 2048, "voice": True}},
    {"media": {"kind": "sticker", "mime_type": "image/webp", "size": 2048}},
    {"media": {"kind": "sticker", "mime_type": "image/webp", "size": 2048, "animated": True}},
]


@dataclass
class Fed:
    """What ``feed_every_kind`` made the simulator post: ids to look for, and how many webhooks."""

    inbound: list[str]  # wamids of the inbound messages, one per INBOUND entry
    media_ids: list[str]
    wamids: list[str]  # sends to Siti's number, then to her BSUID: sent, delivered, read each
    failed: str  # a send that failed (131026), its status with a phone-only contact
    phone_only: str  # a send whose statuses name the number only (user_ids off)
    total: int


def _send(client: Any, addressee: dict[str, str]) -> str:
    doc = {"messaging_product": "whatsapp", **addressee, "type": "text", "text": {"body": "Hi"}}
    answer = client.post(f"/v25.0/{NUMBER}/messages", headers={"Authorization": f"Bearer {TOKEN}"}, json=doc)
    return answer.get_json()["messages"][0]["id"]


def feed_every_kind(client: Any) -> Fed:
    """Inbound messages of each type from Siti (with her BSUID), then statuses: of sends to her number
    and to her BSUID, of a failed send, and of a send after user ids were switched off."""
    inbound, media_ids = [], []
    for doc in INBOUND:
        answer = client.post("/_sim/inbound", json={"from": SITI, "name": "Siti", **doc}).get_json()
        assert answer["gateway_status"] == 200, answer
        inbound.append(answer["wamid"])
        if "media_id" in answer:
            media_ids.append(answer["media_id"])
    wamids = [_send(client, {"to": f"+{SITI}"}), _send(client, {"recipient": SITI_BSUID})]
    client.post("/_sim/faults", json={"fail": 131026, "with_contact": True, "details": "Message Undeliverable."})
    failed = _send(client, {"to": "+15550009999"})
    client.post("/_sim/config", json={"user_ids": False})
    phone_only = _send(client, {"to": "+447700900004"})
    return Fed(inbound, media_ids, wamids, failed, phone_only, len(INBOUND) + 3 * len(wamids) + 1 + 3)


def test_pywa_handles_every_webhook_exactly_once_with_its_typed_update_and_logs_no_error(feeding, pywa_receiver,
                                                                                           caplog):
    caplog.set_level(logging.INFO, logger="pywa")
    fed = feed_every_kind(feeding)
    total, media_ids, wamids, failed, phone_only = fed.total, fed.media_ids, fed.wamids, fed.failed, fed.phone_only
    _settle(pywa_receiver, total)

    # Exactly once: one handler call per webhook, for the update that webhook carries.
    assert len(pywa_receiver.bodies) == total
    assert Counter(map(_key, pywa_receiver.updates)) == Counter(map(_expected, pywa_receiver.bodies))
    problems = [r for r in caplog.records if r.name.startswith("pywa") and r.levelno >= logging.WARNING]
    assert problems == [], [r.getMessage() for r in problems]

    messages = [u for u in pywa_receiver.updates if isinstance(u, types.Message)]
    for message in messages:
        assert message.from_user.wa_id == SITI and message.from_user.bsuid == SITI_BSUID
        assert message.waba_id == config.DEV_WABA_ID and message.metadata.phone_number_id == NUMBER
    by_media = {m.media.id: m for m in messages if m.has_media}
    assert set(by_media) == set(media_ids)
    voice = next(m for m in messages if m.audio and m.audio.voice)
    assert voice.audio.mime_type == "audio/ogg; codecs=opus"
    assert {m.sticker.animated for m in messages if m.sticker} == {True, False}
    document = next(m for m in messages if m.document)
    assert (document.document.filename, document.caption) == ("contract.pdf", "The contract")

    statuses = {(u.id, u.status.value): u for u in pywa_receiver.updates if isinstance(u, types.MessageStatus)}
    for wamid in wamids:
        for status in ("sent", "delivered", "read"):
            assert statuses[(wamid, status)].from_user.bsuid == SITI_BSUID
    assert statuses[(wamids[0], "sent")].from_user.wa_id == SITI
    failure = statuses[(failed, "failed")]
    assert failure.error.code == 131026 and failure.from_user.wa_id == "15550009999"
    assert failure.from_user.bsuid is None
    for status in ("sent", "delivered", "read"):
        user = statuses[(phone_only, status)].from_user
        assert (user.wa_id, user.bsuid) == ("447700900004", None)


def test_pywa_drops_updates_for_another_waba_as_it_should(make, pywa_receiver):
    client = make(webhook_url=pywa_receiver.url, waba_id="999999999999999").test_client()
    client.post("/_sim/inbound", json={"from": SITI, "text": "Hello"})
    wait_for(lambda: pywa_receiver.bodies, 5, what="the webhook")
    time.sleep(0.1)
    assert pywa_receiver.updates == []


def test_pywa_4_5_cannot_parse_the_two_documented_shapes_it_predates(feeding, pywa_receiver, caplog):
    """A failed status without contacts (Meta's documented shape, §4.3) and an inbound message
    without user_id (webhooks before April 2026): pywa 4.5.0 reads ``contacts[0]`` and
    ``contacts[0]["user_id"]`` unconditionally, logs the KeyError and runs no handler. The
    simulator's defaults are Meta's shapes all the same; these are pywa's gaps, not the simulator's."""
    caplog.set_level(logging.INFO, logger="pywa")
    feeding.post("/_sim/faults", json={"fail": 131026})
    feeding.post("/v25.0/100000000000001/messages", headers={"Authorization": f"Bearer {TOKEN}"},
                 json={"messaging_product": "whatsapp", "to": "+15550009999", "type": "text", "text": {"body": "Hi"}})
    feeding.post("/_sim/inbound", json={"from": SITI, "text": "Hello", "user_id": None})
    wait_for(lambda: len(pywa_receiver.bodies) >= 2, 5, what="two webhooks")
    time.sleep(0.2)
    assert pywa_receiver.updates == []
    failures = [r for r in caplog.records if r.name == "pywa.server" and r.levelno == logging.ERROR]
    assert sorted(str(r.exc_info[1]) for r in failures) == ["'contacts'", "'user_id'"]


# -- the same webhooks, to pywa and to waflow's gateway ------------------------------------------


class Tee:
    """A webhook URL that posts each webhook on, bytes and signature unchanged, to pywa's receiver and to
    waflow's gateway; it answers 200 only when both did, so the simulator retries as Meta would."""

    def __init__(self, *urls: str) -> None:
        self.answers: list[tuple[int, ...]] = []
        tee = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {"Content-Type": "application/json",
                           "X-Hub-Signature-256": self.headers["X-Hub-Signature-256"]}
                statuses = tuple(httpx.post(url, content=body, headers=headers, timeout=10).status_code
                                 for url in urls)
                tee.answers.append(statuses)
                self.send_response(200 if set(statuses) == {200} else 502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/whatsapp"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """waflow's inbound spine as deployed (gunicorn, Celery workers) with the simulator's app secret: on
    RabbitMQ and PostgreSQL when their URLs are set, else on the embedded default."""
    with running(prepared_stack("best", "waflow-sim-pywa-", secret=SECRET)) as started:
        yield started


def test_the_same_webhooks_reach_pywa_and_waflows_gateway_and_persist(make, pywa_receiver, stack, caplog):
    caplog.set_level(logging.INFO, logger="pywa")
    wipe(stack.settings.database_url)
    tee = Tee(pywa_receiver.url, stack.url)
    try:
        client = make(webhook_url=tee.url, clock=time.time, status_webhooks=True, status_delay=0.02,
                      pair_limit=False).test_client()
        fed = feed_every_kind(client)
        _settle(pywa_receiver, fed.total)
        # pywa answers first; the tee then posts to the gateway: wait for both answers of every webhook.
        wait_for(lambda: len(tee.answers) >= fed.total, 30, what=f"{fed.total} webhooks answered by both")
    finally:
        tee.close()
    assert tee.answers == [(200, 200)] * fed.total
    assert Counter(map(_key, pywa_receiver.updates)) == Counter(map(_expected, pywa_receiver.bodies))
    assert [r for r in caplog.records if r.name.startswith("pywa") and r.levelno >= logging.WARNING] == []

    engine = get_engine(stack.settings.database_url)

    def rows(sql: str) -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).all()

    try:
        wait_for(lambda: len(rows("SELECT id FROM messages")) == len(INBOUND)
                 and len(rows("SELECT id FROM message_statuses")) == fed.total - len(INBOUND), 60, interval=0.2,
                 what="every message and status stored")
    except AssertionError:
        print(stack.logs())
        raise
    stored = {row.wamid: row.type for row in rows("SELECT wamid, type FROM messages WHERE direction = 'inbound'")}
    assert stored == {wamid: _expected_type(doc) for wamid, doc in zip(fed.inbound, INBOUND)}
    assert {row.media_id for row in rows("SELECT media_id FROM media")} == set(fed.media_ids)
    assert [tuple(r) for r in rows(f"SELECT wa_id, user_id FROM contacts WHERE wa_id = '{SITI}'")] == [
        (SITI, SITI_BSUID)]
    statuses = rows("SELECT wamid, status, recipient_id, recipient_user_id, error_code FROM message_statuses")
    expected = [(w, s) for w in (*fed.wamids, fed.phone_only) for s in ("sent", "delivered", "read")]
    assert Counter((r.wamid, r.status) for r in statuses) == Counter([*expected, (fed.failed, "failed")])
    assert {r.recipient_user_id for r in statuses if r.wamid == fed.wamids[1]} == {SITI_BSUID}
    assert [r.error_code for r in statuses if r.status == "failed"] == [131026]
    assert rows("SELECT id FROM dead_letters") == []


def _expected_type(doc: dict[str, Any]) -> str:
    return doc["media"]["kind"] if "media" in doc else doc.get("type", "text")
