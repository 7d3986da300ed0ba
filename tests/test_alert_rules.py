"""deploy/prometheus: the rules load, their unit tests pass (promtool), and they query only our metrics."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
MISSING = "promtool not found: run `bash scripts/tools.sh` (installs Debian's prometheus package)"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(MISSING, pytrace=False)
    return path


def run(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@pytest.mark.timeout(60)
def test_rules_are_valid(promtool):
    output = run(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS" in output


@pytest.mark.timeout(120)
def test_rule_unit_tests_pass(promtool):
    output = run(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output


@pytest.mark.timeout(60)
def test_scrape_example_is_a_valid_config(promtool):
    output = run(promtool, "check", "config", "scrape.yml")
    assert "SUCCESS" in output


@pytest.mark.timeout(30)
def test_every_alert_has_a_unit_test_that_fires_it():
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)", rules, re.M))
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:", tests))
    assert len(alerts) >= 9 and alerts == fired, alerts ^ fired


@pytest.mark.timeout(30)
def test_rules_query_only_metrics_that_exist(env):
    from tests.metricskit import expression_metrics, known_series
    from worker.settings import load

    known = known_series(load(environ=env))
    exprs = rule_exprs((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert len(exprs) >= 9
    used = set().union(*map(expression_metrics, exprs))
    assert used and used <= known, used - known


def rule_exprs(text: str) -> list[str]:
    """The `expr:` values of a rules file, one-line or block scalars (no YAML library needed)."""
    lines = text.splitlines()
    exprs = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        if match.group(2).strip() not in ("|", "|-", ">", ">-"):
            exprs.append(match.group(2))
            continue
        block = []
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= len(match.group(1)):
                break
            block.append(following)
        exprs.append("\n".join(block))
    return exprs


@pytest.mark.timeout(60)
def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """Every panel query, with Grafana's variables filled in, parses as a recording rule."""
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "report-worker.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for n, expr in enumerate(exprs):
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        lines += [f"      - record: dashboard:query_{n}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
