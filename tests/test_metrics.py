"""Multiprocess collection with real forked children, the parent's metrics, and the HTTP endpoint."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from metrics import definitions
from metrics.multiprocess import MetricsDirectory
from metrics.parent import NAMES as PARENT_NAMES, ParentMetrics
from metrics.probes import Probes, service_checks
from metrics.queues import QueuePoller
from metrics.server import MetricsServer, build_registry
from tests.conftest import ROOT, sample_request
from tests.services import free_port, samples, wait_for
from worker import settings as settings_module
from worker.topology import declare

ALLOWED_LABELS = {"outcome", "stage", "model", "type", "cache", "result", "reason", "worker", "queue", "version"}


def fork_scenario(*args, timeout: float = 120) -> dict:
    """Run tests/metrics_fork.py in a fresh interpreter (prometheus_client not yet imported there)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-m", "tests.metrics_fork", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(done.stdout)


def get(url: str, accept: str | None = None, timeout: float = 10) -> tuple[int, dict, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def series(text: str, name: str, **labels) -> float | None:
    """The value of one series in Prometheus text exposition, or None."""
    found = samples(text, name, **labels)
    return found[0] if found else None


@pytest.fixture
def settings(env):
    return settings_module.load(environ=env)


@pytest.fixture
def endpoint(tmp_path, settings):
    """start(alive, consuming, checks, parent) -> a running MetricsServer over a populated directory."""
    servers = []

    def start(alive=lambda: 1, consuming=lambda: 1, checks=None, parent=None, timeout=2.0):
        directory = MetricsDirectory(str(tmp_path / "prom"))
        if not os.path.isdir(directory.path):
            fork_scenario("populate", directory.path)
        probes = Probes(alive, consuming, checks or {}, timeout=timeout, cache_seconds=0.5)
        collectors = [directory] + ([parent] if parent else [])
        server = MetricsServer(build_registry(*collectors), probes, "127.0.0.1", 0).start()
        server.url = f"http://127.0.0.1:{server.port}"
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- multiprocess directory -------------------------------------------------------------------------


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


def child_metrics():
    return [m for m in vars(definitions).values() if hasattr(m, "_labelnames") and hasattr(m, "_type")]


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


def known_series(settings) -> set[str]:
    """Every series name /metrics can show: children's definitions and the parent's families."""
    names = set()
    for metric in child_metrics():
        base = metric._name
        names |= {"counter": {base + "_total"}, "gauge": {base},
                  "histogram": {base + "_bucket", base + "_sum", base + "_count"}}[metric._type]
    parent = ParentMetrics(settings, poller=QueuePoller(settings))
    parent.poller.snapshot = lambda: {"request": (0, 0)}
    parent.poller.age = lambda: 1.0
    for family in parent.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    assert {n.removesuffix("_total") for n in names} >= set(PARENT_NAMES)
    return names


def expression_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(report_worker_[a-z_]+)", expr))


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
