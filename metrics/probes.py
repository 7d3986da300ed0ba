"""What /healthz and /readyz answer: the parent loop's heartbeat, live children, cached service checks."""

import threading
import time
from typing import Callable

from worker import health
from worker.health import Check, run_checks


class Probes:
    """Liveness and readiness, from callables the arbiter supplies.

    - live: the arbiter called `heartbeat()` within `stale_after` seconds and `alive()` >= 1;
    - ready: live, `consuming()` >= 1, and every check in `checks` passed. Checks run in parallel
      daemon threads with a `timeout`, and their result is kept `cache_seconds`, so a scrape storm
      costs one round of pings and a hung service cannot hang the HTTP thread.
    """

    def __init__(self, alive: Callable[[], int], consuming: Callable[[], int], checks: dict[str, Check],
                 stale_after: float = 30.0, timeout: float = 2.0, cache_seconds: float = 5.0,
                 details: Callable[[], dict] = dict):
        self.alive = alive
        self.consuming = consuming
        self.details = details    # {"blocked": n, "paused": {reason: n}, "nodes": {index: node}} from heartbeats
        self.checks = checks
        self.stale_after = stale_after
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._beat: float | None = None
        self._cached: tuple[float, dict] | None = None
        self._refresh = threading.Lock()

    def heartbeat(self) -> None:
        """Call once per tick of the arbiter's loop."""
        self._beat = time.monotonic()

    def liveness(self) -> tuple[bool, dict]:
        children = _count(self.alive)
        age = None if self._beat is None else round(time.monotonic() - self._beat, 3)
        body = {"loop_age_seconds": age, "children": children}
        failed = []
        if age is None or age > self.stale_after:
            failed.append("loop")
        if children < 1:
            failed.append("children")
        body["status"] = "ok" if not failed else "fail"
        if failed:
            body["failed"] = failed
        return not failed, body

    def readiness(self) -> tuple[bool, dict]:
        live, body = self.liveness()
        consuming = _count(self.consuming)
        checks = self.services()
        failed = list(body.get("failed", []))
        if consuming < 1:
            failed.append("consuming")
        failed += [name for name, result in checks.items() if not result["ok"]]
        try:
            details = dict(self.details())
        except Exception:  # a broken callable is not worth a failed probe
            details = {}
        failed += sorted(details.get("paused") or {})   # e.g. llm_unauthorized, budget_exhausted
        body.update({key: value for key, value in details.items() if key in ("blocked", "paused")})
        if details.get("nodes"):
            body["nodes"] = {str(index): node for index, node in sorted(details["nodes"].items())}
        body.update(consuming=consuming, checks=checks, status="ok" if not failed else "fail")
        body.pop("failed", None)
        if failed:
            body["failed"] = failed
        return not failed, body

    def services(self) -> dict[str, dict]:
        """Every check's last result, refreshed at most once per `cache_seconds`."""
        with self._refresh:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
                return cached[1]
            results = run_checks(self.checks, self.timeout)
            self._cached = (time.monotonic(), results)
            return results


def _count(callable_: Callable[[], int]) -> int:
    try:
        return int(callable_())
    except Exception:  # a broken callable means "not known to be alive"
        return 0


def service_checks(settings) -> dict[str, Check]:
    """RabbitMQ, Redis and MongoDB pings of `report-worker health` (the LLM is not a readiness gate)."""
    return health.checks(settings, ("rabbitmq", "redis", "mongodb"))
