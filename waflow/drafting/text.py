"""Chat text to plain words, and plain words to search terms.

``words()`` lower-cases, splits letters from digits ("50jt", "2thn"), drops reduplication digits ("anak2"),
squeezes stretched letters ("tolonggg") and expands chat abbreviations from ``data/abbreviations.tsv``
("sy" → "saya", "gmn" → "bagaimana"). Language, urgency and intake are judged on these words.

``terms()`` turns words into search terms: stop words out (stopwordsiso's Indonesian and English lists,
adjusted by ``data/stopwords.yaml``), then each word's Snowball stems in Indonesian and in English
(PyStemmer). Both stems, because a client may mix the languages within one message.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Any

import Stemmer
import stopwordsiso
import yaml

DATA = Path(__file__).resolve().parent / "data"

_APOSTROPHES = re.compile(r"['’`]")
_REDUPLICATION = re.compile(r"(?<=[a-z])2+(?![0-9])")  # anak2, cucu2nya, ngaku2
_TOKEN = re.compile(r"[a-z]+|[0-9]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")  # tolonggg, pleaseee


def data_file(name: str) -> Any:
    """A YAML file of ``data/``."""
    with open(DATA / name, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@functools.cache
def abbreviations() -> dict[str, tuple[str, ...]]:
    table = {}
    for line in (DATA / "abbreviations.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            short, expansion = line.split("\t")
            table[short.strip()] = tuple(expansion.split())
    return table


def words(text: str) -> list[str]:
    """The words of ``text`` in their plain form, chat abbreviations expanded."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _REDUPLICATION.sub("", _APOSTROPHES.sub("", text))
    table = abbreviations()
    out: list[str] = []
    for token in _TOKEN.findall(text):
        token = _STRETCHED.sub(r"\1", token)
        out.extend(table.get(token, (token,)))
    return out


@functools.cache
def stop_words() -> frozenset[str]:
    adjust = data_file("stopwords.yaml")
    listed = set(stopwordsiso.stopwords("id")) | set(stopwordsiso.stopwords("en"))
    return frozenset((listed - set(adjust["keep"])) | set(adjust["add"]))


class Stems:
    """Snowball stemmers for Indonesian and English. PyStemmer's objects are not thread-safe: one per thread."""

    def __init__(self) -> None:
        self._id = Stemmer.Stemmer("indonesian")
        self._en = Stemmer.Stemmer("english")

    def of(self, word: str) -> tuple[str, ...]:
        first, second = self._id.stemWord(word), self._en.stemWord(word)
        return (first,) if first == second else (first, second)


def content_words(plain: list[str]) -> list[str]:
    """``plain`` without stop words and single letters."""
    stop = stop_words()
    return [w for w in plain if len(w) > 1 and w not in stop]
