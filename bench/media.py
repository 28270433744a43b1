"""Media benchmark: download throughput, the downloading process's memory, and inbound latency meanwhile.

Run from the repository root: ``.venv/bin/python bench/media.py`` (``--help`` for the knobs).

It migrates and empties the benchmark database, purges waflow's queues on the benchmark vhost,
starts the Meta simulator (its media memory cap raised with ``--max-media-bytes``) and the
Procfile's ``web``, ``ingestor`` and ``core``; the ``media`` worker (the Procfile's line, prefork,
``-c 2``) is started for each phase and stopped after it. Files are made by the simulator (random
bytes of the asked size) and reach waflow as clients' document messages, through the gateway.

throughput  for each group (100 files of 1 MB, 5 of 50 MB, one of 100 MB): the messages are
            injected while no media worker runs, so their jobs wait in ``wa.media.processing``;
            then the worker starts, and the group's MB/s runs from the worker's ``ready.`` to the
            last row's ``stored_at``. Memory: each pool child's resident size once the worker is
            ready (idle) and its high-water mark (``VmHWM``) when the group is stored; the growth
            reported is the largest child's peak minus its idle size.
latency     1-update text webhooks at ``--burst-rate`` for ``--burst-seconds``, timed from just
            before each POST to its row's ``created_at``: once with the media worker idle, once
            right after it starts on a fresh set of the same files. The overlap of the burst with
            the downloads (first to last ``stored_at``) is reported beside it.

Prints tables and writes ``bench/out/media-<timestamp>.json``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import requests

import _common as common
from _common import queues

MB = 2**20
GROUPS = (("100 × 1 MB", 100, 1 * MB), ("5 × 50 MB", 5, 50 * MB), ("1 × 100 MB", 1, 100 * MB))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=common.DATABASE_URL, help="PostgreSQL database (emptied)")
    p.add_argument("--broker-url", default=common.BROKER_URL, help="RabbitMQ vhost (its waflow queues purged)")
    p.add_argument("--burst-rate", type=float, default=20, help="text webhooks per second in the latency phase")
    p.add_argument("--burst-seconds", type=float, default=10, help="seconds of each burst")
    p.add_argument("--max-media-bytes", type=int, default=1100 * MB, help="the simulator's media memory cap")
    p.add_argument("--timeout", type=float, default=600, help="a phase gives up after this many seconds")
    p.add_argument("--media-dir", type=Path, default=None,
                   help="WAFLOW_MEDIA_DIR (default: under bench/out, on the disk PostgreSQL may share)")
    p.add_argument("--download-rate", default=None,
                   help="WAFLOW_MEDIA_DOWNLOAD_RATE for the media worker (MB/s per download; 0: no limit)")
    p.add_argument("--phases", default="throughput,latency", help="comma-separated, of throughput, latency")
    return p.parse_args()


class Bench:
    def __init__(self, args: argparse.Namespace, procs: common.Processes, out: Path) -> None:
        self.args, self.procs = args, procs
        self.port, self.sim_port = common.free_port(), common.free_port()
        self.sim = f"http://127.0.0.1:{self.sim_port}"
        self.media_dir = args.media_dir or out / "media"
        self.env = common.service_env(self.port, WHATSAPP_API_URL=f"{self.sim}/v25.0",
                                      SIMULATOR_PORT=str(self.sim_port),
                                      SIMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{self.port}{common.WEBHOOK_PATH}",
                                      WAFLOW_MEDIA_DIR=str(self.media_dir), WAFLOW_LOG_LEVEL="WARNING",
                                      **({"WAFLOW_MEDIA_DOWNLOAD_RATE": args.download_rate}
                                         if args.download_rate is not None else {}))
        self.db = psycopg2.connect(args.database_url)
        self.db.autocommit = True
        self.n = 0  # messages injected so far (each its own client and media id)

    def sql(self, query: str, *params: Any) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def start(self) -> None:
        done = subprocess.run([str(common.VENV_BIN / "alembic"), "upgrade", "head"], cwd=common.ROOT, env=self.env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            sys.exit(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")
        with self.db.cursor() as cur:
            common.truncate_all(cur)
        common.declare_queues()
        common.purge([q.name for q in queues.declarations()])
        self.procs.start("meta", [sys.executable, "-m", "waflow.simulator", "--port", str(self.sim_port),
                                  "--no-status-webhooks", "--open-windows", "--max-media-bytes",
                                  str(self.args.max_media_bytes)], self.env)
        self.procs.start_procfile("web", self.env)
        for name in ("ingestor", "core"):
            self.procs.start_procfile(name, self.env)
        common.wait_http(self.procs, "meta", f"{self.sim}/_sim/health")
        common.wait_http(self.procs, "web", common.handshake_url(self.port))
        for name in ("ingestor", "core"):
            common.wait_log(self.procs, name, r"ready\.")

    # -- the media worker and its pool ---------------------------------------------------------------------------

    def start_media(self) -> tuple[float, dict[int, int]]:
        """Start the media worker; return when it was seen ready and its pool children's idle RSS (KiB)."""
        log = self.procs.log_path("media")
        if log.exists():
            log.unlink()
        proc = self.procs.start_procfile("media", self.env)
        deadline = time.monotonic() + 60
        while "ready." not in (log.read_text(errors="replace") if log.exists() else ""):
            self.procs.check_alive("media")
            if time.monotonic() > deadline:
                raise TimeoutError("the media worker did not start:\n" + common.tail(log))
            time.sleep(0.02)
        ready = time.time()
        return ready, {pid: _status(pid, "VmRSS") for pid in _children(proc.pid)}

    def stop_media(self) -> dict[int, int]:
        """The pool children's peak RSS (KiB), then the worker stopped."""
        proc = self.procs.running["media"]
        peaks = {pid: _status(pid, "VmHWM") for pid in _children(proc.pid)}
        self.procs.stop("media")
        return peaks

    # -- files ---------------------------------------------------------------------------------------------------

    def inject(self, count: int, size: int) -> list[str]:
        """``count`` clients each send a document of ``size`` bytes; returns their wamids once core stored them."""
        wamids = []
        for _ in range(count):
            self.n += 1
            wa_id, _ = common.sender(self.n)
            answer = requests.post(f"{self.sim}/_sim/inbound", timeout=120, json={
                "from": wa_id, "media": {"kind": "document", "mime_type": "application/pdf", "size": size,
                                         "filename": f"bench-{self.n}.pdf"}})
            answer.raise_for_status()
            wamids.append(answer.json()["wamid"])
        self.wait(lambda: self.sql("select count(*) from messages where wamid = any(%s)", wamids)[0][0] == count,
                  "the messages stored")
        self.wait(lambda: common.queue_depth(queues.MEDIA_PROCESSING) >= count, "the media jobs queued")
        return wamids

    def wait(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.args.timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def settled(self, wamids: list[str]) -> list[tuple]:
        """(status, size, stored_at epoch) of each file, once none is pending."""
        query = ("select status, size, extract(epoch from stored_at) from media where wamid = any(%s) "
                 "and status <> 'pending'")
        self.wait(lambda: len(self.sql(query, wamids)) == len(wamids), "every file stored or failed")
        return self.sql(query, wamids)

    # -- phases --------------------------------------------------------------------------------------------------

    def throughput(self) -> list[dict[str, Any]]:
        results = []
        for label, count, size in GROUPS:
            wamids = self.inject(count, size)
            ready, idle = self.start_media()
            rows = self.settled(wamids)
            peaks = self.stop_media()
            stored = [r for r in rows if r[0] == "stored"]
            seconds = max(float(r[2]) for r in stored) - ready if stored else None
            growth = max((peaks.get(pid, 0) - rss) / 1024 for pid, rss in idle.items())
            total = sum(r[1] for r in stored)
            results.append({"group": label, "files": count, "stored": len(stored), "bytes": total,
                            "seconds": seconds, "mb_per_s": total / MB / seconds if seconds else None,
                            "idle_rss_mib": {p: v / 1024 for p, v in idle.items()},
                            "peak_rss_mib": {p: v / 1024 for p, v in peaks.items()}, "growth_mib": growth})
        return results

    def burst(self, label: str) -> dict[str, Any]:
        """1-update text webhooks at the burst rate; each POST's time to its row."""
        count = int(self.args.burst_rate * self.args.burst_seconds)
        prefix = f"wamid.media-bench-{label}-"
        posted: dict[str, float] = {}
        answered: list[float] = []

        def post(i: int) -> None:
            wa_id, name = common.sender(100_000 + i)
            body = common.webhook_body([common.text_message(f"{prefix}{i}", wa_id, "Saya kirim dokumennya.")],
                                       {wa_id: name})
            posted[f"{prefix}{i}"] = sent = time.time()
            requests.post(f"http://127.0.0.1:{self.port}{common.WEBHOOK_PATH}", data=body, timeout=10,
                          headers={"Content-Type": "application/json", "X-Hub-Signature-256": common.sign(body)})
            answered.append((time.time() - sent) * 1000)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for i in range(count):
                time.sleep(max(0.0, start + i / self.args.burst_rate - time.monotonic()))
                pool.submit(post, i)
        self.wait(lambda: self.sql("select count(*) from messages where starts_with(wamid, %s)", prefix)[0][0] == count,
                  f"the {label} burst stored")
        created = dict(self.sql("select wamid, extract(epoch from created_at) from messages "
                                "where starts_with(wamid, %s)", prefix))
        latencies = sorted((float(created[w]) - t) * 1000 for w, t in posted.items())
        return {"label": label, "messages": count, "first_post": min(posted.values()),
                "last_post": max(posted.values()),
                "p50_ms": common.percentile(latencies, 50), "p90_ms": common.percentile(latencies, 90),
                "p99_ms": common.percentile(latencies, 99), "max_ms": latencies[-1],
                "ack_p99_ms": common.percentile(sorted(answered), 99)}

    def latency(self) -> list[dict[str, Any]]:
        self.start_media()
        idle = self.burst("idle")
        self.stop_media()
        wamids = [w for _, count, size in GROUPS for w in self.inject(count, size)]
        self.start_media()
        during = self.burst("downloading")
        rows = self.settled(wamids)
        self.stop_media()
        times = [float(r[2]) for r in rows if r[2] is not None]
        window = (during["first_post"], during["last_post"])
        overlap = max(0.0, min(window[1], max(times)) - window[0]) / (window[1] - window[0]) if times else 0.0
        during.update(downloads_until=max(times) if times else None, burst_overlap=overlap,
                      mb_stored=sum(r[1] for r in rows if r[0] == "stored") / MB)
        return [idle, during]


def _children(pid: int) -> list[int]:
    """The process's children (a prefork worker's pool)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _status(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS: resident now, VmHWM: the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    args = parse_args()
    common.BROKER_URL, common.DATABASE_URL = args.broker_url, args.database_url
    name = f"media-{common.stamp()}"
    out = common.OUT_DIR / f"{name}-logs"
    with common.Processes(out) as procs:
        bench = Bench(args, procs, out)
        bench.start()
        phases = args.phases.split(",")
        throughput = bench.throughput() if "throughput" in phases else []
        latency = bench.latency() if "latency" in phases else []
    print("\nDownloads (the media worker's pool, prefork -c 2)")
    common.print_table(["group", "stored", "MB", "seconds", "MB/s", "memory growth MiB"],
                       [(r["group"], f"{r['stored']}/{r['files']}", r["bytes"] / MB, r["seconds"], r["mb_per_s"],
                         r["growth_mib"]) for r in throughput])
    print("\nInbound text webhooks, POST to row")
    common.print_table(["burst", "messages", "p50 ms", "p90 ms", "p99 ms", "max ms", "200 p99 ms"],
                       [(r["label"], r["messages"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"], r["ack_p99_ms"])
                        for r in latency])
    if not latency:
        return print(f"\nwrote {common.write_json(name, {'machine': common.machine_info(), 'throughput': throughput})}")
    during = latency[1]
    print(f"downloads overlapped {during['burst_overlap']:.0%} of the second burst "
          f"({during['mb_stored']:.0f} MB stored); p99 ratio {during['p99_ms'] / latency[0]['p99_ms']:.2f} × idle")
    path = common.write_json(name, {"machine": common.machine_info(), "args": vars(args),
                                    "throughput": throughput, "latency": latency})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
