"""Shared fixtures: a fresh Mongo stand-in, the fake LLM, per-test names, worker processes, broker helpers."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest
import redis

from tests.services import RABBITMQ_URL, REDIS_URL, MongoServer, free_port, queues_of, wait_for  # noqa: F401
from worker.fakellm import FakeLLM

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mongo():
    """A throw-away MongoDB-protocol server for the whole run, fail points enabled."""
    server = MongoServer(test_commands=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llm_server():
    server = FakeLLM(latency=0.0).start()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server):
    """The fake LLM, reset to instant and error-free for each test."""
    llm_server.configure(latency=0.0, jitter=0.0, error_rate=0.0, rate_limit_rate=0.0,
                         timeout_rate=0.0, malformed_rate=0.0, mode="good", modes={}, api_keys=(), models=())
    llm_server.reset()
    return llm_server


def sample_request(request_id: str | None = None, user_id: str = "user-1", **extra) -> dict:
    request = json.loads((ROOT / "worker" / "data" / "sample_request.json").read_text())
    request["request_id"] = request_id or str(uuid.uuid4())
    request["user_id"] = user_id
    request.update(extra)
    return request


class Broker:
    """The test's own view of RabbitMQ: publish like the backend, read what the worker left."""

    def __init__(self, names: dict):
        self.names = names
        self.connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, body, queue: str | None = None, **properties) -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        properties.setdefault("delivery_mode", 2)
        properties.setdefault("content_type", "application/json")
        self.channel.basic_publish("", queue or self.names["RABBITMQ_REQUEST_QUEUE"], body,
                                   pika.BasicProperties(**properties))

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def consumers(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.consumer_count

    def take(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Remove and return every message now in `queue`."""
        taken = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))

    def take_into(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Take what is in `queue` now and keep it in `taken` (for wait_for loops); returns all taken so far."""
        self.taken = getattr(self, "taken", []) + self.take(queue)
        return self.taken

    def collect(self, queue: str, count: int, timeout: float) -> list[dict]:
        """Wait until `count` JSON messages were taken from `queue` (or fail), return them."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            messages = self.take(queue)
            got.extend(json.loads(body) for _, body in messages)
            if not messages:
                self.connection.sleep(0.05)
        assert len(got) >= count, f"expected {count} messages on {queue}, got {len(got)}"
        return got

    def responses(self, count: int, timeout: float = 30) -> list[dict]:
        return self.collect(self.names["RABBITMQ_RESPONSE_QUEUE"], count, timeout)

    def delete_queues(self, queues) -> None:
        for queue in queues:
            self.channel.queue_delete(queue)

    def sleep(self, seconds: float) -> None:
        """Wait, serving the connection meanwhile."""
        self.connection.sleep(seconds)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def names(request):
    """Queue names, database and Redis prefix of this test alone."""
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    return {
        "RABBITMQ_REQUEST_QUEUE": f"t.{tag}.requests",
        "RABBITMQ_RESPONSE_QUEUE": f"t.{tag}.responses",
        "RABBITMQ_DLQ": f"t.{tag}.dlq",
        "MONGODB_DATABASE": f"t_{uuid.uuid4().hex[:12]}",
        "REDIS_KEY_PREFIX": f"t:{tag}:",
    }


@pytest.fixture
def env(names, mongo, llm):
    """Environment for a worker process of this test; tests add or change keys."""
    values = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "MONGODB_", "REDIS_", "OPENAI_"))},
        **names,
        "RABBITMQ_URL": RABBITMQ_URL,
        "REDIS_URL": REDIS_URL,
        "MONGODB_URL": mongo.url,
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": "test-key",
        "RETRY_DELAYS": "0.3,0.6",
        "MAX_RETRIES": "2",
        "LLM_MAX_RETRIES": "0",
        "LLM_TIMEOUT_SECONDS": "10",
        "WORKER_THREADS": "4",
        "GRACEFUL_TIMEOUT": "20",
        "CONNECT_TIMEOUT": "10",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    return values


@pytest.fixture
def declared(names) -> set[str]:
    """Every queue a worker of this test may declare (the project's topology code names them); deleted after."""
    return set(queues_of(names).values())


def serve_broker(b, declared: set[str]):
    """A broker fixture's body: yield `b`, then delete the test's queues and close it."""
    yield b
    try:
        b.delete_queues(sorted(declared))
    finally:
        b.close()


@pytest.fixture
def broker(names, declared):
    yield from serve_broker(Broker(names), declared)


@pytest.fixture
def db(mongo, names):
    """This test's database, holding the bundled sample knowledge base."""
    client = mongo.client()
    entries = json.loads((ROOT / "worker" / "data" / "knowledge_base.json").read_text())
    client[names["MONGODB_DATABASE"]].knowledge_base.insert_many(entries)
    yield client[names["MONGODB_DATABASE"]]
    client.drop_database(names["MONGODB_DATABASE"])
    client.close()


@pytest.fixture
def cache(names):
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    keys = list(client.scan_iter(names["REDIS_KEY_PREFIX"] + "*"))
    if keys:
        client.delete(*keys)
    client.close()


class WorkerProcess:
    """A real `report-worker` process; its JSON log lines are kept in a file."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli", *args], env=env, cwd=ROOT,
                                     stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and (name is None or line.get("event") == name):
                lines.append(line)
        return lines

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_event(self, name: str, timeout: float = 20, count: int = 1) -> list[dict]:
        try:
            return wait_for(lambda: len(self.events(name)) >= count and self.events(name), timeout)
        except AssertionError:   # the log as it is now, not as it was when the wait began
            raise AssertionError(f"no {name!r} event within {timeout} s; log:\n{self.output()[-3000:]}") from None

    def ready_children(self) -> dict[int, int]:
        """For `report-worker run`: index -> pid of the children that became ready and have not exited."""
        exited = {e["child_pid"] for e in self.events("child_exited")}
        return {e["index"]: e["child_pid"] for e in self.events("child_ready") if e["child_pid"] not in exited}

    def wait_children(self, count: int, timeout: float = 20) -> dict[int, int]:
        return wait_for(lambda: len(self.ready_children()) == count and self.ready_children(), timeout,
                        message=f"not {count} ready children; log:\n{self.output()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log_file.close()


@pytest.fixture
def spawn(tmp_path, declared):
    """spawn(args, env) starts a real worker process; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(args: list[str], env: dict) -> WorkerProcess:
        if env.get("RABBITMQ_REQUEST_QUEUE"):
            with contextlib.suppress(Exception):  # a test of a bad configuration declares nothing
                declared.update(queues_of(env).values())
        worker = WorkerProcess(args, env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def consumer(spawn, env):
    """start() runs `report-worker consume` with this test's env (plus overrides) and waits until it consumes."""

    def start(**overrides) -> WorkerProcess:
        worker = spawn(["consume"], {**env, **{k: str(v) for k, v in overrides.items()}})
        worker.wait_event("consuming")
        return worker

    return start


@pytest.fixture
def supervisor(spawn, env):
    """start(*args, **env) runs `report-worker run ARGS` with its own metrics port and worker name, and waits
    until every child consumes (READY) unless wait_ready=False; returns a tests.harness.Parent."""
    from tests.harness import Parent

    def start(*args: str, wait_ready: bool = True, **overrides) -> Parent:
        run_env = {**env, "METRICS_PORT": str(free_port()), "WORKER_NAME": f"run-{uuid.uuid4().hex[:8]}",
                   **{k: str(v) for k, v in overrides.items()}}
        process = Parent(spawn(["run", *args], run_env), int(run_env["METRICS_PORT"]))
        if wait_ready:
            process.wait_event("ready", timeout=60)
        return process

    return start


# -- the metrics tests' fixtures --------------------------------------------------------------------------


@pytest.fixture
def settings(env):
    """This test's settings, as a worker of it would load them."""
    from worker import settings as settings_module

    return settings_module.load(environ=env)


@pytest.fixture
def endpoint(tmp_path, settings):
    """start(alive, consuming, checks, parent) -> a running MetricsServer over a populated directory."""
    from metrics.multiprocess import MetricsDirectory
    from metrics.probes import Probes
    from metrics.server import MetricsServer, build_registry
    from tests.metricskit import fork_scenario

    servers = []

    def start(alive=lambda: 1, consuming=lambda: 1, checks=None, parent=None, timeout=2.0):
        directory = MetricsDirectory(str(tmp_path / "prom"))
        if not os.path.isdir(directory.path):
            fork_scenario("populate", directory.path)
        probes = Probes(alive, consuming, checks or {}, timeout=timeout, cache_seconds=0.5)
        collectors = [directory] + ([parent] if parent else [])
        server = MetricsServer(build_registry(*collectors), probes, "127.0.0.1", 0).start()
        server.url = f"http://127.0.0.1:{server.port}"
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- multiprocess directory -------------------------------------------------------------------------
