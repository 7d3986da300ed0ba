"""The parent's metrics endpoint without a parent: bounded threads, timeouts, blocked children, fork hygiene.

Real sockets on 127.0.0.1, one os.fork() per hygiene test, the local RabbitMQ for the queue poller.
"""

import os
import socket
import threading
import time
import urllib.request

import pytest

from tests.conftest import RABBITMQ_URL
from tests.supervisor_fakes import make_settings


# -- what the metrics side shows --------------------------------------------------------------------


def test_readyz_and_metrics_show_the_blocked_children():
    from metrics.parent import ParentMetrics
    from metrics.probes import Probes

    probes = Probes(lambda: 2, lambda: 1, {}, details=lambda: {"blocked": 1, "paused": {}, "nodes": {1: "h:5672"}})
    probes.heartbeat()
    ok, body = probes.readiness()
    assert ok and body["blocked"] == 1 and body["consuming"] == 1 and body["nodes"] == {"1": "h:5672"}
    parent = ParentMetrics(make_settings(), poller=type("P", (), {"snapshot": dict, "age": lambda self: None})(),
                           blocked=lambda: 3)
    families = {f.name: f for f in parent.collect()}
    assert families["report_worker_broker_blocked"].samples[0].value == 3


def test_readyz_names_why_children_take_no_messages():
    from metrics.probes import Probes

    probes = Probes(lambda: 2, lambda: 0, {}, details=lambda: {"blocked": 0, "paused": {"llm_unauthorized": 2}})
    probes.heartbeat()
    ok, body = probes.readiness()
    assert not ok and body["failed"] == ["consuming", "llm_unauthorized"] and body["paused"] == {"llm_unauthorized": 2}


# -- the metrics server: bounded threads, timeouts ------------------------------------------------------


@pytest.fixture
def server():
    from metrics.probes import Probes
    from metrics.server import MetricsServer, build_registry

    probes = Probes(lambda: 1, lambda: 1, {})
    probes.heartbeat()
    running = MetricsServer(build_registry(), probes, "127.0.0.1", 0, pool=2, max_connections=64,
                            read_timeout=1.0).start()
    running.url = f"http://127.0.0.1:{running.port}"
    yield running
    running.stop()


def get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        answer.read()
        return answer.status


def test_200_idle_connections_cost_no_threads_and_healthz_still_answers(server):
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")        # a head that never ends
    try:
        started = time.monotonic()
        for path in ("/healthz", "/metrics", "/readyz") * 3:
            assert get(server.url + path) == 200
        assert time.monotonic() - started < 2.0
        assert threading.active_count() <= threads + 2 and server.connections() <= 64
        time.sleep(1.6)                                          # past read_timeout: the idle ones are closed
        assert server.connections() == 0
        assert idle[-1].recv(1) == b"" and slow.recv(1) == b""
    finally:
        for sock in idle + [slow]:
            sock.close()


def test_one_request_per_connection_answered_in_full(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and b'"status": "ok"' in body


# -- a forked child keeps none of the parent's sockets --------------------------------------------------


def in_a_child(check) -> bytes:
    """Fork; the child runs `check()` (returns bytes) and reports it through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, check())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    answer = os.read(read, 256)
    os.close(read)
    return answer


def fd_state(*fds: int) -> bytes:
    states = []
    for fd in fds:
        try:
            os.fstat(fd)
            states.append("open")
        except OSError:
            states.append("closed")
    return ",".join(states).encode()


def test_a_forked_child_closes_the_servers_client_connections(server):
    waiting = socket.create_connection(("127.0.0.1", server.port))
    deadline = time.monotonic() + 5
    while server.connections() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fds = [c.fileno() for c in server._waiting] + [server._httpd.socket.fileno()]
    assert in_a_child(lambda: fd_state(*fds)) == b"closed,closed"
    assert get(server.url + "/healthz") == 200
    waiting.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")           # the parent still serves the connection
    assert waiting.recv(12).startswith(b"HTTP/1.1 200")
    waiting.close()


@pytest.mark.timeout(30)
def test_a_forked_child_closes_the_queue_pollers_connection():
    from metrics.parent import ParentMetrics

    parent = ParentMetrics(make_settings(rabbitmq_url=RABBITMQ_URL), poll_interval=0.1)
    parent.start()
    try:
        deadline = time.monotonic() + 20
        while not parent.poller.polled_at:
            assert time.monotonic() < deadline, "the poller never reached the broker"
            time.sleep(0.05)
        [connection] = list(parent._connections)
        fd = connection._impl._transport._sock.fileno()
        assert in_a_child(lambda: fd_state(fd)) == b"closed"
        polled = parent.poller.polled_at
        while parent.poller.polled_at == polled:                  # the parent's connection still works
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert connection.is_open
    finally:
        parent.stop()
