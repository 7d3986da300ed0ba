"""The fleet LLM limits with real processes: a daily budget that pauses and a HUP that raises it, LLM_RPM across two
`report-worker run` parents, each process's share while Redis is away, and intake that stops while waits are long."""

import signal
import time
import urllib.request
import uuid

import pytest

from tests.conftest import sample_request
from tests.harness import readyz
from tests.services import free_port, samples, wait_for
from worker import clients
from worker.categories import categories_for
from worker.fakellm import FakeLLM
from worker.schemas import ReportGenerationRequest
from worker.service import build_pipeline
from worker.settings import load

USER = "user-limits"  # one user for every request: each prompt has the same length, so each call costs the same


def requests(count: int) -> list[dict]:
    return [sample_request(str(uuid.uuid4()), USER) for _ in range(count)]


def one_report_costs(env: dict) -> float:
    """What one report of `requests()` costs, made the worker's way (same pipeline, knowledge and prompt)."""
    settings = load(environ=env)
    store = clients.store(settings)
    pipeline = build_pipeline(settings, store)
    request = ReportGenerationRequest.model_validate(requests(1)[0])
    categories = categories_for(request)
    try:
        return pipeline.writer.generate(request, categories, pipeline.knowledge.entries_for(categories)).cost_usd
    finally:
        pipeline.writer.close()
        store.close()


def statuses(responses: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for response in responses:
        counts[response["status"]] = counts.get(response["status"], 0) + 1
    return counts


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_budget_worth_20_reports_stores_20_keeps_20_queued_then_a_hup_that_raises_it_finishes_all(
        spawn, env, broker, db, cache, names, tmp_path):
    with FakeLLM() as fake:
        env = {**env, "OPENAI_BASE_URL": fake.url, "LLM_PRICES": "gpt-4o=1000:0", "INTAKE_PROBE_SECONDS": "1",
               "LLM_MAX_CONCURRENCY": "1",  # calls one after another: the spend is known before the next starts
               "METRICS_PORT": "0"}
        cost = one_report_costs(env)
        config = tmp_path / "worker.toml"
        config.write_text(f"llm_budget_usd_per_day = {cost * 19.5!r}\n")  # 19 calls fit, the 20th spends it
        parent = spawn(["run", "--processes", "2", "--threads", "2", "--config", str(config)], env)
        parent.wait_event("ready", timeout=30)
        started = time.monotonic()
        for request in requests(40):
            broker.publish(request)
        queue = names["RABBITMQ_REQUEST_QUEUE"]
        wait_for(lambda: db.medical_reports.count_documents({}) >= 20 and broker.depth(queue) == 20
                 and broker.consumers(queue) == 0, 60, message=parent.output()[-3000:])
        time.sleep(2)  # probes run every second meanwhile: the budget stays spent, nothing moves
        assert db.medical_reports.count_documents({}) == 20 and broker.depth(queue) == 20
        first = broker.responses(20, timeout=10)
        assert statuses(first) == {"success": 20} and broker.depth(names["RABBITMQ_DLQ"]) == 0
        paused = parent.events("intake_paused")
        assert {e["reason"] for e in paused} == {"budget_exhausted"} and len({e["pid"] for e in paused}) == 2
        print(f"\nFIGURE budget: 20 stored, 20 queued, 0 failed after {time.monotonic() - started:.1f} s")

        config.write_text(f"llm_budget_usd_per_day = {cost * 100!r}\n")
        parent.signal(signal.SIGHUP)
        rest = broker.responses(20, timeout=60)
        assert statuses(rest) == {"success": 20}
        assert db.medical_reports.count_documents({}) == 40 and broker.depth(queue) == 0
        assert broker.depth(names["RABBITMQ_DLQ"]) == 0 and fake.stats()["calls"] == 41  # with the calibration


@pytest.mark.timeout(150)
def test_readyz_says_budget_exhausted_while_the_budget_is_spent_and_clears_after_a_hup(
        spawn, env, broker, db, cache, names, tmp_path):
    with FakeLLM() as fake:
        port = free_port()
        env = {**env, "OPENAI_BASE_URL": fake.url, "LLM_PRICES": "gpt-4o=1000:0", "INTAKE_PROBE_SECONDS": "1",
               "LLM_MAX_CONCURRENCY": "1", "METRICS_PORT": str(port)}
        cost = one_report_costs(env)
        config = tmp_path / "worker.toml"
        config.write_text(f"llm_budget_usd_per_day = {cost * 1.5!r}\n")  # the 2nd call spends it
        parent = spawn(["run", "--processes", "2", "--threads", "2", "--config", str(config)], env)
        parent.wait_event("ready", timeout=30)
        status, body = readyz(port)
        assert status == 200 and not body.get("paused"), body   # red only because of the budget, below
        for request in requests(4):
            broker.publish(request)
        status, body = wait_for(lambda: (lambda r: r if r[1].get("paused") == {"budget_exhausted": 2} else None)(
            readyz(port)), 60, message=f"/readyz never said budget_exhausted: {readyz(port)}")
        assert status == 503 and "budget_exhausted" in body["failed"] and body["consuming"] == 0
        metrics = scrape(port)
        assert samples(metrics, "report_worker_intake_paused", reason="budget_exhausted") == [1.0]
        assert samples(metrics, "report_worker_llm_budget_usd", type="remaining") == [0.0]
        queue = names["RABBITMQ_REQUEST_QUEUE"]
        wait_for(lambda: broker.depth(queue) == 2, 20, message="the unstarted requests are not back in the queue")
        assert db.medical_reports.count_documents({}) == 2 and broker.depth(names["RABBITMQ_DLQ"]) == 0

        config.write_text(f"llm_budget_usd_per_day = {cost * 100!r}\n")
        parent.signal(signal.SIGHUP)
        status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(readyz(port)), 60,
                                message=f"/readyz stayed red after the HUP: {readyz(port)}")
        assert "budget_exhausted" not in body.get("failed", []) and not body.get("paused")
        assert statuses(broker.responses(4, timeout=60)) == {"success": 4}
        assert db.medical_reports.count_documents({}) == 4 and broker.depth(names["RABBITMQ_DLQ"]) == 0
        print(f"\nFIGURE budget_readyz: 503 budget_exhausted (2 children paused, 2 stored, 2 queued), 200 after HUP")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_llm_rpm_holds_across_two_run_parents(spawn, env, broker, db, cache, names):
    with FakeLLM(rpm=240, burst_seconds=2.0) as fake:      # the provider: 4 a second, 8 at once
        env = {**env, "OPENAI_BASE_URL": fake.url, "LLM_RPM": "240"}
        parents = [spawn(["run", "--processes", "2", "--threads", "4"],
                         {**env, "WORKER_NAME": f"vm-{vm}", "METRICS_PORT": str(free_port())}) for vm in "ab"]
        for parent in parents:
            parent.wait_event("ready", timeout=30)
        batch = requests(40)
        started = time.monotonic()
        for request in batch:
            broker.publish(request)
        responses = broker.responses(40, timeout=60)
        elapsed = time.monotonic() - started
        stats = fake.stats()
    print(f"\nFIGURE two parents, 16 threads, LLM_RPM=240: 40 reports in {elapsed:.1f} s, "
          f"fake accepted {stats['limits']['accepted']}, refused {stats['limits']['refused']}")
    assert statuses(responses) == {"success": 40}
    # Unlimited, 16 threads would send all 40 calls within a second or so and about 30 would be refused. A process
    # stalled between its permit and its request (2 shared cores, the fake in this process) may bunch one.
    assert sum(stats["limits"]["refused"].values()) <= 1 and stats["limits"]["accepted"] == 40
    assert elapsed >= (40 - 2) / 4 * 0.9                   # paced at the limit, not 16 at once
    pids = {int(r["processed_by"].rsplit(":", 1)[1]) for r in db.medical_reports.find({}, {"processed_by": 1})}
    for parent in parents:
        assert pids & set(parent.ready_children().values()), "each VM took its part"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_without_redis_each_process_keeps_to_its_share(spawn, env, broker, db, names):
    port = free_port()
    with FakeLLM(rpm=240, burst_seconds=2.0) as fake:      # 4 a second, 8 at once
        env = {**env, "OPENAI_BASE_URL": fake.url, "LLM_RPM": "240", "LLM_FLEET_PROCESSES": "2",
               "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "METRICS_PORT": str(port)}  # nobody listens
        parent = spawn(["run", "--processes", "2", "--threads", "4"], env)
        parent.wait_event("ready", timeout=30)
        started = time.monotonic()
        for request in requests(30):
            broker.publish(request)
        responses = broker.responses(30, timeout=60)
        elapsed = time.monotonic() - started
        stats = fake.stats()
        text = scrape(port)
    print(f"\nFIGURE Redis away, 2 processes at 1/2 of LLM_RPM=240 each: 30 reports in {elapsed:.1f} s, "
          f"fake refused {stats['limits']['refused']}")
    assert statuses(responses) == {"success": 30}
    assert sum(stats["limits"]["refused"].values()) <= 1  # a stalled process may bunch one (see above)
    assert elapsed >= (30 - 2) / 4 * 0.85                  # 2 a second each: limited, never unlimited
    fallbacks = parent.events("llm_limiter_fallback")
    assert len({e["pid"] for e in fallbacks}) == 2 and {e["share"] for e in fallbacks} == {0.5}
    assert max(samples(text, "report_worker_llm_limiter_fallback")) == 1.0
    assert sum(samples(text, "report_worker_llm_limiter_fallbacks_total")) >= 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_long_waits_stop_intake_and_it_resumes_when_they_end(consumer, llm, broker, db, cache, names):
    worker = consumer(WORKER_THREADS=4, LLM_RPM=30, LLM_INTAKE_WAIT_SECONDS=1, INTAKE_PROBE_SECONDS=1)  # 1 per 2 s
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    for request in requests(8):
        broker.publish(request)
    wait_for(lambda: worker.events("intake_paused"), 20, message=worker.output()[-3000:])
    held = wait_for(lambda: broker.consumers(queue) == 0 and broker.depth(queue), 10)
    assert held >= 3                                         # left in the queue, not taken to wait in a thread
    responses = broker.responses(8, timeout=60)
    assert statuses(responses) == {"success": 8} and broker.depth(names["RABBITMQ_DLQ"]) == 0
    assert {e["reason"] for e in worker.events("intake_paused")} == {"llm_throttled"}
    assert worker.events("intake_resumed")
    assert llm.stats()["calls"] == 8                         # none failed, none retried
