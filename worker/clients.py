"""Every client of ours built from the settings, in one place: MongoDB store, Redis, cache, LLM writer.

The service, `report-worker health`, the other CLI commands and the parent's /readyz all build their
clients here. Call after a fork, never before: each process opens its own connections.
"""

import redis

from worker.cache import Cache
from worker.disclosure import parse_fields
from worker.events import NO_EVENTS, Events
from worker.facts import DEFAULT_DISCLAIMER
from worker.llm import DEFAULT_PRICES, ReportWriter
from worker.settings import Settings, parse_prices
from worker.store import Store


def store(settings: Settings, timeout: float | None = None) -> Store:
    return Store(settings.mongodb_url, settings.mongodb_database,
                 settings.mongodb_timeout_seconds if timeout is None else timeout,
                 settings.mongodb_write_concern, settings.mongodb_journal)


def redis_client(settings: Settings, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def cache(settings: Settings, events: Events = NO_EVENTS) -> Cache:
    return Cache(redis_client(settings), settings.redis_key_prefix, settings.redis_cache_ttl,
                 settings.report_cache_ttl, events, cache_input=settings.redis_cache_input)


def writer(settings: Settings, events: Events = NO_EVENTS, timeout: float | None = None,
           max_retries: int | None = None) -> ReportWriter:
    return ReportWriter(
        base_url=settings.openai_base_url or None,
        api_key=settings.openai_api_key or "not-needed",
        model=settings.openai_model,
        timeout=settings.llm_timeout_seconds if timeout is None else timeout,
        max_retries=settings.llm_max_retries if max_retries is None else max_retries,
        prices={**DEFAULT_PRICES, **parse_prices(settings.llm_prices)},
        events=events,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
        structured=settings.llm_structured_output,
        patient_fields=parse_fields(settings.llm_patient_fields),
        disclaimer=settings.report_disclaimer or DEFAULT_DISCLAIMER,
        connections=settings.worker_threads,
    )
