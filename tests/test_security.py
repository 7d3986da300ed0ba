"""Signed requests, and no patient data or secret in any log line."""

import hashlib
import hmac
import json

import pytest

from tests.conftest import sample_request
from tests.services import wait_for

KEY = "test-signing-key"


def sign(body: bytes, key: str = KEY) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.timeout(90)
def test_with_a_signing_key_only_correctly_signed_requests_are_processed(consumer, broker, db, names):
    consumer(REQUEST_SIGNING_KEY=KEY)
    unsigned, forged, signed = (sample_request(request_id=f"sig-{n}") for n in ("unsigned", "forged", "signed"))
    broker.publish(unsigned)
    forged_body = json.dumps(forged).encode()
    broker.publish(forged_body, headers={"x-signature": sign(forged_body, "wrong-key")})
    signed_body = json.dumps(signed).encode()
    broker.publish(signed_body, headers={"x-signature": sign(signed_body)})

    [response] = broker.responses(1)  # unsigned and forged messages are never answered (issue 11, rule 7)
    assert (response["request_id"], response["status"]) == ("sig-signed", "success")
    dead = wait_for(lambda: (lambda got: got if len(got) == 2 else None)(broker.take(names["RABBITMQ_DLQ"])), 20)
    assert {json.loads(body)["request_id"] for _, body in dead} == {"sig-unsigned", "sig-forged"}
    errors = {json.loads(body)["request_id"]: p.headers["x-error"] for p, body in dead}
    assert "not signed" in errors["sig-unsigned"] and "signature" in errors["sig-forged"]
    assert {p.headers["x-death-reason"] for p, _ in dead} == {"rejected"}
    assert broker.depth(names["RABBITMQ_RESPONSE_QUEUE"]) == 0
    assert db.medical_reports.count_documents({}) == 1


PHI = ["Zyxwvut Qwertyson", "1931-02-29", "MRN-77553311", "987.654", "Phimarker Street 42"]


@pytest.mark.timeout(120)
def test_no_patient_value_or_secret_appears_in_logs(consumer, broker, db, llm, env):
    worker = consumer(LOG_LEVEL="DEBUG", OPENAI_API_KEY="sk-very-secret-value",
                      REDIS_URL="redis://:redis-secret-pw@127.0.0.1:1/0")
    request = sample_request(patient={"name": PHI[0], "birth_date": PHI[1], "mrn": PHI[2],
                                      "address": PHI[4], "age": 50, "sex": "female"},
                             labs=[{"name": "LDL", "value": float(PHI[3]), "unit": "mg/dL"}])
    broker.publish(request)
    bad = dict(request, request_id="phi-bad", labs="not a list")
    broker.publish(bad)
    llm.configure(error_rate=1.0)
    broker.publish(dict(request, request_id="phi-retry"))
    wait_for(lambda: worker.events("retry_scheduled"), 20)
    llm.configure(error_rate=0.0)
    broker.responses(3, timeout=30)
    output = worker.output()
    assert worker.events("settings"), "the debug settings line was expected"
    for value in PHI + ["sk-very-secret-value", "redis-secret-pw"]:
        assert value not in output, f"{value!r} leaked into the logs"
    assert "guest:guest@" in env["RABBITMQ_URL"] and "guest:***@" in output
    assert "guest:guest@" not in output


@pytest.mark.timeout(120)
def test_no_patient_value_appears_in_the_parent_logs_or_the_scrape(spawn, env, broker, db):
    import urllib.request

    from tests.services import free_port

    port = free_port()
    parent = spawn(["run", "--processes", "2", "--metrics-port", str(port)], {**env, "LOG_LEVEL": "DEBUG"})
    parent.wait_event("ready", timeout=60)
    request = sample_request(patient={"name": PHI[0], "birth_date": PHI[1], "mrn": PHI[2], "address": PHI[4]},
                             labs=[{"name": "LDL", "value": float(PHI[3]), "unit": "mg/dL"}])
    broker.publish(request)
    broker.publish(dict(request, request_id="phi-invalid", plan="not a list"))
    broker.responses(2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        scrape = answer.read().decode()
    assert 'report_worker_messages_total{outcome="success"} 1.0' in scrape
    for value in PHI + [request["request_id"], request["user_id"]]:
        assert value not in scrape, f"{value!r} appears in the scrape"
    for value in PHI:
        assert value not in parent.output(), f"{value!r} leaked into the logs"


@pytest.mark.timeout(60)
def test_pika_never_logs_the_body_of_a_returned_message(consumer, broker, names):
    worker = consumer(REPLY_TO_ALLOWED=f"{names['RABBITMQ_RESPONSE_QUEUE']},gone-*")
    request = sample_request(user_id="Returnedbody-Marker-4711")     # in the response's body, which is returned
    broker.publish(request, reply_to="gone-queue-of-a-backend")   # no such queue: the broker returns it
    [response] = broker.responses(1)                              # ... and the fallback answers
    assert response["status"] == "success"
    output = worker.output()
    assert "Published message was returned" in output               # pika did log the return
    assert "Returnedbody-Marker-4711" not in output and "body_prefix" not in output
    returns = sum("Published message was returned" in line for line in output.splitlines())
    print(f"\nFIGURE scenario=pika_return_privacy returned_lines={returns} body_marker_lines=0")
