"""One consumer process: the I/O loop owns pika, a thread pool does the slow work."""

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pika
from pika.exceptions import AMQPError, ChannelClosed, ConsumerCancelled

from worker import exitcodes, frames, lifecycle
from worker.lifecycle import Status
from worker.broker import Backoff, Nodes, connection_parameters, describe_error, node_label
from worker.delivery import Delivery, Settlement
from worker.events import NO_EVENTS, Events
from worker.pauses import Pauses, Probe
from worker.settler import Settler
from worker.suspects import Handling, Journal
from worker.logs import EventLog
from worker.settings import Settings, redact_url
from worker.topology import QueueMismatch, declare

log = EventLog(__name__)

TICK_SECONDS = 0.5
BLOCKED_AFTER = 1.0   # a confirm awaited this long (or a connection.blocked from the broker): phase "blocked"


class Consumer:
    """Consume the request queue; `handle(delivery)` decides on a worker thread, the I/O thread settles."""

    def __init__(
        self,
        settings: Settings,
        handle: Callable[[Delivery], Settlement],
        on_tick: Callable[["Consumer"], None] | None = None,
        events: Events = NO_EVENTS,
        probe: Probe | None = None,
        journal: Journal | None = None,
        gate: Callable[[], str] | None = None,
    ):
        self.settings = settings
        self.handle = handle
        self.on_tick = on_tick
        self.events = events
        self.pauses = Pauses(probe, settings.intake_probe_seconds, events)
        self.journal = journal
        self.handling = Handling(journal, settings.poison_crash_limit)
        self.gate = gate   # a pause reason while this child could not start more work soon ("" = none)
        self.settler = Settler(events)
        self.broker_blocked = False   # the broker sent connection.blocked (a memory or disk alarm)
        self.node = ""                # host:port of the node we are connected to
        self.ticked_at = time.monotonic()
        self.stopping = False
        self.exit_code = exitcodes.OK
        self.draining = False
        self.cancelled_by_broker = False
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self.consumer_tag: str | None = None
        self.pending: dict[int, Delivery] = {}
        self.started: set[int] = set()   # delivery tags a pool thread took up (the I/O thread only reads it)
        self.settled = 0
        self.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="report")

    # ---- called from anywhere -------------------------------------------------------------

    def stop(self, code: int = exitcodes.OK) -> None:
        """Ask for a graceful stop, leaving with `code`; safe from a signal handler (it only sets flags)."""
        self.exit_code = code
        self.stopping = True

    def status(self) -> Status:
        """Safe from any thread: it reads plain attributes the I/O thread writes."""
        waiting = self.settler.waiting_since
        if self.draining or self.stopping:
            phase = lifecycle.DRAINING
        elif self.channel is None:
            phase = lifecycle.CONNECTING
        elif self.broker_blocked or (waiting is not None and time.monotonic() - waiting > BLOCKED_AFTER):
            phase = lifecycle.BLOCKED
        elif self.pauses:
            phase = lifecycle.PAUSED
        else:
            phase = lifecycle.CONSUMING
        return Status(phase, self.settled, len(self.pending), self.ticked_at, tuple(sorted(self.pauses.reasons)),
                      self.node if self.connection is not None else "")

    # ---- the I/O thread ---------------------------------------------------------------------

    def run(self) -> int:
        nodes = Nodes(self.settings, Backoff())   # a cluster's nodes in turn, a backoff after a round of failures
        connected_once, give_up_at = False, time.monotonic() + self.settings.connect_timeout
        try:
            while not self.stopping:
                try:
                    self._connect(nodes.current())
                    if connected_once:
                        self.events.broker_reconnected()
                    connected_once = True
                    nodes.connected()
                    self._serve()
                except QueueMismatch as exc:
                    log.error("queue_mismatch", error=str(exc))
                    return exitcodes.CONFIG
                except (AMQPError, OSError) as exc:
                    self._forget_channel()
                    if self.stopping:
                        break
                    if not connected_once and time.monotonic() > give_up_at:
                        log.error("broker_unreachable", error=describe_error(exc), seconds=self.settings.connect_timeout)
                        return exitcodes.CONNECT
                    delay = nodes.failed()
                    if not delay:
                        log.warning("broker_node_failed", error=describe_error(exc), next=redact_url(nodes.current()))
                        continue
                    log.warning("broker_connection_lost", error=describe_error(exc), retry_in=round(delay, 2))
                    self._sleep(delay)
            return self.exit_code
        finally:
            self._close()

    def _connect(self, url: str) -> None:
        parameters = connection_parameters(self.settings, url=url)
        self.ticked_at = time.monotonic()   # trying a node is not a hung loop
        self.connection = frames.connect(parameters)
        self.node = node_label(parameters)
        declare(self.connection, self.settings)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.basic_qos(prefetch_count=self.settings.prefetch)
        self.cancelled_by_broker = False
        self.channel.add_on_cancel_callback(self._on_cancelled_by_broker)
        self.broker_blocked = False
        self.connection.add_on_connection_blocked_callback(lambda *_: self._set_blocked(True))
        self.connection.add_on_connection_unblocked_callback(lambda *_: self._set_blocked(False))
        self.settler = Settler(self.events, self.connection.call_later)
        self.consumer_tag = None
        if not self.pauses:
            self._consume()

    def _consume(self) -> None:
        self.consumer_tag = self.channel.basic_consume(self.settings.request_queue, self._on_message)
        log.info("consuming", queue=self.settings.request_queue, prefetch=self.settings.prefetch,
                 threads=self.settings.worker_threads, node=self.node)

    def _set_blocked(self, blocked: bool) -> None:
        self.broker_blocked = blocked
        log.warning("broker_blocked" if blocked else "broker_unblocked")

    def _serve(self) -> None:
        drain_until = None
        if self.on_tick:
            self.on_tick(self)  # tell the supervisor we consume now, not one tick later
        while True:
            self.connection.process_data_events(time_limit=TICK_SECONDS)
            self.ticked_at = time.monotonic()
            self._check_channel()
            if self.gate is not None and not self.pauses and not self.draining:
                reason = self.gate()  # e.g. llm_throttled: what we take now could not start soon; a probe resumes
                if reason:
                    self._pause(reason)
            if self.pauses.due():
                self.executor.submit(self._probe)
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
        """Stop consuming; what has not started goes back to the queue now (another consumer takes it),
        what runs may finish within GRACEFUL_TIMEOUT."""
        self.draining = True
        log.info("draining", inflight=len(self.pending), grace_seconds=self.settings.graceful_timeout)
        if self.channel is None or not self.channel.is_open:
            return
        if self.consumer_tag:
            self.channel.basic_cancel(self.consumer_tag)
        unstarted = [tag for tag in self.pending if tag not in self.started]  # a pool thread marks before it looks
        for tag in unstarted:
            self.channel.basic_nack(tag, requeue=True)
            del self.pending[tag]
        self.events.inflight_changed(len(self.pending))

    def _on_message(self, channel, method, properties, body) -> None:
        crashes = self.journal.crashes(body) if method.redelivered and self.journal else 0
        delivery = Delivery(body, properties, method.delivery_tag, method.redelivered, channel, crashes=crashes)
        self.pending[delivery.tag] = delivery
        self.events.inflight_changed(len(self.pending))
        self.events.message_received(method.redelivered)
        self.executor.submit(self._work, delivery)

    def _settle(self, delivery: Delivery, settlement: Settlement) -> None:
        channel = delivery.channel
        if channel is not self.channel or not channel.is_open or self.pending.get(delivery.tag) is not delivery:
            log.info("stale_delivery_dropped", tag=delivery.tag)  # the broker has requeued it already
            return
        self.settler.settle(channel, delivery, settlement)
        if settlement.pause:
            self._pause(settlement.pause)
        del self.pending[delivery.tag]
        self.started.discard(delivery.tag)
        self.settled += 1
        self.events.inflight_changed(len(self.pending))

    def _pause(self, reason: str) -> None:
        """Stop taking messages (those already here go back as they come up); a probe decides when to resume."""
        if self.pauses.add(reason) and self.consumer_tag and self.channel is not None and self.channel.is_open:
            self.channel.basic_cancel(self.consumer_tag)
            self.consumer_tag = None

    def _resume(self, still: set[str]) -> None:
        if self.pauses.checked(still) and not self.draining and self.channel is not None and self.channel.is_open:
            self._consume()

    def _forget_channel(self) -> None:
        if self.pending:
            log.info("deliveries_returned_to_broker", count=len(self.pending))
        self.pending.clear()
        self.started.clear()   # the next channel numbers its deliveries from 1 again
        self.events.inflight_changed(0)
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
            self.ticked_at = time.monotonic()
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

    def _probe(self) -> None:
        still = self.pauses.check()
        connection = self.connection
        try:
            if connection is None:
                raise AMQPError("no connection")
            connection.add_callback_threadsafe(functools.partial(self._resume, still))
        except AMQPError:
            self.pauses.probing = False  # reconnecting: the next turn probes again

    def _work(self, delivery: Delivery) -> None:
        self.started.add(delivery.tag)
        if delivery.channel is not self.channel:
            return  # its channel is gone: the broker has requeued it, do not spend an LLM call on it
        if self.draining or self.pauses:
            self._settle_threadsafe(delivery, Settlement(requeue=True, outcome="paused"))
            return
        try:
            with self.handling(delivery):
                settlement = self.handle(delivery)
        except Exception as exc:  # handle() never raises; if it did, the message must not stay unsettled
            log.error("handler_crashed", exc_info=exc)
            settlement = Settlement(requeue=True)
        self._settle_threadsafe(delivery, settlement)
