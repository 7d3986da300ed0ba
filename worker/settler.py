"""Carry out a settlement on the I/O thread: confirmed publishes (with their fallbacks), then ack or nack."""

import time

from pika.exceptions import NackError, UnroutableError

from worker.delivery import Delivery, Publish, Settlement
from worker.events import Events, timed
from worker.logs import EventLog

log = EventLog(__name__)
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
LAST_RESORT_DELAY = 5.0   # seconds before a delivery nobody would confirm goes back to the queue


class Settler:
    """Settles deliveries of one channel. `waiting_since` is set while a publish waits for its confirm,
    so the consumer can tell the supervisor it is held back by the broker (blocked), not hung."""

    def __init__(self, events: Events, call_later=None):
        self.events = events
        self.call_later = call_later          # connection.call_later: schedule on the I/O thread
        self.waiting_since: float | None = None

    def settle(self, channel, delivery: Delivery, settlement: Settlement) -> str:
        """Publish, then ack; a publish the broker refuses (NackError) turns to `settlement.fallback()`,
        the bounded path outcomes prepared (a delay queue with the next attempt, then the DLQ). Returns
        the outcome that happened. UnroutableError for one of our own queues escapes: the consumer
        reconnects, which declares the queues again, and the delivery comes back."""
        current: Settlement | None = settlement
        while current is not None:
            if current.requeue:
                channel.basic_nack(delivery.tag, requeue=True)
                return current.outcome
            try:
                with timed(self.events, "publish"):
                    for publish in current.publishes:
                        self._publish_confirmed(channel, publish)
            except NackError:
                refused, current = current, _fallback(current)
                log.warning("publish_not_confirmed", tag=delivery.tag, outcome=refused.outcome,
                            then=current.outcome if current else "requeue_later")
                continue
            channel.basic_ack(delivery.tag)
            self.events.message_settled(current.outcome, time.monotonic() - delivery.received_at)
            return current.outcome
        self._requeue_later(channel, delivery)
        return "requeued"

    def _publish_confirmed(self, channel, publish: Publish) -> None:
        """Publish and wait for the confirm; a reply_to that has no queue or refuses the message falls back
        to the response queue. Direct reply-to is not published mandatory: RabbitMQ delivers it and still
        returns it as unroutable, which would send a second copy to the response queue."""
        direct = publish.routing_key.startswith(DIRECT_REPLY_TO)
        self.waiting_since = time.monotonic()
        try:
            try:
                channel.basic_publish("", publish.routing_key, publish.body, publish.properties, mandatory=not direct)
            except (UnroutableError, NackError) as exc:
                if not publish.fallback_key:
                    raise
                log.warning("reply_to_refused_by_broker", fallback=publish.fallback_key, error=type(exc).__name__)
                channel.basic_publish("", publish.fallback_key, publish.body, publish.properties, mandatory=True)
        finally:
            self.waiting_since = None

    def _requeue_later(self, channel, delivery: Delivery) -> None:
        """Nothing of ours would confirm a publish (not even the DLQ): back to the queue, but not at once."""
        log.error("settlement_impossible", tag=delivery.tag, retry_in=LAST_RESORT_DELAY)

        def requeue() -> None:
            if channel.is_open:
                channel.basic_nack(delivery.tag, requeue=True)

        if self.call_later is None:
            requeue()
        else:
            self.call_later(LAST_RESORT_DELAY, requeue)


def _fallback(settlement: Settlement) -> Settlement | None:
    """The settlement's fallback, built now; one that cannot be built requeues later instead of taking the
    I/O thread (and every delivery of the process) down with it."""
    try:
        return settlement.fallback()
    except Exception as exc:
        log.error("fallback_failed", exc_info=exc, outcome=settlement.outcome)
        return None
