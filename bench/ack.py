"""Ack benchmark: how fast the gateway answers Meta, and whether every 200 is a queued message.

Run from the repository root: ``.venv/bin/python bench/ack.py`` (``--help`` for the knobs).

It starts its own gunicorn (``gunicorn -c gunicorn.conf.py wsgi:app``, broker
``amqp://.../waflow_bench``) with no worker consuming
``wa.incoming.raw``, purges that queue, and POSTs one signed ~1 KB text-message
webhook:

a. at a fixed rate (default 300 req/s for 20 s): p50, p99, max latency and the
   status codes, twice: with wrk starting requests on an even schedule (open
   loop, one every 1/rate s), and with ``hey -q`` (its workers tick in step, so
   requests come in bursts of ``--hey-workers`` every workers/rate s; bursts
   raise the latency, which is why the even schedule is measured too);
b. closed loop with wrk at rising connection counts (~10 s each): req/s of 200s
   and non-200s. After each run the 200s are matched against the growth of the
   queue's depth: every 200 must be a queued message (``lost`` counts 200s that
   are not). More queued than 200s is reported as ``extra``: requests answered
   503 that the broker confirmed too late. The highest req/s of a run with no
   loss and no non-200 is the headline;
c. the same against ``bench/bare_app.py`` (a Flask view that only answers 200),
   under the same gunicorn config: the ceiling.

Prints a table and writes ``bench/out/ack-<timestamp>.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import _common as common
from _common import queues

RAW = queues.INCOMING_RAW


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=20, help="seconds of the fixed-rate run (default 20)")
    p.add_argument("--rate", type=int, default=300, help="fixed rate, requests/s (default 300)")
    p.add_argument("--fixed-tools", default="wrk,hey",
                   help="tools for the fixed-rate run: wrk (even schedule), hey (bursts) or both (default)")
    p.add_argument("--fixed-connections", type=int, default=32,
                   help="wrk connections for the fixed rate: it stays open loop while fewer are busy (default 32)")
    p.add_argument("--hey-workers", type=int, default=6,
                   help="hey workers for the fixed rate; each sends rate/workers req/s, all at once (default 6)")
    p.add_argument("--step-duration", type=int, default=10, help="seconds of each wrk run (default 10)")
    p.add_argument("--connections", default="4,8,16,32,64,128",
                   help="wrk connection counts, comma-separated (default 4,8,16,32,64,128)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: leave the cores to the server)")
    p.add_argument("--body-bytes", type=int, default=1024, help="webhook body size (default 1024)")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (default: a free one)")
    p.add_argument("--skip-bare", action="store_true", help="do not measure the bare Flask ceiling")
    p.add_argument("--keep-queue", action="store_true", help="leave the messages in wa.incoming.raw at the end")
    args = p.parse_args()
    args.fixed_tools = [t.strip() for t in args.fixed_tools.split(",") if t.strip()]
    if set(args.fixed_tools) - {"wrk", "hey"}:
        p.error("--fixed-tools takes wrk, hey or wrk,hey")
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    return args


# --- load generators -------------------------------------------------------------------------------------------


def run_hey(url: str, body_file: Path, signature: str, rate: int, workers: int, duration: int) -> dict[str, Any]:
    """Fixed rate with hey (``-q`` is per worker); latencies from its summary, in ms."""
    cmd = ["hey", "-z", f"{duration}s", "-c", str(workers), "-q", f"{rate / workers:g}", "-t", "10",
           "-m", "POST", "-T", "application/json", "-H", f"X-Hub-Signature-256: {signature}",
           "-D", str(body_file), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"^\s+(\d+)%+ in ([\d.]+) secs", out, re.M)}
    statuses = {int(c): int(n) for c, n in re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", out, re.M)}
    error_part = out.partition("Error distribution:")[2]
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", error_part, re.M))
    total = float(re.search(r"Total:\s+([\d.]+) secs", out).group(1))
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", out)
    ok = statuses.get(200, 0)
    return {
        "tool": "hey", "rate_target": rate, "workers": workers, "duration_s": total,
        "ok": ok, "other": sum(statuses.values()) - ok, "statuses": statuses, "errors": errors,
        "sent": sum(statuses.values()) + errors, "ok_per_s": ok / total if total else None,
        "latency_ms": {"p50": pct.get(50), "p90": pct.get(90), "p99": pct.get(99),
                       "max": float(slowest.group(1)) * 1000 if slowest else None},
    }


def run_wrk(url: str, body_file: Path, signature: str, connections: int, threads: int,
            duration: int, rate: float = 0) -> dict[str, Any]:
    """wrk, closed loop, or open loop at ``rate`` req/s on an even schedule.

    The script stops starting requests after ``duration`` and lets the last ones finish.
    """
    drain = 3  # seconds after stop_at: longer than the gateway's publish timeout
    threads = min(threads, connections)
    stop_at = time.time() + duration
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration + drain}s",
           "--timeout", "5s", "-s", str(common.BENCH_DIR / "wrk_post.lua"), url, "--",
           str(body_file), signature, f"{stop_at:.3f}", f"{rate / threads:g}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    found = re.search(r"^WAFLOW_WRK (.*)$", out, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = json.loads(found.group(1))
    window = r["last_reply"] - r["first_sent"]
    errors = sum(r["errors"].values())
    return {
        "tool": "wrk", "rate_target": rate or None, "connections": connections, "threads": threads,
        "duration_s": window,
        "sent": r["sent"], "ok": r["ok"], "other": r["other"],
        "statuses": {200: r["ok"], **{int(k): v for k, v in r["other_statuses"].items()}},
        "errors": errors, "error_kinds": r["errors"],
        # Requests still unanswered when wrk stopped (should be 0 thanks to the drain).
        "unanswered": r["sent"] - r["completed"],
        "ok_per_s": r["ok"] / window if window > 0 else None,
        "latency_ms": {k: r["latency_us"][k] / 1000 for k in ("p50", "p90", "p99", "max")},
    }


# --- one server, several runs ----------------------------------------------------------------------------------


def measured(check_queue: bool, run: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run(*args, **kwargs)`` one load, then (waflow only) match its 200s with the growth of wa.incoming.raw."""
    before = common.queue_depth(RAW) if check_queue else None
    result = run(*args, **kwargs)
    if check_queue:
        growth = common.settled_depth(RAW) - before
        result["queue_growth"] = growth
        # A 200 with no message behind it would be a lost webhook; the opposite is a 503 that got queued anyway.
        result["lost"] = max(0, result["ok"] - growth)
        result["extra"] = max(0, growth - result["ok"])
        unanswered = result.get("unanswered", 0)
        result["check"] = ("exact" if growth == result["ok"]
                           else "LOST" if growth < result["ok"]
                           else "extra (ok)" if result["extra"] <= result["other"] + result["errors"] + unanswered
                           else "extra (unexplained)")
    time.sleep(1)  # let the server settle between runs
    return result


def bench_server(name: str, app_module: str, args: argparse.Namespace, body_file: Path,
                 signature: str, log_dir: Path) -> dict[str, Any]:
    check_queue = name == "waflow"
    port = args.port or common.free_port()
    url = f"http://127.0.0.1:{port}{common.WEBHOOK_PATH}"
    load = (url, body_file, signature)
    with common.Processes(log_dir) as procs:
        procs.start(name, ["gunicorn", "-c", "gunicorn.conf.py", app_module], common.service_env(port))
        # waflow answers Meta's handshake; the bare app answers 405 to a GET, which says it is up too.
        common.wait_http(procs, name, common.handshake_url(port))
        fixed = []
        for tool in args.fixed_tools:
            print(f"[{name}] fixed rate {args.rate} req/s for {args.duration}s ({tool}) ...", flush=True)
            if tool == "wrk":
                fixed.append(measured(check_queue, run_wrk, *load, args.fixed_connections, args.wrk_threads,
                                      args.duration, rate=args.rate))
            else:
                fixed.append(measured(check_queue, run_hey, *load, args.rate, args.hey_workers, args.duration))
            procs.check_alive(name)
        steps = []
        for connections in args.connections:
            print(f"[{name}] closed loop, {connections} connections for {args.step_duration}s (wrk) ...", flush=True)
            steps.append(measured(check_queue, run_wrk, *load, connections, args.wrk_threads, args.step_duration))
            procs.check_alive(name)
    clean = [s for s in steps if s["other"] == 0 and s["errors"] == 0 and s.get("lost", 0) == 0]
    best = max(clean, key=lambda s: s["ok_per_s"] or 0, default=None)
    return {"app": app_module, "fixed_rate": fixed, "closed_loop": steps,
            "best": {"connections": best["connections"], "ok_per_s": best["ok_per_s"]} if best else None}


# --- report ----------------------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    rows = []
    for name, r in results["servers"].items():
        for run in [*r["fixed_rate"], *r["closed_loop"]]:
            if run["tool"] == "hey":
                label = f"{run['rate_target']}/s bursts (hey -c {run['workers']})"
            elif run["rate_target"]:
                label = f"{run['rate_target']}/s even (wrk -c {run['connections']})"
            else:
                label = f"closed loop (wrk -c {run['connections']})"
            lat = run["latency_ms"]
            rows.append([name, label, run["ok_per_s"], run["ok"], run["other"], run["errors"],
                         lat["p50"], lat["p99"], lat["max"], run.get("queue_growth", "-"), run.get("check", "-")])
    print()
    common.print_table(["app", "run", "200/s", "200s", "non-200", "sock err", "p50 ms", "p99 ms", "max ms",
                        "queue +", "check"], rows)
    print()
    for name, r in results["servers"].items():
        best = r["best"]
        print(f"{name}: highest sustained 200/s with no loss and no non-200: "
              + (f"{best['ok_per_s']:,.0f} at {best['connections']} connections" if best else "none"))
    if "waflow" in results["servers"] and "bare" in results["servers"]:
        w, b = results["servers"]["waflow"]["best"], results["servers"]["bare"]["best"]
        if w and b:
            print(f"waflow reaches {100 * w['ok_per_s'] / b['ok_per_s']:.0f}% of the bare Flask ceiling")


def main() -> None:
    args = parse_args()
    common.require_tools("wrk", "hey")
    started = common.stamp()
    log_dir = common.OUT_DIR / f"ack-{started}-logs"
    body = common.sized_text_webhook(args.body_bytes)
    log_dir.mkdir(parents=True, exist_ok=True)
    body_file = log_dir / "body.json"
    body_file.write_bytes(body)
    signature = common.sign(body)

    common.declare_queues()
    purged = common.purge([RAW])[RAW]
    print(f"purged {purged} message(s) from {RAW} on vhost waflow_bench; body {len(body)} bytes")

    results: dict[str, Any] = {
        "benchmark": "ack", "started": started, "machine": common.machine_info(),
        "config": {**vars(args), "body_bytes": len(body), "broker": common.BROKER_URL.split("@")[-1]},
        "servers": {},
    }
    try:
        results["servers"]["waflow"] = bench_server("waflow", "wsgi:app", args, body_file, signature, log_dir)
        if not args.skip_bare:
            results["servers"]["bare"] = bench_server("bare", "bench.bare_app:app", args, body_file, signature,
                                                      log_dir)
    finally:
        if not args.keep_queue:
            common.purge([RAW])
    print_report(results)
    path = common.write_json(f"ack-{started}", results)
    print(f"\nwrote {path.relative_to(common.ROOT)} (server logs in {log_dir.relative_to(common.ROOT)})")


if __name__ == "__main__":
    main()
