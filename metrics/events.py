"""The Prometheus side of `worker.events.Events`: every event becomes a metric of `metrics.definitions`."""

from metrics import definitions as m
from worker.events import Events


class PrometheusEvents(Events):
    """Plugged into the consumer and the pipeline by the CLI; records into this process's metric files."""

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
