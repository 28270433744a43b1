"""(c) PostgreSQL unreachable for 10 s during a stream, then past the retry budget, then replay.

    .venv/bin/python bench/faults/db_outage.py                        # the default sizes: about 3 minutes
    .venv/bin/python bench/faults/db_outage.py --messages 600 --outage-at 2 --past-messages 100   # a smoke check

Two phases on one stack (private PostgreSQL and RabbitMQ), each with its own ledger, one-message
webhooks at ``--rate`` per second, every ``--image-every``-th an image:

1. **ride-out**: ``--messages`` webhooks; ``--outage-at`` seconds into the stream the cluster is
   stopped (``immediate``: connections are refused at once) and started again ``--outage`` (10) s
   later. Expected: processing resumes by itself, every message persisted once, nothing
   dead-lettered (the retry policy waits 3, 6 and 12 s, x up to 1.25: 21 to 26.25 s in all).
2. **past the budget**: the cluster is stopped, ``--past-messages`` webhooks are streamed into the
   outage, and it stays down ``--past-outage`` s (default: the longest retry budget, 26.25 s, plus
   the stream's duration, plus ``--past-margin``, 30 s), so every one of them spends its three
   retries while it is down. Expected: they land in the dead-letter queue, recorded by the
   recorder once the database is back, one row each; ``flask --app wsgi dlq replay --all --yes``
   then persists every one, once.

   The margin is wide because retries run late on a busy machine: the policy's waits are
   minimums, and two ingestor processes meeting 100 new webhooks a second plus three retries of
   each, on 2 cores shared with a test suite, fell behind (measured: 21.6 to 35.3 s from the first
   failure to the last; on a quiet machine 21.3 to 26.2 s, the policy's 21 to 26.25). A webhook
   whose last attempt comes after the database is back is simply persisted; the run reports how
   many did (``persisted before replay``) and the measured spans.

Reported per phase: the ledger's figures, the outage's times, when rows flowed again, retries
logged, dead letters (when recorded, one per webhook), the replay's output.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import _run  # noqa: F401  (sets sys.path)
from _run import Progress, Run, count, exited, fs, log_counts, persisted_all, services, slim, stack, wait_until

from waflow import tasks

BUDGET = [sum(w[i] for w in tasks.retry_countdowns()) for i in (0, 1)]  # shortest, longest total wait


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=6000, help="phase 1 webhooks (default 6000)")
    p.add_argument("--rate", type=float, default=100.0, help="webhooks per second (default 100)")
    p.add_argument("--image-every", type=int, default=10)
    p.add_argument("--outage-at", type=float, default=20.0, help="phase 1: seconds into the stream (default 20)")
    p.add_argument("--outage", type=float, default=10.0, help="phase 1: seconds unreachable (default 10)")
    p.add_argument("--past-messages", type=int, default=1500, help="phase 2 webhooks (default 1500)")
    p.add_argument("--past-outage", type=float, default=None,
                   help="phase 2: seconds unreachable (default: longest retry budget + stream + --past-margin)")
    p.add_argument("--past-margin", type=float, default=30.0, help="see --past-outage (default 30)")
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--settle-timeout", type=float, default=300.0)
    args = p.parse_args()
    if args.past_outage is None:
        args.past_outage = round(BUDGET[1] + args.past_messages / args.rate + args.past_margin, 1)
    return args


def main() -> int:
    args = parse_args()
    run = Run("db_outage", args)
    run.results = {"retry_budget_seconds": {"shortest": BUDGET[0], "longest": BUDGET[1]}}
    with services(run) as env, stack(run, env) as st, Progress(run, env["database_url"]) as progress:
        pg, url = env["pg"], env["database_url"]
        run._progress = progress  # type: ignore[attr-defined]
        one = ride_out(run, args, st, pg, url)
        two = past_budget(run, args, st, pg, url, others=set(one["ledger"].bodies))
        run.results["exited_processes"] = gone = exited(st)
        run.results["logs"] = log_counts(st.log_dir)
        run.results["progress"] = progress.samples
    f1, f2 = one["figures"], two["figures"]
    run.check("1: every webhook answered 200", f1["acknowledged"] == f1["sent"], f"{f1['acknowledged']}/{f1['sent']}")
    run.check("1: every message persisted, 0 lost", f1["persisted"] == f1["sent"] and f1["lost"] == 0,
              f"{f1['persisted']}/{f1['sent']}, lost {f1['lost']}")
    run.check("1: 0 duplicated", f1["duplicated"] == 0, f1["duplicated"])
    run.check("1: each image's media row", f1["media_persisted"] == f1["media_expected"],
              f"{f1['media_persisted']}/{f1['media_expected']}")
    run.check("1: nothing dead-lettered", one["dead_letters"] == 0, one["dead_letters"])
    run.check("1: the outage was met (retries logged)", one["retries"] > 0, one["retries"])
    run.check("1: processing resumed by itself", one["rows_flowing_again_at"] is not None,
              f"rows flowing again {one['resumed_after_outage_s']} s after the database was back")
    run.check("2: every webhook answered 200", f2["acknowledged"] == f2["sent"], f"{f2['acknowledged']}/{f2['sent']}")
    run.check("2: each webhook dead-lettered or persisted by its own retries, never both, none lost",
              two["dead_before_replay"] + two["persisted_before_replay"] == f2["acknowledged"]
              and two["dead_and_persisted_before_replay"] == 0 and two["lost_before_replay"] == 0,
              f"dead {two['dead_before_replay']} + persisted {two['persisted_before_replay']} of {f2['acknowledged']}")
    run.check("2: every dead letter failed while the database was down", two["dead_before_replay"] > 0
              and two["failed_after_back"] == 0, f"{two['failed_after_back']} failed after it was back")
    run.check("2: every webhook of the outage dead-lettered (each spent its budget inside it)",
              two["dead_before_replay"] == f2["sent"],
              f"{two['dead_before_replay']}/{f2['sent']}; first failure to dead letter: {two['retry_spans']}")
    run.check("2: one dead letter per webhook", f2["dead_letter_rows_beyond_one"] == 0
              and f2["dead_letters_without_a_wamid"] == 0,
              {k: f2[k] for k in ("dead_lettered", "dead_letter_rows_beyond_one", "dead_letters_without_a_wamid")})
    run.check("2: recorded only once the database was back", two["first_recorded_after_back_s"] is not None
              and two["first_recorded_after_back_s"] >= 0, two["first_recorded_after_back_s"])
    run.check("2: replay exited 0 and replayed each", two["replay"]["code"] == 0
              and two["replay"]["replayed"] == two["dead_before_replay"],
              f"code {two['replay']['code']}, replayed {two['replay']['replayed']}")
    run.check("2: after replay every message persisted, once", f2["persisted"] == f2["sent"] and f2["lost"] == 0
              and f2["duplicated"] == 0, f"{f2['persisted']}/{f2['sent']}, lost {f2['lost']}, dup {f2['duplicated']}")
    run.check("2: each image's media row", f2["media_persisted"] == f2["media_expected"],
              f"{f2['media_persisted']}/{f2['media_expected']}")
    run.check("no foreign rows in either phase", f1["foreign_rows"] == 0 and f2["foreign_rows"] == 0)
    run.check("every stack process still running", not gone, gone)

    _run.ledger_table([("1: 10-s outage", f1, one["seconds"]), ("2: past the budget, after replay", f2, two["seconds"])])
    print()
    _run.common.print_table(
        ["phase", "down at s", "back at s", "down s", "retries logged", "dead-lettered", "recorded after back s",
         "rows flowing again after back s"],
        [["1", one["outage"]["down_at"], one["outage"]["back_at"], one["outage"]["down_seconds"], one["retries"],
          one["dead_letters"], "-", one["resumed_after_outage_s"]],
         ["2", two["outage"]["down_at"], two["outage"]["back_at"], two["outage"]["down_seconds"], two["retries"],
          two["dead_before_replay"], two["first_recorded_after_back_s"], "-"]])
    sp = two["retry_spans"]
    print(f"\nphase 2 retries: first failure to dead letter took {sp['min']} to {sp['max']} s (median {sp['median']}) "
          f"for {sp['count']} webhooks; the policy's waits add up to {BUDGET[0]:g} to {BUDGET[1]:g} s")
    print(f"phase 2: {two['dead_before_replay']} of {f2['sent']} webhooks dead-lettered (one row each: "
          f"{f2['dead_lettered']} rows), {two['persisted_before_replay']} persisted before replay; "
          f"replay: {two['replay']['replayed']} replayed in {two['replay']['seconds']} s, all persisted "
          f"{two['persisted_after_replay_s']} s after the replay")
    run.results["phase_1"] = {k: v for k, v in one.items() if k != "ledger"}
    run.results["phase_2"] = {k: v for k, v in two.items() if k != "ledger"}
    return _run.finish(run)


def _outage(run: Run, pg, seconds: float, label: str, entry: dict) -> None:
    """Stop the cluster (immediate), start it again ``seconds`` after; fill ``entry`` as it goes."""
    pg.stop("immediate")
    down = time.monotonic()
    entry["down_at"] = run.event(f"{label}: PostgreSQL stopped (immediate)")["t"]
    entry["down_wall"] = time.time()
    time.sleep(max(0.0, seconds - (time.monotonic() - down)))
    pg.start()
    entry["back_at"] = run.event(f"{label}: PostgreSQL accepting connections again")["t"]
    entry["back_wall"] = time.time()
    entry["down_seconds"] = round(entry["back_at"] - entry["down_at"], 2)


def ride_out(run: Run, args, st, pg, url: str) -> dict:
    ledger = fs.Ledger()
    keys = [ledger.add(n, image=args.image_every > 0 and n % args.image_every == 0) for n in range(args.messages)]
    retries_before = log_counts(st.log_dir)["retries_scheduled"]
    outage: dict = {}
    run.event("phase 1 stream starts", messages=args.messages, rate=args.rate, images=len(ledger.media))
    t0 = time.monotonic()

    def down() -> None:
        time.sleep(max(0.0, t0 + args.outage_at - time.monotonic()))
        _outage(run, pg, args.outage, "phase 1", outage)

    thread = threading.Thread(target=down, daemon=True)
    thread.start()
    traffic = fs.send(st.url, ledger, keys, args.rate, threads=args.threads)
    run.event("phase 1 stream done", posts=sum(traffic.statuses.values()))
    thread.join(120)
    settled = wait_until(persisted_all(ledger, url), args.settle_timeout)
    run.event("phase 1: all persisted" if settled else "phase 1: gave up waiting for rows")
    time.sleep(3)
    figs = fs.figures(ledger, url)
    summary = traffic.summary()
    # Rows flowing again: the first sample after the database was back that shows more rows than before.
    before = [c for t, c in run_progress(run) if t <= outage["down_at"] and c is not None]
    after = [(t, c) for t, c in run_progress(run) if t >= outage["back_at"] and c is not None]
    flowing = next((t for t, c in after if before and c > before[-1]), None)
    return {
        "ledger": ledger, "figures": slim(figs), "traffic": summary, "outage": outage,
        "retries": log_counts(st.log_dir)["retries_scheduled"] - retries_before,
        "dead_letters": figs["dead_lettered"],
        "rows_flowing_again_at": flowing,
        "resumed_after_outage_s": round(flowing - outage["back_at"], 2) if flowing is not None else None,
        "all_persisted_after_back_s": round(figs["last_row_at"] - outage["back_wall"], 1) if figs["last_row_at"] else None,
        "seconds": round(figs["last_row_at"] - summary["first_post_at"], 1) if figs["last_row_at"] else None,
    }


def run_progress(run: Run) -> list:
    progress = getattr(run, "_progress", None)
    return progress.samples if progress is not None else []


def past_budget(run: Run, args, st, pg, url: str, others: set[str]) -> dict:
    ledger = fs.Ledger()
    keys = [ledger.add(10_000 + n, image=args.image_every > 0 and n % args.image_every == 0)
            for n in range(args.past_messages)]
    retries_before = log_counts(st.log_dir)["retries_scheduled"]
    outage: dict = {}
    thread = threading.Thread(target=_outage, args=(run, pg, args.past_outage, "phase 2", outage), daemon=True)
    thread.start()
    wait_until(lambda: "down_at" in outage, 60, interval=0.05)
    time.sleep(1.0)
    run.event("phase 2 stream starts (into the outage)", messages=args.past_messages, rate=args.rate,
              outage=args.past_outage)
    traffic = fs.send(st.url, ledger, keys, args.rate, threads=args.threads)
    run.event("phase 2 stream done", posts=sum(traffic.statuses.values()))
    thread.join(args.past_outage + 120)

    # Every acknowledged webhook ends up persisted (its retries outlived the outage) or dead-lettered;
    # wait for that, and for the dead-letter count to hold still.
    state = {"last": -1, "since": time.monotonic()}

    def settled() -> bool:
        figs = fs.figures(ledger, url, others=others)
        accounted = figs["persisted"] + figs["dead_lettered_wamids"]
        if figs["dead_lettered"] != state["last"]:
            state["last"], state["since"] = figs["dead_lettered"], time.monotonic()
        return accounted >= figs["acknowledged"] and time.monotonic() - state["since"] >= 5

    ok = wait_until(settled, args.settle_timeout, interval=1.0)
    before = fs.figures(ledger, url, others=others)
    recorded = [d["recorded_at"] for d in before["dead_letter_rows"]]
    dead_keys = set(before["dead_lettered_keys"])
    both = len(persisted_keys(url, dead_keys))  # dead-lettered, yet persisted before any replay
    spans = retry_spans(st.log_dir / "ingestor.log", outage["down_wall"], outage["back_wall"])
    run.event("phase 2: dead letters recorded" if ok else "phase 2: gave up waiting for dead letters",
              dead_letters=before["dead_lettered"], persisted=before["persisted"])

    flask = str(Path(sys.executable).parent / "flask")
    started = time.monotonic()
    done = subprocess.run([flask, "--app", "wsgi", "dlq", "replay", "--all", "--yes", "--by", "bench-faults"],
                          cwd=_run.ROOT, env=st.env, capture_output=True, text=True, timeout=600)
    replay = {"code": done.returncode, "replayed": done.stdout.count(" replayed to "),
              "seconds": round(time.monotonic() - started, 1), "stderr_tail": done.stderr[-2000:]}
    run.event("phase 2: replay done", code=done.returncode, replayed=replay["replayed"])
    replay_done = time.time()
    settled_rows = wait_until(persisted_all(ledger, url), args.settle_timeout)
    run.event("phase 2: all persisted after replay" if settled_rows else "phase 2: gave up waiting for rows")
    time.sleep(3)
    figs = fs.figures(ledger, url, others=others)
    summary = traffic.summary()
    return {
        "ledger": ledger, "figures": slim(figs), "traffic": summary, "outage": outage,
        "retries": log_counts(st.log_dir)["retries_scheduled"] - retries_before,
        "dead_before_replay": before["dead_lettered_wamids"], "persisted_before_replay": before["persisted"],
        "dead_and_persisted_before_replay": both,
        "lost_before_replay": before["lost"] - len(dead_keys & ledger.acked),
        # From the log: dead_letters.last_failed_at is when the recorder stored the broker's copy.
        "failed_after_back": spans["failed_after"],
        "retry_spans": spans,
        "dead_letter_rows_before_replay": before["dead_lettered"],
        "first_recorded_after_back_s": round(min(recorded) - outage["back_wall"], 2) if recorded else None,
        "last_recorded_after_back_s": round(max(recorded) - outage["back_wall"], 2) if recorded else None,
        "replay": replay, "replayed_rows": count(url, "SELECT count(*) FROM dead_letters WHERE status = 'replayed'"),
        "persisted_after_replay_s": round(figs["last_row_at"] - replay_done, 1) if figs["last_row_at"] else None,
        "seconds": round(figs["last_row_at"] - summary["first_post_at"], 1) if figs["last_row_at"] else None,
        "dead_letters": figs["dead_letter_rows"],
    }


def persisted_keys(url: str, keys: set[str]) -> set[str]:
    """Which of ``keys`` have a message row now."""
    from sqlalchemy import bindparam, text

    from waflow.db import get_engine

    found: set[str] = set()
    ordered = sorted(keys)
    with get_engine(url).connect() as conn:
        for i in range(0, len(ordered), 2000):
            found |= set(conn.execute(text("SELECT wamid FROM messages WHERE wamid IN :w")
                                      .bindparams(bindparam("w", expanding=True)), {"w": ordered[i:i + 2000]}).scalars())
    return found


RETRY_LINE = re.compile(r"^\[(\S+ \S+): \w+/[^\]]+\] waflow\.ingestor\.ingest_raw\[([0-9a-f-]{36})\] "
                        r"(retry 1 of|failed for good)")


def retry_spans(log: Path, since: float, back: float) -> dict:
    """From the ingestor's log: for each task that failed for good after ``since`` (wall time), the
    seconds from its first failure ("retry 1 of 3") to its last ("failed for good"); and how many
    failed for good after ``back``."""
    first: dict[str, float] = {}
    spans = []
    after = 0
    for line in log.read_text(errors="replace").splitlines():
        m = RETRY_LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at < since:
            continue
        if m.group(3).startswith("retry"):
            first.setdefault(m.group(2), at)
        elif m.group(2) in first:
            spans.append(at - first[m.group(2)])
            after += at > back
    spans.sort()
    if not spans:
        return {"count": 0, "min": None, "median": None, "max": None, "failed_after": after}
    return {"count": len(spans), "min": round(spans[0], 1), "median": round(spans[len(spans) // 2], 1),
            "max": round(spans[-1], 1), "failed_after": after}


if __name__ == "__main__":
    sys.exit(main())
