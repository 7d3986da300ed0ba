"""The LLM client: ask an OpenAI-compatible model for a cited report, validate it, repair once, meter it."""

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from worker.errors import PermanentError, TransientError
from worker.report import REPORT_SHAPE, MalformedReport, assemble_content, parse_report, render_markdown
from worker.events import NO_EVENTS, Events
from worker.schemas import ReportGenerationRequest

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PING_TIMEOUT = 5.0
PERMANENT_STATUSES = frozenset({400, 413, 422})

# USD per 1M tokens: (input, output).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "default": (2.50, 10.00),
}

KNOWN_CATEGORIES = frozenset({
    "cardiovascular", "cholesterol", "blood_pressure", "diabetes", "weight_management",
    "smoking_cessation", "physical_activity", "nutrition", "general_health",
})
KEYWORDS = (
    ("cholesterol", re.compile(r"\bldl\b|\bhdl\b|cholesterol|triglycerid|lipid|statin")),
    ("diabetes", re.compile(r"hba1c|\ba1c\b|glucose|diabet|insulin|blood sugar")),
    ("blood_pressure", re.compile(r"blood pressure|\bbp\b|systolic|diastolic|hypertens")),
    ("weight_management", re.compile(r"\bbmi\b|weight|waist|obes")),
    ("smoking_cessation", re.compile(r"smok|tobacco|nicotine|cigar|\bvap")),
    ("physical_activity", re.compile(r"exercis|physical activity|\bwalk|\bsteps\b|fitness")),
    ("nutrition", re.compile(r"\bdiet|nutrition|sodium|\bsalt\b|\bfood|eating")),
    ("cardiovascular", re.compile(r"cardio|\bheart\b|\bcvd\b|ascvd|stroke")),
)
LAB_NAME_KEYS = ("name", "test", "test_name", "code", "display", "label", "analyte")

SYSTEM_PROMPT = """You write personal health reports for patients. Be friendly and clear, use plain \
language a non-specialist understands, and explain what each result means for this person.
Write one section per category listed in "categories", in that order, covering the labs, the \
cardiovascular summary, the assessment and the plan items that belong to it.
Base every health statement on the numbered knowledge entries you are given, and cite them inline \
as [n] with the entry's number. Cite only those entries; never invent sources, numbers or links, \
and do not include URLs.
Do not write warning signs to act on or a disclaimer: the report adds the clinician's own red flags and \
disclaimer word for word.
Answer with ONE JSON object and nothing else, of this shape:
{shape}
List in "citations" every number you used, each with the "id" of that knowledge entry as "kb_id"."""

REPAIR_PROMPT = """Your previous answer could not be used: {error}.
Reply with the corrected report as ONE JSON object of the required shape, and nothing else."""


@dataclass(frozen=True)
class GeneratedReport:
    content: dict  # the validated report JSON (goes to Mongo as report_data/json_content)
    markdown: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    seconds: float


@dataclass(frozen=True)
class Completion:
    """One answered chat completion call."""

    text: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    seconds: float


class ReportWriter:
    """Thread-safe: one instance (one HTTP connection pool) serves every worker thread."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str,
        model: str,
        timeout: float,
        max_retries: int = 1,
        prices: Mapping[str, tuple[float, float]] | None = None,
        events: Events = NO_EVENTS,
    ) -> None:
        self.model = model
        self._events = events
        self._timeout = timeout
        self._prices = dict(prices if prices is not None else DEFAULT_PRICES)
        self._client = openai.OpenAI(
            base_url=base_url or DEFAULT_BASE_URL, api_key=api_key, timeout=timeout, max_retries=max_retries
        )

    def generate(self, request: ReportGenerationRequest, categories: Sequence[str],
                 knowledge: Sequence[Mapping]) -> GeneratedReport:
        """One report for `request` on `categories`, citing only `knowledge`; raises TransientError or PermanentError."""
        messages = build_messages(request, categories, knowledge)
        calls: list[Completion] = []
        for _ in range(2):
            calls.append(self._complete(messages))
            try:
                content, citations = self._accept(calls[-1], knowledge)
                break
            except MalformedReport as exc:
                error = exc
                messages = repair_messages(messages, calls[-1].text, str(exc))
        else:
            raise TransientError(f"LLM answer still malformed after one repair: {error}", code="report_invalid")
        final = assemble_content(content, citations, request)
        return GeneratedReport(
            content=final,
            markdown=render_markdown(final, citations, request),
            model=calls[-1].model,
            prompt_tokens=sum(c.prompt_tokens for c in calls),
            completion_tokens=sum(c.completion_tokens for c in calls),
            cost_usd=sum(c.cost_usd for c in calls),
            seconds=sum(c.seconds for c in calls),
        )

    def ping(self) -> None:
        """List the models (GET /models); raises TransientError when the endpoint does not answer."""
        client = self._client.with_options(timeout=min(self._timeout, PING_TIMEOUT), max_retries=0)
        try:
            client.models.list()
        except openai.APIError as exc:
            raise TransientError(f"LLM endpoint not reachable: {type(exc).__name__}", code="llm_unavailable") from exc

    def close(self) -> None:
        self._client.close()

    def _complete(self, messages: list[dict]) -> Completion:
        """One chat completion call; its failures are mapped to our two error classes and reported."""
        started = time.monotonic()
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, response_format={"type": "json_object"}
            )
        except openai.APIError as exc:
            outcome, error = classify(exc)
            self._events.llm_call_finished(self.model, outcome, time.monotonic() - started)
            raise error from exc
        seconds = time.monotonic() - started
        usage = response.usage
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        cost = cost_of(self._prices, self.model, prompt, completion)
        text = response.choices[0].message.content if response.choices else None
        return Completion(text, response.model or self.model, prompt, completion, cost, seconds)

    def _accept(self, call: Completion, knowledge: Sequence[Mapping]):
        """Validate one answer and report the call as a success or as malformed."""
        outcome = "success"
        try:
            return parse_report(call.text, knowledge)
        except MalformedReport:
            outcome = "malformed"
            raise
        finally:
            self._events.llm_call_finished(self.model, outcome, call.seconds, call.prompt_tokens,
                                           call.completion_tokens, call.cost_usd)


def classify(exc: openai.APIError) -> tuple[str, Exception]:
    """The metric outcome and our error for an openai exception."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", TransientError("LLM request timed out", code="llm_unavailable")
    if isinstance(exc, openai.APIConnectionError):
        return "error", TransientError("LLM endpoint not reachable", code="llm_unavailable")
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited", TransientError("LLM rate limited (429)", code="llm_unavailable")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in PERMANENT_STATUSES:
            return "error", PermanentError(f"LLM answered HTTP {exc.status_code}: {type(exc).__name__}",
                                           code="llm_rejected")
        return "error", TransientError(f"LLM answered HTTP {exc.status_code}: {type(exc).__name__}",
                                       code="llm_unavailable")
    return "error", TransientError(f"LLM call failed: {type(exc).__name__}", code="llm_unavailable")


def cost_of(prices: Mapping[str, tuple[float, float]], model: str, prompt: int, completion: int) -> float:
    """USD for one call at the model's price per 1M tokens, or the "default" price."""
    price_in, price_out = prices.get(model) or prices.get("default") or (0.0, 0.0)
    return prompt / 1e6 * price_in + completion / 1e6 * price_out


def build_messages(request: ReportGenerationRequest, categories: Sequence[str],
                   knowledge: Sequence[Mapping]) -> list[dict]:
    """The system prompt and the user message, a JSON document with the numbered knowledge entries."""
    document = {
        "request_id": request.request_id,
        "categories": list(categories),
        "patient": request.patient,
        "labs": request.labs,
        "cvd_summary": request.cvd_summary,
        "assessment": request.assessment,
        "plan": request.plan,
        "knowledge": [
            {"n": n, **{key: entry.get(key) for key in ("id", "category", "title", "content", "source_url")}}
            for n, entry in enumerate(knowledge, start=1)
        ],
    }
    system = SYSTEM_PROMPT.format(shape=json.dumps(REPORT_SHAPE, indent=1))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": json.dumps(document, ensure_ascii=False, default=str)},
    ]


def repair_messages(messages: list[dict], answer: str | None, error: str) -> list[dict]:
    """The conversation so far, the bad answer, and a request to correct it."""
    return [
        *messages,
        {"role": "assistant", "content": answer or ""},
        {"role": "user", "content": REPAIR_PROMPT.format(error=error)},
    ]


def categories_for(request: ReportGenerationRequest) -> list[str]:
    """The knowledge-base categories a request needs: sorted, never empty."""
    found: set[str] = set()
    for item in request.plan:
        found |= categories_in(item.get("category") if isinstance(item, dict) else item)
        if isinstance(item, dict) and not item.get("category"):
            found |= categories_in(*strings_in(item))
    for lab in request.labs:
        found |= categories_in(lab.get("category"), *(lab.get(key) for key in LAB_NAME_KEYS))
    found |= categories_in(*strings_in(request.assessment))
    if request.cvd_summary:
        found.add("cardiovascular")
    return sorted(found) or ["general_health"]


def categories_in(*texts: Any) -> set[str]:
    """Known categories named exactly, or hinted by keywords, in the given texts."""
    found: set[str] = set()
    rest = []
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        key = re.sub(r"[\s-]+", "_", text.strip().lower())
        if key in KNOWN_CATEGORIES:
            found.add(key)
        else:
            rest.append(text.lower())
    if rest:  # one pass per keyword over all the texts, not one per text
        plain = re.sub(r"[_-]+", " ", "\n".join(rest))
        found |= {category for category, pattern in KEYWORDS if pattern.search(plain)}
    return found


def strings_in(value: Any) -> Iterator[str]:
    """Every dict key and string value inside a JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)
