"""Issue 13: a message that kills its process is dead-lettered after POISON_CRASH_LIMIT deaths, not redelivered
forever; the messages that merely shared a dying child are not blamed and end stored and answered."""

from collections import Counter

import pytest

from tests.conftest import sample_request

MARKER = "TEST-HOOK-KILL-THIS-CHILD"   # the test-only fault hook (REPORT_WORKER_TEST_CRASH_ON) calls os._exit(1)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_message_that_kills_its_process_is_dead_lettered_after_three_deaths(parent, ledger, llm, queue_type):
    llm.configure(latency=0.5)
    run = parent("--processes", "2", "--threads", "4", RABBITMQ_QUEUE_TYPE=queue_type,
                 REPORT_WORKER_TEST_CRASH_ON=MARKER)
    innocents = [sample_request(request_id=f"innocent-{i}", user_id=f"user-{i % 4}") for i in range(24)]
    poison = sample_request(request_id="poison-1", assessment={"summary": MARKER})
    for request in innocents[:8]:
        ledger.publish(request)
    ledger.publish(poison, may_fail=True)             # lands while innocents are in flight in its child
    for request in innocents[8:]:
        ledger.publish(request)

    seconds = ledger.settle(timeout=240)
    figures = ledger.verify(f"poison_crash_{queue_type}")

    [(properties, _)] = ledger.dead
    assert properties.headers["x-death-reason"] == "crashed_worker"
    assert properties.headers["x-error-code"] == "worker_crashed"
    [answer] = ledger.by_request()["poison-1"]
    assert (answer["status"], answer["error_code"], answer["retryable"]) == ("failed", "worker_crashed", False)
    assert figures.succeeded == len(innocents) and figures.stored == len(innocents) and figures.dlq == 1
    crashes = [e for e in run.events("child_exited") if e["code"] == 1]
    assert len(crashes) == 3, [e["reason"] for e in run.events("child_exited")]
    assert run.events("suspect_running_alone")       # redelivered suspects ran alone
    assert not run.events("giving_up")
    assert llm.stats()["by_request"].get("poison-1", 0) == 0   # it never got as far as the LLM
    counts = Counter(e["crashes"] for e in run.events("messages_blamed"))
    figures.notes.update(seconds=round(seconds, 1), child_deaths=len(crashes), blamed=dict(counts))
    print("\n" + figures.line())
