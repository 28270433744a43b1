"""Every webhook and answer the simulator produces, held key by key against Meta's shapes.

Webhooks are compared with the matching case of pywa's fixtures (``tests/fixtures/pywa/``, real
Meta payloads, anonymised): every key path the simulator sends must be in the fixture, every key
path of the fixture must be in the simulator's, and the value types must agree; the only
exceptions are listed per shape below, each with the reference section (``../shared/reference/
whatsapp-cloud-api.md``) or the evidence that explains it. Answers to API calls have no fixtures:
they are held against the reference's shapes, written out here with their section.
"""
from __future__ import annotations

import base64
import io
import time
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from fixtures import load_case
from simulator_support import AUTH, NUMBER, Receiver, clock, make, receiver, send, template, text  # noqa: F401
from support import wait_for
from waflow import config

# Documented keys the simulator sends that a fixture lacks (the fixtures predate them or skip them).
FROM_USER_ID = {"entry[].changes[].value.messages[].from_user_id"}  # §4.3, 2026
MEDIA_URL = "entry[].changes[].value.messages[].{kind}.url"  # §4.1 and §5: Meta now includes the URL
PRICING_TYPE = {"entry[].changes[].value.statuses[].pricing.type"}  # §4.2: PMP pricing's type (v24.0+)
# Fixture keys the simulator leaves out.
PARENT_USER_ID = {"entry[].changes[].value.contacts[].parent_user_id"}  # §4.3: only with parent BSUIDs on
FORWARDED = {"entry[].changes[].value.messages[].context", "entry[].changes[].value.messages[].context.forwarded"}
# §4.2: v24.0+ webhooks omit conversation.
CONVERSATION = {"entry[].changes[].value.statuses[].conversation" + suffix
                for suffix in ("", ".id", ".expiration_timestamp", ".origin", ".origin.type")}
# Status contacts in live traffic carry wa_id and user_id without a profile (pywa issue #188, 2026).
STATUS_PROFILE = {"entry[].changes[].value.contacts[].profile", "entry[].changes[].value.contacts[].profile.name"}
# The simulator prices the sent status only; §4.2 says one of delivered / read carries it too.
LATER_PRICING = {"entry[].changes[].value.statuses[].pricing" + suffix
                 for suffix in ("", ".billable", ".pricing_model", ".category")}
# §4.3: a failed status has no contacts.
FAILED_CONTACTS = {"entry[].changes[].value.contacts" + suffix
                   for suffix in ("", "[]", "[].profile", "[].profile.name", "[].wa_id", "[].user_id",
                                  "[].parent_user_id")}


def paths(doc: Any, prefix: str = "") -> dict[str, set[str]]:
    """Every key path of a JSON document (list items as ``[]``) → the types of the values found there."""
    found: dict[str, set[str]] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else key
            found.setdefault(path, set()).add(type(value).__name__)
            for sub, types in paths(value, path).items():
                found.setdefault(sub, set()).update(types)
    elif isinstance(doc, list):
        for item in doc:
            found.setdefault(f"{prefix}[]", set()).add(type(item).__name__)
            for sub, types in paths(item, f"{prefix}[]").items():
                found.setdefault(sub, set()).update(types)
    return found


def assert_same_shape(ours: Any, theirs: Any, *, extra: set[str] = frozenset(),
                      left_out: set[str] = frozenset()) -> None:
    """``ours`` has exactly ``theirs``' key paths, but for the documented ``extra`` (each one really sent) and
    ``left_out`` (those of them the fixture has), with the same value types."""
    mine, reference = paths(ours), paths(theirs)
    assert set(mine) - set(reference) == set(extra), "keys the simulator adds"
    assert set(reference) - set(mine) == set(left_out) & set(reference), "keys the simulator leaves out"
    for path in set(mine) & set(reference):
        assert mine[path] == reference[path], f"{path}: {mine[path]} here, {reference[path]} in Meta's"


@pytest.fixture
def live(make, receiver):
    return make(clock=time.time, status_webhooks=True, status_delay=0.01, webhook_url=receiver.url).test_client()


def _posted(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.posts) >= count, 5, what=f"{count} webhooks")
    return receiver.docs()


def _inbound(client: Any, receiver: Receiver, **doc: Any) -> dict[str, Any]:
    before = len(receiver.posts)
    answer = client.post("/_sim/inbound", json={"from": "972987654321", "name": "Test Name", **doc})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return _posted(receiver, before + 1)[before]


def _status_of(doc: dict[str, Any]) -> str:
    return doc["entry"][0]["changes"][0]["value"]["statuses"][0]["status"]


def _media(kind: str, mime_type: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "mime_type": mime_type, "data_base64": base64.b64encode(b"some bytes").decode(), **extra}


# -- webhooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case,doc,extra,left_out", [
    ("text", {"text": "Body Text"}, FROM_USER_ID, PARENT_USER_ID),
    ("media_with_url", {"type": "image"}, FROM_USER_ID, PARENT_USER_ID),
    ("image", {"media": _media("image", "image/jpeg")}, FROM_USER_ID | {MEDIA_URL.format(kind="image")},
     PARENT_USER_ID),
    ("video", {"text": "caption", "media": _media("video", "video/mp4")},
     FROM_USER_ID | {MEDIA_URL.format(kind="video")}, PARENT_USER_ID | FORWARDED),
    ("document", {"text": "caption", "media": _media("document", "application/pdf", filename="filename.pdf")},
     FROM_USER_ID | {MEDIA_URL.format(kind="document")}, PARENT_USER_ID | FORWARDED),
    ("audio", {"media": _media("audio", "audio/ogg; codecs=opus")}, FROM_USER_ID | {MEDIA_URL.format(kind="audio")},
     PARENT_USER_ID | FORWARDED),
    ("voice", {"media": _media("audio", "audio/ogg; codecs=opus", voice=True)},
     FROM_USER_ID | {MEDIA_URL.format(kind="audio")}, PARENT_USER_ID),
    ("static_sticker", {"media": _media("sticker", "image/webp")}, FROM_USER_ID | {MEDIA_URL.format(kind="sticker")},
     PARENT_USER_ID),
    ("animated_sticker", {"media": _media("sticker", "image/webp", animated=True)},
     FROM_USER_ID | {MEDIA_URL.format(kind="sticker")}, PARENT_USER_ID),
])
def test_an_inbound_message_webhook_has_metas_shape(live, receiver, case, doc, extra, left_out):
    assert_same_shape(_inbound(live, receiver, **doc), load_case("message", case), extra=extra, left_out=left_out)


def test_a_phone_only_inbound_webhook_has_the_shape_of_webhooks_before_business_scoped_ids(live, receiver):
    ours = _inbound(live, receiver, text="Body Text", user_id=None)
    theirs = load_case("message", "text")
    del theirs["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"]
    assert_same_shape(ours, theirs, left_out=PARENT_USER_ID)


@pytest.mark.parametrize("case,tracker", [("sent", None), ("delivered", None), ("read", None),
                                          ("with_tracker", "some data")])
def test_a_status_webhook_has_metas_shape(live, receiver, case, tracker):
    extra = {"biz_opaque_callback_data": tracker} if tracker else {}
    send(live, text(to="+972987654321", **extra))
    status = "sent" if case == "with_tracker" else case
    (ours,) = [d for d in _posted(receiver, 3) if _status_of(d) == status]
    priced = status == "sent"
    assert_same_shape(ours, load_case("message_status", case), extra=PRICING_TYPE if priced else set(),
                      left_out=PARENT_USER_ID | CONVERSATION | STATUS_PROFILE | (set() if priced else LATER_PRICING))


def test_a_status_webhook_for_a_send_to_a_business_scoped_id_names_it(live, receiver):
    doc = {"messaging_product": "whatsapp", "recipient": "US.13491208655302741918", "type": "text",
           "text": {"body": "Hi"}}
    send(live, doc)
    ours = next(d for d in _posted(receiver, 3) if _status_of(d) == "read")
    # §4.3: recipient_user_id names the BSUID sent to; wa_id and recipient_id are absent for a user the simulator
    # never saw (one using a username would have neither).
    assert_same_shape(ours, load_case("message_status", "read"),
                      extra={"entry[].changes[].value.statuses[].recipient_user_id"},
                      left_out=PARENT_USER_ID | CONVERSATION | STATUS_PROFILE | LATER_PRICING | {
                          "entry[].changes[].value.contacts[].wa_id",
                          "entry[].changes[].value.statuses[].recipient_id"})


def test_a_failed_status_webhook_has_metas_shape_without_contacts(live, receiver):
    live.post("/_sim/faults", json={"fail": 130472, "details": "Failed to send message because this user's phone "
                                                               "number is part of an experiment"})
    send(live, text(to="+972987654321"))
    (ours,) = _posted(receiver, 1)
    assert_same_shape(ours, load_case("message_status", "failed"), left_out=FAILED_CONTACTS)
    theirs_error = load_case("message_status", "failed")["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]
    ours_error = ours["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]
    assert (ours_error["code"], ours_error["title"]) == (theirs_error["code"], theirs_error["title"])


def test_every_webhook_names_the_configured_waba_as_a_string(live, receiver):
    _inbound(live, receiver, text="Body Text")
    send(live, text(to="+972987654321"))
    assert {entry["id"] for doc in _posted(receiver, 4) for entry in doc["entry"]} == {config.DEV_WABA_ID}


# -- answers to API calls (reference shapes) ----------------------------------------------------

SEND = {"messaging_product", "contacts", "contacts[]", "contacts[].input", "contacts[].wa_id", "messages",
        "messages[]", "messages[].id"}  # §6, "Response"
ERROR = {"error", "error.message", "error.type", "error.code", "error.error_data", "error.error_data.messaging_product",
         "error.error_data.details", "error.fbtrace_id"}  # §7.2; error_subcode is absent from v16.0
MEDIA_INFO = {"messaging_product", "url", "mime_type", "sha256", "file_size", "id"}  # §5
# Meta's GET /{waba-id}/message_templates (Business Management API), as pywa 4.5.0's TemplatesResult and
# TemplateDetails read it: a BODY with positional placeholders carries example.body_text.
TEMPLATES = {"data", "data[]", "data[].name", "data[].parameter_format", "data[].components",
             "data[].components[]", "data[].components[].type", "data[].components[].text",
             "data[].components[].example", "data[].components[].example.body_text",
             "data[].components[].example.body_text[]", "data[].components[].example.body_text[][]",
             "data[].language", "data[].status", "data[].category", "data[].id", "paging", "paging.cursors",
             "paging.cursors.before", "paging.cursors.after", "paging.next", "summary", "summary.total_count",
             "summary.message_template_count", "summary.message_template_limit",
             "summary.are_translations_complete"}


def _keys(response: Any) -> set[str]:
    return set(paths(response.get_json()))


def test_the_answers_to_sends_and_read_receipts_have_the_references_shapes(make):
    client = make().test_client()
    assert _keys(send(client, text())) == SEND
    assert _keys(send(client, template("hello_world"))) == SEND | {"messages[].message_status"}
    bsuid = {"messaging_product": "whatsapp", "recipient": "US.13491208655302741918", "type": "text",
             "text": {"body": "Hi"}}
    assert _keys(send(client, bsuid)) == SEND - {"contacts[].wa_id"} | {"contacts[].user_id"}  # §4.3
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x"}
    assert send(client, read).get_json() == {"success": True}  # §6, mark as read
    assert _keys(send(client, {**text(), "to": "call me"})) == ERROR
    assert _keys(send(client, text(), headers={})) == ERROR


def test_the_answers_of_the_media_endpoints_have_the_references_shapes(make):
    client = make().test_client()
    boundary, body = encode_multipart({"messaging_product": "whatsapp", "type": "application/pdf",
                                       "file": FileStorage(io.BytesIO(b"%PDF-1.4"), "a.pdf")})
    uploaded = client.post(f"/v25.0/{NUMBER}/media", headers=AUTH, data=body,
                           content_type=f"multipart/form-data; boundary={boundary}")
    assert _keys(uploaded) == {"id"}  # §5
    media_id = uploaded.get_json()["id"]
    info = client.get(f"/v25.0/{media_id}", headers=AUTH)
    assert _keys(info) == MEDIA_INFO
    assert {k: type(v).__name__ for k, v in info.get_json().items()} == {
        "messaging_product": "str", "url": "str", "mime_type": "str", "sha256": "str", "file_size": "int", "id": "str"}
    assert client.delete(f"/v25.0/{media_id}", headers=AUTH).get_json() == {"success": True}  # §5
    assert _keys(client.get(f"/v25.0/{media_id}", headers=AUTH)) == ERROR


def test_the_template_list_has_metas_shape(make):
    client = make().test_client()
    listed = client.get(f"/v25.0/{config.DEV_WABA_ID}/message_templates", headers=AUTH,
                        query_string={"limit": 2, "summary": "total_count,message_template_count,"
                                                             "message_template_limit,are_translations_complete"})
    assert _keys(listed) == TEMPLATES
