"""The heartbeat file each child's I/O loop rewrites and the parent reads: phase, counts, a monotonic time.

One small fixed-width line rewritten in place (`pwrite`), so a reader never sees a half-empty file.
`time.monotonic()` is the system-wide CLOCK_MONOTONIC on Linux, so the parent can compare the
child's timestamp with its own clock; wall-clock jumps do not make a child look hung.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass

WIDTH = 64

STARTING = "starting"       # forked, connecting to MongoDB
CONNECTING = "connecting"   # waiting for RabbitMQ (at start or after a lost connection)
READY = "ready"             # consuming
RECYCLE = "recycle"         # consuming, but asks the parent for a successor
DRAINING = "draining"       # stopped consuming, finishing in-flight work


@dataclass(frozen=True)
class Beat:
    phase: str
    settled: int
    inflight: int
    at: float  # the child's time.monotonic()


class Writer:
    """The child's side: one open file descriptor, rewritten on every tick."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def beat(self, phase: str, settled: int, inflight: int, at: float) -> None:
        line = f"{phase} {settled} {inflight} {at:.3f}".ljust(WIDTH - 1) + "\n"
        os.pwrite(self.fd, line.encode(), 0)


def read(path: str) -> Beat | None:
    """The last beat, or None when the file is missing or not written yet."""
    try:
        with open(path, "rb") as handle:
            phase, settled, inflight, at = handle.read(WIDTH).decode().split()
        return Beat(phase, int(settled), int(inflight), float(at))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class Directory:
    """A private directory of heartbeat files, in /dev/shm when it exists (no disk writes)."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.path = tempfile.mkdtemp(prefix="report-worker-", dir=base)
        self.serial = 0

    def create(self, at: float) -> str:
        """A new file whose first beat says STARTING at `at`; the child opens it after the fork."""
        self.serial += 1
        path = os.path.join(self.path, f"child-{self.serial}")
        with open(path, "wb") as handle:
            handle.write(f"{STARTING} 0 0 {at:.3f}".ljust(WIDTH - 1).encode() + b"\n")
        return path

    @staticmethod
    def remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
