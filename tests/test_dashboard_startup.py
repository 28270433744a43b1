"""The demo users bin/run makes, and what production refuses to start the dashboard with (issue 19, item 1)."""
from __future__ import annotations

import dataclasses
import stat
import subprocess
from pathlib import Path

import pytest

from dashboard_support import DashboardProcess, PASSWORD, make_app, make_user, production_settings
from support import PG_URL, REDIS_URL, ROOT, migrate, wipe
from waflow import config, demo_users, users
from waflow.config import ConfigError
from waflow.db import transaction


@pytest.fixture
def demo_cli(db_url, settings, monkeypatch, tmp_path):
    """``users demo`` on the test database, with a var dir of its own."""
    import waflow.db
    from waflow import create_app

    monkeypatch.setattr(waflow.db, "settings", dataclasses.replace(waflow.db.settings, database_url=db_url))
    chosen = dataclasses.replace(settings, database_url=db_url, var_dir=tmp_path)
    app = create_app({"TESTING": True, "WAFLOW_SETTINGS": chosen, "WAFLOW_PUBLISHER": object()})
    runner = app.test_cli_runner()

    def run():
        return runner.invoke(args=["users", "demo"])

    run.file = tmp_path / demo_users.FILE_NAME
    run.db = db_url
    return run


def _signs_in(db_url: str, email: str, password: str) -> bool:
    try:
        with transaction(db_url) as conn:
            users.authenticate(conn, email, password)
    except users.UserError:
        return False
    return True


def test_users_demo_makes_a_demo_lawyer_and_admin_once_and_keeps_their_passwords_private(demo_cli):
    first = demo_cli()
    assert first.exit_code == 0, first.output
    kept = demo_users.read_file(demo_cli.file)
    assert set(kept) == {"lawyer@demo.invalid", "admin@demo.invalid"}
    assert stat.S_IMODE(demo_cli.file.stat().st_mode) == 0o600
    for email, password in kept.items():
        assert password in first.output and _signs_in(demo_cli.db, email, password)
    with transaction(demo_cli.db) as conn:
        made = {p.email: p for p in users.listing(conn)}
    assert made["lawyer@demo.invalid"].role == "lawyer" and made["admin@demo.invalid"].role == "admin"
    assert all(p.is_demo and p.active for p in made.values())
    second = demo_cli()
    assert second.exit_code == 0 and demo_users.read_file(demo_cli.file) == kept
    with transaction(demo_cli.db) as conn:
        assert [p.session_epoch for p in users.listing(conn)] == [0, 0]  # nothing was changed


def test_users_demo_gives_new_passwords_when_the_file_is_lost(demo_cli):
    demo_cli()
    old = demo_users.read_file(demo_cli.file)
    demo_cli.file.unlink()
    assert demo_cli().exit_code == 0
    new = demo_users.read_file(demo_cli.file)
    for email in old:
        assert new[email] != old[email]
        assert _signs_in(demo_cli.db, email, new[email]) and not _signs_in(demo_cli.db, email, old[email])


def test_users_demo_leaves_a_deactivated_demo_user_and_a_real_users_address_alone(demo_cli):
    make_user(demo_cli.db, "admin@demo.invalid", role="admin")  # a real user, not a demo one
    demo_cli()
    with transaction(demo_cli.db) as conn:
        users.deactivate(conn, "lawyer@demo.invalid")
    answer = demo_cli()
    assert answer.exit_code == 0
    assert "deactivated" in answer.output and "a real user holds this address" in answer.output
    assert demo_users.read_file(demo_cli.file) == {}
    with transaction(demo_cli.db) as conn:
        assert not users.get(conn, "lawyer@demo.invalid").active
    assert _signs_in(demo_cli.db, "admin@demo.invalid", PASSWORD)


def test_users_demo_is_refused_in_production(db_url, tmp_path):
    with transaction(db_url) as conn:
        with pytest.raises(demo_users.DemoRefused):
            demo_users.ensure(conn, tmp_path / "demo-users.txt", production=True)
        assert users.listing(conn) == []


# --- production's refusals, in the app ---------------------------------------------------------------------------


def test_production_refuses_to_build_the_dashboard_while_a_demo_user_is_active(db_url, var_dir):
    make_user(db_url, "lawyer@demo.invalid", is_demo=True)
    with pytest.raises(ConfigError, match=r"a demo user can sign in \(lawyer@demo.invalid\)"):
        make_app(db_url, var_dir, settings=production_settings(db_url, var_dir))
    with transaction(db_url) as conn:
        users.deactivate(conn, "lawyer@demo.invalid")
    make_app(db_url, var_dir, settings=production_settings(db_url, var_dir))
    make_app(db_url, var_dir)  # development keeps its demo users


@pytest.mark.parametrize("key, rule", [
    ("", "is not set"), ("short-key", "at least 32 characters"),
    (config.SECRET["SECRET_KEY"].stand_in, "published development stand-in"), (" " + "k" * 40, "whitespace")])
def test_production_refuses_to_build_the_dashboard_without_a_proper_secret_key(db_url, var_dir, key, rule):
    with pytest.raises(ConfigError, match=f"SECRET_KEY .*{rule}.*dashboard refuses") as refused:
        make_app(db_url, var_dir, settings=production_settings(db_url, var_dir, secret_key=key))
    assert key.strip() == "" or key.strip() not in str(refused.value)


def test_the_secret_key_stand_in_serves_development_only():
    assert config.load({}).secret_key == config.SECRET["SECRET_KEY"].stand_in
    assert len(config.SECRET["SECRET_KEY"].stand_in) >= 32
    assert config.SECRET["SECRET_KEY"].used_by == "dashboard"


# --- production's refusals, in the process ----------------------------------------------------------------------


def _production_env(database_url: str, var: Path, **extra: str) -> dict[str, str]:
    return {"WAFLOW_ENV": "production", "DATABASE_URL": database_url, "WAFLOW_VAR_DIR": str(var),
            "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/unused", "REDIS_URL": REDIS_URL or "redis://127.0.0.1:6379/8",
            "WHATSAPP_APP_SECRET": "a" * 32, "WHATSAPP_VERIFY_TOKEN": "v" * 20, "WHATSAPP_ACCESS_TOKEN": "t" * 20,
            "WHATSAPP_PHONE_NUMBER_ID": "100000000000001", "WAFLOW_MEDIA_DIR_SHARED": "true",
            "SECRET_KEY": "production-key-" + "x" * 30, **extra}


@pytest.fixture
def production_database():
    if not PG_URL:
        pytest.skip("WAFLOW_TEST_DATABASE_URL is not set: no PostgreSQL to test against (see README, 'Test it')")
    url = config.load({"DATABASE_URL": PG_URL}).database_url
    migrate(url)
    wipe(url)
    return url


@pytest.mark.parametrize("problem", ["demo user", "no SECRET_KEY"])
def test_the_dashboard_process_refuses_to_start_in_production_with_one_line_and_exit_78(production_database,
                                                                                       tmp_path, problem):
    env = _production_env(production_database, tmp_path)
    if problem == "demo user":
        make_user(production_database, "admin@demo.invalid", role="admin", is_demo=True)
    else:
        env["SECRET_KEY"] = ""
    process = DashboardProcess(env, tmp_path / "dashboard.log").start(wait=False)
    try:
        assert process.wait(60) == 78
    finally:
        process.stop()
    refusals = [line for line in process.output().splitlines() if line.startswith("waflow refuses to start")]
    assert len(refusals) == 1, process.output()
    expected = "a demo user can sign in (admin@demo.invalid)" if problem == "demo user" else "SECRET_KEY is not set"
    assert expected in refusals[0]
    assert "Traceback" not in process.output() and "Booting worker" not in process.output()


def test_the_dashboard_process_starts_in_production_with_a_key_and_no_demo_user(production_database, tmp_path):
    import requests

    make_user(production_database, "ratna@firma.id")
    process = DashboardProcess(_production_env(production_database, tmp_path), tmp_path / "dashboard.log").start()
    try:
        page = requests.get(f"{process.url}/login", timeout=10)
        assert page.status_code == 200 and "Secure" in page.headers["Set-Cookie"]
    finally:
        process.stop()


# --- the Procfile lines ----------------------------------------------------------------------------------------------


def _procfile(name: str) -> dict[str, str]:
    lines = {}
    for line in (ROOT / name).read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep:
            lines[key] = command.strip()
    return lines


def test_both_procfiles_run_the_dashboard_with_gunicorns_factory_line_and_the_shipped_config():
    factory = "gunicorn -c gunicorn.conf.py 'waflow.dashboard:create_dashboard_app()'"
    assert _procfile("Procfile")["dashboard"] == factory
    assert _procfile("Procfile.dev")["dashboard"] == f"exec {factory}"
    # honcho gives each line PORT + 100 x its position: bin/run prints the dashboard at PORT + 100.
    assert list(_procfile("Procfile.dev"))[:2] == ["web", "dashboard"]
    assert list(_procfile("Procfile.dev")).index("flower") == 4
    assert "pybabel compile" in _procfile("Procfile")["release"]


def test_the_release_lines_catalog_compile_runs_and_writes_each_catalog(tmp_path):
    """pybabel takes -q before the command only ("pybabel compile -q" is refused): the release line runs as
    written, on a copy of the catalogs."""
    import shutil

    release = _procfile("Procfile")["release"]
    compile_step = next(step.strip() for step in release.split("&&") if "pybabel" in step)
    copy = tmp_path / "translations"
    shutil.copytree(ROOT / "waflow" / "dashboard" / "translations", copy, ignore=shutil.ignore_patterns("*.mo"))
    command = compile_step.replace("pybabel", str(ROOT / ".venv" / "bin" / "pybabel"), 1).replace(
        "waflow/dashboard/translations", str(copy))
    subprocess.run(["bash", "-c", command], check=True, capture_output=True)
    assert sorted(p.parent.parent.name for p in copy.glob("*/LC_MESSAGES/messages.mo")) == ["en", "id"]


@pytest.mark.parametrize("chosen, runs", [(None, "wsgi:app"),
                                          ("waflow.dashboard:create_dashboard_app()",
                                           "waflow.dashboard:create_dashboard_app()")])
def test_the_web_line_serves_the_webhook_unless_waflow_web_app_names_the_dashboard(chosen, runs):
    line = _procfile("Procfile")["web"]
    assert line == "gunicorn -c gunicorn.conf.py ${WAFLOW_WEB_APP:-wsgi:app}"
    env = {"PATH": "/usr/bin:/bin", **({"WAFLOW_WEB_APP": chosen} if chosen else {})}
    # As the platform runs it, through a shell: the app's name comes through whole, parentheses and all.
    out = subprocess.run(["bash", "-c", line.replace("gunicorn", "printf '%s\\n'", 1)], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["-c", "gunicorn.conf.py", runs]
