"""Users who decide on drafts: emails one per person whatever their case, Argon2id passwords, session epochs,
and the ``users`` commands (issue 17, item 8)."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from drafts_support import PASSWORD, lawyer, one
from waflow import users
from waflow.db import transaction


def test_it_stores_an_email_lower_cased_and_refuses_the_same_address_in_another_case(db_url):
    person = lawyer(db_url, "  Ratna@Firma.ID ", "Ratna")
    assert person.email == "ratna@firma.id"
    with pytest.raises(users.UserExists):
        lawyer(db_url, "RATNA@firma.id", "Ratna Lagi")
    with transaction(db_url) as conn:
        assert users.get(conn, "ratna@FIRMA.id").id == person.id


def test_the_database_refuses_an_email_stored_in_another_case(db_url):
    lawyer(db_url, "ratna@firma.id")
    with pytest.raises(sa.exc.IntegrityError):
        with transaction(db_url) as conn:
            conn.execute(sa.text("UPDATE users SET email = 'Ratna@firma.id'"))


def test_a_password_is_kept_as_an_argon2id_hash(db_url):
    lawyer(db_url)
    stored = one(db_url, "SELECT password_hash FROM users").password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


@pytest.mark.parametrize("field, value, message", [
    ("email", "not-an-address", "is not an email address"), ("role", "partner", "role must be one of"),
    ("locale", "nl", "locale must be one of"), ("password", "short", "at least 12 characters"),
    ("name", "  ", "needs a name")])
def test_it_refuses_a_malformed_user(db_url, field, value, message):
    given = {"email": "a@firma.id", "name": "A", "role": "lawyer", "locale": "id", "password": PASSWORD, field: value}
    email = given.pop("email")
    with pytest.raises(users.InvalidUser, match=message):
        with transaction(db_url) as conn:
            users.create(conn, email, **given)


def test_signing_in_needs_the_right_password_of_an_active_user(db_url):
    lawyer(db_url)
    with transaction(db_url) as conn:
        assert users.authenticate(conn, "RATNA@firma.id", PASSWORD).email == "ratna@firma.id"
        with pytest.raises(users.WrongPassword):
            users.authenticate(conn, "ratna@firma.id", "not the password")
        with pytest.raises(users.WrongPassword):  # the same answer for an address nobody has
            users.authenticate(conn, "nobody@firma.id", PASSWORD)
        users.deactivate(conn, "ratna@firma.id")
        with pytest.raises(users.Deactivated):
            users.authenticate(conn, "ratna@firma.id", PASSWORD)


def test_a_password_change_or_a_deactivation_moves_the_session_epoch_on(db_url):
    epoch = lawyer(db_url).session_epoch
    with transaction(db_url) as conn:
        changed = users.set_password(conn, "ratna@firma.id", "another long passphrase")
        with pytest.raises(users.WrongPassword):
            users.authenticate(conn, "ratna@firma.id", PASSWORD)
        gone = users.deactivate(conn, "ratna@firma.id")
        again = users.deactivate(conn, "ratna@firma.id")
    assert (changed.session_epoch, gone.session_epoch, again.session_epoch) == (epoch + 1, epoch + 2, epoch + 2)
    assert not gone.active


# --- the commands ------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(app, default_db):
    from support import wipe

    wipe(default_db)
    runner = app.test_cli_runner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(args=list(args), input=input)

    run.db = default_db
    return run


def test_users_create_reads_the_password_from_standard_input(cli):
    done = cli("users", "create", "Budi@Firma.id", "--name", "Budi", "--role", "admin", "--locale", "en",
               input=PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    assert "user budi@firma.id created (admin, en)" in done.output
    assert PASSWORD not in done.output
    with transaction(cli.db) as conn:
        assert users.authenticate(conn, "budi@firma.id", PASSWORD).role == "admin"


def test_users_list_set_password_and_deactivate(cli):
    cli("users", "create", "a@firma.id", "--name", "A", "--role", "lawyer", "--locale", "id", input=PASSWORD + "\n")
    listed = json.loads(cli("users", "list", "--json").output)
    assert listed == [{"email": "a@firma.id", "name": "A", "role": "lawyer", "locale": "id", "active": True,
                       "is_demo": False}]
    assert cli("users", "set-password", "A@firma.id", input="a brand new passphrase\n").exit_code == 0
    assert cli("users", "deactivate", "a@firma.id").exit_code == 0
    assert "deactivated" in cli("users", "list").output
    with transaction(cli.db) as conn:
        assert conn.execute(sa.text("SELECT session_epoch FROM users")).scalar() == 2


def test_users_commands_exit_non_zero_with_a_clear_message_when_refused(cli):
    done = cli("users", "deactivate", "nobody@firma.id")
    assert done.exit_code == 1 and "no user nobody@firma.id" in done.output
    cli("users", "create", "a@firma.id", "--name", "A", "--role", "lawyer", "--locale", "id", input=PASSWORD + "\n")
    twice = cli("users", "create", "A@FIRMA.ID", "--name", "A", "--role", "lawyer", "--locale", "id",
                input=PASSWORD + "\n")
    assert twice.exit_code == 1 and "a user a@firma.id already exists" in twice.output
    weak = cli("users", "create", "b@firma.id", "--name", "B", "--role", "lawyer", "--locale", "id", input="short\n")
    assert weak.exit_code == 1 and "at least 12 characters" in weak.output
