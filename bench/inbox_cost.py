"""What keeping the inbox's columns costs core: its time per client message with them and without them.

Run from the repository root: ``.venv/bin/python bench/inbox_cost.py`` (``--help`` for the knobs).

Core's own function (``persist_event``), in this process, one transaction per message, on one connection at a
time, as the core worker runs it: ``--messages`` text messages (default 600) from 300 clients, in
``--rounds`` rounds (default 8) that alternate between core as it is and core with the inbox's update
(``conversation_state.inbound``: one more statement on PostgreSQL) and the urgency check (the firm's urgency
words on the message's text) replaced by nothing. The database is emptied before each round. Prints each
round's milliseconds per message and the medians; on a shared machine only the medians say anything.

By default on the benchmark database (``waflow_bench``, emptied); ``--database-url`` points it at another.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import _common as common

sys.path.insert(0, str(common.ROOT / "tests"))

import drafts_support  # noqa: E402  (tests/: the webhook builders the draft tests use)
from support import migrate, wipe  # noqa: E402
from waflow import config, core  # noqa: E402
from waflow.db import transaction  # noqa: E402

TEXTS = ("Selamat siang pak, mau tanya soal kontrak kerja saya yang diputus sepihak", "halo",
         "besok sidang jam berapa ya pak?", "sy mau konsultasi soal warisan tanah di bogor, kira2 biayanya brp?")


def one_round(url: str, label: str, messages: int) -> float:
    wipe(url)
    events = [drafts_support.events_of(drafts_support.webhook(drafts_support.message(
        f"wamid.{label}.{i}", random.choice(TEXTS), wa_id=f"6281{i % 300:08d}")))[0] for i in range(messages)]
    started = time.perf_counter()
    for event in events:
        with transaction(url) as conn:
            core.persist_event(conn, event, [], [])
    return (time.perf_counter() - started) / messages * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=common.DATABASE_URL)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    url = config.load({"DATABASE_URL": args.database_url}).database_url
    migrate(url, fresh=True)
    kept = (core.conversation_state.inbound, core.is_urgent)
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for number in range(args.rounds):
        core.conversation_state.inbound, core.is_urgent = kept
        timings["with"].append(one_round(url, f"w{number}", args.messages))
        core.conversation_state.inbound, core.is_urgent = (lambda *a, **k: None), (lambda words: False)
        timings["without"].append(one_round(url, f"o{number}", args.messages))
    core.conversation_state.inbound, core.is_urgent = kept
    for name, values in timings.items():
        print(f"{name:>8} the inbox's columns: {', '.join(f'{v:.2f}' for v in values)} ms/message; "
              f"median {statistics.median(values):.2f}")


if __name__ == "__main__":
    main()
