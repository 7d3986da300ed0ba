"""Test helpers (not a test module): the local three-node cluster of scripts/cluster.sh as a test sees it, and
a test-side broker connection that fails over between its nodes.

The nodes are rw-c1..rw-c3@localhost on 127.0.0.1:5681..5683 (scripts/cluster.sh says why and how); the
main node is never touched. Every query goes to a node that answers, so a test can ask while one is down.
"""

import re
import subprocess
import time
from collections import Counter

import pika
import pika.exceptions

from tests.conftest import ROOT, Broker
from tests.faults.accounting import QUEUE_COUNT_COLUMNS, parse_queue_counts
from tests.services import wait_for

SCRIPT = ROOT / "scripts" / "cluster.sh"
NODES = (1, 2, 3)
LOST = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed, pika.exceptions.ChannelClosed,
        pika.exceptions.StreamLostError, pika.exceptions.ChannelWrongStateError, ConnectionError, OSError)


def node(n: int) -> str:
    return f"rw-c{n}@localhost"


def url(n: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:568{n}/%2F"


def port_node(label: str) -> int:
    """The node number of a `host:port` label (the `node` field of the worker's `consuming` event)."""
    return int(label.rsplit(":", 1)[1]) - 5680


class Cluster:
    """scripts/cluster.sh, and rabbitmqctl against one node or whichever answers."""

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)

    def up(self) -> float:
        started = time.monotonic()
        result = self.script("up")
        assert result.returncode == 0, f"scripts/cluster.sh up failed:\n{result.stdout}{result.stderr}"
        return time.monotonic() - started

    def down(self) -> None:
        result = self.script("down")
        assert result.returncode == 0, f"scripts/cluster.sh down failed:\n{result.stdout}{result.stderr}"

    def urls(self, first: int = 1) -> str:
        order = [n for n in NODES if n >= first] + [n for n in NODES if n < first]
        return ",".join(url(n) for n in order)

    def ctl(self, n: int, *args: str, timeout: float = 60, tool: str = "rabbitmqctl") -> subprocess.CompletedProcess:
        return subprocess.run([tool, "-q", "-n", node(n), *args], capture_output=True, text=True, timeout=timeout)

    def must(self, n: int, *args: str, timeout: float = 120) -> str:
        result = self.ctl(n, *args, timeout=timeout)
        assert result.returncode == 0, f"rabbitmqctl -n {node(n)} {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def running(self, n: int) -> bool:
        return self.ctl(n, "await_startup", "--timeout", "1", timeout=30).returncode == 0

    def ask(self, *args: str, avoid: int = 0) -> str:
        """Run a query on the first running node (not `avoid`)."""
        errors = []
        for n in NODES:
            if n == avoid:
                continue
            result = self.ctl(n, *args)
            if result.returncode == 0:
                return result.stdout
            errors.append(f"{node(n)}: {result.stderr.strip()[-200:]}")
        raise AssertionError(f"no node answered rabbitmqctl {' '.join(args)}: {errors}")

    def leader(self, queue: str, avoid: int = 0) -> int:
        """The node number whose member leads the quorum queue `queue`."""
        for line in self.ask("list_queues", "name", "leader", "--no-table-headers", avoid=avoid).splitlines():
            fields = line.split("\t")
            if fields[0] == queue:
                return int(re.search(r"rw-c(\d)@", fields[1]).group(1))
        raise AssertionError(f"queue {queue} not found on the cluster")

    def queue_counts(self, queues: list[str]) -> dict[str, tuple[int, int]]:
        """(ready, unacknowledged) of each named queue, as the cluster counts them."""
        return parse_queue_counts(self.ask("list_queues", *QUEUE_COUNT_COLUMNS), queues)

    def consumers_by_node(self, queue: str, avoid: int = 0) -> Counter:
        """node number -> consumers of `queue` whose channel lives there."""
        out = self.ask("list_consumers", "queue_name", "channel_pid", "--no-table-headers", avoid=avoid)
        return Counter(int(m.group(1)) for line in out.splitlines() if line.split("\t")[0] == queue
                       for m in [re.search(r"rw-c(\d)@", line)] if m)

    def stop_app(self, n: int) -> None:
        self.must(n, "stop_app")

    def start_app(self, n: int) -> None:
        self.must(n, "start_app")
        wait_for(lambda: self.running(n), 120, interval=0.5, message=f"{node(n)} did not start again")

    def wait_not_quorum_critical(self, n: int, timeout: float = 120) -> float:
        """Until stopping node n would leave every quorum queue a majority (its members caught up)."""
        started = time.monotonic()
        wait_for(lambda: self.ctl(n, "check_if_node_is_quorum_critical", tool="rabbitmq-queues").returncode == 0,
                 timeout, interval=0.5, message=f"{node(n)} stayed quorum-critical for {timeout} s")
        return time.monotonic() - started

    def partition(self, n: int) -> None:
        result = self.script("partition", str(n), timeout=30)
        assert result.returncode == 0, f"scripts/cluster.sh partition {n}: {result.stderr}"

    def heal(self) -> str:
        """Remove the partition; "resumed" if the cut node came back by itself, "restarted" if the script had to."""
        result = self.script("heal", timeout=300)
        assert result.returncode == 0, f"scripts/cluster.sh heal: {result.stderr}"
        return "restarted" if "restarting it" in result.stderr else "resumed"

    def all_running(self, timeout: float = 120) -> None:
        wait_for(lambda: all(self.running(n) for n in NODES) and
                 self.ask("eval", "length(rabbit_nodes:all_running()).").strip() == "3",
                 timeout, interval=1.0, message=f"the cluster is not whole again: {self.script('status').stdout}")


class ClusterBroker(Broker):
    """The test's Broker (tests/conftest.py) on the cluster: after a lost connection it connects to the next
    node and carries on (a publish whose confirm was lost is sent again: a duplicate, which is allowed)."""

    def __init__(self, names: dict, cluster: Cluster, first: int = 1):
        self.names = names
        self.cluster = cluster
        self.prefer(first)

    def prefer(self, first: int) -> None:
        """(Re)connect, trying node `first` first."""
        params = [pika.URLParameters(u) for u in self.cluster.urls(first).split(",")]
        for p in params:
            p.connection_attempts, p.retry_delay, p.socket_timeout = 1, 0, 3
        deadline = time.monotonic() + 90
        while True:
            try:
                self.connection = pika.BlockingConnection(params)
                break
            except pika.exceptions.AMQPConnectionError:
                assert time.monotonic() < deadline, "no cluster node accepted the test's connection for 90 s"
                time.sleep(0.5)
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def _again(self, action):
        for attempt in range(20):
            try:
                return action()
            except LOST:
                if attempt == 19:
                    raise
                self.prefer(1 + attempt % 3)

    def publish(self, body, queue=None, **properties) -> None:
        self._again(lambda: Broker.publish(self, body, queue, **properties))

    def depth(self, queue: str) -> int:
        return self._again(lambda: Broker.depth(self, queue))

    def consumers(self, queue: str) -> int:
        return self._again(lambda: Broker.consumers(self, queue))

    def take(self, queue: str) -> list:
        taken = []
        while True:
            try:
                method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            except LOST:
                self.prefer(1)
                continue
            if method is None:
                return taken
            taken.append((properties, body))

    def sleep(self, seconds: float) -> None:
        try:
            self.connection.sleep(seconds)
        except LOST:
            self.prefer(1)

    def delete_queues(self, queues) -> None:
        for queue in queues:
            self._again(lambda: self.channel.queue_delete(queue))
