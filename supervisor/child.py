"""What runs in a forked child: fork hygiene, then the consumer of `report-worker consume`, heartbeat-checked."""

import ctypes
import dataclasses
import os
import random
import sys
import threading
import time

import psutil

from supervisor import heartbeat
from supervisor.signals import reset_in_child
from worker import exitcodes, logs, service
from worker.consumer import Consumer
from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)

PR_SET_PDEATHSIG = 1
TEST_HANG_ENV = "REPORT_WORKER_TEST_HANG_AFTER"  # test-only: the child's I/O loop blocks after this many seconds


def main(index: int, settings: Settings, beat_path: str, parent_pid: int, hang_after: float | None) -> None:
    """The whole life of a child; it never returns into the parent's code."""
    code = exitcodes.FAILURE
    try:
        reset_in_child()
        settings = dataclasses.replace(settings, worker_name=f"{settings.name}/{index}")
        logs.configure(settings.log_level, worker=settings.name, index=index)
        die_with_parent(parent_pid)
        pulse = Pulse(settings, heartbeat.Writer(beat_path), parent_pid, hang_after)
        from metrics.events import PrometheusEvents  # TEMPORARY: the CLI will inject the child body
        code = service.run(settings, pulse, PrometheusEvents())
        if pulse.recycle and code == exitcodes.OK:
            code = exitcodes.RECYCLE  # the parent's SIGTERM arrived after our last tick
    except BaseException:
        log.error("child_crashed", exc_info=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # worker threads still inside an LLM call are not waited for: the broker requeues


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the parent dies; if it died before we asked, leave now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0) != 0:  # 9: SIGKILL
            log.warning("pdeathsig_failed", errno=ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("pdeathsig_unavailable")  # Pulse still checks the parent on every tick
    if os.getppid() != parent_pid:
        os._exit(exitcodes.FAILURE)


class Pulse:
    """Called from the consumer's I/O loop every tick: beat the heartbeat, decide to recycle, watch the parent."""

    def __init__(self, settings: Settings, writer: heartbeat.Writer, parent_pid: int, hang_after: float | None):
        self.writer = writer
        self.parent_pid = parent_pid
        self.max_tasks = settings.max_tasks_per_child + random.randint(0, settings.max_tasks_jitter)
        if not settings.max_tasks_per_child:
            self.max_tasks = 0
        self.max_rss = settings.max_memory_per_child * 1024 * 1024
        self.patience = settings.worker_timeout  # how long a recycle request waits for the parent's SIGTERM
        self.process = psutil.Process()
        self.checked_at_settled = 0
        self.recycle = ""
        self.recycle_deadline = 0.0
        self.hang_at = time.monotonic() + hang_after if hang_after else 0.0

    def __call__(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if os.getppid() != self.parent_pid and not consumer.stopping:
            log.warning("parent_gone")
            consumer.stop()
        if not self.recycle and not consumer.stopping:
            self.recycle = self.due_for_recycle(consumer)
            if self.recycle:
                self.recycle_deadline = now + self.patience
                log.info("recycle_requested", reason=self.recycle, settled=consumer.settled,
                         rss_mb=round(self.process.memory_info().rss / 2**20, 1))
        elif self.recycle and (consumer.stopping or now > self.recycle_deadline):
            consumer.stop(exitcodes.RECYCLE)  # the parent's SIGTERM came (or never will): leave as recycled
        self.writer.beat(self.phase(consumer), consumer.settled, len(consumer.pending), now)
        if self.hang_at and now > self.hang_at:
            log.warning("test_hang", hook=TEST_HANG_ENV)
            threading.Event().wait()  # test-only: block the I/O loop for good

    def phase(self, consumer: Consumer) -> str:
        if consumer.draining or consumer.stopping:
            return heartbeat.DRAINING
        if consumer.channel is None:
            return heartbeat.CONNECTING
        return heartbeat.RECYCLE if self.recycle else heartbeat.READY

    def due_for_recycle(self, consumer: Consumer) -> str:
        """"tasks" or "memory" once a limit is reached, checked only after a task settled."""
        if consumer.settled == self.checked_at_settled:
            return ""
        self.checked_at_settled = consumer.settled
        if self.max_tasks and consumer.settled >= self.max_tasks:
            return "tasks"
        if self.max_rss and self.process.memory_info().rss > self.max_rss:
            return "memory"
        return ""
