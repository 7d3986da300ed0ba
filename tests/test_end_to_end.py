"""The whole flow through real RabbitMQ, Redis, the Mongo stand-in and the fake LLM."""

import json
import signal

import pytest

from tests.conftest import sample_request
from tests.services import wait_for

REPORT_FIELDS = {"report_id", "request_id", "user_id", "report_data", "json_content", "markdown_content",
                 "created_at", "generation_time_seconds", "tokens_used", "estimated_cost", "model"}


@pytest.mark.timeout(120)
def test_requests_become_stored_cited_reports(consumer, broker, db, cache, llm, names):
    worker = consumer(LLM_PRICES="gpt-4o=1000:1000")
    requests = [sample_request(user_id=f"user-{i % 2}") for i in range(5)]
    for request in requests:
        broker.publish(request, correlation_id="corr-" + request["request_id"])

    responses = broker.responses(5)
    by_id = {r["request_id"]: r for r in responses}
    assert set(by_id) == {r["request_id"] for r in requests}
    assert all(r["status"] == "success" and r["report_id"] and r["error_message"] == "" for r in responses)
    assert all(r["timestamp"].endswith("Z") or r["timestamp"].endswith("+00:00") for r in responses)

    reports = list(db.medical_reports.find({}, {"_id": 0}))
    assert len(reports) == 5
    for report in reports:
        assert REPORT_FIELDS <= set(report)
        assert report["report_id"] == by_id[report["request_id"]]["report_id"]
        assert report["tokens_used"] > 0
        assert report["estimated_cost"] == pytest.approx(report["tokens_used"] * 1000 / 1e6)
        request = next(r for r in requests if r["request_id"] == report["request_id"])
        assert request["disclaimer"] in report["markdown_content"]
        citations = report["json_content"]["citations"]
        kb_urls = {entry["source_url"] for entry in db.knowledge_base.find()}
        assert citations and {c["source_url"] for c in citations} <= kb_urls
        for citation in citations:
            assert f"[{citation['n']}]" in report["markdown_content"]
    assert db.users.count_documents({}) == 2
    prefix = names["REDIS_KEY_PREFIX"]
    for response in responses:
        cached = json.loads(cache.get(f"{prefix}report:{response['report_id']}"))
        assert cached["request_id"] == response["request_id"]
    assert json.loads(cache.get(f"{prefix}input:user-0"))["user_id"] == "user-0"
    assert llm.stats()["calls"] == 5
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 0
    assert worker.proc.poll() is None


@pytest.mark.timeout(60)
def test_response_keeps_correlation_id_and_honours_reply_to(consumer, broker, db, names):
    consumer(REPLY_TO_ALLOWED=f"{names['RABBITMQ_RESPONSE_QUEUE']},amq.gen-*")
    reply_queue = broker.channel.queue_declare("", exclusive=True).method.queue
    request = sample_request()
    broker.publish(request, correlation_id="abc-123", reply_to=reply_queue)
    [response] = broker.collect(reply_queue, 1, timeout=30)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"
    assert broker.depth(broker.names["RABBITMQ_RESPONSE_QUEUE"]) == 0
    # the correlation id travels on the AMQP properties
    request2 = sample_request()
    broker.publish(request2, correlation_id="xyz-789")
    props = wait_for(lambda: broker.take(broker.names["RABBITMQ_RESPONSE_QUEUE"]), 30)
    assert props[0][0].correlation_id == "xyz-789"
    assert props[0][0].delivery_mode == 2


@pytest.mark.timeout(90)
def test_the_same_request_three_times_gives_one_report_and_three_answers(consumer, broker, db, llm):
    llm.configure(latency=1.0)
    consumer(RETRY_DELAYS="0.3,0.6")
    request = sample_request()
    for _ in range(3):
        broker.publish(request)
    responses = broker.responses(3, timeout=60)
    assert {r["status"] for r in responses} == {"success"}
    assert len({r["report_id"] for r in responses}) == 1
    assert db.medical_reports.count_documents({"request_id": request["request_id"]}) == 1
    assert llm.stats()["by_request"] == {request["request_id"]: 1}


@pytest.mark.timeout(90)
def test_redelivered_stored_request_is_answered_again_without_llm(consumer, broker, db, llm):
    consumer()
    request = sample_request()
    broker.publish(request)
    [first] = broker.responses(1)
    broker.publish(request, headers={"x-attempt": 2})  # as if the ack had been lost
    [second] = broker.responses(1)
    assert second["report_id"] == first["report_id"] and second["status"] == "success"
    assert llm.stats()["by_request"] == {request["request_id"]: 1}
    assert db.medical_reports.count_documents({}) == 1


def fail_first_llm_call_then_succeed(llm, broker, db) -> None:
    """Publish one request while the LLM answers 500, heal the LLM after its first call, expect success."""
    llm.configure(error_rate=1.0)
    broker.publish(sample_request())
    wait_for(lambda: llm.stats()["calls"] >= 1, 20)
    llm.configure(error_rate=0.0)
    [response] = broker.responses(1, timeout=30)
    assert response["status"] == "success"
    assert db.medical_reports.count_documents({}) == 1


@pytest.mark.timeout(90)
def test_llm_errors_retry_through_delay_queues_then_succeed(consumer, broker, db, llm):
    worker = consumer()
    fail_first_llm_call_then_succeed(llm, broker, db)
    retries = worker.events("retry_scheduled")
    assert retries and retries[0]["attempt"] == 2


@pytest.mark.timeout(90)
def test_exhausted_retries_answer_failed_and_dead_letter_once(consumer, broker, db, llm, names):
    llm.configure(error_rate=1.0)
    consumer(MAX_RETRIES="2")
    request = sample_request()
    broker.publish(request, correlation_id="c-1")
    [response] = broker.responses(1, timeout=30)
    assert response["status"] == "failed" and response["request_id"] == request["request_id"]
    assert response["error_message"]
    dead = wait_for(lambda: broker.take(names["RABBITMQ_DLQ"]), 10)
    assert len(dead) == 1
    properties, body = dead[0]
    assert json.loads(body) == request
    assert properties.headers["x-death-reason"] == "dead_lettered"
    assert properties.headers["x-attempts"] == 3
    assert properties.correlation_id == "c-1"
    assert llm.stats()["by_request"] == {request["request_id"]: 3}
    assert db.medical_reports.count_documents({}) == 0
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 0


@pytest.mark.timeout(90)
def test_redis_down_still_succeeds(consumer, broker, db):
    worker = consumer(REDIS_URL="redis://127.0.0.1:1/0")
    requests = [sample_request() for _ in range(3)]
    for request in requests:
        broker.publish(request)
    responses = broker.responses(3)
    assert {r["status"] for r in responses} == {"success"}
    assert db.medical_reports.count_documents({}) == 3
    assert worker.events("cache_unavailable")


@pytest.mark.timeout(120)
def test_sigterm_finishes_inflight_and_leaves_the_rest_queued(consumer, broker, db, llm, names):
    llm.configure(latency=3.0)
    worker = consumer(WORKER_THREADS="4", RABBITMQ_PREFETCH_COUNT="8")
    requests = [sample_request() for _ in range(12)]
    for request in requests:
        broker.publish(request)
    wait_for(lambda: llm.stats()["calls"] >= 4, 20)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    finished = db.medical_reports.count_documents({})
    assert finished >= 4
    answered = broker.responses(finished, timeout=5)
    assert len(answered) == finished
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == len(requests) - finished
    llm.configure(latency=0.0)
    consumer()
    broker.responses(len(requests) - finished, timeout=60)
    assert db.medical_reports.count_documents({}) == len(requests)
    assert len(db.medical_reports.distinct("request_id")) == len(requests)


@pytest.mark.timeout(60)
def test_existing_queue_with_other_arguments_is_named_and_refused(spawn, env, broker, names):
    """The request queue's arguments are ours to insist on (the backend's shared queues are not: test_contract_e2e)."""
    broker.channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], durable=True, arguments={"x-message-ttl": 1000})
    worker = spawn(["consume"], env)
    assert worker.wait(30) == 2
    [event] = worker.events("queue_mismatch")
    assert names["RABBITMQ_REQUEST_QUEUE"] in event["error"] and "x-message-ttl" in event["error"]


@pytest.mark.timeout(90)
def test_priority_messages_go_first(consumer, broker, db, names, spawn, env):
    env = {**env, "RABBITMQ_MAX_PRIORITY": "10", "WORKER_THREADS": "1"}
    first = consumer(**{k: env[k] for k in ("RABBITMQ_MAX_PRIORITY", "WORKER_THREADS")})
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0
    normal = [sample_request() for _ in range(5)]
    urgent = sample_request()
    for request in normal:
        broker.publish(request, priority=1)
    broker.publish(urgent, priority=9)
    consumer(RABBITMQ_MAX_PRIORITY="10", WORKER_THREADS="1")
    responses = broker.responses(6)
    assert responses[0]["request_id"] == urgent["request_id"]


@pytest.mark.timeout(90)
def test_worker_reconnects_when_the_broker_drops_its_connection(consumer, broker, db, names):
    import subprocess

    worker = consumer(WORKER_NAME="reconnect-" + names["MONGODB_DATABASE"])
    broker.publish(sample_request())
    broker.responses(1)
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                         capture_output=True, text=True, check=True).stdout
    name = worker.events("consuming")[0]["worker"]
    pids = [line.split("\t")[0] for line in out.splitlines() if name in line]
    assert pids, out
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, capture_output=True)
    worker.wait_event("consuming", count=2, timeout=20)
    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"
    assert worker.events("broker_connection_lost")


@pytest.mark.timeout(90)
def test_quorum_queues_work_end_to_end_including_retries(consumer, broker, db, llm, names):
    consumer(RABBITMQ_QUEUE_TYPE="quorum")
    fail_first_llm_call_then_succeed(llm, broker, db)
    import subprocess
    listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "type"], capture_output=True,
                             text=True, check=True).stdout
    types = dict(line.split("\t") for line in listing.splitlines() if line.startswith("t."))
    assert types[names["RABBITMQ_REQUEST_QUEUE"]] == "quorum"
    assert types[names["RABBITMQ_REQUEST_QUEUE"] + ".retry.0.3s"] == "quorum"


@pytest.mark.timeout(90)
def test_mongo_write_failures_retry_through_delay_queues_and_store_once(consumer, broker, db, llm, mongo):
    worker = consumer()
    admin = mongo.client().admin
    admin.command({"configureFailPoint": "failCommand", "mode": {"times": 2},
                   "data": {"failCommands": ["findAndModify", "update"], "errorCode": 91}})
    try:
        request = sample_request()
        broker.publish(request)
        [response] = broker.responses(1, timeout=30)
    finally:
        admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert response["status"] == "success"
    assert db.medical_reports.count_documents({"request_id": request["request_id"]}) == 1
    retries = worker.events("retry_scheduled")  # pymongo may retry a write itself once first
    assert retries and "mongodb" in retries[0]["error"]
    assert worker.events("report_done")[0]["attempt"] == retries[-1]["attempt"]


@pytest.mark.timeout(60)
def test_previous_input_is_read_from_redis_and_compared(consumer, broker, db):
    consumer()
    first = sample_request(user_id="user-prev")
    second = sample_request(user_id="user-prev")
    third = sample_request(user_id="user-prev", disclaimer="Changed wording.")
    for request in (first, second, third):
        broker.publish(request)
        broker.responses(1)
    changed = {doc["request_id"]: doc["report_data"]["input_changed"] for doc in db.medical_reports.find()}
    assert changed == {first["request_id"]: None, second["request_id"]: False, third["request_id"]: True}


@pytest.mark.timeout(60)
def test_worker_consumes_again_after_the_broker_cancels_its_consumer(consumer, broker, db, names):
    worker = consumer()
    broker.channel.queue_delete(names["RABBITMQ_REQUEST_QUEUE"])  # the broker sends basic.cancel
    worker.wait_event("consuming", count=2, timeout=20)
    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["status"] == "success"
    assert "cancelled" in worker.events("broker_connection_lost")[0]["error"]


@pytest.mark.timeout(60)
def test_with_input_caching_off_redis_holds_no_patient_input(consumer, broker, db, cache, names):
    consumer(REDIS_CACHE_INPUT="false")
    request = sample_request(user_id="u-nocache")
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["status"] == "success"
    prefix = names["REDIS_KEY_PREFIX"]
    assert cache.get(f"{prefix}input:u-nocache") is None
    cached = json.loads(cache.get(f"{prefix}report:{response['report_id']}"))
    assert "input" not in cached["report_data"] and cached["report_id"] == response["report_id"]
    stored = db.medical_reports.find_one({"report_id": response["report_id"]})
    assert stored["report_data"]["input"]["patient"] == request["patient"]   # MongoDB keeps the audit trail
    assert db.users.count_documents({"user_id": "u-nocache"}) == 1
    print(f"\nFIGURE scenario=cache_input_off input_keys={len(cache.keys(prefix + 'input:*'))} report_keys_with_input=0")
