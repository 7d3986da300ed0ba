"""The evaluation set: realistic requests with expected categories and outcomes, run against the fake LLM."""

import json

import pytest

from tests.gateflow import ROOT, generator
from worker.categories import categories_for
from worker.evaluation import Case, CaseResult, evaluate, format_summary, load_cases, summarize
from worker.fakellm import FakeLLM
from worker.gate import ERROR_CODES
from worker.schemas import ReportGenerationRequest

EVAL = ROOT / "tests" / "data" / "eval"
CASES = load_cases(EVAL)

pytestmark = pytest.mark.timeout(120)


def test_the_set_covers_what_the_issue_asks_for():
    real = [case for case in CASES if not case.fake_only]
    assert len(real) >= 20
    text = json.dumps([case.request for case in real], ensure_ascii=False).lower()
    for needle in ("non-smoker", "no history of", "denies", "ignore all previous instructions", "zoë", "血压",
                   "red_flags", '"request_id": 424242', '"smoker": null'):
        assert needle in text, needle
    assert any(len(case.categories) == 1 for case in real) and any(len(case.categories) >= 8 for case in real)
    assert any(case.knowledge_without for case in real)
    outcomes = {case.outcome for case in CASES}
    assert outcomes <= {"success", "invalid_request", *ERROR_CODES} and "invalid_request" in outcomes


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_expected_categories_of_each_case(case):
    try:
        request = ReportGenerationRequest.model_validate_json(json.dumps(case.request))
    except ValueError:
        assert case.outcome == "invalid_request"
        return
    assert categories_for(request) == case.categories


def test_the_whole_set_against_the_fake_llm():
    with FakeLLM() as fake:
        results = evaluate(CASES, generator(fake.url))
        stats = fake.stats()
    summary = summarize(results)
    assert summary["unexpected"] == [], format_summary(summary)
    assert summary["outcomes_as_expected"] == summary["categories_as_expected"] == 1.0
    assert summary["calls"] == stats["calls"] == sum(r.calls for r in results)
    assert summary["repairs"] == sum(1 for r in results if r.calls == 2)
    assert 0 < summary["checks"]["citations"] < 1 and summary["checks"]["answer"] < 1
    assert summary["cost_usd"] == 0.0
    text = format_summary(summary)
    assert text.startswith(f"cases: {len(CASES)}  outcomes as expected: 100%") and "UNEXPECTED" not in text


def test_a_real_model_run_leaves_out_the_fake_only_cases():
    real = load_cases(EVAL, include_fake=False)
    assert real and not any(case.fake_only for case in real)
    assert len(real) == len([case for case in CASES if not case.fake_only])


def test_summary_counts_rates_unknown_cost_and_surprises():
    case = Case("x", {}, ["cholesterol"], "success")
    checks = [{"answer": "pass", "sections": "pass", "safety": "unsafe_content", "citations": "pass",
               "numbers": "pass"},
              {"answer": "pass", "sections": "pass", "safety": "pass", "citations": "pass", "numbers": "pass"}]
    results = [CaseResult(case, "success", ["cholesterol"], 2, 0.002, checks),
               CaseResult(Case("y", {}, ["diabetes"], "success"), "number_mismatch", ["cholesterol"], 2, None,
                          [{**checks[1], "numbers": "number_mismatch"}] * 2)]
    summary = summarize(results)
    assert summary["checks"] == {"answer": 1.0, "sections": 1.0, "safety": 0.75, "citations": 1.0, "numbers": 0.5}
    assert summary["calls"] == 4 and summary["repairs"] == 2 and summary["cost_usd"] == 0.002
    assert summary["cases_without_cost"] == 1
    assert summary["outcomes_as_expected"] == 0.5 and summary["categories_as_expected"] == 0.5
    text = format_summary(summary)
    assert "cost: $0.0020 (+ 1 cases without a cost" in text
    assert "UNEXPECTED y: expected success, got number_mismatch; categories ['cholesterol'] (expected ['diabetes'])" \
        in text
