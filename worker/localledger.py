"""The LLM limits one process keeps alone while Redis is away: its share of each limit, never no limit."""

import threading
import time
from collections.abc import Callable

from worker.ratepolicy import GRANTED, Limits, Verdict
from worker.redisledger import SLOT_POLL_SECONDS


class LocalLedger:
    """The same GCRA buckets and leased slots as RedisLedger, in memory, at `limits.share` of each limit.

    The budget is the fleet's: the spend last seen in Redis plus this process's spend since, scaled up by
    1/share (every process is assumed to spend alike). Spend made here is kept to be written back to Redis.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._tats = {"requests": 0.0, "tokens": 0.0}
        self._slots: dict[str, float] = {}  # holder -> lease expiry
        self._seen: dict[str, float] = {}  # day -> fleet spend last seen in Redis
        self._pending: dict[str, float] = {}  # day -> spent here, not yet in Redis
        self.update(limits)

    def update(self, limits: Limits) -> None:
        with self._lock:
            self.fleet = limits
            self.limits = limits.shared()

    def try_acquire(self, tokens: int, holder: str, day: str) -> Verdict:
        with self._lock:
            now = self._clock()
            budget = self.fleet.budget_usd_per_day
            if budget and self._spent(day) >= budget:
                return Verdict(False, "budget", 0.0)
            wanted, verdict = self._buckets(tokens, now)
            if not verdict.granted:
                return verdict
            if self.limits.max_concurrency:
                self._slots = {h: expiry for h, expiry in self._slots.items() if expiry > now}
                if len(self._slots) >= self.limits.max_concurrency:
                    return Verdict(False, "concurrency", min(min(self._slots.values()) - now, SLOT_POLL_SECONDS))
                self._slots[holder] = now + self.limits.lease_seconds
            self._tats.update(wanted)
            return GRANTED

    def _buckets(self, tokens: int, now: float) -> tuple[dict[str, float], Verdict]:
        """The buckets' new TATs if `tokens` were taken now, and whether that is allowed (GCRA)."""
        wanted, reason, wait = {}, "", 0.0
        for name, interval, weight in (("requests", self.limits.request_interval, 1),
                                       ("tokens", self.limits.token_interval, tokens)):
            if interval:
                tat = max(self._tats[name], now)
                cost = weight * interval
                over = tat + cost - now - max(self.limits.burst_seconds, cost)
                if over > 1e-6 and over > wait:
                    reason, wait = name, over
                wanted[name] = tat + cost
        return wanted, (Verdict(False, reason, wait) if wait else GRANTED)

    def release(self, holder: str, token_delta: int, cost_usd: float, day: str) -> float:
        with self._lock:
            now = self._clock()
            self._slots.pop(holder, None)
            if self.limits.token_interval and token_delta:
                self._tats["tokens"] = max(self._tats["tokens"], now) + token_delta * self.limits.token_interval
            if cost_usd > 0:
                self._pending[day] = self._pending.get(day, 0.0) + cost_usd
            return self._spent(day)

    def cooldown(self, seconds: float) -> float:
        return seconds  # the limiter keeps the local cool-down itself, Redis or not

    def peek(self, tokens: int) -> float:
        with self._lock:
            wanted, verdict = self._buckets(tokens, self._clock())
            return verdict.wait if verdict.reason in ("requests", "tokens") else 0.0

    def spent(self, day: str) -> float:
        with self._lock:
            return self._spent(day)

    def _spent(self, day: str) -> float:
        return self._seen.get(day, 0.0) + self._pending.get(day, 0.0) / self.fleet.share

    def remember(self, day: str, fleet_spent: float) -> None:
        """The fleet's spend as Redis last told it."""
        with self._lock:
            self._seen = {day: fleet_spent}

    def drain(self) -> dict[str, float]:
        """Spend made here that Redis has not seen yet; the caller writes it back or returns it with `refill`."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return pending

    def refill(self, pending: dict[str, float]) -> None:
        with self._lock:
            for day, cost in pending.items():
                self._pending[day] = self._pending.get(day, 0.0) + cost
