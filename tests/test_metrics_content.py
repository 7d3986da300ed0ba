"""What the metrics say and may not say: no ids in labels, a real pipeline's counts, the dashboard, an arbiter."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metrics.multiprocess import MetricsDirectory
from metrics.parent import ParentMetrics
from metrics.queues import QueuePoller
from tests.conftest import ROOT, sample_request
from tests.services import free_port, wait_for
from worker import settings as settings_module
from tests.metricskit import ALLOWED_LABELS, child_metrics, expression_metrics, get, known_series, series


@pytest.mark.timeout(30)
def test_no_metric_has_a_label_that_could_carry_an_id(settings):
    for metric in child_metrics():
        assert set(metric._labelnames) <= ALLOWED_LABELS, metric._name
        if metric._type == "gauge":
            assert metric._multiprocess_mode.startswith("live"), f"{metric._name}: gauges must die with the process"
    parent = ParentMetrics(settings, poller=QueuePoller(settings))
    for family in parent.collect():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, family.name


@pytest.mark.timeout(120)
def test_a_real_pipeline_run_exposes_counts_and_no_ids(consumer, broker, db, cache, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    directory = MetricsDirectory(str(tmp_path / "prom"))
    directory.wipe()
    worker = consumer(PROMETHEUS_MULTIPROC_DIR=directory.path)
    requests = [sample_request(request_id=f"rid-{i}-7f3a", user_id=f"uid-{i}-9c1b") for i in range(3)]
    requests.append({"request_id": "rid-bad-7f3a", "user_id": "uid-bad-9c1b", "labs": "x"})  # invalid, no patient
    for request in requests:
        broker.publish(request)
    broker.responses(4, timeout=60)
    registry = CollectorRegistry()
    registry.register(directory)
    text = wait_for(lambda: (t := generate_latest(registry).decode()) and
                    series(t, "report_worker_messages_total", outcome="invalid") == 1 and t, 10)
    assert series(text, "report_worker_messages_total", outcome="success") == 3
    assert series(text, "report_worker_processing_seconds_count") == 4
    assert series(text, "report_worker_stage_seconds_count", stage="llm") == 3
    assert series(text, "report_worker_inflight_messages") == 0
    patient = json.dumps(requests[0].get("patient", {}))
    for needle in ("rid-", "uid-", "7f3a", "9c1b"):
        assert needle not in text
    for value in re.findall(r'="([^"]*)"', text):
        assert len(value) < 40 and value not in patient, value
    worker.stop()
    directory.mark_dead(worker.pid)
    text = generate_latest(registry).decode()
    assert series(text, "report_worker_messages_total", outcome="success") == 3
    assert series(text, "report_worker_inflight_messages") is None
    assert {Path(f).name for f in directory.files()} <= {"counter_dead.db", "histogram_dead.db"}


@pytest.mark.timeout(30)
def test_metrics_port_and_bind_settings(env):
    s = settings_module.load(environ=env)
    assert (s.metrics_port, s.metrics_bind) == (9810, "127.0.0.1")
    s = settings_module.load(environ={**env, "METRICS_PORT": "0", "METRICS_BIND": "0.0.0.0"})
    assert (s.metrics_port, s.metrics_bind) == (0, "0.0.0.0")
    with pytest.raises(settings_module.SettingsError, match="METRICS_PORT"):
        settings_module.load(environ={**env, "METRICS_PORT": "70000"})


@pytest.mark.timeout(30)
def test_dashboard_is_valid_json_and_queries_only_known_metrics(settings):
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "report-worker.json").read_text())
    known = known_series(settings)
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(panels) >= 8 and all(p.get("targets") for p in panels)
    used = set().union(*map(expression_metrics, exprs))
    assert used and used <= known, used - known
    wanted_groups = {"report_worker_messages_total", "report_worker_stage_seconds_bucket",
                     "report_worker_inflight_messages", "report_worker_capacity_messages",
                     "report_worker_child_restarts_total", "report_worker_queue_messages",
                     "report_worker_llm_tokens_total", "report_worker_llm_cost_usd_total",
                     "report_worker_cache_requests_total", "report_worker_llm_requests_total"}
    assert wanted_groups <= used, wanted_groups - used
    assert len({p["id"] for p in panels}) == len(panels)



# -- the endpoint attached to a real arbiter ---------------------------------------------------------


def children_of(pid: int) -> list[int]:
    import psutil

    return sorted(p.pid for p in psutil.Process(pid).children())


@pytest.mark.timeout(180)
def test_an_arbiter_with_the_endpoint_attached_serves_all_children(env, broker, db, cache, tmp_path):
    port = free_port()
    prom = tmp_path / "prom"
    log_path = tmp_path / "arbiter.log"
    run_env = {**env, "WORKER_PROCESSES": "2", "WORKER_THREADS": "2", "METRICS_PORT": str(port),
               "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "tests.metrics_arbiter"], cwd=ROOT, env=run_env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return get(url + "/readyz", timeout=5)[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, interval=0.2, message=f"never ready; log:\n{log_path.read_text()[-3000:]}")
        assert get(url + "/healthz")[0] == 200
        import psutil

        for pid in children_of(proc.pid):     # the listening socket stayed with the parent
            assert not [c for c in psutil.Process(pid).net_connections("tcp") if c.laddr.port == port]
        for _ in range(5):
            broker.publish(sample_request())
        broker.responses(5, timeout=60)

        def scrape():
            return get(url + "/metrics")[2]

        text = wait_for(lambda: (t := scrape()) and series(t, "report_worker_messages_total", outcome="success") == 5
                        and t, 10)
        assert series(text, "report_worker_children") == 2
        assert series(text, "report_worker_capacity_messages") == 4
        assert series(text, "report_worker_child_rss_bytes", worker="1") > 0
        assert series(text, "report_worker_inflight_messages") == 0
        wait_for(lambda: series(scrape(), "report_worker_queue_consumers", queue="request") == 2, 20)

        victim = children_of(proc.pid)[0]
        os.kill(victim, 9)
        text = wait_for(lambda: (t := scrape()) and
                        series(t, "report_worker_child_restarts_total", reason="signal_9") == 1 and
                        series(t, "report_worker_children") == 2 and t, 20)
        assert series(text, "report_worker_messages_total", outcome="success") == 5    # kept after the kill
        wait_for(ready, 30, interval=0.2)
        for _ in range(3):
            broker.publish(sample_request())
        broker.responses(3, timeout=60)
        wait_for(lambda: series(scrape(), "report_worker_messages_total", outcome="success") == 8, 10)
        started = time.perf_counter()
        for _ in range(20):
            scrape()
        print(f"\nscrape with 2 children: {(time.perf_counter() - started) / 20 * 1000:.1f} ms per request "
              f"(HTTP included), {len(list(prom.glob('*.db')))} files")
        assert len(list(prom.glob("*.db"))) <= 2 * 3 + 3 + 2

        proc.terminate()
        assert proc.wait(60) == 0
        assert not list(prom.glob("*.db"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
