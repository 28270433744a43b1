"""What an error may say about itself where people read it: logs, Flower, dead-letter messages.

Another library's exception text can quote a client's words: psycopg2 binds parameters on the
client side, so PostgreSQL's error echoes the failing statement with its values ("LINE 1: ...",
"Failing row contains (...)"), and pydantic, requests or the JSON decoder quote their input too.
So such an error leaves a stage task as a ``StageFailure`` that names its type and, for a database
error, the driver's error class and SQLSTATE: nothing else. The original stays on the exception
(``original``) for the dead-letter record's ``detail``, which only operators read.

waflow's own exceptions, Celery's and billiard's speak for themselves: waflow's are written to name
ids, types, sizes and positions only (the house rule), Celery's name tasks and signals.
"""
from __future__ import annotations

from typing import Any

# Where an exception's own text can be shown: the modules whose messages never quote a client.
_SAFE_SPEAKERS = ("waflow", "celery", "billiard")
# The most of an original error's text a dead-letter record keeps in ``detail``.
DETAIL_LIMIT = 4000


class StageFailure(Exception):
    """A foreign error as it leaves a stage task: its type and SQLSTATE, never its text."""

    def __init__(self, description: str = "", error_type: str = "", sqlstate: str | None = None) -> None:
        super().__init__(description)
        self.error_type = error_type or type(self).__name__
        self.sqlstate = sqlstate
        self.original: BaseException | None = None

    def __reduce__(self) -> Any:  # pickled between pool processes with its fields, not its original
        return type(self), (str(self), self.error_type, self.sqlstate)

    @classmethod
    def of(cls, exc: BaseException) -> "StageFailure":
        failure = cls(describe(exc), type(exc).__name__, sqlstate(exc))
        failure.original = exc
        return failure


class TransientFailure(StageFailure):
    """A foreign error that may pass by itself (the retry policy in ``waflow.tasks`` says which)."""


class PermanentFailure(StageFailure):
    """A foreign error that will not pass by itself: never retried."""


def speaks_safely(exc: BaseException) -> bool:
    """True if ``exc``'s own text may be shown: a waflow, Celery or billiard exception."""
    return type(exc).__module__.split(".")[0] in _SAFE_SPEAKERS


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error (raw or wrapped by SQLAlchemy), else None."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def describe(exc: BaseException) -> str:
    """A description of ``exc`` without its text, unless it speaks safely: ``OperationalError:
    ProgramLimitExceeded, SQLSTATE 54000``, ``IntegrityError: SQLITE_CONSTRAINT_UNIQUE``, ``KeyError``."""
    if isinstance(exc, StageFailure) or speaks_safely(exc):
        return str(exc)
    orig = getattr(exc, "orig", None)
    inner = type(orig).__name__ if isinstance(orig, BaseException) else None
    code = sqlstate(exc)
    details = [d for d in (inner if inner != type(exc).__name__ else None, f"SQLSTATE {code}" if code else None,
                           getattr(orig, "sqlite_errorname", None)) if d]
    return type(exc).__name__ + (": " + ", ".join(details) if details else "")


def error_type(exc: BaseException) -> str:
    """The name of the error's type as the dead-letter record files it (the original's, for a failure)."""
    return exc.error_type if isinstance(exc, StageFailure) else type(exc).__name__


def original_text(exc: BaseException) -> str | None:
    """The original error's own text, for the dead-letter record's ``detail`` (operators only)."""
    original = exc.original if isinstance(exc, StageFailure) else None if speaks_safely(exc) else exc
    if original is None:
        return None
    text = f"{type(original).__name__}: {original}"
    return text if len(text) <= DETAIL_LIMIT else text[:DETAIL_LIMIT] + f"... ({len(text)} characters in all)"
