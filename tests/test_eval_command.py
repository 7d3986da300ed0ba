"""`report-worker eval` runs the evaluation set through the real LLM client and gate (here: the fake LLM)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)


def eval_command(llm, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": "test-key",
           "OPENAI_MODEL": "gpt-4o-mini", "LLM_MAX_RETRIES": "0"}
    return subprocess.run([sys.executable, "-m", "worker.cli", "eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=150)


def test_eval_against_the_fake_llm_meets_every_expectation(llm):
    result = eval_command(llm)
    assert result.returncode == 0, result.stdout + result.stderr
    first, checks, calls = result.stdout.splitlines()[:3]
    assert "outcomes as expected: 100%" in first and "categories as expected: 100%" in first
    assert checks.startswith("checks passed (per answer):") and "numbers" in checks
    assert calls.startswith("LLM calls:") and "cost: $" in calls
    stats = llm.stats()
    assert stats["calls"] == int(calls.split()[2])      # every call the summary counts reached the LLM


def test_eval_json_and_a_case_that_goes_wrong_exits_one(llm, tmp_path):
    case = json.loads((ROOT / "tests" / "data" / "eval" / "01-sample.json").read_text())
    case["expected"]["outcome"] = "llm_refused"           # a good model does not refuse it: unexpected
    (tmp_path / "01-sample.json").write_text(json.dumps(case))
    result = eval_command(llm, "--cases", str(tmp_path), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["cases"] == 1 and summary["unexpected"][0]["outcome"] == "success"
    assert summary["calls"] == 1 and summary["cost_usd"] > 0
