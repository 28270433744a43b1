"""The offline drafter: retrieval in chat Indonesian, language, urgency, intake, the fixed parts of a draft."""
from __future__ import annotations

import logging
import time

import pytest

from drafting_support import ask, media
from waflow.drafting.knowledge import KnowledgeBase, SAMPLE_DIR
from waflow.drafting.offline import OfflineDrafter
from waflow.drafting.types import FLAGS


@pytest.fixture(scope="module")
def drafter() -> OfflineDrafter:
    return OfflineDrafter(KnowledgeBase(SAMPLE_DIR))


def top3(drafter: OfflineDrafter, message: str) -> list[str]:
    return [hit.entry.id for hit in drafter.analyse(ask(message)).retrieved]


@pytest.mark.parametrize("message, entry", [
    ("sy mau gugat cerai suami gmn prosedurnya", "cerai-prosedur"),
    ("kl udh cerai anak2 ikut siapa?", "hak-asuh-anak"),
    ("sertifkat tanah sy ilang", "sertifikat-hilang"),  # a typo and chat spelling
    ("brp pesagon klo kerja 10 thn", "pesangon"),  # a typo, abbreviations
    ("diphk sepihak tnp surat, sah gk", "phk"),
    ("adik ketangkep polisi td mlm", "ditangkap"),
    ("tlg bantu ajukan penangguhan penahanan utk suami", "penangguhan-penahanan"),
    ("diteror pinjol trs, data sy disebar", "pinjol"),
    ("motor mau ditarik debt collector", "debt-collector"),
    ("mau bikin pt perorangan", "pendirian-pt"),
    ("sy dpt somasi dr developer", "somasi-diterima"),
    ("kantor bpk dmn ya, buka jam brp", "kantor-jam-lokasi"),
    ("How much is the first consultation?", "konsultasi-pertama"),
    ("my landlord wants to evict me before the lease ends", "sewa-menyewa"),
])
def test_it_finds_the_entry_for_chat_phrasings_with_abbreviations_and_typos(drafter, message, entry):
    assert entry in top3(drafter, message)


@pytest.mark.parametrize("message, history, language", [
    ("pak sy mau tanya soal warisan bapak sy", (), "id"),
    ("Good afternoon, I would like to ask about my late father's estate", (), "en"),
    ("hi pak, sy mau tanya about the inheritance of my father", (), "id"),  # mixed counts as Indonesian
    ("ok", (("client", "Can you help me with my divorce?"),), "en"),  # a short message takes the history's
    ("ok", (("client", "sy mau tanya soal cerai"),), "id"),
    ("thanks", (("client", "apakah bisa konsultasi hari sabtu?"),), "id"),
    ("divorce lawyer fees", (), "en"),  # no function word: the knowledge base's English words decide
    ("👍", (), "id"),  # nothing at all to go on: the firm's language
])
def test_it_detects_the_conversations_language(drafter, message, history, language):
    assert drafter.draft(ask(message, history=history)).language == language


def test_it_answers_in_the_detected_language(drafter):
    english = drafter.draft(ask("what is the difference between SHM and HGB?"))
    indonesian = drafter.draft(ask("apa beda shm sama hgb?"))
    assert "freehold title" in english.text and "Hak Milik" in indonesian.text


@pytest.mark.parametrize("message", [
    "suami sy ditangkap polres semalam",  # arrest
    "anak saya sudah ditahan 5 hari",  # detention
    "sidang perceraian saya minggu depan, sy harus bawa apa",  # a hearing
    "sy dpt surat panggilan dr polda",  # a summons
    "kami terima somasi dr supplier",  # a somasi received
    "hrs bayar dlm 3 hr katanya",  # a deadline within days
    "bsk sy hrs ke pengadilan",  # tomorrow
    "bisa ketemu pengacara hari ini?",  # today
    "My brother was arrested this morning",
    "I have a court hearing on Monday",
    "suami mukul sy lg td pagi",  # violence now
])
def test_it_flags_each_kind_of_urgency(drafter, message):
    draft = drafter.draft(ask(message))
    assert "urgent" in draft.flags
    assert ("mendesak" in draft.text) or ("urgent" in draft.text)


@pytest.mark.parametrize("message", [
    "berapa biaya konsultasi pertama?",
    "mau tanya cara bikin surat wasiat",
    "mau kirim somasi ke penyewa yg nunggak",  # sending one is not urgent
    "suami suka membentak walau tidak memukul, apa itu kdrt?",  # a negated trigger
    "How do I register a trademark?",
    "telat bayar cicilan baru 5 hari sudah diteror",  # a number of days that is no deadline
])
def test_it_does_not_flag_calm_messages_as_urgent(drafter, message):
    assert "urgent" not in drafter.draft(ask(message)).flags


def intake_lines(text: str) -> str:
    return text.split("mohon sampaikan:")[-1] if "mohon sampaikan:" in text else ""


def test_it_asks_every_intake_question_when_nothing_is_known(drafter):
    asked = intake_lines(drafter.draft(ask("mau tanya soal cerai")).text)
    assert "nama lengkap" in asked and "apa yang terjadi dan kapan" in asked and "tenggat" in asked


def test_it_does_not_ask_the_name_it_already_has(drafter):
    assert "nama lengkap" not in intake_lines(drafter.draft(ask("mau tanya soal cerai", name="Rina")).text)
    assert "nama lengkap" not in intake_lines(drafter.draft(ask("nama saya Rina, mau tanya soal cerai")).text)


def test_it_does_not_ask_what_happened_once_the_client_told_it_with_a_time(drafter):
    story = ("suami saya pergi dari rumah sejak bulan maret tahun lalu dan tidak pernah pulang lagi, "
             "sekarang saya mau mengajukan cerai")
    asked = intake_lines(drafter.draft(ask(story)).text)
    assert "apa yang terjadi" not in asked and "nama lengkap" in asked


def test_it_does_not_ask_for_a_deadline_the_client_gave(drafter):
    asked = intake_lines(drafter.draft(ask("sidang cerai saya tanggal 12/12")).text)
    assert "tenggat" not in asked


def test_it_does_not_ask_the_kind_of_matter_once_an_entry_matched(drafter):
    assert "jenis masalah" not in intake_lines(drafter.draft(ask("gmn cara ngurus sertifikat yg hilang")).text)
    assert "jenis masalah" in intake_lines(drafter.draft(ask("halo pak")).text)


def test_it_asks_an_existing_client_for_the_name_only(drafter):
    asked = intake_lines(drafter.draft(ask("gimana perkembangan perkara saya?")).text)
    assert "nama lengkap" in asked and "jenis masalah" not in asked and "tenggat" not in asked


def test_it_opens_only_a_first_contact_with_the_acknowledgement(drafter):
    first = drafter.draft(ask("mau tanya soal cerai", first_contact=True))
    later = drafter.draft(ask("mau tanya soal cerai"))
    assert first.text.startswith("Terima kasih telah menghubungi Kantor Hukum Wirawan Sinaga & Rekan.")
    assert "bukan nasihat hukum" in first.text and "Senin–Jumat pukul 09.00–17.00 WIB" in first.text
    assert "first_contact" in first.flags
    assert "bukan nasihat hukum" not in later.text and "first_contact" not in later.flags


def test_it_acknowledges_in_english_for_an_english_first_contact(drafter):
    draft = drafter.draft(ask("Hello, I need help with a contract review", first_contact=True))
    assert draft.text.startswith("Thank you for contacting") and "not legal advice" in draft.text


@pytest.mark.parametrize("kind, said", [("image", "foto"), ("document", "dokumen"), ("audio", "pesan suara")])
def test_it_acknowledges_an_attachment(drafter, kind, said):
    draft = drafter.draft(ask(media(kind, "ini sertifikat tanah yg disengketakan")))
    assert "has_media" in draft.flags
    assert f"Kami sudah menerima {said} Anda" in draft.text


def test_it_acknowledges_an_attachment_sent_without_a_caption(drafter):
    draft = drafter.draft(ask(media("document")))
    assert "has_media" in draft.flags and "Kami sudah menerima dokumen Anda" in draft.text


@pytest.mark.parametrize("message", ["apakah bisa pesan pizza di sini", "siapa presiden indonesia sekarang?",
                                     "can you recommend a restaurant nearby"])
def test_it_holds_politely_when_nothing_matches(drafter, message):
    draft = drafter.draft(ask(message))
    assert "low_confidence" in draft.flags and draft.sources == () and draft.confidence < 0.33
    assert ("Advokat kami akan mempelajarinya" in draft.text) or ("One of our lawyers will look into it" in draft.text)


def test_it_answers_messages_that_arrived_together_in_one_draft(drafter):
    draft = drafter.draft(ask("pak sy di phk sepihak", "trs THR tahun ini jg blm dibayar",
                              "oh ya kantor bapak di mana?"))
    used = {source.entry_id for source in draft.sources}
    assert {"phk", "gaji-thr", "kantor-jam-lokasi"} <= used
    assert "Jl. Cikini Raya No. 48" in draft.text and "Dinas Tenaga Kerja" in draft.text


def test_it_carries_only_known_flags_in_a_fixed_order_and_a_confidence_between_0_and_1(drafter):
    draft = drafter.draft(ask("tolong suami sy ditangkap", media("image"), first_contact=True))
    assert draft.flags == ("urgent", "first_contact", "has_media")
    assert set(draft.flags) <= set(FLAGS) and 0 < draft.confidence < 1
    assert (draft.drafter, draft.model, draft.prompt_version) == ("offline", None, None)


def test_it_drafts_in_well_under_50_ms_once_the_index_is_built(drafter):
    drafter.draft(ask("warm up"))
    timings = []
    for message in ["sy mau cerai gmn caranya", "my husband was arrested", "sertifkat ilang", "brp biaya"] * 10:
        started = time.perf_counter()
        drafter.draft(ask(message))
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[int(0.95 * len(timings))] < 0.050


def test_it_rebuilds_the_index_only_when_the_knowledge_base_changes(drafter):
    _, first = drafter.index()
    drafter.draft(ask("apa itu praperadilan"))
    _, second = drafter.index()
    assert first is second


def test_it_never_logs_what_the_client_wrote(drafter, caplog):
    secret = "Rahasia Klien Budi Santoso ditangkap di polsek"
    with caplog.at_level(logging.DEBUG):
        draft = drafter.draft(ask(secret, name="Budi Santoso", first_contact=True))
    assert caplog.records, "the drafter logs one line per draft"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "conversation=7" in logged and "ditangkap:" in logged  # ids and scores are logged
    for word in ("Rahasia", "Budi", "Santoso"):
        assert word not in logged
    assert "Budi Santoso" in draft.text  # the greeting uses the name; only the log must not
