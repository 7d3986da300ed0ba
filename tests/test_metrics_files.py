"""The children's metric files: forked children summed, dead ones folded, bounded files, import order."""

import os
import subprocess
import sys

import pytest

from metrics.multiprocess import MetricsDirectory
from tests.conftest import ROOT
from tests.metricskit import fork_scenario


@pytest.mark.timeout(60)
def test_forked_children_are_summed_and_live_gauges_leave_with_mark_dead(tmp_path):
    result = fork_scenario("aggregate", tmp_path / "prom")
    # four children recorded 1..4 messages, observations and in-flight each
    assert result["alive"] == {"messages": 10, "processed": 10, "inflight": 10, "files": 15}
    # kill -9 alone changes nothing: the dead child's livesum gauge still counts...
    assert result["killed"]["inflight"] == 10
    # ...until mark_dead: its in-flight leaves the sum, its counts stay
    assert result["killed_marked"] == {"messages": 10, "processed": 10, "inflight": 9, "files": 14}
    # all gone: counters intact, only the parent's own zero gauge is left, dead children folded into one file per type
    assert result["all_dead"]["messages"] == 10 and result["all_dead"]["processed"] == 10
    assert result["all_dead"]["inflight"] == 0
    assert {n for n in result["file_names"] if "dead" in n} == {"counter_dead.db", "histogram_dead.db"}
    assert len(result["file_names"]) == 5


@pytest.mark.timeout(180)
def test_200_restarts_keep_files_bounded_scrapes_fast_and_counters_monotonic(tmp_path):
    result = fork_scenario("restarts", tmp_path / "folded", 200, 2)
    naive = fork_scenario("restarts", tmp_path / "naive", 200, 2, "naive")
    print(f"\n200 restarts, 2 at a time: folded: {result['final']['files']} files, final scrape "
          f"{result['final_scrape_ms']} ms, mean during restarts {result['mean_scrape_ms']} ms over "
          f"{result['scrapes']} scrapes (max {result['max_seconds'] * 1000:.1f} ms); library's mark_process_dead "
          f"only: {naive['final']['files']} files, final scrape {naive['final_scrape_ms']} ms")
    assert result["restarts"] == 200
    assert result["final"]["messages"] == 200 and result["final"]["processed"] == 200
    assert result["backwards"] == [], "a scrape saw a counter go down"
    assert result["scrapes"] > 10
    # 2 live children x 3 types + 3 parent files + 2 folded files
    assert result["max_files"] <= 11 and result["final"]["files"] <= 5
    assert naive["final"]["files"] > 400      # what we avoid: files grow with every restart
    assert naive["final"]["messages"] == 200


@pytest.mark.timeout(30)
def test_prepare_directory_refuses_when_prometheus_client_was_imported_first(tmp_path):
    code = ("import prometheus_client, metrics.multiprocess as m\n"
            f"m.prepare_directory({str(tmp_path / 'prom')!r})")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "ImportOrderError" in done.stderr


@pytest.mark.timeout(30)
def test_prepare_directory_exports_a_private_dir_and_wipes_only_metric_files(tmp_path):
    path = tmp_path / "prom"
    path.mkdir()
    (path / "counter_1.db").write_bytes(b"old")
    (path / "keep.txt").write_text("operator's")
    code = ("import os, stat, metrics.multiprocess as m\n"
            f"d = m.prepare_directory({str(path)!r})\n"
            "os.environ.pop('PROMETHEUS_MULTIPROC_DIR')\n"
            "own = m.prepare_directory()\n"
            "print(d.path, own.path, oct(stat.S_IMODE(os.stat(own.path).st_mode)), own.owned)\n"
            "own.remove(); print(os.path.exists(own.path))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    given, own, mode, owned = first.split()
    assert given == str(path) and mode == "0o700" and owned == "True" and second == "False"
    assert sorted(p.name for p in path.iterdir()) == ["keep.txt"]


@pytest.mark.timeout(60)
def test_an_empty_file_of_a_child_killed_while_creating_it_breaks_nothing(tmp_path):
    path = tmp_path / "prom"
    fork_scenario("populate", path)
    (path / "counter_999999.db").write_bytes(b"")     # created, never sized: kill -9 in that window
    directory = MetricsDirectory(str(path))
    families = {f.name: f for f in directory.collect()}
    assert {s.labels["outcome"]: s.value for s in families["report_worker_messages"].samples} == \
        {"success": 6, "retried": 2}
    directory.mark_dead(999999)
    assert not (path / "counter_999999.db").exists()
    families = {f.name: f for f in directory.collect()}
    assert sum(s.value for s in families["report_worker_messages"].samples) == 8
