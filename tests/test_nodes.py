"""A RabbitMQ cluster's nodes in RABBITMQ_URL: parsing, spread, failover, and which node each child is on.

Several "nodes" without a cluster: URLs that reach the one test broker by different names (127.0.0.1 and
localhost), a TCP proxy in front of it that the test cuts, and a port where nothing listens."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sample_request
from tests.services import RABBITMQ_URL, free_port, samples, wait_for
from tests.tcpproxy import TcpProxy
from tests.test_supervisor import answered_once_each
from worker.broker import Backoff, Nodes, spread
from worker.settings import SettingsError, load

A = "amqp://guest:pw-a@10.0.0.1:5672/"
B = "amqp://guest:pw-b@10.0.0.2:5672/"
C = "amqp://guest:pw-c@10.0.0.3:5672/"
BASE = {"OPENAI_API_KEY": "k"}


def direct(host: str = "127.0.0.1") -> str:
    return RABBITMQ_URL.replace("127.0.0.1", host).replace("localhost", host)


def test_the_setting_holds_a_list_of_node_urls_each_checked_and_redacted():
    settings = load({**BASE, "RABBITMQ_URL": f" {A} ,{B},\t{C}"})
    assert settings.rabbitmq_urls == (A, B, C)
    shown = settings.redacted()["rabbitmq_url"]
    assert "pw-" not in shown and shown.count("guest:***@") == 3
    assert load({**BASE, "RABBITMQ_URL": A}).rabbitmq_urls == (A,)
    for bad, says in ((f"{A},,{B}", "empty entry"), (f"{A},", "empty entry"), (f"{A},http://x/", "amqp://"),
                      (f"{A},amqps://x/", "one scheme")):
        with pytest.raises(SettingsError, match=f"RABBITMQ_URL.*{says}"):
            load({**BASE, "RABBITMQ_URL": bad})


def test_a_password_in_any_node_url_keeps_the_list_out_of_the_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'RABBITMQ_URL = "amqp://10.0.0.1:5672/,{B}"\n')
    with pytest.raises(SettingsError, match="RABBITMQ_URL is a secret"):
        load(BASE, config)


def test_children_of_a_host_start_on_different_nodes_and_hosts_differ():
    settings = load({**BASE, "RABBITMQ_URL": f"{A},{B},{C}"})
    firsts = [spread(settings, index, "vm-1").rabbitmq_urls for index in (1, 2, 3)]
    assert {urls[0] for urls in firsts} == {A, B, C}
    assert all(sorted(urls) == [A, B, C] and urls in ((A, B, C), (B, C, A), (C, A, B)) for urls in firsts)
    assert len({spread(settings, 1, f"vm-{n}").rabbitmq_urls[0] for n in range(12)}) == 3
    single = load({**BASE, "RABBITMQ_URL": A})
    assert spread(single, 5, "vm-1") is single


def test_nodes_fail_over_at_once_and_back_off_after_a_full_round():
    nodes = Nodes(load({**BASE, "RABBITMQ_URL": f"{A},{B},{C}"}), Backoff(first=1.0, cap=1.0))
    assert nodes.current() == A
    assert nodes.failed() == 0 and nodes.current() == B
    assert nodes.failed() == 0 and nodes.current() == C
    assert nodes.failed() == 1.0 and nodes.current() == A   # every node failed in a row: wait
    nodes.connected()
    assert nodes.failed() == 0 and nodes.current() == B     # lost A after a while: B at once
    one = Nodes(load({**BASE, "RABBITMQ_URL": A}), Backoff(first=1.0, cap=1.0))
    assert one.failed() == 1.0 and one.current() == A


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(60)
def test_a_dead_first_node_is_skipped_by_the_consumer_and_the_cli(consumer, broker, env):
    nodes = f"amqp://guest:guest@127.0.0.1:{free_port()}/,{direct()}"
    worker = consumer(RABBITMQ_URL=nodes)
    assert worker.events("consuming")[0]["node"] == "127.0.0.1:5672"
    request = sample_request()
    broker.publish(request)
    [response] = broker.responses(1)
    assert response["request_id"] == request["request_id"] and response["status"] == "success"
    result = cli({**env, "RABBITMQ_URL": nodes, "METRICS_PORT": "0"}, "health")
    checks = json.loads(result.stdout)
    assert checks["rabbitmq"]["ok"] and checks["rabbitmq"]["node"] == "127.0.0.1:5672", result.stderr


@pytest.mark.timeout(90)
def test_two_children_spread_over_two_nodes_and_say_where(supervisor, broker, env, names):
    nodes = f"{direct('127.0.0.1')},{direct('localhost')}"
    parent = supervisor("--processes", "2", "--threads", "2", RABBITMQ_URL=nodes)
    parent.wait_children(2)
    ready = wait_for(lambda: len(parent.readyz().get("nodes", {})) == 2 and parent.readyz(), 20)
    assert sorted(ready["nodes"].values()) == ["127.0.0.1:5672", "localhost:5672"], ready
    metrics = parent.metrics()
    assert {node: samples(metrics, "report_worker_broker_node", node=node)
            for node in ("127.0.0.1:5672", "localhost:5672")} == {"127.0.0.1:5672": [1.0], "localhost:5672": [1.0]}
    result = cli({**env, "RABBITMQ_URL": nodes, "METRICS_PORT": str(parent.metrics_port)}, "health")
    assert json.loads(result.stdout)["rabbitmq"]["children"] == ready["nodes"], result.stdout + result.stderr
    assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2


@pytest.mark.timeout(120)
def test_children_on_a_lost_node_fail_over_to_the_next_and_keep_consuming(supervisor, broker, db, names):
    proxy = TcpProxy(("127.0.0.1", 5672)).start()   # "node A"; the broker's own port is "node B"
    try:
        node_a = f"127.0.0.1:{proxy.port}"
        parent = supervisor("--processes", "2", "--threads", "2",
                            RABBITMQ_URL=f"amqp://guest:guest@{node_a}/,{direct()}")
        wait_for(lambda: sorted(parent.readyz().get("nodes", {}).values()) == sorted([node_a, "127.0.0.1:5672"]),
                 20, message=str(parent.readyz()))
        requests = [sample_request() for _ in range(20)]
        for request in requests[:10]:
            broker.publish(request)
        proxy.stop()   # node A is gone: its child fails over to B
        for request in requests[10:]:
            broker.publish(request)
        moved = wait_for(lambda: (n := parent.readyz().get("nodes", {})) and set(n.values()) == {"127.0.0.1:5672"}
                         and len(n) == 2 and n, 20, message=parent.output()[-3000:])
        answered_once_each(broker, db, requests)
        assert parent.events("broker_node_failed") and not parent.events("child_exited")   # failed over, not replaced
        assert len(moved) == 2
        wait_for(lambda: parent.metric("report_worker_broker_node", node="127.0.0.1:5672") == 2, 10)
        assert broker.consumers(names["RABBITMQ_REQUEST_QUEUE"]) == 2
    finally:
        proxy.stop()
