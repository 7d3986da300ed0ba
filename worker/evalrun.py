"""`report-worker eval`: the evaluation set through the real LLM client and gate, against the configured LLM."""

import json
from importlib import resources
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from worker import clients
from worker.categories import categories_for
from worker.errors import Paused, ReportError
from worker.evaluation import Case, evaluate, format_summary, load_cases, summarize
from worker.gate import inspect
from worker.schemas import ReportGenerationRequest
from worker.settings import Settings

REPO_CASES = Path(__file__).resolve().parent.parent / "tests" / "data" / "eval"


def knowledge_base(path: str | None) -> list[dict]:
    source = Path(path) if path else resources.files("worker") / "data" / "knowledge_base.json"
    return [entry for entry in json.loads(source.read_text(encoding="utf-8")) if entry.get("status", "active") == "active"]


def generator(settings: Settings, kb: list[dict]):
    """`generate(case)` for worker.evaluation: ReportWriter.generate, each answer also scored check by check."""
    writer = clients.writer(settings)

    def generate(case: Case) -> dict[str, Any]:
        try:
            request = ReportGenerationRequest.model_validate_json(json.dumps(case.request))
        except ValidationError:
            return {"status": "failed", "error_code": "invalid_request", "categories": [], "calls": 0, "checks": []}
        categories = categories_for(request)
        knowledge = [e for e in kb if e["category"] in categories and e["category"] not in case.knowledge_without]
        checks: list[dict] = []
        costs: list[float | None] = []

        def scored(call) -> None:
            costs.append(call.cost_usd)
            checks.append(inspect(call.text, categories=categories, knowledge=knowledge, request=request,
                                  refusal=call.refusal, finish_reason=call.finish_reason))

        result: dict[str, Any] = {"categories": categories, "checks": checks}
        try:
            generated = writer.generate(request, categories, knowledge, on_answer=scored)
        except Paused as exc:
            raise SystemExit(f"report-worker eval: the LLM cannot be used ({exc.code}): {exc}") from None
        except ReportError as exc:
            return {**result, "status": "failed", "error_code": exc.code, "calls": len(checks),
                    "cost_usd": None if None in costs else sum(costs)}
        return {**result, "status": "success", "calls": generated.audit["llm_calls"], "cost_usd": generated.cost_usd}

    return generate


def run(settings: Settings, cases_dir: str | None, kb_path: str | None, include_fake: bool, out: IO[str],
        as_json: bool = False) -> int:
    """Print per-check pass rates, calls and cost; 1 when a case did not end as expected."""
    directory = Path(cases_dir) if cases_dir else REPO_CASES
    if not directory.is_dir():
        raise SystemExit(f"report-worker eval: no cases in {directory} (give --cases DIR)")
    cases = load_cases(directory, include_fake=include_fake)
    summary = summarize(evaluate(cases, generator(settings, knowledge_base(kb_path))))
    out.write((json.dumps(summary, indent=2) if as_json else format_summary(summary)) + "\n")
    return 0 if not summary["unexpected"] else 1
