"""The simulator's template list as Meta's ``GET /{waba-id}/message_templates`` answers it
(issue 16, finding 4): ``parameter_format``, BODY examples, filters, fields, paging, summary."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from simulator_support import AUTH, assert_meta_error, clock, make, send, sim, template  # noqa: F401
from waflow import config

LIST = f"/v25.0/{config.DEV_WABA_ID}/message_templates"


def _list(client: Any, **params: Any) -> dict[str, Any]:
    response = client.get(LIST, query_string=params, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_every_template_has_its_parameter_format_and_each_body_with_placeholders_its_example(sim):
    data = _list(sim)["data"]
    assert len(data) == 5
    for t in data:
        assert t["parameter_format"] == "POSITIONAL"
        (body,) = t["components"]
        if t["name"] == "hello_world":
            assert "{{" not in body["text"] and "example" not in body
        else:
            (values,) = body["example"]["body_text"]
            assert len(values) == body["text"].count("{{") and all(values)
    reminder = next(t for t in data if (t["name"], t["language"]) == ("appointment_reminder", "en_US"))
    assert reminder["components"][0]["example"] == {"body_text": [["Ana Pereira", "12 May at 10:00"]]}


def test_a_template_with_named_placeholders_lists_named_examples_and_takes_its_parameters(sim):
    added = sim.post("/_sim/templates", json={"name": "hearing_notice", "body": "Dear {{client}}, the hearing is on "
                                              "{{date}}. {{client}}, please confirm.", "examples": ["Ana", "3 June"]})
    assert added.status_code == 201 and added.get_json()["parameter_count"] == 2
    (listed,) = _list(sim, name="hearing_notice")["data"]
    assert listed["parameter_format"] == "NAMED"
    assert listed["components"][0]["example"] == {"body_text_named_params": [
        {"param_name": "client", "example": "Ana"}, {"param_name": "date", "example": "3 June"}]}
    assert send(sim, template("hearing_notice", params=2)).status_code == 200
    assert sim.post("/_sim/templates", json={"name": "x", "body": "{{1}}", "examples": [3]}).status_code == 400


def test_a_template_added_without_examples_gets_made_up_ones(sim):
    sim.post("/_sim/templates", json={"name": "fee_notice", "body": "Fee {{1}} due {{2}}."})
    (listed,) = _list(sim, name="fee_notice")["data"]
    assert listed["components"][0]["example"] == {"body_text": [["example 1", "example 2"]]}


def test_filters_take_part_of_a_name_and_comma_separated_values(sim):
    assert {t["name"] for t in _list(sim, name="REMINDER")["data"]} == {"appointment_reminder"}
    assert len(_list(sim, language="id,en_US")["data"]) == 5
    assert {t["language"] for t in _list(sim, language="id")["data"]} == {"id"}
    assert len(_list(sim, status="APPROVED", category="UTILITY")["data"]) == 5
    assert _list(sim, status="REJECTED")["data"] == [] and _list(sim, category="MARKETING")["data"] == []


def test_fields_narrow_each_template_to_those_asked_and_its_id(sim):
    data = _list(sim, fields="name,language,quality_score")["data"]
    assert all(set(t) == {"name", "language", "id"} for t in data)


def test_the_summary_comes_when_asked_with_the_counts_asked(sim):
    assert "summary" not in _list(sim)
    summary = _list(sim, name="case", summary="total_count,message_template_count,message_template_limit,"
                                              "are_translations_complete")["summary"]
    assert summary == {"total_count": 2, "message_template_count": 5, "message_template_limit": 250,
                       "are_translations_complete": True}
    assert _list(sim, summary="total_count")["summary"] == {"total_count": 5}
    assert set(_list(sim, summary="true")["summary"]) == {"total_count", "message_template_count",
                                                          "message_template_limit", "are_translations_complete"}


def test_pages_follow_their_cursors_forward_and_back_on_the_configured_base_url(make):
    client = make(base_url="http://127.0.0.1:5999/").test_client()
    first = _list(client, limit=2)
    assert len(first["data"]) == 2 and "previous" not in first["paging"]
    next_url = urlsplit(first["paging"]["next"])
    assert (next_url.scheme, next_url.netloc, next_url.path) == ("http", "127.0.0.1:5999", LIST)
    after = parse_qs(next_url.query)
    assert after["limit"] == ["2"] and after["after"] == [first["paging"]["cursors"]["after"]]
    second = _list(client, limit=2, after=first["paging"]["cursors"]["after"])
    third = _list(client, limit=2, after=second["paging"]["cursors"]["after"])
    assert len(third["data"]) == 1 and "next" not in third["paging"]
    names = [(t["name"], t["language"]) for page in (first, second, third) for t in page["data"]]
    assert len(set(names)) == 5
    back = _list(client, limit=2, before=second["paging"]["cursors"]["before"])
    assert back["data"] == first["data"]
    assert "before" in parse_qs(urlsplit(second["paging"]["previous"]).query)
    assert _list(client, name="no_such")["data"] == [] and "paging" not in _list(client, name="no_such")


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "many"}, {"after": "not-a-cursor"},
                                    {"before": "cG9zaXRpb246eA=="}])
def test_a_bad_limit_or_cursor_is_refused_with_code_100(sim, params):
    assert_meta_error(sim.get(LIST, query_string=params, headers=AUTH), 100, 400)
