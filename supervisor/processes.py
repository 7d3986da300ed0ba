"""The operating system's side of the children: fork, signals, waitpid, heartbeat files.

The arbiter reaches processes only through this class, so its unit tests can hand it a fake.
"""

import gc
import os
import signal
import sys
import time

from supervisor import child as child_process
from supervisor import crashes, heartbeat
from supervisor.signals import blocked
from worker.settings import Settings


class Processes:
    """Forks children that run `run_child(settings, on_tick)` (see supervisor.child.main)."""

    def __init__(self, run_child: child_process.RunChild, hang_after: float | None = None):
        self.run_child = run_child
        self.hang_after = hang_after  # test-only, see child.TEST_HANG_ENV
        self.heartbeats = heartbeat.Directory()
        self.crash_book = crashes.CrashBook(self.heartbeats.path)
        self.parent_pid = os.getpid()

    @property
    def path(self) -> str:
        return self.heartbeats.path

    def spawn(self, index: int, settings: Settings, at: float) -> tuple[int, str]:
        """Fork a child for slot `index`; returns its pid and the path of its heartbeat file. Raises
        OSError when the fork fails (EAGAIN: out of tasks or memory). The child opens its own clients."""
        path = self.heartbeats.create(heartbeat.first(at))
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # the child's collector leaves the parent's objects alone: fewer copy-on-write pages
        try:
            with blocked():
                pid = os.fork()
                if pid == 0:
                    child_process.main(index, settings, path, self.parent_pid, self.run_child, self.hang_after)
        except OSError:
            self.heartbeats.remove(path)
            raise
        finally:
            gc.unfreeze()  # the parent keeps collecting its own garbage
        return pid, path

    @staticmethod
    def send(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # already gone; reaped on the next turn

    @staticmethod
    def reap() -> list[tuple[int, int]]:
        """(pid, exit code) of every child that exited since the last call (negative code: the signal)."""
        exited = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return exited
            if pid == 0:
                return exited
            exited.append((pid, os.waitstatus_to_exitcode(status)))

    @staticmethod
    def read(path: str) -> heartbeat.Beat | None:
        return heartbeat.read(path)

    def blame(self, path: str) -> None:
        """The child of heartbeat `path` died abnormally: count a crash for each message it was handling."""
        self.crash_book.blame(path)

    def forget(self, path: str) -> None:
        """A reaped child's heartbeat file and its journal."""
        self.heartbeats.remove(path)
        crashes.forget(path)

    def close(self, pids: list[int], grace: float) -> None:
        """On the way out: normally nothing is left. If the loop broke with children alive, let them
        drain (SIGTERM, up to `grace` seconds), then SIGKILL the rest: never leave an orphan consuming."""
        left = set(pids)
        for pid in left:
            self.send(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while left and time.monotonic() < deadline:
            left -= {pid for pid, _ in self.reap()}
            time.sleep(0.05)
        for pid in left:
            self.send(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.heartbeats.close()
