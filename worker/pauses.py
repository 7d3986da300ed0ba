"""Why a consumer takes no messages now (a refused LLM key, a missing model, a spent budget), and when to look again."""

import time
from typing import Callable

from worker.events import Events
from worker.logs import EventLog

log = EventLog(__name__)

Probe = Callable[[frozenset[str]], set[str]]   # the reasons given -> those that still hold


class Pauses:
    """The pause reasons of one consumer process. The I/O thread owns it; only `probe` runs on a worker thread."""

    def __init__(self, probe: Probe | None, interval: float, events: Events):
        self.probe = probe or (lambda reasons: set())
        self.interval = interval
        self.events = events
        self.reasons: set[str] = set()
        self.next_probe = 0.0
        self.probing = False

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def add(self, reason: str) -> bool:
        """Pause for `reason`; True when the consumer was taking messages until now."""
        was_running = not self.reasons
        if reason not in self.reasons:
            self.reasons.add(reason)
            self.events.intake_paused(reason, True)
            log.warning("intake_paused", reason=reason, probe_every=self.interval,
                        hint="messages stay queued; consuming resumes once a probe succeeds (or after HUP)")
        self.next_probe = time.monotonic() + self.interval
        return was_running

    def due(self) -> bool:
        """Time to probe again (the caller runs `check` on a worker thread)."""
        if not self.reasons or self.probing or time.monotonic() < self.next_probe:
            return False
        self.probing = True
        return True

    def check(self) -> set[str]:
        """On a worker thread: the reasons that still hold (a failing probe keeps them all)."""
        reasons = frozenset(self.reasons)
        try:
            return set(self.probe(reasons)) & reasons
        except Exception as exc:
            log.warning("intake_probe_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            return set(reasons)

    def checked(self, still: set[str]) -> bool:
        """Back on the I/O thread with the probe's answer; True when nothing holds the consumer back anymore."""
        self.probing = False
        self.next_probe = time.monotonic() + self.interval
        for reason in sorted(self.reasons - still):
            self.reasons.discard(reason)
            self.events.intake_paused(reason, False)
            log.info("intake_resumed", reason=reason)
        return not self.reasons
