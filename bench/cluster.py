"""`python -m bench --scenario cluster`: the same throughput run on the main RabbitMQ node and on the local
three-node cluster of scripts/cluster.sh (quorum queues, RABBITMQ_URL listing the three nodes), side by side.

Three rows of one configuration: the single node with classic queues (every other scenario's setting), the
single node with quorum queues (what the queue type alone costs) and the cluster with quorum queues (what
replication to two more nodes costs). The cluster is brought up if it is not, and taken down afterwards
only if this run brought it up. Publisher and collector talk to the first node; the children spread over
all three (worker.broker.spread)."""

import subprocess
from dataclasses import replace
from pathlib import Path

from bench.scenarios import RunConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster.sh"
CLUSTER_URLS = ",".join(f"amqp://guest:guest@127.0.0.1:568{n}/%2F" for n in (1, 2, 3))


def configs(smoke: bool = False) -> list[tuple[RunConfig, dict]]:
    """(configuration, broker settings) of each row: P=2 T=32 L=0 N=2000 (the peer scenario's throughput
    run), or for the smoke test P=1 T=4 L=0 N=20."""
    shape = RunConfig("cluster-smoke", 1, 4, 0.0, 20) if smoke else RunConfig("cluster", 2, 32, 0.0, 2000)
    return [
        (replace(shape, scenario=f"{shape.scenario} single classic"), {}),
        (replace(shape, scenario=f"{shape.scenario} single quorum"), {"queue_type": "quorum"}),
        (replace(shape, scenario=f"{shape.scenario} 3-node quorum"),
         {"queue_type": "quorum", "rabbitmq": CLUSTER_URLS.split(",")[0], "worker_rabbitmq": CLUSTER_URLS}),
    ]


def cluster(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def run(run_one, urls: dict, outdir: Path, info: dict, rounds: int = 1, smoke: bool = False) -> list[dict]:
    """Every row, `rounds` times; brings the cluster up for them (and down after, if it was down)."""
    was_up = cluster("status").returncode == 0
    if not was_up:
        started = cluster("up")
        if started.returncode != 0:
            raise SystemExit(f"scripts/cluster.sh up failed:\n{started.stderr}")
    try:
        return [run_one(config, {**urls, **broker}, outdir, info, round_)
                for round_ in range(1, rounds + 1) for config, broker in configs(smoke)]
    finally:
        if not was_up:
            cluster("down")


def comparison_lines(results: list[dict]) -> list[str]:
    """reports/s of each row and the cluster's against the single node's, per round."""
    lines = []
    for round_ in sorted({r["round"] for r in results}):
        rows = {r["scenario"].split(" ", 1)[-1]: r["reports_per_s"]
                for r in results if r["round"] == round_ and r["scenario"].startswith("cluster")}
        if len(rows) == 3 and rows["single classic"] and rows["single quorum"]:
            lines.append(f"cluster round {round_}: single classic {rows['single classic']} rep/s, single quorum "
                         f"{rows['single quorum']} rep/s, 3-node quorum {rows['3-node quorum']} rep/s; "
                         f"3-node/single quorum {rows['3-node quorum'] / rows['single quorum']:.2f}, "
                         f"3-node/single classic {rows['3-node quorum'] / rows['single classic']:.2f}")
    return lines
