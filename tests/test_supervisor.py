"""`report-worker run`: the prefork parent and its children, as real processes on real services."""

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid

import psutil
import pytest

from tests.conftest import sample_request
from tests.harness import gone, log_time
from tests.services import wait_for
from worker import exitcodes


def watch_consumers(broker, queue: str, until, timeout: float) -> list[int]:
    """Poll the broker's consumer count of `queue` until `until()` is true; every count seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"still waiting after {timeout} s; consumer counts {seen[-20:]}"
        seen.append(broker.consumers(queue))
        broker.connection.sleep(0.02)
    seen.append(broker.consumers(queue))
    return seen


def answered_once_each(broker, db, requests, timeout: float = 60) -> None:
    """Every request got a success response (redeliveries may answer twice) and exactly one stored report."""
    wanted = {r["request_id"] for r in requests}
    answered: set[str] = set()
    deadline = time.monotonic() + timeout
    while answered != wanted:
        assert time.monotonic() < deadline, f"{len(wanted - answered)} requests never answered"
        for response in broker.responses(1, timeout=deadline - time.monotonic()):
            assert response["status"] == "success", response
            answered.add(response["request_id"])
    assert db.medical_reports.count_documents({}) == len(requests)
    assert set(db.medical_reports.distinct("request_id")) == wanted


@pytest.mark.timeout(60)
def test_two_children_consume_each_with_its_own_identity(supervisor, broker, db, names):
    parent = supervisor("--processes", "2", "--threads", "2")
    children = parent.wait_children(2)
    assert sorted(children) == [1, 2] and len(set(children.values())) == 2
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2
    consuming = {e["pid"]: e for e in parent.events("consuming")}
    assert set(consuming) == set(children.values())
    assert all(consuming[pid]["index"] == index for index, pid in children.items())
    assert all(psutil.Process(pid).ppid() == parent.pid for pid in children.values())
    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_child_killed_under_load_is_replaced_within_a_second(supervisor, broker, db, llm, names):
    llm.configure(latency=0.3)
    parent = supervisor("--processes", "2", "--threads", "4")
    victim = parent.wait_children(2)[1]
    requests = [sample_request() for _ in range(40)]
    for request in requests:
        broker.publish(request)
    wait_for(lambda: db.medical_reports.count_documents({}) >= 5, 30)
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: [e for e in parent.events("consuming") if e["index"] == 1 and e["pid"] != victim],
                        5, message=parent.output()[-3000:])
    replace_seconds = log_time(replaced[0]) - killed_at
    print(f"\nFIGURE replace_killed_child_seconds={replace_seconds:.3f}")
    assert replace_seconds < 1.0
    [exit_event] = [e for e in parent.events("child_exited") if e["child_pid"] == victim]
    assert exit_event["code"] == -signal.SIGKILL and exit_event["reason"] == "signal_9"
    assert parent.events("child_restarted")
    answered_once_each(broker, db, requests)
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_children_die_with_a_killed_parent(supervisor, broker, names):
    parent = supervisor("--processes", "2")
    children = parent.wait_children(2)
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2
    os.kill(parent.pid, signal.SIGKILL)
    wait_for(lambda: broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 0, 5,
             message="children still consuming after the parent was killed")
    wait_for(lambda: all(gone(pid) for pid in children.values()), 5)
    shutil.rmtree(parent.events("arbiter_started")[0]["heartbeats"])  # a SIGKILLed parent cannot tidy up


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_finishes_inflight_keeps_the_rest_queued_and_exits_0(supervisor, broker, db, llm, names):
    llm.configure(latency=3.0)
    parent = supervisor("--processes", "2", "--threads", "2", "--prefetch", "4", GRACEFUL_TIMEOUT="20")
    requests = [sample_request() for _ in range(16)]
    for request in requests:
        broker.publish(request)
    wait_for(lambda: llm.stats()["calls"] >= 4, 20)
    termed_at = time.monotonic()
    parent.signal(signal.SIGTERM)
    assert parent.wait(30) == 0
    assert time.monotonic() - termed_at < 20
    finished = db.medical_reports.count_documents({})
    assert 4 <= finished < len(requests)
    assert len(broker.responses(finished, timeout=5)) == finished
    assert broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == len(requests) - finished  # nothing lost
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 0
    assert {e["reason"] for e in parent.events("child_exited")} == {"shutdown"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hup_reloads_the_config_file_and_replaces_children_one_at_a_time(supervisor, broker, db, names, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("RABBITMQ_PREFETCH_COUNT = 2\n")
    parent = supervisor("--processes", "2", "--config", str(config))
    old = parent.wait_children(2)
    assert {e["prefetch"] for e in parent.events("worker_started")} == {2}
    config.write_text("RABBITMQ_PREFETCH_COUNT = 3\n")
    parent.signal(signal.SIGHUP)
    seen = watch_consumers(broker, names["RABBITMQ_REQUEST_QUEUE"], lambda: parent.events("reloaded"), 30)
    print(f"\nFIGURE hup_consumer_counts min={min(seen)} max={max(seen)} polls={len(seen)}")
    assert min(seen) >= 1 and max(seen) >= 3  # never down; a successor joined before its predecessor left
    wait_for(lambda: all(gone(pid) for pid in old.values()), 10)
    new = parent.wait_children(2)
    assert not set(new.values()) & set(old.values())
    started = [e for e in parent.events("worker_started") if e["pid"] in new.values()]
    assert {e["prefetch"] for e in started} == {3}
    steps = [(e["event"], e.get("child_pid")) for e in parent.events()
             if e["event"] in ("child_replacing", "child_stopping")]
    assert [event for event, _ in steps] == ["child_replacing", "child_stopping"] * 2  # one at a time
    assert {pid for _, pid in steps} == set(old.values())
    request = sample_request()
    broker.publish(request)
    assert broker.responses(1)[0]["request_id"] == request["request_id"]


@pytest.mark.timeout(60)
def test_a_bad_config_on_hup_keeps_the_running_children(supervisor, broker, names, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("RABBITMQ_PREFETCH_COUNT = 2\n")
    parent = supervisor("--processes", "2", "--config", str(config))
    before = parent.wait_children(2)
    config.write_text("RABBITMQ_PREFETCH_COUNT = -1\n")
    parent.signal(signal.SIGHUP)
    [failed] = parent.wait_event("reload_failed")
    assert "RABBITMQ_PREFETCH_COUNT" in failed["error"]
    assert parent.ready_children() == before and not parent.events("child_replacing")
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2


@pytest.mark.timeout(60)
def test_quit_stops_at_once(supervisor, broker, llm, names):
    llm.configure(latency=30.0)
    parent = supervisor("--processes", "2", GRACEFUL_TIMEOUT="60")
    children = parent.wait_children(2)
    broker.publish(sample_request())
    wait_for(lambda: llm.stats()["calls"] >= 1, 10)
    parent.signal(signal.SIGQUIT)
    assert parent.wait(5) == 0
    assert all(gone(pid) for pid in children.values())
    wait_for(lambda: broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == 1, 5)  # the broker requeued it


@pytest.mark.timeout(60)
def test_ttin_and_ttou_change_the_number_of_children(supervisor, broker, names):
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    parent = supervisor("--processes", "1")
    parent.signal(signal.SIGTTIN)
    wait_for(lambda: broker.consumers(queue) == 2, 10)
    parent.signal(signal.SIGTTIN)
    wait_for(lambda: broker.consumers(queue) == 3, 10)
    assert sorted(parent.wait_children(3)) == [1, 2, 3]
    parent.signal(signal.SIGTTOU)
    wait_for(lambda: broker.consumers(queue) == 2, 10)
    assert sorted(parent.wait_children(2)) == [1, 2]
    assert [e["reason"] for e in parent.events("child_exited")] == ["scale_down"]
    for _ in range(3):
        parent.signal(signal.SIGTTOU)
    wait_for(lambda: broker.consumers(queue) == 1, 10)
    assert parent.proc.poll() is None and list(parent.wait_children(1)) == [1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recycle_after_max_tasks_keeps_a_consumer_throughout(supervisor, broker, db, names):
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    parent = supervisor("--processes", "1", "--max-tasks-per-child", "3", MAX_TASKS_JITTER="0")
    first = parent.wait_children(1)[1]
    requests = [sample_request() for _ in range(3)]
    for request in requests:
        broker.publish(request)
    exited = lambda: [e for e in parent.events("child_exited") if e["child_pid"] == first]  # noqa: E731
    seen = watch_consumers(broker, queue, exited, 30)
    assert min(seen) >= 1, seen
    [event] = exited()
    assert event["reason"] == "recycle" and event["code"] == exitcodes.RECYCLE and event["settled"] >= 3
    [asked] = [e for e in parent.events("recycle_requested") if e["pid"] == first]
    assert asked["reason"] == "tasks"
    second = parent.wait_children(1)[1]
    assert second != first
    more = [sample_request() for _ in range(3)]
    for request in more:
        broker.publish(request)
    answered_once_each(broker, db, requests + more)
    wait_for(lambda: [e for e in parent.events("child_exited") if e["child_pid"] == second], 20)
    assert not parent.events("child_restarted") and not parent.events("child_backoff")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recycle_when_rss_exceeds_a_tiny_limit(supervisor, broker, db, names):
    parent = supervisor("--processes", "1", "--max-memory-per-child", "1")
    first = parent.wait_children(1)[1]
    assert not parent.events("recycle_requested")  # checked between tasks only: no task, no recycle
    requests = [sample_request() for _ in range(4)]
    for request in requests:
        broker.publish(request)
    seen = watch_consumers(broker, names["RABBITMQ_REQUEST_QUEUE"],
                           lambda: [e for e in parent.events("child_exited") if e["child_pid"] == first], 30)
    assert min(seen) >= 1, seen
    asked = [e for e in parent.events("recycle_requested") if e["pid"] == first]
    assert asked[0]["reason"] == "memory" and asked[0]["rss_mb"] > 1
    answered_once_each(broker, db, requests)
    assert all(e["reason"] == "recycle" for e in parent.events("child_exited"))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_crash_loop_backs_off_then_gives_up(supervisor, env):
    started = time.monotonic()
    parent = supervisor("--processes", "2", wait_ready=False, RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/",
                        CONNECT_TIMEOUT="1", RESTART_LIMIT="3")
    assert parent.wait(60) == exitcodes.GAVE_UP
    spawns = parent.spawned()
    assert len(spawns) <= 6, f"{len(spawns)} spawns: a hot loop"
    exits = parent.events("child_exited")
    assert exits and all(e["reason"] in ("cannot_connect", "shutdown") for e in exits)
    delays = [e["retry_in"] for e in parent.events("child_backoff")]
    assert delays == sorted(delays) and delays[-1] > delays[0], delays
    [giving_up] = parent.events("giving_up")
    assert giving_up["reason"] == "gave_up" and "restarts" in giving_up["message"]
    assert not parent.events("ready")
    print(f"\nFIGURE crash_loop spawns={len(spawns)} backoff={delays} seconds={time.monotonic() - started:.1f}")


@pytest.mark.timeout(60)
def test_a_child_config_error_is_not_restarted(supervisor, broker, names):
    broker.channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], durable=True, arguments={"x-message-ttl": 1000})
    parent = supervisor("--processes", "2", wait_ready=False)
    assert parent.wait(30) == exitcodes.CONFIG
    assert len(parent.spawned()) == 2
    [giving_up] = parent.events("giving_up")
    assert giving_up["reason"] == "config_error" and "configuration" in giving_up["message"]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_hung_child_is_killed_and_its_message_answered_by_the_next(supervisor, broker, db, llm):
    llm.configure(latency=3.0)
    parent = supervisor("--processes", "1", "--timeout", "2", REPORT_WORKER_TEST_HANG_AFTER="1.5")
    first = parent.wait_children(1)[1]
    request = sample_request()
    broker.publish(request)
    wait_for(lambda: llm.stats()["calls"] >= 1, 10)
    killed = parent.wait_event("child_killed", timeout=15)[0]
    llm.configure(latency=0.0)
    assert killed["child_pid"] == first and killed["reason"] == "hung" and killed["silent_seconds"] > 2
    [response] = broker.responses(1, timeout=20)  # the broker requeued it; the successor answers
    assert response["request_id"] == request["request_id"] and response["status"] == "success"
    assert db.medical_reports.count_documents({"request_id": request["request_id"]}) == 1
    assert [e for e in parent.events("child_exited") if e["child_pid"] == first][0]["reason"] == "hung"


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request):
    """A real datagram socket standing in for systemd; yields (NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"report-worker-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address, directory = "@" + name, None
    else:
        directory = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        address = os.path.join(directory, "notify.sock")
        sock.bind(address)
    sock.settimeout(0.2)
    yield address, sock
    sock.close()
    if directory:
        os.unlink(address)
        os.rmdir(directory)


def receive_until(sock, field: str, timeout: float, log: list[str]) -> float:
    """Read datagrams into `log` until one holds `field`; returns when (time.monotonic()) it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = sock.recv(4096).decode().split("\n")
        except socket.timeout:
            continue
        log.extend(fields)
        if field in fields:
            return time.monotonic()
    raise AssertionError(f"no {field} within {timeout} s; got {log}")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_notify_socket_gets_ready_watchdog_reloading_and_stopping(supervisor, notify_socket):
    address, sock = notify_socket
    started = time.monotonic()
    parent = supervisor("--processes", "2", wait_ready=False, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
    got: list[str] = []
    ready_at = receive_until(sock, "READY=1", 30, got)
    print(f"\nFIGURE start_to_ready_seconds={ready_at - started:.3f}")
    assert any(f.startswith("STATUS=2/2 children consuming") for f in got), got
    receive_until(sock, "WATCHDOG=1", 5, got)
    parent.signal(signal.SIGHUP)
    receive_until(sock, "RELOADING=1", 5, got)
    assert any(f.startswith("MONOTONIC_USEC=") for f in got)
    receive_until(sock, "READY=1", 30, got)
    parent.signal(signal.SIGTERM)
    receive_until(sock, "STOPPING=1", 10, got)
    assert parent.wait(30) == 0
    assert got.index("READY=1") < got.index("RELOADING=1") < got.index("STOPPING=1")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("threads", [8, 64])
def test_measure_rss_of_parent_and_children(supervisor, broker, db, llm, threads):
    """Figures for the closing note: RSS after every thread of a child has worked."""
    llm.configure(latency=0.5)
    parent = supervisor("--processes", "2", "--threads", str(threads))
    children = parent.wait_children(2)
    requests = [sample_request() for _ in range(threads * 3)]
    for request in requests:
        broker.publish(request)
    answered_once_each(broker, db, requests, timeout=120)
    parent_mb = psutil.Process(parent.pid).memory_info().rss / 2**20
    child_mb = [psutil.Process(pid).memory_info().rss / 2**20 for pid in children.values()]
    child_uss_mb = [psutil.Process(pid).memory_full_info().uss / 2**20 for pid in children.values()]
    child_threads = [psutil.Process(pid).num_threads() for pid in children.values()]
    print(f"\nFIGURE threads={threads} parent_rss_mb={parent_mb:.1f} child_rss_mb={[round(m, 1) for m in child_mb]} "
          f"child_uss_mb={[round(m, 1) for m in child_uss_mb]} child_threads={child_threads}")
    assert parent_mb < 200 and all(m < 400 for m in child_mb)


# -- the parent never takes healthy children down with it (what only processes can show) ----------


@pytest.mark.timeout(60)
def test_hup_with_an_unparsable_rabbitmq_url_keeps_the_children(supervisor, broker, names, env, tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text('RABBITMQ_URL = "amqp://127.0.0.1:5672/%2F"\n')     # no password: allowed in a file
    del env["RABBITMQ_URL"]
    parent = supervisor("--processes", "2", "--config", str(config))
    before = parent.wait_children(2)
    config.write_text('RABBITMQ_URL = "amqp://[broker"\n')
    parent.signal(signal.SIGHUP)
    [failed] = parent.wait_event("reload_failed")
    assert "RABBITMQ_URL" in failed["error"] and "not a valid URL" in failed["error"]
    assert parent.proc.poll() is None and not parent.events("arbiter_loop_failed")
    assert parent.ready_children() == before and not parent.events("child_replacing")
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2


@pytest.mark.timeout(30)
def test_an_unparsable_rabbitmq_url_at_start_is_a_configuration_error(supervisor):
    parent = supervisor("--processes", "1", wait_ready=False, RABBITMQ_URL="amqp://[broker")
    assert parent.wait(20) == exitcodes.CONFIG
    assert "configuration error: RABBITMQ_URL is not a valid URL" in parent.output()


# -- the parent's sockets stay with the parent (what only processes can show) ----------------------


@pytest.mark.timeout(90)
def test_a_flooded_metrics_port_still_answers_and_children_keep_none_of_its_sockets(supervisor, broker):
    import urllib.request

    from tests.services import free_port

    port = free_port()
    parent = supervisor("--processes", "1", METRICS_PORT=str(port))
    first = parent.wait_children(1)[1]
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(url + "/readyz", timeout=10) as answer:
        assert answer.status == 200
    threads = psutil.Process(parent.pid).num_threads()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        started = time.monotonic()
        for path in ("/healthz", "/metrics", "/readyz", "/healthz"):
            with urllib.request.urlopen(url + path, timeout=10) as answer:
                assert answer.status == 200
        answered = time.monotonic() - started
        flooded_threads = psutil.Process(parent.pid).num_threads()
        print(f"\nFIGURE flooded_metrics answered_seconds={answered:.3f} threads={threads}->{flooded_threads}")
        assert answered < 5 and flooded_threads <= threads + 4
        os.kill(first, signal.SIGKILL)                          # a child forked while 200 connections are open
        second = wait_for(lambda: (c := parent.ready_children()) and c.get(1) != first and c.get(1), 20)
        ours = psutil.Process(parent.pid).net_connections("tcp")
        poller = {c.laddr for c in ours if c.raddr and c.raddr.port == 5672}
        theirs = psutil.Process(second).net_connections("tcp")
        assert not [c for c in theirs if c.laddr.port == port or (c.raddr and c.raddr.port == port)]
        assert poller and not [c for c in theirs if c.laddr in poller]
    finally:
        for sock in idle:
            sock.close()
