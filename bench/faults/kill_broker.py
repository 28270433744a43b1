"""(b) kill -9 the RabbitMQ node twice, and restart it, during 10,000 webhooks at 50/s.

    .venv/bin/python bench/faults/kill_broker.py                      # the issue's size: about 4 minutes
    .venv/bin/python bench/faults/kill_broker.py --messages 500 --kill-at 0.3,0.65 --down 3   # a smoke check

Streams one-message webhooks (every ``--image-every``-th an image) at ``--rate`` per second into a
stack on a private RabbitMQ node and PostgreSQL cluster. At each fraction of the stream's
duration in ``--kill-at`` the node's Erlang VM gets SIGKILL; ``--down`` seconds later it is started
again on the same ports and data (``PrivateRabbit.restart``). The sender behaves as Meta does:
every webhook not answered 200 (a 503 from the gateway, a refused connection, a timeout) is posted
again after a pause, 0.5 s doubling up to 5 s, until it is answered 200.

Expected: 0 lost (every webhook answered 200 has its row), 0 duplicate rows, nothing
dead-lettered, every stack process still running (workers and the recorder reconnect by
themselves). Reported: the ledger's figures, how many posts were answered other than 200 and how
many webhooks were posted again, the outage log (kill, start, node accepting connections again).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import _run  # noqa: F401  (sets sys.path)
from _run import Progress, Run, exited, fs, log_counts, persisted_all, services, slim, stack, wait_until


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--rate", type=float, default=50.0, help="webhooks per second (default 50, the issue's)")
    p.add_argument("--image-every", type=int, default=10, help="every n-th message is an image (default 10)")
    p.add_argument("--kill-at", default="0.3,0.65",
                   help="when to kill the node, as fractions of the stream's duration (default 0.3,0.65)")
    p.add_argument("--down", type=float, default=5.0,
                   help="seconds between the kill and the restart (default 5; the node then takes a few to boot)")
    p.add_argument("--threads", type=int, default=64, help="sender threads")
    p.add_argument("--settle-timeout", type=float, default=300.0)
    args = p.parse_args()
    args.kill_at = [float(x) for x in args.kill_at.split(",") if x]
    return args


def main() -> int:
    args = parse_args()
    run = Run("kill_broker", args)
    ledger = fs.Ledger()
    keys = [ledger.add(n, image=args.image_every > 0 and n % args.image_every == 0) for n in range(args.messages)]
    duration = args.messages / args.rate
    outages: list[dict] = []
    with services(run) as env, stack(run, env) as st, Progress(run, env["database_url"]) as progress:
        url, node = env["database_url"], env["rabbit"]

        def outage(n: int) -> None:
            entry = {"n": n}
            entry["killed_at"] = run.event("kill -9 RabbitMQ", pid=node.pid)["t"]
            node.kill()
            time.sleep(args.down)
            entry["restart_at"] = run.event("restarting RabbitMQ")["t"]
            node.restart()
            entry["back_at"] = run.event("RabbitMQ accepts connections again", pid=node.pid)["t"]
            entry["down_seconds"] = round(entry["back_at"] - entry["killed_at"], 2)
            outages.append(entry)

        run.event("stream starts", messages=args.messages, rate=args.rate, images=len(ledger.media))
        t0 = time.monotonic()

        def schedule() -> None:
            for n, fraction in enumerate(args.kill_at, 1):
                time.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))
                outage(n)

        killer = threading.Thread(target=schedule, name="broker-killer", daemon=True)
        killer.start()
        traffic = fs.send(st.url, ledger, keys, args.rate, threads=args.threads)
        summary = traffic.summary()
        run.event("stream done", posts=summary["posts"], non_200=summary["non_200"], gave_up=summary["gave_up"])
        killer.join(120)
        settled = wait_until(persisted_all(ledger, url), args.settle_timeout)
        run.event("all persisted" if settled else "gave up waiting for rows")
        time.sleep(3)
        figs = fs.figures(ledger, url)
        gone = exited(st)
        run.results = {
            "figures": slim(figs), "traffic": summary, "outages": outages, "logs": log_counts(st.log_dir),
            "exited_processes": gone, "progress": progress.samples, "dead_letters": figs["dead_letter_rows"],
            "seconds": {"stream": round(traffic.finished - traffic.started, 1),
                        "first_post_to_last_row": round(figs["last_row_at"] - summary["first_post_at"], 1)
                        if figs["last_row_at"] else None},
        }
    run.check("every webhook answered 200 in the end", figs["acknowledged"] == figs["sent"],
              f"{figs['acknowledged']}/{figs['sent']}")
    run.check("0 lost (every 200 persisted)", figs["lost"] == 0, figs["lost"])
    run.check("every message persisted", figs["persisted"] == figs["sent"], f"{figs['persisted']}/{figs['sent']}")
    run.check("0 duplicate rows", figs["duplicated"] == 0, figs["duplicated"])
    run.check("each image's media row", figs["media_persisted"] == figs["media_expected"],
              f"{figs['media_persisted']}/{figs['media_expected']}")
    run.check("nothing dead-lettered", figs["dead_lettered"] == 0, figs["dead_lettered"])
    run.check(f"the broker was killed {len(args.kill_at)} times and came back", len(outages) == len(args.kill_at),
              [o["down_seconds"] for o in outages])
    run.check("the outages were felt (posts answered non-200, re-posted)", summary["non_200"] > 0,
              f"{summary['non_200']} non-200 answers, {figs['reposted_webhooks']} webhooks re-posted")
    run.check("every stack process still running", not gone, gone)

    _run.ledger_table([("kill_broker", figs, run.results["seconds"]["first_post_to_last_row"])])
    print()
    _run.common.print_table(["outage", "killed at s", "restart at s", "accepting again at s", "down s"],
                            [[o["n"], o["killed_at"], o["restart_at"], o["back_at"], o["down_seconds"]]
                             for o in outages])
    print(f"\nposts: {summary['posts']} for {figs['sent']} webhooks; answered non-200: {summary['non_200']} "
          f"({', '.join(f'{k}: {v}' for k, v in summary['answers'].items() if k != '200') or 'none'}); "
          f"webhooks re-posted: {figs['reposted_webhooks']}; answered non-200 yet queued anyway "
          f"(persisted once all the same): {figs['unacknowledged_persisted']}")
    lc = run.results["logs"]
    print(f"workers: connection to broker lost {lc['broker_connection_lost']} times; messages handed back on a broker "
          f"error {lc['requeued_on_broker_error']}; redelivered {figs['redelivered_messages']}; found already done: "
          f"core {lc['core_already_persisted']}, media {lc['media_already_recorded']}")
    return _run.finish(run)


if __name__ == "__main__":
    sys.exit(main())
