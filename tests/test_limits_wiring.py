"""The fleet limiter wired in: every LLM call takes a permit, 429s cool the fleet down, the budget pauses, the settings
build it, the consumer's intake gate and probes read it, the fake LLM enforces OpenAI's limits, Prometheus hears it."""

import json
import time
import urllib.error
import urllib.request
import uuid
from types import SimpleNamespace

import pytest
import redis
from prometheus_client import REGISTRY

from metrics.events import PrometheusEvents
from tests.conftest import REDIS_URL
from tests.test_llm import knowledge_for, make_request
from tests.test_ratelimit import Recorder
from worker import clients
from worker.categories import categories_for
from worker.errors import Paused, TransientError
from worker.fakellm import FakeLLM, add_arguments
from worker.llm import DEFAULT_PRICES, ReportWriter, cost_of
from worker.ratelimit import FleetLimiter, Limits, Unlimited, connect
from worker.ratepolicy import BudgetState, utc_day
from worker.service import intake_gate, still_paused
from worker.settings import SettingsError, load

pytestmark = pytest.mark.timeout(30)
MODEL = "gpt-4o-mini"


@pytest.fixture
def prefix():
    name = f"test:limits:{uuid.uuid4().hex[:10]}:"
    yield name
    cleaner = redis.Redis.from_url(REDIS_URL)
    for key in cleaner.scan_iter(match=name + "*"):
        cleaner.delete(key)
    cleaner.close()


@pytest.fixture
def limiter_for(prefix):
    made = []

    def make(observer=None, **limits):
        client = connect(REDIS_URL)
        made.append(client)
        return FleetLimiter(client, prefix, Limits(**limits), observer)

    yield make
    for client in made:
        client.close()


def writer(fake: FakeLLM, limiter=None, timeout: float = 10.0, max_retries: int = 1) -> ReportWriter:
    return ReportWriter(base_url=fake.url, api_key="k", model=MODEL, timeout=timeout, max_retries=max_retries,
                        limiter=limiter, cooldown_seconds=1.0)


def generate(w: ReportWriter, deadline: float | None = None):
    request = make_request()
    return w.generate(request, categories_for(request), knowledge_for(request), deadline=deadline)


# -- the LLM client under the limiter -------------------------------------------------------------------------


def test_each_call_and_the_repair_take_a_permit_settled_with_the_reported_usage_and_cost(limiter_for, prefix):
    recorder = Recorder()
    limiter = limiter_for(recorder, rpm=6000, tpm=10_000_000, budget_usd_per_day=100.0)
    with FakeLLM(malformed_first=1) as fake:
        result = generate(writer(fake, limiter))
        assert fake.stats()["calls"] == 2
    requests = [amount for kind, amount in recorder.named("granted") if kind == "requests"]
    tokens = [amount for kind, amount in recorder.named("granted") if kind == "tokens"]
    assert requests == [1, 1] and all(estimate > 4000 for estimate in tokens)  # prompt estimate + LLM_MAX_TOKENS
    settled = recorder.named("settled")
    assert sum(t for t, _ in settled) == result.tokens
    assert sum(c for _, c in settled) == pytest.approx(result.cost_usd)
    spent = float(redis.Redis.from_url(REDIS_URL).get(f"{prefix}llm:spend:{utc_day()}"))
    assert spent == pytest.approx(result.cost_usd)
    assert limiter.budget_state().spent == pytest.approx(result.cost_usd)


def test_an_answer_without_usage_is_charged_at_its_estimate(limiter_for):
    recorder = Recorder()
    limiter = limiter_for(recorder, budget_usd_per_day=100.0)
    with FakeLLM(mode="no-usage") as fake:
        generate(writer(fake, limiter))
    (tokens, cost), = recorder.named("settled")
    (_, estimate), = [event for event in recorder.named("granted") if event[0] == "tokens"]
    assert tokens == 0 and cost == pytest.approx(cost_of(DEFAULT_PRICES, MODEL, estimate - 4000, 4000))


def test_a_429_cools_the_fleet_down_and_the_client_does_not_retry_on_its_own(limiter_for, prefix):
    recorder = Recorder()
    limiter = limiter_for(recorder, rpm=6000)
    with FakeLLM(rpm=60, burst_seconds=1.0) as fake:      # one call a second; ours would allow 100
        w = writer(fake, limiter, max_retries=3)
        generate(w)
        with pytest.raises(TransientError, match="429"):
            generate(w)
        assert fake.stats()["status"] == {"200": 1, "429": 1}  # max_retries=3 given, none made
        assert redis.Redis.from_url(REDIS_URL).pttl(f"{prefix}llm:cooldown") > 0
        (seconds,), = recorder.named("cooldown")
        assert 0.8 < seconds <= 1.0                         # retry-after-ms, not the whole-second retry-after
        started = time.monotonic()
        generate(w)                                          # waits out the cool-down instead of calling
        assert time.monotonic() - started > 0.7
        assert fake.stats()["status"] == {"200": 2, "429": 1}


def test_a_spent_budget_pauses_before_any_call(limiter_for, prefix):
    redis.Redis.from_url(REDIS_URL).set(f"{prefix}llm:spend:{utc_day()}", "5.0")
    limiter = limiter_for(budget_usd_per_day=5.0)
    with FakeLLM() as fake:
        with pytest.raises(Paused) as paused:
            generate(writer(fake, limiter))
        assert fake.stats()["calls"] == 0
    assert paused.value.code == "budget_exhausted"


def test_a_wait_that_outlasts_the_deadline_is_a_transient_error_before_any_call(limiter_for):
    limiter = limiter_for(rpm=6, burst_seconds=0.5)          # one call, then one every 10 s
    with FakeLLM() as fake:
        w = writer(fake, limiter, timeout=5.0)
        generate(w)
        started = time.monotonic()
        with pytest.raises(TransientError) as throttled:
            generate(w, deadline=time.monotonic() + 5.0 + 3.0)  # 3 s to wait for a permit, 10 s needed
        assert time.monotonic() - started < 1.0 and fake.stats()["calls"] == 1
    assert throttled.value.code == "llm_unavailable" and "requests" in str(throttled.value)


def test_the_permit_deadline_leaves_the_call_its_timeout():
    seen = []

    class Spy(Unlimited):
        enforcing = True

        def acquire(self, estimated_tokens=0, deadline=None):
            seen.append(deadline)
            return super().acquire(estimated_tokens, deadline)

    with FakeLLM() as fake:
        generate(writer(fake, Spy(), timeout=7.0), deadline=1000.0)
        generate(writer(fake, Spy(), timeout=7.0))
    assert seen == [993.0, None]


# -- settings -> limiter -----------------------------------------------------------------------------------------


def test_all_limits_off_builds_no_limiter_and_keeps_the_client_retries(env):
    settings = load(environ=env)
    limiter = clients.limiter(settings)
    assert isinstance(limiter, Unlimited) and not settings.llm_limited
    w = clients.writer(settings, llm_limiter=limiter)
    assert w._client.max_retries == settings.llm_max_retries
    w.close()


def test_limits_from_settings_share_by_fleet_processes_and_lease_after_the_timeout(env):
    settings = load(environ={**env, "LLM_RPM": "300", "LLM_TPM": "90000", "LLM_MAX_CONCURRENCY": "20",
                             "LLM_BUDGET_USD_PER_DAY": "50", "LLM_FLEET_PROCESSES": "8", "WORKER_PROCESSES": "2"})
    assert clients.limits(settings) == Limits(rpm=300, tpm=90000, max_concurrency=20, budget_usd_per_day=50,
                                              share=0.125, burst_seconds=0.5, lease_seconds=40.0)
    limiter = clients.limiter(settings)
    w = clients.writer(settings, llm_limiter=limiter)
    assert isinstance(limiter, FleetLimiter) and w._client.max_retries == 0
    w.close()
    shared = load(environ={**env, "LLM_RPM": "300", "LLM_LIMIT_SHARE": "0.3", "WORKER_PROCESSES": "2"})
    assert clients.limits(shared).share == 0.3
    assert load(environ={**env, "LLM_RPM": "1", "WORKER_PROCESSES": "4"}).llm_share == 0.25


@pytest.mark.parametrize("name, value", [
    ("LLM_RPM", "-1"), ("LLM_TPM", "nan-ish"), ("LLM_MAX_CONCURRENCY", "1.5"), ("LLM_BUDGET_USD_PER_DAY", "-0.1"),
    ("LLM_LIMIT_SHARE", "1.5"), ("LLM_LIMIT_BURST_SECONDS", "0"), ("LLM_COOLDOWN_SECONDS", "0"),
    ("LLM_FLEET_PROCESSES", "-2"),
])
def test_bad_limit_settings_are_refused_by_name(env, name, value):
    with pytest.raises(SettingsError, match=name):
        load(environ={**env, name: value})


def test_the_intake_wait_must_be_shorter_than_the_consumer_timeout(env):
    with pytest.raises(SettingsError, match="LLM_INTAKE_WAIT_SECONDS"):
        load(environ={**env, "LLM_RPM": "60", "LLM_INTAKE_WAIT_SECONDS": "600", "RABBITMQ_CONSUMER_TIMEOUT": "300"})


def test_the_llm_deadline_is_the_consumer_timeout_less_a_settling_margin(env):
    settings = load(environ={**env, "RABBITMQ_CONSUMER_TIMEOUT": "1800"})
    assert clients.llm_deadline(settings, 100.0) == 100.0 + 1800 - clients.SETTLE_MARGIN_SECONDS
    assert clients.llm_deadline(load(environ={**env, "RABBITMQ_CONSUMER_TIMEOUT": "0"}), 100.0) is None


# -- the consumer's gate and probes ----------------------------------------------------------------------------


class StubLimiter(Unlimited):
    enforcing = True

    def __init__(self):
        self.state = BudgetState(0.0, 10.0, False)
        self.local = 0.0
        self.expected = 0.0

    def budget_state(self):
        return self.state

    def queue_wait(self):
        return self.local

    def expected_wait(self, estimated_tokens=0):
        return self.expected


def test_probes_hold_budget_and_throttle_pauses_until_the_limiter_says_otherwise():
    limiter = StubLimiter()
    pipeline = SimpleNamespace(writer=SimpleNamespace(limiter=limiter, access=lambda: ""))
    both = frozenset({"budget_exhausted", "llm_throttled"})
    limiter.state, limiter.expected = BudgetState(10.0, 10.0, True), 30.0
    assert still_paused(pipeline, both, intake_wait=20.0) == set(both)
    limiter.state = BudgetState(10.0, 20.0, False)            # a HUP raised it, or a new UTC day
    assert still_paused(pipeline, both, intake_wait=20.0) == {"llm_throttled"}
    limiter.expected = 5.0
    assert still_paused(pipeline, both, intake_wait=20.0) == set()
    assert still_paused(pipeline, frozenset({"llm_unauthorized", "other"})) == {"other"}


def test_the_intake_gate_reads_only_local_waits_and_is_off_without_limits():
    limiter = StubLimiter()
    gate = intake_gate(limiter, 20.0)
    limiter.expected = 100.0                                 # the shared peek is not asked on the I/O thread
    assert gate() == ""
    limiter.local = 21.0
    assert gate() == "llm_throttled"
    assert intake_gate(Unlimited(), 20.0) is None and intake_gate(limiter, 0.0) is None


def test_queue_wait_is_the_first_waiters_age_without_redis(limiter_for):
    limiter = limiter_for(rpm=60, burst_seconds=0.5)
    limiter.acquire().release()
    assert limiter.queue_wait() == 0.0
    import threading
    waiter = threading.Thread(target=lambda: limiter.acquire(deadline=time.monotonic() + 5).release())
    waiter.start()
    time.sleep(0.3)
    assert 0.2 < limiter.queue_wait() < 1.0
    waiter.join()


# -- the fake LLM's limits ----------------------------------------------------------------------------------------


def post_chat(fake: FakeLLM, content: str = "hi", max_tokens: int = 10):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
    request = urllib.request.Request(fake.url + "/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_the_fake_refuses_over_its_rpm_as_openai_does():
    with FakeLLM(rpm=120, burst_seconds=1.0) as fake:        # 2 a second, 2 at once
        answers = [post_chat(fake) for _ in range(5)]
        stats = fake.stats()
    assert [status for status, _, _ in answers] == [200, 200, 429, 429, 429]
    status, headers, body = answers[2]
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert "Limit 120" in body["error"]["message"]
    assert int(headers["retry-after"]) >= 1 and 0 < int(headers["retry-after-ms"]) <= 500
    ok = answers[0][1]
    assert ok["x-ratelimit-limit-requests"] == "120" and ok["x-ratelimit-remaining-requests"] == "1"
    assert ok["x-ratelimit-reset-requests"].endswith("ms")
    assert stats["limits"] == {"rpm": 120, "tpm": 0, "accepted": 2, "refused": {"requests": 3}}
    assert stats["status"] == {"200": 2, "429": 3} and stats["calls"] == 2


def test_the_fake_weighs_tokens_as_prompt_plus_max_tokens():
    with FakeLLM(tpm=6000, burst_seconds=1.0) as fake:        # 100 tokens a second
        first = post_chat(fake, max_tokens=150)                # bigger than the burst: starts on a full bucket
        second = post_chat(fake, max_tokens=10)
        stats = fake.stats()
    assert first[0] == 200 and first[1]["x-ratelimit-remaining-tokens"] == "0"
    assert second[0] == 429 and second[2]["error"]["type"] == "tokens"
    assert float(second[1]["retry-after-ms"]) > 900             # the big call's debt first
    assert stats["limits"]["refused"] == {"tokens": 1}


def test_fake_llm_command_line_takes_the_limits():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--rpm", "300", "--tpm", "90000", "--burst-seconds", "2"])
    assert (args.rpm, args.tpm, args.burst_seconds) == (300, 90000, 2)
    assert parser.parse_args([]).rpm == 0


# -- Prometheus ---------------------------------------------------------------------------------------------------


def test_limiter_events_become_metrics(limiter_for, prefix):
    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {name: value(name, **labels) for name, labels in [
        ("report_worker_llm_limiter_granted_total", {"type": "requests"}),
        ("report_worker_llm_limiter_wait_seconds_count", {}),
        ("report_worker_llm_limiter_throttled_total", {"reason": "budget"}),
        ("report_worker_llm_limiter_cooldowns_total", {}),
    ]}
    limiter = limiter_for(PrometheusEvents(), rpm=6000, budget_usd_per_day=2.0)
    with limiter.acquire(100) as permit:
        permit.settle(120, 1.5)
    assert value("report_worker_llm_budget_usd", type="spent") == 1.5
    assert value("report_worker_llm_budget_usd", type="budget") == 2.0
    assert value("report_worker_llm_budget_usd", type="remaining") == 0.5
    with limiter.acquire(100) as permit:
        permit.settle(120, 1.0)
    with pytest.raises(Exception):
        limiter.acquire(100)
    limiter.cooldown(0.01)
    assert value("report_worker_llm_limiter_granted_total", type="requests") == before[
        "report_worker_llm_limiter_granted_total"] + 2
    assert value("report_worker_llm_limiter_wait_seconds_count") == before[
        "report_worker_llm_limiter_wait_seconds_count"] + 2
    assert value("report_worker_llm_limiter_throttled_total", reason="budget") == before[
        "report_worker_llm_limiter_throttled_total"] + 1
    assert value("report_worker_llm_limiter_cooldowns_total") == before["report_worker_llm_limiter_cooldowns_total"] + 1
    assert value("report_worker_llm_budget_usd", type="remaining") == 0.0
    events = PrometheusEvents()
    events.fallback("ConnectionError")
    assert value("report_worker_llm_limiter_fallback", reason="ConnectionError") == 1
    assert value("report_worker_llm_limiter_fallbacks_total", reason="ConnectionError") >= 1
    events.restored(3.0)
    assert value("report_worker_llm_limiter_fallback", reason="ConnectionError") == 0
