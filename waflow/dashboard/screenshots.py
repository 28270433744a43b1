"""``bin/screenshots``: the dashboard's pages as a lawyer sees them, written to ``docs/screenshots/``.

It starts the real stack (``bin/run``) on a scratch var dir and free ports, has a few clients write to the
firm through the Meta simulator (webhook, ingestor, core, drafter: the real pipeline), signs in as the demo
lawyer in Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright, a test-only dependency) and
saves each page in ``SHOTS`` on a desktop and on a phone, in Indonesian and in English:
``<shot>-<device>-<language>.png``. Then it stops the stack as Ctrl-C would. Before the pictures, the demo
lawyer decides on a few more clients' drafts with the drafts commands (``AUDIT_DECISIONS``), so the audit page
and the weekly report have decisions to show and the other clients' drafts stay open.

A page's engineer adds a ``Shot`` (and, if the page needs them, clients in ``DEMO_CLIENTS`` or a ``prepare``
step that clicks the page into the state to show).
"""
from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Shot:
    """One page to photograph: ``path`` on the dashboard; ``prepare(page)`` runs before the picture."""

    name: str
    path: str
    signed_in: bool = True
    full_page: bool = False
    prepare: Callable[[Any], None] | None = None


def _open_conversation(name: str) -> Callable[[Any], None]:
    """From the inbox, open the conversation of the client called ``name`` and wait for its draft and files."""

    def prepare(page: Any) -> None:
        page.locator("#inbox-list li", has_text=name).first.locator("a.row").click()
        page.wait_for_url("**/dashboard/conversations/*")
        page.locator("#draft-text").wait_for()
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.wait_for_load_state("networkidle")

    return prepare


SHOTS: list[Shot] = [
    Shot("login", "/login", signed_in=False),
    Shot("inbox", "/dashboard/"),
    Shot("audit", "/dashboard/audit"),
    Shot("report", "/dashboard/audit/report"),
    Shot("conversation", "/dashboard/", full_page=True, prepare=_open_conversation("Andi Pratama")),
]

DEVICES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
LANGUAGES = {"id": "id-ID", "en": "en-US"}

# Clients who write as the firm's do, mostly in chat Indonesian: (wa_id, name, text, how many seconds ago they
# sent it). Andi then sends a photo of the letter he received (PHOTO_CLIENT), so the conversation page has a file
# to show beside its draft; Siti's draft is approved (ANSWERED), so the inbox also shows an answered client.
DEMO_CLIENTS = [
    ("6281210000001", "Dewi Lestari", "Selamat pagi, Bu. Sy mau konsultasi soal hak asuh anak setelah cerai, "
                                      "kira2 bisa ketemu minggu ini?", 11400),
    ("6281210000002", "Andi Pratama", "Pak, kontrak sewa ruko saya diputus sepihak sama pemilik. Apa saya bisa "
                                      "minta ganti rugi?", 2900),
    ("6281210000003", "Siti Nurhaliza", "Halo, berkas gugatan warisan saya sudah sampai mana ya?", 18000),
    ("6281210000004", "Rudi Hartono", "Maaf ganggu malam2, besok sidang jam berapa ya pak?", 720),
    ("6281210000005", "Nur Aini", "Selamat siang bu, sy di-PHK tanpa pesangon stlh kerja 6 thn. sy berhak dpt "
                                  "apa aja ya?", 1500),
    ("447700900004", "James Whitfield", "Good morning, I need a lawyer to review a shareholder agreement for a PT "
                                        "PMA before Friday. Is that possible?", 5400),
    ("6281210000007", "Yohanes Siregar", "Siang pak, mau tanya biaya balik nama sertifikat tanah warisan brp ya?",
     7300),
]
PHOTO_CLIENT = ("6281210000002", "Andi Pratama", "ini surat dr pemilik ruko nya pak", 2840)
ANSWERED = "6281210000003"


def letter_png(width: int = 360, height: int = 480) -> bytes:
    """A photographed letter, drawn without an imaging library: a white page on a grey desk, a letterhead
    band and lines of "text" (a PNG; zlib and struct are all it takes)."""
    import struct
    import zlib

    rows = []
    for y in range(height):
        row = bytearray([0])  # no filter
        for x in range(width):
            on_page = 24 <= x < width - 24 and 20 <= y < height - 20
            shade = 0x9a
            if on_page:
                shade = 0xfb
                if 44 <= y < 70 and 48 <= x < width - 48:
                    shade = 0x2f  # the letterhead
                elif y >= 100 and (y - 100) % 22 < 6 and 48 <= x < width - 48 - (((y - 100) // 22) * 37) % 90:
                    shade = 0x6a  # a line of text, each a different length
            row += bytes((shade, shade, min(255, shade + 4)))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
            + chunk(b"IEND", b""))


# Clients whose drafts the demo lawyer decides on before the pictures, for the audit page and the weekly report
# (``AUDIT_DECISIONS``, oldest first: the last is on top of the audit page).
AUDIT_CLIENTS = [
    ("6281210000011", "Agus Salim", "Bu, berapa biaya konsultasi pertama di kantor ibu?", 26000),
    ("6281210000012", "Bambang Wijaya", "Debt collector dtg ke rmh sy tiap hari, ngancam2. Sy hrs gmn?", 25000),
    ("6281210000013", "Rina Kusuma", "Sy mau buat perjanjian kerja sama usaha dg teman, bisa dibantu buatkan?",
     24000),
]
AUDIT_DECISIONS: list[tuple[str, list[str]]] = [
    ("6281210000011", ["approve"]),
    ("6281210000012", ["reject", "--reason", "needs_lawyer"]),
    ("6281210000012", ["write", "--text", "Pak Bambang, penagih utang tidak boleh mengancam. Simpan bukti ancamannya "
                                          "(rekaman, foto, nama penagih). Saya telepon Bapak jam 2 siang ini."]),
    ("6281210000013", ["edit"]),
]
# The lawyer's edit of Rina's draft: a greeting of her own, and a promise instead of the draft's general line.
EDIT_GREETING = "Selamat pagi, Bu Rina. "
EDIT_FROM, EDIT_TO = "Seorang advokat akan menanggapi", "Saya sendiri akan menelepon Ibu hari ini dan menanggapi"


def free_base_port() -> int:
    """A base port whose web (+0), dashboard (+100) and Flower (+400) ports are all free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 400 > 65535:
            continue
        try:
            for offset in (100, 400):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for the stack")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"bin/screenshots: bin/run exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except (requests.RequestException, sqlite3.Error):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bin/screenshots: timed out waiting for {what} (log: {log})")
        time.sleep(0.3)


class Stack:
    """``bin/run`` on a scratch var dir and its own ports. (``bin/screenshots`` has removed waflow's variables
    from the environment first, so the stack runs on the embedded default whatever the terminal had set.)"""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.port, self.sim_port = free_base_port(), _free_port()
        self.dashboard = f"http://127.0.0.1:{self.port + 100}"
        self.simulator = f"http://127.0.0.1:{self.sim_port}"
        self.log = var_dir / "run.log"
        command = ["env", f"WAFLOW_VAR_DIR={var_dir}", f"PORT={self.port}", f"SIMULATOR_PORT={self.sim_port}",
                   str(ROOT / "bin" / "run")]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self) -> None:
        _wait("the dashboard", lambda: requests.get(f"{self.dashboard}/healthz", timeout=1).ok, 120, self.proc,
              self.log)
        _wait("the Meta simulator", lambda: requests.get(f"{self.simulator}/_sim/health", timeout=1).ok, 60,
              self.proc, self.log)
        _wait("the workers", lambda: self.log.read_text().count(" ready.") >= 6, 120, self.proc, self.log)

    def clients_write(self) -> None:
        for wa_id, name, text, ago in DEMO_CLIENTS + AUDIT_CLIENTS:
            self._inbound({"from": wa_id, "name": name, "text": text, "sent_ago": ago})
        wa_id, name, caption, ago = PHOTO_CLIENT
        self._inbound({"from": wa_id, "name": name, "text": caption, "sent_ago": ago, "media": {
            "kind": "image", "mime_type": "image/png", "data_base64": base64.b64encode(letter_png()).decode()}})
        wanted = {wa_id for wa_id, _, _, _ in DEMO_CLIENTS + AUDIT_CLIENTS}
        _wait("the clients' messages in the database", lambda: wanted <= self._stored_senders(), 60, self.proc,
              self.log)
        _wait("the drafts", lambda: self._count("SELECT count(DISTINCT conversation_id) FROM drafts "
                                                "WHERE status = 'ready'") >= len(wanted), 90, self.proc, self.log)
        _wait("the photo", lambda: self._count("SELECT count(*) FROM media WHERE status = 'stored'") >= 1, 60,
              self.proc, self.log)

    def answer_one(self, email: str) -> None:
        """The demo lawyer approves one client's draft (through ``bin/flask``), and Meta's ticks come back."""
        draft = self._count("SELECT d.id FROM drafts d JOIN conversations c ON c.id = d.conversation_id "
                            "JOIN contacts k ON k.id = c.contact_id WHERE k.wa_id = ? AND d.status = 'ready'",
                            ANSWERED)
        subprocess.run(["env", f"WAFLOW_VAR_DIR={self.var_dir}", str(ROOT / "bin" / "flask"), "drafts", "approve",
                        str(draft), "--by", email, "--wait", "20"],
                       cwd=ROOT, check=True, capture_output=True, timeout=120)
        _wait("the reply read", lambda: self._count("SELECT count(*) FROM messages WHERE direction = 'outbound' "
                                                    "AND status = 'read'") >= 1, 60, self.proc, self.log)

    def _inbound(self, doc: dict[str, Any]) -> None:
        requests.post(f"{self.simulator}/_sim/inbound", json=doc, timeout=10).raise_for_status()

    def _count(self, sql: str, *params: Any) -> int:
        with sqlite3.connect(self.var_dir / "waflow.db") as db:
            found = db.execute(sql, params).fetchone()
            return int(found[0]) if found and found[0] is not None else 0

    def _stored_senders(self) -> set[str]:
        with sqlite3.connect(self.var_dir / "waflow.db") as db:
            return {row[0] for row in db.execute("SELECT wa_id FROM contacts")}

    def _ready_drafts(self) -> dict[str, tuple[int, int, str]]:
        """wa_id -> (draft id, conversation id, text) of each ready draft."""
        with sqlite3.connect(self.var_dir / "waflow.db") as db:
            rows = db.execute("SELECT c.wa_id, d.id, d.conversation_id, d.text FROM drafts d "
                              "JOIN conversations v ON v.id = d.conversation_id JOIN contacts c ON c.id = v.contact_id "
                              "WHERE d.status = 'ready'").fetchall()
        return {wa_id: (draft_id, conversation_id, text) for wa_id, draft_id, conversation_id, text in rows}

    def lawyer_decides(self, email: str) -> None:
        """The demo lawyer decides ``AUDIT_DECISIONS`` with the drafts commands (``bin/flask``), one by one."""
        wanted = {wa_id for wa_id, _, _, _ in AUDIT_CLIENTS}
        _wait("the audit clients' drafts", lambda: wanted <= set(self._ready_drafts()), 90, self.proc, self.log)
        drafts = self._ready_drafts()
        for wa_id, (command, *options) in AUDIT_DECISIONS:
            draft_id, conversation_id, text = drafts[wa_id]
            if command == "write":
                args = ["write", str(conversation_id), *options]
            elif command == "edit":
                edited = EDIT_GREETING + text.replace(EDIT_FROM, EDIT_TO)
                args = ["approve", str(draft_id), "--text", edited]
            else:
                args = [command, str(draft_id), *options]
            subprocess.run(["env", f"WAFLOW_VAR_DIR={self.var_dir}", str(ROOT / "bin" / "flask"), "drafts", *args,
                            "--by", email], cwd=ROOT, check=True, capture_output=True, timeout=60)
            time.sleep(1.1)  # one decision a second: the audit page shows them apart
        _wait("the approved replies' sends", self._sends_settled, 60, self.proc, self.log)

    def _sends_settled(self) -> bool:
        with sqlite3.connect(self.var_dir / "waflow.db") as db:
            busy = db.execute("SELECT count(*) FROM draft_approvals a LEFT JOIN outbound_messages o "
                              "ON o.approval_id = a.id WHERE o.id IS NULL OR o.status IN ('queued', 'sending') "
                              "OR o.wamid NOT IN (SELECT wamid FROM messages WHERE status = 'read')").fetchone()[0]
        return busy == 0

    def demo_lawyer(self) -> tuple[str, str]:
        for line in (self.var_dir / "demo-users.txt").read_text().splitlines():
            role, email, password = (line.split() + ["", "", ""])[:3]
            if role == "lawyer":
                return email, password
        raise SystemExit("bin/screenshots: no demo lawyer in demo-users.txt")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def photograph(stack: Stack, out: Path, only: set[str] | None = None) -> list[Path]:
    """Every shot on every device in every language; the files written."""
    from playwright.sync_api import sync_playwright

    email, password = stack.demo_lawyer()
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for device, options in DEVICES.items():
                for language, browser_locale in LANGUAGES.items():
                    context = browser.new_context(locale=browser_locale, **options)
                    page = context.new_page()
                    signed_in = False
                    for shot in SHOTS:
                        if only and shot.name not in only:
                            continue
                        if shot.signed_in and not signed_in:
                            _sign_in(page, stack.dashboard, email, password, language)
                            signed_in = True
                        page.goto(stack.dashboard + shot.path)
                        page.wait_for_load_state("networkidle")
                        if shot.prepare:
                            shot.prepare(page)
                        path = out / f"{shot.name}-{device}-{language}.png"
                        page.screenshot(path=str(path), full_page=shot.full_page)
                        written.append(path)
                    context.close()
        finally:
            browser.close()
    return written


def _sign_in(page: Any, base: str, email: str, password: str, language: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard/")
    # The demo lawyer speaks Indonesian; the header's switch sets the language to photograph.
    page.click(f"button[name=locale][value={language}]")
    page.wait_for_load_state("networkidle")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bin/screenshots", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--only", action="append", help="only this shot (repeatable): " +
                        ", ".join(s.name for s in SHOTS))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"bin/screenshots needs Chromium at {CHROMIUM} (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="waflow-screenshots-") as scratch:
        stack = Stack(Path(scratch))
        try:
            stack.wait_ready()
            stack.clients_write()
            stack.answer_one(stack.demo_lawyer()[0])
            stack.lawyer_decides(stack.demo_lawyer()[0])
            written = photograph(stack, args.out, set(args.only) if args.only else None)
        finally:
            stack.stop()
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main(sys.argv[1:])
