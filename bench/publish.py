"""Publish N requests like the backend does, from its own process; write each publish time."""

import json
import sys
import time
import uuid
from pathlib import Path

import pika

SAMPLE = Path(__file__).resolve().parent.parent / "worker" / "data" / "sample_request.json"


def main(url: str, queue: str, count: int, out: str) -> None:
    template = json.loads(SAMPLE.read_text())
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()  # no per-message confirm: that would pace the publisher, not the worker
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    published = {}
    for number in range(count):
        request_id = str(uuid.uuid4())
        body = json.dumps({**template, "request_id": request_id, "user_id": f"bench-user-{number % 50}"})
        published[request_id] = time.time()
        channel.basic_publish("", queue, body.encode(), properties)
    channel.queue_declare(queue, passive=True)  # a round trip: everything before it reached the broker
    connection.close()
    Path(out).write_text(json.dumps(published))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
