"""The demo lawyer and demo admin that ``bin/run`` signs in with: made once, with random passwords.

``bin/run`` calls ``bin/flask users demo`` at every start. The first time it creates both users (marked
``is_demo``) with random passwords and keeps the passwords in ``WAFLOW_VAR_DIR/demo-users.txt``, readable by
its owner only (0600); later starts change nothing and print the same passwords again. A demo user whose
password is not in the file any more (the file was deleted, the database was not) gets a new one. A demo
user someone deactivated stays deactivated, and an address a real user holds is never touched.

Production refuses both: this command, and a dashboard while a demo user is active
(``waflow/dashboard/startup.py``).
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from waflow import users

logger = logging.getLogger(__name__)

FILE_NAME = "demo-users.txt"


@dataclass(frozen=True)
class DemoUser:
    role: str
    email: str
    name: str
    locale: str


# One of each role, one in each language, so a fresh checkout shows both.
DEMO_USERS = (
    DemoUser("lawyer", "lawyer@demo.invalid", "Ratna Sari (demo)", "id"),
    DemoUser("admin", "admin@demo.invalid", "Budi Hartono (demo)", "en"),
)


@dataclass(frozen=True)
class Credential:
    """A demo user as ``users demo`` reports it: the password when one can sign in with it, else why not."""

    role: str
    email: str
    password: str | None
    note: str = ""


class DemoRefused(users.UserError):
    code = "demo_refused"


def _new_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 bits


def read_file(path: Path) -> dict[str, str]:
    """The passwords kept in ``path``: email -> password (empty if there is no file)."""
    kept: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and not line.startswith("#"):
                kept[parts[1]] = parts[2]
    return kept


def write_file(path: Path, credentials: list[Credential]) -> None:
    """Write the passwords to ``path``, readable and writable by its owner only, replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# waflow's demo users (development only): role email password\n" + "".join(
        f"{c.role} {c.email} {c.password}\n" for c in credentials if c.password)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # a file left by an earlier run may have had other bits
        out.write(text)
    os.replace(temporary, path)


def ensure(conn: sa.Connection, path: Path, *, production: bool) -> list[Credential]:
    """Make the demo users if they are missing, in the caller's transaction; the credentials to print.
    The caller writes the file after its commit (``write_file``)."""
    if production:
        raise DemoRefused("production has no demo users: create real ones with `users create`")
    kept = read_file(path)
    found = []
    for demo in DEMO_USERS:
        person = users.find(conn, demo.email)
        if person is None:
            password = _new_password()
            users.create(conn, demo.email, name=demo.name, role=demo.role, locale=demo.locale, password=password,
                         is_demo=True)
            logger.info("demo users: created the demo %s", demo.role)
            found.append(Credential(demo.role, demo.email, password))
        elif not person.is_demo:
            found.append(Credential(demo.role, demo.email, None, "a real user holds this address: not touched"))
        elif not person.active:
            found.append(Credential(demo.role, demo.email, None, "deactivated"))
        else:
            password = kept.get(demo.email)
            if password is None or not _signs_in(conn, demo.email, password):
                password = _new_password()
                users.set_password(conn, demo.email, password)
                logger.info("demo users: a new password for the demo %s", demo.role)
            found.append(Credential(demo.role, demo.email, password))
    return found


def _signs_in(conn: sa.Connection, email: str, password: str) -> bool:
    try:
        users.authenticate(conn, email, password)
    except users.UserError:
        return False
    return True
