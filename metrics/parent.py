"""The parent's own metrics: children, restarts, their RSS and CPU, queue depths, build info.

Kept in memory and exposed by a custom collector, never in the multiprocess directory: the parent
is one process, and its gauges would otherwise carry a pid label or outlive it.
"""

import os
import threading
import weakref
from importlib import metadata
from typing import Callable

import pika
import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from metrics.queues import QueuePoller
from worker.broker import every_node
from worker.settings import Settings

PREFIX = "report_worker_"

# Every name this module exposes (without the _total suffix Prometheus adds to counters).
NAMES = (
    "report_worker_children",
    "report_worker_capacity_messages",
    "report_worker_child_restarts",
    "report_worker_child_rss_bytes",
    "report_worker_child_cpu_seconds",
    "report_worker_queue_messages",
    "report_worker_queue_consumers",
    "report_worker_queue_poll_age_seconds",
    "report_worker_broker_blocked",
    "report_worker_broker_node",
    "report_worker_build_info",
)


def version() -> str:
    try:
        return metadata.version("report-worker")
    except metadata.PackageNotFoundError:
        from worker import __version__
        return __version__


class ParentMetrics:
    """What the arbiter tells us about its children, plus the queue poller; a prometheus_client collector.

    Children are tracked by pid, labelled by worker index: during a rolling replacement two processes
    share an index, and their RSS and CPU add up under that label. Thread-safe: the arbiter's loop calls
    the child_* methods, the HTTP thread calls collect().
    """

    def __init__(self, settings: Settings, directory=None, poll_interval: float = 5.0, poller=None,
                 consuming: Callable[[], int] | None = None, blocked: Callable[[], int] | None = None,
                 nodes: Callable[[], dict] | None = None):
        self.settings = settings
        self.directory = directory            # a MetricsDirectory: child_exited folds the child's files
        self.poller = poller or QueuePoller(settings, poll_interval, connect=self._connect)
        self.consuming = consuming            # children consuming now (for capacity); default: all live ones
        self.blocked = blocked                # children whose broker connection is blocked now
        self.nodes = nodes                    # {worker index: broker node "host:port"} of the connected children
        self._connections: "weakref.WeakSet[pika.BlockingConnection]" = weakref.WeakSet()
        _instances.add(self)
        self.version = version()
        self._lock = threading.Lock()
        self._index: dict[int, int] = {}          # pid -> worker index, live children
        self._procs: dict[int, psutil.Process] = {}
        self._rss: dict[int, float] = {}          # pid -> bytes
        self._cpu: dict[int, float] = {}          # pid -> CPU seconds last read
        self._cpu_before: dict[int, float] = {}   # index -> CPU seconds of exited children at that index
        self._restarts: dict[str, int] = {}

    # -- called by the arbiter ---------------------------------------------------------------

    def start(self) -> None:
        """Start polling the queues (a daemon thread with its own RabbitMQ connection)."""
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

    def reload(self, settings: Settings) -> None:
        """After SIGHUP: new thread count, new queue names."""
        self.settings = settings
        self.poller.settings = settings

    def child_started(self, index: int, pid: int) -> None:
        with self._lock:
            self._index[pid] = index

    def child_exited(self, index: int, pid: int, reason: str, restart: bool = True) -> None:
        """A reaped child; call right after waitpid and before forking again (a new child may reuse the pid).

        `reason` is a worker.lifecycle reason ("crash", "signal_9", "hung", "recycle", ...); `restart`
        is False when the parent is stopping or shrinking, so the exit is not counted as a restart.
        """
        if self.directory is not None:
            self.directory.mark_dead(pid)
        with self._lock:
            self._forget(pid, index)
            if restart:
                self._restarts[reason] = self._restarts.get(reason, 0) + 1

    def _forget(self, pid: int, index: int) -> None:
        if self._index.pop(pid, None) is None:
            return
        self._procs.pop(pid, None)
        self._rss.pop(pid, None)
        self._cpu_before[index] = self._cpu_before.get(index, 0.0) + self._cpu.pop(pid, 0.0)

    def sample_children(self) -> None:
        """Read RSS and CPU of the live children."""
        with self._lock:
            live = dict(self._index)
        for pid in live:
            self._sample(pid)

    def _sample(self, pid: int) -> None:
        proc = self._procs.get(pid)
        try:
            proc = proc or psutil.Process(pid)
            with proc.oneshot():
                rss = proc.memory_info().rss
                times = proc.cpu_times()
        except psutil.Error:
            return
        with self._lock:
            if pid in self._index:
                self._procs[pid] = proc
                self._rss[pid] = float(rss)
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), times.user + times.system)

    # -- fork hygiene: the poller's connection stays with the parent ----------------------------

    def _connect(self, settings: Settings) -> pika.BlockingConnection:
        """The queue poller's connection, remembered so that a forked child can close its copy."""
        connection = pika.BlockingConnection(every_node(settings, "metrics"))
        self._connections.add(connection)
        return connection

    def close_in_child(self) -> None:
        """In a forked child: close our copy of the poller's socket to the broker (nothing is sent, so
        the parent's connection lives on; the poller thread does not exist here)."""
        for connection in list(self._connections):
            sock = getattr(getattr(getattr(connection, "_impl", None), "_transport", None), "_sock", None)
            if sock is not None:  # pika keeps the socket at connection._impl._transport._sock (1.3, 1.4)
                sock.close()
        self._connections = weakref.WeakSet()

    # -- called by the registry on each scrape -----------------------------------------------

    def collect(self):
        self.sample_children()
        with self._lock:
            alive = len(self._index)
            rss: dict[int, float] = {}
            cpu = dict(self._cpu_before)
            for pid, index in self._index.items():
                if pid in self._rss:
                    rss[index] = rss.get(index, 0.0) + self._rss[pid]
                cpu[index] = cpu.get(index, 0.0) + self._cpu.get(pid, 0.0)
            restarts = dict(self._restarts)
        consuming = alive if self.consuming is None else _count(self.consuming)
        yield GaugeMetricFamily(PREFIX + "children", "Live child processes.", value=alive)
        yield GaugeMetricFamily(PREFIX + "capacity_messages",
                                "Messages the consuming children can process at once (children x WORKER_THREADS).",
                                value=consuming * self.settings.worker_threads)
        family = CounterMetricFamily(PREFIX + "child_restarts", "Children replaced, by why they left.",
                                     labels=["reason"])
        for reason, count in sorted(restarts.items()):
            family.add_metric([reason], count)
        yield family
        family = GaugeMetricFamily(PREFIX + "child_rss_bytes", "Resident memory of each child.", labels=["worker"])
        for index, value in sorted(rss.items()):
            family.add_metric([str(index)], value)
        yield family
        family = CounterMetricFamily(PREFIX + "child_cpu_seconds",
                                     "CPU seconds (user + system) of the children at each worker index.",
                                     labels=["worker"])
        for index, value in sorted(cpu.items()):
            family.add_metric([str(index)], value)
        yield family
        yield from self._queue_families()
        yield GaugeMetricFamily(PREFIX + "broker_blocked",
                                "Children whose RabbitMQ connection is blocked now (memory or disk alarm).",
                                value=0 if self.blocked is None else _count(self.blocked))
        yield self._node_family()
        family = GaugeMetricFamily(PREFIX + "build_info", "Always 1; the version is the label.", labels=["version"])
        family.add_metric([self.version], 1)
        yield family

    def _node_family(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + "broker_node", "1 for the broker node (host:port) each connected child "
                                   "is on; sum by node: children per node.", labels=["node", "worker"])
        try:
            nodes = dict(self.nodes()) if self.nodes is not None else {}
        except Exception:  # the arbiter's answer is not worth a failed scrape
            nodes = {}
        for index, node in sorted(nodes.items()):
            family.add_metric([node, str(index)], 1)
        return family

    def _queue_families(self):
        snapshot = self.poller.snapshot()
        messages = GaugeMetricFamily(PREFIX + "queue_messages", "Ready messages in each queue (passive declare).",
                                     labels=["queue"])
        consumers = GaugeMetricFamily(PREFIX + "queue_consumers", "Consumers of each queue (passive declare).",
                                      labels=["queue"])
        for role, (count, consumer_count) in sorted(snapshot.items()):
            messages.add_metric([role], count)
            consumers.add_metric([role], consumer_count)
        yield messages
        yield consumers
        age = self.poller.age()
        if age is not None:
            yield GaugeMetricFamily(PREFIX + "queue_poll_age_seconds",
                                    "Seconds since the last successful queue poll (or since the poller started).",
                                    value=age)


def _count(callable_: Callable[[], int]) -> int:
    try:
        return int(callable_())
    except Exception:  # the arbiter's answer is not worth a failed scrape
        return 0


_instances: "weakref.WeakSet[ParentMetrics]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance.close_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
