"""Send benchmark: the sender line against the Meta simulator, at Meta's per-number ceiling.

Run from the repository root: ``.venv/bin/python bench/send.py`` (``--help`` for the knobs).
Needs the benchmark vhost and database (bench/README.md), Redis on 127.0.0.1:6379
(database 1 is the benchmark's), and matplotlib for the plot
(``.venv/bin/pip install -r bench/requirements.txt``).

pacing     1,000 template sends queued before the senders start (the backlog
           case), drained by 1, 2 and 4 copies of the Procfile's ``sender``
           line at 80/s, and by 1 and 2 senders on stock Celery's consumer (the
           baseline; it runs for at most ``--stock-timeout`` s). Then 4 senders
           at 400/s, cold and then "warm" (``ours:4:400:warm``): the senders
           run, consuming only the reply lane, while the broadcast is queued;
           then Celery's ``add_consumer`` control command (Flower sends it too)
           gives all of them its queue at once. Last, one sender at 400/s: what
           a single sender process carries. Per run, from the
           simulator's record of accepted sends:
           total time from the first to the last accepted send, mean rate, the
           most sends in any 1-s window, and the simulator's count of 130429.
           A PNG of sends per 100 ms goes beside the run's logs (``--plot`` to
           write it elsewhere, e.g. docs/send-pacing.png for the docs' figure).
isolation  web, ingestor, core, media and 2 senders: inbound webhook-to-row
           latency at ``--inbound-rate`` for ``--latency-duration`` s, idle and
           then while a 10,000-recipient broadcast drains; during it, a reply is
           commanded and timed from its command to Meta's acceptance.

Writes ``bench/out/send-<timestamp>.json`` (and, per pacing run, the accepted sends' times in
its log folder, ``times-<consumer>-<senders>-<rate>.json``) and prints tables.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

import _common as common
import e2e

REDIS_URL = "redis://127.0.0.1:6379/1"
SEND_QUEUES = (common.queues.OUTGOING_COMMAND, common.queues.OUTGOING_BROADCAST)
# The plot docs/benchmarks.md shows: written there only when asked (--plot), so that a run leaves the
# working tree as it was.
DOCS_PLOT = common.ROOT / "docs" / "send-pacing.png"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default="pacing,isolation", help="comma-separated: pacing, isolation")
    p.add_argument("--sends", type=int, default=1000, help="queued sends per pacing run")
    p.add_argument("--configs",
                   default="ours:1:80,ours:2:80,ours:4:80,stock:1:80,stock:2:80,ours:4:400,ours:4:400:warm,ours:1:400",
                   help="pacing runs as consumer:senders:rate[:cold|warm] (cold: the senders start on the backlog)")
    p.add_argument("--rounds", type=int, default=1,
                   help="warm configs: queue and release --sends this many times to the same senders")
    p.add_argument("--stock-timeout", type=float, default=60, help="seconds a stock-consumer run may take")
    p.add_argument("--broadcast", type=int, default=10_000, help="recipients of the isolation broadcast")
    p.add_argument("--inbound-rate", type=float, default=20, help="inbound messages/s in the isolation phase")
    p.add_argument("--latency-duration", type=float, default=30, help="seconds of each inbound latency measurement")
    p.add_argument("--sender-concurrency", type=int, default=None, help="threads per sender (default: Procfile's)")
    p.add_argument("--simulator-threads", type=int, default=None, help="the simulator's threads (default: its own)")
    p.add_argument("--meta-latency", type=float, default=0.0,
                   help="pacing runs: seconds the simulator takes to answer each send (a delay fault on every send)")
    p.add_argument("--plot", default=None,
                   help=f"where the pacing plot goes (default: beside the run's logs; the docs' figure: {DOCS_PLOT.relative_to(common.ROOT)})")
    p.add_argument("--simulator-nice", type=int, default=0,
                   help="run the simulator (Meta, which in production runs on Meta's machines) at this niceness")
    return p.parse_args()


class Bench:
    """The simulator, the database and the processes of one benchmark run."""

    def __init__(self, procs: common.Processes, db: e2e.Database, out: Path) -> None:
        self.procs, self.db, self.out = procs, db, out
        self.sim_port = common.free_port()
        self.port = common.free_port()
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.env = common.service_env(self.port, REDIS_URL=REDIS_URL, WHATSAPP_API_URL=f"{self.sim}/v25.0",
                                      WHATSAPP_WABA_ID="100000000000002", SIMULATOR_PORT=str(self.sim_port),
                                      SIMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{self.port}/webhooks/whatsapp")

    def start_simulator(self, nice: int = 0, threads: int | None = None) -> None:
        prefix = ["nice", "-n", str(nice)] if nice else []
        options = ["--threads", str(threads)] if threads else []
        self.procs.start("meta", [*prefix, sys.executable, "-m", "waflow.simulator", "--no-status-webhooks",
                                  "--port", str(self.sim_port), *options], self.env)
        common.wait_http(self.procs, "meta", f"{self.sim}/_sim/health")

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, f"{self.sim}/_sim/{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def accepted(self, number: str) -> list[float]:
        times, after = [], 0
        while True:
            page = requests.get(f"{self.sim}/_sim/sends", timeout=30, params={
                "phone_number_id": number, "brief": 1, "after": after, "limit": 50000}).json()
            times += [s["accepted_at"] for s in page["sends"]]
            if not page["sends"]:
                return sorted(times)
            after = page["next_after"]

    def flask(self, env: dict[str, str], *args: str) -> str:
        done = subprocess.run([str(common.VENV_BIN / "flask"), "--app", "wsgi", *args], cwd=common.ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def broadcast(self, env: dict[str, str], recipients: int, name: str) -> None:
        path = self.out / f"{name}.csv"
        path.write_text("".join(f"3180{n:07d},{n}\n" for n in range(recipients)))
        self.flask(env, "broadcast", "case_update", str(path), "--name", name, "--no-wait")

    def start_senders(self, env: dict[str, str], count: int, stock: bool, concurrency: int | None,
                      replies_only: bool = False) -> list[str]:
        """Start ``count`` copies of the Procfile's sender line (on stock Celery's consumer if ``stock``;
        consuming the reply lane alone if ``replies_only``); return their node names."""
        assignments, command = common.procfile_entry("sender")
        if replies_only:
            lanes = f"-Q {common.queues.OUTGOING_COMMAND},{common.queues.OUTGOING_BROADCAST} "
            assert lanes in command, command
            command = command.replace(lanes, f"-Q {common.queues.OUTGOING_COMMAND} ")
        if stock:
            command = command.replace("celery -A waflow", f"{sys.executable} {common.BENCH_DIR / 'stock_sender.py'}")
        names = []
        for n in range(count):
            name = f"sender{n}-{uuid.uuid4().hex[:4]}"
            line = command.replace("-n sender@%h", f"-n {name}@%h")
            if concurrency:
                line += f" -c {concurrency}"
            self.procs.start(name, ["bash", "-c", f"exec {line}"], {**env, **assignments})
            names.append(name)
        for name in names:
            common.wait_log(self.procs, name, r"@\S+ ready\.")
        return names

    def release_broadcast_lane(self, names: list[str]) -> float:
        """Have the running senders consume the broadcast queue too, all at once (Celery's ``add_consumer``
        control command, one fanout message); return when it was sent."""
        sent = time.time()
        self._control("add_consumer", names)
        return sent

    def hold_broadcast_lane(self, names: list[str]) -> None:
        """Have the senders stop consuming the broadcast queue (``cancel_consumer``)."""
        self._control("cancel_consumer", names)

    def _control(self, command: str, names: list[str]) -> None:
        from celery import Celery

        control = Celery("bench-control", broker=common.BROKER_URL, set_as_current=False)
        control.conf.task_queues = common.queues.declarations()
        host = socket.gethostname()
        replies = getattr(control.control, command)(common.queues.OUTGOING_BROADCAST, reply=True, timeout=5,
                                                    destination=[f"{n}@{host}" for n in names])
        if len(replies) != len(names):
            raise RuntimeError(f"{command}: {len(replies)} of {len(names)} senders answered: {replies}")


def window_max(times: list[float], width: float = 1.0) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def pacing_run(bench: Bench, consumer: str, senders: int, rate: int, start: str,
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """One configuration: a list of one result, or with a warm start one per ``--rounds``."""
    number = f"8{uuid.uuid4().int % 10**14:014d}"
    env = {**bench.env, "WHATSAPP_PHONE_NUMBER_ID": number, "WHATSAPP_SEND_RATE": str(rate)}
    bench.control("POST", "reset")
    bench.control("POST", "config", {"rate": rate})
    if args.meta_latency:
        bench.control("POST", "faults", {"delay": args.meta_latency, "count": 100_000})
    bench.db.truncate()
    common.purge(SEND_QUEUES)
    label = f"{consumer}-{senders}-{rate}" + ("-warm" if start == "warm" else "")
    if start == "cold":
        bench.broadcast(env, args.sends, f"pacing-{label}")
    started = time.time()
    names = bench.start_senders(env, senders, consumer == "stock", args.sender_concurrency,
                                replies_only=start == "warm")
    watched = {"senders": [bench.procs.running[n].pid for n in names], "simulator": [bench.procs.running["meta"].pid]}
    timeout = args.stock_timeout if consumer == "stock" else max(60.0, 3 * args.sends / rate)
    results, before, refused_before = [], 0, {}
    for round_ in range(args.rounds if start == "warm" else 1):
        cpu_before = {k: sum(common.group_cpu_seconds(p) for p in pids) for k, pids in watched.items()}
        if start == "warm":
            bench.broadcast(env, args.sends, f"pacing-{label}-{round_}")
            ready = bench.release_broadcast_lane(names)
        else:
            ready = time.time()
        # Poll the cheap count, not the list of sends: serving a growing list costs the simulator (which
        # shares the 2 cores) more CPU than the sends themselves.
        while time.time() - ready < timeout:
            if bench.control("GET", "stats?brief=1")["accepted"] >= before + args.sends:
                break
            time.sleep(0.5)
        cpu = {k: sum(common.group_cpu_seconds(p) for p in pids) - cpu_before[k] for k, pids in watched.items()}
        if start == "warm":
            bench.hold_broadcast_lane(names)
        times = bench.accepted(number)[before:before + args.sends]
        suffix = f"-{round_}" if start == "warm" and args.rounds > 1 else ""
        (bench.out / f"times-{label}{suffix}.json").write_text(json.dumps(times))
        refused_so_far = bench.control("GET", "stats")["refused"]
        refused = {code: n - refused_before.get(code, 0) for code, n in refused_so_far.items()}
        refused_before = refused_so_far
        before += len(times)
        total = times[-1] - times[0] if len(times) > 1 else None
        results.append({
            "consumer": consumer, "senders": senders, "rate": rate, "start": start, "round": round_,
            "queued": args.sends, "accepted": len(times),
            "complete": len(times) >= args.sends, "ideal_seconds": (args.sends - 1) / rate,
            "total_seconds": total, "mean_rate": (len(times) - 1) / total if total else None,
            "max_in_1s": window_max(times), "refused_130429": refused.get("130429", 0),
            # Cold: from starting the senders until all are ready. Warm: until add_consumer was sent (and
            # then from that to the first send).
            "refused": refused, "start_to_ready_s": ready - started,
            "first_send_after_ready_s": times[0] - ready if times else None,
            "per_100ms": _histogram(times, 0.1),
            # CPU per accepted send: cold, from the senders' start (their start-up included) to the last
            # send; warm, of the round.
            "cpu_ms_per_send": {k: round(v * 1000 / max(1, len(times)), 2) for k, v in cpu.items()},
        })
    for name in names:
        bench.procs.stop(name)
    common.purge(SEND_QUEUES)
    return results


def _histogram(times: list[float], width: float) -> list[int]:
    if not times:
        return []
    counts = [0] * (int((times[-1] - times[0]) / width) + 1)
    for t in times:
        counts[int((t - times[0]) / width)] += 1
    return counts


def isolation_phase(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    number = bench.env["WHATSAPP_PHONE_NUMBER_ID"]
    env = bench.env
    bench.control("POST", "reset")
    bench.control("POST", "config", {"rate": 80})
    bench.db.truncate()
    common.purge([*SEND_QUEUES, *e2e.STAGE_QUEUES])
    bench.procs.start_procfile("web", env)
    for worker in e2e.WORKERS:
        bench.procs.start_procfile(worker, env)
    common.wait_http(bench.procs, "web", common.handshake_url(bench.port))
    for worker in e2e.WORKERS:
        common.wait_log(bench.procs, worker, r"@\S+ ready\.")
    senders = bench.start_senders(env, 2, False, args.sender_concurrency)
    client = e2e.Client(f"http://127.0.0.1:{bench.port}{common.WEBHOOK_PATH}", 16)
    count = round(args.inbound_rate * args.latency_duration)
    try:
        print(f"[isolation] idle: {count} inbound messages at {args.inbound_rate:g}/s ...", flush=True)
        e2e._RUN = f"idle{int(time.time())}"
        idle = e2e.latency_phase(client, bench.db, e2e.make_posts(e2e.phase_prefix("latency"), count, 1, 200),
                                 args.inbound_rate, 120)
        print(f"[isolation] broadcast of {args.broadcast} ...", flush=True)
        bench.broadcast(env, args.broadcast, "isolation")
        time.sleep(3)
        reply: dict[str, Any] = {}

        def command_reply() -> None:
            time.sleep(args.latency_duration / 3)
            bench.flask(env, "send", "--template", "hello_world", "31899999999", "--wait", "0")
            reply.update(_reply_latency(bench, number))

        import threading
        replier = threading.Thread(target=command_reply)
        replier.start()
        e2e._RUN = f"busy{int(time.time())}"
        busy = e2e.latency_phase(client, bench.db, e2e.make_posts(e2e.phase_prefix("latency"), count, 1, 200),
                                 args.inbound_rate, 120)
        replier.join(60)
        during = bench.accepted(number)
        bench.flask(env, "broadcast-cancel", "isolation")
        stats = bench.control("GET", "stats")
    finally:
        client.close()
        for name in (*senders, "web", *e2e.WORKERS):
            bench.procs.stop(name)
    window = [t for t in during if t >= during[0]] if during else []
    return {
        "inbound_rate": args.inbound_rate, "idle": _latency_summary(idle), "during_broadcast": _latency_summary(busy),
        "p99_ratio": (busy["latency_ms"]["p99"] / idle["latency_ms"]["p99"]
                      if idle["latency_ms"]["p99"] and busy["latency_ms"]["p99"] else None),
        "reply": reply, "broadcast_sends_seen": len(window), "broadcast_max_in_1s": window_max(window),
        "refused_130429": stats["refused"].get("130429", 0),
    }


def _latency_summary(phase: dict[str, Any]) -> dict[str, Any]:
    return {k: phase[k] for k in ("messages", "acknowledged", "rows", "complete", "latency_ms", "send_lag_ms")}


def _reply_latency(bench: Bench, number: str) -> dict[str, Any]:
    deadline = time.time() + 30
    while time.time() < deadline:
        sends = requests.get(f"{bench.sim}/_sim/sends", params={"to": "31899999999", "limit": 10}, timeout=10).json()
        if sends["sends"]:
            with bench.db.conn.cursor() as cur:
                cur.execute("select extract(epoch from created_at)::float8 from outbound_messages "
                            "where recipient = '31899999999'")
                commanded = cur.fetchone()[0]
            accepted_at = sends["sends"][0]["accepted_at"]
            return {"commanded_to_accepted_s": accepted_at - commanded}
        time.sleep(0.05)
    return {"commanded_to_accepted_s": None}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 1.9 * len(runs)), sharex=False)
    for ax, run in zip(axes if len(runs) > 1 else [axes], runs):
        counts = run["per_100ms"]
        ax.bar([i / 10 for i in range(len(counts))], counts, width=0.1, align="edge", color="#3b6ea5")
        ax.axhline(run["rate"] / 10, color="#c0392b", linewidth=1, linestyle="--")
        ax.set_ylabel("per 100 ms")
        total = f"{run['total_seconds']:.2f} s" if run["total_seconds"] else "-"
        ax.set_title(f"{run['consumer']} consumer, {run['senders']} sender(s), {run['rate']}/s"
                     f"{' (warm, round %d)' % run.get('round', 0) if run.get('start') == 'warm' else ''}: "
                     f"{run['accepted']} sends in {total}, max {run['max_in_1s']} in 1 s, "
                     f"{run['refused_130429']} × 130429", fontsize=9)
        ax.set_xlim(0, max(13.0, len(counts) / 10))
    axes_list = axes if len(runs) > 1 else [axes]
    axes_list[-1].set_xlabel("seconds from the first accepted send (dashed: the rate per 100 ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    out = common.OUT_DIR / f"send-{common.stamp()}-logs"
    out.mkdir(parents=True, exist_ok=True)
    plot_path = Path(args.plot) if args.plot else out / "send-pacing.png"
    results: dict[str, Any] = {"machine": common.machine_info(), "args": vars(args), "pacing": [], "isolation": None}
    db = e2e.Database()
    with common.Processes(out) as procs:
        bench = Bench(procs, db, out)
        db.migrate(bench.env)
        common.declare_queues()
        bench.start_simulator(args.simulator_nice, args.simulator_threads)
        if "pacing" in phases:
            for spec in args.configs.split(","):
                consumer, senders, rate, *start = spec.split(":")
                start = start[0] if start else "cold"
                if start not in ("cold", "warm"):
                    raise SystemExit(f"--configs: {spec}: the start is cold or warm")
                print(f"[pacing] {consumer} consumer, {senders} sender(s), {rate}/s, {start} ...", flush=True)
                results["pacing"] += pacing_run(bench, consumer, int(senders), int(rate), start, args)
            plot(results["pacing"], plot_path)
        if "isolation" in phases:
            results["isolation"] = isolation_phase(bench, args)
    path = common.write_json(f"send-{common.stamp()}", results)
    report(results)
    print(f"\nresults: {path}" + (f"\nplot: {plot_path}" if results["pacing"] else ""))


def report(results: dict[str, Any]) -> None:
    if results["pacing"]:
        common.print_table(
            ["consumer", "senders", "rate", "start", "round", "accepted", "total s", "ideal s", "mean/s", "max in 1 s", "130429",
             "sender CPU ms/send"],
            [[r["consumer"], r["senders"], r["rate"], r.get("start", "cold"), r.get("round", 0),
              f"{r['accepted']}/{r['queued']}", r["total_seconds"],
              r["ideal_seconds"], r["mean_rate"], r["max_in_1s"], r["refused_130429"],
              r["cpu_ms_per_send"]["senders"]] for r in results["pacing"]])
    iso = results["isolation"]
    if iso:
        print()
        common.print_table(["inbound", "p50 ms", "p99 ms", "max ms", "rows"], [
            [name, iso[key]["latency_ms"]["p50"], iso[key]["latency_ms"]["p99"], iso[key]["latency_ms"]["max"],
             f"{iso[key]['rows']}/{iso[key]['messages']}"]
            for name, key in (("idle", "idle"), ("during broadcast", "during_broadcast"))])
        print(f"p99 ratio {common.fmt(iso['p99_ratio'], 2)}; reply commanded -> accepted "
              f"{common.fmt(iso['reply'].get('commanded_to_accepted_s'), 3)} s; broadcast sends seen "
              f"{iso['broadcast_sends_seen']}, max {iso['broadcast_max_in_1s']} in 1 s, "
              f"{iso['refused_130429']} x 130429")


if __name__ == "__main__":
    main()
