"""What a web request borrows, and gives back when it ends: its database connection.

Following Flask's own pattern (the tutorial's ``get_db``/``close_db``), a request that uses
the database calls ``request_connection()``: the connection is checked out of the pool on
first use, shared by the rest of the request, and returned at ``teardown_appcontext``. A
route that never calls it (the webhook) never touches the pool. Whatever the request did
not commit is rolled back when the connection is returned.
"""
from __future__ import annotations

import sqlalchemy as sa
from flask import Flask, current_app, g

from waflow.db import get_engine

_KEY = "waflow_connection"


def request_connection() -> sa.Connection:
    """The current request's database connection, checked out on first use."""
    conn = g.get(_KEY)
    if conn is None:
        conn = get_engine(current_app.config["WAFLOW_SETTINGS"].database_url).connect()
        setattr(g, _KEY, conn)
    return conn


def _return_connection(_exc: BaseException | None = None) -> None:
    conn = g.pop(_KEY, None)
    if conn is not None:
        conn.close()  # rolls back anything the request left uncommitted


def init_app(app: Flask) -> None:
    """Give every request of ``app`` its connection back to the pool when it ends."""
    app.teardown_appcontext(_return_connection)
