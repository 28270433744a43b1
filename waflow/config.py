"""Every setting waflow reads from the environment, read once, in one place.

Each variable has its own default, chosen so that a fresh checkout runs with no
server at all: SQLite and kombu's filesystem transport under ``./var/``. In
production (``WAFLOW_ENV=production``) the secrets have no default: a missing
one stops the process at start with a message naming the variable.

The table in README.md ("Configuration") lists the same variables; a test keeps
the two in step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ENVIRONMENTS = ("development", "production")
BASE_DIR = Path(__file__).resolve().parent.parent

# Development-only stand-ins, so the README's one-liners work out of the box.
# They are refused in production.
DEV_APP_SECRET = "waflow-dev-app-secret"
DEV_VERIFY_TOKEN = "waflow-dev-verify-token"
DEV_ACCESS_TOKEN = "waflow-dev-access-token"
DEV_PHONE_NUMBER_ID = "100000000000001"
DEV_WABA_ID = "100000000000002"
# Meta's current pages use v25.0; pin the version, never call unversioned URLs.
GRAPH_API_URL = "https://graph.facebook.com/v25.0"


# Every variable load() reads; README.md's configuration table lists the same names.
VARIABLES = (
    "WAFLOW_ENV", "DATABASE_URL", "CELERY_BROKER_URL", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN",
    "FLOWER_BASIC_AUTH", "WAFLOW_VAR_DIR", "WAFLOW_MAX_BODY_BYTES", "WAFLOW_PUBLISH_TIMEOUT", "WAFLOW_LOG_LEVEL",
    "PORT", "WEB_CONCURRENCY", "WEB_THREADS",
    "WHATSAPP_API_URL", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_WABA_ID", "WHATSAPP_SEND_RATE",
    "REDIS_URL",
    "SIMULATOR_PORT", "SIMULATOR_WEBHOOK_URL",
    "WAFLOW_QUEUE_TYPE", "WAFLOW_DEAD_LETTER_RETENTION_DAYS",
)
QUEUE_TYPES = ("classic", "quorum")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _var_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("WAFLOW_VAR_DIR") or BASE_DIR / "var").resolve()


def _database_url(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL") or f"sqlite:///{_var_dir(env) / 'waflow.db'}"
    # Heroku and most PaaS hand out postgres://, which SQLAlchemy 2 no longer accepts, and
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; waflow's driver is psycopg2.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _broker_url(env: Mapping[str, str]) -> str:
    # waflow.embedded: kombu's filesystem transport with atomic writes, under WAFLOW_VAR_DIR.
    return env.get("CELERY_BROKER_URL") or "embedded://"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Typed settings; ``repr`` never shows a secret."""

    env: str
    database_url: str = field(repr=False)
    broker_url: str = field(repr=False)
    app_secret: str = field(repr=False)
    verify_token: str = field(repr=False)
    flower_basic_auth: str = field(repr=False)
    var_dir: Path
    max_body_bytes: int
    publish_timeout: float
    log_level: str
    port: int
    web_concurrency: int
    web_threads: int
    whatsapp_api_url: str
    access_token: str = field(repr=False)
    phone_number_id: str
    waba_id: str
    send_rate: int
    redis_url: str = field(repr=False)
    simulator_port: int
    simulator_webhook_url: str
    queue_type: str
    dead_letter_retention_days: int

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def embedded_broker(self) -> bool:
        """True on the no-server default (``embedded://``, or kombu's stock ``filesystem://``)."""
        return self.broker_url.split("://", 1)[0] in ("embedded", "filesystem")

    @property
    def amqp_broker(self) -> bool:
        return self.broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    mode = env.get("WAFLOW_ENV") or "development"
    if mode not in ENVIRONMENTS:
        raise ConfigError(f"WAFLOW_ENV must be one of {', '.join(ENVIRONMENTS)}, got {mode!r}")
    production = mode == "production"

    def secret(name: str, dev_default: str) -> str:
        value = env.get(name, "")
        if value:
            return value
        if production:
            raise ConfigError(f"{name} is not set; waflow refuses to start in production without it")
        return dev_default

    database_url, broker_url = _database_url(env), _broker_url(env)
    if production and database_url.startswith("sqlite"):
        raise ConfigError("DATABASE_URL is not set (or is SQLite); production needs PostgreSQL")
    if production and broker_url.split("://", 1)[0] in ("embedded", "filesystem"):
        raise ConfigError("CELERY_BROKER_URL is not set (or is the embedded broker); production needs RabbitMQ")

    broker_is_embedded = broker_url.split("://", 1)[0] in ("embedded", "filesystem")
    port = _int(env, "PORT", 5000, 1, 65535)
    simulator_port = _int(env, "SIMULATOR_PORT", 5900, 1, 65535)
    queue_type = env.get("WAFLOW_QUEUE_TYPE") or "classic"
    if queue_type not in QUEUE_TYPES:
        raise ConfigError(f"WAFLOW_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}")

    return Settings(
        env=mode,
        database_url=database_url,
        broker_url=broker_url,
        app_secret=secret("WHATSAPP_APP_SECRET", DEV_APP_SECRET),
        verify_token=secret("WHATSAPP_VERIFY_TOKEN", DEV_VERIFY_TOKEN),
        # Checked where it is used (flowerconfig.py): only Flower needs it.
        flower_basic_auth=env.get("FLOWER_BASIC_AUTH") or ("" if production else "admin:admin"),
        var_dir=_var_dir(env),
        # Meta's payloads are up to 3 MB; 3 MiB leaves room and refuses anything bigger.
        max_body_bytes=_int(env, "WAFLOW_MAX_BODY_BYTES", 3 * 1024 * 1024, 1024, 64 * 1024 * 1024),
        # Meta redelivers on any non-200; answering 503 within a second beats hanging.
        publish_timeout=_float(env, "WAFLOW_PUBLISH_TIMEOUT", 0.9, 0.05, 30.0),
        log_level=(env.get("WAFLOW_LOG_LEVEL") or "INFO").upper(),
        port=port,
        # Two processes for two cores; threads wait on the broker's confirms, not the CPU.
        web_concurrency=_int(env, "WEB_CONCURRENCY", 2, 1, 64),
        web_threads=_int(env, "WEB_THREADS", 16, 1, 256),
        # In development the Meta simulator (waflow.simulator) stands in for Meta's Graph API.
        whatsapp_api_url=(env.get("WHATSAPP_API_URL") or (
            GRAPH_API_URL if production else f"http://127.0.0.1:{simulator_port}/v25.0")).rstrip("/"),
        access_token=secret("WHATSAPP_ACCESS_TOKEN", DEV_ACCESS_TOKEN),
        phone_number_id=secret("WHATSAPP_PHONE_NUMBER_ID", DEV_PHONE_NUMBER_ID),
        # Optional: lets `broadcast` look a template up and check its parameter count before queueing.
        waba_id=env.get("WHATSAPP_WABA_ID") or ("" if production else DEV_WABA_ID),
        # Meta's default per-number throughput; numbers are upgraded automatically up to 1000/s.
        send_rate=_int(env, "WHATSAPP_SEND_RATE", 80, 1, 1000),
        # The send limiter's shared store. Empty on the embedded broker: the limiter then shares
        # its state through a file under WAFLOW_VAR_DIR (one host). Never a per-process limit.
        redis_url=env.get("REDIS_URL") or ("" if broker_is_embedded else "redis://127.0.0.1:6379/0"),
        simulator_port=simulator_port,
        simulator_webhook_url=env.get("SIMULATOR_WEBHOOK_URL") or f"http://127.0.0.1:{port}/webhooks/whatsapp",
        # quorum: replicated queues for a RabbitMQ cluster (docs/reliability.md).
        queue_type=queue_type,
        # Dead letters hold client text: they are deleted this many days after they were recorded.
        dead_letter_retention_days=_int(env, "WAFLOW_DEAD_LETTER_RETENTION_DAYS", 30, 1, 3650),
    )


settings = load()

