"""The in-process knowledge cache: one load per category set at a time, stale entries while one thread refreshes."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.errors import TransientError
from worker.events import Events
from worker.knowledge import KnowledgeCache


class Loader:
    """A loader that blocks until released and counts its calls; `fail` makes the next loads raise."""

    def __init__(self):
        self.calls = 0
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, categories):
        with self.lock:
            self.calls += 1
            number = self.calls
        self.started.set()
        assert self.release.wait(10), "the test never released the loader"
        if self.fail:
            raise TransientError("mongodb load knowledge: down")
        return [{"id": f"kb-{category}-{number}", "category": category} for category in categories]


class Results(Events):
    def __init__(self):
        self.seen = []

    def cache_result(self, cache, result):
        self.seen.append((cache, result))

    def wait_for(self, count):
        """Until `count` calls have reported (a thread waiting for another's load reports before it waits)."""
        deadline = time.monotonic() + 10
        while len(self.seen) < count:
            assert time.monotonic() < deadline, f"only {len(self.seen)} of {count} calls reported"
            time.sleep(0.01)


def miss_together(cache, loader, events, categories, count):
    """`count` threads ask for `categories` at once; the loader is held until every one has reported (a thread
    waiting for another's load reports before it waits). Returns their futures, all done."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(cache.entries_for, categories) for _ in range(count)]
        assert loader.started.wait(5)
        events.wait_for(count)
        loader.release.set()
    return futures


def test_threads_that_miss_together_share_one_load():
    loader, events = Loader(), Results()
    cache = KnowledgeCache(loader, ttl=60, events=events)
    answers = [f.result() for f in miss_together(cache, loader, events, ["lipids", "diabetes"], 16)]
    assert loader.calls == 1
    assert all(answer is answers[0] for answer in answers)
    assert [e["id"] for e in answers[0]] == ["kb-diabetes-1", "kb-lipids-1"]
    assert events.seen.count(("knowledge", "miss")) == 16
    assert cache.entries_for(["diabetes", "lipids"]) is answers[0]       # same set in another order: cached
    assert events.seen[-1] == ("knowledge", "hit") and loader.calls == 1


def test_expired_entries_are_served_while_one_thread_refreshes_them():
    loader = Loader()
    loader.release.set()
    cache = KnowledgeCache(loader, ttl=0.2, events=Results())
    first = cache.entries_for(["lipids"])
    time.sleep(0.3)
    loader.release.clear()
    loader.started.clear()
    with ThreadPoolExecutor(8) as pool:
        refreshing = pool.submit(cache.entries_for, ["lipids"])
        assert loader.started.wait(5)
        others = [pool.submit(cache.entries_for, ["lipids"]) for _ in range(6)]
        stale = [f.result(timeout=5) for f in others]   # answered while the refresh is still held back
        loader.release.set()
        fresh = refreshing.result(timeout=5)
    assert all(answer is first for answer in stale)
    assert [e["id"] for e in fresh] == ["kb-lipids-2"] and loader.calls == 2
    assert cache.entries_for(["lipids"]) is fresh


def test_a_failed_first_load_fails_every_waiter_and_the_next_call_loads_again():
    loader, events = Loader(), Results()
    loader.fail = True
    cache = KnowledgeCache(loader, ttl=60, events=events)
    errors = [f.exception() for f in miss_together(cache, loader, events, ["smoking_cessation"], 4)]
    assert all(isinstance(error, TransientError) for error in errors) and loader.calls == 1
    assert len({id(error) for error in errors}) == 4   # each thread raises its own copy of the one failure
    assert all(error.code == errors[0].code and str(error) == str(errors[0]) for error in errors)
    loader.fail = False
    assert [e["id"] for e in cache.entries_for(["smoking_cessation"])] == ["kb-smoking_cessation-2"]


def test_a_failed_refresh_keeps_the_stale_entries_for_the_others_and_is_tried_again():
    loader = Loader()
    loader.release.set()
    cache = KnowledgeCache(loader, ttl=0.1)
    first = cache.entries_for(["weight_management"])
    time.sleep(0.2)
    loader.fail = True
    with pytest.raises(TransientError):
        cache.entries_for(["weight_management"])   # the refreshing thread sees the failure
    loader.fail = False
    assert cache.entries_for(["weight_management"]) is not first and loader.calls == 3


def test_without_a_ttl_nothing_is_kept_but_concurrent_misses_still_share_a_load():
    loader, events = Loader(), Results()
    cache = KnowledgeCache(loader, ttl=0, events=events)
    assert len({id(f.result()) for f in miss_together(cache, loader, events, ["general"], 4)}) == 1
    assert loader.calls == 1
    cache.entries_for(["general"])
    assert loader.calls == 2


def test_an_observer_that_raises_does_not_leave_the_set_stuck_loading():
    class Flaky(Results):
        def cache_result(self, cache, result):
            if not self.seen:
                self.seen.append("raised")
                raise OSError("no space left for the metric file")
            super().cache_result(cache, result)

    loader = Loader()
    loader.release.set()
    cache = KnowledgeCache(loader, ttl=60, events=Flaky())
    with pytest.raises(OSError):
        cache.entries_for(["lipids"])
    answers = []   # a set left "loading" would make the next call wait forever: a daemon thread, given 5 s
    caller = threading.Thread(target=lambda: answers.append(cache.entries_for(["lipids"])), daemon=True)
    caller.start()
    caller.join(5)
    assert not caller.is_alive(), "the next call waits for a load nobody runs"
    assert [e["id"] for e in answers[0]] == ["kb-lipids-1"] and loader.calls == 1
