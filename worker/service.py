"""One consumer process built from settings: its clients, pipeline, consumer and signals."""

import functools
import signal
import time
from typing import Callable

from worker import clients, exitcodes
from worker.claims import Claims, Leases
from worker.consumer import Consumer
from worker.suspects import Journal
from worker.errors import TransientError
from worker.events import NO_EVENTS, Events
from worker.knowledge import KnowledgeCache
from worker.logs import EventLog
from worker.outcomes import handle
from worker.pipeline import Pipeline
from worker.ratelimit import FleetLimiter, LimitObserver, Unlimited
from worker.settings import Settings
from worker.store import Store

log = EventLog(__name__)
LLM_ACCESS = frozenset({"llm_unauthorized", "llm_model_not_found"})
BUDGET_EXHAUSTED = "budget_exhausted"
LLM_THROTTLED = "llm_throttled"


def build_pipeline(settings: Settings, store: Store, events: Events = NO_EVENTS,
                   llm_limiter: FleetLimiter | Unlimited | None = None) -> Pipeline:
    """Open every client; call this after a fork, never before."""
    knowledge = KnowledgeCache(store.active_knowledge, settings.knowledge_cache_seconds, events)
    claims = Claims(store.reports, settings.claim_lease_seconds)  # renewed while a call waits for its permit too
    return Pipeline(store, claims, Leases(claims), clients.cache(settings, events), knowledge,
                    clients.writer(settings, events, llm_limiter=llm_limiter), events)


def still_paused(pipeline: Pipeline, reasons: frozenset[str], intake_wait: float = 0.0) -> set[str]:
    """The pause reasons that still hold: the LLM is asked with a one-token call; the limiter says whether the
    day's budget is still spent (a new UTC day, or a HUP that raised it, ends that) and whether a call would
    still wait longer than `intake_wait` seconds."""
    still = set()
    if reasons & LLM_ACCESS:
        answer = pipeline.writer.access()
        still |= reasons & LLM_ACCESS if answer == "llm_unavailable" else {answer} & reasons
    limiter = pipeline.writer.limiter
    if BUDGET_EXHAUSTED in reasons and limiter.budget_state().exhausted:
        still.add(BUDGET_EXHAUSTED)
    if LLM_THROTTLED in reasons and limiter.expected_wait() > intake_wait:
        still.add(LLM_THROTTLED)
    return still | (reasons - LLM_ACCESS - {BUDGET_EXHAUSTED, LLM_THROTTLED})


def intake_gate(limiter: FleetLimiter | Unlimited, intake_wait: float) -> Callable[[], str] | None:
    """For the consumer's loop: "llm_throttled" while this process's first waiter for an LLM permit has waited
    more than `intake_wait` seconds (or a 429's cool-down lasts longer). Local only: no Redis on the I/O thread."""
    if not limiter.enforcing or not intake_wait:
        return None
    return lambda: LLM_THROTTLED if limiter.queue_wait() > intake_wait else ""


def prepare_store(settings: Settings) -> Store | None:
    """Connect to MongoDB and make sure the indexes exist, retrying until CONNECT_TIMEOUT."""
    store = clients.store(settings)
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


def run(settings: Settings, on_tick: Callable[[Consumer], None] | None = None, events: Events = NO_EVENTS,
        journal: Journal | None = None) -> int:
    """Consume until asked to stop; returns an exit code from `worker.exitcodes`."""
    store = prepare_store(settings)
    if store is None:
        return exitcodes.CONNECT
    llm_limiter = clients.limiter(settings, events if isinstance(events, LimitObserver) else None)
    pipeline = build_pipeline(settings, store, events, llm_limiter)
    consumer = Consumer(settings, functools.partial(handle, pipeline=pipeline, settings=settings), on_tick, events,
                        probe=functools.partial(still_paused, pipeline, intake_wait=settings.llm_intake_wait_seconds),
                        gate=intake_gate(llm_limiter, settings.llm_intake_wait_seconds), journal=journal)
    if llm_limiter.budget_state().exhausted:  # started (or restarted by a HUP) on a spent budget: wait for it
        consumer.pauses.add(BUDGET_EXHAUSTED)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: consumer.stop())
    log.info("worker_started", threads=settings.worker_threads, prefetch=settings.prefetch,
             queue=settings.request_queue, model=settings.openai_model)
    if settings.prefetch < settings.worker_threads:
        log.warning("prefetch_below_threads", prefetch=settings.prefetch, threads=settings.worker_threads,
                    idle_threads=settings.worker_threads - settings.prefetch,
                    hint="at most RABBITMQ_PREFETCH_COUNT messages run at once; the other threads sit idle")
    log.debug("settings", **settings.redacted())
    code = consumer.run()
    log.info("worker_stopped", code=code, reason=exitcodes.describe(code), settled=consumer.settled)
    return code
