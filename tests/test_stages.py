"""The stage registry against what is independent of it, and the direction of imports.

``waflow/stages.py`` is the one place the wiring is written. Here it is held against the
queues waflow declares, the tasks Celery registers once every stage is imported, both
Procfiles and README.md's queue table; and ``wiring_problems`` is shown to catch each way
they can drift apart.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from support import PG_URL, ROOT, migrate
from waflow import config, queues, stages
from waflow.celery import app
from waflow.stages import STAGES, Stage

WAFLOW = ROOT / "waflow"


# --- what the registry is held against ---------------------------------------------------------------------------


def procfile_lines(name: str) -> dict[str, str]:
    """A Procfile's process lines: name -> command."""
    lines = {}
    for line in (ROOT / name).read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and re.fullmatch(r"\w+", key):
            lines[key] = command.strip()
    return lines


def readme_queue_rows() -> dict[str, str]:
    """README.md's queue table: queue -> its "Procfile line" cell."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`wa\.[\w.]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[3].strip("`")
    return rows


def registered_tasks() -> dict[str, str]:
    """The waflow tasks Celery knows after importing every stage: name -> the queue it is routed to."""
    app.loader.import_default_modules()
    return {name: task.queue for name, task in app.tasks.items() if name.startswith("waflow.")}


def wiring_problems(registry: tuple[Stage, ...], not_yet: dict[str, str], declared: set[str],
                    registered: dict[str, str], procfiles: dict[str, dict[str, str]],
                    readme: dict[str, str]) -> list[str]:
    """Every way the registry disagrees with the queues, tasks, Procfiles and README it describes."""
    problems = []
    consumers: dict[str, list[str]] = {}
    for stage in registry:
        for queue in stage.consumes:
            consumers.setdefault(queue, []).append(stage.name)
            if queue not in declared:
                problems.append(f"{stage.name} consumes {queue}, which waflow does not declare")
    for queue in sorted(declared):
        found = consumers.get(queue, [])
        if len(found) > 1:
            problems.append(f"{queue} has more than one consuming stage: {', '.join(found)}")
        if not found and queue not in not_yet:
            problems.append(f"{queue} is declared but no stage consumes it")
        if found and queue in not_yet:
            problems.append(f"{queue} is consumed by {found[0]} but still marked as not yet consumed")
        expected = found[0] if found else "—"
        if queue not in readme:
            problems.append(f"README.md's queue table has no row for {queue}")
        elif readme[queue] != expected:
            problems.append(f"README.md gives {queue} to {readme[queue]!r}, the registry to {expected!r}")
    tasks = {task: stage.queue_of(task) for stage in registry for task in stage.tasks}
    for stage in registry:
        for task, queue in stage.routes:
            if queue not in stage.consumes:
                problems.append(f"{stage.name} routes {task} to {queue}, which it does not consume")
    for task in sorted(set(tasks) | set(registered)):
        if task not in registered:
            problems.append(f"the registry names {task}, which Celery has not registered")
        elif task not in tasks:
            problems.append(f"Celery runs {task}, which no stage of the registry names")
        elif registered[task] != tasks[task]:
            problems.append(f"{task} is declared on {registered[task]}, the registry routes it to {tasks[task]}")
    for procfile, lines in procfiles.items():
        for stage in registry:
            command = lines.get(stage.name)
            if command is None:
                problems.append(f"{procfile} has no {stage.name!r} line")
            elif stage.celery:
                match = re.search(r"celery -A waflow worker -Q ([\w.,]+) -n (\w+)@%h", command)
                if not match or tuple(match.group(1).split(",")) != stage.consumes or match.group(2) != stage.name:
                    problems.append(f"{procfile}'s {stage.name!r} line does not consume {','.join(stage.consumes)} "
                                    f"as {stage.name}@%h")
            elif stage.process not in command:
                problems.append(f"{procfile}'s {stage.name!r} line does not run {stage.process!r}")
        known = {s.name for s in registry}
        for name, command in lines.items():
            if "worker -Q" in command and name not in known:
                problems.append(f"{procfile}'s {name!r} line runs a worker no stage declares")
    return problems


def actual() -> dict:
    return dict(registry=STAGES, not_yet=stages.NOT_YET_CONSUMED, declared={q.name for q in queues.declarations()},
                registered=registered_tasks(),
                procfiles={name: procfile_lines(name) for name in ("Procfile", "Procfile.dev")},
                readme=readme_queue_rows())


def test_the_registry_agrees_with_the_queues_tasks_procfiles_and_readme():
    assert wiring_problems(**actual()) == []


def test_every_seed_queue_now_has_its_consumer():
    assert stages.NOT_YET_CONSUMED == {}
    assert stages.consumer_of(queues.AI_DRAFT_CREATED).name == "announcer"
    assert stages.consumer_of(queues.AI_DRAFT_APPROVED).name == "core"
    assert stages.consumer_of(queues.AI_DRAFT_REQUESTED).name == "drafter"


def test_a_stage_routes_each_task_to_the_queue_it_names():
    assert stages.queue_of("waflow.core.handle_normalized") == queues.INCOMING_NORMALIZED
    assert stages.queue_of("waflow.core.send_approved") == queues.AI_DRAFT_APPROVED
    assert stages.task_routes()["waflow.core.send_approved"] == {"queue": queues.AI_DRAFT_APPROVED}


def test_it_reports_a_task_routed_to_a_queue_its_stage_does_not_consume():
    wiring = actual()
    wiring["registry"] = tuple(replace(s, routes=(("waflow.core.send_approved", queues.MEDIA_PROCESSING),))
                               if s.name == "core" else s for s in STAGES)
    problems = wiring_problems(**wiring)
    assert "core routes waflow.core.send_approved to wa.media.processing, which it does not consume" in problems


def test_it_reports_a_declared_work_queue_without_a_consumer():
    wiring = actual()
    wiring["registry"] = tuple(s for s in STAGES if s.name != "media")
    assert "wa.media.processing is declared but no stage consumes it" in wiring_problems(**wiring)


def test_it_reports_a_queue_with_two_consuming_stages():
    wiring = actual()
    wiring["registry"] = STAGES + (Stage("media2", "waflow.media", (queues.MEDIA_PROCESSING,)),)
    assert "wa.media.processing has more than one consuming stage: media, media2" in wiring_problems(**wiring)


def test_it_reports_a_stage_without_a_procfile_line():
    wiring = actual()
    wiring["procfiles"]["Procfile"].pop("core")
    assert "Procfile has no 'core' line" in wiring_problems(**wiring)


def test_it_reports_a_procfile_line_that_consumes_other_queues():
    wiring = actual()
    wiring["procfiles"]["Procfile.dev"]["sender"] = "celery -A waflow worker -Q wa.outgoing.command -n sender@%h"
    assert ("Procfile.dev's 'sender' line does not consume wa.outgoing.command,wa.outgoing.broadcast as sender@%h"
            in wiring_problems(**wiring))


def test_it_reports_a_queue_missing_from_the_readme():
    wiring = actual()
    wiring["readme"].pop("wa.incoming.raw")
    assert "README.md's queue table has no row for wa.incoming.raw" in wiring_problems(**wiring)


def test_it_reports_a_task_celery_runs_that_no_stage_names():
    wiring = actual()
    wiring["registry"] = tuple(replace(s, tasks=()) if s.name == "core" else s for s in STAGES)
    assert "Celery runs waflow.core.handle_normalized, which no stage of the registry names" in wiring_problems(**wiring)


def test_celery_routes_and_imports_come_from_the_registry():
    assert app.conf.task_routes == stages.task_routes()
    assert tuple(app.conf.imports) == stages.imports()
    assert stages.queue_of("waflow.outbound.send_message") == queues.OUTGOING_COMMAND
    with pytest.raises(KeyError, match="no stage runs the task"):
        stages.queue_of("waflow.nowhere.nothing")


# --- one direction of imports ------------------------------------------------------------------------------------

# Infrastructure: what every stage stands on. It imports no stage module, not even inside a function.
INFRASTRUCTURE = {
    "waflow.config", "waflow.db", "waflow.models", "waflow.queues", "waflow.embedded", "waflow.tasks",
    "waflow.celery", "waflow.stages", "waflow.broker", "waflow.consumer", "waflow.events", "waflow.compose",
    "waflow.whatsapp", "waflow.web", "waflow.webserver", "waflow.limiter", "waflow.limiter.base",
    "waflow.limiter.redis_store", "waflow.limiter.file_store", "waflow.dlq", "waflow.dlq.records", "waflow.failures",
    "waflow.whatsapp_media", "waflow.mediastore", "waflow.mediastore.base", "waflow.mediastore.local",
    "waflow.mediastore.s3",
    "waflow.changelog", "waflow.users",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in WAFLOW.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Each waflow module -> the waflow modules it imports anywhere in its text (inside functions too).

    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so those count as imported too, unless the
    importer lives inside them (a package's own modules do not run its ``__init__`` again)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
        edges = set()
        for target in targets:
            if not target.startswith("waflow"):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                if ancestor in modules and ancestor != name and not name.startswith(ancestor + "."):
                    edges.add(ancestor)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere_in_waflow():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import():
    graph = import_graph()
    graph["waflow.tasks"] = graph["waflow.tasks"] | {"waflow.outbound.warmup"}  # as tasks.py once did
    assert any("waflow.tasks" in c and "waflow.outbound.warmup" in c for c in cycles(graph))


def test_infrastructure_imports_no_stage_module():
    graph = import_graph()
    assert INFRASTRUCTURE <= set(graph)
    offenders = {name: sorted(graph[name] - INFRASTRUCTURE) for name in INFRASTRUCTURE if graph[name] - INFRASTRUCTURE}
    assert offenders == {}


def test_the_import_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "waflow.gateway" in graph["waflow"]  # create_app imports its blueprints inside the function


# --- the sender's prepared statements --------------------------------------------------------------------------


def test_importing_any_part_of_the_sender_registers_all_its_prepared_statements():
    code = ("import waflow.outbound.commands\nfrom waflow import db\nprint(' '.join(sorted(db._PREPARED)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["waflow_accept", "waflow_claim", "waflow_next"], out.stderr[-2000:]


@pytest.mark.skipif(not PG_URL, reason="WAFLOW_TEST_DATABASE_URL is not set: no PostgreSQL to test against "
                                       "(see README, 'Test it')")
def test_a_fresh_process_that_imports_what_core_imports_prepares_the_send_path_on_its_connections():
    migrate(config.load({"DATABASE_URL": PG_URL}).database_url)  # the statements name the outbox's tables
    code = ("import waflow.core\nfrom waflow.db import autocommit\n"
            "with autocommit() as conn:\n"
            "    print(' '.join(r[0] for r in conn.exec_driver_sql("
            "\"SELECT name FROM pg_prepared_statements ORDER BY name\")))\n")
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": PG_URL, "WAFLOW_VAR_DIR": str(ROOT / "var")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["waflow_accept", "waflow_claim", "waflow_next"], out.stderr[-2000:]


@pytest.mark.skipif(not PG_URL, reason="WAFLOW_TEST_DATABASE_URL is not set: no PostgreSQL to test against "
                                       "(see README, 'Test it')")
def test_the_send_paths_statements_keep_one_generic_plan_from_their_first_run():
    """PostgreSQL would plan each prepared statement afresh on its first five runs on a connection;
    the send path's connections plan each once, at its first run (the sender's warm-up)."""
    migrate(config.load({"DATABASE_URL": PG_URL}).database_url)
    code = ("from datetime import datetime, timezone\nimport waflow.outbound\n"
            "from waflow.db import autocommit, execute_prepared\nfrom waflow.outbound import claim\n"
            "with autocommit() as conn:\n"
            "    for _ in range(3):\n"
            "        execute_prepared(conn, claim.CLAIM_AT_ONCE, -1, None, datetime.now(timezone.utc))\n"
            "    print(*conn.exec_driver_sql(\"SELECT generic_plans, custom_plans FROM pg_prepared_statements \"\n"
            "                                \"WHERE name = 'waflow_claim'\").one())\n")
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": PG_URL, "WAFLOW_VAR_DIR": str(ROOT / "var")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["3", "0"], out.stderr[-2000:]


def _in_a_fresh_worker(watched: tuple[str, ...], then: str) -> list[str]:
    """Import what a Celery worker imports in a fresh process, print which ``watched`` modules are
    loaded, run ``then``; return the lines printed."""
    code = ("import sys\nfrom waflow.tasks import celery_app\ncelery_app.loader.import_default_modules()\n"
            "import waflow.consumer, waflow.outbound\n"
            f"print(sorted(m for m in {watched!r} if m in sys.modules))\n{then}")
    env = {"PATH": "/usr/bin:/bin", "WAFLOW_VAR_DIR": str(ROOT / "var")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("\n")


def test_a_worker_that_does_not_draft_never_loads_the_drafting_librarys_retrieval():
    """Every worker imports every stage's module (Celery's ``imports``); bm25s and numpy (about 23 MB a
    process) load only where a drafter is built."""
    printed = _in_a_fresh_worker(("bm25s", "numpy", "rapidfuzz", "waflow.drafting.offline"),
                                 "from waflow.drafting import make_drafter\nfrom waflow import config\n"
                                 "make_drafter(config.settings)\nprint('bm25s' in sys.modules)\n")
    assert printed[:2] == ["[]", "True"]


def test_a_worker_never_loads_flask_and_the_web_app_still_builds():
    """A Celery worker imports the ``waflow`` package but serves no web page: Flask and Werkzeug (about
    0.1 s of a worker's start and 5 MB) load only where ``create_app`` builds the web process."""
    printed = _in_a_fresh_worker(("flask", "werkzeug"),
                                 "from waflow import create_app\nprint(type(create_app()).__name__)\n")
    assert printed[:2] == ["[]", "Flask"]
