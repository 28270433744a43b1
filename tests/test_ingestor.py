"""The ingestor's pure part: ``split_webhook`` turns one raw Meta webhook body into normalized events.

Fixtures are real Meta payloads from pywa (``tests/fixtures/pywa/SOURCE.md``); the
expected values below are copied from those files.
"""
from __future__ import annotations

import copy
import hashlib
import json

import pytest

from fixtures import first_value, load_case, load_cases, to_bytes, unique_ids
from waflow.events import MetaError, NormalizedEvent
from waflow.ingestor import Batch, NotAWebhook, media_job, split_webhook

RECEIVED_AT = 1_764_057_600.25
CASES = load_cases()
CASE_IDS = [f"{stem}-{case}" for stem, case, _ in CASES]

TEXT_CONTACT = {
    "wa_id": "972987654321",
    "user_id": "US.13491208655302741918",
    "parent_user_id": "US.ENT.11815799212886844830",
    "name": "Test Name",
}


def split(body) -> Batch:
    return split_webhook(to_bytes(body), RECEIVED_AT)


def only_event(stem: str, case: str) -> NormalizedEvent:
    batch = split(load_case(stem, case))
    assert batch.rejected == []
    assert len(batch.events) == 1
    return batch.events[0]


def text_body(messages: list[dict], statuses: list[dict] | None = None, contacts: list[dict] | None = None) -> dict:
    """The ``message.json#text`` envelope holding the given messages/statuses."""
    body = load_case("message", "text")
    value = first_value(body)
    value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    if contacts is not None:
        value["contacts"] = contacts
    return body


def text_message(wamid: str, text: str = "hi", timestamp: str = "1697043223") -> dict:
    return {"from": "972987654321", "id": wamid, "timestamp": timestamp, "type": "text", "text": {"body": text}}


def sent_status(wamid: str, status: str = "sent") -> dict:
    return {"id": wamid, "status": status, "timestamp": "1698266945", "recipient_id": "972987654321"}


# --- every fixture ------------------------------------------------------------------------------------------


def test_it_loads_all_74_fixture_payloads():
    # (../shared/reference/whatsapp-cloud-api.md section 10 says 66; the 19 files hold 74 cases.)
    assert len(CASES) == 74
    assert len({stem for stem, _, _ in CASES}) == 19
    assert sum(1 for stem, _, _ in CASES if stem == "account_update") == 17
    assert sum(1 for stem, _, _ in CASES if stem == "message") == 23
    assert sum(1 for stem, _, _ in CASES if stem == "message_status") == 7


@pytest.mark.parametrize(("stem", "case", "body"), CASES, ids=CASE_IDS)
def test_it_splits_every_fixture_into_the_expected_event_kinds(stem, case, body):
    batch = split(body)

    assert batch.rejected == []
    assert batch.sha256 == hashlib.sha256(to_bytes(body)).hexdigest()
    expected = []
    for entry in body["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if change["field"] == "messages":
                expected += [("message", change["field"], m["id"]) for m in value.get("messages", [])]
                expected += [("status", change["field"], s["id"]) for s in value.get("statuses", [])]
                expected += [("error", change["field"], None) for _ in value.get("errors", [])]
            else:
                expected.append(("field", change["field"], None))
    got = [
        (e.kind, e.field, e.message.wamid if e.message else e.status.wamid if e.status else None)
        for e in batch.events
    ]
    assert got == expected
    for event in batch.events:
        assert event.received_at == RECEIVED_AT
        assert event.payload_sha256 == batch.sha256
        assert event.waba_id == body["entry"][0]["id"]


@pytest.mark.parametrize(("stem", "case", "body"), CASES, ids=CASE_IDS)
def test_it_keeps_every_message_and_other_field_exactly_as_meta_sent_it(stem, case, body):
    batch = split(body)
    change = body["entry"][0]["changes"][0]
    value = change["value"]
    if change["field"] == "messages":
        messages = [e.message for e in batch.events if e.kind == "message"]
        assert [m.raw for m in messages] == value.get("messages", [])
        statuses = [e.status for e in batch.events if e.kind == "status"]
        assert [s.raw for s in statuses] == value.get("statuses", [])
        if "metadata" in value:
            assert {e.phone_number_id for e in batch.events} == {value["metadata"]["phone_number_id"]}
    else:
        (event,) = batch.events
        assert event.update.field == change["field"]
        assert event.update.value == value
        assert event.event_id.startswith(f"field:{change['field']}:")


def test_it_keeps_calls_statuses_as_a_calls_field_event_not_as_message_statuses():
    (event,) = split(load_case("call_status", "call_status")).events
    assert (event.kind, event.field) == ("field", "calls")
    assert event.update.value["statuses"][0]["id"] == "wacid.ABGGFjFVU2AfAgo6V"


# --- messages, type by type ---------------------------------------------------------------------------------


def test_it_reads_a_text_message_and_its_sender():
    event = only_event("message", "text")
    assert event.event_id == "message:wamid.xyzxyz"
    assert (event.phone_number_id, event.display_phone_number) == ("1122334455667", "972123456789")
    assert event.waba_id == "1234567890987654321"
    msg = event.message
    assert (msg.wamid, msg.type, msg.timestamp, msg.text) == ("wamid.xyzxyz", "text", 1697043223, "Body Text")
    assert msg.content == {"body": "Body Text"}
    assert msg.media is None and msg.context is None and msg.referral is None and msg.errors == []
    assert event.contact.model_dump(exclude_none=True) == TEXT_CONTACT


MEDIA_CASES = [
    ("image", None, {"id": "65463453", "kind": "image", "mime_type": "image/jpeg", "sha256": "4654+8g="}),
    ("media_with_url", None, {
        "id": "65463453", "kind": "image", "mime_type": "image/jpeg", "sha256": "4654+8g=",
        "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/"
               "?mid=65463453&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw",
    }),
    ("video", "caption", {
        "id": "765756756", "kind": "video", "mime_type": "video/mp4",
        "sha256": "Jh+2ij6PzUv/J2y+grrtegr/ZMzRxkEPwc24Oyib4s03w9Jc=", "caption": "caption",
    }),
    ("document", "caption", {
        "id": "1234567890987654321", "kind": "document", "mime_type": "application/pdf",
        "sha256": "grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY=", "filename": "filename.pdf", "caption": "caption",
    }),
    ("audio", None, {
        "id": "1234567890987654321", "kind": "audio", "mime_type": "audio/ogg; codecs=opus",
        "sha256": "E3dxS/PdYZE7ppA3pQ4mpCFaXBJ8pX4SRN/dsfvds/iPGA=", "voice": False,
    }),
    ("voice", None, {
        "id": "1234567890987654321", "kind": "audio", "mime_type": "audio/ogg; codecs=opus",
        "sha256": "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=", "voice": True,
    }),
    ("static_sticker", None, {
        "id": "1234567890987654321", "kind": "sticker", "mime_type": "image/webp",
        "sha256": "OmT4nhjUhCMIPNmj7eeOZeCYjTXkLxoOv85OMCFwSuc=", "animated": False,
    }),
    ("animated_sticker", None, {
        "id": "1234567890987654321", "kind": "sticker", "mime_type": "image/webp",
        "sha256": "HcwyCKrTKXHk0a00ms4HWIA76GY0Du6q4Z/iuwevw=", "animated": True,
    }),
]


@pytest.mark.parametrize(("case", "text", "media"), MEDIA_CASES, ids=[c[0] for c in MEDIA_CASES])
def test_it_reads_media_messages_into_media_info(case, text, media):
    event = only_event("message", case)
    assert event.message.type == media["kind"]
    assert event.message.media.model_dump(exclude_none=True) == media
    assert event.message.text == text
    # The forwarded flag of the video/document/audio fixtures comes along.
    assert (event.message.context is not None) == (case in ("video", "document", "audio"))


def test_it_builds_the_media_job_for_an_image():
    job = media_job(only_event("message", "image"))
    assert job == {
        "event_id": "media:65463453", "media_id": "65463453", "wamid": "wamid.xyzxyz",
        "phone_number_id": "1122334455667", "kind": "image", "mime_type": "image/jpeg",
        "sha256": "4654+8g=", "filename": None, "url": None,
    }


def test_it_lists_media_jobs_only_for_media_messages():
    batch = split(text_body([
        text_message("wamid.A"),
        {**load_case("message", "document")["entry"][0]["changes"][0]["value"]["messages"][0], "id": "wamid.B"},
    ]))
    assert [(j["wamid"], j["media_id"], j["filename"]) for j in batch.media_jobs] == [
        ("wamid.B", "1234567890987654321", "filename.pdf")
    ]


@pytest.mark.parametrize(("case", "emoji", "removed"), [
    ("reaction", "\U0001F62E", False),
    ("unreaction_empty", None, True),
    ("unreaction_no_emoji", None, True),
])
def test_it_reads_reactions_and_their_removal(case, emoji, removed):
    msg = only_event("message", case).message
    assert msg.type == "reaction"
    assert msg.content == {"message_id": "wamid.yzxyzx=", "emoji": emoji, "removed": removed}
    assert msg.text == emoji


@pytest.mark.parametrize(("case", "lat", "lon", "text"), [
    ("current_location", 12.25089, 43.90539, None),
    ("chosen_location", 37.4611978, -122.2164385, "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025"),
])
def test_it_reads_locations(case, lat, lon, text):
    msg = only_event("message", case).message
    assert (msg.content["latitude"], msg.content["longitude"]) == (lat, lon)
    assert msg.text == text


def test_it_lists_shared_contacts_by_formatted_name():
    msg = only_event("message", "contacts").message
    assert msg.text == "Chandler Bing, Monica, Rachel Green"
    assert [c["phones"][0]["phone"] for c in msg.content["contacts"]] == [
        "+1 555-555-5555", "+1 666-666-6666", "+1 777-777-7777"
    ]


@pytest.mark.parametrize(("stem", "case", "reply_type", "extra"), [
    ("callback_button", "button", "button_reply", {}),
    ("callback_selection", "callback", "list_reply", {}),
    ("callback_selection", "description", "list_reply", {"description": "description"}),
])
def test_it_reads_interactive_button_and_list_replies(stem, case, reply_type, extra):
    msg = only_event(stem, case).message
    assert msg.type == "interactive"
    assert msg.text == "title"
    assert msg.content == {"type": reply_type, "id": "callback_data", "title": "title", **extra}
    assert msg.context.quoted_wamid == "wamid.xyzxyz"


@pytest.mark.parametrize(("case", "flow_token"), [
    ("completion", "AQAAAAACS5FpgQ_cAAAAAD0QI3s."), ("without_flow_token", None),
])
def test_it_parses_the_response_json_of_a_flow_completion(case, flow_token):
    msg = only_event("flow_completion", case).message
    assert (msg.text, msg.content["type"], msg.content["name"]) == ("Sent", "nfm_reply", "flow")
    response = msg.content["response"]
    assert response["comment_text"] == "Comment Text"
    assert (response["delivery_rating"], response["purchase_rating"]) == ("4", "2")
    assert response.get("flow_token") == flow_token
    assert response == json.loads(msg.raw["interactive"]["nfm_reply"]["response_json"])


@pytest.mark.parametrize(("case", "wamid", "quoted"), [
    ("quick_reply", "wamid.xsidjw", "wamid.xyzxyz=="), ("quick_reply_without_context", "wamid.xsidjx", None),
])
def test_it_reads_template_quick_reply_buttons(case, wamid, quoted):
    event = only_event("callback_button", case)
    msg = event.message
    assert (msg.wamid, msg.type, msg.text) == (wamid, "button", "title")
    assert msg.content == {"payload": "callback_data", "text": "title"}
    assert (msg.context.quoted_wamid if msg.context else None) == quoted
    assert event.contact.model_dump(exclude_none=True) == TEXT_CONTACT


def test_it_reads_an_order_with_its_product_items():
    msg = only_event("message", "order").message
    assert msg.text is None  # Meta sent "text": ""
    assert msg.content["catalog_id"] == "354160437058781"
    assert [(p["product_retailer_id"], p["quantity"], p["item_price"]) for p in msg.content["product_items"]] == [
        ("HAMBURGER", 3, 30), ("FRENCH_FRIES", 2, 35), ("SODA", 2, 10),
    ]


def test_it_reads_a_number_change_system_message_without_contacts():
    event = only_event("system", "phone_number_change")
    assert event.message.text == "User A changed from 972987654321 to 972912345678"
    assert event.message.content["type"] == "user_changed_number"
    assert event.message.content["wa_id"] == "972912345678"
    assert event.contact.model_dump(exclude_none=True) == {"wa_id": "972987654321"}


def test_it_reads_an_identity_change_system_message():
    event = only_event("system", "identity_change")
    assert (event.message.text, event.message.content["type"]) == ("User identity changed", "customer_identity_changed")
    assert event.contact.model_dump(exclude_none=True) == {"wa_id": "972987654321", "name": "User A"}


@pytest.mark.parametrize(("case", "inner_type"), [("unsupported", None), ("unsupported_with_type", "pool")])
def test_it_keeps_unsupported_messages_with_their_errors(case, inner_type):
    msg = only_event("message", case).message
    assert msg.type == "unsupported"
    assert msg.content == {"unsupported_type": inner_type}
    assert msg.errors == [MetaError(code=131051, title="Message type unknown", message="Message type unknown",
                                    details="Message type is currently not supported.")]


def test_it_reads_a_revoked_message():
    msg = only_event("deleted_message", "revoke").message
    assert (msg.wamid, msg.type) == ("<WHATSAPP_MESSAGE_ID>", "revoke")
    assert msg.content == {"original_message_id": "<ORIGINAL_WHATSAPP_MESSAGE_ID>"}


def test_it_reads_an_edited_media_message_with_its_new_media():
    msg = only_event("edited_message", "image").message
    assert msg.type == "edit"
    assert msg.content["original_message_id"] == "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    assert msg.content["type"] == "image"
    assert msg.text == "Updated image caption"
    assert (msg.media.id, msg.media.kind, msg.media.url) == (
        "1234567890", "image", "https://media.example.com/updated-image.jpg"
    )


@pytest.mark.parametrize(("case", "quoted_wamid", "quoted_from", "forwarded", "frequently"), [
    ("reply", "wamid.xyzxyz==", "972123456789", False, False),
    ("forwarded", None, None, True, False),
    ("forwarded_many_times", None, None, False, True),
])
def test_it_reads_reply_and_forwarding_context(case, quoted_wamid, quoted_from, forwarded, frequently):
    ctx = only_event("message", case).message.context
    assert (ctx.quoted_wamid, ctx.quoted_from, ctx.forwarded, ctx.frequently_forwarded) == (
        quoted_wamid, quoted_from, forwarded, frequently
    )


def test_it_keeps_the_click_to_whatsapp_referral():
    msg = only_event("message", "referral").message
    assert (msg.wamid, msg.text) == ("wamid.ID", "BODY")
    assert msg.referral["ctwa_clid"] == "CTWA_CLID"
    assert msg.referral == msg.raw["referral"]
    assert len(msg.referral) == 10


def test_it_emits_the_value_errors_next_to_an_interactive_message_meta_could_not_read():
    batch = split(load_case("message", "interactive_message_with_err"))
    assert batch.rejected == []
    message, error = batch.events
    assert (message.kind, message.message.type, message.message.wamid) == ("message", "interactive", "wamid.wegrchytvwcggt=")
    assert message.message.context.quoted_wamid == "wamid.gvwegfretge=="
    assert message.message.errors == []
    assert error.kind == "error" and error.event_id.startswith("error:")
    assert error.error == MetaError(code=131000, title="Something went wrong", message="Something went wrong",
                                    details="Unsupported webhook payload")


def test_it_keeps_a_message_type_waflow_does_not_know():
    msg = {"from": "972987654321", "id": "wamid.poll", "timestamp": "1697043223", "type": "poll_vote",
           "poll_vote": {"x": 1}}
    batch = split(text_body([msg]))
    assert batch.rejected == []
    (event,) = batch.events
    assert (event.kind, event.message.type, event.message.text) == ("message", "poll_vote", None)
    assert event.message.content == {"poll_vote": {"x": 1}}
    assert event.message.raw == msg


def test_it_knows_a_sender_by_business_scoped_user_id_alone():
    msg = {"id": "wamid.bsuid", "timestamp": "1775000000", "type": "text", "text": {"body": "hello"}}
    card = {"profile": {"name": "Ana", "username": "ana.b"}, "user_id": "US.777", "parent_user_id": "US.ENT.7"}
    (event,) = split(text_body([msg], contacts=[card])).events
    assert event.contact.model_dump(exclude_none=True) == {
        "user_id": "US.777", "parent_user_id": "US.ENT.7", "name": "Ana", "username": "ana.b"
    }
    assert event.contact.wa_id is None


def test_it_matches_each_sender_to_its_own_contact_card():
    cards = [{"profile": {"name": "A"}, "wa_id": "111", "user_id": "US.1"},
             {"profile": {"name": "B"}, "wa_id": "222", "user_id": "US.2"}]
    messages = [{**text_message("wamid.1"), "from": "222"},
                {"from_user_id": "US.1", "id": "wamid.2", "timestamp": "1", "type": "text", "text": {"body": "x"}}]
    events = split(text_body(messages, contacts=cards)).events
    assert [(e.contact.wa_id, e.contact.user_id, e.contact.name) for e in events] == [
        ("222", "US.2", "B"), ("111", "US.1", "A")
    ]


# --- statuses -----------------------------------------------------------------------------------------------

STATUS_CASES = [
    ("sent", "wamid.xyzxyz", "sent", 1698266945, {"recipient_id": "972987654321"}),
    ("delivered", "wamid.xyzxyz", "delivered", 1698266945, {"recipient_id": "972987654321"}),
    ("read", "wamid.xyzxyz", "read", 1689380458, {"recipient_id": "972987654321"}),
    ("played", "wamid.xyzxyz", "played", 1689380458, {"recipient_id": "972987654321"}),
    ("failed", "wamid.xyzxyz", "failed", 1689380458, {"conversation": None, "pricing": None}),
    ("with_tracker", "wamid.xyzxyz", "sent", 1698266945, {"biz_opaque_callback_data": "some data"}),
    ("group", "<WHATSAPP_MESSAGE_ID>", "read", 1698266945,
     {"recipient_type": "group", "recipient_id": "fowefinoewcnw"}),
]


@pytest.mark.parametrize(("case", "wamid", "status", "timestamp", "fields"), STATUS_CASES,
                         ids=[c[0] for c in STATUS_CASES])
def test_it_reads_delivery_statuses(case, wamid, status, timestamp, fields):
    event = only_event("message_status", case)
    assert event.kind == "status"
    assert event.event_id == f"status:{wamid}:{status}"
    st = event.status
    assert (st.wamid, st.status, st.timestamp) == (wamid, status, timestamp)
    for name, expected in fields.items():
        assert getattr(st, name) == expected, name
    if case in ("sent", "with_tracker"):
        assert st.pricing == {"billable": True, "pricing_model": "CBP", "category": "service"}
        assert st.conversation["expiration_timestamp"] == "1698339900"


def test_it_carries_the_errors_of_a_failed_status():
    (error,) = only_event("message_status", "failed").status.errors
    assert (error.code, error.title) == (130472, "User's number is part of an experiment")
    assert error.details == "Failed to send message because this user's phone number is part of an experiment"
    assert error.href == "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


def test_it_lowercases_the_status():
    (event,) = split(text_body([], statuses=[sent_status("wamid.S", "DELIVERED")])).events
    assert (event.status.status, event.event_id) == ("delivered", "status:wamid.S:delivered")
    assert event.status.raw["status"] == "DELIVERED"


# --- batches ------------------------------------------------------------------------------------------------


def test_it_splits_messages_and_statuses_of_one_change_in_order():
    body = text_body([text_message("wamid.M1", "one"), text_message("wamid.M2", "two")],
                     statuses=[sent_status("wamid.S1", "read"), sent_status("wamid.S2", "failed")])
    batch = split(body)
    assert batch.rejected == []
    assert [(e.kind, e.event_id) for e in batch.events] == [
        ("message", "message:wamid.M1"), ("message", "message:wamid.M2"),
        ("status", "status:wamid.S1:read"), ("status", "status:wamid.S2:failed"),
    ]
    assert [e.message.text for e in batch.events[:2]] == ["one", "two"]


def test_it_splits_a_body_with_several_entries_and_fields():
    body = load_case("message", "text")
    body["entry"] += load_case("account_update", "account_offboarded")["entry"]
    body["entry"] += unique_ids(load_case("message_status", "read"), "more")["entry"]
    batch = split(body)
    assert [(e.kind, e.field, e.waba_id) for e in batch.events] == [
        ("message", "messages", "1234567890987654321"),
        ("field", "account_update", "102290129340398"),
        ("status", "messages", "5467539754836534"),
    ]


def test_it_splits_a_1000_update_batch_across_10_entries():
    entries = []
    for e in range(10):
        body = text_body([text_message(f"wamid.bulk.{e}.{i}", f"m{i}") for i in range(100)])
        entries += body["entry"]
    body["entry"] = entries
    batch = split(body)
    assert batch.rejected == []
    assert len(batch.events) == 1000
    assert len({e.event_id for e in batch.events}) == 1000
    assert batch.events[999].message.wamid == "wamid.bulk.9.99"


def test_it_splits_600_messages_and_400_statuses_of_one_change():
    body = text_body([text_message(f"wamid.in.{i}") for i in range(600)],
                     statuses=[sent_status(f"wamid.out.{i}", "delivered") for i in range(400)])
    batch = split(body)
    assert batch.rejected == []
    assert [e.kind for e in batch.events] == ["message"] * 600 + ["status"] * 400
    assert len({e.event_id for e in batch.events}) == 1000


def test_it_splits_all_fixtures_merged_into_one_post_with_unique_ids():
    merged = {"object": "whatsapp_business_account", "entry": []}
    for stem, case, body in CASES:
        merged["entry"] += unique_ids(body, f"{stem}.{case}")["entry"]
    batch = split(merged)
    assert batch.rejected == []
    wamid_events = [e.event_id for e in batch.events if e.kind in ("message", "status")]
    assert len(wamid_events) == 36 + 7  # every message of every fixture, every status of message_status.json
    assert len(set(wamid_events)) == len(wamid_events)
    assert len({j["media_id"] for j in batch.media_jobs}) == len(batch.media_jobs) == 9


def test_unique_ids_leaves_the_original_body_alone_and_is_deterministic():
    body = load_case("message", "image")
    original = copy.deepcopy(body)
    first, second = unique_ids(body, "t"), unique_ids(body, "t")
    assert body == original
    assert first == second
    msg = first_value(first)["messages"][0]
    assert msg["id"] != "wamid.xyzxyz" and "t" in msg["id"]
    assert msg["image"]["id"] != "65463453"
    assert first_value(unique_ids(body, "u"))["messages"][0]["id"] != msg["id"]


# --- what is set aside --------------------------------------------------------------------------------------

ENVELOPE = {"object": "whatsapp_business_account"}
CHANGE = {"field": "messages", "value": {}}

NOT_A_WEBHOOK = [
    ("not_json", b"hello, I am not JSON", ["body is not JSON", "JSONDecodeError"]),
    ("empty_body", b"", ["body is not JSON"]),
    ("invalid_utf8", b'{"object":"whatsapp_business_account","entry":[{"id":"\xff\xfe"}]}',
     ["body is not JSON", "UnicodeDecodeError"]),
    ("json_array", to_bytes([ENVELOPE]), ["JSON list, not an object"]),
    ("json_string", to_bytes("whatsapp_business_account"), ["JSON str, not an object"]),
    ("page_object", to_bytes({"object": "page", "entry": [{"id": "1", "changes": [CHANGE]}]}),
     ["object is not 'whatsapp_business_account' (a string of 4 characters)"]),
    ("no_object", to_bytes({"entry": [{"id": "1", "changes": [CHANGE]}]}), ["(absent)"]),
    ("missing_entry", to_bytes(ENVELOPE), ["entry is missing"]),
    ("empty_entry", to_bytes({**ENVELOPE, "entry": []}), ["entry is missing or not a non-empty list"]),
    ("entry_is_object", to_bytes({**ENVELOPE, "entry": {"id": "1"}}), ["entry is missing"]),
    ("entry_without_changes", to_bytes({**ENVELOPE, "entry": [{"id": "1"}]}), ["entry[0] has no changes list"]),
    ("second_entry_bad", to_bytes({**ENVELOPE, "entry": [{"id": "1", "changes": [CHANGE]}, "x"]}),
     ["entry[1] has no changes list"]),
]


@pytest.mark.parametrize(("raw", "reasons"), [c[1:] for c in NOT_A_WEBHOOK], ids=[c[0] for c in NOT_A_WEBHOOK])
def test_it_refuses_a_body_that_is_not_a_whatsapp_webhook(raw, reasons):
    with pytest.raises(NotAWebhook) as caught:
        split_webhook(raw, RECEIVED_AT)
    for reason in reasons:
        assert reason in str(caught.value)


def test_it_sets_aside_a_message_without_id_and_keeps_the_others():
    no_id = text_message("wamid.X", "lost")
    del no_id["id"]
    batch = split(text_body([text_message("wamid.A"), no_id, text_message("wamid.B")]))
    assert [e.event_id for e in batch.events] == ["message:wamid.A", "message:wamid.B"]
    ((reason, update, position, _),) = batch.rejected
    assert reason == "message has no id"
    assert update == no_id and str(position) == "entry[0].changes[0].messages[1]"


@pytest.mark.parametrize("timestamp", ["abc", "", None, "1.5e400"])
def test_it_sets_aside_a_message_whose_timestamp_is_not_unix_seconds(timestamp):
    bad = text_message("wamid.T", timestamp=timestamp)
    batch = split(text_body([bad, text_message("wamid.OK")]))
    assert [e.event_id for e in batch.events] == ["message:wamid.OK"]
    ((reason, update, _, _),) = batch.rejected
    assert reason.startswith("timestamp is not Unix seconds (")
    assert update == bad


def test_it_sets_aside_a_negative_timestamp():
    batch = split(text_body([text_message("wamid.NEG", timestamp="-5")]))
    assert batch.events == []
    assert batch.rejected[0].reason == "timestamp is out of range (0 to 253402300799)"


@pytest.mark.parametrize(("update", "reason"), [
    ("just a string", "message is not an object (a string of 13 characters)"),
    ({"from": "1", "id": "wamid.NT", "timestamp": "1"}, "message has no type"),
    ({"id": "wamid.NS", "timestamp": "1", "type": "text", "text": {"body": "x"}}, "names no sender"),
])
def test_it_sets_aside_other_unreadable_messages_on_their_own(update, reason):
    batch = split(text_body([update, text_message("wamid.OK")], contacts=[]))
    assert [e.event_id for e in batch.events] == ["message:wamid.OK"]
    ((got_reason, got_update, _, _),) = batch.rejected
    assert reason in got_reason and got_update == update


def test_it_sets_aside_a_status_without_status():
    batch = split(text_body([], statuses=[{"id": "wamid.Q", "timestamp": "1"}, sent_status("wamid.R")]))
    assert [e.event_id for e in batch.events] == ["status:wamid.R:sent"]
    assert [(r.reason, r.update, str(r.position)) for r in batch.rejected] == [
        ("status has no id or no status", {"id": "wamid.Q", "timestamp": "1"}, "entry[0].changes[0].statuses[0]")]


# --- deterministic ids and the wire format ------------------------------------------------------------------


@pytest.mark.parametrize(("stem", "case", "body"), CASES, ids=CASE_IDS)
def test_it_gives_the_same_event_ids_when_a_body_is_split_again(stem, case, body):
    first = split_webhook(to_bytes(body), RECEIVED_AT)
    again = split_webhook(to_bytes(copy.deepcopy(body)), RECEIVED_AT + 30)
    assert [e.event_id for e in first.events] == [e.event_id for e in again.events]
    assert first.sha256 == again.sha256


@pytest.mark.parametrize(("stem", "case", "body"), CASES, ids=CASE_IDS)
def test_it_round_trips_every_event_through_the_core_stage_wire_format(stem, case, body):
    for event in split(body).events:
        wire = event.model_dump(mode="json", exclude_none=True)
        assert json.loads(json.dumps(wire)) == wire
        assert NormalizedEvent.model_validate(wire) == event


def test_it_gives_different_error_and_field_ids_to_different_content():
    offboarded = split(load_case("account_update", "account_offboarded")).events[0]
    reconnected = split(load_case("account_update", "account_reconnected")).events[0]
    assert offboarded.event_id != reconnected.event_id


# --- edge cases found in review ------------------------------------------------------------------------------


def test_it_tells_apart_the_same_template_update_sent_again_later():
    first = load_case("template_status_update", "approved")
    later = copy.deepcopy(first)
    later["entry"][0]["time"] = first["entry"][0]["time"] + 86_400
    assert split(first).events[0].event_id != split(later).events[0].event_id


def test_it_sets_aside_a_timestamp_no_datetime_can_hold():
    batch = split(text_body([text_message("wamid.FAR", timestamp="99999999999999999999")]))
    assert batch.events == []
    assert "timestamp" in batch.rejected[0][0]


def test_it_rejects_a_boolean_timestamp():
    batch = split(text_body([text_message("wamid.BOOL", timestamp=True)]))
    assert batch.events == []
    assert "timestamp" in batch.rejected[0][0]


def test_it_does_not_give_a_sender_someone_elses_contact_card():
    # Two messages, one card: the card belongs to the sender it names, not to the other one.
    first, second = text_message("wamid.CARD1"), text_message("wamid.CARD2")
    first["from"], second["from"] = "15550000001", "15550000002"
    card = {"profile": {"name": "Second Sender"}, "wa_id": "15550000002", "user_id": "US.second"}
    events = split(text_body([first, second], contacts=[card])).events
    assert (events[0].contact.wa_id, events[0].contact.user_id, events[0].contact.name) == ("15550000001", None, None)
    assert (events[1].contact.wa_id, events[1].contact.name) == ("15550000002", "Second Sender")


def test_a_lone_message_takes_its_card_even_when_the_card_spells_the_number_differently():
    # Meta may rewrite a number (Brazil's ninth digit); its reference says to trust contacts[].wa_id.
    message = text_message("wamid.BR")
    message["from"] = "5511987654321"
    card = {"profile": {"name": "Cliente"}, "wa_id": "551187654321"}
    contact = split(text_body([message], contacts=[card])).events[0].contact
    assert (contact.wa_id, contact.name) == ("551187654321", "Cliente")


def test_a_timestamp_with_a_fraction_is_read_as_whole_seconds():
    assert split(text_body([text_message("wamid.F", timestamp="1697043223.0")])).events[0].message.timestamp \
        == 1697043223


def test_a_change_without_a_field_is_set_aside_and_the_other_changes_go_on():
    body = text_body([text_message("wamid.KEEP")])
    body["entry"][0]["changes"].append({"value": {}})
    batch = split(body)
    assert [e.event_id for e in batch.events] == ["message:wamid.KEEP"]
    assert [(r.reason, r.update, str(r.position)) for r in batch.rejected] == [
        ("change has no field", {"value": {}}, "entry[0].changes[1]")]


def test_nul_characters_are_replaced_so_postgresql_can_store_the_text():
    raw = to_bytes(text_body([text_message("wamid.NUL", text="a\x00b")]))
    assert b"\\u0000" in raw
    assert split_webhook(raw, 1.0).events[0].message.text == "a\ufffdb"


def test_two_identical_payload_errors_in_one_value_are_two_events():
    body = text_body([])
    body["entry"][0]["changes"][0]["value"]["errors"] = [{"code": 130429}, {"code": 130429}]
    ids = [e.event_id for e in split(body).events]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert [e.event_id for e in split(body).events] == ids  # and stable across redeliveries


def test_one_broken_list_does_not_set_aside_the_good_messages_beside_it():
    body = text_body([text_message("wamid.GOOD")])
    body["entry"][0]["changes"][0]["value"]["statuses"] = {}
    batch = split(body)
    assert [e.event_id for e in batch.events] == ["message:wamid.GOOD"]
    assert [(r.reason, r.update, str(r.position)) for r in batch.rejected] == [
        ("value.statuses is not a list (an object)", {}, "entry[0].changes[0].statuses")]


def test_it_replaces_an_unpaired_utf16_escape_so_the_event_can_be_stored():
    raw = to_bytes(text_body([text_message("wamid.SUR")])).replace(b'"hi"', b'"half \\ud83d and pair \\ud83d\\ude2e"')
    event = split_webhook(raw, 1.0).events[0]
    assert event.message.text == "half \ufffd and pair \U0001f62e"
    event.model_dump_json()  # serialisable, as the core stage needs


# --- one update's failure is its own (issue 15, item 3) ---------------------------------------------------------


def nested(depth: int, leaf="x") -> dict:
    value = leaf
    for _ in range(depth):
        value = {"d": value}
    return value


def nested_edit(depth: int) -> dict:
    """A message whose edit holds an edit ... ``depth`` times, around a text."""
    inner = {"type": "text", "text": {"body": "edited"}}
    for _ in range(depth):
        inner = {"type": "edit", "edit": {"original_message_id": "wamid.ORIG", "message": inner}}
    return {"from": "972987654321", "id": "wamid.EDITS", "timestamp": "1697043223", **inner}


@pytest.mark.parametrize("depth", [64, 400, 600, 800])
def test_an_update_nested_hundreds_of_levels_deep_is_set_aside_alone(depth):
    deep = text_message("wamid.DEEP")
    deep["referral"] = nested(depth)
    batch = split(text_body([text_message("wamid.A"), deep, text_message("wamid.B")]))
    assert [e.event_id for e in batch.events] == ["message:wamid.A", "message:wamid.B"]
    assert [(r.reason, str(r.position)) for r in batch.rejected] == [
        ("nested more than 64 levels deep", "entry[0].changes[0].messages[1]")]
    assert len(batch.wire) == 2  # the good ones are ready for the core stage


def test_an_update_nested_64_levels_is_still_an_event():
    kept = text_message("wamid.SHALLOW")
    kept["referral"] = nested(63)  # the message, then 63 levels of referral: 64 in all
    batch = split(text_body([kept]))
    assert batch.rejected == [] and json.loads(json.dumps(batch.wire[0]))["message"]["raw"] == kept


@pytest.mark.parametrize("depth", [300, 450])
def test_an_edit_nested_hundreds_of_times_is_set_aside_alone(depth):
    batch = split(text_body([text_message("wamid.A"), nested_edit(depth)]))
    assert [e.event_id for e in batch.events] == ["message:wamid.A"]
    assert [r.reason for r in batch.rejected] == ["nested more than 64 levels deep"]


def test_an_nfm_reply_whose_response_json_is_100000_brackets_is_kept_without_a_parsed_response():
    flow = {"from": "972987654321", "id": "wamid.FLOW", "timestamp": "1697043223", "type": "interactive",
            "interactive": {"type": "nfm_reply", "nfm_reply": {"body": "Sent", "name": "flow",
                                                                "response_json": "[" * 100000}}}
    batch = split(text_body([flow, text_message("wamid.A")]))
    assert batch.rejected == []
    event = batch.events[0]
    assert event.message.content["response"] is None and event.message.text == "Sent"
    assert event.message.raw["interactive"]["nfm_reply"]["response_json"] == "[" * 100000


def test_an_nfm_reply_nested_past_the_limit_keeps_the_message_without_a_parsed_response():
    too_deep = json.dumps(nested(80))
    flow = {"from": "972987654321", "id": "wamid.FLOW2", "timestamp": "1697043223", "type": "interactive",
            "interactive": {"type": "nfm_reply", "nfm_reply": {"body": "Sent", "response_json": too_deep}}}
    [event] = split(text_body([flow])).events
    assert event.message.content["response"] is None


@pytest.mark.parametrize("error", [RecursionError, MemoryError, ZeroDivisionError, LookupError])
def test_any_exception_an_update_raises_sets_aside_that_update_alone(monkeypatch, error):
    from waflow.ingestor import splitting

    real = splitting._type_content

    def fails_on_one(mtype, msg):
        if msg.get("id") == "wamid.BOOM":
            raise error("the client wrote this")
        return real(mtype, msg)

    monkeypatch.setattr(splitting, "_type_content", fails_on_one)
    batch = split(text_body([text_message("wamid.A"), text_message("wamid.BOOM"), text_message("wamid.B")]))
    assert [e.event_id for e in batch.events] == ["message:wamid.A", "message:wamid.B"]
    assert [r.reason for r in batch.rejected] == [f"unreadable update ({error.__name__})"]


def test_a_body_nested_too_deeply_to_decode_is_not_a_webhook():
    raw = b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"x","value":' + b"[" * 100000
    with pytest.raises(NotAWebhook, match="nested too deeply"):
        split_webhook(raw, RECEIVED_AT)


def test_a_deep_body_with_an_unpaired_utf16_escape_is_cleaned_without_recursion():
    deep = text_message("wamid.DEEPSUR")
    deep["referral"] = nested(900, leaf="half \ud83d")
    raw = to_bytes(text_body([text_message("wamid.A", text="x \ud83d"), deep]))
    batch = split_webhook(raw, RECEIVED_AT)
    assert batch.events[0].message.text == "x \ufffd"
    assert [r.reason for r in batch.rejected] == ["nested more than 64 levels deep"]


# --- ids are bounded (issue 15, item 5) -------------------------------------------------------------------------


def _long_id() -> str:
    import random
    import string

    return "".join(random.choices(string.ascii_letters + string.digits, k=6000))


@pytest.mark.parametrize(("where", "expected"), [
    (lambda m, v: m.update(id=_long_id()), "invalid wamid: String should have at most 256 characters"),
    (lambda m, v: m.update({"from": _long_id()}), "invalid wa_id: String should have at most 256"),
    (lambda m, v: m.update(type="image", image={"id": _long_id()}), "invalid id: String should have at most 256"),
    (lambda m, v: m.update(context={"id": _long_id()}), "invalid quoted_wamid: String should"),
    (lambda m, v: v["metadata"].update(phone_number_id=_long_id()), "invalid phone_number_id: String should"),
])
def test_an_id_longer_than_256_characters_sets_its_update_aside(where, expected):
    body = text_body([text_message("wamid.LONG")], contacts=[])
    where(body["entry"][0]["changes"][0]["value"]["messages"][0], first_value(body))
    batch = split(body)
    assert batch.events == []
    [rejected] = batch.rejected
    assert rejected.reason.startswith(expected)


def test_a_status_with_a_6000_character_status_or_wamid_is_set_aside_and_the_others_kept():
    body = text_body([], statuses=[sent_status("wamid.OK1"), sent_status(_long_id()),
                                   sent_status("wamid.X", _long_id()), sent_status("wamid.OK2")])
    batch = split(body)
    assert [e.event_id for e in batch.events] == ["status:wamid.OK1:sent", "status:wamid.OK2:sent"]
    assert [str(r.position) for r in batch.rejected] == ["entry[0].changes[0].statuses[1]",
                                                          "entry[0].changes[0].statuses[2]"]


def test_a_change_whose_field_is_6000_characters_is_set_aside():
    body = load_case("account_update", "account_offboarded")
    body["entry"][0]["changes"][0]["field"] = _long_id()
    batch = split(body)
    assert batch.events == [] and batch.rejected[0].reason.startswith("invalid field: String should have at most")


def test_an_envelope_field_nested_deep_is_no_id_and_takes_no_update_with_it():
    body = text_body([text_message("wamid.ENV")])
    body["entry"][0]["id"] = nested(900)
    first_value(body)["metadata"]["phone_number_id"] = nested(900)
    [event] = split(body).events
    assert (event.event_id, event.waba_id, event.phone_number_id) == ("message:wamid.ENV", None, None)


def test_a_messages_list_that_is_not_a_list_is_set_aside_and_is_no_field_event_besides():
    body = text_body([])
    first_value(body)["messages"] = {}
    batch = split(body)
    assert batch.events == [] and [r.reason for r in batch.rejected] == ["value.messages is not a list (an object)"]
    first_value(body)["messages"] = None  # absent, as good as: the change is kept as a field event
    assert [e.kind for e in split(body).events] == ["field"] and split(body).rejected == []
