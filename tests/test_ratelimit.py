"""The fleet LLM limiter on a real Redis: smooth rates shared by processes, leases, cool-down, budget, fallback."""

import email.utils
import logging
import signal
import socket
import threading
import time
import uuid

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.limiterproc import Child, max_overlap, most_in_window
from tests.services import wait_for
from tests.tcpproxy import TcpProxy
from worker.ratelimit import BudgetExhausted, FleetLimiter, LimitObserver, Limits, Throttled, connect
from worker.ratepolicy import retry_after_seconds

pytestmark = pytest.mark.timeout(30)


class Recorder(LimitObserver):
    """Keeps every event the limiter reports, as (method, *args)."""

    def __init__(self):
        self.events = []

    def named(self, name):
        return [event[1:] for event in self.events if event[0] == name]


for _event in ("granted", "waited", "throttled", "settled", "cooldown", "fallback", "restored", "budget"):
    setattr(Recorder, _event, lambda self, *args, _event=_event: self.events.append((_event, *args)))


class CountingRedis(redis.Redis):
    """The real client, counting the commands it sends (one per round trip here: no pipelines in the hot path)."""

    calls = 0

    def execute_command(self, *args, **options):
        CountingRedis.calls += 1
        return super().execute_command(*args, **options)


@pytest.fixture
def prefix():
    name = f"test:ratelimit:{uuid.uuid4().hex[:10]}:"
    yield name
    cleaner = redis.Redis.from_url(REDIS_URL)
    for key in cleaner.scan_iter(match=name + "*"):
        cleaner.delete(key)
    cleaner.close()


@pytest.fixture
def client():
    client = connect(REDIS_URL)
    yield client
    client.close()


def take_for(limiter, seconds, threads=1, tokens=0):
    """Threads take permits back to back for `seconds`; returns the grant times of each thread."""
    end = time.monotonic() + seconds
    grants = [[] for _ in range(threads)]

    def run(mine):
        while True:
            try:
                with limiter.acquire(tokens, deadline=end):
                    mine.append(time.monotonic())
            except Throttled:
                return

    workers = [threading.Thread(target=run, args=(grants[n],)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return grants


def test_requests_come_smoothly_and_threads_take_turns(client, prefix):
    limiter = FleetLimiter(client, prefix, Limits(rpm=600, burst_seconds=1.0))  # 10/s, a burst of 10
    grants = take_for(limiter, 3.0, threads=8)
    times = sorted(t for mine in grants for t in mine)
    # A full bucket (10) then one every 0.1 s: about 40 in 3 s, never a minute's worth (600) at once.
    assert 34 <= len(times) <= 41, len(times)
    assert most_in_window(times, 1.0) <= 21
    assert most_in_window(times[10:], 1.0) <= 11  # once the burst is spent: the rate itself
    after_burst = times[10]  # threads start one by one: turns are even once all wait in line
    counts = [sum(1 for t in mine if t > after_burst) for mine in grants]
    assert max(counts) - min(counts) <= 1, counts


def test_two_processes_share_one_rate_and_one_concurrency_limit(prefix):
    start_at = time.time() + 1.5  # both children import and connect first
    args = ("--rpm", 600, "--burst", 0.5, "--concurrency", 3, "--threads", 4, "--hold", 0.05,
            "--seconds", 2.0, "--start-at", start_at)
    children = [Child(REDIS_URL, prefix, *args), Child(REDIS_URL, prefix, *args)]
    try:
        for child in children:
            child.wait("done", timeout=20)
    finally:
        for child in children:
            child.stop()
    starts = [t for child in children for t in child.times("start")]
    ends = [t for child in children for t in child.times("end")]
    # One shared bucket: 5 at once, then 10/s for 2 s = about 25 (each child alone would take as many).
    assert 18 <= len(starts) <= 26, len(starts)
    assert all(len(child.times("start")) >= 4 for child in children)
    assert max_overlap(starts, ends) <= 3


def test_tokens_are_weighed_and_reconciled_with_the_real_usage(client, prefix):
    limiter = FleetLimiter(client, prefix, Limits(tpm=6000, burst_seconds=1.0))  # 100 tokens/s, a bucket of 100
    with limiter.acquire(100) as permit:
        permit.settle(actual_tokens=10)  # 90 given back
    started = time.monotonic()
    with limiter.acquire(90):
        pass  # no settle: the estimate stands
    assert time.monotonic() - started < 0.3  # not the 0.9 s it would have waited without the refund
    assert 0.3 < limiter.expected_wait(50) <= 0.51
    started = time.monotonic()
    with pytest.raises(Throttled) as raised:
        limiter.acquire(50, deadline=time.monotonic() + 0.2)
    assert raised.value.reason == "tokens" and 0.4 < raised.value.wait < 0.55
    assert time.monotonic() - started < 0.15  # a wait longer than the deadline is refused at once
    with limiter.acquire(10) as permit:
        permit.settle(actual_tokens=210)  # 200 more than estimated: the bucket goes 2 s into debt
    assert 1.9 < limiter.expected_wait(10) <= 2.11
    big = FleetLimiter(client, prefix + "big:", Limits(tpm=6000, burst_seconds=1.0))
    started = time.monotonic()
    with big.acquire(300):  # bigger than the bucket: starts when the bucket is full, then the debt is paid
        pass
    assert time.monotonic() - started < 0.3
    assert 1.8 < big.expected_wait(1) <= 2.02


def test_a_slot_held_by_a_killed_process_comes_back_when_its_lease_ends(client, prefix):
    child = Child(REDIS_URL, prefix, "--concurrency", 2, "--lease", 1.5, "--threads", 2, "--hold", -1)
    try:
        child.wait("start", count=2)
        limiter = FleetLimiter(client, prefix, Limits(max_concurrency=2, lease_seconds=1.5))
        with pytest.raises(Throttled) as raised:
            limiter.acquire(deadline=time.monotonic() + 0.3)
        assert raised.value.reason == "concurrency"
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(5)
        with limiter.acquire(deadline=time.monotonic() + 5):
            granted_at = time.time()
        held_since = child.times("start")  # the leases end 1.5 s after these grants, not at the kill
        assert min(held_since) + 1.45 <= granted_at <= max(held_since) + 2.5
    finally:
        child.stop()
    # a slot given back is free at once for a thread waiting in this process
    first, second = limiter.acquire(), limiter.acquire()
    threading.Timer(0.2, first.release).start()
    with limiter.acquire(deadline=time.monotonic() + 2) as third:
        assert 0.15 < third.waited < 0.8
    second.release()


def test_a_cooldown_holds_back_every_process(client, prefix):
    recorder = Recorder()
    limiter = FleetLimiter(client, prefix, Limits(rpm=6000), observer=recorder)
    set_at = time.time()
    assert 1.45 < limiter.cooldown(1.5) <= 1.5
    child = Child(REDIS_URL, prefix, "--rpm", 6000, "--count", 1, "--seconds", 10)
    try:
        started = time.monotonic()
        with pytest.raises(Throttled) as raised:
            limiter.acquire(deadline=time.monotonic() + 0.5)  # could only start after its deadline
        assert raised.value.reason == "cooldown" and time.monotonic() - started < 0.15
        assert 1.0 < limiter.expected_wait() <= 1.5
        child.wait("start")
        assert child.times("start")[0] >= set_at + 1.45
    finally:
        child.stop()
    assert recorder.named("cooldown") == [(1.5,)] and recorder.named("throttled") == [("cooldown",)]


def test_the_budget_pauses_calls_warns_at_80_percent_and_resumes(client, prefix, caplog):
    caplog.set_level(logging.INFO, logger="worker.ratelimit")
    day = ["2030-01-01"]
    recorder = Recorder()
    limiter = FleetLimiter(client, prefix, Limits(budget_usd_per_day=1.0), observer=recorder, today=lambda: day[0])
    other_vm = FleetLimiter(connect(REDIS_URL), prefix, Limits(budget_usd_per_day=1.0), today=lambda: day[0])
    with limiter.acquire() as permit:
        permit.settle(actual_tokens=1000, cost_usd=0.5)
    assert tuple(limiter.budget_state()) == (0.5, 1.0, False) and not limiter.budget_state().warning
    with limiter.acquire() as permit:
        permit.settle(cost_usd=0.35)
    assert other_vm.budget_state().warning and not other_vm.budget_state().exhausted
    with other_vm.acquire() as permit:
        permit.settle(cost_usd=0.2)
    assert tuple(limiter.budget_state()) == (pytest.approx(1.05), 1.0, True)
    started = time.monotonic()
    with pytest.raises(BudgetExhausted):
        limiter.acquire(deadline=time.monotonic() + 10)
    assert time.monotonic() - started < 0.15  # at once, not at the deadline
    assert 2 * 86400 - 5 < client.ttl(prefix + "llm:spend:2030-01-01") <= 2 * 86400
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llm_budget")]
    # once a day per process (per limiter; two live here), however often the state is read
    assert logged.count("llm_budget_warning") == 2 and logged.count("llm_budget_exhausted") == 2
    assert ("settled", 1000, 0.5) in recorder.events and recorder.named("budget")[-1] == (pytest.approx(1.05), 1.0)
    assert recorder.named("throttled") == [("budget",)]
    limiter.update(Limits(budget_usd_per_day=2.0))  # a HUP with a bigger budget
    with limiter.acquire(deadline=time.monotonic() + 1):
        pass
    day[0] = "2030-01-02"  # a new UTC day, a new budget
    assert tuple(other_vm.budget_state()) == (0.0, 1.0, False)
    with other_vm.acquire(deadline=time.monotonic() + 1):
        pass


def test_an_acquire_round_trip_is_one_command_and_a_wait_does_not_spin(prefix):
    client = CountingRedis.from_url(REDIS_URL)
    limiter = FleetLimiter(client, prefix, Limits(rpm=60_000, tpm=10_000_000, max_concurrency=50,
                                                  budget_usd_per_day=100.0))
    with limiter.acquire(100) as permit:  # loads the scripts
        permit.settle(actual_tokens=90, cost_usd=0.0001)
    CountingRedis.calls, started, rounds = 0, time.monotonic(), 200
    for _ in range(rounds):
        with limiter.acquire(100) as permit:
            permit.settle(actual_tokens=90, cost_usd=0.0001)
    per_call_ms = (time.monotonic() - started) / rounds * 1000
    assert CountingRedis.calls == 2 * rounds  # one script to acquire, one to settle and give back
    print(f"\nacquire + release: 2 round trips, {per_call_ms:.2f} ms together")
    slow = FleetLimiter(client, prefix + "slow:", Limits(rpm=60, burst_seconds=1.0))
    slow.acquire().release()
    CountingRedis.calls = 0
    with slow.acquire(deadline=time.monotonic() + 3) as permit:
        assert 0.9 < permit.waited < 1.5
    assert CountingRedis.calls <= 3, CountingRedis.calls  # asked, slept the whole wait, asked again (+ the release)
    print(f"a wait of {permit.waited:.2f} s: {CountingRedis.calls} round trips with the release")


def test_without_redis_each_process_keeps_to_its_share(prefix, caplog):
    caplog.set_level(logging.INFO, logger="worker.ratelimit")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    recorder = Recorder()
    limits = Limits(rpm=600, max_concurrency=8, burst_seconds=1.0, share=0.25)
    limiter = FleetLimiter(connect(f"redis://127.0.0.1:{port}/0"), prefix, limits, observer=recorder,
                           retry_redis_seconds=0.5)
    times = [t for mine in take_for(limiter, 2.0, threads=4) for t in mine]
    # 600/min x 0.25 = 2.5/s with a 1 s bucket: 2 at once, then one every 0.4 s: about 7 in 2 s, never more
    assert 5 <= len(times) <= 8, len(times)
    assert limiter.degraded
    first, second = limiter.acquire(), limiter.acquire()  # 8 slots x 0.25 = 2 here
    with pytest.raises(Throttled) as raised:
        limiter.acquire(deadline=time.monotonic() + 0.6)
    assert raised.value.reason == "concurrency"
    first.release(), second.release()
    assert len(recorder.named("fallback")) == 1 and recorder.named("fallback")[0][0] == "ConnectionError"
    assert [r.getMessage() for r in caplog.records].count("llm_limiter_fallback") == 1


def test_when_redis_returns_the_shared_limits_and_the_spend_come_back(client, prefix):
    proxy = TcpProxy(("127.0.0.1", redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs["port"]))
    proxy.start()
    recorder = Recorder()
    limiter = FleetLimiter(connect(f"redis://127.0.0.1:{proxy.port}/0"), prefix,
                           Limits(rpm=6000, budget_usd_per_day=10.0, share=0.5), observer=recorder,
                           retry_redis_seconds=0.2)
    try:
        with limiter.acquire() as permit:
            permit.settle(cost_usd=1.0)
        proxy.stop()
        with limiter.acquire() as permit:  # Redis is away: granted from this process's share
            permit.settle(cost_usd=0.5)
        assert limiter.degraded
        assert limiter.budget_state().spent == pytest.approx(2.0)  # 1.0 seen + 0.5 here / share 0.5
        proxy.start()
        wait_for(lambda: limiter.budget_state() and not limiter.degraded, 5, interval=0.1)
        assert float(client.get(prefix + "llm:spend:" + limiter._today())) == pytest.approx(1.5)
        assert limiter.budget_state().spent == pytest.approx(1.5)
        assert len(recorder.named("fallback")) == 1 and len(recorder.named("restored")) == 1
    finally:
        proxy.stop()


def test_the_wait_a_429_asks_for_is_read_as_the_openai_client_reads_it():
    assert retry_after_seconds({"Retry-After-Ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds({"retry-after": soon}) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_limits_refuse_nonsense_and_a_share_keeps_at_least_one_slot():
    for bad in ({"rpm": -1}, {"share": 0}, {"share": 1.5}, {"burst_seconds": 0}, {"lease_seconds": 0},
                {"tpm": float("inf")}):
        with pytest.raises(ValueError):
            Limits(**bad)
    assert Limits(rpm=300, tpm=1000, max_concurrency=3, share=0.25).shared() == Limits(
        rpm=75, tpm=250, max_concurrency=1, share=0.25)
