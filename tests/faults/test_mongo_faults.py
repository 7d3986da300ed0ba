"""Fault 4: MongoDB writes fail for 30 s (failCommand), and the server stops and starts again.

Requests retry through the delay queues; none is lost or stored twice, and the LLM is never asked again
for a report that is already stored: every LLM call after a request's first one must follow an attempt
whose report insert failed.
"""

import json
import time
from collections import Counter

import pytest

from tests.conftest import ROOT, sample_request
from tests.services import MongoServer, wait_for

# Long enough in total (about 1 + 2 + 4 x 28 s) to outlast a 30 s outage without dead-lettering.
RETRY = {"RETRY_DELAYS": "1,2,4", "MAX_RETRIES": "30"}


def insert_failures(run) -> Counter:
    """Per request: attempts that failed while storing the report, i.e. after their LLM call."""
    return Counter(e["request_id"] for e in run.events("retry_scheduled")
                   if e["error"].startswith("mongodb insert report"))


def assert_no_llm_call_for_a_stored_report(llm, run, requests) -> None:
    calls = llm.stats()["by_request"]
    failed_inserts = insert_failures(run)
    for request in requests:
        rid = request["request_id"]
        assert 1 <= calls.get(rid, 0) <= 1 + failed_inserts[rid], (
            f"{rid}: {calls.get(rid, 0)} LLM calls, {failed_inserts[rid]} failed report inserts")


def mongo_retries(run) -> list[dict]:
    return [e for e in run.events("retry_scheduled") if e["error"].startswith("mongodb")]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mongo_writes_failing_for_30s_retry_through_the_delay_queues_and_store_once(
        parent, ledger, llm, mongo, db):
    llm.configure(latency=0.5)
    run = parent("--processes", "2", "--threads", "4", **RETRY)
    requests = [sample_request(user_id=f"user-{i % 10}") for i in range(100)]
    for request in requests:
        ledger.publish(request)
    wait_for(lambda: db.medical_reports.count_documents({}) >= 15, 60)

    admin = mongo.client().admin
    fail_point = {"configureFailPoint": "failCommand", "mode": "alwaysOn",
                  "data": {"failCommands": ["insert", "update"], "errorCode": 91, "appName": "report-worker"}}
    try:
        admin.command(fail_point)
        failing_since = time.monotonic()
        stored_at_start = db.medical_reports.count_documents({})
        while time.monotonic() - failing_since < 30:  # the outage itself: 30 s, answers collected meanwhile
            ledger.take()
            ledger.broker.connection.sleep(0.5)
        stored_at_end = db.medical_reports.count_documents({})
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        admin.client.close()
    healed_at = time.monotonic()

    ledger.settle(timeout=180)
    figures = ledger.verify("mongo_fail_command_30s")
    assert figures.stored == 100 and figures.dlq == 0
    assert len(mongo_retries(run)) >= 10, "the fail point was not felt"
    assert_no_llm_call_for_a_stored_report(llm, run, requests)
    figures.recover_seconds = time.monotonic() - healed_at
    figures.notes.update(stored_before=stored_at_start, stored_during=stored_at_end - stored_at_start,
                         mongo_retries=len(mongo_retries(run)), repeated_llm_calls=sum(
                             n - 1 for n in llm.stats()["by_request"].values()))
    print("\n" + figures.line())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mongo_stopped_and_started_again_mid_run_loses_nothing_and_stores_once(
        parent, ledger, llm, names, tmp_path):
    server = MongoServer(storage_path=str(tmp_path / "mongo-data"))  # on disk: the data outlives the restart
    server.start()
    client = server.client()
    try:
        db = client[names["MONGODB_DATABASE"]]
        db.knowledge_base.insert_many(json.loads((ROOT / "worker" / "data" / "knowledge_base.json").read_text()))
        ledger.db = db
        llm.configure(latency=0.5)
        run = parent("--processes", "2", "--threads", "4", MONGODB_URL=server.url, MONGODB_TIMEOUT_SECONDS="2",
                     **RETRY)
        requests = [sample_request(user_id=f"user-{i % 10}") for i in range(100)]
        for request in requests:
            ledger.publish(request)
        wait_for(lambda: db.medical_reports.count_documents({}) >= 15, 60)

        stopped_at = time.monotonic()
        server.stop_process()
        # down until both children have felt it: several attempts failed on the database and went to wait
        wait_for(lambda: len({e["pid"] for e in mongo_retries(run)}) == 2 and len(mongo_retries(run)) >= 6, 60,
                 message=f"the outage was not felt; log:\n{run.output()[-3000:]}")
        down_seconds = time.monotonic() - stopped_at
        server.restart()
        back_at = time.monotonic()

        ledger.settle(timeout=200)
        figures = ledger.verify("mongo_stop_start")
        print(Counter(e["error"][:60] for e in run.events("retry_scheduled")))
        assert figures.stored == 100 and figures.dlq == 0
        assert_no_llm_call_for_a_stored_report(llm, run, requests)
        assert not run.events("child_exited")
        figures.recover_seconds = time.monotonic() - back_at
        figures.notes.update(mongo_down_seconds=round(down_seconds, 1), mongo_retries=len(mongo_retries(run)),
                             in_progress_waits=len([e for e in run.events("retry_scheduled")
                                                    if "being generated" in e["error"]]),
                             repeated_llm_calls=sum(n - 1 for n in llm.stats()["by_request"].values()))
        print("\n" + figures.line())
    finally:
        client.close()
        server.stop()
