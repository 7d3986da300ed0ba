"""Does every service this worker needs answer? One routine for `report-worker health` and /readyz."""

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

from worker import clients
from worker.broker import channel, node_label
from worker.settings import Settings

Check = Callable[[], object]   # returns when the service answers (maybe a dict to show), raises otherwise
TIMEOUT = 2.0


def ping_rabbitmq(settings: Settings) -> dict:
    """The first node of RABBITMQ_URL that answers: {"node": "host:port"}."""
    with channel(settings, confirm=False) as ch:
        return {"node": node_label(ch.connection._impl.params)}  # pika keeps the parameters it connected with


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
        answer = check()
    except Exception as exc:  # any failure is the answer here, reported, not raised
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return
    results[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1),
                     **(answer if isinstance(answer, dict) else {})}


def children_nodes(settings: Settings, timeout: float = 5.0) -> dict[str, str] | None:
    """{worker index: broker node} of the children of `report-worker run` on this host, from its /readyz;
    None when no such parent answers (not running, or METRICS_PORT=0)."""
    if not settings.metrics_port:
        return None
    host = "127.0.0.1" if settings.metrics_bind in ("", "0.0.0.0", "::") else settings.metrics_bind
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:   # 503: not ready, the body still names the nodes
        body = exc.read()
    except OSError:
        return None
    try:
        return json.loads(body).get("nodes", {})
    except (ValueError, AttributeError):
        return None


def report(settings: Settings, names=tuple(PROBES), timeout: float = 10.0) -> dict:
    """Every named service's answer, pinged in parallel; RabbitMQ's names the node we reached and, when
    this host's `report-worker run` answers, the node each of its children is connected to."""
    results = run_checks(checks(settings, names), timeout)
    children = children_nodes(settings) if "rabbitmq" in results else None
    if children is not None:
        results["rabbitmq"]["children"] = children
    return results
