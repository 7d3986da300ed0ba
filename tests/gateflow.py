"""The wiring of the gate's parts, as the LLM client will do it: prompt → call → gate → one repair → render."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
from pydantic import ValidationError

from worker.categories import categories_for
from worker.evaluation import Case
from worker.gate import GateFailure, inspect, review
from worker.prompt import build_messages, repair_messages, response_format
from worker.report import assemble_report, render_markdown
from worker.schemas import ReportGenerationRequest

ROOT = Path(__file__).resolve().parents[1]
KB = json.loads((ROOT / "worker" / "data" / "knowledge_base.json").read_text())


def knowledge_for(categories: Sequence[str], kb: Sequence[Mapping] = KB) -> list[dict]:
    """The entries of these categories, in knowledge-base order (the pipeline's loader does the same)."""
    return [dict(entry) for entry in kb if entry["category"] in categories]


def generate(client: openai.OpenAI, request: ReportGenerationRequest, knowledge: Sequence[Mapping], *,
             model: str = "fake-llm", structured: str = "json_schema") -> dict[str, Any]:
    """One report: at most two calls; returns status, error_code, content, markdown, calls and per-call checks."""
    categories = categories_for(request)
    messages = build_messages(request, knowledge, categories, structured=structured)
    fmt = response_format(categories, knowledge, structured)
    calls, checks, failure = [], [], None
    for _ in range(2):
        response = client.chat.completions.create(model=model, messages=messages, response_format=fmt,
                                                  temperature=0.2, max_tokens=4000)
        choice = response.choices[0]
        calls.append({"finish_reason": choice.finish_reason, "usage": response.usage is not None})
        answer = dict(categories=categories, knowledge=knowledge, request=request,
                      refusal=getattr(choice.message, "refusal", None), finish_reason=choice.finish_reason)
        checks.append(inspect(choice.message.content, **answer))
        try:
            verdict = review(choice.message.content, **answer)
        except GateFailure as exc:
            failure = exc
            messages = repair_messages(messages, choice.message.content, exc.reason)
            continue
        content = assemble_report(verdict, request)
        return {"status": "success", "error_code": "", "categories": categories, "content": content,
                "markdown": render_markdown(content), "audit": verdict.audit(), "calls": len(calls),
                "call_details": calls, "checks": checks, "cost_usd": 0.0}
    return {"status": "failed", "error_code": failure.code, "reason": failure.reason, "categories": categories,
            "calls": len(calls), "call_details": calls, "checks": checks, "cost_usd": 0.0}


def generator(base_url: str, structured: str = "json_schema"):
    """A `generate(case) -> result` for the evaluation, against the server at `base_url`."""
    client = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=10)

    def run(case: Case) -> dict[str, Any]:
        try:
            request = ReportGenerationRequest.model_validate_json(json.dumps(case.request))
        except ValidationError:
            return {"status": "failed", "error_code": "invalid_request", "categories": [], "calls": 0,
                    "checks": [], "cost_usd": 0.0}
        categories = categories_for(request)
        knowledge = [e for e in knowledge_for(categories) if e["category"] not in case.knowledge_without]
        return generate(client, request, knowledge, structured=structured)

    return run
