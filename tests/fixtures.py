"""Helpers for the Meta webhook fixtures in ``tests/fixtures/pywa/`` (see its SOURCE.md).

Each ``updates/<stem>.json`` maps a case name to one complete webhook POST body.
Many cases share ids such as ``wamid.xyzxyz``; ``unique_ids`` gives a body fresh
ids so that dedupe on the wamid does not hide one case behind another.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

UPDATES_DIR = Path(__file__).parent / "fixtures" / "pywa" / "updates"

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


def load_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """Every case of every fixture file as (file stem, case name, body), files sorted by name."""
    cases = []
    for path in sorted(UPDATES_DIR.glob("*.json")):
        with path.open(encoding="utf-8") as fh:
            for case_name, body in json.load(fh).items():
                cases.append((path.stem, case_name, body))
    return cases


def load_case(stem: str, case_name: str) -> dict[str, Any]:
    """One fixture body, freshly read (callers may change it)."""
    with (UPDATES_DIR / f"{stem}.json").open(encoding="utf-8") as fh:
        return json.load(fh)[case_name]


def _replace_media_ids(msg: dict[str, Any], prefix: str) -> None:
    for kind in MEDIA_TYPES:
        obj = msg.get(kind)
        if isinstance(obj, dict) and "id" in obj:
            obj["id"] = f"{prefix}.{kind}"
    # An edited media message carries its new media object one level down.
    edit = msg.get("edit")
    if isinstance(edit, dict) and isinstance(edit.get("message"), dict):
        _replace_media_ids(edit["message"], f"{prefix}.edit")


def unique_ids(body: dict[str, Any], tag: str) -> dict[str, Any]:
    """A deep copy of ``body`` whose message, status and media ids are unique and derived from ``tag``.

    Ids are positional (``wamid.<tag>.m<entry>.<change>.<index>``), so the same tag
    always gives the same ids, and different tags never collide.
    """
    body = copy.deepcopy(body)
    for e, entry in enumerate(body.get("entry") or []):
        if not isinstance(entry, dict):
            continue
        for c, change in enumerate(entry.get("changes") or []):
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for i, msg in enumerate(value.get("messages") or []):
                if isinstance(msg, dict):
                    msg["id"] = f"wamid.{tag}.m{e}.{c}.{i}"
                    _replace_media_ids(msg, f"media.{tag}.m{e}.{c}.{i}")
            for i, st in enumerate(value.get("statuses") or []):
                if isinstance(st, dict):
                    st["id"] = f"wamid.{tag}.s{e}.{c}.{i}"
    return body


def to_bytes(body: Any) -> bytes:
    """Compact JSON bytes, as Meta sends them."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def first_value(body: dict[str, Any]) -> dict[str, Any]:
    """``entry[0].changes[0].value`` of a body."""
    return body["entry"][0]["changes"][0]["value"]
