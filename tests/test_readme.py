"""README.md as a new user reads it: commands that run as written on a fresh machine, sections that exist.

Running the README's second-terminal commands against a real ``bin/run`` is in ``tests/test_run.py``.
"""
from __future__ import annotations

import re

from support import ROOT
from waflow.simulator.templates import BUILT_IN

README = (ROOT / "README.md").read_text()
# Programs a fresh machine has (or the README says to install), and shell words; anything else must be a path.
SYSTEM_COMMANDS = {"curl", "python3", "openssl", "printf", "set", "export", "cat", "echo"}


def shell_blocks(text: str = README) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a shell block: no comments, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def headings(text: str = README) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_every_readme_command_runs_without_an_activated_virtualenv():
    problems = []
    for block in shell_blocks():
        for command in commands(block):
            word = command.split()[0]
            if "=" in word and not word.startswith("-"):  # VAR=value command
                continue
            if not (word.startswith(("bin/", ".venv/bin/")) or word in SYSTEM_COMMANDS):
                problems.append(command)
    # In the prose too: a command quoted inline is copied as often as a block.
    problems += re.findall(r"(?<![\w/.])flask --app \S+ [\w-]+", README)
    problems += re.findall(r"(?<![\w/.])python -m \S+", README)
    assert problems == []


def test_the_curl_examples_follow_the_stacks_ports():
    for block in shell_blocks():
        for command in commands(block):
            if command.startswith("curl"):
                assert not re.search(r"127\.0\.0\.1:\d", command), command
                assert "${PORT:-5000}" in command or "${SIMULATOR_PORT:-5900}" in command, command


def test_every_readme_section_named_by_a_skip_message_exists():
    named = set()
    for path in (ROOT / "tests").glob("*.py"):
        named |= set(re.findall(r"see README, '(\w[^']*)'", path.read_text()))
    assert named and named <= headings(), named - headings()


def test_the_readme_lists_the_simulators_templates():
    rows = re.findall(r"^\| `(\w+)` \| ((?:`[\w]+`(?:, )?)+) \| (none|\d+)", README, flags=re.M)
    listed = {(name, language): 0 if count == "none" else int(count)
              for name, languages, count in rows for language in re.findall(r"`(\w+)`", languages)}
    assert listed == {(t.name, t.language): len(t.placeholders) for t in BUILT_IN}


def test_the_readme_says_flowers_broker_tab_does_not_work_on_the_embedded_default():
    assert re.search(r"\*\*Broker\*\* tab[^.]*embedded default", README, flags=re.S)
