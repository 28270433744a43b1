"""The simulator's demo traffic: made-up clients writing to the firm as its clients do, mostly in chat
Indonesian (abbreviations, no capitals, a question in two or three lines), a few in English, now and then
urgently. Each client follows a little script of their own, line after line, so the inbox of a fresh
``bin/run`` reads like the firm's and each conversation makes sense.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Callable

logger = logging.getLogger(__name__)

# (wa_id, name, lines): each client's lines in the order they write them (then again from the start).
CLIENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("6281234567001", "Siti Rahmawati", (
        "Selamat pagi Bu, sy mau konsultasi soal hak asuh anak stlh cerai",
        "anak sy 2, yg besar 7 thn yg kecil 4 thn",
        "kira2 bisa ketemu minggu ini? sy bisa hari kamis siang",
    )),
    ("6281234567002", "Budi Santoso", (
        "Pak, kontrak sewa ruko sy diputus sepihak sama pemilik, pdhl msh 2 thn lagi",
        "uang sewa udh sy bayar lunas. bisa minta ganti rugi ga ya?",
    )),
    ("6281234567003", "Dewi Lestari", (
        "Halo, berkas gugatan warisan sy sdh sampai mana ya?",
        "sdh 3 minggu blm ada kabar dr kantor",
    )),
    ("6281234567004", "Rudi Hartono", (
        "Maaf ganggu malam2 pak, besok sidang jam berapa ya?",
        "sy hrs bawa dokumen apa aja?",
    )),
    ("6281234567005", "Agus Setiawan", (
        "pak tolong, adik sy ditangkap polisi td sore, skrg di polsek",
        "kami hrs gmn? boleh dijenguk ga?",
    )),
    ("6281234567006", "Nur Aini", (
        "Selamat siang, sy di-PHK tanpa pesangon setelah kerja 6 thn",
        "perusahaan bilang krn efisiensi. sy berhak dapat apa aja ya bu?",
    )),
    ("6281234567007", "Yohanes Siregar", (
        "Siang pak, sy mau balik nama sertifikat tanah warisan orang tua",
        "biaya & prosesnya kira2 brp lama?",
    )),
    ("6281234567008", "Fitri Handayani", (
        "bu sy dpt somasi dr debt collector, katanya mau dilaporkan ke polisi",
        "pdhl cicilan sy cuma telat 2 bln. itu boleh ga sih?",
    )),
    ("447700900004", "James Whitfield", (
        "Good morning, I need a lawyer to review a shareholder agreement for a PT PMA before Friday.",
        "Is that possible, and what would it cost?",
    )),
    ("15551230003", "Maria Gonzalez", (
        "Hello, my landlord in Bali is keeping my deposit without any reason. What can I do?",
    )),
)


class DemoTraffic:
    """Injects ``per_minute`` inbound text messages a minute from the demo clients, on its own thread."""

    def __init__(self, per_minute: float, inject: Callable[[dict], object]) -> None:
        self.interval = 60.0 / per_minute
        self._inject = inject
        self._next = {wa_id: 0 for wa_id, _, _ in CLIENTS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-demo-traffic", daemon=True)

    def start(self) -> None:
        logger.info("simulator: demo traffic, one inbound message every %.2fs", self.interval)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def next_message(self) -> dict:
        """The next line of a client picked at random."""
        wa_id, name, lines = random.choice(CLIENTS)
        line = lines[self._next[wa_id] % len(lines)]
        self._next[wa_id] += 1
        return {"from": wa_id, "name": name, "text": line, "type": "text"}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._inject(self.next_message())
