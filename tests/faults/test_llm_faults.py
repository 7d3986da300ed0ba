"""Fault 6: the LLM answers 20% 5xx, 10% 429 (with retry-after) and lets 5% of calls time out.

Every request ends `success`, or, after MAX_RETRIES retries through the delay queues, `failed` and in the
DLQ; nothing is lost, and the retries show in the parent's /metrics.
"""

from collections import Counter

import pytest

from tests.conftest import sample_request
from tests.services import wait_for

MAX_RETRIES = 2
# The fake rolls 429 first, then 5xx, then a hang, each on its own dice: these rates make the shares of
# all calls 10% 429, 20% 5xx and 5% timeouts.
RATE_LIMIT_RATE = 0.10
ERROR_RATE = 0.20 / (1 - RATE_LIMIT_RATE)
TIMEOUT_RATE = 0.05 / ((1 - RATE_LIMIT_RATE) * (1 - ERROR_RATE))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llm_5xx_429_and_timeouts_end_in_success_or_failed_and_dead_lettered_after_max_retries(parent, ledger, llm):
    llm.configure(latency=0.05, error_rate=ERROR_RATE, rate_limit_rate=RATE_LIMIT_RATE, timeout_rate=TIMEOUT_RATE,
                  hang_seconds=4.0)
    run = parent("--processes", "2", "--threads", "4", MAX_RETRIES=str(MAX_RETRIES), LLM_TIMEOUT_SECONDS="2")
    requests = [sample_request(user_id=f"user-{i % 10}") for i in range(200)]
    for request in requests:
        ledger.publish(request, may_fail=True)

    seconds = ledger.settle(timeout=240)
    figures = ledger.verify("llm_faults")
    assert figures.stored == figures.succeeded and figures.succeeded + figures.failed == 200
    assert figures.dlq == figures.failed

    calls = llm.stats()["by_request"]
    grouped = ledger.by_request()
    for request in requests:
        rid = request["request_id"]
        if grouped[rid][0]["status"] == "failed":
            assert calls[rid] == MAX_RETRIES + 1, f"{rid}: given up after {calls[rid]} LLM calls"
        else:
            assert 1 <= calls[rid] <= MAX_RETRIES + 1
    for properties, _ in ledger.dead:
        assert properties.headers["x-death-reason"] == "dead_lettered"
        assert properties.headers["x-attempts"] == MAX_RETRIES + 1

    statuses = llm.stats()["status"]
    assert statuses.get("429") and statuses.get("500"), statuses
    retries = run.events("retry_scheduled")
    retried = wait_for(lambda: run.metric("report_worker_messages_total", outcome="retried") >= len(retries) > 0
                       and run.metric("report_worker_messages_total", outcome="retried"), 20,
                       message="retries not visible in /metrics")
    assert retried == len(retries)
    wait_for(lambda: run.metric("report_worker_messages_total", outcome="dead_lettered") == figures.failed, 20,
             message="dead letters not counted in /metrics")
    assert run.metric("report_worker_llm_requests_total", outcome="timeout") > 0
    assert run.metric("report_worker_llm_requests_total", outcome="rate_limited") > 0
    errors = Counter(e["error"].split(":")[0].split("(")[0].strip() for e in retries)
    figures.notes.update(seconds=round(seconds, 1), llm_calls=sum(calls.values()), retried=int(retried),
                         http_429=statuses.get("429", 0), http_500=statuses.get("500", 0),
                         retry_errors="|".join(f"{k}={v}" for k, v in errors.most_common()).replace(" ", "_"))
    print("\n" + figures.line())
