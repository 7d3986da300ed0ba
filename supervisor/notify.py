"""sd_notify: tell systemd we are ready, reloading, stopping, alive (watchdog) and how we are doing."""

import os
import socket
import time
from typing import Mapping

from worker.logs import EventLog

log = EventLog(__name__)


class Notifier:
    """Datagrams to the unix socket named by NOTIFY_SOCKET ('@' = abstract namespace); silent when unset."""

    def __init__(self, address: str = "", watchdog_usec: int = 0):
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec > 0 else 0.0
        self.next_watchdog = 0.0
        self.status = ""
        self.failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "Notifier":
        """Read NOTIFY_SOCKET and WATCHDOG_USEC once (WATCHDOG_PID, when set, must be us)."""
        watchdog = environ.get("WATCHDOG_USEC", "")
        if environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            watchdog = ""
        return cls(environ.get("NOTIFY_SOCKET", ""), int(watchdog) if watchdog.isdigit() else 0)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self.failed:  # say it once; systemd may simply not be listening
                log.warning("notify_failed", error=str(exc))
            self.failed = True

    def ready(self, status: str) -> None:
        self.status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def update_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.send(f"STATUS={status}")

    def watchdog(self, now: float) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC; the caller calls it only while all is healthy."""
        if self.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")
