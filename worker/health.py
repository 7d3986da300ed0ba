"""Does every service this worker needs answer? One routine for `report-worker health` and /readyz."""

import threading
import time
from typing import Callable

from worker import clients
from worker.broker import channel
from worker.settings import Settings

Check = Callable[[], object]   # returns when the service answers, raises otherwise
TIMEOUT = 2.0


def ping_rabbitmq(settings: Settings) -> None:
    with channel(settings, confirm=False):
        pass


def ping_redis(settings: Settings) -> None:
    client = clients.redis_client(settings, timeout=TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def ping_mongodb(settings: Settings) -> None:
    store = clients.store(settings, timeout=TIMEOUT)
    try:
        store.ping()
    finally:
        store.close()


def ping_llm(settings: Settings) -> None:
    writer = clients.writer(settings, timeout=5, max_retries=0)
    try:
        writer.ping()
    finally:
        writer.close()


PROBES = {"rabbitmq": ping_rabbitmq, "redis": ping_redis, "mongodb": ping_mongodb, "llm": ping_llm}


def checks(settings: Settings, names=tuple(PROBES)) -> dict[str, Check]:
    """The named pings bound to `settings`."""
    return {name: (lambda probe=PROBES[name]: probe(settings)) for name in names}


def run_checks(named: dict[str, Check], timeout: float) -> dict[str, dict]:
    """Run every check in its own daemon thread; one that has not answered within `timeout` failed.

    Each result is {"ok": True, "ms": ...} or {"ok": False, "error": "..."}."""
    results: dict[str, dict] = {}
    threads = []
    for name, check in named.items():
        thread = threading.Thread(target=_run_one, args=(check, results, name), name=f"check-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name) or {"ok": False, "error": f"no answer within {timeout:g} s"}
            for name in named}


def _run_one(check: Check, results: dict, name: str) -> None:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure is the answer here, reported, not raised
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return
    results[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def report(settings: Settings, names=tuple(PROBES), timeout: float = 10.0) -> dict:
    """Every named service's answer, pinged in parallel."""
    return run_checks(checks(settings, names), timeout)
