"""Fuzzing the webhook and the ingestor: no input makes them crash, every bad one gets a reason."""
from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures import load_cases, to_bytes
from support import RecordingPublisher, sign
from waflow.events import NormalizedEvent
from waflow.ingestor import NotAWebhook, Origin, split_webhook

CASES = [body for _, _, body in load_cases()]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_webhooks(draw):
    """A real fixture with one node replaced, deleted, or given a wrong type."""
    doc = copy.deepcopy(draw(st.sampled_from(CASES)))
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return doc


def _check_split(raw: bytes) -> None:
    try:
        batch = split_webhook(raw, 1764000000.0)
    except NotAWebhook as exc:
        assert str(exc)
        return
    for event in batch.events:
        NormalizedEvent.model_validate_json(event.model_dump_json())
    for rejected in batch.rejected:
        assert isinstance(rejected.reason, str) and rejected.reason
        # The update's own webhook, replayed from where it was, is that update alone, set aside again.
        again = split_webhook(json.dumps(rejected.envelope).encode(), 1764000000.0,
                              Origin(batch.sha256, rejected.position))
        assert (again.events, [(r.reason, r.position) for r in again.rejected]) == \
            ([], [(rejected.reason, rejected.position)])
    assert len({e.event_id for e in batch.events if e.kind in ("message", "status")}) <= len(batch.events)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_the_ingestor_survives_arbitrary_bytes(raw):
    _check_split(raw)


@settings(max_examples=600, deadline=None)
@given(mutated_webhooks())
def test_the_ingestor_survives_mutated_meta_payloads(doc):
    _check_split(to_bytes(doc))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_the_ingestor_gives_a_reason_for_any_json_that_is_not_a_webhook(doc):
    _check_split(json.dumps(doc).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=256), header=st.one_of(st.none(), st.text(st.characters(exclude_characters="\r\n"), max_size=80)))
def test_the_webhook_never_answers_500(settings_for_app, body, header):
    app, publisher = settings_for_app
    headers = {} if header is None else {"X-Hub-Signature-256": header}
    assert app.test_client().post("/webhooks/whatsapp", data=body, headers=headers).status_code in (401, 403)
    good = app.test_client().post("/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": sign(body)})
    assert good.status_code == 200
    assert publisher.published[-1][0] == body




def _drain(queue_name: str) -> list:
    from waflow import queues
    from waflow.tasks import celery_app

    found = []
    with celery_app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queues.queue(queue_name))
        while True:
            try:
                message = simple.get(block=False)
            except simple.Empty:
                break
            found.append(message.payload)
            message.ack()
        simple.close()
    return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=300), mutated_webhooks().map(to_bytes)))
def test_no_bad_input_crashes_a_stage_and_each_is_dead_lettered_with_a_readable_reason(default_db, raw):
    """The whole inbound path in-process (embedded broker, SQLite): the ingest task and the core task it
    feeds always finish; what they set aside is in wa.dead_letter with a reason a person can read."""
    from waflow.core import handle_normalized
    from waflow.ingestor import ingest_raw

    for name in ("wa.incoming.normalized", "wa.media.processing", "wa.dead_letter"):
        _drain(name)
    try:
        expected = len(split_webhook(raw, 1764000000.0).rejected)
    except NotAWebhook:
        expected = 1
    assert ingest_raw.apply(args=(raw.decode("utf-8", "surrogateescape"), 1764000000.0)).successful()
    for args, kwargs, _ in _drain("wa.incoming.normalized"):
        assert handle_normalized.apply(args=args, kwargs=kwargs).successful()
    dead = _drain("wa.dead_letter")
    assert len(dead) == expected
    assert len({record["key"] for record in dead}) == expected
    for record in dead:
        assert record["error_type"] in ("NotAWebhook", "BadUpdate")
        assert isinstance(record["error_message"], str) and 3 < len(record["error_message"]) < 300
        if record["error_type"] == "NotAWebhook":
            assert record["args"][0] == raw.decode("utf-8", "surrogateescape")  # a replay re-ingests the body
            continue
        # A replay re-ingests that update alone, and setting it aside again yields the same record.
        assert ingest_raw.apply(args=record["args"], kwargs=record["kwargs"]).successful()
        assert _drain("wa.incoming.normalized") == []
        [again] = _drain("wa.dead_letter")
        assert (again["key"], again["error_message"]) == (record["key"], record["error_message"])
