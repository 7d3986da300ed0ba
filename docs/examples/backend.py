"""Send one signed report request and wait for its response, as a backend does it with plain pika."""

import hashlib
import hmac
import json
import os
import time
import uuid

import pika

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F")
REQUEST_QUEUE = os.environ.get("RABBITMQ_REQUEST_QUEUE", "report_generation_requests")
SIGNING_KEY = os.environ["REQUEST_SIGNING_KEY"]  # the worker's REQUEST_SIGNING_KEY, shared out of band
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"        # RabbitMQ's pseudo-queue: the answer comes back on this channel


def signature(body: bytes) -> str:
    """The x-signature header: HMAC-SHA256 of the exact bytes published, in hex."""
    return "sha256=" + hmac.new(SIGNING_KEY.encode("utf-8"), body, hashlib.sha256).hexdigest()


def main() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    channel.queue_declare(REQUEST_QUEUE, durable=True)  # no arguments, as the worker declares it by default
    responses = []
    channel.basic_consume(DIRECT_REPLY_TO, lambda _ch, _method, properties, body: responses.append(
        (properties.correlation_id, json.loads(body))), auto_ack=True)  # before publishing, as RabbitMQ requires

    request = {
        "request_id": str(uuid.uuid4()),
        "user_id": 1001,                                # an integer id is fine: it is answered as "1001"
        "patient": {"age": 56, "sex": "male", "smoker": False},
        "labs": [{"name": "LDL Cholesterol", "value": 162, "unit": "mg/dL", "reference_range": "<100"}],
        "plan": [{"category": "cholesterol", "action": "Repeat the lipid panel in 8-12 weeks."}],
        "categories": ["cholesterol"],
    }
    body = json.dumps(request).encode("utf-8")
    correlation_id = str(uuid.uuid4())
    channel.basic_publish(exchange="", routing_key=REQUEST_QUEUE, body=body, properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=correlation_id,
        reply_to=DIRECT_REPLY_TO,
        headers={"x-signature": signature(body)},
    ))

    deadline = time.monotonic() + 120                # a report takes one or two LLM calls
    while not responses and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.5)
    connection.close()
    if not responses:
        raise SystemExit("no response within 120 s")
    answered, response = responses[0]
    assert answered == correlation_id                 # the response carries the request's correlation_id
    print(json.dumps(response))  # success: report_id; failed: error_code, retryable, error_message


if __name__ == "__main__":
    main()
