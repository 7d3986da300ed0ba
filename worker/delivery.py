"""A delivery as a small value (what arrived), and the settlement that says how it ends."""

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
    """How a delivery ends: publish these (each confirmed), then ack; or, with requeue, nack it back to the
    queue and publish nothing. `outcome` is what the metrics count. `otherwise` is what to do instead when
    the broker refuses one of the publishes (a nack): a function that builds that settlement then (the
    success path's fallback is rarely needed, so it is not built for every report); `pause` asks the
    consumer to stop taking messages."""

    publishes: tuple[Publish, ...] = ()
    requeue: bool = False
    outcome: str = "success"
    otherwise: Callable[[], "Settlement"] | None = None
    pause: str = ""

    def fallback(self) -> "Settlement | None":
        """What to do instead when the broker refuses a publish (None: nothing of ours would take it)."""
        return self.otherwise() if self.otherwise else None


@dataclass
class Delivery:
    """One message as it arrived on `channel`; the handler reads it, only the consumer settles it."""

    body: bytes
    properties: pika.BasicProperties
    tag: int
    redelivered: bool
    channel: object
    received_at: float = field(default_factory=time.monotonic)
    crashes: int = 0    # children that died while handling it (the supervisor's crash book; 0 if unknown)

    @property
    def headers(self) -> dict:
        """The message's headers table; empty when there is none (or something else stands there)."""
        headers = self.properties.headers
        return headers if isinstance(headers, dict) else {}

    @property
    def attempt(self) -> int:
        headers = self.headers
        try:
            return max(1, int(headers.get(ATTEMPT_HEADER, 1)))
        except (TypeError, ValueError, OverflowError):
            return 1

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return value if isinstance(value, str) else None

    def copy_properties(self, **headers) -> pika.BasicProperties:
        """The original properties, persistent, with extra headers merged in."""
        merged = {**self.headers, **headers}
        kept = {name: getattr(self.properties, name) for name in KEPT_PROPERTIES}
        return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers=merged, **kept)

