"""Issue 13: a publish the broker refuses (a nack) takes the bounded path, never an immediate requeue loop."""

import json
import time

import pytest

from tests.conftest import sample_request
from tests.services import wait_for

pytestmark = pytest.mark.timeout(90)
FULL = {"x-max-length": 0, "x-overflow": "reject-publish"}   # every publish to it is nacked


def test_a_full_reply_to_queue_falls_back_to_the_response_queue(consumer, broker, names, llm):
    worker = consumer(REPLY_TO_ALLOWED=f"{names['RABBITMQ_RESPONSE_QUEUE']},full-*")
    full = f"full-{names['RABBITMQ_REQUEST_QUEUE']}"
    broker.channel.queue_declare(full, durable=False, auto_delete=True, arguments=FULL)
    request = sample_request()
    broker.publish(request, reply_to=full)
    [response] = broker.responses(1)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"
    assert [e["error"] for e in worker.events("reply_to_refused_by_broker")] == ["NackError"]
    assert llm.stats()["calls"] == 1


def test_a_response_queue_that_refuses_everything_ends_in_the_dlq_after_the_retries(spawn, env, broker, names, db,
                                                                                 llm):
    broker.channel.queue_declare(names["RABBITMQ_RESPONSE_QUEUE"], durable=True, arguments=FULL)
    worker = spawn(["consume"], {**env, "MAX_RETRIES": "2", "RETRY_DELAYS": "0.3,0.6"})
    worker.wait_event("consuming")
    request = sample_request()
    started = time.monotonic()
    broker.publish(request)
    dead = wait_for(lambda: broker.take(names["RABBITMQ_DLQ"]), 30, message=worker.output()[-3000:])
    [(properties, body)] = dead
    assert json.loads(body)["request_id"] == request["request_id"]
    assert properties.headers["x-death-reason"] == "dead_lettered" and properties.headers["x-attempts"] == 3
    assert "not confirm" in properties.headers["x-error"]
    refused = worker.events("publish_not_confirmed")
    assert 3 <= len(refused) <= 5                                  # attempts 1, 2, 3 and the failed response
    assert [e["then"] for e in refused[:3]] == ["retried", "retried", "dead_lettered"]
    assert llm.stats()["calls"] == 1                               # retries found the stored report
    assert db.medical_reports.count_documents({"status": "done"}) == 1
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 0
    print(f"\nFIGURE scenario=unconfirmed_publish sent=1 stored=1 attempts={properties.headers['x-attempts']} "
          f"not_confirmed={len(refused)} dlq=1 llm_calls=1 to_dlq_seconds={time.monotonic() - started:.1f}")
