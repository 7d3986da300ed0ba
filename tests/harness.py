"""Driving `report-worker run` in tests (the supervisor tests' and the fault suite's one harness): the parent
as a real process and the metrics it serves, and broker chores (rabbitmqctl, reconnecting after a restart)."""

import datetime
import json
import subprocess
import time
import urllib.error
import urllib.request

import pika
import pika.exceptions
import psutil

from tests.services import RABBITMQ_URL
from tests.services import samples, wait_for


def readyz(port: int, timeout: float = 10) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a metrics endpoint's /readyz, ready (200) or not (503)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


class Parent:
    """`report-worker run` (children log to the same stdout) and the metrics it serves on its port; the one
    harness of the supervisor tests and the fault suite (the `supervisor` fixture of tests/conftest.py)."""

    def __init__(self, process, metrics_port: int):
        self.process = process
        self.metrics_port = metrics_port

    def __getattr__(self, name):
        return getattr(self.process, name)

    def spawned(self) -> list[dict]:
        return self.events("child_spawned")

    def children(self) -> list[int]:
        """Pids of the live (not zombie) child processes."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [p.pid for p in kids if _alive(p.pid)]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
            return answer.read().decode()

    def readyz(self) -> dict:
        """The /readyz JSON, ready (200) or not (503): status, consuming, nodes {worker index: broker node}, ..."""
        return readyz(self.metrics_port)[1]

    def metric(self, name: str, **labels) -> float:
        """The sum of every series of `name` whose labels include `labels` (0 when there is none)."""
        return sum(samples(self.metrics(), name, **labels))


def log_time(event: dict) -> float:
    """The wall-clock time of a log line, as time.time() would say."""
    stamp = datetime.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    """The process has exited (a zombie not reaped yet counts as gone)."""
    return not _alive(pid)


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def reconnect(broker, timeout: float = 60) -> float:
    """Give the test's Broker a new connection (the broker restarted); returns when it connected."""
    def attempt():
        try:
            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        except pika.exceptions.AMQPError:
            return None
        return connection

    connection = wait_for(attempt, timeout, interval=0.1, message="the broker did not come back")
    broker.connection = connection
    broker.channel = connection.channel()
    broker.channel.confirm_delivery()
    return time.monotonic()
