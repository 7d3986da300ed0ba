"""`python -m bench --scenario ratelimit`: two VMs' worth of `report-worker run` against a fake LLM limited to
300 requests a minute, with the fleet limiter (LLM_RPM) and without; prints the 429 share, failures and throughput."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pika
import redis
from pymongo import MongoClient

from bench.stack import KNOWLEDGE, ROOT, _answers, cli
from tests.services import MongoServer, free_port, queues_of, wait_for

PROVIDER_RPM = 300          # what the fake LLM admits, for every caller together
PROVIDER_BURST = 1.0        # seconds of that rate it admits at once
VMS, PROCESSES, THREADS = 2, 2, 16
LATENCY = 1.0               # seconds per LLM answer: 64 threads could make 64 calls/s, 5/s are allowed
REQUESTS = 360              # about 72 s at the limit
RETRY = {"RETRY_DELAYS": "2,5,10", "MAX_RETRIES": "3"}  # both runs: the same retries, short enough to finish


@dataclass(frozen=True)
class Mode:
    name: str
    env: dict


MODES = (Mode("with limiter", {"LLM_RPM": str(PROVIDER_RPM)}),
         Mode("without limiter", {}))


class Fleet:
    """A fresh database, the rate-limited fake LLM and two `report-worker run` parents on one set of queues."""

    def __init__(self, mode: Mode, urls: dict, workdir: Path):
        self.mode = mode
        self.urls = urls
        self.workdir = workdir
        self.tag = f"bench.rl.{uuid.uuid4().hex[:8]}"
        self.database = self.tag.replace(".", "_")
        self.queues = {"request": f"{self.tag}.requests", "response": f"{self.tag}.responses",
                       "dlq": f"{self.tag}.dlq"}
        self.mongo: MongoServer | None = None
        self.llm: subprocess.Popen | None = None
        self.parents: list[subprocess.Popen] = []
        self.env: dict = {}

    @property
    def mongodb_url(self) -> str:
        return self.urls.get("mongodb") or self.mongo.url

    def start(self) -> None:
        if not self.urls.get("mongodb"):
            self.mongo = MongoServer().start()
        client = MongoClient(self.mongodb_url)
        client[self.database].knowledge_base.insert_many(json.loads(KNOWLEDGE.read_text()))
        client.close()
        port = free_port()
        self.llm_url = f"http://127.0.0.1:{port}"
        self.llm = subprocess.Popen(
            [sys.executable, "-m", "worker.fakellm", "--port", str(port), "--latency", str(LATENCY),
             "--rpm", str(PROVIDER_RPM), "--burst-seconds", str(PROVIDER_BURST)],
            cwd=ROOT, stdout=open(self.workdir / "fake-llm.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for(lambda: _answers(self.llm_url + "/v1/models"), 20, message="fake LLM did not start")
        self.env = {
            **os.environ, **RETRY, **self.mode.env,
            "RABBITMQ_URL": self.urls["rabbitmq"], "RABBITMQ_REQUEST_QUEUE": self.queues["request"],
            "RABBITMQ_RESPONSE_QUEUE": self.queues["response"], "RABBITMQ_DLQ": self.queues["dlq"],
            "REDIS_URL": self.urls["redis"], "REDIS_KEY_PREFIX": self.tag + ":",  # one Redis for both VMs
            "MONGODB_URL": self.mongodb_url, "MONGODB_DATABASE": self.database,
            "OPENAI_BASE_URL": self.llm_url + "/v1", "OPENAI_API_KEY": "bench", "LLM_TIMEOUT_SECONDS": "30",
            "GRACEFUL_TIMEOUT": "5", "LOG_LEVEL": "WARNING",
        }
        for vm in range(VMS):
            env = {**self.env, "WORKER_NAME": f"bench-vm-{vm}", "METRICS_PORT": str(free_port())}
            self.parents.append(subprocess.Popen(
                cli("run", "--processes", str(PROCESSES), "--threads", str(THREADS), "--prefetch", str(THREADS)),
                cwd=ROOT, env=env, stdout=open(self.workdir / f"vm-{vm}.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        wait_for(lambda: self.consumers() >= VMS * PROCESSES, 60,
                 message=f"the workers did not start consuming; see {self.workdir}")

    def consumers(self) -> int:
        for parent in self.parents:
            if parent.poll() is not None:
                raise RuntimeError(f"a worker exited with {parent.returncode}; see {self.workdir}")
        connection = pika.BlockingConnection(pika.URLParameters(self.urls["rabbitmq"]))
        try:
            return connection.channel().queue_declare(self.queues["request"], passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if connection.is_open:
                connection.close()

    def llm_stats(self) -> dict:
        with urllib.request.urlopen(self.llm_url + "/_stats", timeout=10) as answer:
            return json.loads(answer.read())

    def stored(self) -> int:
        client = MongoClient(self.mongodb_url)
        try:
            return client[self.database].medical_reports.count_documents({})
        finally:
            client.close()

    def stop(self) -> None:
        for process in (*self.parents, self.llm):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (*self.parents, self.llm):
            if process is not None:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if self.env:
            connection = pika.BlockingConnection(pika.URLParameters(self.urls["rabbitmq"]))
            channel = connection.channel()
            for name in queues_of(self.env).values():
                channel.queue_delete(name)
            connection.close()
        if self.urls.get("mongodb"):
            client = MongoClient(self.mongodb_url)
            client.drop_database(self.database)
            client.close()
        cache = redis.Redis.from_url(self.urls["redis"])
        keys = list(cache.scan_iter(self.tag + ":*"))
        if keys:
            cache.delete(*keys)
        cache.close()
        if self.mongo is not None:
            self.mongo.stop()


def collect(url: str, queue: str, count: int, timeout: float) -> dict[str, tuple[str, float]]:
    """Responses until `count` requests were answered: request_id -> (status, arrival time)."""
    answers: dict[str, tuple[str, float]] = {}

    def on_response(channel, method, properties, body):
        response = json.loads(body)
        answers.setdefault(response["request_id"], (response["status"], time.time()))

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_consume(queue, on_response, auto_ack=True)
    started = shown = time.monotonic()
    while len(answers) < count and time.monotonic() - started < timeout:
        connection.process_data_events(time_limit=0.5)
        if time.monotonic() - shown >= 0.5:
            shown = time.monotonic()
            sys.stderr.write(f"\r  {len(answers)}/{count} answered, {shown - started:5.1f} s")
    sys.stderr.write("\n")
    connection.close()
    return answers


def run_mode(mode: Mode, urls: dict, workdir: Path, requests: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(mode, urls, workdir)
    print(f"# ratelimit: {mode.name}", file=sys.stderr)
    try:
        fleet.start()
        times_file = workdir / "published.json"
        subprocess.run([sys.executable, "-m", "bench.publish", urls["rabbitmq"], fleet.queues["request"],
                        str(requests), str(times_file)], cwd=ROOT, check=True, timeout=120)
        published = json.loads(times_file.read_text())
        answers = collect(urls["rabbitmq"], fleet.queues["response"], requests, requests / 5 * 3 + 180)
        stats = fleet.llm_stats()
        stored = fleet.stored()
    finally:
        fleet.stop()
    return figures(mode, published, answers, stats, stored, requests)


def figures(mode: Mode, published: dict, answers: dict, stats: dict, stored: int, requests: int) -> dict:
    succeeded = [at for status, at in answers.values() if status == "success"]
    first = min(published.values())
    seconds = max(max(succeeded) - first, 1e-9) if succeeded else 0.0
    limits = stats.get("limits", {})
    refused = sum(limits.get("refused", {}).values())
    calls = limits.get("accepted", 0) + refused
    rate = len(succeeded) / seconds if seconds else 0.0
    return {
        "mode": mode.name, "requests": requests, "answered": len(answers), "success": len(succeeded),
        "failed": sum(1 for status, _ in answers.values() if status == "failed"), "stored": stored,
        "llm_calls": calls, "llm_429": refused, "share_429": round(refused / calls, 4) if calls else 0.0,
        "seconds": round(seconds, 1), "reports_per_s": round(rate, 3), "limit_per_s": PROVIDER_RPM / 60,
        "of_limit": round(rate / (PROVIDER_RPM / 60), 3),
    }


def table(rows: list[dict]) -> str:
    head = (f"{'ratelimit: 2 VMs x P=2 x T=16, fake LLM 300 rpm, L=1s':58} | requests | success | failed | "
            f"LLM calls | 429s | 429 share | rep/s | of limit")
    lines = [head]
    for row in rows:
        lines.append(f"{row['mode']:58} | {row['requests']:8} | {row['success']:7} | {row['failed']:6} | "
                     f"{row['llm_calls']:9} | {row['llm_429']:4} | {row['share_429']:9.2%} | "
                     f"{row['reports_per_s']:5.2f} | {row['of_limit']:.2f}")
    return "\n".join(lines)


def run(urls: dict, out: Path, scale: float = 1.0) -> int:
    """Both runs, one after the other; exit 1 unless the limiter run meets the issue's targets."""
    requests = max(60, int(REQUESTS * scale))
    outdir = out / time.strftime("%Y%m%d-%H%M%S")
    rows = [run_mode(mode, urls, outdir / mode.name.replace(" ", "-"), requests) for mode in MODES]
    print(table(rows))
    (outdir / "results.json").write_text(json.dumps({"scenario": "ratelimit", "runs": rows}, indent=2))
    print(f"raw figures: {outdir / 'results.json'}")
    limited = rows[0]
    met = (limited["success"] == limited["requests"] and limited["failed"] == 0 and limited["share_429"] <= 0.01
           and limited["of_limit"] >= 0.9)
    print(f"with the limiter: {'targets met' if met else 'TARGETS MISSED'} "
          f"(every request succeeds, <= 1 % of LLM calls get 429, >= 0.9 of the limit)")
    return 0 if met else 1
