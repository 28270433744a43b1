"""Who the simulator's webhooks name: contacts in status webhooks (except failed ones), each
number's stable business-scoped user id, phone-only contacts on request, and the WABA id
(issue 16, findings 1 to 3)."""
from __future__ import annotations

import re
import time
from typing import Any

import pytest

from simulator_support import Receiver, clock, make, receiver, send, text  # noqa: F401
from support import wait_for
from waflow import config
from waflow.simulator import SimulatorOptions
from waflow.simulator.users import business_scoped_id, country_of

BSUID = re.compile(r"[A-Z]{2}\.[0-9]{20}")


def _posted(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    wait_for(lambda: len(receiver.posts) >= count, 5, what=f"{count} webhooks")
    time.sleep(0.05)  # nothing more is on its way
    docs = receiver.docs()
    assert len(docs) == count
    return docs


def _value(doc: dict[str, Any]) -> dict[str, Any]:
    ((change,),) = [entry["changes"] for entry in doc["entry"]]
    return change["value"]


def _live(make, receiver, **options: Any):
    return make(clock=time.time, status_webhooks=True, status_delay=0.01, webhook_url=receiver.url,
                **options).test_client()


def test_sent_delivered_and_read_statuses_name_the_recipient_in_contacts(make, receiver):
    client = _live(make, receiver)
    send(client, text(to="+62 812-3456-7001"))
    docs = _posted(receiver, 3)
    user_id = business_scoped_id("6281234567001", config.DEV_WABA_ID)
    for doc in docs:
        value = _value(doc)
        assert value["contacts"] == [{"wa_id": "6281234567001", "user_id": user_id}]
        (status,) = value["statuses"]
        assert status["recipient_id"] == "6281234567001" and "recipient_user_id" not in status


def test_a_send_to_a_business_scoped_id_names_it_and_the_number_the_simulator_knows_behind_it(make, receiver):
    client = _live(make, receiver)
    user_id = client.post("/_sim/inbound", json={"from": "447700900004", "text": "Hello"}).get_json()["user_id"]
    doc = {"messaging_product": "whatsapp", "recipient": user_id, "type": "text", "text": {"body": "Hi"}}
    assert send(client, doc).status_code == 200
    statuses = [_value(d) for d in _posted(receiver, 4)[1:]]
    for value in statuses:
        assert value["contacts"] == [{"wa_id": "447700900004", "user_id": user_id}]
        assert value["statuses"][0]["recipient_user_id"] == user_id
    stranger = "US.13491208655302741918"
    send(client, {**doc, "recipient": stranger})
    for value in [_value(d) for d in _posted(receiver, 7)[4:]]:
        assert value["contacts"] == [{"user_id": stranger}]


def test_a_fail_fault_accepts_the_send_then_posts_one_failed_status_without_contacts(make, receiver):
    client = _live(make, receiver)
    client.post("/_sim/faults", json={"fail": 131026, "details": "Message Undeliverable."})
    answer = send(client, text(to="+15551230001", biz_opaque_callback_data="draft-9"))
    assert answer.status_code == 200
    (doc,) = _posted(receiver, 1)
    value = _value(doc)
    assert "contacts" not in value
    (status,) = value["statuses"]
    assert status["id"] == answer.get_json()["messages"][0]["id"] and status["status"] == "failed"
    assert status["recipient_id"] == "15551230001" and status["biz_opaque_callback_data"] == "draft-9"
    assert "pricing" not in status
    (error,) = status["errors"]
    assert error["code"] == 131026 and error["title"] == "Message undeliverable"
    assert error["error_data"] == {"details": "Message Undeliverable."} and error["href"].startswith("https://")
    assert send(client, text(to="+15551230002")).status_code == 200  # used once: the next send goes on
    assert sorted(s["status"] for d in _posted(receiver, 4)[1:] for s in _value(d)["statuses"]) == \
        ["delivered", "read", "sent"]


def test_a_failed_status_can_carry_a_phone_only_contact_as_live_traffic_shows(make, receiver):
    client = _live(make, receiver)
    client.post("/_sim/faults", json={"fail": 131026, "with_contact": True})
    send(client, text(to="+15551230001"))
    (doc,) = _posted(receiver, 1)
    assert _value(doc)["contacts"] == [{"wa_id": "15551230001"}]


@pytest.mark.parametrize("fault", [{"fail": "131026"}, {"fail": 131026, "code": 2}, {"fail": 131026, "on": "read"},
                                   {"with_contact": True, "code": 2}, {"fail": 131026, "with_contact": "yes"}])
def test_it_refuses_a_malformed_fail_fault(make, fault):
    client = make().test_client()
    assert client.post("/_sim/faults", json=fault).status_code == 400


def test_every_number_has_one_business_scoped_id_stable_across_restarts_and_scoped_to_the_waba(make, receiver):
    first = make(webhook_url=receiver.url).test_client()
    again = make(webhook_url=receiver.url).test_client()  # a restarted simulator: nothing shared in memory
    ids = [c.post("/_sim/inbound", json={"from": "6281234567001", "text": "Halo"}).get_json()["user_id"]
           for c in (first, again, first)]
    assert ids[0] == ids[1] == ids[2] == business_scoped_id("6281234567001", config.DEV_WABA_ID)
    assert BSUID.fullmatch(ids[0]) and ids[0].startswith("ID.")
    assert business_scoped_id("6281234567002", config.DEV_WABA_ID) != ids[0]
    assert business_scoped_id("6281234567001", "100000000000099") != ids[0]
    for doc in receiver.docs():
        value = _value(doc)
        assert value["contacts"][0]["user_id"] == ids[0] and value["contacts"][0]["wa_id"] == "6281234567001"
        assert value["messages"][0]["from_user_id"] == ids[0]


@pytest.mark.parametrize("wa_id,country", [("15551230001", "US"), ("447700900004", "GB"), ("6281234567001", "ID"),
                                           ("972544401243", "IL"), ("8869123456", "ZZ")])
def test_a_business_scoped_id_starts_with_the_numbers_country(wa_id, country):
    assert country_of(wa_id) == country
    assert business_scoped_id(wa_id, config.DEV_WABA_ID).startswith(f"{country}.")


def test_demo_traffic_carries_business_scoped_ids(make, receiver):
    make(webhook_url=receiver.url, demo_traffic=1200)
    wait_for(lambda: len(receiver.posts) >= 1, 5, what="a demo message")
    value = _value(receiver.docs()[0])
    (contact,) = value["contacts"]
    assert contact["user_id"] == business_scoped_id(contact["wa_id"], config.DEV_WABA_ID)


def test_an_injection_can_ask_for_a_phone_only_contact_or_name_its_own_id(make, receiver):
    client = make(webhook_url=receiver.url).test_client()
    phone_only = client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi", "user_id": None})
    assert phone_only.status_code == 200 and phone_only.get_json()["user_id"] is None
    chosen = client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi", "user_id": "US.1234567890"})
    assert chosen.get_json()["user_id"] == "US.1234567890"
    first, second = (_value(doc) for doc in receiver.docs())
    assert first["contacts"] == [{"profile": {"name": "Client 4567"}, "wa_id": "15551234567"}]
    assert "from_user_id" not in first["messages"][0]
    assert second["contacts"][0]["user_id"] == "US.1234567890"
    assert second["messages"][0]["from_user_id"] == "US.1234567890"
    assert client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi", "user_id": 7}).status_code == 400


def test_user_ids_can_be_switched_off_for_phone_only_webhooks(make, receiver):
    client = _live(make, receiver, user_ids=False)
    client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi"})
    send(client, text(to="+15551234567"))
    inbound, *statuses = (_value(doc) for doc in _posted(receiver, 4))
    assert inbound["contacts"] == [{"profile": {"name": "Client 4567"}, "wa_id": "15551234567"}]
    for value in statuses:
        assert value["contacts"] == [{"wa_id": "15551234567"}]
    assert client.post("/_sim/config", json={"user_ids": True}).get_json()["user_ids"] is True
    assert client.post("/_sim/config", json={"user_ids": "no"}).status_code == 400


def test_every_webhook_names_the_configured_waba(make, receiver):
    settings = config.load({"WHATSAPP_WABA_ID": "123456789012345", "SIMULATOR_WEBHOOK_URL": receiver.url})
    options = SimulatorOptions.from_settings(settings, access_token="t", app_secret="s", clock=time.time,
                                             status_delay=0.01, open_windows=True)
    assert options.waba_id == "123456789012345"
    client = make(**{k: getattr(options, k) for k in ("waba_id", "webhook_url", "clock", "status_delay")},
                  status_webhooks=True).test_client()
    client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi"})
    send(client, text(to="+15551234567"))
    assert [entry["id"] for doc in _posted(receiver, 4) for entry in doc["entry"]] == ["123456789012345"] * 4


def test_the_development_waba_id_is_the_default(make, receiver):
    assert SimulatorOptions.from_settings(config.load({})).waba_id == config.DEV_WABA_ID == "100000000000002"
    client = make(webhook_url=receiver.url).test_client()
    client.post("/_sim/inbound", json={"from": "15551234567", "text": "Hi"})
    assert receiver.docs()[0]["entry"][0]["id"] == config.DEV_WABA_ID
