"""The benchmark harness, run small so it cannot rot."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_smoke_run_prints_a_table_and_writes_figures(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "smoke", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rep/s" in result.stdout and "smoke P=2 T=4" in result.stdout
    [results_file] = tmp_path.glob("*/results.json")
    data = json.loads(results_file.read_text())
    [run] = data["runs"]
    assert run["answered"] == run["requests"] == run["reports_stored"] == 20
    assert 0 < run["efficiency"] <= 1.05
    assert run["reconnects"] == 0 and run["redeliveries"] == 0
    assert run["cpu_ms_per_report"] > 0 and run["max_child_rss_mb"] > 0
    assert data["machine"]["cpus"] >= 1 and data["machine"]["rabbitmq"]
