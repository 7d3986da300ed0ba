"""What the core and the consumer report while they work: the observer interface metrics plug into.

Like Dramatiq's middleware: `worker/` calls these methods and never imports Prometheus; the
Prometheus implementation (`metrics.events.PrometheusEvents`) is passed in by the CLI at start-up.
The base class records nothing, so tests and tools can run the core without any metrics.
"""

import contextlib
import time
from typing import Iterator


class Events:
    """The no-op observer; override what you record. Called from worker threads and the I/O thread."""

    def stage_timed(self, stage: str, seconds: float) -> None:
        """A pipeline stage (cache, user, knowledge, llm, store, publish) took `seconds`."""

    def message_received(self, redelivered: bool) -> None:
        """A delivery arrived; `redelivered`: an earlier consumer did not ack it."""

    def message_settled(self, outcome: str, seconds: float) -> None:
        """A delivery was acked with `outcome` (success, failed, retried, ...) `seconds` after it arrived."""

    def inflight_changed(self, count: int) -> None:
        """This process now holds `count` unsettled deliveries."""

    def broker_reconnected(self) -> None:
        """The consumer connected again after losing its connection."""

    def llm_call_finished(self, model: str, outcome: str, seconds: float, prompt_tokens: int = 0,
                          completion_tokens: int = 0, cost_usd: float = 0.0) -> None:
        """One LLM call ended: success, malformed, error, rate_limited or timeout."""

    def cache_result(self, cache: str, result: str) -> None:
        """A cache (input, report, knowledge) answered hit, miss or error."""

    def intake_paused(self, reason: str, paused: bool) -> None:
        """This process stopped (or, `paused` False, resumed) taking messages for `reason`."""


NO_EVENTS = Events()


@contextlib.contextmanager
def timed(events: Events, stage: str) -> Iterator[None]:
    """Report the time spent inside the `with` block as `stage`, whether it raised or not."""
    started = time.perf_counter()
    try:
        yield
    finally:
        events.stage_timed(stage, time.perf_counter() - started)
