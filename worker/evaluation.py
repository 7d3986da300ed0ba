"""The evaluation set: run each case through a `generate` callable and score outcomes, categories and checks."""

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.gate import CHECKS

Generate = Callable[["Case"], Mapping[str, Any]]


@dataclass(frozen=True)
class Case:
    """One request of the set and what a well-behaved model must lead to."""

    name: str
    request: dict
    categories: list[str]
    outcome: str  # "success", a gate error code, or "invalid_request"
    fake_only: bool = False  # its request_id selects a bad answer of the fake LLM; meaningless for a real model
    knowledge_without: tuple[str, ...] = ()  # categories whose knowledge entries are left out for this case
    description: str = ""


@dataclass
class CaseResult:
    case: Case
    outcome: str
    categories: list[str]
    calls: int
    cost_usd: float | None
    checks: list[dict[str, str]] = field(default_factory=list)

    @property
    def outcome_ok(self) -> bool:
        return self.outcome == self.case.outcome

    @property
    def categories_ok(self) -> bool:
        return self.outcome == "invalid_request" or self.categories == self.case.categories


def load_cases(directory: str | Path, include_fake: bool = True) -> list[Case]:
    """Every `*.json` case of a directory, by file name; cases that need the fake LLM only when asked."""
    cases = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        expected = data["expected"]
        case = Case(name=path.stem, request=data["request"], categories=list(expected.get("categories") or []),
                    outcome=expected["outcome"], fake_only=bool(data.get("fake_only")),
                    knowledge_without=tuple(data.get("knowledge_without") or ()),
                    description=data.get("description", ""))
        if include_fake or not case.fake_only:
            cases.append(case)
    return cases


def evaluate(cases: Iterable[Case], generate: Generate) -> list[CaseResult]:
    """Run every case; `generate(case)` makes its report from `case.request` (leaving out the entries of
    `case.knowledge_without`) and returns status, error_code, categories, calls, cost_usd and checks, the
    gate's `inspect` of each answer."""
    results = []
    for case in cases:
        result = generate(case)
        outcome = "success" if result.get("status") == "success" else str(result.get("error_code") or "failed")
        results.append(CaseResult(case, outcome, list(result.get("categories") or []), int(result.get("calls") or 0),
                                  result.get("cost_usd"), list(result.get("checks") or [])))
    return results


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    """Pass rates of outcomes, categories and each gate check (over every answer checked), calls and cost."""
    passed: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    for result in results:
        for checks in result.checks:
            for name in CHECKS:
                if checks.get(name, "skipped") != "skipped":
                    judged[name] += 1
                    passed[name] += checks[name] == "pass"
    costs = [result.cost_usd for result in results]
    count = len(results) or 1
    return {
        "cases": len(results),
        "outcomes_as_expected": sum(r.outcome_ok for r in results) / count,
        "categories_as_expected": sum(r.categories_ok for r in results) / count,
        "checks": {name: (passed[name] / judged[name] if judged[name] else None) for name in CHECKS},
        "calls": sum(r.calls for r in results),
        "repairs": sum(max(0, r.calls - 1) for r in results),
        "cost_usd": round(sum(cost for cost in costs if cost is not None), 6),
        "cases_without_cost": sum(cost is None for cost in costs),   # no usage reported, or a model without a price
        "unexpected": [{"case": r.case.name, "expected": r.case.outcome, "outcome": r.outcome,
                        "categories": r.categories, "expected_categories": r.case.categories}
                       for r in results if not (r.outcome_ok and r.categories_ok)],
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a few lines of text for the `eval` command."""
    def percent(rate: float | None) -> str:
        return "n/a" if rate is None else f"{rate * 100:.0f}%"

    lines = [
        f"cases: {summary['cases']}  outcomes as expected: {percent(summary['outcomes_as_expected'])}  "
        f"categories as expected: {percent(summary['categories_as_expected'])}",
        "checks passed (per answer): "
        + "  ".join(f"{name} {percent(rate)}" for name, rate in summary["checks"].items()),
        f"LLM calls: {summary['calls']} (repairs: {summary['repairs']})  cost: ${summary['cost_usd']:.4f}"
        + (f" (+ {summary['cases_without_cost']} cases without a cost: no usage reported or no price)"
           if summary.get("cases_without_cost") else ""),
    ]
    lines += [f"UNEXPECTED {item['case']}: expected {item['expected']}, got {item['outcome']}"
              + ("" if item["categories"] == item["expected_categories"] or item["outcome"] == "invalid_request"
                 else f"; categories {item['categories']} (expected {item['expected_categories']})")
              for item in summary["unexpected"]]
    return "\n".join(lines)
