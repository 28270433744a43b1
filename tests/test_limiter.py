"""The send limiter's arithmetic, on the file store always and on Redis when WAFLOW_TEST_REDIS_URL is set.

Both stores take a fake clock here (Redis scripts accept a pinned "now"), so nothing sleeps but
the one test that runs two real processes against one file store.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest

from conftest import SKIP_REDIS
from support import REDIS_URL
from waflow import config, limiter
from waflow.limiter import FileStore, RedisStore, Reservation, Wait

NOW = 1_764_000_000.0
T80 = 1 / (80 * (1 - limiter.SAFETY_MARGIN))  # 78.4/s
# The Redis scripts answer in whole microseconds.
EXACT = 2e-6
# For the file store in a temporary folder; Redis tests get a number of their own (``number``).
NUMBER = "100000000000001"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _redis_client():
    import redis

    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture
def number() -> Iterator[str]:
    """A phone number id of this test's own (other checkouts may run these tests on the same Redis);
    its keys are deleted afterwards."""
    number = f"1{uuid.uuid4().int % 10**14:014d}"
    yield number
    if REDIS_URL:
        client = _redis_client()
        for key in client.scan_iter(f"waflow:limiter:{{{number}}}:*"):
            client.delete(key)
        for member, _ in client.zscan_iter(limiter.CANCELLED_KEY, match=f"{number}-*"):
            client.zrem(limiter.CANCELLED_KEY, member)


@pytest.fixture(params=["file", "redis"])
def make_store(request, tmp_path, clock) -> Callable[..., limiter.Store]:
    """Stores sharing one backend and the fake clock: ``make_store(default_rate=80)``."""
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip(SKIP_REDIS)
        client = _redis_client()
        return lambda default_rate=80, margin=limiter.SAFETY_MARGIN: RedisStore(client, default_rate, margin, clock)
    return lambda default_rate=80, margin=limiter.SAFETY_MARGIN: FileStore(tmp_path / "limiter", default_rate,
                                                                           margin, clock)


@pytest.fixture
def store(make_store) -> limiter.Store:
    return make_store()


def delays(store: limiter.Store, number: str, count: int, lead: float = 10.0, **kwargs) -> list[float]:
    result = [store.reserve(number, lead, **kwargs) for _ in range(count)]
    assert all(isinstance(r, Reservation) for r in result), result
    return [r.delay for r in result]


def test_it_spaces_slots_evenly_at_the_rate_less_the_margin(number, store):
    assert delays(store, number, 5) == pytest.approx([0, T80, 2 * T80, 3 * T80, 4 * T80], abs=EXACT)


def test_it_paces_at_the_exact_rate_without_a_margin(number, make_store):
    assert delays(make_store(margin=0.0), number, 3) == pytest.approx([0, 1 / 80, 2 / 80], abs=EXACT)


def test_it_reserves_nothing_beyond_the_lead(number, store, clock):
    first = store.reserve(number, 0.0)
    assert isinstance(first, Reservation) and (first.delay, first.count) == (0.0, 1)
    first = store.reserve(number, 0.005)
    assert isinstance(first, Wait) and first.seconds == pytest.approx(T80 - 0.005, abs=EXACT)
    again = store.reserve(number, 0.005)
    assert isinstance(again, Wait) and again.seconds == pytest.approx(first.seconds, abs=EXACT)
    clock.advance(first.seconds + EXACT)
    granted = store.reserve(number, 0.005)
    assert isinstance(granted, Reservation) and granted.delay == pytest.approx(0.005, abs=2 * EXACT + 1e-6)


def test_one_call_reserves_a_batch_of_slots_within_the_lead_and_span(number, store):
    batch = store.reserve(number, 0.050, count=10, span=0.025)
    # Slots 0, T, 2T, ... up to 75 ms: six at 78.4/s.
    assert isinstance(batch, Reservation) and batch.count == 6
    assert batch.delays() == pytest.approx([i * T80 for i in range(6)], abs=EXACT)
    # The next call continues where the batch ended.
    after = store.reserve(number, 1.0)
    assert isinstance(after, Reservation) and after.delay == pytest.approx(6 * T80, abs=EXACT)


def test_a_batch_takes_no_more_slots_than_asked_for(number, store):
    batch = store.reserve(number, 1.0, count=3, span=1.0)
    assert isinstance(batch, Reservation) and batch.count == 3
    assert delays(store, number, 1) == pytest.approx([3 * T80], abs=EXACT)


def test_an_idle_number_gives_its_first_slot_no_sooner_than_asked(number, store, clock):
    # A slot sooner than the task can claim its message would pass unused.
    batch = store.reserve(number, 0.050, count=3, span=0.025, not_before=0.025)
    assert isinstance(batch, Reservation)
    assert batch.delays() == pytest.approx([0.025, 0.025 + T80, 0.025 + 2 * T80], abs=EXACT)
    # The next slot follows the batch, as ever.
    assert delays(store, number, 1, not_before=0.025) == pytest.approx([0.025 + 3 * T80], abs=EXACT)


def test_a_busy_number_gives_the_next_slot_when_it_is_further_than_not_before(number, store, clock):
    delays(store, number, 4)  # the next slot is 4·T (51 ms) away
    assert delays(store, number, 1, not_before=0.025) == pytest.approx([4 * T80], abs=EXACT)
    clock.advance(4 * T80 + T80 - 0.010)  # the next slot is 10 ms away: it moves to 25 ms
    assert delays(store, number, 1, lead=0.050, not_before=0.025) == pytest.approx([0.025], abs=EXACT)


def test_not_before_never_reaches_past_the_lead(number, store):
    assert delays(store, number, 1, lead=0.010, not_before=0.025) == pytest.approx([0.010], abs=EXACT)


def test_it_allows_no_burst_after_idling(number, store, clock):
    delays(store, number, 10)
    clock.advance(600)
    assert delays(store, number, 3) == pytest.approx([0, T80, 2 * T80], abs=EXACT)


def test_a_stored_rate_applies_from_the_next_reservation(number, store):
    assert store.get_rate(number) is None
    delays(store, number, 1)
    store.set_rate(number, 10)
    assert store.get_rate(number) == 10
    t10 = 1 / (10 * (1 - limiter.SAFETY_MARGIN))
    # The slot reserved at 80/s stands; the ones after it are spaced for 10/s.
    assert delays(store, number, 3) == pytest.approx([T80, T80 + t10, T80 + 2 * t10], abs=EXACT)


def test_a_stored_rate_reaches_every_process_at_once(number, make_store):
    worker, operator = make_store(), make_store()
    delays(worker, number, 1)
    operator.set_rate(number, 1000)
    t1000 = 1 / (1000 * (1 - limiter.SAFETY_MARGIN))
    assert delays(worker, number, 2) == pytest.approx([T80, T80 + t1000], abs=EXACT)


def test_clearing_the_rate_goes_back_to_the_default(number, store):
    store.set_rate(number, 10)
    store.clear_rate(number)
    assert store.get_rate(number) is None
    assert delays(store, number, 2) == pytest.approx([0, T80], abs=EXACT)


def test_the_caller_default_stands_in_for_the_settings_rate_but_not_for_a_stored_one(number, store):
    t40 = 1 / (40 * (1 - limiter.SAFETY_MARGIN))
    assert delays(store, number, 2, default_rate=40) == pytest.approx([0, t40], abs=EXACT)
    store.set_rate(number, 80)
    assert delays(store, number, 2, default_rate=40) == pytest.approx([2 * t40, 2 * t40 + T80], abs=EXACT)


@pytest.mark.parametrize("rate", [0, 0.5, 1001])
def test_it_refuses_a_rate_meta_does_not_have(number, store, rate):
    with pytest.raises(ValueError, match="between 1 and 1000"):
        store.set_rate(number, rate)


def test_inbound_messages_push_the_next_slot_later(number, store):
    store.debit(number, 3)
    assert delays(store, number, 1) == pytest.approx([3 * T80], abs=EXACT)


def test_inbound_messages_cost_at_most_a_second_of_sends(number, store):
    store.debit(number, 10_000)
    assert delays(store, number, 1) == pytest.approx([limiter.DEBIT_HORIZON], abs=EXACT)


def test_a_pause_holds_every_slot_until_it_ends(number, store, clock):
    store.pause(number, 5)
    assert store.reserve(number, 0.02) == Wait(pytest.approx(5 - 0.02, abs=EXACT))
    assert store.status(number)["paused_until"] == pytest.approx(NOW + 5, abs=EXACT)
    clock.advance(5)
    assert delays(store, number, 2, lead=0.02) == pytest.approx([0, T80], abs=EXACT)
    assert store.status(number)["paused_until"] is None


def test_a_shorter_pause_does_not_shorten_a_longer_one(number, store):
    store.pause(number, 30)
    store.pause(number, 2)
    assert store.reserve(number, 0.0) == Wait(pytest.approx(30, abs=EXACT))


def test_status_tells_the_rate_its_source_the_next_slot_and_the_pause(number, store):
    assert store.status(number) == {"phone_number_id": number, "rate": 80, "rate_source": "default",
                                    "effective_rate": pytest.approx(78.4), "next_slot_in": 0, "paused_until": None}
    delays(store, number, 2)
    store.set_rate(number, 250)
    status = store.status(number)
    assert (status["rate"], status["rate_source"]) == (250, "stored")
    assert status["next_slot_in"] == pytest.approx(2 * T80, abs=EXACT)


def test_pairs_may_burst_five_messages_then_one_per_six_seconds(number, store, clock):
    assert [store.pair_reserve(number, "15551234567") for _ in range(5)] == [0, 0, 0, 0, 0]
    assert store.pair_reserve(number, "15551234567") == pytest.approx(6.0, abs=EXACT)
    assert store.pair_reserve(number, "15559999999") == 0
    clock.advance(6)
    assert store.pair_reserve(number, "15551234567") == 0
    assert store.pair_reserve(number, "15551234567") == pytest.approx(6.0, abs=EXACT)


def test_a_pair_penalty_holds_that_recipient_only_and_then_paces_it(number, store, clock):
    store.pair_penalize(number, "15551234567", 16)
    assert store.pair_reserve(number, "15551234567") == pytest.approx(16, abs=EXACT)
    assert store.pair_reserve(number, "15550000000") == 0
    clock.advance(16)
    assert store.pair_reserve(number, "15551234567") == 0
    assert store.pair_reserve(number, "15551234567") == pytest.approx(6.0, abs=EXACT)


def test_a_cancelled_broadcast_is_seen_by_other_processes_within_a_second(number, make_store):
    sender, dashboard = make_store(), make_store()
    assert not sender.is_cancelled(f"{number}-b1")
    dashboard.cancel_broadcast(f"{number}-b1")
    assert dashboard.is_cancelled(f"{number}-b1")
    # The sender's copy of the set is less than a second old: it is not read again yet.
    assert not sender.is_cancelled(f"{number}-b1")
    sender._cancelled_read_at -= limiter.CANCELLED_REFRESH
    assert sender.is_cancelled(f"{number}-b1")
    assert not sender.is_cancelled(f"{number}-b2")


@pytest.mark.skipif(not REDIS_URL, reason=SKIP_REDIS)
def test_redis_keys_expire_so_idle_numbers_and_recipients_cost_nothing(number):
    client = _redis_client()
    store = RedisStore(client, 80)
    store.reserve(number)
    store.pair_reserve(number, "15551234567")
    store.set_rate(number, 80)
    keys = {k.decode(): client.pttl(k) for k in client.keys(f"waflow:limiter:{{{number}}}:*")}
    assert set(keys) == {f"waflow:limiter:{{{number}}}:tat", f"waflow:limiter:{{{number}}}:rate",
                         f"waflow:limiter:{{{number}}}:pair:15551234567"}
    assert 0 < keys[f"waflow:limiter:{{{number}}}:tat"] <= 1100
    assert 0 < keys[f"waflow:limiter:{{{number}}}:pair:15551234567"] <= 7000
    assert keys[f"waflow:limiter:{{{number}}}:rate"] == -1  # a stored rate stays


@pytest.mark.skipif(not REDIS_URL, reason=SKIP_REDIS)
def test_redis_paces_on_its_own_clock(number):
    store = RedisStore.from_url(REDIS_URL, 80)
    first = store.reserve(number)
    assert isinstance(first, Reservation) and first.delay == 0.0
    wait = store.reserve(number)
    assert isinstance(wait, Wait) and 0 < wait.seconds <= T80


def test_the_file_store_forgets_idle_pairs(tmp_path, clock):
    store = FileStore(tmp_path, 80, clock=clock)
    store.pair_reserve(NUMBER, "15551234567")
    clock.advance(7)
    store.pair_reserve(NUMBER, "15550000000")
    assert list(json.loads((tmp_path / "pairs.json").read_text())) == [f"{NUMBER} 15550000000"]


def test_a_redis_store_that_is_down_raises_a_clear_error():
    store = RedisStore.from_url("redis://127.0.0.1:1/0", 80)
    started = time.monotonic()
    with pytest.raises(limiter.LimiterUnavailable, match="Redis unreachable"):
        store.reserve(NUMBER)
    with pytest.raises(limiter.LimiterUnavailable):
        store.debit(NUMBER)
    assert time.monotonic() - started < 2
    # Cancellation answers from its last copy: a down store never turns a cancellation off.
    assert store.is_cancelled("b-1") is False


def test_a_file_store_it_cannot_write_raises_a_clear_error(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(limiter.LimiterUnavailable, match="limiter file"):
        FileStore(tmp_path / "not-a-folder", 80).reserve(NUMBER)


def test_it_uses_redis_when_a_url_is_set_and_a_file_under_var_dir_otherwise(tmp_path):
    with_redis = limiter.store_for(config.load({"WAFLOW_ENV": "development", "WAFLOW_VAR_DIR": str(tmp_path),
                                                "REDIS_URL": "redis://h:6379/3",
                                                "WHATSAPP_SEND_RATE": "120"}))
    assert isinstance(with_redis, RedisStore) and with_redis.default_rate == 120
    embedded = limiter.store_for(config.load({"WAFLOW_VAR_DIR": str(tmp_path)}))
    assert isinstance(embedded, FileStore) and embedded.folder == tmp_path / "limiter"
    assert embedded.default_rate == 80


# --- Two processes, one file ----------------------------------------------------------------

RATE = 50


def _send_for(folder: str, seconds: float, out: multiprocessing.Queue) -> None:
    """What a worker and its task do, minus Celery: reserve within the lead, then wait_for_slot."""
    store, sent = FileStore(Path(folder), RATE), []
    end = time.time() + seconds
    while time.time() < end:
        outcome = store.reserve(NUMBER, 0.020)
        if isinstance(outcome, Wait):
            time.sleep(outcome.seconds)
            continue
        slot = {"due": time.time() + outcome.delay, "phone_number_id": NUMBER, "rate": RATE}
        limiter.wait_for_slot(SimpleNamespace(id="hammer", waflow_slot=slot), store=store)
        sent.append(time.time())
    out.put(sent)


def max_in_any_window(times: list[float], width: float = 1.0) -> int:
    times, start, best = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_two_processes_sharing_a_file_store_never_exceed_the_rate(tmp_path):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_send_for, args=(str(tmp_path), 2.0, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    per_process = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(10)
    sent = sorted(t for times in per_process for t in times)
    assert all(len(times) > 10 for times in per_process)  # both took part
    assert max_in_any_window(sent) <= RATE
    assert (len(sent) - 1) / (sent[-1] - sent[0]) >= 0.9 * RATE * (1 - limiter.SAFETY_MARGIN)


# --- The task's side ------------------------------------------------------------------------

class FakeSleep:
    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.calls = clock, []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


def request_with_slot(due: float | None) -> SimpleNamespace:
    slot = None if due is None else {"due": due, "phone_number_id": NUMBER, "rate": 80.0}
    return SimpleNamespace(id="task-1", waflow_slot=slot, headers={"lane": "reply", "waflow_slot": slot})


def test_wait_for_slot_sleeps_until_the_slot(tmp_path, clock):
    sleep = FakeSleep(clock)
    request = request_with_slot(NOW + 0.015)
    assert limiter.wait_for_slot(request, store=FileStore(tmp_path, 80, clock=clock), clock=clock,
                                 sleep=sleep) == pytest.approx(0.015, abs=EXACT)
    assert clock.now == pytest.approx(NOW + 0.015, abs=EXACT)


def test_wait_for_slot_does_nothing_for_a_task_without_a_slot(clock):
    sleep = FakeSleep(clock)
    assert limiter.wait_for_slot(SimpleNamespace(id="direct"), clock=clock, sleep=sleep) == 0
    assert limiter.wait_for_slot(request_with_slot(None), clock=clock, sleep=sleep) == 0
    assert sleep.calls == []


def test_a_slot_is_used_once_and_not_carried_into_a_retry(tmp_path, clock):
    request = request_with_slot(NOW)
    limiter.wait_for_slot(request, store=FileStore(tmp_path, 80, clock=clock), clock=clock, sleep=FakeSleep(clock))
    assert request.waflow_slot is None and "waflow_slot" not in request.headers
    assert request.headers == {"lane": "reply"}


def test_a_task_that_reaches_its_slot_late_takes_a_fresh_one(tmp_path, clock, caplog):
    store, sleep = FileStore(tmp_path, 80, clock=clock), FakeSleep(clock)
    # Other workers hold the next two slots.
    delays(store, NUMBER, 2)
    request = request_with_slot(NOW - 0.5)
    with caplog.at_level(logging.INFO, logger="waflow.limiter"):
        assert limiter.wait_for_slot(request, store=store, clock=clock, sleep=sleep) == pytest.approx(2 * T80,
                                                                                                        abs=EXACT)
    assert "500 ms past its slot (it came late)" in caplog.text


class OverrunningSleep(FakeSleep):
    """A loaded host: every sleep ends 30 ms late."""

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds + 0.030)


def test_a_task_whose_sleep_overruns_takes_a_fresh_slot_a_few_times_then_sends(clock, caplog):
    reservations = []

    def reserve(*args, **kwargs) -> Reservation:
        reservations.append(args)
        return Reservation(0.020)

    sleep = OverrunningSleep(clock)
    with caplog.at_level(logging.INFO, logger="waflow.limiter"):
        limiter.wait_for_slot(request_with_slot(NOW + 0.005), store=SimpleNamespace(reserve=reserve), clock=clock,
                              sleep=sleep)
    assert len(reservations) == limiter.FRESH_SLOTS
    assert caplog.text.count("30 ms past its slot (its sleep overran)") == limiter.FRESH_SLOTS
    assert len(sleep.calls) == 1 + limiter.FRESH_SLOTS


def test_a_send_marks_its_slot_used_as_it_goes_not_while_it_waits_for_a_fresh_one(clock):
    request = request_with_slot(NOW + 0.005)
    slot = request.waflow_slot
    used_while_reserving = []

    def reserve(*args, **kwargs) -> Reservation:
        used_while_reserving.append(slot.get(limiter.SLOT_USED, False))
        return Reservation(0.020)

    limiter.wait_for_slot(request, store=SimpleNamespace(reserve=reserve), clock=clock, sleep=OverrunningSleep(clock))
    assert used_while_reserving == [False] * limiter.FRESH_SLOTS
    assert slot[limiter.SLOT_USED] is True


def test_a_task_slightly_past_its_slot_sends_at_once(tmp_path, clock):
    sleep = FakeSleep(clock)
    request = request_with_slot(NOW - limiter.SLOT_TOLERANCE / 2)
    assert limiter.wait_for_slot(request, store=FileStore(tmp_path, 80, clock=clock), clock=clock, sleep=sleep) == 0
    assert sleep.calls == []


@pytest.mark.skipif(not REDIS_URL, reason=SKIP_REDIS)
def test_a_warmed_up_redis_store_has_its_scripts_loaded_and_its_connections_open(number):
    client = _redis_client()
    client.script_flush()
    store = RedisStore.from_url(REDIS_URL, 80)
    store.warm_up(3)
    assert client.script_exists(*(s.sha for s in store._scripts.values())) == [True] * len(store._scripts)
    assert len(store.client.connection_pool._available_connections) >= 3


@pytest.mark.skipif(not REDIS_URL, reason=SKIP_REDIS)
def test_a_redis_server_that_lost_the_scripts_gets_them_again(number):
    store = RedisStore.from_url(REDIS_URL, 80)
    assert isinstance(store.reserve(number, 1.0), Reservation)
    _redis_client().script_flush()  # a restart, or SCRIPT FLUSH
    assert isinstance(store.reserve(number, 1.0), Reservation)
