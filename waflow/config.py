"""Every setting waflow reads from the environment, read once, in one place.

Each variable has its own default, chosen so that a fresh checkout runs with no
server at all: SQLite and kombu's filesystem transport under ``./var/``.

Secrets are listed once, in ``SECRETS``: each with its development stand-in and
the rule it must meet in production (set, not blank, not the stand-in, long
enough where it is a password). In production (``WAFLOW_ENV=production``) a
secret that breaks its rule stops the process at start with a message naming
the variable and the rule, never the value.

Development fails closed: with ``WAFLOW_ENV`` unset, waflow refuses a database,
broker, Redis or Graph API that is not on this machine, so the published
stand-ins can never quietly serve a deployment (``FAIL_CLOSED`` below).

The table in README.md ("Configuration") lists the same variables; a test keeps
the two in step.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

ENVIRONMENTS = ("development", "production")
BASE_DIR = Path(__file__).resolve().parent.parent

DEV_PHONE_NUMBER_ID = "100000000000001"
DEV_WABA_ID = "100000000000002"
# Meta's current pages use v25.0; pin the version, never call unversioned URLs.
GRAPH_API_URL = "https://graph.facebook.com/v25.0"


@dataclass(frozen=True)
class Secret:
    """One secret: its variable, what development uses when it is unset, and the production rule.

    In production a secret must be set, not blank, without surrounding whitespace (a pasted newline
    would silently break a signature), not its stand-in, and at least ``min_length`` characters.
    ``pairs``: the value is ``user:password[,user:password]`` and each password meets the rule.
    ``used_by``: the process that refuses to start without it (``None``: every process)."""

    variable: str
    stand_in: str
    min_length: int = 1
    used_by: str | None = None
    pairs: bool = False
    meaning: str = ""

    def broken_rule(self, value: str | None) -> str | None:
        """The production rule ``value`` breaks, or None. Never quotes the value."""
        if value is None or value == "":
            return "is not set"
        if not value.strip():
            return "is blank"
        if value != value.strip():
            return "has leading or trailing whitespace"
        if value == self.stand_in:
            return "is the published development stand-in"
        if self.pairs:
            for pair in value.split(","):
                user, sep, password = pair.partition(":")
                if not sep or not user.strip():
                    return "must be user:password pairs, each with a user name"
                if len(password) < self.min_length:
                    return f"needs a password of at least {self.min_length} characters for every user"
            return None
        if len(value) < self.min_length:
            return f"must be at least {self.min_length} characters long"
        return None


# Every secret waflow reads; README.md ("Configuration") states the same rules.
SECRETS: tuple[Secret, ...] = (
    # Meta's app secrets are 32 hex characters; 16 refuses a placeholder such as "secret".
    Secret("WHATSAPP_APP_SECRET", "waflow-dev-app-secret", min_length=16,
           meaning="the key of X-Hub-Signature-256: whoever knows it can forge a client's message"),
    # Chosen by the operator and typed into Meta's dashboard: a password, so a long random one.
    Secret("WHATSAPP_VERIFY_TOKEN", "waflow-dev-verify-token", min_length=16,
           meaning="the token that answers Meta's subscription handshake"),
    Secret("WHATSAPP_ACCESS_TOKEN", "waflow-dev-access-token", min_length=16,
           meaning="the Bearer token every send to Meta carries"),
    Secret("FLOWER_BASIC_AUTH", "admin:admin", min_length=16, used_by="flower", pairs=True,
           meaning="the list of Flower's users (Flower shows every worker, queue and task)"),
    # Checked by the drafter process (waflow.drafting.make_drafter), and only when DRAFTER=chat.
    Secret("DRAFT_LLM_API_KEY", "waflow-dev-llm-key", min_length=16, used_by="drafter",
           meaning="the Bearer key of the chat-completions model that drafts replies"),
    # Checked by every process when media goes to object storage (WAFLOW_MEDIA_URL=s3://...): the web
    # reads the files back, the media worker writes them, the sender uploads them. AWS secret keys are
    # 40 characters; 16 refuses a placeholder such as "minioadmin".
    Secret("AWS_SECRET_ACCESS_KEY", "waflow-dev-s3-secret-key", min_length=16, used_by="object storage",
           meaning="the key that signs every request to the media bucket of WAFLOW_MEDIA_URL"),
    # Checked by the dashboard process (waflow/dashboard/startup.py). 32 characters: a random key of 192 bits
    # or more, as `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'` prints.
    Secret("SECRET_KEY", "waflow-dev-secret-key-for-development-only", min_length=32, used_by="dashboard",
           meaning="the key that signs the dashboard's session cookies and CSRF tokens: whoever knows it can "
                   "sign in as any lawyer"),
)
SECRET = {s.variable: s for s in SECRETS}

# Development's fail-closed rule: with WAFLOW_ENV unset, these must point at this machine (or be the
# embedded default). Set WAFLOW_ENV=development to point a development process elsewhere on purpose.
FAIL_CLOSED = ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "WHATSAPP_API_URL")


# Every variable load() reads; README.md's configuration table lists the same names.
VARIABLES = (
    "WAFLOW_ENV", "DATABASE_URL", "CELERY_BROKER_URL", "WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN",
    "FLOWER_BASIC_AUTH", "WAFLOW_VAR_DIR", "WAFLOW_MAX_BODY_BYTES", "WAFLOW_PUBLISH_TIMEOUT", "WAFLOW_LOG_LEVEL",
    "PORT", "WEB_CONCURRENCY", "WEB_THREADS", "WAFLOW_BODY_TIMEOUT",
    "WHATSAPP_API_URL", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_WABA_ID", "WHATSAPP_SEND_RATE",
    "REDIS_URL",
    "SIMULATOR_PORT", "SIMULATOR_WEBHOOK_URL",
    "WAFLOW_QUEUE_TYPE", "WAFLOW_DEAD_LETTER_RETENTION_DAYS",
    "DRAFTER", "DRAFT_LLM_URL", "DRAFT_LLM_MODEL", "DRAFT_LLM_API_KEY", "DRAFT_LLM_TIMEOUT",
    "DRAFT_LLM_SEND_CLIENT_TEXT", "WAFLOW_KNOWLEDGE_DIR", "DRAFT_QUIET_SECONDS", "WAFLOW_DEFAULT_COUNTRY_CODE",
    "WAFLOW_MEDIA_DIR", "WAFLOW_MEDIA_DIR_SHARED", "WAFLOW_MEDIA_URL", "WAFLOW_MEDIA_RETENTION_DAYS",
    "WAFLOW_MEDIA_DOWNLOAD_RATE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "SECRET_KEY", "WAFLOW_TIMEZONE", "WAFLOW_TRUSTED_PROXIES", "WAFLOW_FIRM_NAME",
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
    body_timeout: float
    whatsapp_api_url: str
    access_token: str = field(repr=False)
    phone_number_id: str
    waba_id: str
    send_rate: int
    default_country_code: int
    redis_url: str = field(repr=False)
    simulator_port: int
    simulator_webhook_url: str
    queue_type: str
    dead_letter_retention_days: int
    # The AI reply drafter (waflow/drafting/, _drafting_settings below).
    drafter: str
    draft_llm_url: str
    draft_llm_model: str
    draft_llm_api_key: str = field(repr=False)
    draft_llm_timeout: float
    draft_llm_send_client_text: bool
    knowledge_dir: Path
    # Seconds a conversation must stay quiet before its reply is drafted (waflow/drafts/requests.py).
    draft_quiet_seconds: float
    # Where media files live (waflow.mediastore, _media_settings below).
    media_dir: Path
    media_dir_shared: bool
    media_url: str
    media_retention_days: int | None
    media_download_rate: int
    s3_endpoint_url: str
    s3_region: str
    s3_access_key_id: str = field(repr=False)
    s3_secret_access_key: str = field(repr=False)
    s3_session_token: str = field(repr=False)
    # The lawyers' dashboard (waflow/dashboard/, _dashboard_settings below).
    secret_key: str = field(repr=False)
    timezone: str
    trusted_proxies: int
    firm_name: str

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

    @property
    def limiter_storage_uri(self) -> str:
        """Where the dashboard counts failed logins: the Redis of REDIS_URL, shared by every dashboard process;
        on the embedded default (no Redis), each process's memory."""
        return self.redis_url or "memory://"


def is_local_host(host: str | None) -> bool:
    """True for this machine: no host (a Unix socket), ``localhost`` or a loopback address."""
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return "?"  # unparseable: not known to be local


def _is_local(name: str, url: str) -> bool:
    """Whether the service ``url`` of variable ``name`` is on this machine (or needs no server)."""
    scheme = url.split("://", 1)[0]
    if name == "DATABASE_URL" and scheme.startswith("sqlite"):
        return True
    if name == "CELERY_BROKER_URL" and scheme in ("embedded", "filesystem", "memory"):
        return True
    if name == "REDIS_URL" and (not url or scheme == "unix"):
        return True
    return is_local_host(_host(url))


def _check_production(env: Mapping[str, str], database_url: str, broker_url: str, api_url: str) -> None:
    for secret in SECRETS:
        if secret.used_by is None:
            broken = secret.broken_rule(env.get(secret.variable))
            if broken:
                raise ConfigError(f"{secret.variable} {broken}, which production refuses "
                                  f"({secret.variable} is {secret.meaning})")
    if not env.get("WHATSAPP_PHONE_NUMBER_ID", "").strip():
        raise ConfigError("WHATSAPP_PHONE_NUMBER_ID is not set; waflow refuses to start in production without it")
    if database_url.startswith("sqlite"):
        raise ConfigError("DATABASE_URL is not set (or is SQLite); production needs PostgreSQL")
    if broker_url.split("://", 1)[0] in ("embedded", "filesystem", "memory"):
        raise ConfigError("CELERY_BROKER_URL is not set (or is the embedded broker); production needs RabbitMQ")
    if not api_url.startswith("https://") or is_local_host(_host(api_url)):
        raise ConfigError("WHATSAPP_API_URL must be Meta's Graph API over https in production, "
                          "never this machine or the Meta simulator")


def _check_fail_closed(env: Mapping[str, str], urls: Mapping[str, str]) -> None:
    """With WAFLOW_ENV unset, refuse any service that is not on this machine (``FAIL_CLOSED``)."""
    for name in FAIL_CLOSED:
        if env.get(name) and not _is_local(name, urls[name]):
            raise ConfigError(
                f"{name} points off this machine but WAFLOW_ENV is not set: waflow would serve it with the "
                "published development stand-ins. Set WAFLOW_ENV=production (with real secrets) for a "
                "deployment, or WAFLOW_ENV=development to use a remote service from a development machine")


DRAFTERS = ("offline", "chat")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw == "true"


def _drafting_settings(env: Mapping[str, str], production: bool) -> dict[str, object]:
    """The drafter's settings. The chat drafter sends client text to another party's model, so it runs only
    where the firm said so: in production always with DRAFT_LLM_SEND_CLIENT_TEXT=true, and elsewhere as soon
    as the model is not on this machine (a deployment that forgot WAFLOW_ENV must not leak either)."""
    drafter = env.get("DRAFTER") or "offline"
    if drafter not in DRAFTERS:
        raise ConfigError(f"DRAFTER must be one of {', '.join(DRAFTERS)}, got {drafter!r}")
    url = (env.get("DRAFT_LLM_URL") or "").rstrip("/")
    model = env.get("DRAFT_LLM_MODEL") or ""
    send_client_text = _bool(env, "DRAFT_LLM_SEND_CLIENT_TEXT", False)
    if drafter == "chat":
        if not url.startswith(("http://", "https://")):
            raise ConfigError("DRAFT_LLM_URL must be the model server's http(s) base URL when DRAFTER=chat")
        if not model.strip():
            raise ConfigError("DRAFT_LLM_MODEL is not set; DRAFTER=chat needs the model's name")
        local = is_local_host(_host(url))
        if (production or not local) and not send_client_text:
            raise ConfigError(
                "DRAFTER=chat sends client messages to the model at DRAFT_LLM_URL, which "
                + ("production" if production else "a model off this machine")
                + " refuses unless DRAFT_LLM_SEND_CLIENT_TEXT=true records that the firm chose it")
        if production and not (url.startswith("https://") or local):
            raise ConfigError("DRAFT_LLM_URL must use https in production (or be on this machine)")
    return {
        "drafter": drafter,
        "draft_llm_url": url,
        "draft_llm_model": model,
        # Checked by the drafter process only (make_drafter, require()), and only when DRAFTER=chat.
        "draft_llm_api_key": env.get("DRAFT_LLM_API_KEY")
        or ("" if production else SECRET["DRAFT_LLM_API_KEY"].stand_in),
        # A draft is not urgent to the second; 20 s lets a busy model answer, the offline draft follows if not.
        "draft_llm_timeout": _float(env, "DRAFT_LLM_TIMEOUT", 20.0, 1.0, 300.0),
        "draft_llm_send_client_text": send_client_text,
        # The firm's knowledge base (docs/knowledge-base.md); by default the shipped sample.
        "knowledge_dir": Path(env.get("WAFLOW_KNOWLEDGE_DIR") or BASE_DIR / "knowledge").resolve(),
        # A client typing three lines in a row sends them seconds apart: each pushes the draft this long,
        # so one draft answers all three; and a lawyer waits at most this long for the draft to start.
        "draft_quiet_seconds": _float(env, "DRAFT_QUIET_SECONDS", 3.0, 0.0, 60.0),
    }


def _media_settings(env: Mapping[str, str], production: bool) -> dict[str, object]:
    """Where media files are kept: a local directory (WAFLOW_MEDIA_DIR) or S3-compatible object storage
    (WAFLOW_MEDIA_URL=s3://bucket/prefix). On a platform where the web and the media worker do not share a
    disk (Heroku's dynos), files one process wrote are not there for the other: production refuses the
    local directory unless WAFLOW_MEDIA_DIR_SHARED=true says every process sees the same one."""
    media_url = (env.get("WAFLOW_MEDIA_URL") or "").strip().rstrip("/")
    endpoint = (env.get("AWS_ENDPOINT_URL") or "").rstrip("/")
    shared = _bool(env, "WAFLOW_MEDIA_DIR_SHARED", False)
    raw_days = env.get("WAFLOW_MEDIA_RETENTION_DAYS")
    days = None if raw_days in (None, "") else _int(env, "WAFLOW_MEDIA_RETENTION_DAYS", 0, 1, 36500)
    if media_url:
        parts = urlsplit(media_url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError("WAFLOW_MEDIA_URL must be s3://bucket or s3://bucket/prefix (S3-compatible object "
                              "storage; leave it unset for the local directory WAFLOW_MEDIA_DIR)")
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ConfigError("AWS_ENDPOINT_URL must be the object store's http(s) base URL")
        local_endpoint = bool(endpoint) and is_local_host(_host(endpoint))
        if production:
            rule = SECRET["AWS_SECRET_ACCESS_KEY"]
            broken = rule.broken_rule(env.get(rule.variable))
            if broken:
                raise ConfigError(f"{rule.variable} {broken}, which production refuses with WAFLOW_MEDIA_URL set "
                                  f"({rule.variable} is {rule.meaning})")
            if not (env.get("AWS_ACCESS_KEY_ID") or "").strip():
                raise ConfigError("AWS_ACCESS_KEY_ID is not set; production needs it with WAFLOW_MEDIA_URL")
            if endpoint.startswith("http://") and not local_endpoint:
                raise ConfigError("AWS_ENDPOINT_URL must use https in production (or be on this machine)")
        elif not env.get("WAFLOW_ENV") and not local_endpoint:
            # Development fails closed (FAIL_CLOSED): no bucket off this machine with the published stand-ins.
            raise ConfigError(
                "WAFLOW_MEDIA_URL points off this machine (AWS_ENDPOINT_URL is not a local address) but WAFLOW_ENV "
                "is not set. Set WAFLOW_ENV=production (with real credentials) for a deployment, or "
                "WAFLOW_ENV=development to use a remote bucket from a development machine")
    elif production and not shared:
        raise ConfigError(
            "WAFLOW_MEDIA_URL is not set: production needs object storage for media (s3://bucket/prefix), "
            "because the web and the media worker may not share a disk (Heroku's dynos do not); set "
            "WAFLOW_MEDIA_DIR_SHARED=true only if every process sees the same WAFLOW_MEDIA_DIR")
    return {
        "media_dir": Path(env.get("WAFLOW_MEDIA_DIR") or _var_dir(env) / "media").resolve(),
        "media_dir_shared": shared,
        "media_url": media_url,
        # None: keep media for good (the default); otherwise `flask --app wsgi media purge-expired`
        # deletes files this many days old.
        "media_retention_days": days,
        # MB/s each download may take (0: no limit). Downloads written to the disk PostgreSQL and RabbitMQ
        # commit to saturate it, and inbound messages then wait seconds behind them (docs/benchmarks.md,
        # "Media"); a law firm's attachments arrive a few a minute and need nowhere near it.
        "media_download_rate": _int(env, "WAFLOW_MEDIA_DOWNLOAD_RATE", 16, 0, 10000),
        "s3_endpoint_url": endpoint,
        "s3_region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        "s3_access_key_id": env.get("AWS_ACCESS_KEY_ID") or ("" if production else "waflow-dev-s3-key-id"),
        "s3_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY")
        or ("" if production else SECRET["AWS_SECRET_ACCESS_KEY"].stand_in),
        "s3_session_token": env.get("AWS_SESSION_TOKEN") or "",
    }


def _dashboard_settings(env: Mapping[str, str], production: bool) -> dict[str, object]:
    """The lawyers' dashboard's settings. SECRET_KEY is checked by the dashboard process only (require())."""
    zone = env.get("WAFLOW_TIMEZONE") or "Asia/Jakarta"
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"WAFLOW_TIMEZONE must be a time zone name such as Asia/Jakarta, got {zone!r}") from None
    firm_name = (env.get("WAFLOW_FIRM_NAME") or "waflow").strip()
    if len(firm_name) > 80:
        raise ConfigError("WAFLOW_FIRM_NAME must be at most 80 characters (it heads every dashboard page)")
    return {
        "secret_key": env.get("SECRET_KEY") or ("" if production else SECRET["SECRET_KEY"].stand_in),
        # Times are stored in UTC and shown to lawyers in the firm's zone.
        "timezone": zone,
        # How many proxies in front of the dashboard set X-Forwarded-For/-Proto: only their hops are believed
        # (werkzeug's ProxyFix). 0 believes no such header, which anyone can send.
        "trusted_proxies": _int(env, "WAFLOW_TRUSTED_PROXIES", 0, 0, 10),
        "firm_name": firm_name or "waflow",
    }


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    mode = env.get("WAFLOW_ENV") or "development"
    if mode not in ENVIRONMENTS:
        raise ConfigError(f"WAFLOW_ENV must be one of {', '.join(ENVIRONMENTS)}, got {mode!r}")
    production = mode == "production"

    def secret(name: str) -> str:
        # Production has checked every secret of every process already (_check_production).
        return env.get(name) or ("" if production else SECRET[name].stand_in)

    database_url, broker_url = _database_url(env), _broker_url(env)
    broker_is_embedded = broker_url.split("://", 1)[0] in ("embedded", "filesystem")
    port = _int(env, "PORT", 5000, 1, 65535)
    simulator_port = _int(env, "SIMULATOR_PORT", 5900, 1, 65535)
    # In development the Meta simulator (waflow.simulator) stands in for Meta's Graph API.
    api_url = (env.get("WHATSAPP_API_URL") or (
        GRAPH_API_URL if production else f"http://127.0.0.1:{simulator_port}/v25.0")).rstrip("/")
    # The send limiter's shared store. Empty on the embedded broker: the limiter then shares
    # its state through a file under WAFLOW_VAR_DIR (one host). Never a per-process limit.
    redis_url = env.get("REDIS_URL") or ("" if broker_is_embedded else "redis://127.0.0.1:6379/0")
    if production:
        _check_production(env, database_url, broker_url, api_url)
    elif not env.get("WAFLOW_ENV"):
        _check_fail_closed(env, {"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url,
                                 "REDIS_URL": redis_url, "WHATSAPP_API_URL": api_url})
    queue_type = env.get("WAFLOW_QUEUE_TYPE") or "classic"
    if queue_type not in QUEUE_TYPES:
        raise ConfigError(f"WAFLOW_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}")

    return Settings(
        env=mode,
        database_url=database_url,
        broker_url=broker_url,
        app_secret=secret("WHATSAPP_APP_SECRET"),
        verify_token=secret("WHATSAPP_VERIFY_TOKEN"),
        # Checked by the process that uses it (flowerconfig.py, require()): only Flower needs it.
        flower_basic_auth=secret("FLOWER_BASIC_AUTH"),
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
        # A request holds a web thread from its first byte to its last (waflow.webserver): one still
        # arriving after this long is cut. 10 s lets a 3 MiB body through a link as slow as 320 KB/s.
        body_timeout=_float(env, "WAFLOW_BODY_TIMEOUT", 10.0, 1.0, 120.0),
        whatsapp_api_url=api_url,
        access_token=secret("WHATSAPP_ACCESS_TOKEN"),
        phone_number_id=env.get("WHATSAPP_PHONE_NUMBER_ID") or DEV_PHONE_NUMBER_ID,
        # Optional: lets `broadcast` look a template up and check its parameter count before queueing.
        waba_id=env.get("WHATSAPP_WABA_ID") or ("" if production else DEV_WABA_ID),
        # Meta's default per-number throughput; numbers are upgraded automatically up to 1000/s.
        send_rate=_int(env, "WHATSAPP_SEND_RATE", 80, 1, 1000),
        # A recipient written with a leading 0 (0812…) is a national number of this country (62: Indonesia).
        default_country_code=_int(env, "WAFLOW_DEFAULT_COUNTRY_CODE", 62, 1, 999),
        redis_url=redis_url,
        simulator_port=simulator_port,
        simulator_webhook_url=env.get("SIMULATOR_WEBHOOK_URL") or f"http://127.0.0.1:{port}/webhooks/whatsapp",
        # quorum: replicated queues for a RabbitMQ cluster (docs/reliability.md).
        queue_type=queue_type,
        # Dead letters hold client text: they are deleted this many days after they were recorded.
        dead_letter_retention_days=_int(env, "WAFLOW_DEAD_LETTER_RETENTION_DAYS", 30, 1, 3650),
        **_drafting_settings(env, production),
        **_media_settings(env, production),
        **_dashboard_settings(env, production),
    )


def require(settings: Settings, variable: str, value: str) -> None:
    """For a secret only one process needs (``Secret.used_by``): refuse it in production if it breaks its rule."""
    rule = SECRET[variable]
    broken = rule.broken_rule(value) if settings.production else None
    if broken:
        raise ConfigError(f"{variable} {broken}, which {rule.used_by} refuses in production "
                          f"({variable} is {rule.meaning})")


def refuse_to_start(exc: ConfigError) -> SystemExit:
    """Print why the configuration is refused (one line, no traceback, no value) and exit with EX_CONFIG."""
    print(f"waflow refuses to start: {exc}", file=sys.stderr, flush=True)
    return SystemExit(78)


try:
    settings = load()
except ConfigError as _refused:
    raise refuse_to_start(_refused) from None
