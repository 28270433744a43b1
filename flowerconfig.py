"""Flower settings (loaded from the working directory by `celery -A waflow flower`).

Flower is behind basic auth from the start: FLOWER_BASIC_AUTH ("user:password",
comma-separated for several users), required in production. Flower's
/healthcheck and /metrics skip auth, so expose its port only behind a proxy rule.
"""
from waflow.config import ConfigError, settings

basic_auth = [pair for pair in settings.flower_basic_auth.split(",") if pair]
if not basic_auth:
    raise ConfigError("FLOWER_BASIC_AUTH is not set; Flower refuses to start in production without it")
# Control actions (shutdown, pool resize, rate limits) are for the CLI, not a web page.
read_only = True
