"""The webhook: Meta's handshake, signature checks, size limit, and 200 only once queued."""
from __future__ import annotations

import io
import json
import logging

import pytest

from support import RecordingPublisher, REFERENCE_BODY, REFERENCE_SECRET, REFERENCE_SIGNATURE, compact, sign, text_webhook
from waflow.broker import PublishError
from waflow.gateway import signature_is_valid

URL = "/webhooks/whatsapp"


def handshake(client, **params):
    return client.get(URL, query_string={"hub.mode": "subscribe", "hub.challenge": "1158201444", **params})


def test_it_answers_the_handshake_with_the_challenge_as_plain_text(client):
    response = handshake(client, **{"hub.verify_token": "let-me-in"})
    assert response.status_code == 200
    assert response.data == b"1158201444"
    assert response.mimetype == "text/plain"


@pytest.mark.parametrize("params", [
    {"hub.verify_token": "wrong"},
    {"hub.verify_token": ""},
    {},
    {"hub.verify_token": "let-me-in", "hub.mode": "unsubscribe"},
])
def test_it_refuses_a_handshake_without_the_right_token_and_mode(client, params):
    response = handshake(client, **params)
    assert response.status_code == 403
    assert b"1158201444" not in response.data


def test_it_verifies_metas_reference_vector():
    assert signature_is_valid(REFERENCE_SECRET, REFERENCE_BODY, REFERENCE_SIGNATURE)
    assert not signature_is_valid(REFERENCE_SECRET, REFERENCE_BODY + b" ", REFERENCE_SIGNATURE)
    assert not signature_is_valid("another-secret", REFERENCE_BODY, REFERENCE_SIGNATURE)


def test_it_queues_the_reference_delivery_byte_for_byte(client, publisher):
    response = client.post(URL, data=REFERENCE_BODY, headers={"X-Hub-Signature-256": REFERENCE_SIGNATURE,
                                                              "Content-Type": "application/json"})
    assert response.status_code == 200
    assert [body for body, _ in publisher.published] == [REFERENCE_BODY]


def test_it_rejects_a_missing_signature_with_401_and_queues_nothing(client, publisher):
    response = client.post(URL, data=REFERENCE_BODY, content_type="application/json")
    assert response.status_code == 401
    assert publisher.published == []


@pytest.mark.parametrize("signature", [
    "sha256=" + "0" * 64,
    sign(REFERENCE_BODY, "not-the-app-secret"),
    REFERENCE_SIGNATURE.replace("sha256=", "sha1="),
    "54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441",
    "sha256=",
    "sha256=é" + "0" * 63,
    "sha256=" + "\u00ff" * 64,
])
def test_it_rejects_a_forged_signature_with_403_and_queues_nothing(client, publisher, signature):
    response = client.post(URL, data=REFERENCE_BODY, headers={"X-Hub-Signature-256": signature})
    assert response.status_code == 403
    assert publisher.published == []


def test_it_rejects_a_signature_over_reserialised_json(client, publisher):
    # A body re-encoded after parsing (spaces, escaping) no longer matches Meta's signature.
    reserialised = json.dumps(json.loads(REFERENCE_BODY)).encode()
    response = client.post(URL, data=reserialised, headers={"X-Hub-Signature-256": REFERENCE_SIGNATURE})
    assert response.status_code == 403
    assert publisher.published == []


def test_it_accepts_non_ascii_bodies_signed_over_their_raw_bytes(client, publisher):
    body = '{"object":"whatsapp_business_account","entry":[],"note":"äöå 😮 / @"}'.encode()
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 200
    assert publisher.published[0][0] == body


def test_it_refuses_a_body_over_3_mib_with_413(client, publisher):
    body = b'{"object":"whatsapp_business_account","pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 413
    assert publisher.published == []


def test_it_takes_a_body_just_under_3_mib(client, publisher):
    body = b'{"p":"' + b"x" * (3 * 1024 * 1024 - 16) + b'"}'
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 200
    assert len(publisher.published) == 1


def post_chunked(client, body: bytes, signature: str):
    """A body without Content-Length, as gunicorn hands a chunked one to the app (it ends the stream itself)."""
    return client.post(URL, input_stream=io.BytesIO(body), environ_overrides={"wsgi.input_terminated": True},
                       headers={"X-Hub-Signature-256": signature, "Transfer-Encoding": "chunked"})


def test_it_refuses_a_signed_chunked_body_over_3_mib_with_413_before_checking_the_signature(
        client, publisher, caplog):
    body = b'{"object":"whatsapp_business_account","pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    caplog.set_level(logging.INFO)
    response = post_chunked(client, body, sign(body))
    assert response.status_code == 413
    assert publisher.published == []
    assert "body over 3145728 bytes" in caplog.text
    assert "signature mismatch" not in caplog.text


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 3 * 1024 * 1024 - 1, 1024])
def test_it_takes_a_signed_chunked_body_up_to_exactly_3_mib(client, publisher, size):
    body = b'{"p":"' + b"x" * (size - 8) + b'"}'
    assert len(body) == size
    response = post_chunked(client, body, sign(body))
    assert response.status_code == 200
    assert [queued for queued, _ in publisher.published] == [body]


@pytest.mark.parametrize("terminated", [True, False], ids=["as-gunicorn-hands-it", "plain-wsgi"])
def test_it_answers_400_to_a_body_cut_short_and_does_not_call_it_forged(client, publisher, caplog, terminated):
    # The client left, or stalled past WAFLOW_BODY_TIMEOUT and the web worker stopped reading.
    caplog.set_level(logging.INFO)
    environ = {"CONTENT_LENGTH": str(len(REFERENCE_BODY)), **({"wsgi.input_terminated": True} if terminated else {})}
    response = client.post(URL, input_stream=io.BytesIO(REFERENCE_BODY[:40]), environ_overrides=environ,
                           headers={"X-Hub-Signature-256": REFERENCE_SIGNATURE})
    assert response.status_code == 400
    assert publisher.published == []
    assert "signature mismatch" not in caplog.text
    if terminated:
        assert f"body ended after 40 of {len(REFERENCE_BODY)} bytes" in caplog.text


def test_it_does_not_parse_the_body_on_the_hot_path(client, publisher):
    # A signed body that is not JSON is still queued: the ingestor judges it, not the webhook.
    body = b"this is not json"
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 200
    assert publisher.published[0][0] == body


def test_it_stamps_the_receive_time(client, publisher):
    import time

    before = time.time()
    body = compact(text_webhook(["wamid.T1"]))
    client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert before <= publisher.published[0][1] <= time.time()


def test_it_answers_503_with_retry_after_when_the_message_is_not_queued(settings):
    from waflow import create_app

    failing = RecordingPublisher(error=PublishError("broker unavailable: connection refused"))
    client = create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": failing}).test_client()
    body = compact(text_webhook(["wamid.T2"]))
    response = client.post(URL, data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


def test_it_keeps_the_app_secret_out_of_logs_and_responses(settings, caplog):
    from waflow import create_app

    failing = RecordingPublisher(error=PublishError("broker unavailable"))
    client = create_app({"TESTING": True, "WAFLOW_SETTINGS": settings, "WAFLOW_PUBLISHER": failing}).test_client()
    caplog.set_level(logging.DEBUG)
    bodies = [
        client.post(URL, data=REFERENCE_BODY, headers={"X-Hub-Signature-256": "sha256=" + "1" * 64}).data,
        client.post(URL, data=REFERENCE_BODY, headers={"X-Hub-Signature-256": REFERENCE_SIGNATURE}).data,
        client.post(URL, data=REFERENCE_BODY).data,
        handshake(client, **{"hub.verify_token": "nope"}).data,
    ]
    seen = caplog.text + " ".join(b.decode() for b in bodies) + repr(settings)
    assert REFERENCE_SECRET not in seen
    assert "let-me-in" not in seen
    assert "gateway: rejected webhook: signature mismatch" in caplog.text
