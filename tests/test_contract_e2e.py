"""The backend contract on real services: what real backends send, answered every time, never across users."""

import hashlib
import hmac
import json
import time
import tracemalloc

import pika
import pytest

from tests.conftest import RABBITMQ_URL, sample_request
from tests.services import wait_for
from worker.delivery import Delivery
from worker.outcomes import handle
from worker.settings import load

pytestmark = pytest.mark.timeout(120)


class SeedBackend:
    """A backend written from seed 001's guide: plain pika, its own queue declarations, no properties."""

    def __init__(self, names: dict):
        self.names = names
        self.connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        self.channel = self.connection.channel()

    def declare(self) -> None:
        for key in ("RABBITMQ_REQUEST_QUEUE", "RABBITMQ_RESPONSE_QUEUE"):
            self.channel.queue_declare(self.names[key], durable=True)

    def send(self, request: dict) -> None:
        self.channel.basic_publish(exchange="", routing_key=self.names["RABBITMQ_REQUEST_QUEUE"],
                                   body=json.dumps(request))

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def backend(names):
    seed = SeedBackend(names)
    yield seed
    seed.close()


def test_a_seed_001_backend_runs_end_to_end(backend, consumer, broker, db, llm):
    backend.declare()  # first, with durable=True and nothing else
    worker = consumer()
    requests = [sample_request(user_id=1001), sample_request(user_id=1002, disclaimer=None, cvd_summary=None),
                {k: v for k, v in sample_request(user_id=1003).items() if k != "patient"}]
    requests[0]["request_id"] = 424242
    for request in requests:
        backend.send(request)
    responses = {r["user_id"]: r for r in broker.responses(3)}
    assert set(responses) == {"1001", "1002", "1003"}
    assert all(r["status"] == "success" and r["error_code"] is None for r in responses.values())
    assert responses["1001"]["request_id"] == "424242"
    stored = {d["user_id"]: d for d in db.medical_reports.find({}, {"_id": 0})}
    assert set(stored) == {"1001", "1002", "1003"} and stored["1001"]["request_id"] == "424242"
    assert db.users.count_documents({"user_id": {"$in": ["1001", "1002", "1003"]}}) == 3
    assert not worker.events("queue_mismatch") and not worker.events("queue_arguments_differ")


def test_the_worker_first_then_the_backend_declares_the_same_queues(backend, consumer, broker):
    consumer()
    backend.declare()  # would be PRECONDITION_FAILED if the worker had put arguments on them
    request = sample_request(user_id=7)
    backend.send(request)
    [response] = broker.responses(1)
    assert response["status"] == "success" and response["user_id"] == "7"


def test_shared_queues_declared_with_other_arguments_are_used_with_one_warning(broker, names, consumer):
    broker.channel.queue_declare(names["RABBITMQ_RESPONSE_QUEUE"], durable=True, arguments={"x-message-ttl": 5000})
    broker.channel.queue_declare(names["RABBITMQ_DLQ"], durable=True, arguments={"x-max-length": 1000})
    worker = consumer()
    broker.publish(sample_request())
    [response] = broker.responses(1)
    assert response["status"] == "success"
    warned = {e["queue"]: e for e in worker.events("queue_arguments_differ")}
    assert set(warned) == {names["RABBITMQ_RESPONSE_QUEUE"], names["RABBITMQ_DLQ"]}
    assert "x-message-ttl" in warned[names["RABBITMQ_RESPONSE_QUEUE"]]["broker"]


def test_a_reused_request_id_never_answers_with_another_users_report(consumer, broker, db, llm):
    consumer()
    alice = sample_request(request_id="r-1", user_id="alice")
    broker.publish(alice)
    [first] = broker.responses(1)
    broker.publish(sample_request(request_id="r-1", user_id="bob"))
    broker.publish(dict(alice, labs=[{"name": "LDL", "value": 99, "unit": "mg/dL"}]))  # same user, other input
    broker.publish(alice)  # an identical duplicate keeps today's behaviour
    answers = broker.responses(3)
    by_user = {}
    for answer in answers:
        by_user.setdefault(answer["user_id"], []).append(answer)
    [bob] = by_user["bob"]
    assert (bob["status"], bob["error_code"], bob["retryable"], bob["report_id"]) == \
        ("failed", "request_id_conflict", False, "")
    statuses = sorted((a["status"], a.get("error_code")) for a in by_user["alice"])
    assert statuses == [("failed", "request_id_conflict"), ("success", None)]
    assert [a["report_id"] for a in by_user["alice"] if a["status"] == "success"] == [first["report_id"]]
    assert db.medical_reports.count_documents({}) == 1 and llm.stats()["calls"] == 1
    assert json.dumps(answers).count(first["report_id"]) == 1  # only the identical duplicate carries it


def test_every_readable_request_id_gets_a_failed_response(consumer, broker, names):
    consumer()
    broker.publish({"request_id": 42, "user_id": 7, "labs": "not a list"})
    broker.publish(b'{"request_id": 43, "user_id": "u", "patient": {"n": 99999999999999999999999}}')
    broker.publish({"request_id": "r-dollar", "user_id": "u", "patient": {"$where": "1"}})
    answers = {a["request_id"]: a for a in broker.responses(3)}
    assert answers["42"]["error_code"] == "invalid_field" and "labs" in answers["42"]["error_message"]
    assert answers["43"]["error_code"] == "unstorable_input" and answers["r-dollar"]["error_code"] == "unstorable_input"
    assert all(a["status"] == "failed" and a["retryable"] is False for a in answers.values())
    assert "99999999999999999999999" not in json.dumps(answers)


def test_unstorable_input_costs_no_llm_call(consumer, broker, db, llm, names):
    consumer()
    broker.publish(sample_request(request_id="r-nul", patient={"bad\u0000key": 1}))
    [answer] = broker.responses(1)
    assert answer["error_code"] == "unstorable_input"
    dead = wait_for(lambda: broker.take(names["RABBITMQ_DLQ"]), 20)
    assert dead[0][0].headers["x-error-code"] == "unstorable_input"
    assert llm.stats()["calls"] == 0 and db.medical_reports.count_documents({}) == 0


def test_with_signing_on_an_unsigned_message_is_never_answered(consumer, broker, names, db, llm):
    key = "s3cret"
    consumer(REQUEST_SIGNING_KEY=key)
    unsigned = sample_request(request_id="forged")
    broker.publish(unsigned, reply_to=names["RABBITMQ_RESPONSE_QUEUE"])
    broker.publish(sample_request(request_id="forged-2"), headers={"x-signature": "sha256=" + "0" * 64})
    signed = sample_request(request_id="signed")
    body = json.dumps(signed).encode()
    broker.publish(body, headers={"x-signature": "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()})
    [answer] = broker.responses(1)
    assert answer["request_id"] == "signed" and answer["status"] == "success"
    dead = wait_for(lambda: len(broker.take_into(names["RABBITMQ_DLQ"])) >= 2 and broker.taken, 20)
    assert sorted(json.loads(b)["request_id"] for _, b in dead) == ["forged", "forged-2"]
    assert {p.headers["x-death-reason"] for p, _ in dead} == {"rejected"}
    assert {p.headers["x-error-code"] for p, _ in dead} == {"bad_signature"}
    time.sleep(1)
    assert broker.depth(names["RABBITMQ_RESPONSE_QUEUE"]) == 0 and llm.stats()["calls"] == 1


def test_a_prefetch_below_the_thread_count_warns_naming_the_idle_threads(consumer):
    worker = consumer(RABBITMQ_PREFETCH_COUNT="1", WORKER_THREADS="4")
    [warning] = worker.wait_event("prefetch_below_threads")
    assert warning["idle_threads"] == 3


def test_size_is_checked_first_and_a_16_mib_body_costs_less_than_twice_the_limit():
    settings = load({"OPENAI_API_KEY": "k", "MAX_MESSAGE_BYTES": str(1 << 20), "REQUEST_SIGNING_KEY": "k"})
    body = b'{"request_id": "big-1", "user_id": "u", "patient": {"notes": "' + b"x" * (16 << 20) + b'"}}'
    properties = pika.BasicProperties(content_type="text/plain", headers={"x-signature": "sha256=00"})
    delivery = Delivery(body, properties, tag=1, redelivered=False, channel=None)
    tracemalloc.start()
    try:
        settlement = handle(delivery, pipeline=None, settings=settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert settlement.outcome == "invalid"
    assert settlement.publishes[-1].properties.headers["x-error-code"] == "too_large"
    assert peak < 2 * (1 << 20), f"peak {peak} bytes"
