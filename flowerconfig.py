"""Flower settings (loaded from the working directory by `celery -A waflow flower`).

Flower is behind basic auth from the start: FLOWER_BASIC_AUTH ("user:password",
comma-separated for several users). In production every password must be at
least 16 characters and the development stand-in (admin:admin) is refused:
Flower shows every worker, queue and task.

Flower's /healthcheck and /metrics answer without auth (Flower's own choice):
README.md ("Deploy") gives the proxy rule that keeps them private.
"""
from waflow import config

_settings = config.settings
try:
    config.require(_settings, "FLOWER_BASIC_AUTH", _settings.flower_basic_auth)
except config.ConfigError as _refused:
    raise config.refuse_to_start(_refused) from None

basic_auth = [pair for pair in _settings.flower_basic_auth.split(",") if pair]
# A platform routes to the port it gives ($PORT) on every interface; on a developer's machine
# Flower answers on loopback only. `--address` on the command line still wins.
address = "0.0.0.0" if _settings.production else "127.0.0.1"
# Control actions (shutdown, pool resize, rate limits) are for the CLI, not a web page.
read_only = True
