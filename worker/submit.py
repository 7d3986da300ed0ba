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


def wait_for_responses(ch, queue: str, expected: set[str], timeout: float, out: IO[str]) -> tuple[int, int]:
    """Print each response as a JSON line until every expected id answered; returns (answered, failed)."""
    answered: set[str] = set()
    failed = 0
    deadline = time.monotonic() + timeout
    for method, properties, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.2):
        if method is not None:
            response = json.loads(body)
            out.write(json.dumps(response) + "\n")
            out.flush()
            answered.add(properties.correlation_id or response.get("request_id", ""))
            failed += response.get("status") != "success"
        if expected <= answered or time.monotonic() > deadline:
            break
    ch.cancel()
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
        reply_to = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue if wait else None
        try:
            ids = publish(ch, settings.request_queue, requests, reply_to, priority)
        except UnroutableError:
            print(f"report-worker: queue {settings.request_queue!r} does not exist; "
                  "start the worker once so it declares its queues", file=sys.stderr)
            return 1
        print(json.dumps({"event": "submitted", "count": len(ids), "queue": settings.request_queue}), file=sys.stderr)
        if not wait:
            return 0
        answered, failed = wait_for_responses(ch, reply_to, set(ids), wait, sys.stdout)
    if answered < len(ids):
        print(json.dumps({"event": "timeout", "answered": answered, "expected": len(ids)}), file=sys.stderr)
        return 1
    return 1 if failed else 0
