"""One consumer process built from settings: its clients, pipeline, consumer and signals."""

import signal
import time
from typing import Callable

from worker import exitcodes
from worker.cache import Cache
from worker.consumer import Consumer
from worker.errors import TransientError
from worker.knowledge import KnowledgeCache
from worker.llm import DEFAULT_PRICES, ReportWriter
from worker.logs import EventLog
from worker.outcomes import handle
from worker.pipeline import Pipeline
from worker.settings import Settings, parse_prices
from worker.store import Store

log = EventLog(__name__)


def build_pipeline(settings: Settings, store: Store) -> Pipeline:
    """Open every client; call this after a fork, never before."""
    cache = Cache(settings.redis_url, settings.redis_key_prefix, settings.redis_cache_ttl, settings.report_cache_ttl)
    writer = ReportWriter(
        base_url=settings.openai_base_url or None,
        api_key=settings.openai_api_key or "not-needed",
        model=settings.openai_model,
        timeout=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        prices={**DEFAULT_PRICES, **parse_prices(settings.llm_prices)},
    )
    knowledge = KnowledgeCache(store.active_knowledge, settings.knowledge_cache_seconds)
    claim_seconds = settings.llm_timeout_seconds * (settings.llm_max_retries + 1) * 2 + 60
    return Pipeline(store, cache, knowledge, writer, settings.max_message_bytes, claim_seconds,
                    settings.request_signing_key)


def prepare_store(settings: Settings) -> Store | None:
    """Connect to MongoDB and make sure the indexes exist, retrying until CONNECT_TIMEOUT."""
    store = Store(settings.mongodb_url, settings.mongodb_database, settings.mongodb_timeout_seconds)
    give_up_at = time.monotonic() + settings.connect_timeout
    while True:
        try:
            store.ensure_indexes()
            return store
        except TransientError as exc:
            if time.monotonic() > give_up_at:
                log.error("mongodb_unreachable", error=str(exc), seconds=settings.connect_timeout)
                store.close()
                return None
            log.warning("mongodb_not_ready", error=str(exc))
            time.sleep(1)


def run(settings: Settings, on_tick: Callable[[Consumer], None] | None = None) -> int:
    """Consume until asked to stop; returns an exit code from `worker.exitcodes`."""
    store = prepare_store(settings)
    if store is None:
        return exitcodes.CONNECT
    pipeline = build_pipeline(settings, store)
    consumer = Consumer(settings, lambda delivery: handle(delivery, pipeline, settings), on_tick)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: consumer.stop())
    log.info("worker_started", threads=settings.worker_threads, prefetch=settings.prefetch,
             queue=settings.request_queue, model=settings.openai_model)
    log.debug("settings", **settings.redacted())
    code = consumer.run()
    log.info("worker_stopped", code=code, reason=exitcodes.describe(code), settled=consumer.settled)
    return code
