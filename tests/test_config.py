"""Configuration: one module, a default per variable, loud failures in production."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from waflow import config


def test_every_variable_has_a_working_default():
    settings = config.load({})
    assert settings.env == "development"
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("/var/waflow.db")
    assert settings.embedded_broker
    assert settings.max_body_bytes == 3 * 1024 * 1024
    assert (settings.port, settings.web_concurrency, settings.web_threads) == (5000, 2, 16)
    assert settings.body_timeout == 10.0
    # The Meta simulator stands in for Meta; the send limiter shares its state through a file.
    assert settings.whatsapp_api_url == "http://127.0.0.1:5900/v25.0"
    assert (settings.send_rate, settings.redis_url, settings.queue_type) == (80, "", "classic")
    assert settings.default_country_code == 62  # Indonesia: a recipient written 0812… is +62812…


def test_production_talks_to_meta_and_redis_by_default():
    settings = config.load(PRODUCTION)
    assert settings.whatsapp_api_url == "https://graph.facebook.com/v25.0"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


STRONG = "k3J9-q8Zr-Lm2P-w7Xc"  # 19 characters: meets every rule
PRODUCTION = {"WAFLOW_ENV": "production", "WHATSAPP_APP_SECRET": STRONG, "WHATSAPP_VERIFY_TOKEN": STRONG,
              "WHATSAPP_ACCESS_TOKEN": STRONG, "WHATSAPP_PHONE_NUMBER_ID": "1",
              "DATABASE_URL": "postgres://db/waflow", "CELERY_BROKER_URL": "amqp://rabbit//",
              "WAFLOW_MEDIA_DIR_SHARED": "true"}
# Every secret every process needs, and every way one can break its rule.
EVERY_PROCESS = [s.variable for s in config.SECRETS if s.used_by is None]
BROKEN = [("", "is not set"), ("   ", "is blank"), (f" {STRONG}\n", "has leading or trailing whitespace"),
          ("short-secret", "must be at least 16 characters")]


def test_every_secret_of_the_table_is_one_the_tests_cover():
    assert set(EVERY_PROCESS) == {"WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "WHATSAPP_ACCESS_TOKEN"}
    assert [s.variable for s in config.SECRETS if s.used_by == "flower"] == ["FLOWER_BASIC_AUTH"]


@pytest.mark.parametrize("variable", EVERY_PROCESS)
@pytest.mark.parametrize("value, rule", BROKEN)
def test_production_refuses_a_secret_that_breaks_its_rule_naming_the_variable_and_rule(variable, value, rule):
    with pytest.raises(config.ConfigError) as refused:
        config.load({**PRODUCTION, variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable} {rule}")
    if value.strip():
        assert value.strip() not in message  # the rule, never the value


@pytest.mark.parametrize("variable", EVERY_PROCESS)
def test_production_refuses_the_published_development_stand_in(variable):
    stand_in = config.SECRET[variable].stand_in
    with pytest.raises(config.ConfigError, match=f"^{variable} is the published development stand-in"):
        config.load({**PRODUCTION, variable: stand_in})


@pytest.mark.parametrize("variable", EVERY_PROCESS)
def test_production_refuses_to_start_without_a_secret_and_names_it(variable):
    env = {k: v for k, v in PRODUCTION.items() if k != variable}
    with pytest.raises(config.ConfigError, match=f"^{variable} is not set"):
        config.load(env)


@pytest.mark.parametrize("missing", ["WHATSAPP_PHONE_NUMBER_ID", "DATABASE_URL", "CELERY_BROKER_URL"])
def test_production_refuses_to_start_without_a_setting_and_names_it(missing):
    env = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(config.ConfigError, match=missing):
        config.load(env)


@pytest.mark.parametrize("name, value", [("DATABASE_URL", "sqlite:///prod.db"),
                                         ("CELERY_BROKER_URL", "embedded://"),
                                         ("CELERY_BROKER_URL", "filesystem://")])
def test_production_refuses_the_embedded_database_and_broker(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.load({**PRODUCTION, name: value})


@pytest.mark.parametrize("url", ["http://127.0.0.1:5900/v25.0", "https://localhost/v25.0", "http://[::1]:5900/v25.0",
                                 "http://graph.facebook.com/v25.0"])
def test_production_refuses_a_graph_api_on_this_machine_or_without_https(url):
    with pytest.raises(config.ConfigError, match="WHATSAPP_API_URL must be Meta's Graph API over https"):
        config.load({**PRODUCTION, "WHATSAPP_API_URL": url})


def test_production_starts_with_everything_set():
    settings = config.load(PRODUCTION)
    assert settings.production and settings.amqp_broker


@pytest.mark.parametrize("name, url", [
    ("DATABASE_URL", "postgresql://u:p@db.example.com/waflow"),
    ("CELERY_BROKER_URL", "amqp://u:p@10.0.0.5:5672/waflow"),
    ("REDIS_URL", "redis://cache.internal:6379/0"),
    ("WHATSAPP_API_URL", "https://graph.facebook.com/v25.0"),
])
def test_development_without_waflow_env_refuses_a_service_off_this_machine(name, url):
    with pytest.raises(config.ConfigError, match=f"^{name} points off this machine but WAFLOW_ENV is not set"):
        config.load({name: url})
    # Chosen on purpose, development may use it.
    assert config.load({"WAFLOW_ENV": "development", name: url})


@pytest.mark.parametrize("name, url", [
    ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"), ("DATABASE_URL", "postgresql:///waflow"),
    ("DATABASE_URL", "postgresql://u@localhost/waflow"), ("CELERY_BROKER_URL", "amqp://guest:guest@[::1]:5672//"),
    ("CELERY_BROKER_URL", "memory://"), ("REDIS_URL", "redis://127.0.0.1:6379/15"), ("REDIS_URL", "unix:///run/r.sock"),
    ("WHATSAPP_API_URL", "http://127.0.0.1:5901/v25.0"),
])
def test_development_without_waflow_env_takes_services_on_this_machine(name, url):
    assert config.load({name: url}).env == "development"


@pytest.mark.parametrize("value, rule", [
    ("", "is not set"), (":", "must be user:password pairs, each with a user name"),
    ("admin:admin", "is the published development stand-in"),
    ("ops:short", "needs a password of at least 16 characters for every user"),
    (f"ops:{STRONG},audit:short", "needs a password of at least 16 characters for every user"),
    (f":{STRONG}", "must be user:password pairs, each with a user name"),
    (STRONG, "must be user:password pairs, each with a user name"),
])
def test_flower_refuses_weak_credentials_in_production(value, rule):
    settings = config.load({**PRODUCTION, "FLOWER_BASIC_AUTH": value})
    with pytest.raises(config.ConfigError, match=f"^FLOWER_BASIC_AUTH {rule}, which flower refuses in production"):
        config.require(settings, "FLOWER_BASIC_AUTH", value)


def test_flower_takes_strong_credentials_in_production_and_anything_in_development():
    settings = config.load({**PRODUCTION, "FLOWER_BASIC_AUTH": f"ops:{STRONG},audit:{STRONG}x"})
    config.require(settings, "FLOWER_BASIC_AUTH", settings.flower_basic_auth)
    development = config.load({})
    assert development.flower_basic_auth == "admin:admin"
    config.require(development, "FLOWER_BASIC_AUTH", development.flower_basic_auth)


# --- real starts: each process kind refuses, with one line naming the variable and the rule ---------------------

FORGED = {**PRODUCTION, "WHATSAPP_APP_SECRET": "waflow-dev-app-secret"}
REFUSAL = ("waflow refuses to start: WHATSAPP_APP_SECRET is the published development stand-in, which production "
           "refuses (WHATSAPP_APP_SECRET is the key of X-Hub-Signature-256")


def _start(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(argv, cwd=ROOT, env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("kind, argv", [
    ("web", ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]),
    ("worker", ["celery", "-A", "waflow", "worker", "-Q", "wa.incoming.raw", "-n", "refused@%h"]),
    ("flower", ["celery", "-A", "waflow", "flower"]),
    ("cli", ["flask", "--app", "wsgi", "outbox", "list"]),
])
def test_each_process_refuses_to_start_in_production_with_a_stand_in(kind, argv):
    result = _start(argv, {**FORGED, "FLOWER_BASIC_AUTH": f"ops:{STRONG}"})
    assert result.returncode == 78, result.stderr[-2000:]
    assert REFUSAL in result.stderr
    assert "Traceback" not in result.stderr
    assert "waflow-dev-app-secret" not in result.stdout + result.stderr


def test_flower_refuses_to_start_in_production_with_weak_basic_auth():
    result = _start(["celery", "-A", "waflow", "flower"], {**PRODUCTION, "FLOWER_BASIC_AUTH": "admin:hunter2"})
    assert result.returncode == 78, result.stderr[-2000:]
    assert ("waflow refuses to start: FLOWER_BASIC_AUTH needs a password of at least 16 characters for every user"
            in result.stderr)
    assert "hunter2" not in result.stdout + result.stderr


def test_flower_listens_on_loopback_in_development_and_everywhere_in_production():
    code = "import flowerconfig; print(flowerconfig.address, flowerconfig.basic_auth)"
    development = _start([sys.executable, "-c", code], {})
    assert development.stdout.split() == ["127.0.0.1", "['admin:admin']"]
    production = _start([sys.executable, "-c", code], {**PRODUCTION, "FLOWER_BASIC_AUTH": f"ops:{STRONG}"})
    assert production.stdout.split() == ["0.0.0.0", f"['ops:{STRONG}']"]


def test_the_simulator_refuses_to_start_in_production():
    result = _start([sys.executable, "-m", "waflow.simulator", "--port", "1"], PRODUCTION)
    assert result.returncode != 0
    assert "waflow refuses to start: the Meta simulator never runs with WAFLOW_ENV=production" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_the_simulator_binds_only_to_loopback(host):
    result = _start([sys.executable, "-m", "waflow.simulator", "--host", host, "--port", "1"], {})
    assert result.returncode == 2
    assert "--host must be a loopback address" in result.stderr


def test_development_without_waflow_env_refuses_to_start_against_a_remote_database():
    result = _start(["flask", "--app", "wsgi", "outbox", "list"], {"DATABASE_URL": "postgresql://u@db.example.com/w"})
    assert result.returncode == 78
    assert "waflow refuses to start: DATABASE_URL points off this machine but WAFLOW_ENV is not set" in result.stderr


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/waflow", "postgresql://u:p@db:5432/waflow"])
def test_it_accepts_heroku_style_postgres_urls(url):
    settings = config.load({"WAFLOW_ENV": "development", "DATABASE_URL": url})
    assert settings.database_url == "postgresql+psycopg2://u:p@db:5432/waflow"


@pytest.mark.parametrize("name, value, message", [
    ("WAFLOW_ENV", "staging", "WAFLOW_ENV must be one of"),
    ("PORT", "http", "PORT must be a whole number"),
    ("WEB_THREADS", "0", "WEB_THREADS must be between"),
    ("WAFLOW_PUBLISH_TIMEOUT", "soon", "WAFLOW_PUBLISH_TIMEOUT must be a number"),
    ("WAFLOW_BODY_TIMEOUT", "0.5", "WAFLOW_BODY_TIMEOUT must be between 1.0 and 120.0"),
    ("WAFLOW_BODY_TIMEOUT", "forever", "WAFLOW_BODY_TIMEOUT must be a number"),
    ("WHATSAPP_SEND_RATE", "1001", "WHATSAPP_SEND_RATE must be between 1 and 1000"),
    ("WAFLOW_QUEUE_TYPE", "stream", "WAFLOW_QUEUE_TYPE must be one of"),
    ("WAFLOW_DEFAULT_COUNTRY_CODE", "ID", "WAFLOW_DEFAULT_COUNTRY_CODE must be a whole number"),
    ("WAFLOW_DEFAULT_COUNTRY_CODE", "1000", "WAFLOW_DEFAULT_COUNTRY_CODE must be between 1 and 999"),
])
def test_it_refuses_malformed_values_naming_the_variable(name, value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load({name: value})


def test_settings_never_show_a_secret():
    settings = config.load({"WAFLOW_ENV": "development", "WHATSAPP_APP_SECRET": "s3cr3t-value", "DATABASE_URL": "postgres://u:pw-db@h/d",
                            "CELERY_BROKER_URL": "amqp://u:pw-broker@h//", "FLOWER_BASIC_AUTH": "a:pw-flower",
                            "WHATSAPP_ACCESS_TOKEN": "EAAG-token", "REDIS_URL": "redis://:pw-redis@h/0"})
    shown = repr(settings) + str(settings)
    for secret in ("s3cr3t-value", "pw-db", "pw-broker", "pw-flower", "EAAG-token", "pw-redis"):
        assert secret not in shown


def test_the_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", readme, flags=re.M))
    assert set(config.VARIABLES) <= table


def test_no_module_but_config_reads_the_environment():
    offenders = [p.name for p in (ROOT / "waflow").rglob("*.py")
                 if p.name != "config.py" and re.search(r"os\.environ|os\.getenv", p.read_text())]
    assert offenders == []
