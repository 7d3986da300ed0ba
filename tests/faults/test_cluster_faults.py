"""Faults of a three-node RabbitMQ cluster under load (quorum queues, RABBITMQ_URL listing the three nodes):
the node leading the request queue stops; every node restarts in turn; one node is cut off from the others.

The cluster is scripts/cluster.sh's (rw-c1..3@localhost beside the main node), brought up for this module and
taken down after it. Each test sends 300 requests and keeps the fault suite's full books (accounting.py).
"""

import time

import pika
import pytest

from tests.cluster import NODES, Cluster, ClusterBroker, port_node, url
from tests.conftest import sample_request, serve_broker
from tests.harness import log_time
from tests.services import wait_for
from worker.settings import load
from worker.topology import queue_arguments

REQUESTS = 300
PROCESSES = 3
RECOVER_LIMIT = 10.0


@pytest.fixture(scope="module")
def cluster():
    nodes = Cluster()
    seconds = nodes.up()
    print(f"\nFIGURE cluster_up_seconds={seconds:.1f}")
    yield nodes
    nodes.heal()
    nodes.down()


@pytest.fixture
def broker(names, declared, cluster):
    """The test's Broker on the cluster (overrides tests/conftest.py's, for the ledger too)."""
    yield from serve_broker(ClusterBroker(names, cluster), declared)


@pytest.fixture
def run(parent, ledger, cluster, llm, env):
    """start(latency, lead_on=0) -> `report-worker run` with P children on the cluster, quorum queues, and the
    ledger counting queues on the cluster; with lead_on=N every queue is declared first through node N, so
    that node leads them all (quorum queues start their leader on the declaring client's node)."""
    ledger.counts = cluster.queue_counts
    overrides = {"RABBITMQ_URL": cluster.urls(), "RABBITMQ_QUEUE_TYPE": "quorum", "CONNECT_TIMEOUT": "60"}

    def start(latency: float, lead_on: int = 0):
        if lead_on:
            settings = load(environ={**env, **overrides})
            connection = pika.BlockingConnection(pika.URLParameters(url(lead_on)))
            channel = connection.channel()
            for name, arguments in queue_arguments(settings).items():
                channel.queue_declare(name, durable=True, arguments=arguments)
            connection.close()
        llm.configure(latency=latency)
        return parent("--processes", str(PROCESSES), "--threads", "4", **overrides)

    return start


def nodes_of(run) -> dict[int, int]:
    """child pid -> the node number it consumes on now (its last `consuming` event)."""
    live = set(run.children())
    return {e["pid"]: port_node(e["node"]) for e in run.events("consuming") if e["pid"] in live}


def consuming_since(run, since: float) -> set[int]:
    """Pids of children that started consuming (again) after `since` (time.time())."""
    return {e["pid"] for e in run.events("consuming") if log_time(e) > since}


def send(ledger, count: int = REQUESTS) -> None:
    for i in range(count):
        ledger.publish(sample_request(user_id=f"user-{i % 10}"))


def recovered(run, broker, queue: str, moved: set[int], since: float, cluster=None, cut: int = 0) -> bool:
    """Every child consumes: each child that lost its node consumed again, and the broker counts P consumers
    (with a node cut off: P on the other nodes; the majority still lists the cut node's old ones)."""
    if not moved <= consuming_since(run, since):
        return False
    if cut:
        return sum(count for n, count in cluster.consumers_by_node(queue, avoid=cut).items() if n != cut) == PROCESSES
    return broker.consumers(queue) == PROCESSES


def close_books(ledger, run, children, scenario: str, recover: float, **notes) -> None:
    seconds = ledger.settle(timeout=240)
    figures = ledger.verify(scenario)
    assert figures.stored == REQUESTS and figures.dlq == 0 and figures.succeeded == REQUESTS
    assert sorted(run.children()) == children and not run.events("child_exited")  # children lived through it
    figures.recover_seconds = recover
    figures.notes.update(settle_seconds=round(seconds, 1), **notes)
    print("\n" + figures.line())


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stopping_the_request_queue_leader_loses_nothing_and_every_child_consumes_within_10s(
        run, cluster, ledger, broker, db, names):
    worker = run(latency=1.0)
    children = sorted(worker.children())
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    leader = cluster.leader(queue)
    assert sorted(set(nodes_of(worker).values())) == list(NODES)  # the children spread over the three nodes
    broker.prefer(leader % 3 + 1)
    send(ledger)
    wait_for(lambda: db.medical_reports.count_documents({}) >= 40, 60)
    on_leader = {pid for pid, n in nodes_of(worker).items() if n == leader}

    stopped_wall, stopped_at = time.time(), time.monotonic()
    cluster.stop_app(leader)
    try:
        wait_for(lambda: recovered(worker, broker, queue, on_leader, stopped_wall), 60, interval=0.1,
                 message=f"children did not all consume again; log:\n{worker.output()[-3000:]}")
        recover = time.monotonic() - stopped_at
        new_leader = cluster.leader(queue, avoid=leader)
        answered_meanwhile = ledger.answered()
    finally:
        cluster.start_app(leader)
    assert new_leader != leader
    assert all(n != leader for pid, n in nodes_of(worker).items() if pid in on_leader)
    assert recover < RECOVER_LIMIT, f"children consumed again {recover:.2f} s after the leader stopped"
    close_books(ledger, worker, children, "cluster_leader_stop", recover, leader=leader, new_leader=new_leader,
                moved_children=len(on_leader), answered_while_down=answered_meanwhile)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_restarting_every_node_in_turn_under_load_loses_nothing(run, cluster, ledger, broker, db, names):
    worker = run(latency=1.5)
    children = sorted(worker.children())
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    send(ledger)
    wait_for(lambda: db.medical_reports.count_documents({}) >= 20, 60)
    recoveries, loads = [], []
    for n in NODES:
        cluster.wait_not_quorum_critical(n)
        broker.prefer(n % 3 + 1)
        moved = {pid for pid, at in nodes_of(worker).items() if at == n}
        loads.append(REQUESTS - ledger.answered())   # requests still to answer when node n goes
        stopped_wall, stopped_at = time.time(), time.monotonic()
        cluster.stop_app(n)
        try:
            wait_for(lambda: recovered(worker, broker, queue, moved, stopped_wall), 60, interval=0.1,
                     message=f"children did not all consume again after {n} stopped; log:\n{worker.output()[-3000:]}")
            recoveries.append(round(time.monotonic() - stopped_at, 2))
        finally:
            cluster.start_app(n)
    assert all(load > 0 for load in loads), f"the load ran out before the last restart: {loads}"
    assert max(recoveries) < RECOVER_LIMIT, f"recovery seconds per node: {recoveries}"
    close_books(ledger, worker, children, "cluster_rolling_restart", max(recoveries),
                recover_per_node="/".join(map(str, recoveries)), unanswered_at_each_stop="/".join(map(str, loads)))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_node_cut_off_from_the_others_pauses_its_consumers_move_and_nothing_is_lost(
        run, cluster, ledger, broker, db, names):
    """Node 1 leads every queue of ours and is cut off: it pauses (pause_minority), its children move to the
    majority, whose members elect new leaders. Until the heal, the majority still lists the cut node's old
    consumers (their channels are on an unreachable node), so "every child consumes" counts the others."""
    worker = run(latency=1.0, lead_on=1)
    children = sorted(worker.children())
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    assert {cluster.leader(q) for q in ledger.queues + [names["RABBITMQ_RESPONSE_QUEUE"], names["RABBITMQ_DLQ"]]} == {1}
    cut = 1
    broker.prefer(cut % 3 + 1)
    send(ledger)
    wait_for(lambda: db.medical_reports.count_documents({}) >= 40, 60)
    minority = {pid for pid, n in nodes_of(worker).items() if n == cut}
    assert minority, f"no child consumes on node {cut}: {nodes_of(worker)}"

    cut_wall, cut_at = time.time(), time.monotonic()
    cluster.partition(cut)
    try:
        lost = wait_for(lambda: [e for e in worker.events() if e.get("pid") in minority and log_time(e) > cut_wall
                                 and e.get("event") in ("broker_node_failed", "broker_connection_lost")], 90,
                        interval=0.1, message=f"the cut node's children never lost it; log:\n{worker.output()[-3000:]}")
        lost_after = time.monotonic() - cut_at
        wait_for(lambda: recovered(worker, broker, queue, minority, cut_wall, cluster, cut), 90, interval=0.1,
                 message=f"the minority's consumers did not move; log:\n{worker.output()[-3000:]}")
        moved_after = time.monotonic() - cut_at
        placed = nodes_of(worker)
        by_node = cluster.consumers_by_node(queue, avoid=cut)
        answered_meanwhile = ledger.answered()
    finally:
        healed = cluster.heal()
    assert all(placed[pid] != cut for pid in minority), placed
    cluster.all_running()
    wait_for(lambda: broker.consumers(queue) == PROCESSES, 60, interval=0.5,
             message=f"the cut node's old consumers are still listed: {cluster.consumers_by_node(queue)}")
    moved = max(log_time(e) for e in worker.events("consuming") if e["pid"] in minority) - min(map(log_time, lost))
    assert moved < RECOVER_LIMIT, f"consumers of the cut node consumed again {moved:.2f} s after losing it"
    close_books(ledger, worker, children, "cluster_partition", moved, cut=cut, moved_children=len(minority),
                node_lost_after_seconds=round(lost_after, 1), moved_after_cut_seconds=round(moved_after, 1),
                answered_while_cut=answered_meanwhile, heal=healed, stale_consumers_while_cut=by_node[cut])
