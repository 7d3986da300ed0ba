"""Queue depths and consumer counts, polled by the parent with passive declares on its own connection."""

import logging
import threading
import time
from typing import Callable

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker

from worker.broker import every_node
from worker.logs import EventLog
from worker.settings import Settings
from worker.topology import queue_names

log = EventLog(__name__)

NOT_FOUND = 404
THREAD_NAME = "metrics-queue-poller"


class _QuietNotFound(logging.Filter):
    """Drop pika's warning for the 404 that a passive declare of a missing queue causes, from our thread
    only: a missing queue is an expected answer here, repeated every poll (forked children have no such thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName == THREAD_NAME and f"({NOT_FOUND})" in record.getMessage())


_QUIET = _QuietNotFound()


class QueuePoller:
    """A daemon thread that passive-declares every queue each `interval` seconds.

    `snapshot()` returns {role: (messages, consumers)} from the last poll: an empty dict while the
    broker cannot be reached, and no entry for a queue that does not exist (yet).
    """

    def __init__(self, settings: Settings, interval: float = 5.0,
                 connect: Callable[[Settings], pika.BlockingConnection] | None = None):
        self.settings = settings
        self.interval = interval
        self._connect = connect or (lambda s: pika.BlockingConnection(every_node(s, "metrics")))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._snapshot: dict[str, tuple[int, int]] = {}
        self.started_at = 0.0     # monotonic time of start()
        self.polled_at = 0.0      # monotonic time of the last successful poll

    def start(self) -> None:
        if self._thread is None:
            logging.getLogger("pika.channel").addFilter(_QUIET)   # adding the same filter twice is a no-op
            self.started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def age(self) -> float | None:
        """Seconds since the last successful poll (or since start, before the first); None if not started."""
        if not self.started_at:
            return None
        return time.monotonic() - (self.polled_at or self.started_at)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._snapshot)

    def _publish(self, snapshot: dict[str, tuple[int, int]]) -> None:
        with self._lock:
            self._snapshot = snapshot

    def _run(self) -> None:
        connection = None
        failures = 0
        while not self._stop.is_set():
            try:
                if connection is None or not connection.is_open:
                    connection = self._connect(self.settings)
                self._publish(poll(connection, queue_names(self.settings)))
                self.polled_at = time.monotonic()
                failures = 0
            except (AMQPError, OSError) as exc:
                self._publish({})
                failures += 1
                if failures == 1:
                    log.warning("queue_poll_failed", error=f"{type(exc).__name__}: {exc}"[:200])
                connection = _close(connection)
            self._stop.wait(self.interval if failures == 0 else min(self.interval * failures, 30.0))
        _close(connection)


def poll(connection, roles: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(messages, consumers) of each existing queue; a missing one closes the channel, so reopen it."""
    result = {}
    channel = connection.channel()
    try:
        for role, name in roles.items():
            try:
                ok = channel.queue_declare(name, passive=True)
            except ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                channel = connection.channel()
                continue
            result[role] = (ok.method.message_count, ok.method.consumer_count)
    finally:
        if channel.is_open:
            channel.close()
    return result


def _close(connection) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except (AMQPError, OSError):
            pass
    return None
