"""``flask --app wsgi users ...``: the people who sign in to the dashboard and decide on drafts.

A password is read from standard input when it is not a terminal (one line: ``... | flask --app wsgi
users create ...``), otherwise prompted for twice without echo. It never appears on a command line.
"""
from __future__ import annotations

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from waflow import demo_users, users
from waflow.db import transaction
from waflow.models import USER_LOCALES, USER_ROLES


@click.group("users", cls=AppGroup)
def users_group() -> None:
    """Lawyers and admins: create, list, change a password, deactivate."""


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _fail(exc: users.UserError, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": exc.code, "message": str(exc)}))
        raise SystemExit(1)
    raise click.ClickException(str(exc))


def _describe(person: users.Person) -> str:
    state = "active" if person.active else "deactivated"
    demo = "  demo" if person.is_demo else ""
    return f"{person.email}  {person.name}  {person.role}  {person.locale}  {state}{demo}"


@users_group.command("create")
@click.argument("email")
@click.option("--name", required=True, help="The person's name, as lawyers see it.")
@click.option("--role", type=click.Choice(USER_ROLES), required=True)
@click.option("--locale", type=click.Choice(USER_LOCALES), required=True, help="The dashboard's language for them.")
def create(email: str, name: str, role: str, locale: str) -> None:
    """Add a user; the password comes from standard input or a prompt."""
    password = _password()
    try:
        with transaction() as conn:
            person = users.create(conn, email, name=name, role=role, locale=locale, password=password)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"user {person.email} created ({person.role}, {person.locale})")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def list_users(as_json: bool) -> None:
    """Every user, active or not."""
    with transaction() as conn:
        people = users.listing(conn)
    if as_json:
        click.echo(json.dumps([{"email": p.email, "name": p.name, "role": p.role, "locale": p.locale,
                                "active": p.active, "is_demo": p.is_demo} for p in people]))
        return
    if not people:
        click.echo("no users yet: flask --app wsgi users create EMAIL --name NAME --role lawyer --locale id")
    for person in people:
        click.echo(_describe(person))


@users_group.command("set-password")
@click.argument("email")
def set_password(email: str) -> None:
    """Change a user's password (from standard input or a prompt); their open sessions end."""
    password = _password()
    try:
        with transaction() as conn:
            person = users.set_password(conn, email, password)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"password of {person.email} changed")


@users_group.command("deactivate")
@click.argument("email")
def deactivate(email: str) -> None:
    """Stop a user from deciding or signing in; their open sessions end, their decisions stay."""
    try:
        with transaction() as conn:
            person = users.deactivate(conn, email)
    except users.UserError as exc:
        _fail(exc)
    click.echo(f"user {person.email} deactivated")


@users_group.command("demo")
def demo() -> None:
    """Development: make the demo lawyer and demo admin once and print their passwords (bin/run calls it)."""
    settings = current_app.config["WAFLOW_SETTINGS"]
    path = settings.var_dir / demo_users.FILE_NAME
    try:
        with transaction() as conn:
            found = demo_users.ensure(conn, path, production=settings.production)
    except users.UserError as exc:
        _fail(exc)
    demo_users.write_file(path, found)
    click.echo(f"demo users (passwords kept in {path}):")
    for credential in found:
        shown = credential.password if credential.password else f"({credential.note})"
        click.echo(f"  {credential.role:<7} {credential.email:<22} {shown}")
