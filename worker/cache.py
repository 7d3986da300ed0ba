"""Redis as a cache only: every failure is logged and counted, none stops a report."""

import json
import time
from typing import Any

import redis

from worker.events import NO_EVENTS, Events
from worker.logs import EventLog

log = EventLog(__name__)


class Cache:
    """Keys `input:{user_id}` and `report:{report_id}`, behind an optional prefix.

    With `cache_input` off (REDIS_CACHE_INPUT=false, for sites that keep no patient input in Redis) there
    is no `input:` key and the cached report leaves out `report_data.input`."""

    def __init__(self, client: redis.Redis, prefix: str, input_ttl: int, report_ttl: int,
                 events: Events = NO_EVENTS, pause_after_error: float = 2.0, cache_input: bool = True):
        self.client = client
        self.cache_input = cache_input
        self.events = events
        self.prefix = prefix
        self.input_ttl = input_ttl
        self.report_ttl = report_ttl
        self.pause_after_error = pause_after_error
        self._down_until = 0.0

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        self.client.ping()

    def swap_input(self, user_id: str, request: dict[str, Any]) -> dict | None:
        """Cache this input and return the previous one, in one round trip (SET ... GET, Redis >= 6.2)."""
        if not self.cache_input:
            return None
        raw = self._call("input", "set", self.prefix + f"input:{user_id}", json.dumps(request),
                         ex=self.input_ttl, get=True)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def remember_report(self, report_id: str, report: dict[str, Any]) -> None:
        if not self.cache_input and "input" in report.get("report_data", {}):
            report = {**report, "report_data": {k: v for k, v in report["report_data"].items() if k != "input"}}
        self._call("report", "set", self.prefix + f"report:{report_id}", json.dumps(report, default=_iso), ex=self.report_ttl)

    def _call(self, cache: str, command: str, *args, **kwargs):
        if time.monotonic() < self._down_until:
            self.events.cache_result(cache, "error")
            return None
        try:
            result = getattr(self.client, command)(*args, **kwargs)
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self.pause_after_error
            self.events.cache_result(cache, "error")
            log.warning("cache_unavailable", cache=cache, error=type(exc).__name__)
            return None
        if kwargs.get("get") or command == "get":
            self.events.cache_result(cache, "hit" if result is not None else "miss")
        return result


def _iso(value: Any) -> str:
    """JSON for what json cannot write itself: datetimes as ISO 8601, anything else as its str()."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
