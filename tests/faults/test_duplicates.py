"""Fault 9: the backend retried its publish, so the same request arrives three times."""

import pytest

from tests.conftest import sample_request


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_same_request_published_three_times_is_generated_once_and_answered_three_times(parent, ledger, llm):
    llm.configure(latency=1.0)  # long enough for the copies to meet in both children at once
    parent("--processes", "2", "--threads", "4")
    requests = [sample_request(request_id=f"dup-{i}", user_id=f"user-{i % 3}") for i in range(10)]
    for request in requests:
        ledger.publish(request, copies=3)

    ledger.settle(timeout=120)
    figures = ledger.verify("duplicate_publish")

    grouped = ledger.by_request()
    for request in requests:
        answers = grouped[request["request_id"]]
        assert len(answers) == 3 and {a["status"] for a in answers} == {"success"}, answers
        assert len({a["report_id"] for a in answers}) == 1
    assert llm.stats()["by_request"] == {r["request_id"]: 1 for r in requests}  # one LLM call each
    assert figures.stored == 10 and figures.dlq == 0
    print("\n" + figures.line())
