"""When to restart a child at once, when to back off, and when to give up."""

import collections


class RestartLimit:
    """billiard's restart_state, with one more rule for crash loops slowed down by backoff.

    Give up after more than `limit` unplanned restarts within `window` seconds, or more than `limit`
    failed starts in a row (backoff stretches a crash loop past any window); a child that reaches
    consuming ends the streak.
    """

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.times: collections.deque[float] = collections.deque()
        self.streak = 0

    def allow(self, now: float, failed_start: bool = False) -> bool:
        """Count one restart; False means the restart rate is too high."""
        self.times.append(now)
        while self.times and self.times[0] < now - self.window:
            self.times.popleft()
        self.streak = self.streak + 1 if failed_start else 0
        return len(self.times) <= self.limit and self.streak <= self.limit

    def succeeded(self) -> None:
        self.streak = 0


def backoff_delay(failures: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Seconds a slot waits after its `failures`-th failed start in a row: 0.5, 1, 2, 4 ... 30."""
    return min(cap, first * 2 ** max(0, failures - 1))
