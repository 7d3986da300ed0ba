"""The heartbeat file each child's I/O loop rewrites and the parent reads: phase, counts, a time, a request.

One small fixed-width line rewritten in place (`pwrite`), so a reader never sees a half-empty file.
`time.monotonic()` is the system-wide CLOCK_MONOTONIC on Linux, so the parent can compare the
child's timestamp with its own clock; wall-clock jumps do not make a child look hung. Phases and the
request are `worker.lifecycle` words.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass

from worker import lifecycle

WIDTH = 192
NO_REQUEST = "-"


@dataclass(frozen=True)
class Beat:
    phase: str          # lifecycle.STARTING, CONNECTING, CONSUMING, BLOCKED or DRAINING
    settled: int
    inflight: int
    at: float           # the child's time.monotonic()
    request: str = ""   # "" or lifecycle.RECYCLE: the child asks for a successor
    paused: str = ""    # why it takes no messages ("llm_unauthorized,budget_exhausted"), "" when it does
    node: str = ""      # host:port of the broker node it is connected to, "" when none

    def line(self) -> bytes:
        fields = (self.request, self.paused[:60], self.node[:80])
        text = f"{self.phase} {self.settled} {self.inflight} {self.at:.3f} " + " ".join(f or NO_REQUEST for f in fields)
        return (text.ljust(WIDTH - 1) + "\n").encode()


def first(at: float) -> Beat:
    """What the parent writes before the fork: starting, at `at`."""
    return Beat(lifecycle.STARTING, 0, 0, at)


class Writer:
    """The child's side: one open file descriptor, rewritten on every tick."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, beat: Beat) -> None:
        os.pwrite(self.fd, beat.line(), 0)


def read(path: str) -> Beat | None:
    """The last beat, or None when the file is missing or not written yet."""
    try:
        with open(path, "rb") as handle:
            phase, settled, inflight, at, *rest = handle.read(WIDTH).decode().split()
        request, paused, node = ("" if value == NO_REQUEST else value for value in rest)
        return Beat(phase, int(settled), int(inflight), float(at), request, paused, node)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class Directory:
    """A private directory of heartbeat files, in /dev/shm when it exists (no disk writes)."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.path = tempfile.mkdtemp(prefix="report-worker-", dir=base)
        self.serial = 0

    def create(self, beat: Beat) -> str:
        """A new file holding `beat`; the child opens it after the fork."""
        self.serial += 1
        path = os.path.join(self.path, f"child-{self.serial}")
        with open(path, "wb") as handle:
            handle.write(beat.line())
        return path

    @staticmethod
    def remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
