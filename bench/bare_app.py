"""The ceiling for bench/ack.py: a bare Flask app under waflow's own gunicorn settings.

Its only view takes the POST on waflow's webhook path, reads the body (as the
real view must) and answers 200, with no signature check and no broker. Run it
the way ack.py does: ``gunicorn -c gunicorn.conf.py bench.bare_app:app``.
"""
from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/webhooks/whatsapp")
def receive() -> Response:
    request.get_data(cache=False)
    return Response("OK", status=200, mimetype="text/plain")
