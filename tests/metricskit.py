"""Helpers of the metrics tests: forked-children scenarios, HTTP gets, one series of an exposition."""

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

from metrics import definitions
from metrics.parent import NAMES as PARENT_NAMES, ParentMetrics
from metrics.queues import QueuePoller
from tests.conftest import ROOT
from tests.services import samples

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


def child_metrics():
    return [m for m in vars(definitions).values() if hasattr(m, "_labelnames") and hasattr(m, "_type")]


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
