"""`python -m bench --scenario NAME ...`: run configurations, print a table, write the raw figures as JSON."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pika
import psutil

from bench import figures, ratelimit
from bench.scenarios import SCENARIOS, RunConfig, custom, scaled
from bench.stack import Stack, versions

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class Sampler:
    """Peak RSS and PSS of the parent and of any child, sampled while the run goes.

    RSS counts the pages a child shares with the parent (the parent imports the worker before it
    forks) in full in every process; PSS divides shared pages among their sharers."""

    def __init__(self, processes: list[psutil.Process]):
        self.processes = processes
        self.peaks = {"parent_rss": 0, "child_rss": 0, "parent_pss": 0, "child_pss": 0}

    def sample(self) -> None:
        for index, process in enumerate(self.processes):
            try:
                memory = process.memory_full_info()
            except psutil.Error:
                continue
            who = "parent" if index == 0 else "child"
            self.peaks[f"{who}_rss"] = max(self.peaks[f"{who}_rss"], memory.rss)
            self.peaks[f"{who}_pss"] = max(self.peaks[f"{who}_pss"], memory.pss)


def progress(done: int, total: int, started: float) -> None:
    width = 32
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {time.monotonic() - started:6.1f}s")
    sys.stderr.flush()


def collect(url: str, queue: str, count: int, timeout: float, sampler: Sampler) -> dict[str, float]:
    """Take responses off the response queue until `count` arrived; request_id -> arrival time."""
    received: dict[str, float] = {}

    def on_response(channel, method, properties, body):
        received.setdefault(json.loads(body)["request_id"], time.time())

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_consume(queue, on_response, auto_ack=True)
    started = time.monotonic()
    next_sample = 0.0
    while len(received) < count and time.monotonic() - started < timeout:
        connection.process_data_events(time_limit=0.2)
        if time.monotonic() >= next_sample:
            sampler.sample()
            progress(len(received), count, started)
            next_sample = time.monotonic() + 0.5
    progress(len(received), count, started)
    sys.stderr.write("\n")
    connection.close()
    return received


def run_one(config: RunConfig, urls: dict, outdir: Path, machine: dict) -> dict:
    workdir = outdir / f"{config.scenario}-P{config.processes}-T{config.threads}-pf{config.prefetch}-L{config.latency:g}"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config, urls, workdir)
    print(f"# {config.label}", file=sys.stderr)
    try:
        stack.start()
        machine.update(machine or versions(urls, stack.mongodb_url))
        processes = stack.worker_processes()
        database = psutil.Process(stack.mongo.pid) if stack.mongo else None
        others = {"llm": [psutil.Process(stack.llm.pid)], "broker": broker_processes()}
        others_before = {name: cpu_seconds(procs) for name, procs in others.items()}
        machine_before = psutil.cpu_times()
        cpu_before = cpu_seconds(processes)
        db_before = cpu_seconds([database]) if database else None
        sampler = Sampler(processes)
        times_file = workdir / "published.json"
        publisher = subprocess.Popen([sys.executable, "-m", "bench.publish", urls["rabbitmq"],
                                      stack.queues["request"], str(config.requests), str(times_file)], cwd=ROOT)
        ideal = config.ideal_rate or 200.0
        timeout = config.requests / ideal * 4 + config.latency * 4 + 120
        received = collect(urls["rabbitmq"], stack.queues["response"], config.requests, timeout, sampler)
        publisher.wait(60)
        published = json.loads(times_file.read_text())
        cpu_used = cpu_seconds(processes) - cpu_before
        db_used = cpu_seconds([database]) - db_before if database else None
        others_used = {name: cpu_seconds(procs) - others_before[name] for name, procs in others.items()}
        machine_busy = busy_fraction(machine_before, psutil.cpu_times())
        scrape = stack.scrape()
        (workdir / "metrics.txt").write_text(scrape)
        reports = stack.reports()
    finally:
        stack.stop()
    result = figures.summarize(config, published, received, reports, scrape, cpu_used, sampler.peaks, db_used)
    answered = max(result["answered"], 1)
    result["llm_cpu_ms_per_report"] = round(others_used["llm"] * 1000 / answered, 3)
    result["broker_cpu_ms_per_report"] = round(others_used["broker"] * 1000 / answered, 3)
    result["machine_cpu_busy"] = round(machine_busy, 3)
    return result


def broker_processes() -> list[psutil.Process]:
    """RabbitMQ's Erlang VM when it runs on this machine (for its CPU share), else nothing."""
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("beam.smp", "beam")]


def busy_fraction(before, after) -> float:
    """Share of all cores' time spent not idle between two psutil.cpu_times() readings."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted([*SCENARIOS, "ratelimit"]),
                        help="run this scenario (repeatable); default: smoke")
    parser.add_argument("--processes", type=int, help="a custom run instead: P")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply each run's request count")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--mongodb-url", help="use this MongoDB instead of a fresh stand-in per run")
    parser.add_argument("--out", default=str(ROOT / ".bench"), help="folder for logs and the JSON results")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    urls = {"rabbitmq": args.rabbitmq_url, "redis": args.redis_url, "mongodb": args.mongodb_url}
    if args.scenario == ["ratelimit"]:  # two parents at once, its own table: bench/ratelimit.py
        return ratelimit.run(urls, Path(args.out), args.scale)
    if args.processes:
        configs = custom(args.processes, args.threads, args.latency, args.requests, args.prefetch)
    else:
        configs = [c for name in (args.scenario or ["smoke"]) for c in SCENARIOS[name]()]
    configs = scaled(configs, args.scale) if args.scale != 1.0 else configs
    outdir = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    results = []
    info: dict = {}
    for config in configs:
        results.append(run_one(config, urls, outdir, info))
    print(f"rabbitmq {info['rabbitmq']} · redis {info['redis']} · mongodb {info['mongodb']} · "
          f"{info['cpus']} CPUs · {info['date']}")
    print(figures.table_header())
    for row in results:
        print(figures.table_row(row))
        print(figures.stage_line(row))
    (outdir / "results.json").write_text(json.dumps({"machine": info, "runs": results}, indent=2))
    print(f"raw figures: {outdir / 'results.json'}")
    incomplete = [r["config"] for r in results if r["answered"] < r["requests"]]
    if incomplete:
        print(f"incomplete runs: {incomplete}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
