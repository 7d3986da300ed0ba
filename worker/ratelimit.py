"""Fleet-wide LLM limits: wait smoothly for a permit, honour 429 cool-downs, keep to the day's budget, survive Redis."""

import itertools
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis

from worker.localledger import LocalLedger
from worker.logs import EventLog
from worker.permits import BudgetExhausted, Line, Permit, Throttled, Unlimited
from worker.ratepolicy import BudgetState, Limits, LimitObserver, Verdict, budget_state, retry_after_seconds, utc_day
from worker.redisledger import RedisLedger, connect

__all__ = ["BudgetExhausted", "BudgetState", "FleetLimiter", "LimitObserver", "Limits", "Permit", "Throttled",
           "Unlimited", "connect", "retry_after_seconds"]

log = EventLog(__name__)

MAX_SLEEP = 1.0  # a waiting thread looks again at least this often (limits may change, cool-downs may end)
MAX_COOLDOWN = 3600.0  # a retry-after longer than this is taken as this
REDIS_RETRY_SECONDS = 2.0  # while Redis is away, try it again this often


class FleetLimiter:
    """One per process (made after the fork), shared by its threads. Redis holds the fleet's state under
    `prefix` + "llm:" (make the client with connect()); while Redis is away the process keeps to
    `limits.share` of each limit and tries Redis again every `retry_redis_seconds`."""

    enforcing = True  # Unlimited says False: callers may then keep their own retries

    def __init__(self, client: redis.Redis, prefix: str, limits: Limits, observer: LimitObserver | None = None,
                 *, max_wait: float = 300.0, retry_redis_seconds: float = REDIS_RETRY_SECONDS,
                 today: Callable[[], str] = utc_day):
        self.limits = limits
        self.observer = observer or LimitObserver()
        self.max_wait = max_wait  # when acquire() is given no deadline
        self.retry_redis_seconds = retry_redis_seconds
        self._today = today
        self._redis = RedisLedger(client, prefix, limits)
        self._local = LocalLedger(limits)
        self._line = Line()
        self._state = threading.Lock()
        self._cool_until = 0.0  # monotonic; this process's copy of the fleet's cool-down
        self._down_since: float | None = None  # monotonic, while Redis is away
        self._next_try = 0.0
        self._warned: set[tuple[str, str]] = set()  # (day, "warning" | "exhausted") already logged
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count(1)
        self._blocked_by = "queue"

    def update(self, limits: Limits) -> None:
        """New limits (a HUP, say): a bigger budget lets calls through again at once."""
        self.limits = limits
        self._redis.limits = limits
        self._local.update(limits)
        self._warned.clear()

    def acquire(self, estimated_tokens: int = 0, deadline: float | None = None) -> Permit:
        """Wait until a call of `estimated_tokens` may start, and return its Permit (use it in a `with`).

        `deadline` is a time.monotonic() value (default now + max_wait). Raises Throttled at once when the wait
        is known to end after the deadline, or when the deadline passes; BudgetExhausted when the day's budget
        is spent. Nothing is charged unless a permit is returned."""
        started = time.monotonic()
        deadline = started + self.max_wait if deadline is None else deadline
        tokens = max(0, int(estimated_tokens))
        holder = f"{self._holder}:{next(self._ids)}"
        ticket = self._line.join()
        try:
            if not self._line.wait_turn(ticket, deadline):
                raise self._give_up(Throttled(self._blocked_by))
            while True:
                verdict, ledger = self._try(tokens, holder)
                if verdict.granted:
                    break
                self._blocked_by = verdict.reason
                if verdict.reason == "budget":
                    raise self._give_up(BudgetExhausted())
                left = deadline - time.monotonic()
                if left <= 0 or (verdict.reason != "concurrency" and verdict.wait > left):
                    raise self._give_up(Throttled(verdict.reason, verdict.wait))
                time.sleep(min(verdict.wait * random.uniform(1.0, 1.05) + 0.001, left, MAX_SLEEP))
        finally:
            self._line.leave(ticket)
        waited = time.monotonic() - started
        self.observer.waited(waited)
        self.observer.granted("requests", 1)
        if tokens:
            self.observer.granted("tokens", tokens)
        return Permit(self, ledger, holder, tokens, waited)

    def cooldown(self, seconds: float) -> float:
        """After a 429 with retry-after: no process on any VM starts a call for `seconds` (capped at an hour)."""
        seconds = min(max(float(seconds), 0.0), MAX_COOLDOWN)
        if not seconds:
            return 0.0
        with self._state:
            self._cool_until = max(self._cool_until, time.monotonic() + seconds)
        left, _ = self._use("cooldown", seconds)
        log.info("llm_cooldown", seconds=round(seconds, 3))
        self.observer.cooldown(seconds)
        return left

    def budget_state(self) -> BudgetState:
        """(spent, limit, exhausted) for the UTC day, for pausing intake and /readyz; reports the 80 % mark."""
        day = self._today()
        spent, ledger = self._use("spent", day)
        return self._note_spent(day, spent, ledger)

    def queue_wait(self) -> float:
        """Seconds this process's first waiter has waited, or the cool-down left: no Redis, safe on any thread."""
        return max(self._cool_until - time.monotonic(), self._line.oldest_wait(), 0.0)

    def expected_wait(self, estimated_tokens: int = 0) -> float:
        """Seconds a new acquire would wait now: cool-down, rate buckets, and how long this process's first
        waiter has waited already (which covers full concurrency slots). The budget is apart: budget_state()."""
        local = self.queue_wait()
        shared, _ = self._use("peek", max(0, int(estimated_tokens)))
        return max(local, shared)

    @property
    def degraded(self) -> bool:
        """True while Redis is away and this process keeps to its share alone."""
        return self._down_since is not None

    def _try(self, tokens: int, holder: str) -> tuple[Verdict, object]:
        cool = self._cool_until - time.monotonic()
        if cool > 0:
            return Verdict(False, "cooldown", cool), None
        return self._use("try_acquire", tokens, holder, self._today())

    def _use(self, operation: str, *args):
        """Run a ledger operation on Redis, or on the local share while Redis is away; (result, ledger)."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            return getattr(self._local, operation)(*args), self._local
        try:
            result = getattr(self._redis, operation)(*args)
        except redis.RedisError as exc:
            self._went_down(exc)
            return getattr(self._local, operation)(*args), self._local
        if self._down_since is not None:
            self._came_back()
        return result, self._redis

    def _went_down(self, exc: Exception) -> None:
        with self._state:
            self._next_try = time.monotonic() + self.retry_redis_seconds
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning("llm_limiter_fallback", error=type(exc).__name__, share=self.limits.share)
        self.observer.fallback(type(exc).__name__)

    def _write_back(self) -> bool:
        """Add the spend made while Redis was away to Redis's; False (still away) when that fails."""
        pending = self._local.drain()
        while pending:
            day, cost = next(iter(pending.items()))
            try:
                self._local.remember(day, self._redis.add_spend(day, cost))
            except redis.RedisError as exc:
                self._local.refill(pending)
                self._went_down(exc)
                return False
            del pending[day]
        return True

    def _came_back(self) -> None:
        """Redis answers again: write back the spend made meanwhile, then share the limits again."""
        if not self._write_back():
            return
        with self._state:
            if self._down_since is None:
                return
            seconds_down, self._down_since = time.monotonic() - self._down_since, None
        log.warning("llm_limiter_restored", seconds_down=round(seconds_down, 1))
        self.observer.restored(seconds_down)

    def _release(self, ledger, holder: str, token_delta: int, cost: float, actual: int | None) -> None:
        day = self._today()
        if ledger is self._redis:
            try:
                spent = self._redis.release(holder, token_delta, cost, day)
            except redis.RedisError as exc:  # the slot's lease runs out by itself; the spend is kept here
                self._went_down(exc)
                ledger, spent = self._local, self._local.release(holder, 0, cost, day)
        else:
            spent = self._local.release(holder, token_delta, cost, day)
            if self._down_since is None and cost and self._write_back():  # Redis came back meanwhile
                spent = self._local.spent(day)
        if actual is not None or cost:
            self.observer.settled(actual or 0, cost)
        self._note_spent(day, spent, ledger)

    def _note_spent(self, day: str, spent: float, ledger) -> BudgetState:
        if ledger is self._redis:
            self._local.remember(day, spent)
        state = budget_state(spent, self.limits.budget_usd_per_day)
        self.observer.budget(state.spent, state.limit)
        for level, reached in (("warning", state.warning), ("exhausted", state.exhausted)):
            if reached and (day, level) not in self._warned:
                self._warned.add((day, level))
                log.warning(f"llm_budget_{level}", spent_usd=round(spent, 4), budget_usd=state.limit, day=day)
        return state

    def _give_up(self, error: Throttled) -> Throttled:
        self.observer.throttled(error.reason)
        log.info("llm_throttled", reason=error.reason, wait=round(error.wait, 3))
        return error
