"""Permits to call the LLM: the permit a limiter hands out, the line of threads waiting for one, the errors
of waiting too long, and the limiter that limits nothing (every LLM_* limit off: no Redis round trip)."""

import threading
import time
from collections import deque

from worker.errors import TransientError
from worker.ratepolicy import BudgetState, Limits, budget_state


class Throttled(TransientError):
    """No permit before the deadline; `reason` says what held it back, `wait` how long it would have taken."""

    def __init__(self, reason: str, wait: float = 0.0):
        super().__init__(f"LLM call throttled ({reason}), would wait {wait:.1f} s more")
        self.reason = reason
        self.wait = wait


class BudgetExhausted(Throttled):
    """The UTC day's LLM budget is spent: calls wait for the next day or a bigger budget."""

    def __init__(self) -> None:
        super().__init__("budget")


class Permit:
    """One granted LLM call. `settle()` records its real usage; leaving the `with` block (or `release()`)
    gives the concurrency slot back and writes the usage back in one round trip."""

    def __init__(self, limiter, ledger, holder: str, tokens: int, waited: float):  # limiter: a FleetLimiter
        self.holder = holder
        self.tokens = tokens  # the estimate charged at acquire
        self.waited = waited
        self._limiter = limiter
        self._ledger = ledger
        self._actual: int | None = None
        self._cost = 0.0
        self._released = False

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def settle(self, actual_tokens: int | None = None, cost_usd: float = 0.0) -> None:
        """The call's reported usage: tokens replace the estimate (refund or extra charge); cost adds to the day."""
        if actual_tokens is not None:
            self._actual = max(0, int(actual_tokens))
        self._cost += max(0.0, float(cost_usd))

    def release(self) -> None:
        if not self._released:
            self._released = True
            delta = 0 if self._actual is None else self._actual - self.tokens
            self._limiter._release(self._ledger, self.holder, delta, self._cost, self._actual)


class Line:
    """This process's threads waiting for a permit, first come first served; only the first asks the ledger."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._queue: deque[list[float]] = deque()

    def join(self) -> list[float]:
        ticket = [time.monotonic()]
        with self._turn:
            self._queue.append(ticket)
        return ticket

    def wait_turn(self, ticket: list[float], deadline: float) -> bool:
        with self._turn:
            while self._queue[0] is not ticket:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._turn.wait(left)
            return True

    def leave(self, ticket: list[float]) -> None:
        with self._turn:
            self._queue.remove(ticket)
            self._turn.notify_all()

    def oldest_wait(self) -> float:
        with self._turn:
            return time.monotonic() - self._queue[0][0] if self._queue else 0.0


class FreePermit:
    """What Unlimited grants: nothing to settle, nothing to give back."""

    tokens = 0
    waited = 0.0

    def __enter__(self) -> "FreePermit":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def settle(self, actual_tokens: int | None = None, cost_usd: float = 0.0) -> None:
        pass

    def release(self) -> None:
        pass


class Unlimited:
    """Every limit off: FleetLimiter's interface without Redis, so a call costs no round trip."""

    limits = Limits()
    enforcing = False
    degraded = False
    _permit = FreePermit()

    def acquire(self, estimated_tokens: int = 0, deadline: float | None = None) -> FreePermit:
        return self._permit

    def update(self, limits: Limits) -> None:
        pass

    def cooldown(self, seconds: float) -> float:
        return 0.0

    def budget_state(self) -> BudgetState:
        return budget_state(0.0, 0.0)

    def queue_wait(self) -> float:
        return 0.0

    def expected_wait(self, estimated_tokens: int = 0) -> float:
        return 0.0
