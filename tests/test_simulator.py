"""The Meta simulator: Meta's answers and limits, faults, records, webhooks, media, and its start command.

Most tests drive the Flask app with the test client and an injected clock (no sleeping, no
network). The webhook tests run a real HTTP receiver on loopback; the timeout and drop faults need
a real server; one test starts ``python -m waflow.simulator`` under gunicorn.
"""
from __future__ import annotations

import ast
import base64
import graphlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import requests
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from simulator_support import (AUTH, NOWHERE, NUMBER, SECRET, T0, TOKEN, Receiver, assert_meta_error,  # noqa: F401
                               clock, make, receiver, send, sends, serve, sim, stats, template, text)
from support import ROOT, free_port, wait_for
from waflow import config
from waflow.gateway import SIGNATURE_HEADER, signature_is_valid
from waflow.ingestor import split_webhook
from waflow.simulator import SimulatorOptions
from waflow.simulator.__main__ import options_from, parse_args
from waflow.simulator.ledger import busiest_second


# -- token and shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}])
def test_it_refuses_a_missing_or_wrong_token_with_code_190(sim, headers):
    response = send(sim, text(), headers=headers)
    assert_meta_error(response, 190, 401)
    assert TOKEN not in response.get_data(as_text=True)
    assert "wrong-token" not in response.get_data(as_text=True)
    assert sends(sim) == []
    assert stats(sim)["refused"] == {"190": 1}


def test_it_answers_an_accepted_send_as_meta_does_and_records_it(sim, clock):
    doc = text(to="+62 812-3456-7001", biz_opaque_callback_data="case-42",
               context={"message_id": "wamid.client-question"})
    response = send(sim, doc)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "+62 812-3456-7001", "wa_id": "6281234567001"}]
    (message,) = answer["messages"]
    assert message["id"].startswith("wamid.") and "message_status" not in message
    (record,) = sends(sim)
    assert record["wamid"] == message["id"]
    assert record["phone_number_id"] == NUMBER
    assert record["to"] == "+62 812-3456-7001" and record["recipient"] is None
    assert record["type"] == "text"
    assert record["body"] == doc
    assert record["biz_opaque_callback_data"] == "case-42"
    assert record["context"] == {"message_id": "wamid.client-question"}
    assert record["accepted_at"] == T0


def test_every_accepted_send_gets_its_own_wamid(sim):
    wamids = {send(sim, text(to=f"+1555000{i:04d}")).get_json()["messages"][0]["id"] for i in range(50)}
    assert len(wamids) == 50


def test_it_accepts_a_send_to_a_business_scoped_user_id(sim):
    doc = {"messaging_product": "whatsapp", "recipient": "US.13491208655302741918", "type": "text",
           "text": {"body": "Hello"}}
    response = send(sim, doc)
    assert response.status_code == 200
    assert response.get_json()["contacts"] == [{"input": "US.13491208655302741918",
                                                "user_id": "US.13491208655302741918"}]
    assert sends(sim)[0]["recipient"] == "US.13491208655302741918"


BUTTONS = {"type": "button", "body": {"text": "Shall we book a call?"}, "footer": {"text": "Law office"},
           "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                                  {"type": "reply", "reply": {"id": "no", "title": "No"}}]}}
LIST = {"type": "list", "body": {"text": "Pick a topic"},
        "action": {"button": "Topics", "sections": [
            {"title": "Family", "rows": [{"id": "divorce", "title": "Divorce", "description": "Filing and custody"}]},
            {"title": "Work", "rows": [{"id": "dismissal", "title": "Dismissal"}]}]}}


def _with(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``value`` at a dotted path (integers index lists)."""
    copy = json.loads(json.dumps(obj))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = copy
    for part in parents:
        node = node[part]
    node[last] = value
    return copy


@pytest.mark.parametrize("kind,content", [
    ("image", {"id": "1234567890", "caption": "The signed contract"}),
    ("document", {"link": "https://example.com/contract.pdf", "filename": "contract.pdf"}),
    ("audio", {"id": "1234567890"}),
    ("interactive", BUTTONS),
    ("interactive", LIST),
    ("reaction", {"message_id": "wamid.x", "emoji": "\U0001f44d"}),
    ("location", {"latitude": -6.2, "longitude": 106.8, "name": "Our office"}),
    ("contacts", [{"name": {"formatted_name": "Ana Lawyer"}, "phones": [{"phone": "+15550001"}]}]),
])
def test_it_accepts_every_documented_message_type(sim, kind, content):
    response = send(sim, {"messaging_product": "whatsapp", "to": "15551230001", "type": kind, kind: content})
    assert response.status_code == 200, response.get_json()
    assert sends(sim)[0]["type"] == kind


INVALID = [
    ({**text(), "messaging_product": "sms"}, 100, "messaging_product"),
    ({k: v for k, v in text().items() if k != "messaging_product"}, 131008, "messaging_product"),
    ({k: v for k, v in text().items() if k != "to"}, 131008, "to"),
    ({**text(), "recipient": "US.13491208655302741918"}, 100, "recipient"),
    ({**text(), "to": "call me"}, 131009, "to"),
    ({**text(), "recipient_type": "group"}, 131009, "recipient_type"),
    ({**text(), "type": "poll"}, 100, "type"),
    ({k: v for k, v in text().items() if k != "text"}, 131008, "text"),
    (text(body=""), 131009, "text.body"),
    (text(body="x" * 4097), 131009, "text.body"),
    ({**text(), "biz_opaque_callback_data": "x" * 513}, 131009, "biz_opaque_callback_data"),
    ({**text(), "context": {}}, 131008, "context.message_id"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "image", "image": {}}, 131008, "image.id"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "image",
      "image": {"id": "1", "link": "https://example.com/a.png"}}, 131009, "image"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "image",
      "image": {"id": "1", "caption": "x" * 1025}}, 131009, "image.caption"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(BUTTONS, "action.buttons", BUTTONS["action"]["buttons"] * 2)},
     131009, "interactive.action.buttons"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(BUTTONS, "action.buttons.1.reply.title", "x" * 21)},
     131009, "interactive.action.buttons[1].reply.title"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(BUTTONS, "action.buttons.1.reply.title", "Yes")},
     131009, "interactive.action.buttons[1].reply.title"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(BUTTONS, "body.text", "x" * 1025)}, 131009, "interactive.body.text"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(BUTTONS, "footer.text", "x" * 61)}, 131009, "interactive.footer.text"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(LIST, "action.button", "x" * 21)}, 131009, "interactive.action.button"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(LIST, "action.sections.0.rows.0.description", "x" * 73)},
     131009, "interactive.action.sections[0].rows[0].description"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "interactive",
      "interactive": _with(LIST, "action.sections.1.rows", [{"id": f"r{i}", "title": "Row"} for i in range(10)])},
     131009, "10 rows"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "template",
      "template": {"name": "hello_world"}}, 131008, "template.language"),
    ({"messaging_product": "whatsapp", "to": "15551230001", "type": "template",
      "template": {"language": {"code": "en_US"}}}, 131008, "template.name"),
]


@pytest.mark.parametrize("doc,code,field", INVALID)
def test_it_refuses_a_malformed_send_naming_the_field(sim, doc, code, field):
    assert_meta_error(send(sim, doc), code, 400, field)
    assert sends(sim) == []


def test_it_refuses_a_body_that_is_not_json(sim):
    response = sim.post(f"/v25.0/{NUMBER}/messages", data=b"{not json", headers=AUTH,
                        content_type="application/json")
    assert_meta_error(response, 100, 400, "JSON")


# -- mark as read -------------------------------------------------------------------------------


def test_it_marks_a_message_as_read_without_counting_it_as_a_send(sim):
    response = send(sim, {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in-1",
                          "typing_indicator": {"type": "text"}})
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    assert sends(sim) == []
    (read,) = sim.get("/_sim/reads").get_json()["reads"]
    assert read["message_id"] == "wamid.in-1" and read["typing_indicator"] is True and read["at"] == T0
    counts = stats(sim)
    assert counts["reads"] == 1 and counts["accepted"] == 0


def test_it_refuses_a_read_receipt_without_a_message_id(sim):
    assert_meta_error(send(sim, {"messaging_product": "whatsapp", "status": "read"}), 131008, 400, "message_id")


# -- templates ----------------------------------------------------------------------------------


def test_it_accepts_a_template_with_the_right_parameter_count(sim):
    for doc in (template("hello_world"), template("appointment_reminder", params=2),
                template("case_update", language="id", params=1)):
        response = send(sim, {**doc, "to": f"+1555{random.randrange(10**7):07d}"})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["messages"][0]["message_status"] == "accepted"


@pytest.mark.parametrize("doc,code", [
    (template("appointment_reminder", params=1), 132000),
    (template("hello_world", params=1), 132000),
    (template("no_such_template"), 132001),
    (template("appointment_reminder", language="fr", params=2), 132001),
])
def test_it_refuses_an_unknown_template_or_a_wrong_parameter_count(sim, doc, code):
    assert_meta_error(send(sim, doc), code, 400)
    assert sends(sim) == []


def test_it_lists_templates_as_metas_api_does(sim):
    response = sim.get("/v25.0/200000000000001/message_templates", query_string={"name": "appointment_reminder"},
                       headers=AUTH)
    assert response.status_code == 200
    data = response.get_json()["data"]
    assert {t["language"] for t in data} == {"en_US", "id"}
    for t in data:
        assert t["name"] == "appointment_reminder" and t["status"] == "APPROVED" and t["category"]
        (body,) = t["components"]
        assert body["type"] == "BODY" and "{{1}}" in body["text"] and "{{2}}" in body["text"]
    assert_meta_error(sim.get("/v25.0/200000000000001/message_templates"), 190, 401)


def test_a_template_added_at_runtime_can_be_listed_and_sent(sim):
    added = sim.post("/_sim/templates", json={"name": "fee_notice", "language": "id",
                                              "body": "Biaya konsultasi {{1}} jatuh tempo {{2}}."})
    assert added.status_code == 201 and added.get_json()["parameter_count"] == 2
    listed = sim.get("/v25.0/1/message_templates", query_string={"name": "fee_notice"}, headers=AUTH)
    assert [t["language"] for t in listed.get_json()["data"]] == ["id"]
    assert send(sim, template("fee_notice", language="id", params=2)).status_code == 200
    assert_meta_error(send(sim, template("fee_notice", language="id", params=3)), 132000, 400)


# -- the 24-hour window -------------------------------------------------------------------------


def test_it_refuses_a_free_form_message_outside_the_window_but_not_a_template(make):
    client = make(open_windows=False).test_client()
    assert_meta_error(send(client, text(to="+15551230001")), 131047, 400)
    assert send(client, template("hello_world", to="+15551230001")).status_code == 200
    assert stats(client)["refused"] == {"131047": 1}


def test_an_inbound_message_opens_the_window_for_24_hours(make, receiver, clock):
    client = make(open_windows=False, webhook_url=receiver.url).test_client()
    injected = client.post("/_sim/inbound", json={"from": "15551230001", "text": "Can you help me?"})
    assert injected.status_code == 200
    clock.advance(24 * 3600 - 1)
    assert send(client, text(to="+15551230001")).status_code == 200
    assert_meta_error(send(client, text(to="+15551230002")), 131047, 400)
    clock.advance(1)
    assert_meta_error(send(client, text(to="+15551230001")), 131047, 400)


def test_the_window_can_be_opened_per_recipient_or_for_all(make):
    client = make(open_windows=False).test_client()
    assert client.post("/_sim/windows", json={"recipient": "+1 555 123 0001", "open": True}).status_code == 200
    assert send(client, text(to="+15551230001")).status_code == 200
    assert_meta_error(send(client, text(to="+15551230002")), 131047, 400)
    client.post("/_sim/windows", json={"recipient": "15551230001", "open": False})
    assert_meta_error(send(client, text(to="+15551230001")), 131047, 400)
    client.post("/_sim/windows", json={"all": True})
    assert send(client, text(to="+15551230002")).status_code == 200


def test_open_windows_on_the_command_line_opens_every_window():
    options = options_from(parse_args(["--open-windows"]))
    assert options.open_windows is True
    assert options_from(parse_args([])).open_windows is False


# -- throughput ---------------------------------------------------------------------------------


def test_it_refuses_the_81st_send_inside_one_second_and_accepts_again_after_it(make, clock):
    client = make(pair_limit=False).test_client()
    for i in range(80):
        assert send(client, text(to=f"+1555000{i:04d}")).status_code == 200
    clock.advance(0.999)
    assert_meta_error(send(client, text(to="+15559990000")), 130429, 400)
    assert len(sends(client, limit=1000)) == 80
    clock.advance(0.001)  # exactly one second after the first 80: they leave the window
    assert send(client, text(to="+15559990000")).status_code == 200
    counts = stats(client)
    assert counts["accepted"] == 81
    assert counts["refused"] == {"130429": 1}
    assert counts["max_in_any_second"] == {NUMBER: 80}


def test_throughput_is_counted_per_phone_number_and_settable_at_runtime(make):
    client = make(rate=2, pair_limit=False).test_client()
    for to in ("+15550000001", "+15550000002"):
        assert send(client, text(to=to), number="111").status_code == 200
    assert_meta_error(send(client, text(to="+15550000003"), number="111"), 130429, 400)
    assert send(client, text(to="+15550000003"), number="222").status_code == 200
    assert client.post("/_sim/config", json={"rate": 3, "phone_number_id": "111"}).status_code == 200
    assert send(client, text(to="+15550000003"), number="111").status_code == 200
    assert client.post("/_sim/config", json={"rate": 0}).status_code == 400
    assert client.get("/_sim/config").get_json()["rates"] == {"111": 3}


def test_the_limit_and_the_stats_use_the_same_one_second_window(make, clock):
    # Sends at t, t+0.5 and t+1.0 under a rate of 2: the first has left the window (t-1, t] when the
    # third arrives, so all three are accepted, and no one-second window of the record holds three.
    client = make(rate=2, pair_limit=False).test_client()
    for step, to in ((0.0, "+15550000001"), (0.5, "+15550000002"), (0.5, "+15550000003")):
        clock.advance(step)
        assert send(client, text(to=to)).status_code == 200
    assert stats(client)["max_in_any_second"] == {NUMBER: 2}


def test_stats_report_the_busiest_second_per_number_exactly(make, clock):
    client = make(rate=1000, pair_limit=False).test_client()
    plan = {"111": [0.0, 0.2, 0.5, 0.9, 1.0, 1.05, 3.0], "222": [0.0, 0.999, 1.5, 2.6, 2.7]}
    events = sorted((t, number) for number, times in plan.items() for t in times)
    for i, (t, number) in enumerate(events):
        clock.now = T0 + t
        assert send(client, text(to=f"+1555000{i:04d}"), number=number).status_code == 200
    counts = stats(client)
    # 111: (0.05, 1.05] holds 0.2, 0.5, 0.9, 1.0 and 1.05; 0.0 is out. 222: no window holds more than two.
    assert counts["max_in_any_second"] == {"111": 5, "222": 2}
    assert counts["busiest_second"]["111"] == {"first": T0 + 0.2, "last": T0 + 1.05}


def test_the_busiest_second_matches_a_brute_force_count():
    rng = random.Random(7)
    for _ in range(50):
        times = sorted(T0 + rng.choice([0.0, 0.25, 0.5, 1.0]) * rng.randrange(12) for _ in range(rng.randrange(1, 40)))
        expected = max(sum(1 for s in times if t - 1.0 < s <= t) for t in times)
        assert busiest_second(times)[0] == expected


def test_concurrent_senders_never_exceed_the_rate_and_the_record_matches_the_answers(make):
    app = make(rate=40, pair_limit=False, clock=time.time)
    accepted: list[str] = []
    lock = threading.Lock()

    def sender(n: int) -> None:
        client = app.test_client()
        for i in range(60):
            response = send(client, text(to=f"+1555{n:03d}{i:04d}"))
            if response.status_code == 200:
                with lock:
                    accepted.append(response.get_json()["messages"][0]["id"])

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = app.test_client()
    counts = stats(client)
    assert counts["accepted"] == len(accepted) == counts["recorded"]
    assert counts["accepted"] + counts["refused"].get("130429", 0) == 240
    assert {s["wamid"] for s in sends(client, limit=1000)} == set(accepted)
    assert counts["max_in_any_second"][NUMBER] <= 40


# -- pair limit ---------------------------------------------------------------------------------


def test_it_refuses_a_burst_past_ten_to_one_recipient_and_refills_one_every_six_seconds(make, clock):
    client = make().test_client()
    for _ in range(10):
        assert send(client, text(to="+15551230001")).status_code == 200
    assert_meta_error(send(client, text(to="+15551230001")), 131056, 400)
    assert send(client, text(to="+15551230002")).status_code == 200  # other recipients are unaffected
    clock.advance(5.9)
    assert_meta_error(send(client, text(to="+15551230001")), 131056, 400)
    clock.advance(0.1)
    assert send(client, text(to="+15551230001")).status_code == 200
    assert_meta_error(send(client, text(to="+15551230001")), 131056, 400)
    assert stats(client)["refused"] == {"131056": 3}


def test_the_pair_limit_can_be_turned_off(make):
    client = make(pair_limit=False).test_client()
    assert all(send(client, text(to="+15551230001")).status_code == 200 for _ in range(30))


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault,code,status", [
    ({"code": 130429}, 130429, 400),
    ({"code": 131056}, 131056, 400),
    ({"code": 131000}, 131000, 500),
    ({"code": 2}, 2, 503),
    ({"code": 133004}, 133004, 503),
    ({"code": 190}, 190, 401),
    ({"code": 130429, "status": 429}, 130429, 429),
])
def test_a_fault_forces_the_next_send_to_fail_with_its_code(sim, fault, code, status):
    assert sim.post("/_sim/faults", json=fault).status_code == 200
    assert_meta_error(send(sim, text()), code, status)
    assert sends(sim) == []
    assert send(sim, text()).status_code == 200  # used once
    assert stats(sim)["faults"] == {"pending": 0, "used": 1}


def test_a_fault_can_answer_a_bodyless_status(sim):
    sim.post("/_sim/faults", json={"status": 502})
    response = send(sim, text())
    assert response.status_code == 502 and response.get_data() == b""


def test_faults_are_used_in_order_only_by_matching_sends(sim):
    sim.post("/_sim/faults", json={"faults": [{"code": 131000, "to": "+15551230002"}, {"code": 2, "count": 2},
                                              {"code": 131000, "on": "read"}]})
    assert_meta_error(send(sim, text(to="+15551230001")), 2, 503)
    assert_meta_error(send(sim, text(to="+15551230002")), 131000, 500)
    assert_meta_error(send(sim, text(to="+15551230002")), 2, 503)
    assert send(sim, text(to="+15551230002")).status_code == 200
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in-1"}
    assert_meta_error(send(sim, read), 131000, 500)
    assert send(sim, read).status_code == 200
    assert sim.get("/_sim/faults").get_json() == {"faults": []}


@pytest.mark.parametrize("fault", [{}, {"code": "x"}, {"status": 42}, {"delay": -1}, {"colour": "red"},
                                   {"code": 2, "on": "everything"}])
def test_it_refuses_a_malformed_fault(sim, fault):
    response = sim.post("/_sim/faults", json=fault)
    assert response.status_code == 400 and response.get_json()["error"]
    assert sim.get("/_sim/faults").get_json() == {"faults": []}


def test_a_delay_fault_makes_the_client_time_out_while_the_send_is_still_accepted(make, serve):
    base = serve(make(clock=time.time))
    requests.post(f"{base}/_sim/faults", json={"delay": 0.6}, timeout=5)
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{base}/v25.0/{NUMBER}/messages", json=text(), headers=AUTH, timeout=0.2)
    recorded = wait_for(lambda: requests.get(f"{base}/_sim/sends", timeout=5).json()["sends"], 5, what="the send")
    assert len(recorded) == 1


def test_a_drop_fault_closes_the_connection_without_an_answer(make, serve):
    base = serve(make(clock=time.time))
    requests.post(f"{base}/_sim/faults", json={"drop": True}, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{base}/v25.0/{NUMBER}/messages", json=text(), headers=AUTH, timeout=5)
    assert requests.post(f"{base}/v25.0/{NUMBER}/messages", json=text(), headers=AUTH, timeout=5).status_code == 200
    assert requests.get(f"{base}/_sim/stats", timeout=5).json()["accepted"] == 1


# -- records, reset -----------------------------------------------------------------------------


def test_sends_can_be_filtered_and_paged(sim, clock):
    for i in range(5):
        clock.now = T0 + i
        send(sim, text(to=f"+1555000000{i % 2}", body=f"message {i}"))
    assert [s["body"]["text"]["body"] for s in sends(sim, to="+15550000001")] == ["message 1", "message 3"]
    assert [s["seq"] for s in sends(sim, since=T0 + 2)] == [4, 5]
    page = sim.get("/_sim/sends", query_string={"limit": 2, "brief": 1}).get_json()
    assert [s["seq"] for s in page["sends"]] == [1, 2] and "body" not in page["sends"][0]
    assert [s["seq"] for s in sends(sim, after=page["next_after"])] == [3, 4, 5]


def test_records_are_capped_to_the_most_recent(make):
    client = make(max_records=3, pair_limit=False).test_client()
    for i in range(5):
        send(client, text(to=f"+1555000000{i}"))
    assert [s["seq"] for s in sends(client)] == [3, 4, 5]
    assert stats(client)["accepted"] == 5 and stats(client)["recorded"] == 3


def test_reset_forgets_sends_refusals_faults_windows_and_runtime_changes(make):
    client = make(open_windows=False).test_client()
    client.post("/_sim/windows", json={"recipient": "15551230001"})
    client.post("/_sim/config", json={"rate": 1, "status_delay": 2.0})
    send(client, text(to="+15551230001"))
    send(client, text(to="+15551230002"))
    client.post("/_sim/faults", json={"code": 2})
    assert client.post("/_sim/reset").status_code == 200
    counts = stats(client)
    assert (counts["accepted"], counts["refused"], counts["faults"]["pending"]) == (0, {}, 0)
    assert sends(client) == []
    assert client.get("/_sim/config").get_json()["rate"] == 80
    assert_meta_error(send(client, text(to="+15551230001")), 131047, 400)


# -- media --------------------------------------------------------------------------------------


def test_media_goes_round_trip_upload_lookup_download(sim, clock):
    data = b"%PDF-1.4 power of attorney" * 100
    uploaded = sim.post(f"/v25.0/{NUMBER}/media", headers=AUTH, content_type="multipart/form-data",
                        data={"messaging_product": "whatsapp", "type": "application/pdf",
                              "file": (io.BytesIO(data), "poa.pdf")})
    assert uploaded.status_code == 200
    media_id = uploaded.get_json()["id"]
    info = sim.get(f"/v25.0/{media_id}", headers=AUTH).get_json()
    assert info["messaging_product"] == "whatsapp" and info["id"] == media_id
    assert info["mime_type"] == "application/pdf" and info["file_size"] == len(data)
    assert info["sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    url = info["url"]
    downloaded = sim.get(url, headers=AUTH)
    assert downloaded.status_code == 200
    assert downloaded.get_data() == data and downloaded.headers["Content-Type"] == "application/pdf"
    assert base64.b64encode(hashlib.sha256(downloaded.get_data()).digest()).decode() == info["sha256"]
    assert sim.get(url).status_code == 401
    assert sim.get(url.replace("hash=", "hash=0"), headers=AUTH).status_code == 404
    clock.advance(301)
    assert sim.get(url, headers=AUTH).status_code == 404
    assert sim.get(sim.get(f"/v25.0/{media_id}", headers=AUTH).get_json()["url"], headers=AUTH).status_code == 200


def test_media_endpoints_need_the_token_and_a_known_id(sim):
    assert_meta_error(sim.get("/v25.0/1234567890123456"), 190, 401)
    assert_meta_error(sim.get("/v25.0/1234567890123456", headers=AUTH), 100, 400, "1234567890123456")
    upload = sim.post(f"/v25.0/{NUMBER}/media", content_type="multipart/form-data",
                      data={"messaging_product": "whatsapp", "type": "image/png", "file": (io.BytesIO(b"x"), "a.png")})
    assert_meta_error(upload, 190, 401)


def test_an_upload_over_the_kinds_limit_is_refused(sim):
    # Encoded here, in memory: the test client would spool a body this size to a file it never closes.
    boundary, body = encode_multipart({"messaging_product": "whatsapp", "type": "image/jpeg",
                                       "file": FileStorage(io.BytesIO(b"\xff" * (5 * 2**20 + 1)), "big.jpg")})
    response = sim.post(f"/v25.0/{NUMBER}/media", headers=AUTH, data=body,
                        content_type=f"multipart/form-data; boundary={boundary}")
    assert_meta_error(response, 131053, 400, "image")


# -- webhooks -----------------------------------------------------------------------------------


def _statuses(receiver: Receiver) -> list[dict[str, Any]]:
    return [st for doc in receiver.docs() for ch in doc["entry"][0]["changes"] for st in ch["value"]["statuses"]]


def test_status_webhooks_arrive_signed_in_order_echoing_the_callback_data(make, receiver):
    client = make(clock=time.time, status_webhooks=True, status_delay=0.05, webhook_url=receiver.url).test_client()
    wamid = send(client, text(to="+15551230001", biz_opaque_callback_data="draft-7"),
                 number="1122334455").get_json()["messages"][0]["id"]
    wait_for(lambda: len(receiver.posts) >= 3, 5, what="three status webhooks")
    time.sleep(0.1)
    assert len(receiver.posts) == 3
    for headers, body in receiver.posts:
        assert signature_is_valid(SECRET, body, headers[SIGNATURE_HEADER])
        assert not signature_is_valid("another-secret", body, headers[SIGNATURE_HEADER])
        assert b", " not in body and b'": ' not in body  # compact, as Meta sends
        (event,) = split_webhook(body, time.time()).events
        assert event.kind == "status" and event.phone_number_id == "1122334455"
    statuses = _statuses(receiver)
    assert [st["status"] for st in statuses] == ["sent", "delivered", "read"]
    for st in statuses:
        assert st["id"] == wamid and st["recipient_id"] == "15551230001"
        assert st["biz_opaque_callback_data"] == "draft-7"
        assert isinstance(st["timestamp"], str) and st["timestamp"].isdigit()
    assert statuses[0]["pricing"]["category"] == "service"
    assert "pricing" not in statuses[1] and "pricing" not in statuses[2]
    assert stats(client)["webhooks"]["delivered"] == 3


def test_status_webhooks_can_come_twice_and_out_of_order(make, receiver):
    client = make(clock=time.time, status_webhooks=True, status_delay=0.03, duplicate=True, reorder=True,
                  pair_limit=False, webhook_url=receiver.url).test_client()
    wamids = [send(client, text(to=f"+155512300{i:02d}")).get_json()["messages"][0]["id"] for i in range(6)]
    wait_for(lambda: len(receiver.posts) >= 36, 5, what="36 status webhooks")
    statuses = _statuses(receiver)
    orders = []
    for wamid in wamids:
        mine = [st["status"] for st in statuses if st["id"] == wamid]
        assert sorted(mine) == sorted(["sent", "delivered", "read"] * 2)
        orders.append(list(dict.fromkeys(mine)))
    # Each message's order is one of six, drawn at random: six in order by chance is (1/6)^6.
    assert any(order != ["sent", "delivered", "read"] for order in orders)


def test_status_webhooks_can_be_switched_off(make, receiver):
    client = make(clock=time.time, status_webhooks=True, status_delay=0.01, webhook_url=receiver.url).test_client()
    client.post("/_sim/config", json={"status_webhooks": False})
    send(client, text())
    time.sleep(0.2)
    assert receiver.posts == []


def test_a_refused_webhook_is_retried(make, receiver):
    receiver.script = [500, 503]
    client = make(clock=time.time, status_webhooks=True, status_delay=0.01, webhook_backoff=0.02,
                  webhook_url=receiver.url).test_client()
    send(client, text())
    wait_for(lambda: stats(client)["webhooks"]["delivered"] == 3, 5, what="three delivered statuses")
    assert len(receiver.posts) == 5
    assert sorted(st["status"] for st in _statuses(receiver)[2:]) == ["delivered", "read", "sent"]
    assert stats(client)["webhooks"]["retried"] == 2


# -- inbound ------------------------------------------------------------------------------------


def test_inbound_injection_posts_a_signed_message_the_ingestor_parses(make, receiver):
    client = make(webhook_url=receiver.url, phone_number_id="1122334455").test_client()
    response = client.post("/_sim/inbound", json={"from": "15551234567", "text": "I need advice on a lease.",
                                                  "name": "Ana Pereira"})
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["gateway_status"] == 200 and answer["wamid"].startswith("wamid.")
    ((headers, body),) = receiver.posts
    assert signature_is_valid(SECRET, body, headers[SIGNATURE_HEADER])
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
    batch = split_webhook(body, time.time())
    assert batch.rejected == []
    (event,) = batch.events
    assert event.kind == "message" and event.phone_number_id == "1122334455"
    assert event.message.wamid == answer["wamid"] and event.message.text == "I need advice on a lease."
    assert event.contact.wa_id == "15551234567" and event.contact.name == "Ana Pereira"


def test_an_injected_image_is_stored_as_media(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    answer = client.post("/_sim/inbound", json={"from": "15551234567", "type": "image", "text": "My ID card"}).get_json()
    ((_, body),) = receiver.posts
    (event,) = split_webhook(body, time.time()).events
    media = event.message.media
    assert media.id == answer["media_id"] and media.kind == "image" and media.caption == "My ID card"
    info = client.get(f"/v25.0/{media.id}", headers=AUTH).get_json()
    data = client.get(info["url"], headers=AUTH).get_data()
    assert data.startswith(b"\x89PNG") and info["sha256"] == media.sha256
    assert base64.b64encode(hashlib.sha256(data).digest()).decode() == media.sha256


def test_inbound_injection_says_when_the_gateway_is_unreachable(make):
    client = make(webhook_url=NOWHERE, webhook_attempts=1, open_windows=False).test_client()
    response = client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hello?"})
    assert response.status_code == 502
    assert response.get_json()["gateway_status"] is None and "ConnectionError" in response.get_json()["error"]
    assert send(client, text(to="+15551234567")).status_code == 200  # the customer did write


def test_an_injected_message_can_have_been_sent_a_while_ago(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    assert client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi", "sent_ago": 3600}).status_code == 200
    assert client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi again"}).status_code == 200
    earlier, now = (split_webhook(body, time.time()).events[0].message.timestamp for _, body in receiver.posts)
    assert now - earlier == 3600


@pytest.mark.parametrize("doc", [{"text": "hi"}, {"from": "+15551234567", "text": "hi"},
                                 {"from": "15551234567", "text": ""}, {"from": "15551234567", "type": "poll"},
                                 {"from": "15551234567", "text": "hi", "sent_ago": -5},
                                 {"from": "15551234567", "text": "hi", "sent_ago": 8 * 86400}])
def test_it_refuses_a_malformed_injection(sim, doc):
    response = sim.post("/_sim/inbound", json=doc)
    assert response.status_code == 400 and response.get_json()["error"]


def test_demo_traffic_posts_signed_client_messages(make, receiver):
    make(webhook_url=receiver.url, demo_traffic=1200)
    wait_for(lambda: len(receiver.posts) >= 2, 5, what="two demo messages")
    for headers, body in list(receiver.posts):
        assert signature_is_valid(SECRET, body, headers[SIGNATURE_HEADER])
        (event,) = split_webhook(body, time.time()).events
        assert event.kind == "message" and event.message.text


# -- options and the start command --------------------------------------------------------------


def test_options_come_from_the_settings_and_the_command_line_overrides_them(monkeypatch):
    settings = config.load({"WHATSAPP_ACCESS_TOKEN": "EAAG-from-env", "WHATSAPP_APP_SECRET": "app-secret-from-env",
                            "SIMULATOR_PORT": "5999", "SIMULATOR_WEBHOOK_URL": "http://127.0.0.1:5001/webhooks/whatsapp"})
    options = SimulatorOptions.from_settings(settings)
    assert (options.access_token, options.app_secret) == ("EAAG-from-env", "app-secret-from-env")
    assert options.webhook_url == "http://127.0.0.1:5001/webhooks/whatsapp"
    assert options.base_url == "http://127.0.0.1:5999/"
    assert "EAAG-from-env" not in repr(options) and "app-secret-from-env" not in repr(options)
    monkeypatch.setattr(config, "settings", settings)
    cli = options_from(parse_args(["--port", "6001", "--webhook-url", "http://127.0.0.1:7/w", "--rate", "500",
                                   "--no-status-webhooks", "--status-delay", "0.1", "--reorder", "--duplicate",
                                   "--no-pair-limit", "--demo-traffic", "6"]))
    assert (cli.webhook_url, cli.base_url, cli.rate) == ("http://127.0.0.1:7/w", "http://127.0.0.1:6001/", 500)
    assert (cli.status_webhooks, cli.status_delay, cli.reorder, cli.duplicate) == (False, 0.1, True, True)
    assert (cli.pair_limit, cli.demo_traffic, cli.access_token) == (False, 6.0, "EAAG-from-env")


def test_the_start_command_serves_the_simulator_with_one_gunicorn_worker(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "WHATSAPP_ACCESS_TOKEN": TOKEN, "WAFLOW_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "simulator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "waflow.simulator", "--port", str(port), "--open-windows",
                                 "--no-status-webhooks"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            try:
                return requests.get(f"{base}/_sim/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, log.read_text()
                return False

        wait_for(ready, 20, what="the simulator to listen")
        response = requests.post(f"{base}/v25.0/{NUMBER}/messages", json=text(), headers=AUTH, timeout=5)
        assert response.status_code == 200, response.text
        requests.post(f"{base}/_sim/faults", json={"drop": True}, timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{base}/v25.0/{NUMBER}/messages", json=text(), headers=AUTH, timeout=5)
        assert requests.get(f"{base}/_sim/stats", timeout=5).json()["accepted"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert TOKEN not in log.read_text()


def test_brief_stats_count_without_walking_every_record(make):
    client = make(rate=1000, pair_limit=False).test_client()
    brief = client.get("/_sim/stats?brief=1").get_json()
    assert "max_in_any_second" not in brief and brief["accepted"] == 0 and brief["refused_total"] == 0
    assert "max_in_any_second" in client.get("/_sim/stats").get_json()


def test_the_new_command_line_options_raise_the_media_cap_and_turn_user_ids_off():
    options = options_from(parse_args(["--max-media-bytes", str(600 * 2**20), "--no-user-ids"]))
    assert (options.max_media_bytes, options.user_ids) == (600 * 2**20, False)
    defaults = options_from(parse_args([]))
    assert (defaults.max_media_bytes, defaults.user_ids) == (256 * 2**20, True)
    with pytest.raises(SystemExit):
        parse_args(["--max-media-bytes", "1000"])


# -- structure ----------------------------------------------------------------------------------


def _simulator_imports() -> dict[str, set[str]]:
    """Each module of waflow.simulator → the simulator modules it imports, anywhere in it (a function's
    import counts); ``from waflow.simulator import x`` counts as importing x if x is a module, else the package."""
    package = ROOT / "waflow" / "simulator"
    names = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in names:
        found: set[str] = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[2] if a.name.count(".") >= 2 else "__init__"
                             for a in node.names if a.name.startswith("waflow.simulator"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("waflow.simulator"):
                if node.module == "waflow.simulator":
                    found.update(a.name if a.name in names else "__init__" for a in node.names)
                else:
                    found.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: relative imports are not used in waflow.simulator")
        graph[name] = found - {name}
    return graph


def test_the_simulators_modules_import_each_other_in_one_direction():
    graph = _simulator_imports()
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) == set(graph)
    # app only assembles: nothing below it imports it, nor the blueprints it assembles.
    for name, imported in graph.items():
        if name not in ("__init__", "__main__", "app"):
            assert not imported & {"app", "graph", "graph_media", "control", "__init__", "__main__"}, name
