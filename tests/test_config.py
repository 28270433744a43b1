"""Configuration: one module, a default per variable, loud failures in production."""
from __future__ import annotations

import re
import subprocess
import sys

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
    # The Meta simulator stands in for Meta; the send limiter shares its state through a file.
    assert settings.whatsapp_api_url == "http://127.0.0.1:5900/v25.0"
    assert (settings.send_rate, settings.redis_url, settings.queue_type) == (80, "", "classic")


def test_production_talks_to_meta_and_redis_by_default():
    settings = config.load(PRODUCTION)
    assert settings.whatsapp_api_url == "https://graph.facebook.com/v25.0"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


PRODUCTION = {"WAFLOW_ENV": "production", "WHATSAPP_APP_SECRET": "s", "WHATSAPP_VERIFY_TOKEN": "t",
              "WHATSAPP_ACCESS_TOKEN": "a", "WHATSAPP_PHONE_NUMBER_ID": "1",
              "DATABASE_URL": "postgres://db/waflow", "CELERY_BROKER_URL": "amqp://rabbit//"}


@pytest.mark.parametrize("missing", ["WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "WHATSAPP_ACCESS_TOKEN",
                                     "WHATSAPP_PHONE_NUMBER_ID", "DATABASE_URL", "CELERY_BROKER_URL"])
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


def test_production_starts_with_everything_set():
    settings = config.load(PRODUCTION)
    assert settings.production and settings.amqp_broker


def test_the_web_process_stops_at_start_naming_the_missing_secret():
    env = {k: v for k, v in PRODUCTION.items() if k != "WHATSAPP_APP_SECRET"}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env={**env, "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "WHATSAPP_APP_SECRET is not set" in result.stderr


def test_flower_refuses_to_start_in_production_without_basic_auth():
    result = subprocess.run([sys.executable, "-c", "import flowerconfig"], cwd=ROOT, env={**PRODUCTION, "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH is not set" in result.stderr
    ok = subprocess.run([sys.executable, "-c", "import flowerconfig; print(flowerconfig.basic_auth)"], cwd=ROOT,
                        env={**PRODUCTION, "FLOWER_BASIC_AUTH": "ops:pw", "PATH": ""}, capture_output=True,
                        text=True, timeout=60)
    assert ok.stdout.strip() == "['ops:pw']"


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/waflow", "postgresql://u:p@db:5432/waflow"])
def test_it_accepts_heroku_style_postgres_urls(url):
    assert config.load({"DATABASE_URL": url}).database_url == "postgresql+psycopg2://u:p@db:5432/waflow"


@pytest.mark.parametrize("name, value, message", [
    ("WAFLOW_ENV", "staging", "WAFLOW_ENV must be one of"),
    ("PORT", "http", "PORT must be a whole number"),
    ("WEB_THREADS", "0", "WEB_THREADS must be between"),
    ("WAFLOW_PUBLISH_TIMEOUT", "soon", "WAFLOW_PUBLISH_TIMEOUT must be a number"),
    ("WHATSAPP_SEND_RATE", "1001", "WHATSAPP_SEND_RATE must be between 1 and 1000"),
    ("WAFLOW_QUEUE_TYPE", "stream", "WAFLOW_QUEUE_TYPE must be one of"),
])
def test_it_refuses_malformed_values_naming_the_variable(name, value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load({name: value})


def test_settings_never_show_a_secret():
    settings = config.load({"WHATSAPP_APP_SECRET": "s3cr3t-value", "DATABASE_URL": "postgres://u:pw-db@h/d",
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
