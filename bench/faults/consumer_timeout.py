"""(g) The longest countdown in use (MAX_COUNTDOWN, 120 s) under a lowered consumer_timeout (150 s).

    .venv/bin/python bench/faults/consumer_timeout.py                 # the real sizes: about 3 minutes
    .venv/bin/python bench/faults/consumer_timeout.py --consumer-timeout 8 --countdown 5 --control-countdown 12   # smoke

A message waiting for its countdown (a retry's, or Meta's pause) is held unacknowledged by the
worker, and RabbitMQ closes the channel of a consumer holding a delivery longer than its
``consumer_timeout``; Celery 5.7 treats that closure as unrecoverable and the worker exits. waflow
caps every countdown at ``waflow.tasks.MAX_COUNTDOWN`` (120 s) to stay below it.

One private RabbitMQ node with ``consumer_timeout`` lowered to ``--consumer-timeout`` (150) s and the
channel tick lowered to ``--tick-ms`` (500) ms (by default the node looks only once a minute; see
``faultkit.PrivateRabbit``), two vhosts, one worker each, started side by side:

- **longest countdown**: the task ``tests.countdown.note`` (``tests/countdown_tasks.py``, loaded
  with ``-I countdown_tasks``) sent with ``--countdown`` = MAX_COUNTDOWN. Expected: it runs once,
  about 120 s after it was sent, and the worker is still up with its channel open when the
  timeout plus a few ticks have passed since the delivery.
- **control**: the same task with ``--control-countdown`` (180) s, longer than the timeout.
  Expected: RabbitMQ closes the channel (``delivery acknowledgement on channel 1 timed out``)
  between the timeout and the timeout plus a tick after the delivery, the worker exits, the task
  never ran, and the message is back in its queue (not lost).

Each worker is started and ready before its task is sent, so delivery follows the send within
milliseconds and times are measured from the send. No database is involved (the task writes a
line to a file); the worker gets an unused SQLite URL.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import _run  # noqa: F401  (sets sys.path)
from _run import ROOT, Run, common, faultkit, support

from waflow import queues, tasks

QUEUE = queues.MEDIA_PROCESSING
CLOSED = "delivery acknowledgement on channel 1 timed out"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--consumer-timeout", type=float, default=150.0, help="seconds (default 150)")
    p.add_argument("--tick-ms", type=int, default=faultkit.FAST_TICK_MS,
                   help=f"RabbitMQ channel tick in ms (default {faultkit.FAST_TICK_MS})")
    p.add_argument("--countdown", type=float, default=tasks.MAX_COUNTDOWN,
                   help=f"the countdown under test (default MAX_COUNTDOWN = {tasks.MAX_COUNTDOWN:g} s)")
    p.add_argument("--control-countdown", type=float, default=180.0,
                   help="the control's countdown, longer than the timeout (default 180 s)")
    p.add_argument("--margin", type=float, default=10.0,
                   help="seconds past timeout + tick to keep watching the first worker (default 10)")
    args = p.parse_args()
    if args.countdown >= args.consumer_timeout or args.control_countdown <= args.consumer_timeout:
        p.error("need countdown < consumer timeout < control countdown")
    return args


class Case:
    """One vhost, one worker (-P solo, as tests/test_faults.py runs it), one task with a countdown."""

    def __init__(self, run: Run, node: faultkit.PrivateRabbit, name: str, countdown: float) -> None:
        self.run, self.node, self.name, self.countdown = run, node, name, countdown
        self.vhost = f"waflow_{name}"
        node.ctl("add_vhost", self.vhost)
        node.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.dir = run.log_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marks = self.dir / "runs.txt"
        self.log = run.log_dir / f"{name}-worker.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("WAFLOW_TEST_")},
                    "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{node.port}/{self.vhost}",
                    "WAFLOW_VAR_DIR": str(self.dir), "PYTHONPATH": str(ROOT / "tests"),
                    "DATABASE_URL": f"sqlite:///{self.dir}/unused.db", "PYTHONUNBUFFERED": "1"}
        self.result: dict = {"case": name, "vhost": self.vhost, "countdown": countdown}

    def start_worker(self) -> None:
        with open(self.log, "w") as out:
            self.worker = subprocess.Popen(
                [str(Path(sys.executable).parent / "celery"), "-A", "waflow", "worker", "-Q", QUEUE, "-I",
                 "countdown_tasks", "-P", "solo", "-l", "INFO", "--without-mingle", "--without-gossip"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        support.wait_for(lambda: "ready." in self.log.read_text(), 60, what=f"{self.name} worker")
        self.result["worker_pid"] = self.worker.pid

    def send(self) -> None:
        code = ("import time; from waflow.tasks import celery_app as a; t = time.time(); "
                f"a.send_task('tests.countdown.note', args=({str(self.marks)!r},), queue={QUEUE!r}, "
                f"countdown={self.countdown}); print(t)")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, cwd=ROOT, check=True, timeout=60,
                              capture_output=True, text=True)
        self.sent = float(done.stdout.split()[-1])  # the moment the countdown started (its ETA is from then)
        self.result["sent_at"] = self.run.event(f"{self.name}: task sent", countdown=self.countdown)["t"]

    def watch(self, until: float, stop_on_exit: bool) -> None:
        """Poll until ``until`` (seconds after the send): the task's run, the worker's exit."""
        while time.time() < self.sent + until:
            if "ran_after" not in self.result and self.marks.exists():
                self.result["ran_after"] = round(self.marks.stat().st_mtime - self.sent, 2)
                self.run.event(f"{self.name}: task ran", after=self.result["ran_after"])
            if self.worker.poll() is not None and "exited_after" not in self.result:
                self.result["exited_after"] = round(time.time() - self.sent, 2)
                self.result["exit_code"] = self.worker.returncode
                self.run.event(f"{self.name}: worker exited", after=self.result["exited_after"],
                               code=self.worker.returncode)
                if stop_on_exit:
                    break
            time.sleep(0.1)

    def finish(self) -> None:
        text = self.log.read_text(errors="replace")
        self.result["alive_at_end"] = self.worker.poll() is None
        self.result["watched_for"] = round(time.time() - self.sent, 1)
        self.result["channel_closed"] = CLOSED in text
        self.result["unrecoverable"] = "Unrecoverable error" in text
        self.result["runs"] = self.marks.read_text().count("ran") if self.marks.exists() else 0
        if self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)
        # Where the message is now: still queued (ready) once no worker holds it?
        self.result["ready_in_queue_after"] = self.node.queue_depth(QUEUE, self.vhost)
        self.result["log_tail"] = text[-1500:]


def main() -> int:
    args = parse_args()
    run = Run("consumer_timeout", args)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    tick = args.tick_ms / 1000
    run.cpu.start()
    with faultkit.PrivateRabbit(consumer_timeout_ms=int(args.consumer_timeout * 1000),
                                tick_interval_ms=args.tick_ms) as node:
        run.event("RabbitMQ up", port=node.port, consumer_timeout_s=args.consumer_timeout, tick_ms=args.tick_ms)
        longest = Case(run, node, "longest", args.countdown)
        control = Case(run, node, "control", args.control_countdown)
        for case in (longest, control):
            case.start_worker()
        run.event("workers ready")
        for case in (longest, control):
            case.send()
        watch_longest = args.consumer_timeout + 3 * tick + args.margin
        watch_control = args.consumer_timeout + 3 * tick + args.margin
        threads = [threading.Thread(target=longest.watch, args=(watch_longest, False)),
                   threading.Thread(target=control.watch, args=(watch_control, True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for case in (longest, control):
            case.finish()
        run.results = {"consumer_timeout_s": args.consumer_timeout, "tick_ms": args.tick_ms,
                       "max_countdown_s": tasks.MAX_COUNTDOWN, "longest": longest.result, "control": control.result}
    run.cpu_report = run.cpu.stop()  # type: ignore[attr-defined]
    lo, co = longest.result, control.result
    run.check(f"longest ({args.countdown:g} s): ran once, about {args.countdown:g} s after the send",
              lo["runs"] == 1 and lo.get("ran_after") is not None and args.countdown - 1 <= lo["ran_after"]
              <= args.countdown + 5, f"runs {lo['runs']}, after {lo.get('ran_after')} s")
    run.check("longest: worker up and channel open past timeout + ticks",
              lo["alive_at_end"] and not lo["channel_closed"] and not lo["unrecoverable"]
              and lo["watched_for"] >= args.consumer_timeout + 3 * tick,
              f"alive {lo['alive_at_end']}, watched {lo['watched_for']} s, closed {lo['channel_closed']}")
    run.check(f"control ({args.control_countdown:g} s): channel closed, worker exited",
              co["channel_closed"] and co.get("exited_after") is not None and co["unrecoverable"],
              f"closed {co['channel_closed']}, exited after {co.get('exited_after')} s (code {co.get('exit_code')})")
    run.check("control: closed between timeout and timeout + a tick (+3 s for the worker to exit)",
              co.get("exited_after") is not None
              and args.consumer_timeout <= co["exited_after"] <= args.consumer_timeout + tick + 3.0,
              co.get("exited_after"))
    run.check("control: the task never ran; its message is back in the queue", co["runs"] == 0
              and co["ready_in_queue_after"] == 1, f"runs {co['runs']}, ready in queue {co['ready_in_queue_after']}")
    print()
    common.print_table(["case", "countdown s", "consumer_timeout s", "ran after s", "runs", "channel closed",
                        "worker exited after s", "worker up at end", "left in queue"],
                       [[c["case"], c["countdown"], args.consumer_timeout, c.get("ran_after"), c["runs"],
                         "yes" if c["channel_closed"] else "no", c.get("exited_after"),
                         "yes" if c["alive_at_end"] else "no", c["ready_in_queue_after"]] for c in (lo, co)])
    return _run.finish(run)


if __name__ == "__main__":
    sys.exit(main())
