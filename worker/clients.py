"""Every client of ours built from the settings, in one place: MongoDB store, Redis, cache, LLM limiter and writer.

The service, `report-worker health`, the other CLI commands and the parent's /readyz all build their
clients here. Call after a fork, never before: each process opens its own connections.
"""

import redis

from worker.cache import Cache
from worker.disclosure import parse_fields
from worker.events import NO_EVENTS, Events
from worker.facts import DEFAULT_DISCLAIMER
from worker.llm import DEFAULT_PRICES, ReportWriter, cost_of
from worker.logs import EventLog
from worker.ratelimit import FleetLimiter, LimitObserver, Limits, Unlimited, connect
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


log = EventLog(__name__)
SETTLE_MARGIN_SECONDS = 30.0  # left before RabbitMQ's consumer timeout for the store, the publish and the ack


def limits(settings: Settings) -> Limits:
    """The fleet's LLM limits from the LLM_* settings."""
    return Limits(rpm=settings.llm_rpm, tpm=settings.llm_tpm, max_concurrency=settings.llm_max_concurrency,
                  budget_usd_per_day=settings.llm_budget_usd_per_day, share=settings.llm_share,
                  burst_seconds=settings.llm_limit_burst_seconds,
                  lease_seconds=settings.llm_limit_lease_seconds or settings.llm_timeout_seconds + 30)


def limiter(settings: Settings, observer: LimitObserver | None = None) -> FleetLimiter | Unlimited:
    """One per process, after the fork; Unlimited (no Redis at all) when every LLM_* limit is 0."""
    if not settings.llm_limited:
        return Unlimited()
    prices = {**DEFAULT_PRICES, **parse_prices(settings.llm_prices)}
    if settings.llm_budget_usd_per_day and cost_of(prices, settings.openai_model, 1, 1) is None:
        log.warning("llm_budget_without_price", model=settings.openai_model,
                    hint="LLM_BUDGET_USD_PER_DAY counts nothing for a model without a price: add it to LLM_PRICES")
    return FleetLimiter(connect(settings.redis_url), settings.redis_key_prefix, limits(settings), observer)


def llm_deadline(settings: Settings, received_at: float) -> float | None:
    """When a delivery's LLM calls must have ended (time.monotonic()): RabbitMQ's consumer timeout, counted
    from `received_at`, less a margin to store, publish and ack. None when the consumer timeout is off."""
    if not settings.rabbitmq_consumer_timeout:
        return None
    return received_at + settings.rabbitmq_consumer_timeout - SETTLE_MARGIN_SECONDS


def writer(settings: Settings, events: Events = NO_EVENTS, timeout: float | None = None,
           max_retries: int | None = None, llm_limiter: FleetLimiter | Unlimited | None = None) -> ReportWriter:
    """The LLM client; with an enforcing `llm_limiter` every call takes a permit and the client never retries."""
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
        limiter=llm_limiter,
        cooldown_seconds=settings.llm_cooldown_seconds,
    )
