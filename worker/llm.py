"""The LLM client: ask an OpenAI-compatible model for a report, check it at the gate, repair once, meter it."""

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx2
import openai

from worker.disclosure import DEFAULT_PATIENT_FIELDS
from worker.errors import Paused, PermanentError, TransientError
from worker.events import NO_EVENTS, Events
from worker.facts import DEFAULT_DISCLAIMER
from worker.gate import GateFailure, review
from worker.logs import EventLog
from worker.prompt import PROMPT_VERSION, build_messages, knowledge_record, repair_messages, response_format
from worker.ratelimit import BudgetExhausted, FleetLimiter, Throttled, Unlimited, retry_after_seconds
from worker.report import assemble_report, render_markdown
from worker.schemas import ReportGenerationRequest

log = EventLog(__name__)
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PING_TIMEOUT = 5.0
PERMANENT_STATUSES = frozenset({400, 413, 422})
UNAUTHORIZED_STATUSES = frozenset({401, 403})

# USD per 1M tokens: (input, output). A model not listed (and no "default" set in LLM_PRICES) is not priced.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
}


@dataclass(frozen=True)
class GeneratedReport:
    content: dict           # the checked report JSON (goes to Mongo as report_data.content/json_content)
    markdown: str
    model: str
    prompt_tokens: int | None       # None: the server reported no usage
    completion_tokens: int | None
    cost_usd: float | None          # None: no usage, or a model without a price
    seconds: float
    audit: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """One answered chat completion call."""

    text: str | None
    refusal: str | None
    finish_reason: str | None
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    seconds: float


class ReportWriter:
    """Thread-safe: one instance (one HTTP connection pool) serves every worker thread."""

    def __init__(self, *, base_url: str | None, api_key: str, model: str, timeout: float, max_retries: int = 1,
                 prices: Mapping[str, tuple[float, float]] | None = None, events: Events = NO_EVENTS,
                 temperature: float = 0.2, max_tokens: int = 4000, structured: str = "json_schema",
                 patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS, disclaimer: str = DEFAULT_DISCLAIMER,
                 connections: int = 100, limiter: FleetLimiter | Unlimited | None = None,
                 cooldown_seconds: float = 1.0) -> None:
        self.model = model
        self.limiter = limiter or Unlimited()
        self._cooldown = cooldown_seconds  # after a 429 that says no retry-after
        if self.limiter.enforcing:
            max_retries = 0  # the client's own retries would call without a permit; ours go through the delay queue
        self._events = events
        self._timeout = timeout
        self._prices = dict(prices if prices is not None else DEFAULT_PRICES)
        self._options = {"temperature": temperature, "max_tokens": max_tokens}
        self._structured = structured
        self._patient_fields = tuple(patient_fields)
        self._disclaimer = disclaimer
        self._unpriced_warned: set[str] = set()
        defaults = openai.DEFAULT_CONNECTION_LIMITS  # keep a connection per thread alive between calls
        limits = type(defaults)(max_connections=max(connections, defaults.max_connections),
                                max_keepalive_connections=max(connections, defaults.max_keepalive_connections),
                                keepalive_expiry=defaults.keepalive_expiry)
        http = openai.DefaultHttpxClient(limits=limits)
        self._client = openai.OpenAI(base_url=base_url or DEFAULT_BASE_URL, api_key=api_key, timeout=timeout,
                                     max_retries=max_retries, http_client=http)

    def generate(self, request: ReportGenerationRequest, categories: Sequence[str],
                 knowledge: Sequence[Mapping], deadline: float | None = None, on_answer=None) -> GeneratedReport:
        """One checked report for `request` on `categories`, citing only `knowledge` (numbered in this order).

        At most two calls: an answer the gate refuses is asked for once more with the reason; a second
        refusal is a PermanentError carrying the gate's code. API failures raise TransientError,
        PermanentError or Paused. `deadline` (time.monotonic()) is when every call must have ended (the
        message's consumer timeout, less a margin): a call waits for its permit at most until deadline − timeout.
        `on_answer(completion)`, if given, sees every answer (the eval scores them)."""
        messages = build_messages(request, knowledge, categories, patient_fields=self._patient_fields,
                                  structured=self._structured)
        answer_format = response_format(categories, knowledge, self._structured)
        calls: list[Completion] = []
        refused: GateFailure | None = None
        for _ in range(2):
            call = self._complete(messages, answer_format, deadline)
            calls.append(call)
            if on_answer is not None:
                on_answer(call)
            try:
                verdict = review(call.text, categories=categories, knowledge=knowledge, request=request,
                                 refusal=call.refusal, finish_reason=call.finish_reason,
                                 patient_fields=self._patient_fields)
            except GateFailure as failure:
                refused = failure
                self._report(call, "refused" if failure.code == "llm_refused" else "malformed")
                log.warning("report_refused_at_gate", request_id=request.request_id, code=failure.code,
                            reason=failure.reason, call=len(calls))
                messages = repair_messages(messages, call.text, failure.reason)
                continue
            self._report(call, "success")
            break
        else:
            raise PermanentError(f"the report failed the gate twice: {refused.reason}", code=refused.code)
        content = assemble_report(verdict, request, self._disclaimer)
        return GeneratedReport(
            content=content, markdown=render_markdown(content), model=calls[-1].model,
            prompt_tokens=_total(c.prompt_tokens for c in calls),
            completion_tokens=_total(c.completion_tokens for c in calls),
            cost_usd=_total(c.cost_usd for c in calls), seconds=sum(c.seconds for c in calls),
            audit={"prompt_version": PROMPT_VERSION, "model": self.model, "structured_output": self._structured,
                   **self._options, "finish_reason": calls[-1].finish_reason, "llm_calls": len(calls),
                   "repairs": len(calls) - 1, "usage_missing": any(c.prompt_tokens is None for c in calls),
                   "knowledge": knowledge_record(knowledge), **verdict.audit()},
        )

    def ping(self) -> None:
        """List the models (GET /models); raises TransientError when the endpoint does not answer."""
        client = self._client.with_options(timeout=min(self._timeout, PING_TIMEOUT), max_retries=0)
        try:
            client.models.list()
        except openai.APIError as exc:
            raise TransientError(f"LLM endpoint not reachable: {type(exc).__name__}", code="llm_unavailable") from exc

    def access(self) -> str:
        """'' when the key and the model work (a one-token call), else why not: llm_unauthorized,
        llm_model_not_found, or llm_unavailable when the endpoint does not answer."""
        client = self._client.with_options(timeout=min(self._timeout, PING_TIMEOUT), max_retries=0)
        try:
            client.chat.completions.create(model=self.model, max_tokens=1,
                                           messages=[{"role": "user", "content": "ping"}])
        except openai.APIError as exc:
            _, error = classify(exc)
            return error.code
        return ""

    def close(self) -> None:
        self._client.close()

    def _complete(self, messages: list[dict], answer_format: dict, deadline: float | None = None) -> Completion:
        """One chat completion call under a permit of the fleet's limiter; failures are mapped to our error
        classes and reported. A spent budget pauses intake; a permit not granted in time is a TransientError."""
        body = chat_body(self.model, messages, answer_format, self._options)  # encoded once: estimated and sent
        prompt_estimate = estimate_tokens(body)
        try:
            permit = self.limiter.acquire(prompt_estimate + self._options["max_tokens"],
                                          None if deadline is None else deadline - self._timeout)
        except BudgetExhausted as exc:
            raise Paused("the day's LLM budget is spent", code="budget_exhausted") from exc
        except Throttled as exc:
            raise TransientError(str(exc), code="llm_unavailable") from exc
        with permit:
            started = time.monotonic()
            try:  # the client's documented raw request: its retries, timeouts and errors, none of its typed models
                response = self._client.post("/chat/completions", cast_to=httpx2.Response, content=body)
            except openai.APIError as exc:
                if isinstance(exc, openai.RateLimitError) and getattr(exc, "code", None) != "insufficient_quota":
                    self.limiter.cooldown(retry_after_seconds(exc.response.headers) or self._cooldown)
                outcome, error = classify(exc)
                self._events.llm_call_finished(self.model, outcome, time.monotonic() - started)
                raise error from exc
            seconds = time.monotonic() - started
            try:
                answer = parse_completion(response.content)
            except ValueError:
                answer = None
            prompt, completion = (answer["prompt_tokens"], answer["completion_tokens"]) if answer else (None, None)
            cost = self._cost(prompt, completion)
            if prompt is None or completion is None:  # the budget still counts the call, at its estimate
                estimated = cost_of(self._prices, self.model, prompt_estimate, self._options["max_tokens"])
                permit.settle(None, estimated or 0.0)
            else:
                permit.settle(prompt + completion, cost or 0.0)
        if answer is None:
            self._events.llm_call_finished(self.model, "error", seconds)
            raise TransientError(f"LLM answered HTTP {response.status_code} with something that is not a chat "
                                 "completion", code="llm_unavailable")
        return Completion(text=answer["text"], refusal=answer["refusal"], finish_reason=answer["finish_reason"],
                          model=answer["model"] or self.model, prompt_tokens=prompt, completion_tokens=completion,
                          cost_usd=cost, seconds=seconds)

    def _cost(self, prompt: int | None, completion: int | None) -> float | None:
        if prompt is None or completion is None:
            return None
        cost = cost_of(self._prices, self.model, prompt, completion)
        if cost is None and self.model not in self._unpriced_warned:
            self._unpriced_warned.add(self.model)
            log.warning("llm_model_not_priced", model=self.model, hint="add it to LLM_PRICES; its cost is not recorded")
        return cost

    def _report(self, call: Completion, outcome: str) -> None:
        self._events.llm_call_finished(self.model, outcome, call.seconds, call.prompt_tokens or 0,
                                       call.completion_tokens or 0, call.cost_usd or 0.0)


def parse_completion(body: bytes) -> dict:
    """The fields we read of a chat completion's JSON: text, refusal, finish_reason, model and the usage
    (None where the answer leaves them out). ValueError when the body is not a chat completion at all."""
    payload = json.loads(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        raise ValueError("not a chat completion object")  # e.g. a proxy's {"error": ...} with status 200
    choices, usage = payload["choices"], payload.get("usage")
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    usage = usage if isinstance(usage, dict) else {}
    return {"text": _text(message.get("content")), "refusal": _text(message.get("refusal")),
            "finish_reason": _text(choice.get("finish_reason")), "model": _text(payload.get("model")),
            "prompt_tokens": _count(usage.get("prompt_tokens")), "completion_tokens": _count(usage.get("completion_tokens"))}


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def chat_body(model: str, messages: Sequence[Mapping], answer_format: Mapping, options: Mapping) -> bytes:
    """The chat completion request as sent."""
    return json.dumps({"model": model, "messages": messages, "response_format": answer_format, **options}).encode()


def estimate_tokens(body: bytes) -> int:
    """Prompt tokens a call will count, estimated before it: about 4 bytes a token of the request as sent."""
    return len(body) // 4


def _total(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def classify(exc: openai.APIError) -> tuple[str, Exception]:
    """The metric outcome and our error for an openai exception."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", TransientError("LLM request timed out", code="llm_unavailable")
    if isinstance(exc, openai.APIConnectionError):
        return "error", TransientError("LLM endpoint not reachable", code="llm_unavailable")
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", TransientError("LLM rate limited (429)", code="llm_unavailable")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in UNAUTHORIZED_STATUSES:
            return "unauthorized", Paused(f"LLM answered HTTP {status}: the API key is wrong or revoked",
                                          code="llm_unauthorized")
        if status == 404:
            return "unauthorized", Paused("LLM answered HTTP 404: the model (or the endpoint) does not exist",
                                          code="llm_model_not_found")
        if status in PERMANENT_STATUSES:
            return "error", PermanentError(f"LLM answered HTTP {status}: {type(exc).__name__}", code="llm_rejected")
        return "error", TransientError(f"LLM answered HTTP {status}: {type(exc).__name__}", code="llm_unavailable")
    return "error", TransientError(f"LLM call failed: {type(exc).__name__}", code="llm_unavailable")


def cost_of(prices: Mapping[str, tuple[float, float]], model: str, prompt: int, completion: int) -> float | None:
    """USD for one call at the model's price per 1M tokens (or LLM_PRICES' "default"); None without a price."""
    price = prices.get(model) or prices.get("default")
    if price is None:
        return None
    return prompt / 1e6 * price[0] + completion / 1e6 * price[1]
