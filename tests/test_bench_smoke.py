"""The benchmark harness, run small so it cannot rot."""

import importlib.util
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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_peer_smoke_answers_every_request_on_both_sides(tmp_path):
    """report-worker P=1 T=4 and Celery threads c=4 at L=0, N=20 each, in one invocation, side by side."""
    assert importlib.util.find_spec("celery"), (
        "Celery is not installed: the peer benchmark needs the bench extra (pip install -e '.[bench]'; "
        "scripts/bootstrap.sh installs it)")
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "peer-smoke", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "report-worker beside Celery" in result.stdout and "celery threads c=4" in result.stdout
    [results_file] = tmp_path.glob("*/results.json")
    data = json.loads(results_file.read_text())
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
    result = subprocess.run([sys.executable, "-m", "bench", "--scenario", "cluster-smoke", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cluster round 1: single classic" in result.stdout and "3-node quorum" in result.stdout
    [results_file] = tmp_path.glob("*/results.json")
    runs = json.loads(results_file.read_text())["runs"]
    assert [r["scenario"] for r in runs] == ["cluster-smoke single classic", "cluster-smoke single quorum",
                                             "cluster-smoke 3-node quorum"]
    for run in runs:
        assert run["answered"] == run["succeeded"] == run["requests"] == run["reports_stored"] == 20, run["config"]
        assert run["reports_per_s"] > 0
