"""``/dashboard/users`` (admins only): who can sign in, in what role and language, and who is a demo user."""
from __future__ import annotations

from flask import Blueprint, render_template

from waflow import users
from waflow.dashboard.security import admin_required
from waflow.web import request_connection

bp = Blueprint("people", __name__, url_prefix="/dashboard")


@bp.route("/users")
@admin_required
def index() -> str:
    conn = request_connection()
    with conn.begin():
        people = users.listing(conn)
    return render_template("dashboard/people.html", people=people)
