"""The offline drafter against the evaluation set: retrieval hit@3, language, urgency, latency.

    .venv/bin/python bench/drafting_eval.py                 # both halves, figures for docs/benchmarks.md
    .venv/bin/python bench/drafting_eval.py --misses        # also list the dev half's misses (tuning)

Runs the real drafter (``OfflineDrafter.analyse``) on each message as a one-message conversation, with no
history and no contact name. Misses are listed for the dev half only: the held-out half is for reporting,
never for tuning (bench/drafting/README.md). Writes bench/out/drafting-eval-<timestamp>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from waflow.drafting.knowledge import SAMPLE_DIR, KnowledgeBase  # noqa: E402
from waflow.drafting.offline import OfflineDrafter  # noqa: E402
from waflow.drafting.types import ClientMessage, DraftInput  # noqa: E402

SETS = {"heldout": ROOT / "bench/drafting/eval-heldout.jsonl", "dev": ROOT / "bench/drafting/eval-dev.jsonl"}
OUT_DIR = ROOT / "bench/out"


def request_for(row: dict, conversation_id: int = 1) -> DraftInput:
    message = ClientMessage(wamid=f"wamid.eval-{row['id']}", type="text", text=row["text"],
                            sent_at=datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc))
    return DraftInput(conversation_id=conversation_id, messages=(message,))


def evaluate(drafter: OfflineDrafter, rows: list[dict]) -> tuple[dict, list[dict]]:
    hits = language_right = true_urgent = flagged = flagged_right = 0
    misses = []
    for row in rows:
        analysis = drafter.analyse(request_for(row))
        top = [hit.entry.id for hit in analysis.retrieved[:3]]
        hit = bool(set(top) & set(row["entries"]))
        urgent = "urgent" in analysis.flags
        hits += hit
        language_right += analysis.language == row["language"]
        true_urgent += row["urgent"]
        flagged += urgent
        flagged_right += urgent and row["urgent"]
        if not hit or analysis.language != row["language"] or urgent != row["urgent"]:
            misses.append({"id": row["id"], "text": row["text"], "want": row["entries"], "got": top,
                           "scores": [round(h.score, 2) for h in analysis.retrieved[:3]],
                           "language": [row["language"], analysis.language], "urgent": [row["urgent"], urgent]})
    n = len(rows)
    figures = {
        "messages": n, "hit_at_3": hits / n, "language": language_right / n,
        "urgent_recall": flagged_right / true_urgent if true_urgent else None,
        "urgent_precision": flagged_right / flagged if flagged else None,
        "urgent_labelled": true_urgent, "urgent_flagged": flagged,
    }
    return figures, misses


def latency(drafter: OfflineDrafter, rows: list[dict], rounds: int) -> dict:
    """Milliseconds per full draft (analysis and text), index already built."""
    drafter.draft(request_for(rows[0]))
    times = []
    for _ in range(rounds):
        for row in rows:
            started = time.perf_counter()
            drafter.draft(request_for(row))
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"drafts": len(times), "p50_ms": statistics.median(times),
            "p95_ms": times[int(0.95 * (len(times) - 1))], "max_ms": times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knowledge", type=Path, default=SAMPLE_DIR, help="knowledge folder (default: the sample)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over both halves for the latency figure")
    parser.add_argument("--misses", action="store_true", help="list the dev half's misses")
    args = parser.parse_args()

    drafter = OfflineDrafter(KnowledgeBase(args.knowledge))
    started = time.perf_counter()
    drafter.index()
    build_ms = (time.perf_counter() - started) * 1000
    results: dict = {"knowledge": str(args.knowledge), "index_build_ms": build_ms}
    all_rows = []
    for name, path in SETS.items():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        all_rows += rows
        figures, misses = evaluate(drafter, rows)
        figures["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        results[name] = figures
        if name == "dev":
            results["dev_misses"] = misses
    results["latency"] = latency(drafter, all_rows, args.rounds)

    print(f"{'half':8} {'n':>3} {'hit@3':>7} {'language':>9} {'urgent recall':>14} {'urgent precision':>17}")
    for name in SETS:
        f = results[name]
        print(f"{name:8} {f['messages']:>3} {f['hit_at_3']:>7.1%} {f['language']:>9.1%} "
              f"{f['urgent_recall']:>14.1%} {f['urgent_precision']:>17.1%}")
    lat = results["latency"]
    print(f"latency: {lat['drafts']} drafts, p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms, "
          f"max {lat['max_ms']:.2f} ms; index built in {build_ms:.0f} ms")
    if args.misses:
        for miss in results["dev_misses"]:
            print(json.dumps(miss, ensure_ascii=False))
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"drafting-eval-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
