"""Bad input is answered `failed` when it can be, dead-lettered once, and never stops the worker."""

import json

import pytest
from pika import spec

from tests.conftest import sample_request
from tests.rawamqp import RawPublisher, entry, property_bytes, table, timestamp
from tests.services import wait_for


def poison_messages() -> list[tuple[str, bytes, dict, str]]:
    """(name, body, properties, request_id readable from it or '')."""
    good = sample_request(request_id="poison-wrong-type")
    wrong_type = dict(good, labs="not a list")
    missing_id = {k: v for k, v in sample_request().items() if k != "request_id"}
    deep = "[" * 5000 + "]" * 5000
    huge = dict(sample_request(request_id="poison-huge"), patient={"notes": "x" * 300_000})
    return [
        ("not json", b"{this is not json", {}, ""),
        ("wrong types", json.dumps(wrong_type).encode(), {}, "poison-wrong-type"),
        ("missing request_id", json.dumps(missing_id).encode(), {}, ""),
        ("not utf-8", b'{"request_id": "\xff\xfe"}', {}, ""),
        ("deep nesting", deep.encode(), {}, ""),
        ("too large", json.dumps(huge).encode(), {}, "poison-huge"),
        ("json array", b"[1, 2, 3]", {}, ""),
        ("wrong content type", json.dumps(sample_request(request_id="poison-xml")).encode(),
         {"content_type": "application/xml"}, "poison-xml"),
        ("boolean ids", json.dumps(dict(sample_request(), request_id=True)).encode(), {}, ""),
        ("empty body", b"", {}, ""),
    ]


@pytest.mark.timeout(120)
def test_poison_messages_are_dead_lettered_once_and_the_worker_lives(consumer, broker, db, llm, names):
    worker = consumer(MAX_MESSAGE_BYTES=str(256 * 1024))
    poison = poison_messages()
    for _, body, properties, _ in poison:
        broker.publish(body, **properties)
    valid = sample_request()
    broker.publish(valid)

    expected_failed = {rid for *_, rid in poison if rid}
    responses = broker.responses(len(expected_failed) + 1)
    by_status = {}
    for response in responses:
        by_status.setdefault(response["status"], set()).add(response["request_id"])
    assert by_status["success"] == {valid["request_id"]}
    assert by_status["failed"] == expected_failed
    assert all(r["error_message"] for r in responses if r["status"] == "failed")

    dead: list = []

    def all_dead_lettered():
        dead.extend(broker.take(names["RABBITMQ_DLQ"]))
        return len(dead) >= len(poison)

    wait_for(all_dead_lettered, 20, message="not every poison message reached the DLQ")
    assert len(dead) == len(poison)
    assert sorted(body for _, body in dead) == sorted(body for _, body, _, _ in poison)
    for properties, _ in dead:
        assert properties.headers["x-death-reason"] == "invalid"
        assert properties.headers["x-error"]
    assert llm.stats()["calls"] == 1
    assert db.medical_reports.count_documents({}) == 1
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 0
    assert worker.proc.poll() is None


@pytest.fixture
def doubles_on_the_wire(monkeypatch):
    """Let the test's publisher send AMQP doubles, as Java or JavaScript clients do (pika can only read them)."""
    import struct

    import pika.data

    original = pika.data.encode_value

    def encode_value(pieces, value):
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return original(pieces, value)

    monkeypatch.setattr(pika.data, "encode_value", encode_value)


@pytest.mark.timeout(90)
def test_headers_pika_cannot_write_back_do_not_make_a_message_loop(consumer, broker, db, names,
                                                                    doubles_on_the_wire):
    """Other clients send doubles in headers (and absurd attempt counts): still one dead letter, no loop."""
    worker = consumer()
    broker.publish(b"{not json", headers={"x-score": 1.5, "nested": {"ratio": 0.25, "list": [2.5]}})
    valid = sample_request()
    broker.publish(valid, headers={"x-attempt": 1e300, "x-weight": 0.5})
    [response] = broker.responses(1)
    assert response["request_id"] == valid["request_id"] and response["status"] == "success"
    dead: list = []

    def dead_lettered():
        dead.extend(broker.take(names["RABBITMQ_DLQ"]))
        return len(dead) >= 1

    wait_for(dead_lettered, 20)
    broker.connection.sleep(1)
    dead.extend(broker.take(names["RABBITMQ_DLQ"]))
    assert len(dead) == 1 and dead[0][1] == b"{not json"
    assert dead[0][0].headers["x-death-reason"] == "invalid"
    assert dead[0][0].headers["x-score"] == 1  # pika reads doubles as integers: lossy, but writable again
    assert worker.events("broker_connection_lost") == []
    assert db.medical_reports.count_documents({}) == 1


def test_headers_pika_cannot_decode_are_dead_lettered_once_without_a_reconnect(consumer, broker, names, db, llm):
    """A 'T' header past year 9999 made pika drop the connection and the message loop forever."""
    worker = consumer()
    bad = sample_request(request_id="bad-header")
    properties = property_bytes(spec.BasicProperties(content_type="application/json", delivery_mode=2),
                                table(entry(b"sent", timestamp(253402300800))))
    publisher = RawPublisher()
    try:
        publisher.publish(names["RABBITMQ_REQUEST_QUEUE"], json.dumps(bad).encode(), properties)
    finally:
        publisher.close()
    good = sample_request()
    broker.publish(good)
    responses = {r["request_id"]: r for r in broker.responses(2)}
    assert responses["bad-header"]["status"] == "failed"
    assert responses[good["request_id"]]["status"] == "success"
    dead = wait_for(lambda: broker.take(names["RABBITMQ_DLQ"]), 20)
    broker.connection.sleep(1)
    dead += broker.take(names["RABBITMQ_DLQ"])
    assert len(dead) == 1 and json.loads(dead[0][1])["request_id"] == "bad-header"
    assert dead[0][0].headers["x-death-reason"] == "invalid" and "year 10000" in dead[0][0].headers["x-error"]
    assert worker.events("broker_connection_lost") == [] and len(worker.events("consuming")) == 1
    assert llm.stats()["calls"] == 1 and db.medical_reports.count_documents({}) == 1
