"""A delivery as a small value: what arrived, and how to settle it on the connection's own thread."""

import time
from dataclasses import dataclass, field
from typing import Callable

import pika

ATTEMPT_HEADER = "x-attempt"
SIGNATURE_HEADER = "x-signature"
CLAIM_HEADER = "x-claim"  # the claim token of a request's earlier attempts: a retry may take back their claim
KEPT_PROPERTIES = (
    "content_type", "content_encoding", "priority", "correlation_id", "reply_to",
    "message_id", "timestamp", "type", "app_id",
)


@dataclass(frozen=True)
class Publish:
    """One message to publish with a confirm before the delivery is acked."""

    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    fallback_key: str | None = None  # where to go if routing_key has no queue (a vanished reply_to)


@dataclass(frozen=True)
class Settlement:
    """Publish these (confirmed), then ack; or, with requeue, nack back to the queue and publish nothing."""

    publishes: tuple[Publish, ...] = ()
    requeue: bool = False
    outcome: str = "success"


@dataclass
class Delivery:
    body: bytes
    properties: pika.BasicProperties
    tag: int
    redelivered: bool
    channel: object
    settle_on_io_thread: Callable[["Delivery", Settlement], None]
    received_at: float = field(default_factory=time.monotonic)

    @property
    def attempt(self) -> int:
        headers = self.properties.headers or {}
        try:
            return max(1, int(headers.get(ATTEMPT_HEADER, 1)))
        except (TypeError, ValueError, OverflowError):
            return 1

    def header(self, name: str) -> str | None:
        value = (self.properties.headers or {}).get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    def settle(self, settlement: Settlement) -> None:
        self.settle_on_io_thread(self, settlement)

    def copy_properties(self, **headers) -> pika.BasicProperties:
        """The original properties, persistent, with extra headers merged in."""
        merged = {**(self.properties.headers or {}), **headers}
        kept = {name: getattr(self.properties, name) for name in KEPT_PROPERTIES}
        return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers=merged, **kept)

