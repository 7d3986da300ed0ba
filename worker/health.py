"""`report-worker health`: does every service this worker needs answer?"""

import time
from typing import Callable

import redis

from worker.broker import channel
from worker.llm import ReportWriter
from worker.settings import Settings
from worker.store import Store


def check(probe: Callable[[], object]) -> dict:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure is the answer here, reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def ping_rabbitmq(settings: Settings) -> None:
    with channel(settings, confirm=False):
        pass


def ping_redis(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def ping_mongodb(settings: Settings) -> None:
    store = Store(settings.mongodb_url, settings.mongodb_database, timeout_seconds=2)
    try:
        store.ping()
    finally:
        store.close()


def ping_llm(settings: Settings) -> None:
    writer = ReportWriter(base_url=settings.openai_base_url or None, api_key=settings.openai_api_key or "not-needed",
                          model=settings.openai_model, timeout=5, max_retries=0)
    try:
        writer.ping()
    finally:
        writer.close()


PROBES = {"rabbitmq": ping_rabbitmq, "redis": ping_redis, "mongodb": ping_mongodb, "llm": ping_llm}


def report(settings: Settings, names=tuple(PROBES)) -> dict:
    return {name: check(lambda probe=PROBES[name]: probe(settings)) for name in names}
