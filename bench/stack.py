"""What one benchmark run starts: a fresh database, the fake LLM, `report-worker run` or Celery; and stops again."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pika
import psutil
import redis
from pymongo import MongoClient

from bench import peer
from bench.scenarios import RunConfig
from tests.services import MongoServer, free_port, queues_of, wait_for

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "worker" / "data" / "knowledge_base.json"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", *args]


# `report-worker fake-llm --port N` stops at the CLI's parser on Python 3.11 (an argparse.REMAINDER whose first
# word is an option is refused), so the bench runs the same `worker.fakellm` options and server directly.
FAKE_LLM = ("import argparse, sys; from worker import fakellm; options = argparse.ArgumentParser(); "
            "fakellm.add_arguments(options); sys.exit(fakellm.run(options.parse_args(sys.argv[1:])))")


def fake_llm(*args: str) -> list[str]:
    return [sys.executable, "-c", FAKE_LLM, *args]


class Stack:
    """Everything one configuration needs; `start()` returns when every child is consuming."""

    def __init__(self, config: RunConfig, urls: dict, workdir: Path):
        self.config = config
        self.urls = urls
        self.workdir = workdir
        self.tag = f"bench.{uuid.uuid4().hex[:8]}"
        self.database = self.tag.replace(".", "_")
        self.metrics_port = free_port()
        self.mongo: MongoServer | None = None
        self.llm: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_env = {"RABBITMQ_REQUEST_QUEUE": self.queues["request"],
                           "RABBITMQ_RESPONSE_QUEUE": self.queues["response"], "RABBITMQ_DLQ": self.queues["dlq"]}

    @property
    def queues(self) -> dict:
        return {"request": f"{self.tag}.requests", "response": f"{self.tag}.responses", "dlq": f"{self.tag}.dlq"}

    @property
    def celery(self) -> bool:
        return self.config.engine == "celery"

    @property
    def intake_queue(self) -> str:
        """Where the requests go: our request queue, or this run's Celery task queue."""
        return f"{self.tag}.celery" if self.celery else self.queues["request"]

    @property
    def mongodb_url(self) -> str:
        return self.urls.get("mongodb") or self.mongo.url

    def start(self) -> None:
        if not self.urls.get("mongodb"):
            self.mongo = MongoServer().start()
        client = MongoClient(self.mongodb_url)
        client[self.database].knowledge_base.insert_many(json.loads(KNOWLEDGE.read_text()))
        client.close()
        self._start_llm()
        self._start_worker()

    def _start_llm(self) -> None:
        port = free_port()
        args = fake_llm("--port", str(port), "--latency", str(self.config.latency),
                        "--jitter", str(self.config.jitter))
        self.llm = subprocess.Popen(args, cwd=ROOT, stdout=open(self.workdir / "fake-llm.log", "wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.llm_url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _answers(self.llm_url + "/models"), 20, message="fake LLM did not start")

    def _start_worker(self) -> None:
        c = self.config
        # a cluster run (bench/cluster.py) gives the worker every node and quorum queues
        url = self.urls.get("worker_rabbitmq") or self.urls["rabbitmq"] + (f"?heartbeat={c.heartbeat}" if c.heartbeat else "")
        env = {
            **os.environ,
            "RABBITMQ_URL": url,
            "RABBITMQ_REQUEST_QUEUE": self.queues["request"],
            "RABBITMQ_RESPONSE_QUEUE": self.queues["response"],
            "RABBITMQ_DLQ": self.queues["dlq"],
            "RABBITMQ_QUEUE_TYPE": self.urls.get("queue_type", "classic"),
            "REDIS_URL": self.urls["redis"],
            "REDIS_KEY_PREFIX": self.tag + ":",
            "MONGODB_URL": self.mongodb_url,
            "MONGODB_DATABASE": self.database,
            "OPENAI_BASE_URL": self.llm_url,
            "OPENAI_API_KEY": "bench",
            "LLM_TIMEOUT_SECONDS": str(max(60, c.latency * 3)),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": "WARNING",
        }
        self.worker_env = env
        if self.celery:
            args = peer.worker_command(c.threads, self.intake_queue, f"{self.tag}@bench")
            env = peer.worker_env(env, self.intake_queue, self.workdir)
        else:
            args = cli("run", "--processes", str(c.processes), "--threads", str(c.threads),
                       "--prefetch", str(c.prefetch or c.threads))
        self.worker = subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(self.workdir / "worker.log", "wb"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
        wanted = 1 if self.celery else c.processes
        wait_for(lambda: self.consumers() >= wanted, 60,
                 message=f"worker did not start consuming; see {self.workdir / 'worker.log'}")

    def consumers(self) -> int:
        if self.worker.poll() is not None:
            raise RuntimeError(f"worker exited with {self.worker.returncode}; see {self.workdir / 'worker.log'}")
        connection = pika.BlockingConnection(pika.URLParameters(self.urls["rabbitmq"]))
        try:
            return connection.channel().queue_declare(self.intake_queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if connection.is_open:
                connection.close()

    def worker_processes(self) -> list[psutil.Process]:
        parent = psutil.Process(self.worker.pid)
        return [parent, *parent.children()]

    def scrape(self) -> str:
        if self.celery:
            return ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
                return answer.read().decode()
        except OSError:
            return ""

    def stage_times(self) -> dict[str, tuple[float, int]]:
        """Celery's stage timings (stage -> seconds, calls), left by its processes when they stopped."""
        return peer.stage_times(self.workdir)

    def db_counters(self) -> dict[str, int]:
        """The database server's operation counters (serverStatus opcounters) and requests received."""
        client = MongoClient(self.mongodb_url)
        try:
            status = client.admin.command("serverStatus")
        finally:
            client.close()
        counters = {name: int(value) for name, value in status.get("opcounters", {}).items()}
        counters["requests"] = int(status.get("network", {}).get("numRequests", 0))
        return counters

    def reports(self) -> list[dict]:
        client = MongoClient(self.mongodb_url)
        try:
            fields = {"_id": 0, "request_id": 1, "generation_time_seconds": 1, "processed_by": 1}
            return list(client[self.database].medical_reports.find({}, fields))
        finally:
            client.close()

    def stop(self) -> None:
        for process in (self.worker, self.llm):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self._drop_everything()
        if self.mongo is not None:
            self.mongo.stop()

    def _drop_everything(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.urls["rabbitmq"]))
        channel = connection.channel()
        for name in queues_of(self.worker_env).values():
            channel.queue_delete(name)
        connection.close()
        if self.celery:
            peer.forget(self.urls["rabbitmq"], self.intake_queue)
        if self.urls.get("mongodb"):
            client = MongoClient(self.mongodb_url)
            client.drop_database(self.database)
            client.close()
        cache = redis.Redis.from_url(self.urls["redis"])
        keys = list(cache.scan_iter(self.tag + ":*"))
        if keys:
            cache.delete(*keys)
        cache.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def versions(urls: dict, mongodb_url: str) -> dict:
    """Versions of the broker, the cache and the database, and the machine's CPU count."""
    connection = pika.BlockingConnection(pika.URLParameters(urls["rabbitmq"]))
    rabbit = connection._impl.server_properties.get("version", b"?")
    connection.close()
    cache = redis.Redis.from_url(urls["redis"])
    redis_version = cache.info("server").get("redis_version", "?")
    cache.close()
    client = MongoClient(mongodb_url)
    mongo = client.server_info().get("version", "?")
    client.close()
    return {
        "rabbitmq": rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit),
        "redis": redis_version,
        "mongodb": mongo,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
