"""A word-level diff of a draft and the words sent, for the audit page's side-by-side view.

``word_diff(draft, sent)`` gives each side as ``Segment``s: text both share (``same``), text only the draft
had (``removed``) and text only the sent words have (``added``). A word carries the spaces after it, so the
texts read as written (line breaks included); the spaces after a changed word are not marked. The segments
are plain strings: the template escapes them and adds the markup (``<del>``, ``<ins>``) itself, so client
text never becomes markup.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

# Leading spaces, then each word with the spaces after it: every character of a text is in one token.
_TOKENS = re.compile(r"^\s+|\S+\s*")


@dataclass(frozen=True)
class Segment:
    kind: str  # same | removed | added
    text: str


def tokens(text: str) -> list[str]:
    return _TOKENS.findall(text)


def word_diff(draft: str | None, sent: str | None) -> tuple[list[Segment], list[Segment]]:
    """(the draft's side, the sent side). A missing text (no draft; rejected, so nothing sent) is an empty
    side, and the other side is shown whole and unmarked: there is nothing to compare it with."""
    if draft is None or sent is None:
        return _whole(draft), _whole(sent)
    old, new = tokens(draft), tokens(sent)
    # Words compare without their trailing spaces: a word moved to the end of a line is the same word.
    matcher = SequenceMatcher(None, [t.rstrip() for t in old], [t.rstrip() for t in new], autojunk=False)
    left: list[Segment] = []
    right: list[Segment] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            _add(left, "same", old[i1:i2])
            _add(right, "same", new[j1:j2])
            continue
        _add(left, "removed", old[i1:i2])
        _add(right, "added", new[j1:j2])
    return left, right


def _whole(text: str | None) -> list[Segment]:
    return [Segment("same", text)] if text else []


def _add(side: list[Segment], kind: str, words: list[str]) -> None:
    """Append ``words`` as ``kind``; the spaces after changed words are left unmarked (a struck-through or
    underlined space reads as a stray mark)."""
    text = "".join(words)
    if kind != "same":
        marked = text.rstrip()
        _append(side, kind, marked)
        _append(side, "same", text[len(marked):])
    else:
        _append(side, kind, text)


def _append(side: list[Segment], kind: str, text: str) -> None:
    """Append, joined to the segment before when it is of the same kind."""
    if not text:
        return
    if side and side[-1].kind == kind:
        side[-1] = Segment(kind, side[-1].text + text)
    else:
        side.append(Segment(kind, text))
