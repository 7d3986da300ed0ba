"""The benchmark harness, run small so it cannot rot."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_bench(tmp_path, scenario: str, timeout: float) -> tuple[str, dict]:
    """`python -m bench --scenario SCENARIO`: what it printed and its results.json; fails on a non-zero exit."""
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", scenario, "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    [results_file] = tmp_path.glob("*/results.json")
    return result.stdout, json.loads(results_file.read_text())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_smoke_run_prints_a_table_and_writes_figures(tmp_path):
    stdout, data = run_bench(tmp_path, "smoke", timeout=220)
    assert "rep/s" in stdout and "smoke P=2 T=4" in stdout
    [run] = data["runs"]
    assert run["answered"] == run["requests"] == run["reports_stored"] == 20
    assert 0 < run["efficiency"] <= 1.05
    assert run["reconnects"] == 0 and run["redeliveries"] == 0
    assert run["cpu_ms_per_report"] > 0 and run["max_child_rss_mb"] > 0
    assert data["machine"]["cpus"] >= 1 and data["machine"]["rabbitmq"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_peer_smoke_answers_every_request_on_both_sides(tmp_path):
    """report-worker P=1 T=4 and Celery threads c=4 at L=0, N=20 each, in one invocation, side by side."""
    assert importlib.util.find_spec("celery"), (
        "Celery is not installed: the peer benchmark needs the bench extra (pip install -e '.[bench]'; "
        "scripts/bootstrap.sh installs it)")
    stdout, data = run_bench(tmp_path, "peer-smoke", timeout=110)
    assert "report-worker beside Celery" in stdout and "celery threads c=4" in stdout
    ours, celery = data["runs"]
    assert (ours["engine"], celery["engine"]) == ("report-worker", "celery")
    for run in (ours, celery):
        assert run["answered"] == run["succeeded"] == run["requests"] == run["reports_stored"] == 20, run["config"]
        assert run["cpu_ms_per_report"] > 0 and run["reports_per_s"] > 0
        assert {"llm", "store", "publish"} <= set(run["stage_means"]), run["stage_means"]
        assert run["db_per_report"]["requests"] >= 1, run["db_per_report"]  # serverStatus counters were read
    [pair] = data["pairs"]
    assert pair["ratio"] == round(ours["reports_per_s"] / celery["reports_per_s"], 3)
    assert data["machine"]["celery"].startswith("5.")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_bench_cluster_smoke_runs_on_the_main_node_and_on_the_three_node_cluster(tmp_path):
    """P=1 T=4 L=0 N=20 on the single node (classic, quorum) and on scripts/cluster.sh's nodes (quorum)."""
    stdout, data = run_bench(tmp_path, "cluster-smoke", timeout=400)
    assert "cluster round 1: single classic" in stdout and "3-node quorum" in stdout
    runs = data["runs"]
    assert [r["scenario"] for r in runs] == ["cluster-smoke single classic", "cluster-smoke single quorum",
                                             "cluster-smoke 3-node quorum"]
    for run in runs:
        assert run["answered"] == run["succeeded"] == run["requests"] == run["reports_stored"] == 20, run["config"]
        assert run["reports_per_s"] > 0
