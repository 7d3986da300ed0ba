"""Active knowledge-base entries by category, kept in-process for a short time.

One load per category set at a time: threads that miss while a load runs wait for its answer instead of
sending the same query (64 threads of a process would otherwise all miss together when the entries
expire). Expired entries are served to the others while one thread refreshes them, so a TTL expiry costs
one query and no waiting; a set never loaded waits for its first load, and shares its error too.
"""

import copy
import threading
import time
from concurrent.futures import Future
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
        self._loading: dict[tuple[str, ...], Future] = {}

    def entries_for(self, categories: Iterable[str]) -> list[dict]:
        key = tuple(sorted(set(categories)))
        with self._lock:
            cached = self._entries.get(key)
            fresh = bool(cached) and cached[0] > time.monotonic()
            if not fresh:
                loading = self._loading.get(key)
                leader = loading is None
                if leader:
                    loading = self._loading[key] = Future()
        if fresh:
            self._events.cache_result("knowledge", "hit")
            return cached[1]
        if not leader:  # another thread loads this set now: its stale entries if any, else its answer
            self._events.cache_result("knowledge", "hit" if cached else "miss")
            return cached[1] if cached else _shared(loading)
        try:
            self._events.cache_result("knowledge", "miss")
            entries = self._load(key)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            loading.set_exception(exc)
            raise
        with self._lock:
            if self._ttl > 0:
                self._entries[key] = (time.monotonic() + self._ttl, entries)
            del self._loading[key]
        loading.set_result(entries)
        return entries


def _shared(loading: Future) -> list[dict]:
    """The answer of a load another thread runs; its error as this thread's own copy (one exception object
    raised in many threads would collect all their tracebacks)."""
    try:
        return loading.result()
    except Exception as exc:
        raise copy.copy(exc) from exc
