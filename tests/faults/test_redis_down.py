"""Fault 5: Redis is down for the whole run; it is only a cache, so nothing fails and the misses are counted."""

import pytest

from tests.conftest import sample_request
from tests.services import free_port, wait_for


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_redis_down_for_the_whole_run_fails_nothing_and_counts_cache_errors(parent, ledger, llm):
    llm.configure(latency=0.1)
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: the shared Redis keeps running
    run = parent("--processes", "2", "--threads", "4", REDIS_URL=closed)
    for i in range(60):
        ledger.publish(sample_request(user_id=f"user-{i % 5}"))

    seconds = ledger.settle(timeout=120)
    figures = ledger.verify("redis_down")

    assert figures.failed == 0 and figures.dlq == 0 and figures.stored == 60
    assert run.events("cache_unavailable")
    errors = wait_for(lambda: run.metric("report_worker_cache_requests_total", result="error"), 20,
                      message="no cache error counted in the parent's /metrics")
    wait_for(lambda: run.metric("report_worker_messages_total", outcome="success") == 60, 20)
    figures.notes.update(cache_errors=int(errors), seconds=round(seconds, 1))
    print("\n" + figures.line())
