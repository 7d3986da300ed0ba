"""A 30 s LLM call under a 2 s broker heartbeat: the I/O loop keeps the connection alive."""

import subprocess

import pytest

from tests.conftest import sample_request


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_long_llm_call_keeps_the_connection_and_answers_once(consumer, broker, db, llm, env, names):
    llm.configure(latency=30.0)
    url = env["RABBITMQ_URL"] + "?heartbeat=2"
    worker = consumer(RABBITMQ_URL=url, LLM_TIMEOUT_SECONDS="60", WORKER_NAME="hb-" + names["MONGODB_DATABASE"])
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "timeout", "client_properties"],
                             capture_output=True, text=True, check=True).stdout
    ours = [line for line in listing.splitlines() if "hb-" + names["MONGODB_DATABASE"] in line]
    assert ours and all(line.split("\t")[0] == "2" for line in ours), listing

    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1, timeout=60)
    assert response["status"] == "success"
    broker.connection.sleep(3)  # a redelivery after a lost connection would show up here
    assert broker.take(names["RABBITMQ_RESPONSE_QUEUE"]) == []
    assert llm.stats()["by_request"] == {request["request_id"]: 1}
    assert db.medical_reports.count_documents({}) == 1
    assert worker.events("broker_connection_lost") == []
    assert len(worker.events("consuming")) == 1
