"""Publish N requests like the backend does, from its own process; write each publish time.

`... celery` at the end sends the same request bodies as Celery task messages (the `peer` scenario)."""

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pika

SAMPLE = Path(__file__).resolve().parent.parent / "worker" / "data" / "sample_request.json"


def requests(count: int) -> Iterator[tuple[str, str]]:
    """(request_id, body) of N requests: the sample request, 50 users taking turns."""
    template = json.loads(SAMPLE.read_text())
    for number in range(count):
        request_id = str(uuid.uuid4())
        yield request_id, json.dumps({**template, "request_id": request_id, "user_id": f"bench-user-{number % 50}"})


def main(url: str, queue: str, count: int, out: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()  # no per-message confirm: that would pace the publisher, not the worker
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    published = {}
    for request_id, body in requests(count):
        published[request_id] = time.time()
        channel.basic_publish("", queue, body.encode(), properties)
    channel.queue_declare(queue, passive=True)  # a round trip: everything before it reached the broker
    connection.close()
    Path(out).write_text(json.dumps(published))


def main_celery(url: str, queue: str, count: int, out: str) -> None:
    """The same bodies as task messages (Celery's protocol 2, JSON, persistent), one producer, no confirms."""
    from celery import Celery

    from bench.celeryapp import TASK, configure

    app = configure(Celery("bench.publisher"), url, queue)
    published = {}
    with app.producer_or_acquire() as producer:
        for request_id, body in requests(count):
            published[request_id] = time.time()
            app.send_task(TASK, args=[body], queue=queue, producer=producer)
        producer.channel.queue_declare(queue, passive=True)  # a round trip, as above
    Path(out).write_text(json.dumps(published))


if __name__ == "__main__":
    publish = main_celery if sys.argv[5:] == ["celery"] else main
    publish(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
