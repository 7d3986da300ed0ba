"""Prefetch against RabbitMQ's consumer_timeout: the rule, and the warning at start and reload.

RabbitMQ closes a channel whose delivery stays unacknowledged longer than its `consumer_timeout`
(30 minutes by default), counted from delivery, so a message waiting in a child's prefetch buffer
is already on the clock. A child runs WORKER_THREADS messages at once, so the last message of a
full buffer waits ceil(prefetch / threads) - 1 rounds and then takes its own round; a round can
last LLM_TIMEOUT_SECONDS for each of the LLM_MAX_RETRIES + 1 attempts:

    ceil(RABBITMQ_PREFETCH_COUNT / WORKER_THREADS) x LLM_TIMEOUT_SECONDS x (LLM_MAX_RETRIES + 1)
        must stay below RABBITMQ_CONSUMER_TIMEOUT

Keep prefetch near the thread count (the default is equal), or lower LLM_TIMEOUT_SECONDS.
"""

import math

from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)


def worst_wait(settings: Settings) -> float:
    """Seconds the last prefetched message could wait between delivery and ack."""
    rounds = math.ceil(settings.prefetch / settings.worker_threads)
    return rounds * settings.llm_timeout_seconds * (settings.llm_max_retries + 1)


def safe_prefetch(settings: Settings) -> int:
    """The largest prefetch that keeps `worst_wait` within the consumer timeout (at least 1)."""
    per_round = settings.llm_timeout_seconds * (settings.llm_max_retries + 1)
    return max(1, int(settings.rabbitmq_consumer_timeout // per_round) * settings.worker_threads)


def check_consumer_timeout(settings: Settings) -> bool:
    """Warn when a prefetched message could outlive RabbitMQ's consumer_timeout; True when it cannot."""
    if not settings.rabbitmq_consumer_timeout:
        return True
    wait = worst_wait(settings)
    if wait <= settings.rabbitmq_consumer_timeout:
        return True
    log.warning(
        "consumer_timeout_risk",
        worst_wait_seconds=wait,
        consumer_timeout_seconds=settings.rabbitmq_consumer_timeout,
        prefetch=settings.prefetch,
        threads=settings.worker_threads,
        llm_timeout_seconds=settings.llm_timeout_seconds,
        llm_attempts=settings.llm_max_retries + 1,
        hint=f"lower RABBITMQ_PREFETCH_COUNT to {safe_prefetch(settings)} or less, lower LLM_TIMEOUT_SECONDS, "
             "or raise RabbitMQ's consumer_timeout (and RABBITMQ_CONSUMER_TIMEOUT with it)",
    )
    return False
