"""The parent's table of children (worker slots and the ones leaving) and the verbs on one process."""

import gc
import os
import signal
import sys
import time
from typing import Iterator

from supervisor import child as child_process
from supervisor import heartbeat
from supervisor.signals import blocked
from supervisor.states import Child, State, change_state
from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)


class Children:
    """`slots` maps a worker index to its current child (or that slot's BACKOFF record); `leaving`
    holds children replaced or told to stop that have not been reaped yet."""

    def __init__(self, hang_after: float | None = None):
        self.slots: dict[int, Child] = {}
        self.leaving: list[Child] = []
        self.heartbeats = heartbeat.Directory()
        self.parent_pid = os.getpid()
        self.hang_after = hang_after  # test-only, see child.TEST_HANG_ENV

    def processes(self) -> list[Child]:
        """Every child that has a process: in slots, and leaving."""
        return [c for c in (*self.slots.values(), *self.leaving) if c.alive]

    def fork(self, index: int, generation: int, settings: Settings, failures: int = 0) -> Child:
        """Start a child in slot `index`; it opens its own clients after the fork (service.run does)."""
        now = time.monotonic()
        child = Child(index, generation, self.heartbeats.create(now), started_at=now, since=now,
                      failures=failures, beat_at=now)
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # the child's collector leaves the parent's objects alone: fewer copy-on-write pages
        try:
            with blocked():
                pid = os.fork()
                if pid == 0:
                    child_process.main(index, settings, child.heartbeat, self.parent_pid, self.hang_after)
        finally:
            gc.unfreeze()  # the parent keeps collecting its own garbage
        child.pid = pid
        log.info("child_spawned", **child.describe(), generation=generation)
        return child

    def read_heartbeats(self) -> Iterator[Child]:
        """Update every child from its heartbeat file; yields the STARTING ones that now consume."""
        for child in self.processes():
            beat = heartbeat.read(child.heartbeat)
            if beat is None:
                continue
            child.beat_at, child.settled, child.inflight = beat.at, beat.settled, beat.inflight
            child.wants_recycle = beat.phase == heartbeat.RECYCLE
            if child.state is State.STARTING and beat.phase in (heartbeat.READY, heartbeat.RECYCLE):
                change_state(child, State.RUNNING)
                yield child

    def reap(self) -> Iterator[tuple[Child, int]]:
        """Every child that exited since the last call, with its exit code (negative: the signal)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.processes() if c.pid == pid), None)
            if child is not None:
                child.exit_code = os.waitstatus_to_exitcode(status)
                self.heartbeats.remove(child.heartbeat)
                if child in self.leaving:
                    self.leaving.remove(child)
                yield child, child.exit_code

    def stop(self, child: Child, reason: str, grace: float) -> None:
        """SIGTERM: the child stops consuming and drains; after `grace` seconds it is killed."""
        if child not in self.leaving:
            self.leaving.append(child)
        if child.state is State.STOPPING:
            return
        child.reason = child.reason or reason
        change_state(child, State.STOPPING)
        child.stop_deadline = time.monotonic() + grace
        log.info("child_stopping", **child.describe(), reason=child.reason)
        self.send(child, signal.SIGTERM)

    def kill(self, child: Child, reason: str) -> None:
        log.warning("child_killed", **child.describe(), reason=reason,
                    silent_seconds=round(time.monotonic() - child.beat_at, 3))
        child.reason, child.killed = reason, True
        self.send(child, signal.SIGKILL)

    @staticmethod
    def send(child: Child, signum: int) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # already gone; reaped on the next turn

    def close(self) -> None:
        """On the way out: nothing should be left, but never leave an orphan consuming."""
        for child in self.processes():
            self.send(child, signal.SIGKILL)
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
        self.heartbeats.close()
