"""What the parent serves: /metrics with children, parent and queue depths, /healthz, /readyz, its socket."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from metrics.multiprocess import MetricsDirectory
from metrics.parent import ParentMetrics
from metrics.probes import service_checks
from metrics.queues import QueuePoller
from tests.services import free_port, wait_for
from worker import settings as settings_module
from worker.topology import declare
from tests.metricskit import get, series


# -- parent metrics, endpoint ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_metrics_endpoint_serves_children_parent_and_queue_depths(endpoint, settings, broker, names):
    declare(broker.connection, settings)
    for _ in range(3):
        broker.publish(b"{}", queue=names["RABBITMQ_DLQ"])
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(20_000_000); time.sleep(60)"])
    parent = ParentMetrics(settings, poller=QueuePoller(settings, interval=0.2))
    parent.start()
    try:
        parent.child_started(0, child.pid)
        server = endpoint(parent=parent)
        wait_for(lambda: parent.poller.snapshot().get("dlq"), 20, message="queue poller saw nothing")
        status, headers, text = get(server.url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert series(text, "report_worker_messages_total", outcome="success") == 6
        assert series(text, "report_worker_stage_seconds_count", stage="llm") == 2
        assert series(text, "report_worker_llm_tokens_total", model="gpt-4o", type="prompt") == 200
        assert series(text, "report_worker_children") == 1
        assert series(text, "report_worker_capacity_messages") == settings.worker_threads
        assert series(text, "report_worker_child_rss_bytes", worker="0") > 20_000_000
        cpu = series(text, "report_worker_child_cpu_seconds_total", worker="0")
        assert cpu is not None and cpu >= 0
        assert series(text, "report_worker_queue_messages", queue="dlq") == 3
        assert series(text, "report_worker_queue_messages", queue="request") == 0
        assert series(text, "report_worker_queue_consumers", queue="request") == 0
        assert series(text, "report_worker_queue_messages", queue="retry_0.3s") == 0
        assert series(text, "report_worker_build_info", version=parent.version) == 1
        assert series(text, "process_resident_memory_bytes") > 0      # the parent's own
        child.kill()
        child.wait()
        parent.child_exited(0, child.pid, "signal_9")
        _, _, text = get(server.url + "/metrics")
        assert series(text, "report_worker_children") == 0
        assert series(text, "report_worker_child_restarts_total", reason="signal_9") == 1
        assert series(text, "report_worker_child_rss_bytes", worker="0") is None
        assert series(text, "report_worker_child_cpu_seconds_total", worker="0") >= cpu   # never backwards
        parent.child_exited(1, 12345, "ok", restart=False)                             # a stop, not a restart
        _, _, text = get(server.url + "/metrics")
        assert series(text, "report_worker_child_restarts_total", reason="ok") is None
        status, headers, text = get(server.url + "/metrics", accept="application/openmetrics-text")
        assert headers["Content-Type"].startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    finally:
        parent.stop()
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.timeout(30)
def test_the_queue_poller_skips_missing_queues_quietly(settings, broker, names, caplog):
    broker.channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], durable=True)
    broker.publish(b"{}")
    poller = QueuePoller(settings, interval=0.1)
    poller.start()
    try:
        wait_for(lambda: poller.snapshot().get("request") == (1, 0), 10)
        time.sleep(0.3)                                  # a few more polls, each meeting missing queues
        assert set(poller.snapshot()) == {"request"}
        assert poller.age() < 1
    finally:
        poller.stop()
    assert not [r for r in caplog.records if "404" in r.getMessage()]
    assert QueuePoller(settings).age() is None           # not started: no age to report


@pytest.mark.timeout(30)
def test_two_children_share_a_worker_index_during_a_rolling_replacement(settings):
    import psutil

    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    old, new = (subprocess.Popen(sleeper, stdout=subprocess.PIPE, text=True) for _ in range(2))
    try:
        assert old.stdout.readline() == new.stdout.readline() == "up\n"
        parent = ParentMetrics(settings, poller=QueuePoller(settings), consuming=lambda: 1)
        parent.child_started(1, old.pid)
        before = {f.name: f for f in parent.collect()}
        parent.child_started(1, new.pid)                      # successor in the same slot
        both = {f.name: f for f in parent.collect()}
        assert both["report_worker_children"].samples[0].value == 2
        assert both["report_worker_capacity_messages"].samples[0].value == settings.worker_threads
        [rss_one] = before["report_worker_child_rss_bytes"].samples
        [rss_both] = both["report_worker_child_rss_bytes"].samples
        rss_each = sum(psutil.Process(p.pid).memory_info().rss for p in (old, new))
        assert rss_both.labels == {"worker": "1"} and rss_both.value == pytest.approx(rss_each, rel=0.2)
        assert rss_both.value > rss_one.value
        old.kill()
        old.wait()
        parent.child_exited(1, old.pid, "reload")
        after = {f.name: f for f in parent.collect()}
        assert after["report_worker_children"].samples[0].value == 1
        assert after["report_worker_child_rss_bytes"].samples[0].value < rss_both.value
        [cpu_both] = both["report_worker_child_cpu_seconds"].samples
        [cpu_after] = after["report_worker_child_cpu_seconds"].samples
        assert cpu_after.value >= cpu_both.value
        assert [(s.labels, s.value) for s in after["report_worker_child_restarts"].samples] == [({"reason": "reload"}, 1)]
    finally:
        for proc in (old, new):
            proc.kill()
            proc.wait()


@pytest.mark.timeout(30)
def test_a_taken_metrics_port_is_a_configuration_error(env, tmp_path):
    import socket

    from metrics.endpoint import Endpoint

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = settings_module.load(environ={**env, "METRICS_PORT": str(taken.getsockname()[1])})
        endpoint = Endpoint(settings, MetricsDirectory(str(tmp_path / "prom")), checks={})
        with pytest.raises(settings_module.SettingsError, match="METRICS_BIND/METRICS_PORT .* cannot listen"):
            endpoint.start()
    off = Endpoint(settings_module.load(environ={**env, "METRICS_PORT": "0"}), MetricsDirectory(str(tmp_path / "p")), {})
    assert off.server is None


@pytest.mark.timeout(30)
def test_healthz_needs_the_parent_loop_and_a_live_child(endpoint):
    alive = {"n": 2}
    server = endpoint(alive=lambda: alive["n"])
    status, _, body = get(server.url + "/healthz")
    assert status == 503 and json.loads(body)["failed"] == ["loop"]
    server.probes.heartbeat()
    status, headers, body = get(server.url + "/healthz")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["status"] == "ok" and json.loads(body)["children"] == 2
    alive["n"] = 0
    status, _, body = get(server.url + "/healthz")
    assert status == 503 and json.loads(body)["failed"] == ["children"]
    server.probes.stale_after = 0.0
    alive["n"] = 1
    time.sleep(0.01)
    assert get(server.url + "/healthz")[0] == 503
    assert get(server.url + "/nothing")[0] == 404


@pytest.mark.timeout(60)
def test_readyz_says_which_service_check_failed(endpoint, env, mongo):
    broken = settings_module.load(environ={**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    consuming = {"n": 1}
    server = endpoint(consuming=lambda: consuming["n"], checks=service_checks(broken))
    server.probes.heartbeat()
    status, _, body = get(server.url + "/readyz")
    body = json.loads(body)
    assert status == 503 and body["failed"] == ["redis"]
    assert body["checks"]["redis"]["ok"] is False and "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["rabbitmq"]["ok"] and body["checks"]["mongodb"]["ok"]

    good = endpoint(consuming=lambda: consuming["n"], checks=service_checks(settings_module.load(environ=env)))
    good.probes.heartbeat()
    status, _, body = get(good.url + "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    consuming["n"] = 0
    time.sleep(0.6)                                    # past the check cache
    status, _, body = get(good.url + "/readyz")
    assert status == 503 and json.loads(body)["failed"] == ["consuming"]


@pytest.mark.timeout(30)
def test_a_hung_check_neither_hangs_readyz_nor_blocks_metrics(endpoint):
    release = threading.Event()
    server = endpoint(checks={"mongodb": lambda: release.wait(20)}, timeout=1.0)
    server.probes.heartbeat()
    answers = {}
    waiter = threading.Thread(target=lambda: answers.update(readyz=get(server.url + "/readyz")))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.1)
    status, _, text = get(server.url + "/metrics", timeout=2)
    metrics_seconds = time.monotonic() - started
    waiter.join(5)
    release.set()
    assert status == 200 and "report_worker_messages_total" in text and metrics_seconds < 1.0
    status, _, body = answers["readyz"]
    assert status == 503 and json.loads(body)["checks"]["mongodb"]["error"] == "no answer within 1 s"


@pytest.mark.timeout(30)
def test_a_forked_child_does_not_keep_the_listening_socket(endpoint):
    server = endpoint()
    fd = server._httpd.socket.fileno()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.fstat(fd)
            os.write(write, b"open" if server._httpd is not None else b"dropped-object-fd-open")
        except OSError:
            os.write(write, b"closed")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64) == b"closed"
    assert get(server.url + "/metrics")[0] == 200


# -- labels, settings, dashboard ---------------------------------------------------------------------
