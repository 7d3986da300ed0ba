"""scripts/cluster.sh with real nodes: up (idempotent, taking over another checkout's nodes), status, down."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cluster import NODES, SCRIPT, Cluster, node


def pid_of(cluster: Cluster, n: int) -> str:
    return cluster.must(n, "eval", "list_to_integer(os:getpid()).").strip()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cluster_up_takes_over_is_idempotent_reports_status_and_goes_down():
    cluster = Cluster()
    foreign = Path(f"/tmp/report-worker-other-checkout-{uuid.uuid4().hex[:8]}")   # another checkout's state dir
    try:
        other = subprocess.run(["bash", str(SCRIPT), "up"], env={**os.environ, "CLUSTER_STATE_DIR": str(foreign)},
                               capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
        foreign_pids = {n: (foreign / f"rw-c{n}" / "rabbit.pid").read_text().strip() for n in NODES}
        assert {n: pid_of(cluster, n) for n in NODES} == foreign_pids

        seconds = cluster.up()   # ours: stops the other checkout's nodes of the same names, starts its own
        print(f"\nFIGURE cluster_up_seconds={seconds:.1f} (taking over 3 running nodes)")
        ours = {n: pid_of(cluster, n) for n in NODES}
        assert not set(ours.values()) & set(foreign_pids.values())
        for n in NODES:
            assert (SCRIPT.parent.parent / ".services" / "cluster" / f"rw-c{n}" / "rabbit.pid").read_text().strip() \
                == ours[n]
        members = cluster.ask("eval", "lists:sort(rabbit_nodes:all_running()).").strip()
        assert members == "[" + ",".join(f"'{node(n)}'" for n in NODES) + "]"

        status = cluster.script("status")
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert len(lines) == 3 and all(f"{node(n)}: up   amqp://guest:guest@127.0.0.1:568{n}/" in lines[n - 1]
                                       for n in NODES), lines
        assert cluster.script("urls").stdout.strip() == cluster.urls()

        cluster.up()   # already up: nothing restarted
        assert {n: pid_of(cluster, n) for n in NODES} == ours

        cluster.down()
        status = cluster.script("status")
        assert status.returncode == 1 and status.stdout.count(": down ") == 3, status.stdout
        assert not (SCRIPT.parent.parent / ".services" / "cluster").exists()
    finally:
        cluster.down()
        shutil.rmtree(foreign, ignore_errors=True)
