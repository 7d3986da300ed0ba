"""The Prometheus side of `worker.events.Events` and of the LLM limiter's `LimitObserver`: every event becomes a
metric of `metrics.definitions`."""

from metrics import definitions as m
from worker.events import Events
from worker.ratepolicy import LimitObserver


class PrometheusEvents(Events, LimitObserver):
    """Plugged into the consumer, the pipeline and the LLM limiter; records into this process's metric files."""

    def stage_timed(self, stage: str, seconds: float) -> None:
        m.STAGE_SECONDS.labels(stage).observe(seconds)

    def message_received(self, redelivered: bool) -> None:
        if redelivered:
            m.REDELIVERIES.inc()

    def message_settled(self, outcome: str, seconds: float) -> None:
        m.MESSAGES.labels(outcome).inc()
        m.PROCESSING_SECONDS.observe(seconds)

    def inflight_changed(self, count: int) -> None:
        m.INFLIGHT.set(count)

    def broker_reconnected(self) -> None:
        m.BROKER_RECONNECTS.inc()

    def llm_call_finished(self, model: str, outcome: str, seconds: float, prompt_tokens: int = 0,
                          completion_tokens: int = 0, cost_usd: float = 0.0) -> None:
        m.LLM_REQUESTS.labels(model, outcome).inc()
        m.LLM_SECONDS.labels(model).observe(seconds)
        if prompt_tokens:
            m.LLM_TOKENS.labels(model, "prompt").inc(prompt_tokens)
        if completion_tokens:
            m.LLM_TOKENS.labels(model, "completion").inc(completion_tokens)
        if cost_usd:
            m.LLM_COST.labels(model).inc(cost_usd)

    def cache_result(self, cache: str, result: str) -> None:
        m.CACHE_REQUESTS.labels(cache, result).inc()

    def intake_paused(self, reason: str, paused: bool) -> None:
        m.INTAKE_PAUSED.labels(reason).set(1 if paused else 0)

    # ---- the LLM limiter (worker.ratepolicy.LimitObserver)

    def granted(self, kind: str, amount: float) -> None:
        m.LIMITER_GRANTED.labels(kind).inc(amount)

    def waited(self, seconds: float) -> None:
        m.LIMITER_WAIT.observe(seconds)

    def throttled(self, reason: str) -> None:
        m.LIMITER_THROTTLED.labels(reason).inc()

    def cooldown(self, seconds: float) -> None:
        m.LIMITER_COOLDOWNS.inc()

    def fallback(self, reason: str) -> None:
        m.LIMITER_FALLBACKS.labels(reason).inc()
        self._fallback_reason = reason
        m.LIMITER_FALLBACK.labels(reason).set(1)

    def restored(self, seconds_down: float) -> None:
        m.LIMITER_FALLBACK.labels(getattr(self, "_fallback_reason", "")).set(0)

    def budget(self, spent: float, limit: float) -> None:
        m.BUDGET.labels("spent").set(spent)
        m.BUDGET.labels("budget").set(limit)
        m.BUDGET.labels("remaining").set(max(0.0, limit - spent) if limit else 0.0)
