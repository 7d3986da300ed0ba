"""The Celery side of the `peer` scenario, as the harness sees it: its command, its queue, its stage timings.

The Celery app and task live in `bench.celeryapp` (imported only by the Celery worker and the publisher);
this module starts nothing by itself and imports no Celery, so `python -m bench` runs without the extra
until a Celery row is asked for (then `require()` fails loudly).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pika

POOL = "threads"


def require() -> None:
    """Fail with the way out when Celery (the `bench` extra) is not installed."""
    if importlib.util.find_spec("celery") is None:
        raise SystemExit("the peer scenario needs Celery: pip install '.[bench]' (setup.cfg pins the version)")


def version() -> str:
    from importlib.metadata import version as installed
    return installed("celery")


def worker_command(concurrency: int, queue: str, hostname: str) -> list[str]:
    """Celery's worker with the threads pool on the run's queue; gossip, mingle, heartbeats and remote
    control off (nothing of them is part of the job, and each would declare queues of its own)."""
    return [sys.executable, "-m", "celery", "-A", "bench.celeryapp", "worker", "--pool", POOL,
            "--concurrency", str(concurrency), "--queues", queue, "--hostname", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]


def worker_env(env: dict, queue: str, stages_dir: Path) -> dict:
    """report-worker's environment for the same run, plus where Celery's tasks come from and timings go."""
    return {**env, "BENCH_CELERY_QUEUE": queue, "BENCH_STAGES_DIR": str(stages_dir)}


def stage_times(stages_dir: Path) -> dict[str, tuple[float, int]]:
    """Stage -> (seconds, calls), summed over the files the Celery worker processes left when they stopped."""
    total: dict[str, tuple[float, int]] = {}
    for path in stages_dir.glob("stages-*.json"):
        data = json.loads(path.read_text())
        for stage, seconds in data["seconds"].items():
            before = total.get(stage, (0.0, 0))
            total[stage] = (before[0] + seconds, before[1] + data["calls"].get(stage, 0))
    return total


def forget(url: str, queue: str) -> None:
    """Delete the run's task queue and the direct exchange Celery declared with the same name."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
    finally:
        connection.close()
