"""Active knowledge-base entries by category, kept in-process for a short time."""

import threading
import time
from typing import Callable, Iterable

from worker.events import NO_EVENTS, Events


class KnowledgeCache:
    """Wraps a loader `(categories) -> entries`; one answer per category set for `ttl` seconds."""

    def __init__(self, load: Callable[[Iterable[str]], list[dict]], ttl: float, events: Events = NO_EVENTS):
        self._load = load
        self._events = events
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, ...], tuple[float, list[dict]]] = {}

    def entries_for(self, categories: Iterable[str]) -> list[dict]:
        key = tuple(sorted(set(categories)))
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
        if cached and cached[0] > now:
            self._events.cache_result("knowledge", "hit")
            return cached[1]
        self._events.cache_result("knowledge", "miss")
        entries = self._load(key)
        if self._ttl > 0:
            with self._lock:
                self._entries[key] = (now + self._ttl, entries)
        return entries
