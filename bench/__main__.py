"""`python -m bench --scenario NAME ...`: run configurations, print a table, write the raw figures as JSON."""

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pika
import psutil

from bench import cluster, figures, peer, ratelimit, targets
from bench.scenarios import SCENARIOS, RunConfig, custom, scaled
from bench.stack import Stack, versions

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ("cluster", "cluster-smoke")   # on the main node and on scripts/cluster.sh's nodes: bench/cluster.py


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


def collect(url: str, queue: str, count: int, timeout: float,
            sampler: Sampler) -> tuple[dict[str, float], dict[str, str]]:
    """Take responses off the response queue until `count` arrived; request_id -> arrival time, and -> status."""
    received: dict[str, float] = {}
    statuses: dict[str, str] = {}

    def on_response(channel, method, properties, body):
        response = json.loads(body)
        received.setdefault(response["request_id"], time.time())
        statuses.setdefault(response["request_id"], response.get("status", "?"))

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
    return received, statuses


def run_one(config: RunConfig, urls: dict, outdir: Path, machine: dict, round_: int = 1) -> dict:
    shape = (f"c{config.threads}" if config.engine == "celery"
             else f"P{config.processes}-T{config.threads}-pf{config.prefetch or config.threads}")
    workdir = outdir / f"r{round_}-{config.scenario}-{config.engine}-{shape}-L{config.latency:g}"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config, urls, workdir)
    print(f"# {config.label}", file=sys.stderr)
    try:
        stack.start()
        if "rabbitmq" not in machine:
            machine.update(versions(urls, stack.mongodb_url))
        processes = stack.worker_processes()
        database = psutil.Process(stack.mongo.pid) if stack.mongo else None
        others = {"llm": [psutil.Process(stack.llm.pid)], "broker": broker_processes(urls["rabbitmq"])}
        others_before = {name: cpu_seconds(procs) for name, procs in others.items()}
        machine_before, harness_before = psutil.cpu_times(), harness_cpu()
        cpu_before = cpu_seconds(processes)
        db_cpu_before = cpu_seconds([database]) if database else None
        sampler = Sampler(processes)
        times_file = workdir / "published.json"
        db_before = stack.db_counters()
        publisher = subprocess.Popen([sys.executable, "-m", "bench.publish", urls["rabbitmq"], stack.intake_queue,
                                      str(config.requests), str(times_file), *(["celery"] if stack.celery else [])],
                                     cwd=ROOT)
        ideal = config.ideal_rate or 200.0
        timeout = config.requests / ideal * 4 + config.latency * 4 + 120
        received, statuses = collect(urls["rabbitmq"], stack.queues["response"], config.requests, timeout, sampler)
        publisher.wait(60)
        published = json.loads(times_file.read_text())
        cpu_used = cpu_seconds(processes) - cpu_before
        db_used = cpu_seconds([database]) - db_cpu_before if database else None
        db_after = stack.db_counters()
        others_used = {name: cpu_seconds(procs) - others_before[name] for name, procs in others.items()}
        machine_after = psutil.cpu_times()
        machine_busy = busy_fraction(machine_before, machine_after)
        ours = cpu_used + (db_used or 0) + sum(others_used.values()) + harness_cpu() - harness_before
        foreign = foreign_fraction(machine_before, machine_after, ours)
        scrape = stack.scrape()
        (workdir / "metrics.txt").write_text(scrape)
        reports = stack.reports()
    finally:
        stack.stop()
    stages = stack.stage_times() if stack.celery else figures.scraped_stage_times(scrape)
    result = figures.summarize(config, published, received, reports, scrape, cpu_used, sampler.peaks, db_used, stages)
    answered = max(result["answered"], 1)
    result["round"] = round_
    result["succeeded"] = sum(statuses.get(rid) == "success" for rid in published)
    result["db_per_report"] = figures.db_round_trips(db_before, db_after, answered)
    result["llm_cpu_ms_per_report"] = round(others_used["llm"] * 1000 / answered, 3)
    result["broker_cpu_ms_per_report"] = round(others_used["broker"] * 1000 / answered, 3)
    result["machine_cpu_busy"] = round(machine_busy, 3)
    result["foreign_cpu_busy"] = round(foreign, 3)
    return result


def broker_processes(url: str) -> list[psutil.Process]:
    """The Erlang VM listening on the broker's port when it runs on this machine (for its CPU share), else
    nothing; other RabbitMQ nodes on the machine (someone else's cluster) are not ours."""
    port = urlsplit(url).port or 5672
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("beam.smp", "beam"):
            with contextlib.suppress(psutil.Error):
                if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                    found.append(process)
    return found


def harness_cpu() -> float:
    """CPU seconds of this process and of its children that ended (the publisher)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def foreign_fraction(before, after, ours: float) -> float:
    """Share of all cores' time that went to processes not of this run (other people's tests) during it."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return max(0.0, (total - idle - ours) / total) if total > 0 else 0.0


def busy_fraction(before, after) -> float:
    """Share of all cores' time spent not idle between two psutil.cpu_times() readings."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return 1 - idle / total if total > 0 else 0.0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted([*SCENARIOS, "ratelimit", *CLUSTER]),
                        help="run this scenario (repeatable); default: smoke")
    parser.add_argument("--processes", type=int, help="a custom run instead: P")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--peer", type=int, default=0, metavar="C",
                        help="with a custom run: Celery's threads pool with concurrency C after it (same L, N)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole list of configurations this many times")
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
    if args.scenario and args.scenario[0] in CLUSTER:
        configs = []
    elif args.processes:
        configs = custom(args.processes, args.threads, args.latency, args.requests, args.prefetch, args.peer)
    else:
        configs = [c for name in (args.scenario or ["smoke"]) for c in SCENARIOS[name]()]
    configs = scaled(configs, args.scale) if args.scale != 1.0 else configs
    info: dict = {}
    if any(c.engine == "celery" for c in configs):
        peer.require()
        info["celery"] = peer.version()
    outdir = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    results = []
    if args.scenario and args.scenario[0] in CLUSTER:
        results = cluster.run(run_one, urls, outdir, info, args.repeat, smoke=args.scenario[0] == "cluster-smoke")
    for round_ in range(1, args.repeat + 1):
        for config in configs:
            results.append(run_one(config, urls, outdir, info, round_))
    print(f"rabbitmq {info['rabbitmq']} · redis {info['redis']} · mongodb {info['mongodb']} · "
          f"{info['cpus']} CPUs · {info['date']}" + (f" · celery {info['celery']}" if "celery" in info else ""))
    print(figures.table_header())
    for row in results:
        print(figures.table_row(row))
        print(figures.stage_line(row))
    compared = [] if args.scenario and args.scenario[0] in CLUSTER else results  # issue 14's targets: not these
    for line in [*targets.comparison_lines(compared), *targets.target_lines(compared), *cluster.comparison_lines(results)]:
        print(line)
    document = {"machine": info, "runs": results, **targets.summary(results)}
    (outdir / "results.json").write_text(json.dumps(document, indent=2))
    print(f"raw figures: {outdir / 'results.json'}")
    incomplete = [r["config"] for r in results if r["succeeded"] < r["requests"]]
    if incomplete:
        print(f"runs where not every request was answered with success: {incomplete}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
