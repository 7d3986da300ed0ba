"""What the LLM limiter enforces (Limits), what a ledger answers (Verdict, BudgetState), who hears (LimitObserver)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import NamedTuple

BUDGET_WARNING_FRACTION = 0.8


@dataclass(frozen=True)
class Limits:
    """Fleet-wide limits on LLM calls; 0 turns a limit off. Raises ValueError when a value makes no sense."""

    rpm: float = 0.0  # requests per minute, every process on every VM together
    tpm: float = 0.0  # tokens per minute (prompt + completion), estimated before a call, settled after
    max_concurrency: int = 0  # calls in flight at once
    budget_usd_per_day: float = 0.0  # spend per UTC day
    share: float = 1.0  # this process's fraction of each limit while Redis is away (never "no limit")
    burst_seconds: float = 0.5  # bucket capacity, in seconds of the rate (at least one call)
    lease_seconds: float = 150.0  # a concurrency slot not given back within this is taken back (kill -9)

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrency", "budget_usd_per_day"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {value}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if not 0 < self.burst_seconds <= 60:
            raise ValueError(f"burst_seconds must be in (0, 60], got {self.burst_seconds}")
        if not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")

    @property
    def request_interval(self) -> float:
        """Seconds per request at the sustained rate (0: off)."""
        return 60.0 / self.rpm if self.rpm else 0.0

    @property
    def token_interval(self) -> float:
        """Seconds per token at the sustained rate (0: off)."""
        return 60.0 / self.tpm if self.tpm else 0.0

    def shared(self) -> "Limits":
        """This process's part of each rate and of the concurrency (at least one slot); the budget is apart."""
        return replace(
            self,
            rpm=self.rpm * self.share,
            tpm=self.tpm * self.share,
            max_concurrency=max(1, math.floor(self.max_concurrency * self.share)) if self.max_concurrency else 0,
        )


class Verdict(NamedTuple):
    """A ledger's answer to "may I call now?": granted, or why not and how long to wait.

    reason: "" (granted), "cooldown", "requests", "tokens", "concurrency", "budget".
    wait: seconds; exact for cooldown/requests/tokens, a poll interval for concurrency, 0 for budget.
    """

    granted: bool
    reason: str = ""
    wait: float = 0.0


GRANTED = Verdict(True)


class BudgetState(NamedTuple):
    """The UTC day's LLM spend against the budget (limit 0: no budget, never exhausted)."""

    spent: float
    limit: float
    exhausted: bool

    @property
    def fraction(self) -> float:
        return self.spent / self.limit if self.limit else 0.0

    @property
    def warning(self) -> bool:
        """At or past 80 % of the budget."""
        return bool(self.limit) and self.spent >= BUDGET_WARNING_FRACTION * self.limit


def budget_state(spent: float, limit: float) -> BudgetState:
    return BudgetState(spent, limit, bool(limit) and spent >= limit)


def utc_day() -> str:
    """Today's UTC date, which names the budget's key: a new day is a new budget."""
    return datetime.now(timezone.utc).date().isoformat()


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 asks to wait, from `retry-after-ms` or `retry-after` (seconds or an HTTP date), as the
    openai client reads them; None when there is neither (the caller picks a default cool-down)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(lowered[name]) * scale
        except (KeyError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    try:
        when = parsedate_to_datetime(lowered["retry-after"])
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class LimitObserver:
    """What the limiter reports; every method is a no-op here. metrics/ subclasses it for Prometheus."""

    def granted(self, kind: str, amount: float) -> None:
        """A permit was granted: kind "requests" (amount 1) or "tokens" (the estimate)."""

    def waited(self, seconds: float) -> None:
        """How long a granted acquire waited (0 when it did not)."""

    def throttled(self, reason: str) -> None:
        """An acquire gave up (deadline or budget); reason as in Verdict."""

    def settled(self, tokens: int, cost_usd: float) -> None:
        """A call's real usage was written back."""

    def cooldown(self, seconds: float) -> None:
        """A 429's retry-after set a fleet-wide cool-down."""

    def fallback(self, reason: str) -> None:
        """Redis went away: this process now keeps to its share of each limit. Reported once per outage."""

    def restored(self, seconds_down: float) -> None:
        """Redis answers again: the shared limits apply again."""

    def budget(self, spent: float, limit: float) -> None:
        """The day's spend as last seen (limit 0: no budget)."""
