"""The people who sign in: lawyers who decide on drafts, and admins.

Passwords are kept as Argon2id hashes (``argon2-cffi``, its default parameters: RFC 9106's
low-memory profile). An email is stored lower-cased and trimmed, so one address is one user however
it is typed. ``session_epoch`` grows when a user is deactivated or their password changes: a
session made under an older epoch is over (the dashboard keeps the epoch in the session's user id).

These are the plain functions the CLI (``flask --app wsgi users ...``) and the dashboard call, in the
caller's transaction. They raise ``UserError`` subclasses with a message a person can act on.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import argon2
import sqlalchemy as sa

from waflow.models import USER_LOCALES, USER_ROLES, User

logger = logging.getLogger(__name__)

# Long enough that guessing is hopeless with Argon2id in the way; a passphrase of four words passes.
MIN_PASSWORD_LENGTH = 12
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = argon2.PasswordHasher()  # Argon2id


class UserError(ValueError):
    """A user operation refused; ``code`` names the reason for scripts (``--json``)."""

    code = "user_error"


class UnknownUser(UserError):
    code = "unknown_user"

    def __init__(self, email: str) -> None:
        super().__init__(f"no user {email}")


class Deactivated(UserError):
    code = "deactivated"

    def __init__(self, email: str) -> None:
        super().__init__(f"user {email} is deactivated")


class UserExists(UserError):
    code = "user_exists"

    def __init__(self, email: str) -> None:
        super().__init__(f"a user {email} already exists")


class InvalidUser(UserError):
    code = "invalid_user"


class WrongPassword(UserError):
    code = "wrong_password"

    def __init__(self) -> None:
        super().__init__("wrong email or password")


@dataclass(frozen=True)
class Person:
    """A user as the rest of waflow sees one (never the password hash)."""

    id: int
    email: str
    name: str
    role: str
    locale: str
    active: bool
    session_epoch: int
    is_demo: bool

    @classmethod
    def of(cls, row: Any) -> "Person":
        return cls(row.id, row.email, row.name, row.role, row.locale, row.active, row.session_epoch, row.is_demo)


def normalize_email(email: str) -> str:
    """The stored form of an email address: trimmed and lower-cased; InvalidUser if it is not one."""
    address = email.strip().lower()
    if not _EMAIL.match(address):
        raise InvalidUser(f"{email!r} is not an email address")
    return address


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUser(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def create(conn: sa.Connection, email: str, *, name: str, role: str, locale: str, password: str,
           is_demo: bool = False) -> Person:
    """Add a user; UserExists if the address is taken (in any case)."""
    address = normalize_email(email)
    if role not in USER_ROLES:
        raise InvalidUser(f"role must be one of {', '.join(USER_ROLES)}")
    if locale not in USER_LOCALES:
        raise InvalidUser(f"locale must be one of {', '.join(USER_LOCALES)}")
    if not name.strip():
        raise InvalidUser("a user needs a name")
    check_password(password)
    now = datetime.now(timezone.utc)
    try:
        with conn.begin_nested():
            new_id = conn.execute(sa.insert(User).values(
                email=address, name=name.strip(), role=role, locale=locale, password_hash=_hasher.hash(password),
                active=True, session_epoch=0, is_demo=is_demo, created_at=now, updated_at=now,
            ).returning(User.id)).scalar_one()
    except sa.exc.IntegrityError:
        raise UserExists(address) from None
    logger.info("users: created user %s (%s)", new_id, role)
    return get(conn, address)


def find(conn: sa.Connection, email: str) -> Person | None:
    """The user with this address, active or not, or None."""
    try:
        address = normalize_email(email)
    except InvalidUser:
        return None
    row = conn.execute(sa.select(User.__table__).where(User.email == address)).first()
    return Person.of(row) if row is not None else None


def get(conn: sa.Connection, email: str) -> Person:
    """The user with this address; UnknownUser if there is none."""
    person = find(conn, email)
    if person is None:
        raise UnknownUser(email.strip())
    return person


def active(conn: sa.Connection, email: str) -> Person:
    """The active user with this address: who may decide on a draft. UnknownUser or Deactivated otherwise."""
    person = get(conn, email)
    if not person.active:
        raise Deactivated(person.email)
    return person


def by_id(conn: sa.Connection, user_id: int) -> Person | None:
    row = conn.execute(sa.select(User.__table__).where(User.id == user_id)).first()
    return Person.of(row) if row is not None else None


def listing(conn: sa.Connection) -> list[Person]:
    """Every user, by address."""
    return [Person.of(r) for r in conn.execute(sa.select(User.__table__).order_by(User.email)).all()]


def set_locale(conn: sa.Connection, email: str, locale: str) -> Person:
    """Change the language the dashboard speaks to a user (``id`` or ``en``)."""
    person = get(conn, email)
    if locale not in USER_LOCALES:
        raise InvalidUser(f"locale must be one of {', '.join(USER_LOCALES)}")
    if person.locale != locale:
        conn.execute(sa.update(User).where(User.id == person.id).values(
            locale=locale, updated_at=datetime.now(timezone.utc)))
    return get(conn, email)


def active_demo_users(conn: sa.Connection) -> list[Person]:
    """The demo users that can still sign in: production's dashboard refuses to start while there is one."""
    rows = conn.execute(sa.select(User.__table__).where(User.is_demo.is_(True), User.active.is_(True))
                        .order_by(User.email)).all()
    return [Person.of(r) for r in rows]


def set_password(conn: sa.Connection, email: str, password: str) -> Person:
    """Change a user's password; every session they had ends (the epoch grows)."""
    person = get(conn, email)
    check_password(password)
    conn.execute(sa.update(User).where(User.id == person.id).values(
        password_hash=_hasher.hash(password), session_epoch=User.session_epoch + 1,
        updated_at=datetime.now(timezone.utc)))
    logger.info("users: password of user %s changed", person.id)
    return get(conn, email)


def deactivate(conn: sa.Connection, email: str) -> Person:
    """Stop a user from signing in or deciding; every session they had ends. Their decisions stay."""
    person = get(conn, email)
    if person.active:
        now = datetime.now(timezone.utc)
        conn.execute(sa.update(User).where(User.id == person.id).values(
            active=False, session_epoch=User.session_epoch + 1, deactivated_at=now, updated_at=now))
        logger.info("users: user %s deactivated", person.id)
    return get(conn, email)


def authenticate(conn: sa.Connection, email: str, password: str) -> Person:
    """The active user with this address and password (the dashboard's login); WrongPassword for an
    unknown address too, so a login form cannot tell which addresses exist. A hash made with older
    parameters is replaced on the way."""
    row = None
    try:
        row = conn.execute(sa.select(User.__table__).where(User.email == normalize_email(email))).first()
    except InvalidUser:
        pass
    if row is None:
        _hasher.hash(password)  # as slow as a real check
        raise WrongPassword()
    try:
        _hasher.verify(row.password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        raise WrongPassword() from None
    if not row.active:
        raise Deactivated(row.email)
    if _hasher.check_needs_rehash(row.password_hash):
        conn.execute(sa.update(User).where(User.id == row.id).values(password_hash=_hasher.hash(password)))
    return Person.of(row)
