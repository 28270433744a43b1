"""(a) kill -9 a worker of each stage at random moments during a 5,000-message stream.

    .venv/bin/python bench/faults/kill_workers.py                     # the issue's size: about 1 minute
    .venv/bin/python bench/faults/kill_workers.py --messages 300 --rate 60 --kills-per-stage 1   # a smoke check

Streams one-message webhooks (every ``--image-every``-th an image, so the media stage has work)
at ``--rate`` per second into a stack on a private PostgreSQL and RabbitMQ. Meanwhile one thread
per stage (ingestor, core, media) kills that stage's worker main process with SIGKILL
``--kills-per-stage`` times at random moments (seed ``--seed``) and starts a new one at once, as a
supervisor would; its prefork children die with it. Expected: every message persisted exactly
once, each image's media row once, nothing dead-lettered. Reported: the ledger's figures, the
kill log (when, which pid, how long the new worker took to be ready), how many messages the broker
redelivered (``redeliveries``) and how many the stages found already done.
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import _run  # noqa: F401  (sets sys.path)
from _run import Progress, Run, fs, log_counts, persisted_all, services, slim, stack, wait_until


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--rate", type=float, default=100.0, help="webhooks per second (default 100)")
    p.add_argument("--image-every", type=int, default=10, help="every n-th message is an image (default 10)")
    p.add_argument("--kills-per-stage", type=int, default=5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=32, help="sender threads")
    p.add_argument("--settle-timeout", type=float, default=300.0,
                   help="seconds to wait after the stream for every row (default 300)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    run = Run("kill_workers", args)
    ledger = fs.Ledger()
    keys = [ledger.add(n, image=args.image_every > 0 and n % args.image_every == 0) for n in range(args.messages)]
    duration = args.messages / args.rate
    with services(run) as env, stack(run, env) as st, Progress(run, env["database_url"]) as progress:
        url = env["database_url"]
        run.event("stream starts", messages=args.messages, rate=args.rate, images=len(ledger.media))
        t_stream = run.now()
        supervisor, killers = fs.kill_stages_during(st, duration, args.kills_per_stage, random.Random(args.seed),
                                                    t0=time.monotonic())
        traffic = fs.send(st.url, ledger, keys, args.rate, threads=args.threads)
        run.event("stream done", **{k: v for k, v in traffic.summary().items() if k in ("posts", "non_200")})
        for thread in killers:
            thread.join(300)
        for kill in sorted(supervisor.kills, key=lambda k: k["at"]):
            run.events.append({"t": round(t_stream + kill["at"], 2), "event": "kill -9", **kill})
        run.event("kills done", kills=len(supervisor.kills))
        settled = wait_until(persisted_all(ledger, url), args.settle_timeout)
        run.event("all persisted" if settled else "gave up waiting for rows")
        time.sleep(3)  # let a late redelivery land before counting
        figs = fs.figures(ledger, url)
        run.results = {
            "figures": slim(figs), "traffic": traffic.summary(), "kills": sorted(supervisor.kills, key=lambda k: k["at"]),
            "logs": log_counts(st.log_dir), "progress": progress.samples,
            "dead_letters": figs["dead_letter_rows"],
            "seconds": {"stream": round(traffic.finished - traffic.started, 1),
                        "first_post_to_last_row": round(figs["last_row_at"] - traffic.summary()["first_post_at"], 1)
                        if figs["last_row_at"] else None},
        }
    kills = run.results["kills"]
    per_stage = {s: sum(1 for k in kills if k["stage"] == s) for s, _ in fs.STAGES}
    run.check("every webhook answered 200", figs["acknowledged"] == figs["sent"], f"{figs['acknowledged']}/{figs['sent']}")
    run.check("every message persisted", figs["persisted"] == figs["sent"], f"{figs['persisted']}/{figs['sent']}")
    run.check("0 lost", figs["lost"] == 0, figs["lost"])
    run.check("0 duplicated (messages and media)", figs["duplicated"] == 0, figs["duplicated"])
    run.check("each image's media row", figs["media_persisted"] == figs["media_expected"],
              f"{figs['media_persisted']}/{figs['media_expected']}")
    run.check("nothing dead-lettered", figs["dead_lettered"] == 0, figs["dead_lettered"])
    run.check("every stage killed as planned", all(n == args.kills_per_stage for n in per_stage.values()), per_stage)

    _run.ledger_table([("kill_workers", figs, run.results["seconds"]["first_post_to_last_row"])])
    print()
    _run.common.print_table(["t (s)", "stage", "pid killed", "new worker ready after (s)"],
                            [[f"{k['at']:.1f}", k["stage"], ",".join(map(str, k["pids"])), k["ready_after"]]
                             for k in kills])
    lc = run.results["logs"]
    print(f"\nredelivered by the broker after kills: {figs['redelivered_messages']} messages "
          f"({figs['redeliveries']} redeliveries, at most {figs['most_redeliveries_of_one_message']} of one); "
          f"found already done: core {lc['core_already_persisted']}, media {lc['media_already_recorded']}")
    return _run.finish(run)


if __name__ == "__main__":
    sys.exit(main())
