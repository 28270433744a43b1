"""``bench/dashboard.py``'s data: a firm's years of WhatsApp in PostgreSQL, written with SQL (generate_series),
not through the pipeline, in a minute or two.

What it writes (sizes are the arguments):

- ``conversations`` clients, one conversation each; ``messages`` messages in all, of which ``long`` in
  conversation 1 (the last 30 days, alternating, ending with the client's urgent question). The rest are
  spread unevenly (a few clients write a lot), over the past year, 55% from clients; 5% are media (image,
  document, voice note) with their ``media`` rows (stored, a few pending or failed). Each conversation then
  gets one last message in the past three days: a reply from the firm, except for ``waiting`` conversations,
  where the client wrote last (a fifth of them urgent).
- ``decisions`` decisions by 10 lawyers on drafts answering clients' messages (approved as drafted 45%,
  edited 25%, a template 3%, rejected 12% with a reason, written by hand 15%, half of those with no draft),
  each with its draft request, draft (offline or chat, sources with scores), approval and send.
- 100,000 rows of the change log.
- Whatever the inbox's migration (0006, the inbox branch) added, when it exists: each conversation's last
  message, client message count, waiting since and urgency; assignments (a third of the conversations);
  the bench lawyer's read state. Columns and tables that do not exist are skipped, so the seeder works before
  and after that migration.

Ids are given explicitly (1..n per table) and the sequences moved past them, so rows can refer to each other
without a lookup.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from rapidfuzz.distance import Levenshtein

NUMBER = "100000000000001"
NAMES = ["Dewi Lestari", "Andi Pratama", "Siti Nurhaliza", "Rudi Hartono", "Agus Salim", "Bambang Wijaya",
         "Rina Kusuma", "Yusuf Hidayat", "Putri Ayu", "Hendra Gunawan", "Sri Wahyuni", "Joko Susilo",
         "Maya Sari", "Fajar Nugroho", "Lina Marlina", "Teguh Santoso"]
CLIENT_TEXTS = [
    "Selamat pagi, Bu. Saya mau konsultasi soal hak asuh anak setelah cerai, kira-kira bisa ketemu minggu ini?",
    "Pak, kontrak sewa ruko saya diputus sepihak sama pemilik. Apa saya bisa minta ganti rugi?",
    "Halo, berkas gugatan warisan saya sudah sampai mana ya?",
    "Maaf ganggu malam2, besok sidang jam berapa ya pak?",
    "Debt collector dtg ke rmh sy tiap hari, ngancam2. Sy hrs gmn?",
    "Sy mau buat perjanjian kerja sama usaha dg teman, bisa dibantu buatkan?",
    "Bu, berapa biaya konsultasi pertama di kantor ibu?",
    "Suami sy pergi 3 thn gk ada kabar, bs cerai gk?",
    "Gaji sy blm dibayar 2 bulan, perusahaan bilang lg susah. Sy bisa lapor kemana?",
    "Sertifikat tanah ortu msh atas nama kakek, gmn cara balik namanya?",
]
FIRM_TEXTS = [
    "Baik, Bu. Kami bisa bertemu hari Kamis pukul 10.00 di kantor. Mohon bawa akta nikah dan akta kelahiran anak.",
    "Terima kasih, Pak. Mohon kirimkan salinan kontrak sewanya agar kami pelajari dulu.",
    "Berkas Ibu sudah kami daftarkan; sidang pertama dijadwalkan bulan depan. Kami kabari tanggal pastinya.",
    "Sidang besok pukul 09.00 di PN Jakarta Selatan, ruang 3. Mohon datang 30 menit lebih awal.",
    "Simpan bukti ancamannya (rekaman, foto, nama penagih). Kami telepon Bapak siang ini.",
]
URGENT_TEXT = "Pak tolong, adik saya ditangkap polisi tadi malam dan sekarang ditahan di polsek. Besok sidang?"
DRAFT = ("Terima kasih telah menghubungi Kantor Hukum Wirawan Sinaga & Rekan. Balasan ini disiapkan dengan bantuan "
         "perangkat lunak dan diperiksa oleh tim kami; isinya informasi umum, bukan nasihat hukum, dan belum ada "
         "hubungan advokat-klien di antara kita. Seorang advokat akan menanggapi pesan Anda pada jam kantor "
         "(Senin-Jumat pukul 09.00-17.00 WIB).\n\n{answer}\n\nAgar kami dapat membantu, mohon sampaikan: apa yang "
         "terjadi dan kapan; apakah ada tenggat waktu, jadwal sidang, atau surat panggilan.\n\nSalam, Kantor Hukum "
         "Wirawan Sinaga & Rekan")
ANSWERS = [
    "Menurut UU No. 1 Tahun 1974 tentang Perkawinan, perceraian hanya dapat dilakukan di depan sidang pengadilan "
    "setelah upaya mendamaikan tidak berhasil.",
    "Pemutusan sewa secara sepihak sebelum jangka waktunya berakhir dapat menjadi wanprestasi; ganti rugi dapat "
    "dituntut bila kerugiannya dapat dibuktikan.",
    "Penagih utang tidak boleh mengancam atau mempermalukan debitur; simpan bukti dan laporkan ke OJK atau polisi.",
    "Perjanjian di bawah tangan sudah sah bila memenuhi syarat Pasal 1320 KUHPerdata; akta notaris memberi "
    "kekuatan pembuktian yang lebih kuat.",
]
HEAVY_EDITS = ["Bu, saya telepon sore ini untuk membahas jadwalnya.",
               "Mohon datang ke kantor kami besok jam 10 dengan membawa KTP dan semua surat yang Bapak terima."]
LIGHT_HEAD, LIGHT_TAIL = "Selamat pagi. ", " Terima kasih."
SOURCES = ['[{"entry_id": "cerai-prosedur", "score": 3.81}, {"entry_id": "cerai-pasangan-pergi", "score": 3.5}]',
           '[{"entry_id": "sewa-ruko", "score": 4.12}]',
           '[{"entry_id": "debt-collector", "score": 5.02}, {"entry_id": "biaya", "score": 1.2}]',
           '[{"entry_id": "buat-perjanjian", "score": 2.97}]']
REASONS = ["wrong_facts", "wrong_tone", "needs_lawyer", "other"]
LAWYERS = 10

# Tables emptied before seeding (those that exist), children first.
TABLES = ["presence", "conversation_reads", "assignments", "changes", "draft_decisions", "outbound_messages",
          "draft_approvals", "drafts", "draft_request_messages", "draft_requests", "media", "message_statuses",
          "messages", "conversations", "contacts"]


def sql_array(values: list[str]) -> str:
    """A text[] literal for a statement (values are ours, quoted for SQL)."""
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


def _drafts() -> list[str]:
    return [DRAFT.format(answer=a) for a in ANSWERS]


def seed(cur: Any, *, conversations: int, messages: int, long: int, waiting: int, decisions: int,
         lawyer_ids: list[int], bench_lawyer: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Empty the tables and write everything (module docstring) through ``cur`` (psycopg2, in a transaction);
    what was filled, for the report."""
    tables, columns = _schema(cur)
    cur.execute(f"TRUNCATE {', '.join(t for t in TABLES if t in tables)} RESTART IDENTITY CASCADE")
    bulk = messages - long - (conversations - 1)
    if bulk < 0:
        raise SystemExit("--messages must be at least --long + --conversations - 1")
    drafts, heavy = _drafts(), HEAVY_EDITS
    step = max(conversations // max(waiting, 1), 2)  # every step-th conversation waits
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("contacts", f"""
INSERT INTO contacts (id, wa_id, name, created_at, updated_at)
SELECT i, '62811' || lpad(i::text, 8, '0'), ({sql_array(NAMES)})[1 + i %% {len(NAMES)}] || ' ' || i,
       now() - interval '400 days', now()
FROM generate_series(1, %(n)s) AS i""", {"n": conversations}),
        ("conversations", f"""
INSERT INTO conversations (id, contact_id, phone_number_id, display_phone_number, created_at)
SELECT i, i, '{NUMBER}', '6281100000000', now() - interval '400 days' FROM generate_series(1, %(n)s) AS i""",
         {"n": conversations}),
        ("messages (the long conversation)", _messages_long(), {"long": long}),
        ("messages (the rest)", _messages_bulk(), {"n": conversations, "bulk": bulk, "start": long}),
        ("messages (each conversation's last)", _messages_last(), {"n": conversations, "step": step,
                                                                    "start": long + bulk}),
        ("media", """
INSERT INTO media (id, media_id, wamid, direction, phone_number_id, kind, mime_type, detected_mime_type, size, status,
                   storage_key, error, created_at, updated_at, stored_at)
SELECT row_number() OVER (ORDER BY m.id), 'bench-media-' || m.id, m.wamid, 'inbound', m.phone_number_id, m.type,
       CASE m.type WHEN 'image' THEN 'image/jpeg' WHEN 'audio' THEN 'audio/ogg' ELSE 'application/pdf' END,
       CASE m.type WHEN 'image' THEN 'image/jpeg' WHEN 'audio' THEN 'audio/ogg' ELSE 'application/pdf' END,
       20000 + m.id % 900000,
       CASE WHEN m.id % 20 = 0 THEN 'failed' WHEN m.id % 20 = 1 THEN 'pending' ELSE 'stored' END,
       CASE WHEN m.id % 20 > 1 THEN md5(m.wamid) END,
       CASE WHEN m.id % 20 = 0 THEN 'the media id expired' END, m.sent_at, m.sent_at, m.sent_at
FROM messages m WHERE m.type IN ('image', 'document', 'audio')""", {}),
        ("decisions", "", {}),
        ("changes", """
INSERT INTO changes (id, kind, conversation_id, message_id, key, created_at)
SELECT i, (ARRAY['message.new', 'delivery.tick', 'draft.ready', 'draft.approved'])[1 + i %% 4], 1 + i %% %(n)s,
       NULL, 'bench:' || i, now() - interval '1 second' * (100001 - i)
FROM generate_series(1, 100000) AS i""", {"n": conversations}),
    ]
    timings = {}
    for name, statement, params in steps:
        started = time.monotonic()
        if name == "decisions":
            _decisions(cur, decisions, lawyer_ids, drafts, heavy)
        else:
            cur.execute(statement, params or None)  # no parameters: a % in the SQL is just a %
        timings[name] = round(time.monotonic() - started, 1)
        say(f"  {name}: {timings[name]} s")
    filled = _inbox_state(cur, tables, columns, lawyer_ids, bench_lawyer, step, say)
    for table in ("contacts", "conversations", "messages", "media", "draft_requests", "drafts", "draft_approvals",
                  "draft_decisions", "outbound_messages", "changes"):
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 0) + 1 "
                    f"FROM {table}), false)")
    return {"seconds": timings, "inbox_state": filled}


def _messages_long() -> str:
    """Conversation 1: ``long`` messages over the last 30 days, alternating, the last the client's (urgent)."""
    return f"""
INSERT INTO messages (id, wamid, conversation_id, contact_id, phone_number_id, direction, type, body, sent_at,
                      received_at, content, status, created_at)
SELECT i, 'wamid.bench.' || i, 1, 1, '{NUMBER}', d.direction, 'text', d.body, d.at, d.at,
       jsonb_build_object('text', jsonb_build_object('body', d.body)),
       CASE WHEN d.direction = 'outbound' THEN 'read' END, d.at
FROM generate_series(1, %(long)s) AS i,
LATERAL (SELECT CASE WHEN (%(long)s - i) %% 2 = 0 THEN 'inbound' ELSE 'outbound' END AS direction,
                now() - interval '30 days' + interval '30 days' * i / (%(long)s + 1) AS at) AS t,
LATERAL (SELECT t.direction, t.at,
                CASE WHEN i = %(long)s THEN '{URGENT_TEXT}'
                     WHEN t.direction = 'inbound' THEN ({sql_array(CLIENT_TEXTS)})[1 + i %% {len(CLIENT_TEXTS)}]
                     ELSE ({sql_array(FIRM_TEXTS)})[1 + i %% {len(FIRM_TEXTS)}] END AS body) AS d"""


def _messages_bulk() -> str:
    """The rest over the past year (until three days ago), unevenly over conversations 2..n (``random()^1.2``:
    the first hundred conversations hold about 2% of them, a few hundred messages each); 5% media."""
    return f"""
INSERT INTO messages (id, wamid, conversation_id, contact_id, phone_number_id, direction, type, body, sent_at,
                      received_at, content, status, created_at)
SELECT %(start)s + i, 'wamid.bench.' || (%(start)s + i), c, c, '{NUMBER}', direction, type, body, at, at,
       CASE WHEN type = 'text' THEN jsonb_build_object('text', jsonb_build_object('body', body))
            ELSE jsonb_build_object(type, jsonb_build_object('id', 'bench-media-' || (%(start)s + i))) END,
       CASE WHEN direction = 'outbound' THEN (ARRAY['read', 'delivered', 'sent', 'failed'])[1 + i %% 4] END, at
FROM (SELECT i, c, direction, type, at,
             CASE WHEN type <> 'text' THEN NULL WHEN direction = 'inbound'
                  THEN ({sql_array(CLIENT_TEXTS)})[1 + i %% {len(CLIENT_TEXTS)}]
                  ELSE ({sql_array(FIRM_TEXTS)})[1 + i %% {len(FIRM_TEXTS)}] END AS body
      FROM (SELECT i, 2 + floor((%(n)s - 1) * power(random(), 1.2))::bigint AS c,
                   CASE WHEN random() < 0.55 THEN 'inbound' ELSE 'outbound' END AS direction,
                   CASE WHEN i %% 20 = 7 THEN (ARRAY['image', 'document', 'audio'])[1 + i %% 3] ELSE 'text' END
                     AS type,
                   now() - interval '3 days' - interval '362 days' * random() AS at
            FROM generate_series(1, %(bulk)s) AS i) AS r) AS s"""


def _messages_last() -> str:
    """One last message per conversation 2..n in the past three days: the firm's reply, or, for every
    ``step``-th conversation (the waiting ones), the client's; every fifth waiting one is urgent."""
    return f"""
INSERT INTO messages (id, wamid, conversation_id, contact_id, phone_number_id, direction, type, body, sent_at,
                      received_at, content, status, created_at)
SELECT %(start)s + c - 1, 'wamid.bench.' || (%(start)s + c - 1), c, c, '{NUMBER}', direction, 'text', body, at, at,
       jsonb_build_object('text', jsonb_build_object('body', body)),
       CASE WHEN direction = 'outbound' THEN 'read' END, at
FROM (SELECT c, CASE WHEN waiting THEN 'inbound' ELSE 'outbound' END AS direction,
             CASE WHEN waiting AND c %% (5 * %(step)s) = 0 THEN '{URGENT_TEXT}'
                  WHEN waiting THEN ({sql_array(CLIENT_TEXTS)})[1 + c %% {len(CLIENT_TEXTS)}]
                  ELSE ({sql_array(FIRM_TEXTS)})[1 + c %% {len(FIRM_TEXTS)}] END AS body,
             now() - interval '3 days' * random() AS at
      FROM (SELECT c, c %% %(step)s = 0 AS waiting FROM generate_series(2, %(n)s) AS c) AS w) AS s"""


def _decisions(cur: Any, count: int, lawyers: list[int], drafts: list[str], heavy: list[str]) -> None:
    """``count`` decisions, each on a client's text message picked at random, 1 minute to 6 hours after it."""
    light = [len(LIGHT_HEAD) + len(LIGHT_TAIL)] * len(drafts)
    heavy_distance = [Levenshtein.distance(d, h) for d in drafts for h in heavy]
    cur.execute("""
CREATE TEMPORARY TABLE bench_pick ON COMMIT DROP AS
SELECT row_number() OVER () AS n, p.message_id, p.conversation_id, p.wrote,
       p.wrote + interval '1 minute' + interval '6 hours' * power(random(), 2) AS decided,
       (%(lawyers)s::bigint[])[1 + floor(%(k)s * power(random(), 1.5))::int] AS user_id,
       random() AS r
-- The random columns are drawn outside the pick: inside, PostgreSQL would reuse the sort key's random() for
-- them (the same expression), and the LIMIT keeps the smallest.
FROM (SELECT m.id AS message_id, m.conversation_id, m.sent_at AS wrote
      FROM messages m WHERE m.direction = 'inbound' AND m.type = 'text' AND m.conversation_id > 1
      ORDER BY random() LIMIT %(count)s) AS p""", {"lawyers": lawyers, "k": len(lawyers), "count": count})
    cur.execute(f"""
ALTER TABLE bench_pick ADD COLUMN action text, ADD COLUMN draft text, ADD COLUMN final text, ADD COLUMN distance int,
                       ADD COLUMN reason text, ADD COLUMN has_draft boolean;
UPDATE bench_pick SET
  action = CASE WHEN r < .45 THEN 'approve' WHEN r < .70 THEN 'edit' WHEN r < .73 THEN 'template'
                WHEN r < .85 THEN 'reject' ELSE 'write' END,
  draft = ({sql_array(drafts)})[1 + n % {len(drafts)}];
UPDATE bench_pick SET has_draft = NOT (action = 'write' AND n % 2 = 0),
  final = CASE action WHEN 'approve' THEN draft
                      WHEN 'edit' THEN CASE WHEN n % 3 = 0 THEN ({sql_array(heavy)})[1 + n % {len(heavy)}]
                                            ELSE '{LIGHT_HEAD}' || draft || '{LIGHT_TAIL}' END
                      WHEN 'template' THEN '{{"language":"id","parameters":["2026-' || n || '"],"template":"case_update"}}'
                      WHEN 'write' THEN ({sql_array(FIRM_TEXTS)})[1 + n % {len(FIRM_TEXTS)}] END,
  distance = CASE action WHEN 'approve' THEN 0
                         WHEN 'edit' THEN CASE WHEN n % 3 = 0
                              THEN (ARRAY{heavy_distance})[1 + (n % {len(drafts)}) * {len(heavy)} + n % {len(heavy)}]
                              ELSE (ARRAY{light})[1 + n % {len(drafts)}] END END,
  reason = CASE WHEN action = 'reject' THEN ({sql_array(REASONS)})[1 + n % {len(REASONS)}] END;
INSERT INTO draft_requests (id, conversation_id, status, due_at, messages, origin, answered_at, created_at, updated_at)
SELECT n, conversation_id, 'done', wrote + interval '3 seconds', 1, 'client', decided, wrote, decided
FROM bench_pick WHERE has_draft;
INSERT INTO draft_request_messages (request_id, message_id) SELECT n, message_id FROM bench_pick WHERE has_draft;
INSERT INTO drafts (id, conversation_id, request_id, status, status_reason, answers, drafter, model, prompt_version,
                    sources, text, language, flags, confidence, latency_ms, created_at, finished_at, decided_at,
                    announced_at)
SELECT n, conversation_id, n,
       CASE action WHEN 'reject' THEN 'rejected' WHEN 'write' THEN 'superseded' ELSE 'approved' END,
       CASE WHEN action = 'write' THEN 'replied' END, '[]'::jsonb,
       CASE WHEN n % 4 = 0 THEN 'chat' ELSE 'offline' END, CASE WHEN n % 4 = 0 THEN 'qwen2.5-7b-instruct' END,
       CASE WHEN n % 4 = 0 THEN 'reply-v3' END, ({sql_array(SOURCES)})[1 + n % {len(SOURCES)}]::jsonb, draft, 'id',
       '[]'::jsonb, 0.7, 40, wrote + interval '3 seconds', wrote + interval '4 seconds', decided,
       wrote + interval '4 seconds'
FROM bench_pick WHERE has_draft;
INSERT INTO draft_approvals (id, draft_id, conversation_id, user_id, via, kind, text, sha256, created_at, handed_at)
SELECT n, CASE WHEN has_draft THEN n END, conversation_id, user_id, 'dashboard',
       CASE WHEN action = 'template' THEN 'template' ELSE 'text' END, final,
       encode(sha256(convert_to(final, 'UTF8')), 'hex'), decided, decided + interval '1 second'
FROM bench_pick WHERE action <> 'reject';
INSERT INTO outbound_messages (id, idempotency_key, phone_number_id, recipient, lane, kind, payload, text, status,
                               parked, wamid, attempts, pair_attempts, created_at, updated_at, accepted_at,
                               approval_id)
SELECT n, 'approval:' || n, '{NUMBER}', '62811' || lpad(conversation_id::text, 8, '0'), 'reply',
       CASE WHEN action = 'template' THEN 'template' ELSE 'text' END, '{{}}'::jsonb, final, 'accepted', false,
       'wamid.bench.out.' || n, 1, 0, decided, decided, decided + interval '2 seconds', n
FROM bench_pick WHERE action <> 'reject';
INSERT INTO draft_decisions (id, draft_id, conversation_id, user_id, via, action, reason, note, original_text,
                             final_text, edit_distance, approval_id, decided_at)
SELECT n, CASE WHEN has_draft THEN n END, conversation_id, user_id, CASE WHEN n % 10 = 0 THEN 'cli' ELSE 'dashboard' END,
       action, reason, CASE WHEN reason = 'other' THEN 'Klien sudah ditelepon langsung.' END,
       CASE WHEN has_draft THEN draft END, final, CASE WHEN has_draft THEN distance END,
       CASE WHEN action <> 'reject' THEN n END, decided
FROM bench_pick ORDER BY decided, n;""")


def _schema(cur: Any) -> tuple[set[str], dict[str, set[str]]]:
    cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
    columns: dict[str, set[str]] = {}
    for table, column in cur.fetchall():
        columns.setdefault(table, set()).add(column)
    return set(columns), columns


# What the inbox's migration adds to each conversation, as the seeder fills it (when the column exists).
INBOX_COLUMNS = {
    "last_message_at": "l.sent_at",
    "last_message_direction": "l.direction",
    "last_message_type": "l.type",
    "last_message_preview": "substr(l.body, 1, 160)",
    "inbound_count": "a.inbound",
    "waiting_since": "a.waiting_since",
    "urgent": "(a.waiting_since IS NOT NULL AND (c.id = 1 OR c.id % {urgent_every} = 0))",
}


def _inbox_state(cur: Any, tables: set[str], columns: dict[str, set[str]], lawyers: list[int], bench_lawyer: int,
                 step: int, say: Callable[[str], None]) -> list[str]:
    filled = []
    started = time.monotonic()
    cur.execute("""UPDATE conversations c SET last_inbound_at = x.last_in FROM (
                     SELECT conversation_id, max(sent_at) AS last_in FROM messages WHERE direction = 'inbound'
                     GROUP BY conversation_id) x WHERE x.conversation_id = c.id""")
    present = [name for name in INBOX_COLUMNS if name in columns.get("conversations", set())]
    if present:
        sets = ", ".join(f"{name} = {INBOX_COLUMNS[name].format(urgent_every=5 * step)}" for name in present)
        cur.execute(f"""
UPDATE conversations c SET {sets}
FROM (SELECT DISTINCT ON (conversation_id) conversation_id, sent_at, direction, type, body FROM messages
      ORDER BY conversation_id, sent_at DESC, id DESC) AS l,
     (SELECT m.conversation_id, count(*) FILTER (WHERE m.direction = 'inbound') AS inbound,
             min(m.sent_at) FILTER (WHERE m.direction = 'inbound' AND m.sent_at > coalesce(r.replied, '-infinity'))
               AS waiting_since
      FROM messages m LEFT JOIN (SELECT conversation_id, max(sent_at) AS replied FROM messages
                                 WHERE direction = 'outbound' GROUP BY conversation_id) r
        ON r.conversation_id = m.conversation_id
      GROUP BY m.conversation_id) AS a
WHERE l.conversation_id = c.id AND a.conversation_id = c.id""")
        filled += [f"conversations.{name}" for name in present]
    if "assignments" in tables:
        cur.execute("INSERT INTO assignments (conversation_id, user_id, assigned_at) SELECT id, "
                    "(%(lawyers)s::bigint[])[1 + id %% %(k)s], now() - interval '2 days' FROM conversations "
                    "WHERE id %% 3 = 0", {"lawyers": lawyers, "k": len(lawyers)})
        filled.append("assignments")
    reads = columns.get("conversation_reads", set())
    if {"user_id", "conversation_id", "inbound_seen", "read_at"} <= reads:
        seen = "greatest(inbound_count - id %% 3, 0)" if "inbound_count" in columns["conversations"] else "0"
        cur.execute(f"INSERT INTO conversation_reads (user_id, conversation_id, inbound_seen, read_at) SELECT "
                    f"%(user)s, id, {seen}, now() - interval '1 hour' FROM conversations WHERE id %% 2 = 0",
                    {"user": bench_lawyer})
        filled.append("conversation_reads")
    say(f"  the inbox's state ({', '.join(filled) or 'last_inbound_at only: no inbox migration'}): "
        f"{time.monotonic() - started:.1f} s")
    return filled


def describe(cur: Any) -> dict[str, Any]:
    """Counts of what is in the database, for the report."""
    found = {}
    for table in ("conversations", "messages", "media", "drafts", "draft_decisions", "changes"):
        cur.execute(f"SELECT count(*) FROM {table}")
        found[table] = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM messages WHERE conversation_id = 1")
    found["long_conversation_messages"] = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM (SELECT DISTINCT ON (conversation_id) direction FROM messages "
                "ORDER BY conversation_id, sent_at DESC, id DESC) AS last WHERE direction = 'inbound'")
    found["waiting_conversations"] = cur.fetchone()[0]
    return found


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
