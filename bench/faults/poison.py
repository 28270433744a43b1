"""(d) 1% poison payloads in 10,000 webhooks: exactly those dead-lettered, throughput within 10% of clean.

    .venv/bin/python bench/faults/poison.py                           # the issue's size: about 2 minutes
    .venv/bin/python bench/faults/poison.py --messages 1000 --warmup 100   # a smoke check

One stack (private PostgreSQL and RabbitMQ), two runs back to back with the same settings, the
database emptied before each: **clean**, ``--messages`` text webhooks; **poisoned**, the same
number with ``--poison-percent`` (1) of them, at seeded random places, replaced by poison:
signed, so the gateway queues them, but not a webhook (``fault_scenarios.POISON``: JSON cut
short), which the ingestor must dead-letter at once and never retry. A warm-up of ``--warmup``
webhooks runs first and is thrown away. ``--rounds 2`` runs clean, poisoned, poisoned, clean and
averages each kind, to even out drift.

Webhooks go as fast as ``--client-threads`` (16) senders are answered (``--rate 0``, a closed loop,
like ``bench/e2e.py``'s single phase), so the rate is what the stack sustains, not what was asked.
Throughput is **messages persisted per second from the first POST to the last row** (the rows'
``created_at``), as in ``bench/e2e.py``. Expected: every poison dead-lettered, one row each, nothing
else dead-lettered, every other message persisted once, poisoned throughput at least 90% of clean.
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import _run  # noqa: F401  (sets sys.path)
from _run import Progress, Run, count, exited, fs, log_counts, persisted_all, services, slim, stack, support, wait_until


# Shorter runs last a few seconds each: their rates differ by 5 to 15% from run to run, poison or not.
JUDGED_FROM = 5000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000, help="webhooks per run (default 10000)")
    p.add_argument("--poison-percent", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=0.0, help="webhooks per second; 0 (default): as fast as answered")
    p.add_argument("--client-threads", type=int, default=16)
    p.add_argument("--warmup", type=int, default=500, help="webhooks sent first and thrown away (default 500)")
    p.add_argument("--rounds", type=int, default=1, help="1: clean, poisoned; 2: clean, poisoned, poisoned, clean")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--settle-timeout", type=float, default=300.0)
    return p.parse_args()


def one_run(run: Run, args, st, url: str, label: str, poison: int, rng: random.Random) -> dict:
    support.wipe(url)
    ledger = fs.Ledger()
    bad = set(rng.sample(range(args.messages), poison)) if poison else set()
    keys = [ledger.add(n, poison=n in bad) for n in range(args.messages)]
    before = log_counts(st.log_dir)
    run.event(f"{label} starts", messages=args.messages, poison=len(ledger.poison))
    traffic = fs.send(st.url, ledger, keys, args.rate, threads=args.client_threads)
    summary = traffic.summary()
    run.event(f"{label} posted", posts=summary["posts"], non_200=summary["non_200"],
              seconds=summary["posting_seconds"] and round(summary["posting_seconds"], 1))
    rows_done = persisted_all(ledger, url)
    ok = wait_until(lambda: rows_done() and count(url, "SELECT count(*) FROM dead_letters") >= len(ledger.poison),
                    args.settle_timeout, interval=0.25)
    run.event(f"{label} settled" if ok else f"{label}: gave up waiting")
    time.sleep(2)
    figs = fs.figures(ledger, url)
    after = log_counts(st.log_dir)
    first = summary["first_post_at"]
    seconds = figs["last_row_at"] - first if figs["last_row_at"] else None
    handled_until = max(x for x in (figs["last_row_at"], figs["last_dead_letter_at"]) if x) if figs["last_row_at"] else None
    return {
        "label": label, "figures": slim(figs), "traffic": summary,
        "seconds": round(seconds, 2) if seconds else None,
        "messages_per_s": round(figs["persisted"] / seconds, 1) if seconds else None,
        "webhooks_handled_per_s": round((figs["persisted"] + figs["poison_dead_lettered"]) / (handled_until - first), 1)
        if handled_until else None,
        "posts_per_s": round(summary["posts"] / summary["posting_seconds"], 1) if summary["posting_seconds"] else None,
        "logs": {k: after[k] - before[k] for k in after},
        "dead_letters": figs["dead_letter_rows"],
    }


def main() -> int:
    args = parse_args()
    run = Run("poison", args)
    poison = round(args.messages * args.poison_percent / 100)
    order = ["clean", "poisoned"] + (["poisoned", "clean"] if args.rounds >= 2 else [])
    for extra in range(2, args.rounds):
        order += ["clean", "poisoned"] if extra % 2 == 0 else ["poisoned", "clean"]
    rng = random.Random(args.seed)
    runs: list[dict] = []
    with services(run) as env, stack(run, env) as st, Progress(run, env["database_url"], interval=2.0) as progress:
        url = env["database_url"]
        if args.warmup:
            ledger = fs.Ledger()
            keys = [ledger.add(n) for n in range(args.warmup)]
            fs.send(st.url, ledger, keys, args.rate, threads=args.client_threads)
            wait_until(persisted_all(ledger, url), args.settle_timeout)
            run.event("warm-up done", messages=args.warmup)
        for i, kind in enumerate(order, 1):
            runs.append(one_run(run, args, st, url, f"{kind} #{i}", poison if kind == "poisoned" else 0, rng))
        gone = exited(st)
        run.results = {"runs": runs, "order": order, "exited_processes": gone, "progress": progress.samples}

    def mean(kind: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["label"].startswith(kind) and r[key]]
        return round(sum(values) / len(values), 1) if values else None

    clean, poisoned = mean("clean", "messages_per_s"), mean("poisoned", "messages_per_s")
    ratio = round(poisoned / clean, 3) if clean and poisoned else None
    run.results["throughput"] = {"clean_messages_per_s": clean, "poisoned_messages_per_s": poisoned, "ratio": ratio}
    for r in runs:
        f = r["figures"]
        label = r["label"]
        run.check(f"{label}: every webhook answered 200", f["acknowledged"] == f["sent"], f"{f['acknowledged']}/{f['sent']}")
        run.check(f"{label}: the rest persisted, 0 lost", f["persisted"] == f["sent"] - f["poison_sent"] and f["lost"] == 0,
                  f"{f['persisted']}/{f['sent'] - f['poison_sent']}, lost {f['lost']}")
        run.check(f"{label}: 0 duplicated", f["duplicated"] == 0, f["duplicated"])
        run.check(f"{label}: exactly the poison dead-lettered, one row each",
                  f["poison_dead_lettered"] == f["poison_sent"] and f["non_poison_dead_lettered"] == 0
                  and f["dead_lettered"] == f["poison_sent"] and f["dead_letter_rows_beyond_one"] == 0,
                  {k: f[k] for k in ("poison_sent", "poison_dead_lettered", "non_poison_dead_lettered", "dead_lettered")})
        run.check(f"{label}: poison never retried", r["logs"]["retries_scheduled"] == 0, r["logs"]["retries_scheduled"])
    if args.messages >= JUDGED_FROM:
        run.check("poisoned throughput within 10% of clean", ratio is not None and ratio >= 0.9,
                  f"{poisoned} vs {clean} msg/s: {ratio}")
    else:
        run.check("poisoned throughput within 10% of clean", True,
                  f"not judged: runs under {JUDGED_FROM:,} webhooks last seconds ({poisoned} vs {clean} msg/s: {ratio})")
    run.check("every stack process still running", not gone, gone)

    _run.ledger_table([(r["label"], r["figures"], r["seconds"]) for r in runs])
    print()
    _run.common.print_table(["run", "poison", "poison dead-lettered", "messages persisted", "seconds",
                             "msg/s persisted", "webhooks handled/s", "POSTs/s"],
                            [[r["label"], r["figures"]["poison_sent"], r["figures"]["poison_dead_lettered"],
                              r["figures"]["persisted"], r["seconds"], r["messages_per_s"], r["webhooks_handled_per_s"],
                              r["posts_per_s"]] for r in runs])
    print(f"\nthroughput, messages persisted per second from the first POST to the last row: clean {clean}, "
          f"poisoned {poisoned}; poisoned / clean = {ratio}")
    return _run.finish(run)


if __name__ == "__main__":
    sys.exit(main())
