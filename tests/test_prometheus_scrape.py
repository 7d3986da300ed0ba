"""A real Prometheus server scrapes a running `report-worker run` and sees the right counts."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from tests.conftest import sample_request
from tests.services import free_port, wait_for


def query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())["data"]["result"]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_prometheus_scrapes_the_parent_and_counts_every_message(spawn, env, broker, db, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: scripts/tools.sh installs it (Debian package prometheus)"
    metrics_port, prometheus_port = free_port(), free_port()
    worker = spawn(["run", "--processes", "2", "--metrics-port", str(metrics_port)], env)
    worker.wait_event("ready", timeout=60)
    requests = [sample_request() for _ in range(10)]
    for request in requests:
        broker.publish(request)
    assert {r["status"] for r in broker.responses(10)} == {"success"}

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: report-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    server = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                               f"--web.listen-address=127.0.0.1:{prometheus_port}"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        up = wait_for(lambda: [r for r in query(prometheus_port, 'up{job="report-worker"}')
                               if r["value"][1] == "1"], 60, message="prometheus never saw the target up")
        assert up
        total = wait_for(lambda: query(prometheus_port, 'sum(report_worker_messages_total{outcome="success"})'),
                         30, message="no report_worker_messages_total in prometheus")
        assert float(total[0]["value"][1]) == 10
        children = query(prometheus_port, "report_worker_children")
        assert float(children[0]["value"][1]) == 2
    finally:
        server.terminate()
        server.wait(20)
