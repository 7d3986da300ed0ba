"""`report-worker submit`: publish requests the way the backend does, optionally wait for responses."""

import json
import sys
import time
import uuid
from typing import IO, Iterable

import pika
from pika.exceptions import UnroutableError

from worker.broker import channel
from worker.settings import Settings


def read_requests(stream: IO[str]) -> list[dict]:
    """A JSON object, a JSON array of objects, or JSON lines."""
    text = stream.read().strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def publish(ch, queue: str, requests: Iterable[dict], reply_to: str | None = None, priority: int | None = None) -> list[str]:
    """Publish each request persistent and confirmed; returns the correlation ids used."""
    ids = []
    for request in requests:
        correlation_id = str(request.get("request_id") or uuid.uuid4())
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=priority,
        )
        ch.basic_publish("", queue, json.dumps(request).encode(), properties, mandatory=True)
        ids.append(correlation_id)
    return ids


DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def collect_replies(ch) -> list[dict]:
    """Start consuming RabbitMQ's direct reply-to pseudo-queue (before publishing, as it requires)."""
    replies: list[dict] = []
    ch.basic_consume(DIRECT_REPLY_TO, lambda _ch, _method, properties, body: replies.append(
        {"correlation_id": properties.correlation_id, **json.loads(body)}), auto_ack=True)
    return replies


def wait_for_responses(ch, replies: list[dict], expected: set[str], timeout: float, out: IO[str]) -> tuple[int, int]:
    """Print each response as a JSON line until every expected id answered; returns (answered, failed)."""
    answered: set[str] = set()
    failed = 0
    deadline = time.monotonic() + timeout
    while not expected <= answered and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.2)
        while replies:
            response = replies.pop(0)
            correlation_id = response.pop("correlation_id") or response.get("request_id", "")
            out.write(json.dumps(response) + "\n")
            out.flush()
            answered.add(correlation_id)
            failed += response.get("status") != "success"
    return len(expected & answered), failed


def run(settings: Settings, source: str, wait: float | None, priority: int | None = None,
        new_ids: bool = False) -> int:
    if source == "-":
        requests = read_requests(sys.stdin)
    else:
        with open(source, encoding="utf-8") as handle:
            requests = read_requests(handle)
    if new_ids:
        requests = [{**request, "request_id": str(uuid.uuid4())} for request in requests]
    with channel(settings) as ch:
        replies = collect_replies(ch) if wait else []
        try:
            ids = publish(ch, settings.request_queue, requests, DIRECT_REPLY_TO if wait else None, priority)
        except UnroutableError:
            print(f"report-worker: queue {settings.request_queue!r} does not exist; "
                  "start the worker once so it declares its queues", file=sys.stderr)
            return 1
        print(json.dumps({"event": "submitted", "count": len(ids), "queue": settings.request_queue}), file=sys.stderr)
        if not wait:
            return 0
        answered, failed = wait_for_responses(ch, replies, set(ids), wait, sys.stdout)
    if answered < len(ids):
        print(json.dumps({"event": "timeout", "answered": answered, "expected": len(ids)}), file=sys.stderr)
        return 1
    return 1 if failed else 0
