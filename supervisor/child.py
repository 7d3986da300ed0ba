"""What runs in a forked child: fork hygiene, then the child body the CLI gave us, heartbeat-checked."""

import ctypes
import dataclasses
import os
import random
import sys
import threading
import time
from typing import Callable, Protocol

import psutil

from supervisor import heartbeat
from supervisor.crashes import TEST_CRASH_ENV, Journal
from supervisor.signals import reset_in_child
from worker import exitcodes, lifecycle, logs
from worker.broker import spread
from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)

PR_SET_PDEATHSIG = 1
TEST_HANG_ENV = "REPORT_WORKER_TEST_HANG_AFTER"  # test-only: the child's I/O loop blocks after this many seconds
BEAT_SECONDS = 0.5


class Consumer(Protocol):
    """All a child's supervisor may use of the consumer (worker.consumer.Consumer)."""

    def status(self):  # -> worker.consumer.Status: phase, settled, inflight, ticked_at, paused, node
        ...

    def stop(self, code: int = exitcodes.OK) -> None:
        ...


OnTick = Callable[[Consumer], None]
RunChild = Callable[[Settings, OnTick, Journal], int]   # the child's body: consume until stopped, return an exit code


def main(index: int, settings: Settings, beat_path: str, parent_pid: int, run_child: RunChild,
         hang_after: float | None) -> None:
    """The whole life of a child; it never returns into the parent's code."""
    code = exitcodes.FAILURE
    try:
        reset_in_child()
        settings = spread(dataclasses.replace(settings, worker_name=f"{settings.name}/{index}"), index)
        logs.configure(settings.log_level, worker=settings.name, index=index)
        die_with_parent(parent_pid)
        pulse = Pulse(settings, heartbeat.Writer(beat_path), parent_pid)
        code = run_child(settings, Beating(pulse, hang_after), Journal(beat_path, os.environ.get(TEST_CRASH_ENV)))
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


class Beating:
    """The consumer's `on_tick` (its I/O thread, every turn): starts the pulse thread on the first call.

    The heartbeat is written by its own thread, so a child waiting on the broker (flow control, a late
    confirm) still beats, saying `blocked`; a hung I/O loop shows as a beat whose time stops advancing."""

    def __init__(self, pulse: "Pulse", hang_after: float | None, interval: float = BEAT_SECONDS):
        self.pulse = pulse
        self.interval = interval
        self.thread: threading.Thread | None = None
        self.hang_at = time.monotonic() + hang_after if hang_after else 0.0

    def __call__(self, consumer: Consumer) -> None:
        if self.thread is None:
            self.pulse(consumer)  # at once: the parent learns we consume now, not one beat later
            self.thread = threading.Thread(target=self._run, args=(consumer,), name="pulse", daemon=True)
            self.thread.start()
        if self.hang_at and time.monotonic() > self.hang_at:
            log.warning("test_hang", hook=TEST_HANG_ENV)
            threading.Event().wait()  # test-only: block the I/O loop for good

    def _run(self, consumer: Consumer) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.pulse(consumer)
            except Exception:  # a failing beat must not end the beats: the parent would kill us as hung
                log.error("pulse_failed", exc_info=True)


class Pulse:
    """One beat: reads the consumer's `status()`, writes the heartbeat, asks for a recycle, watches the parent.

    Uses only the consumer's `status()` and `stop(code)`. The beat's time is when the consumer's I/O loop
    last turned, or now while the broker holds it back (blocked): so the parent tells hung from held."""

    def __init__(self, settings: Settings, writer: heartbeat.Writer, parent_pid: int,
                 clock: Callable[[], float] = time.monotonic, rss: Callable[[], int] | None = None,
                 parent: Callable[[], int] = os.getppid):
        self.writer = writer
        self.parent_pid = parent_pid
        self.max_tasks = settings.max_tasks_per_child + random.randint(0, settings.max_tasks_jitter)
        if not settings.max_tasks_per_child:
            self.max_tasks = 0
        self.max_rss = settings.max_memory_per_child * 1024 * 1024
        self.patience = settings.worker_timeout  # how long a recycle request waits for the parent's SIGTERM
        self.clock, self.parent = clock, parent
        self.rss = rss or (lambda process=psutil.Process(): process.memory_info().rss)
        self.checked_at_settled = 0
        self.recycle = ""         # "tasks" or "memory" once asked
        self.recycle_deadline = 0.0

    def __call__(self, consumer: Consumer) -> None:
        now = self.clock()
        status = consumer.status()
        leaving = status.phase == lifecycle.DRAINING
        if self.parent() != self.parent_pid and not leaving:
            log.warning("parent_gone")
            consumer.stop()
        if not self.recycle and not leaving:
            self.recycle = self.due_for_recycle(status.settled)
            if self.recycle:
                self.recycle_deadline = now + self.patience
                log.info("recycle_requested", reason=self.recycle, settled=status.settled,
                         rss_mb=round(self.rss() / 2**20, 1))
        elif self.recycle and (leaving or now > self.recycle_deadline):
            consumer.stop(exitcodes.RECYCLE)  # the parent's SIGTERM came (or never will): leave as recycled
        request = lifecycle.RECYCLE if self.recycle else ""
        at = now if status.phase == lifecycle.BLOCKED else min(now, status.ticked_at)
        self.writer.write(heartbeat.Beat(status.phase, status.settled, status.inflight, at, request,
                                         ",".join(status.paused), status.node))

    def due_for_recycle(self, settled: int) -> str:
        """"tasks" or "memory" once a limit is reached, checked only after a task settled."""
        if settled == self.checked_at_settled:
            return ""
        self.checked_at_settled = settled
        if self.max_tasks and settled >= self.max_tasks:
            return "tasks"
        if self.max_rss and self.rss() > self.max_rss:
            return "memory"
        return ""
