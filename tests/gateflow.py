"""The report path as the worker runs it (worker.llm.ReportWriter: prompt → call → gate → one repair → render),
as a dict per request for the tests of the fake LLM's modes and of the evaluation set."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import openai

from worker.categories import categories_for
from worker.errors import ReportError
from worker.evalrun import generator as eval_generator
from worker.gate import inspect
from worker.llm import ReportWriter
from worker.schemas import ReportGenerationRequest
from worker.settings import load

ROOT = Path(__file__).resolve().parents[1]
KB = json.loads((ROOT / "worker" / "data" / "knowledge_base.json").read_text())


def knowledge_for(categories: Sequence[str], kb: Sequence[Mapping] = KB) -> list[dict]:
    """The entries of these categories, in knowledge-base order (the pipeline's loader does the same)."""
    return [dict(entry) for entry in kb if entry["category"] in categories]


def generate(client: openai.OpenAI, request: ReportGenerationRequest, knowledge: Sequence[Mapping], *,
             model: str = "fake-llm", structured: str = "json_schema") -> dict[str, Any]:
    """One report through the real ReportWriter at the client's server: status, error_code, content, markdown,
    calls, per-call details and the gate's check-by-check view of each answer."""
    writer = ReportWriter(base_url=str(client.base_url), api_key="test-key", model=model, timeout=10,
                          max_retries=0, structured=structured)
    categories = categories_for(request)
    calls, checks = [], []

    def seen(call) -> None:
        calls.append({"finish_reason": call.finish_reason, "usage": call.prompt_tokens is not None})
        checks.append(inspect(call.text, categories=categories, knowledge=knowledge, request=request,
                              refusal=call.refusal, finish_reason=call.finish_reason))

    try:
        generated = writer.generate(request, categories, knowledge, on_answer=seen)
    except ReportError as exc:
        return {"status": "failed", "error_code": exc.code, "reason": str(exc), "categories": categories,
                "calls": len(calls), "call_details": calls, "checks": checks, "cost_usd": 0.0}
    finally:
        writer.close()
    return {"status": "success", "error_code": "", "categories": categories, "content": generated.content,
            "markdown": generated.markdown, "audit": generated.audit, "calls": len(calls), "call_details": calls,
            "checks": checks, "cost_usd": 0.0}


def generator(base_url: str, structured: str = "json_schema"):
    """A `generate(case) -> result` for the evaluation: `report-worker eval`'s own, against `base_url`."""
    settings = load({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "test-key", "OPENAI_MODEL": "fake-llm",
                     "LLM_MAX_RETRIES": "0", "LLM_STRUCTURED_OUTPUT": structured})
    return eval_generator(settings, KB)
