"""`report-worker dlq list|replay|purge`: look at, send back, or drop dead-lettered requests."""

import json
from typing import IO

import pika

from worker.broker import channel
from worker.delivery import ATTEMPT_HEADER, CLAIM_HEADER
from worker.frames import MARKER
from worker.outcomes import RETRY_SIGNATURE
from worker.intake import identify
from worker.settings import Settings

DEAD_LETTER_HEADERS = ("x-death-reason", "x-error", "x-error-code", "x-error-class", "x-attempts",
                       "x-original-queue", "x-failed-at", "x-worker", "x-death", ATTEMPT_HEADER, CLAIM_HEADER,
                       RETRY_SIGNATURE, MARKER)


def _summary(properties, body: bytes) -> dict:
    headers = properties.headers or {}
    request_id, user_id = identify(body)
    return {
        "request_id": request_id,
        "user_id": user_id,
        "reason": headers.get("x-death-reason"),
        "error": headers.get("x-error"),
        "attempts": headers.get("x-attempts"),
        "failed_at": headers.get("x-failed-at"),
        "bytes": len(body),
    }


def list_messages(settings: Settings, limit: int, out: IO[str]) -> int:
    """Print up to `limit` dead letters as JSON lines; they stay in the queue."""
    shown = 0
    with channel(settings, confirm=False) as ch:
        while shown < limit:
            method, properties, body = ch.basic_get(settings.dlq, auto_ack=False)
            if method is None:
                break
            out.write(json.dumps(_summary(properties, body)) + "\n")
            shown += 1
        # closing the channel returns every unacked message to the DLQ, in order
    return shown


def replay(settings: Settings, limit: int) -> int:
    """Move up to `limit` dead letters back to the request queue with a fresh attempt count."""
    moved = 0
    with channel(settings) as ch:
        while moved < limit:
            method, properties, body = ch.basic_get(settings.dlq, auto_ack=False)
            if method is None:
                break
            headers = {k: v for k, v in (properties.headers or {}).items() if k not in DEAD_LETTER_HEADERS}
            properties.headers = headers or None
            properties.delivery_mode = pika.DeliveryMode.Persistent.value
            ch.basic_publish("", settings.request_queue, body, properties, mandatory=True)
            ch.basic_ack(method.delivery_tag)
            moved += 1
    return moved


def purge(settings: Settings) -> int:
    with channel(settings, confirm=False) as ch:
        return ch.queue_purge(settings.dlq).method.message_count
