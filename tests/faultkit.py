"""Throwaway RabbitMQ nodes and PostgreSQL clusters for fault tests.

Fault tests stop, ``kill -9`` and restart the broker and the database. They must never do that
to the machine's shared services (RabbitMQ on 5672, PostgreSQL on 5432), so this module starts
private ones on free ports, each in its own temporary folder, and tears them down when the test
is done, or at interpreter exit if a test forgot::

    with PrivateRabbit(consumer_timeout_ms=3000) as rabbit, PrivatePostgres() as pg:
        rabbit.kill()
        rabbit.restart()          # same ports, same data: confirmed persistent messages are back
        with pg.unreachable(5):   # stopped (immediate) here, started again at the end
            ...

Tests import it as ``faultkit`` (tests/ is on sys.path); scripts in bench/faults/ load it by
path. It needs only the standard library, ``amqp`` and ``psycopg2`` (and pytest for the marker).
Facts about RabbitMQ 3.10.8 that shaped it are in ``PrivateRabbit``'s docstring.
"""
from __future__ import annotations

import atexit
import ctypes
import glob
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

REQUIRE_SERVICES = os.environ.get("WAFLOW_TEST_REQUIRE_SERVICES") == "1"

# RabbitMQ checks consumer_timeout once per channel tick (60 s by default): see PrivateRabbit.
FAST_TICK_MS = 500

_serial = itertools.count(1)
_live: set["_Service"] = set()


class ServiceError(RuntimeError):
    """A private service failed to start or stop; the message ends with its log tail."""


# -- finding the binaries -------------------------------------------------------------------


def rabbitmq_sbin() -> Path | None:
    """The folder of the real ``rabbitmq-server`` script, not Debian's ``su rabbitmq`` wrapper.

    The wrapper in /usr/sbin resolves to /usr/lib/rabbitmq/bin, where the real scripts sit beside
    ``rabbitmq-env``; ``WAFLOW_RABBITMQ_SBIN`` names another folder.
    """
    found = shutil.which("rabbitmq-server")
    candidates = [os.environ.get("WAFLOW_RABBITMQ_SBIN", ""), "/usr/lib/rabbitmq/bin",
                  str(Path(found).resolve().parent) if found else "",
                  *sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"), reverse=True)]
    for folder in filter(None, candidates):
        if all((Path(folder) / name).exists() for name in ("rabbitmq-server", "rabbitmq-env", "rabbitmqctl")):
            return Path(folder)
    return None


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (``WAFLOW_PG_BINDIR``, PATH, or Debian's layout)."""
    found = shutil.which("initdb")
    candidates = [os.environ.get("WAFLOW_PG_BINDIR", ""), str(Path(found).resolve().parent) if found else "",
                  *sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for folder in filter(None, candidates):
        if all((Path(folder) / name).is_file() for name in ("initdb", "postgres")):
            return Path(folder)
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def missing_private_services() -> str:
    """Why private RabbitMQ and PostgreSQL can't run here, or "" when they can."""
    missing = []
    if rabbitmq_sbin() is None or shutil.which("erl") is None:
        missing.append("rabbitmq-server (with erl)")
    if postgres_bindir() is None:
        missing.append("PostgreSQL's initdb and postgres")
    if os.geteuid() == 0 and not _user_exists("postgres"):
        missing.append("a 'postgres' user to run PostgreSQL as (it refuses root)")
    return f"no {' or '.join(missing)} on this machine: can't start private services" if missing else ""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_MISSING = missing_private_services()
# In CI (WAFLOW_TEST_REQUIRE_SERVICES=1) nothing skips: a missing binary fails in start().
requires_private_services = pytest.mark.skipif(not REQUIRE_SERVICES and bool(_MISSING),
                                               reason=_MISSING or "private services available")


def shared_rabbitmq_pid() -> int | None:
    """The OS pid the machine's own RabbitMQ node reports (``rabbitmqctl status``), or None."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    try:
        done = subprocess.run([ctl, "status", "--formatter", "json"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return int(json.loads(done.stdout)["pid"]) if done.returncode == 0 else None


# -- what both services share ---------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while picked, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (read from /proc)."""
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(Path(stat).parent.name))
    return children


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and isn't a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: be SIGKILLed when the parent dies (Linux PR_SET_PDEATHSIG)."""
    _libc.prctl(1, signal.SIGKILL)


class _Service:
    """One server process of ours, spawned directly so its pid is exactly the server's.

    Owns the temporary folder (removed on ``close()`` unless the caller passed ``base_dir``) and
    registers itself for teardown at interpreter exit.
    """

    what = "service"

    def __init__(self, base_dir: str | Path | None, prefix: str, start_timeout: float) -> None:
        self._owns_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix=prefix))
        self.base.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        _live.add(self)

    @property
    def pid(self) -> int | None:
        """The server's OS pid while it runs."""
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path, **popen: object) -> None:
        # A parent-death signal fires when the *thread* that forked exits, so only the main
        # thread (alive until the interpreter ends) sets one; atexit covers the rest.
        if _libc is not None and threading.current_thread() is threading.main_thread():
            popen["preexec_fn"] = _die_with_parent
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(argv, env=env, cwd=self.base, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True, **popen)

    def _wait_ready(self, probe: Callable[[], bool]) -> None:
        """Wait until ``probe()`` holds; on exit or timeout, raise with the log tail."""
        deadline = time.monotonic() + self.start_timeout
        while not probe():
            if self._proc.poll() is not None:
                raise ServiceError(f"{self.what} exited ({self._proc.returncode}) while starting\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"{self.what} not ready after {self.start_timeout}s\n{self.log_tail()}")
            time.sleep(0.1)

    def _signal_and_wait(self, signum: int, timeout: float) -> None:
        """Send ``signum`` and wait for the exit; past ``timeout``, kill -9 and raise."""
        self._proc.send_signal(signum)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServiceError(f"{self.what} ignored signal {signum} for {timeout}s; killed\n{self.log_tail()}")

    def kill(self) -> None:
        """``kill -9`` this service's server process (and nothing else), and reap it."""
        with self._lock:
            if self.running:
                self._proc.kill()
            if self._proc is not None:
                self._proc.wait(30)

    def log_files(self) -> list[Path]:
        raise NotImplementedError

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of each log file, for error messages."""
        parts = []
        for path in self.log_files():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(none)"]
            parts.append(f"== {path}\n" + "\n".join(text))
        return "\n".join(parts)

    def close(self) -> None:
        """Kill the server and remove the temporary folder we made; safe to call twice."""
        with self._lock:
            self.kill()
            if self._owns_dir:
                shutil.rmtree(self.base, ignore_errors=True)
            _live.discard(self)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self):
        raise NotImplementedError


@atexit.register
def _close_all() -> None:
    """Tear down whatever a test left running; one failure doesn't spare the others."""
    for service in list(_live):
        try:
            service.close()
        except (ServiceError, OSError, subprocess.SubprocessError) as exc:
            print(f"faultkit: closing {service.what} in {service.base} failed: {exc}", file=sys.stderr)


# -- RabbitMQ -------------------------------------------------------------------------------


class PrivateRabbit(_Service):
    """A throwaway RabbitMQ node: its own name, ports, config, data and logs, no plugins.

    Nothing from /etc/rabbitmq is read: ``RABBITMQ_CONF_ENV_FILE`` points at an empty file (the
    machine's one sets ``NODENAME=rabbit@localhost``), and the config, advanced config,
    ``conf.d``, enabled-plugins file, data, logs and pid file all live under ``base``. ``HOME``
    is ``base/home``, so the node makes its own Erlang cookie. The node registers its name with
    the machine's epmd (4369) like any Erlang node, and listens only on 127.0.0.1.

    ``RUNNING_UNDER_SYSTEMD=true`` makes the ``rabbitmq-server`` script ``exec`` the Erlang VM
    instead of running it as a background job, so our child process *is* the node's
    ``beam.smp``: ``kill()`` signals exactly that pid. SIGTERM stops the node cleanly.

    **consumer_timeout on 3.10.8** (read from ``rabbit_channel`` in the installed beams): each
    channel has a timer of ``channel_tick_interval`` ms (app env, default 60000, not settable in
    rabbitmq.conf, hence ``advanced.config``). On each tick it looks at its *oldest* unacked
    delivery and, if that is older than ``consumer_timeout`` (default 1800000), closes the
    channel with 406 PRECONDITION_FAILED. So a channel closes between ``consumer_timeout`` and
    ``consumer_timeout + tick`` after the delivery; with the default tick, up to a minute late.
    There is no per-queue ``x-consumer-timeout`` in 3.10. With ``consumer_timeout_ms`` set and
    no ``tick_interval_ms``, the tick is lowered to ``FAST_TICK_MS``.
    """

    what = "private RabbitMQ node"

    def __init__(self, *, base_dir: str | Path | None = None, consumer_timeout_ms: int | None = None,
                 tick_interval_ms: int | None = None, start_timeout: float = 60.0) -> None:
        super().__init__(base_dir, "waflow-rabbit-", start_timeout)
        self.sbin = rabbitmq_sbin()
        self.name = f"waflow_fault_{os.getpid()}_{next(_serial)}@localhost"
        self.port, self.dist_port = free_ports(2)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.consumer_timeout_ms = consumer_timeout_ms
        self.tick_interval_ms = tick_interval_ms or (FAST_TICK_MS if consumer_timeout_ms else None)
        self._write_config()

    def _write_config(self) -> None:
        for folder in ("home", "log", "mnesia"):
            (self.base / folder).mkdir(exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        conf = [f"listeners.tcp.1 = 127.0.0.1:{self.port}"]
        if self.consumer_timeout_ms:
            conf.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        (self.base / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        if self.tick_interval_ms:
            (self.base / "advanced.config").write_text(
                f"[{{rabbit, [{{channel_tick_interval, {self.tick_interval_ms}}}]}}].\n")

    def _env(self) -> dict[str, str]:
        b = self.base
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(b / "home"), "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
        }

    def _server_env(self) -> dict[str, str]:
        b = self.base
        return {
            **self._env(), "RUNNING_UNDER_SYSTEMD": "true",
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"), "RABBITMQ_CONFIG_FILES": str(b / "conf.d" / "*.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"), "RABBITMQ_ENABLED_PLUGINS": "",
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"), "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_LOGS": str(b / "log" / "rabbit.log"), "RABBITMQ_PLUGINS_EXPAND_DIR": str(b / "plugins"),
            "RABBITMQ_PID_FILE": str(b / "rabbit.pid"), "RABBITMQ_MOTD_FILE": str(b / "motd"),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> "PrivateRabbit":
        """Start the node (if it isn't running) and wait until it accepts AMQP connections."""
        with self._lock:
            if self.running:
                return self
            if self.sbin is None:
                raise ServiceError(missing_private_services() or "rabbitmq-server not found")
            self._spawn([str(self.sbin / "rabbitmq-server")], self._server_env(), self.base / "log" / "console.log")
            self._wait_ready(self._accepts_amqp)
            if "beam" not in Path(f"/proc/{self._proc.pid}/comm").read_text():
                self.kill()
                raise ServiceError(f"pid {self._proc.pid} is not the node's Erlang VM: rabbitmq-server did not exec")
            return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly (SIGTERM to the VM)."""
        with self._lock:
            if self.running:
                self._signal_and_wait(signal.SIGTERM, timeout)

    def restart(self) -> "PrivateRabbit":
        """Stop (if running) and start again: same name, ports and data folder."""
        self.stop()
        return self.start()

    def connection(self, vhost: str = "/", connect_timeout: float = 2.0, **kwargs: object):
        """A connected py-amqp ``Connection`` to this node as guest (close it, or use ``with``)."""
        import amqp

        conn = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest", virtual_host=vhost,
                               connect_timeout=connect_timeout, **kwargs)
        conn.connect()
        return conn

    def _accepts_amqp(self) -> bool:
        import amqp

        try:
            self.connection().close()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        return True

    def queue_depth(self, queue: str, vhost: str = "/") -> int:
        """Messages ready in ``queue`` (a passive declare: unacked deliveries aren't counted)."""
        with self.connection(vhost) as conn:
            return conn.channel().queue_declare(queue, passive=True).message_count

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <this node> ...`` and return its output."""
        done = subprocess.run([str(self.sbin / "rabbitmqctl"), "-n", self.name, *args], env=self._env(),
                              cwd=self.base, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise ServiceError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def log_files(self) -> list[Path]:
        return [self.base / "log" / "console.log", self.base / "log" / "rabbit.log"]


# -- PostgreSQL -----------------------------------------------------------------------------

_PG_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def _as_postgres_user() -> dict[str, object]:
    """Popen arguments that run a command as ``postgres`` when we are root (else nothing to add)."""
    if os.geteuid() != 0 or not _user_exists("postgres"):
        return {}
    return {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid, "extra_groups": []}


class PrivatePostgres(_Service):
    """A throwaway PostgreSQL cluster: ``initdb`` into a temporary folder, trust auth, 127.0.0.1.

    As root, the folder is handed to the ``postgres`` user and the server runs as that user
    (PostgreSQL refuses root); its Unix socket is in the folder too. The postmaster is our
    child, so ``kill()`` signals exactly it; its backends notice and exit by themselves.
    ``fsync`` stays on: fault tests check durability. ``initdb -N`` skips syncing the fresh,
    throwaway cluster's files, which is what makes initdb fast.
    """

    what = "private PostgreSQL"

    def __init__(self, *, base_dir: str | Path | None = None, start_timeout: float = 30.0) -> None:
        super().__init__(base_dir, "waflow-pg-", start_timeout)
        self.bindir = postgres_bindir()
        self.port = free_ports(1)[0]
        self.url = self.url_for("postgres")
        self.data_dir = self.base / "data"
        self._orphans: list[int] = []
        self._as = _as_postgres_user()
        if self._as:
            os.chown(self.base, pwd.getpwnam("postgres").pw_uid, self._as["group"])

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _initdb(self) -> None:
        if self.bindir is None:
            raise ServiceError(missing_private_services() or "initdb not found")
        done = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--locale=C", "-N"],
                              cwd=self.base, capture_output=True, text=True, timeout=120, **self._as)
        if done.returncode:
            raise ServiceError(f"initdb failed ({done.returncode}) in {self.base}:\n{done.stdout}{done.stderr}")

    def start(self) -> "PrivatePostgres":
        """Start the cluster (running ``initdb`` the first time) and wait until it accepts connections."""
        with self._lock:
            if self.running:
                return self
            if not self.data_dir.exists():
                self._initdb()
            self._wait_for_orphans()
            argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.base}",
                    "-c", "shared_buffers=32MB"]
            self._spawn(argv, {k: v for k, v in os.environ.items() if not k.startswith("PG")},
                        self.base / "postgres.log", **self._as)
            self._wait_ready(self._accepts_connections)
            return self

    def _wait_for_orphans(self) -> None:
        # After kill(), a backend still attached to the old shared memory would make the new
        # postmaster refuse to start; they exit within milliseconds of noticing.
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in self._orphans):
            if time.monotonic() > deadline:
                raise ServiceError(f"old backends {self._orphans} still alive 30s after the postmaster was killed")
            time.sleep(0.02)
        self._orphans = []

    def _accepts_connections(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.url, connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down in PostgreSQL's ``smart``, ``fast`` or ``immediate`` mode (no checkpoint)."""
        with self._lock:
            if self.running:
                self._signal_and_wait(_PG_STOP_SIGNALS[mode], timeout)

    def kill(self) -> None:
        """``kill -9`` the postmaster only; start() later waits for its orphaned backends to go."""
        with self._lock:
            if self.running:
                self._orphans = _children_of(self._proc.pid)
            super().kill()

    def restart(self, mode: str = "fast") -> "PrivatePostgres":
        """Stop (if running) and start again on the same port and data folder."""
        self.stop(mode)
        return self.start()

    @contextmanager
    def unreachable(self, seconds: float = 0.0) -> Iterator["PrivatePostgres"]:
        """Down (``stop -m immediate``) inside the block; back up at its end, ``seconds`` after going down at
        the earliest. Connections then fail at once with "connection refused" (not a hang)."""
        self.stop("immediate")
        down_at = time.monotonic()
        try:
            yield self
        finally:
            time.sleep(max(0.0, seconds - (time.monotonic() - down_at)))
            self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_for(name)

    def close(self) -> None:
        """Shut down (immediate: the postmaster takes its backends with it) and clean up."""
        try:
            self.stop("immediate", timeout=10)
        except ServiceError:
            pass  # it was killed instead
        self._wait_for_orphans()
        super().close()

    def log_files(self) -> list[Path]:
        return [self.base / "postgres.log"]
