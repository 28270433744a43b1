"""gunicorn settings for the web process (the webhook) and the dashboard process (values from waflow.config)."""
from waflow.config import settings

bind = f"0.0.0.0:{settings.port}"
workers = settings.web_concurrency
# Threads, not processes, per worker: a request spends its time waiting for the
# broker's confirm, and all threads of a process share one confirming publisher.
# gunicorn's gthread worker, plus a deadline (WAFLOW_BODY_TIMEOUT) on reading each
# request, so a client that stalls its upload cannot hold a thread (waflow/webserver.py).
worker_class = "waflow.webserver.DeadlineThreadWorker"
threads = settings.web_threads
# Meta's latency standard is 1 s at p99; nothing on the webhook path takes long.
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = settings.log_level.lower()
# gunicorn 27's control socket sits at one fixed path per user: several gunicorns on a host would share it.
control_socket_disable = True


def on_starting(server):
    """The dashboard's production refusals (waflow/dashboard/startup.py) run here, in the master, once: refused
    in a worker, the master would only start another. The webhook's line imports nothing of the dashboard."""
    if str(getattr(server.app, "app_uri", "") or "").startswith("waflow.dashboard"):
        from waflow.dashboard.startup import refuse_unsafe_start

        refuse_unsafe_start()
