"""One consumer process: the I/O loop owns pika, a thread pool does the slow work."""

import functools
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import pika
from pika.exceptions import (
    AMQPChannelError, AMQPError, ChannelClosed, ConsumerCancelled, NackError, UnroutableError,
)

from metrics.definitions import (
    BROKER_RECONNECTS, INFLIGHT, MESSAGES, PROCESSING_SECONDS, REDELIVERIES, STAGE_SECONDS,
)
from worker import exitcodes, lifecycle
from worker.broker import connection_parameters
from worker.delivery import Delivery, Publish, Settlement
from worker.logs import EventLog
from worker.settings import Settings
from worker.topology import QueueMismatch, declare

log = EventLog(__name__)

TICK_SECONDS = 0.5
CONSUMER_TIMEOUT_HINT = (
    "the broker closed the channel: if the reply says 'delivery acknowledgement timed out', "
    "a message waited longer than RabbitMQ's consumer_timeout between delivery and ack; lower "
    "RABBITMQ_PREFETCH_COUNT (towards WORKER_THREADS) or LLM_TIMEOUT_SECONDS, or raise consumer_timeout"
)


class Backoff:
    """Exponential delays with full jitter between `first` and `cap` seconds."""

    def __init__(self, first: float = 0.25, cap: float = 2.0):
        self.first, self.cap, self.attempts = first, cap, 0

    def next(self) -> float:
        self.attempts += 1
        return random.uniform(self.first, min(self.cap, self.first * 2 ** self.attempts))

    def reset(self) -> None:
        self.attempts = 0


@dataclass(frozen=True)
class Status:
    """What the supervisor may know of a consumer (its heartbeat): a `worker.lifecycle` phase and counts."""

    phase: str      # lifecycle.CONNECTING, CONSUMING, DRAINING (later BLOCKED)
    settled: int    # deliveries settled since start
    inflight: int   # deliveries received and not settled yet


class Consumer:
    """Consume the request queue; `handle(delivery)` runs on a worker thread and settles the delivery."""

    def __init__(
        self,
        settings: Settings,
        handle: Callable[[Delivery], None],
        on_tick: Callable[["Consumer"], None] | None = None,
    ):
        self.settings = settings
        self.handle = handle
        self.on_tick = on_tick
        self.stopping = False
        self.exit_code = exitcodes.OK
        self.draining = False
        self.cancelled_by_broker = False
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self.consumer_tag: str | None = None
        self.pending: dict[int, Delivery] = {}
        self.settled = 0
        self.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="report")

    # ---- called from anywhere -------------------------------------------------------------

    def stop(self, code: int = exitcodes.OK) -> None:
        """Ask for a graceful stop, leaving with `code`; safe from a signal handler (it only sets flags)."""
        self.exit_code = code
        self.stopping = True

    def status(self) -> Status:
        """Called on the I/O thread (from `on_tick`)."""
        if self.stopping or self.draining:
            phase = lifecycle.DRAINING
        elif self.channel is None:
            phase = lifecycle.CONNECTING
        else:
            phase = lifecycle.CONSUMING
        return Status(phase, self.settled, len(self.pending))

    # ---- the I/O thread ---------------------------------------------------------------------

    def run(self) -> int:
        backoff = Backoff()
        connected_once = False
        give_up_at = time.monotonic() + self.settings.connect_timeout
        try:
            while not self.stopping:
                try:
                    self._connect()
                    if connected_once:
                        BROKER_RECONNECTS.inc()
                    connected_once = True
                    backoff.reset()
                    self._serve()
                except QueueMismatch as exc:
                    log.error("queue_mismatch", error=str(exc))
                    return exitcodes.CONFIG
                except (AMQPError, OSError) as exc:
                    self._forget_channel()
                    if self.stopping:
                        break
                    if not connected_once and time.monotonic() > give_up_at:
                        log.error("broker_unreachable", error=_describe(exc), seconds=self.settings.connect_timeout)
                        return exitcodes.CONNECT
                    delay = backoff.next()
                    log.warning("broker_connection_lost", error=_describe(exc), retry_in=round(delay, 2))
                    self._sleep(delay)
            return self.exit_code
        finally:
            self._close()

    def _connect(self) -> None:
        self.connection = pika.BlockingConnection(connection_parameters(self.settings))
        declare(self.connection, self.settings)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=self.settings.prefetch)
        self.cancelled_by_broker = False
        self.channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        self.consumer_tag = self.channel.basic_consume(self.settings.request_queue, self._on_message)
        log.info("consuming", queue=self.settings.request_queue, prefetch=self.settings.prefetch,
                 threads=self.settings.worker_threads)

    def _serve(self) -> None:
        drain_until = None
        if self.on_tick:
            self.on_tick(self)  # tell the supervisor we consume now, not one tick later
        while True:
            self.connection.process_data_events(time_limit=TICK_SECONDS)
            self._check_channel()
            if self.on_tick:
                self.on_tick(self)
            if self.stopping and drain_until is None:
                drain_until = time.monotonic() + self.settings.graceful_timeout
                self._start_draining()
            if drain_until is not None and (not self.pending or time.monotonic() > drain_until):
                if self.pending:
                    log.warning("drain_timeout", unfinished=len(self.pending))
                return

    def _check_channel(self) -> None:
        """Raise when the broker closed the consuming channel (a consumer_timeout, say).

        pika's BlockingConnection does not raise for that in process_data_events (only the channel's own
        calls would), so without this check the process would stay up and consume nothing."""
        channel = self.channel
        if channel is not None and channel.is_closed:
            reason = getattr(channel, "_closing_reason", None)  # pika keeps the broker's Channel.Close here
            raise reason if isinstance(reason, AMQPError) else ChannelClosed(0, "the consuming channel closed")
        if self.cancelled_by_broker and not self.draining:
            raise ConsumerCancelled("the broker cancelled our consumer (queue deleted or moved)")

    def _on_cancelled_by_broker(self, frame) -> None:
        self.cancelled_by_broker = True

    def _start_draining(self) -> None:
        self.draining = True
        log.info("draining", inflight=len(self.pending), grace_seconds=self.settings.graceful_timeout)
        if self.channel is not None and self.channel.is_open and self.consumer_tag:
            self.channel.basic_cancel(self.consumer_tag)

    def _on_message(self, channel, method, properties, body) -> None:
        delivery = Delivery(body, properties, method.delivery_tag, method.redelivered, channel, self._settle_threadsafe)
        self.pending[delivery.tag] = delivery
        INFLIGHT.set(len(self.pending))
        if method.redelivered:
            REDELIVERIES.inc()
        self.executor.submit(self._work, delivery)

    def _settle(self, delivery: Delivery, settlement: Settlement) -> None:
        channel = delivery.channel
        if channel is not self.channel or not channel.is_open or self.pending.get(delivery.tag) is not delivery:
            log.info("stale_delivery_dropped", tag=delivery.tag)  # the broker has requeued it already
            return
        try:
            if settlement.requeue:
                channel.basic_nack(delivery.tag, requeue=True)
            else:
                started = time.perf_counter()
                for publish in settlement.publishes:
                    self._publish_confirmed(channel, publish)
                STAGE_SECONDS.labels("publish").observe(time.perf_counter() - started)
                channel.basic_ack(delivery.tag)
                MESSAGES.labels(settlement.outcome).inc()
                PROCESSING_SECONDS.observe(time.monotonic() - delivery.received_at)
        except NackError:
            log.warning("publish_not_confirmed", tag=delivery.tag)
            channel.basic_nack(delivery.tag, requeue=True)
        del self.pending[delivery.tag]
        self.settled += 1
        INFLIGHT.set(len(self.pending))

    def _publish_confirmed(self, channel, publish) -> None:
        """Publish and wait for the confirm. A queue of ours that has gone (UnroutableError escapes) makes
        the consumer reconnect, which declares the queues again; the delivery is redelivered."""
        try:
            channel.basic_publish("", publish.routing_key, publish.body, publish.properties, mandatory=True)
        except UnroutableError:
            if not publish.fallback_key:
                raise
            log.warning("reply_to_unroutable", fallback=publish.fallback_key)
            channel.basic_publish("", publish.fallback_key, publish.body, publish.properties, mandatory=True)

    def _forget_channel(self) -> None:
        if self.pending:
            log.info("deliveries_returned_to_broker", count=len(self.pending))
        self.pending.clear()
        INFLIGHT.set(0)
        self.channel = None
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except AMQPError:
                pass
        self.connection = None

    def _close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()  # unacked deliveries go back to the queue
            except AMQPError:
                pass

    def _sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < until:
            time.sleep(min(0.1, until - time.monotonic()))
            if self.on_tick:  # still alive while waiting to reconnect (the supervisor's heartbeat)
                self.on_tick(self)

    # ---- worker threads ---------------------------------------------------------------------

    def _settle_threadsafe(self, delivery: Delivery, settlement: Settlement) -> None:
        connection = self.connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._settle, delivery, settlement))
        except AMQPError:
            pass  # connection gone: the broker requeues the delivery

    def _work(self, delivery: Delivery) -> None:
        if delivery.channel is not self.channel:
            return  # its channel is gone: the broker has requeued it, do not spend an LLM call on it
        if self.draining:
            delivery.settle(Settlement(requeue=True))
            return
        try:
            self.handle(delivery)
        except Exception as exc:  # a bug in handling: never leave the delivery unsettled
            log.error("handler_crashed", exc_info=exc)
            headers = {"x-death-reason": "crash", "x-error": f"{type(exc).__name__}: {exc}"[:1000]}
            properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, headers=headers)
            delivery.settle(Settlement((Publish(self.settings.dlq, delivery.body, properties),), outcome="failed"))


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AMQPChannelError) and "ack" in str(exc).lower():
        text += " | hint: " + CONSUMER_TIMEOUT_HINT
    return text

