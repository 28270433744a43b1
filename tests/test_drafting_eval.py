"""The evaluation set: the held-out half is the one committed before tuning, and both halves are well formed."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from support import ROOT
from waflow.drafting.knowledge import SAMPLE_DIR, load

HELD_OUT = ROOT / "bench/drafting/eval-heldout.jsonl"
DEV = ROOT / "bench/drafting/eval-dev.jsonl"


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_held_out_half_is_the_file_whose_sha256_the_benchmarks_record():
    recorded = re.search(r"sha256 is `([0-9a-f]{64})`", (ROOT / "docs/benchmarks.md").read_text())
    assert recorded, "docs/benchmarks.md records the held-out file's sha256"
    assert hashlib.sha256(HELD_OUT.read_bytes()).hexdigest() == recorded.group(1)


@pytest.mark.parametrize("path, prefix", [(HELD_OUT, "h"), (DEV, "d")])
def test_each_half_has_at_least_40_labelled_messages_naming_real_entries(path, prefix):
    entry_ids = {entry.id for entry in load(SAMPLE_DIR).entries}
    messages = rows(path)
    assert len(messages) >= 40
    assert len({m["id"] for m in messages}) == len(messages)
    for message in messages:
        assert message["id"].startswith(prefix)
        assert message["entries"] and set(message["entries"]) <= entry_ids, message["id"]
        assert message["language"] in ("id", "en") and isinstance(message["urgent"], bool)
    assert {m["language"] for m in messages} == {"id", "en"} and any(m["urgent"] for m in messages)


def test_no_message_is_lifted_from_the_knowledge_bases_example_questions():
    def plain(text: str) -> str:
        return " ".join(re.findall(r"\w+", text.lower()))

    questions = {plain(q) for entry in load(SAMPLE_DIR).entries for qs in entry.questions.values() for q in qs}
    for message in rows(HELD_OUT) + rows(DEV):
        assert plain(message["text"]) not in questions, message["id"]
