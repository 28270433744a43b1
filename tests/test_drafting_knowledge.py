"""The knowledge base: the sample's content, its format's errors with file and line, reloading on change."""
from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

import pytest

from drafting_support import ask, copy_sample
from support import ROOT
from waflow.drafting.knowledge import KnowledgeBase, SAMPLE_DIR, load
from waflow.drafting.offline import OfflineDrafter

ENTRY = """\
---
id: {id}
title:
  id: Judul
  en: Title
questions:
  id: [Bagaimana cara mengurus paspor hilang?]
  en: [How do I replace a lost passport?]
tags: [paspor]
---
## id

{answer}

## en

Report it to the immigration office.
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    """Move the modification time on, as a later save would (some file systems keep coarse times)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def test_the_sample_has_at_least_40_entries_in_both_languages_and_no_errors():
    knowledge = load(SAMPLE_DIR)
    assert knowledge.errors == ()
    assert len(knowledge.entries) >= 40
    for entry in knowledge.entries:
        assert set(entry.answers) == set(entry.title) == set(entry.questions) == {"id", "en"}
        assert all(len(entry.answers[lang]) > 100 for lang in ("id", "en")), entry.id


def test_the_docs_list_exactly_the_samples_entry_ids():
    section = (ROOT / "docs/knowledge-base.md").read_text().split("## Entries")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    listed = {entry_id for row in rows for entry_id in re.findall(r"`([a-z0-9-]+)`", row)}
    assert listed == {entry.id for entry in load(SAMPLE_DIR).entries}


def test_it_reports_a_yaml_error_with_its_file_and_line_and_loads_the_others(tmp_path):
    folder = copy_sample(tmp_path)
    write(folder, "broken.md", "---\nid: broken\ntitle: [unclosed\nquestions: {}\n---\n## id\nx\n## en\ny\n")
    knowledge = load(folder)
    assert [(e.file, e.line) for e in knowledge.errors] == [("broken.md", 4)]
    assert "YAML error" in knowledge.errors[0].message and "line 3" in knowledge.errors[0].message
    assert len(knowledge.entries) == len(load(SAMPLE_DIR).entries)


@pytest.mark.parametrize("text, line, message", [
    (ENTRY.format(id="paspor", answer="Lapor ke imigrasi.").replace("questions:\n  id: [Bagaimana cara mengurus "
     "paspor hilang?]\n  en: [How do I replace a lost passport?]\n", ""), 1, "missing required field 'questions'"),
    (ENTRY.format(id="paspor", answer="Lapor ke imigrasi.").replace("  en: Title\n", ""), 3,
     "field 'title' is missing its 'en' part"),
    (ENTRY.format(id="Paspor Hilang", answer="x"), 2, "field 'id' must be lower-case letters"),
    (ENTRY.format(id="paspor", answer=""), 11, "missing the answer section '## id' (or it is empty)"),
    ("id: paspor\n", 1, "the file must start with a '---' line"),
    ("---\nid: paspor\n", 1, "never closed"),
    (ENTRY.format(id="paspor", answer="x").replace("tags: [paspor]", "intake_answered: [alamat]"), 9,
     "field 'intake_answered' must be a list of"),
])
def test_it_reports_a_malformed_entry_by_file_line_and_key(tmp_path, text, line, message):
    write(tmp_path, "paspor.md", text)
    write(tmp_path, "visa.md", ENTRY.format(id="visa", answer="Ajukan ke imigrasi."))
    knowledge = load(tmp_path)
    errors = [e for e in knowledge.errors if e.file == "paspor.md"]
    assert len(errors) == 1 and errors[0].line == line and message in errors[0].message
    assert [e.id for e in knowledge.entries] == ["visa"]


def test_it_refuses_a_second_entry_with_the_same_id(tmp_path):
    write(tmp_path, "a.md", ENTRY.format(id="paspor", answer="Pertama."))
    write(tmp_path, "b.md", ENTRY.format(id="paspor", answer="Kedua."))
    knowledge = load(tmp_path)
    assert [str(e) for e in knowledge.errors if e.file == "b.md"] == ["b.md:2: id 'paspor' is already used by a.md"]
    assert knowledge.entry("paspor").answers["id"] == "Pertama."


def test_it_logs_each_error_with_file_and_line(tmp_path, caplog):
    write(tmp_path, "paspor.md", "---\nid: paspor\n---\n")
    with caplog.at_level(logging.WARNING, logger="waflow.drafting.knowledge"):
        load(tmp_path)
    assert "knowledge base: paspor.md:1: missing required field 'title'" in caplog.text


def test_it_reloads_a_changed_answer_without_a_restart(tmp_path):
    folder = copy_sample(tmp_path)
    drafter = OfflineDrafter(KnowledgeBase(folder, check_interval=0))
    assert "Jl. Cikini Raya No. 48" in drafter.draft(ask("alamat kantornya di mana?")).text
    path = folder / "kantor-jam-lokasi.md"
    path.write_text(path.read_text().replace("Jl. Cikini Raya No. 48", "Jl. Sudirman Kav. 1"))
    touch_later(path)
    draft = drafter.draft(ask("alamat kantornya di mana?"))
    assert "Jl. Sudirman Kav. 1" in draft.text and "Cikini Raya No. 48" not in draft.text


def test_it_finds_a_new_entry_and_forgets_a_removed_one(tmp_path):
    folder = copy_sample(tmp_path)
    drafter = OfflineDrafter(KnowledgeBase(folder, check_interval=0))
    write(folder, "paspor.md", ENTRY.format(id="paspor", answer="Laporkan ke kantor imigrasi terdekat."))
    assert "Laporkan ke kantor imigrasi terdekat." in drafter.draft(ask("paspor sy hilang gmn")).text
    (folder / "paspor.md").unlink()
    assert "paspor" not in [hit.entry.id for hit in drafter.analyse(ask("paspor sy hilang gmn")).retrieved]


def test_it_looks_at_the_folder_at_most_once_per_check_interval(tmp_path):
    folder = copy_sample(tmp_path)
    base = KnowledgeBase(folder, check_interval=3600)
    write(folder, "paspor.md", ENTRY.format(id="paspor", answer="x"))
    assert base.current().version == 1 and "paspor" not in {e.id for e in base.current().entries}


def test_a_malformed_edit_keeps_the_other_entries_and_reports_itself(tmp_path):
    folder = copy_sample(tmp_path)
    base = KnowledgeBase(folder, check_interval=0)
    path = folder / "pesangon.md"
    path.write_text(path.read_text().replace("id: pesangon", "id: pesangon\n  oops: [", 1))
    touch_later(path)
    knowledge = base.current()
    assert [e.file for e in base.errors] == ["pesangon.md"] and base.errors[0].line == 3
    assert "pesangon" not in {e.id for e in knowledge.entries} and len(knowledge.entries) >= 40


def test_it_serves_drafts_from_many_threads_while_the_folder_changes(tmp_path):
    folder = copy_sample(tmp_path)
    drafter = OfflineDrafter(KnowledgeBase(folder, check_interval=0))
    failures: list[BaseException] = []

    def draft_many() -> None:
        try:
            for _ in range(30):
                assert drafter.draft(ask("sertifikat tanah hilang")).sources
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread)
            failures.append(exc)

    threads = [threading.Thread(target=draft_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for n in range(10):
        write(folder, f"extra-{n}.md", ENTRY.format(id=f"extra-{n}", answer="Tambahan."))
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_acknowledgement_comes_from_the_firms_editable_template(tmp_path):
    folder = copy_sample(tmp_path)
    templates = folder / "_templates.yaml"
    templates.write_text(templates.read_text().replace("Terima kasih telah menghubungi {firm}.",
                                                       "Salam hangat dari {firm}."))
    drafter = OfflineDrafter(KnowledgeBase(folder))
    assert drafter.draft(ask("mau tanya", first_contact=True)).text.startswith(
        "Salam hangat dari Kantor Hukum Wirawan Sinaga & Rekan.")


def test_a_broken_templates_file_is_reported_and_the_samples_templates_stand_in(tmp_path):
    folder = copy_sample(tmp_path)
    write(folder, "_templates.yaml", "acknowledgement:\n  id: Halo\n  en: [unclosed\n")
    base = KnowledgeBase(folder)
    assert [(e.file, e.line) for e in base.errors] == [("_templates.yaml", 4)]
    draft = OfflineDrafter(base).draft(ask("mau tanya", first_contact=True))
    assert draft.text.startswith("Terima kasih telah menghubungi Kantor Hukum Wirawan Sinaga & Rekan.")


def test_a_template_missing_a_language_is_reported_by_its_key(tmp_path):
    folder = copy_sample(tmp_path)
    templates = folder / "_templates.yaml"
    text = templates.read_text()
    templates.write_text(re.sub(r"holding:\n  id: >-\n.*?\n  en:", "holding:\n  en:", text, flags=re.S))
    errors = KnowledgeBase(folder).errors
    assert [e.message for e in errors] == ["template 'holding' is missing its 'id' text"]
    assert errors[0].line == text[:text.index("\nholding:")].count("\n") + 2
