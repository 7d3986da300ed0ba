"""A parent that forks real children recording metrics, run by the metrics tests in a fresh interpreter.

A fresh interpreter because prometheus_client picks multiprocess mode at import, and pytest has long
imported it in single-process mode. Usage: python -m tests.metrics_fork SCENARIO DIR [ARGS...];
prints one JSON object on stdout.
"""

import json
import os
import signal
import sys
import threading
import time

from metrics.multiprocess import MetricsDirectory, prepare_directory


def sample(families, name: str, **labels) -> float | None:
    """The value of one sample in collected families, or None if absent."""
    wanted = {k: str(v) for k, v in labels.items()}
    for family in families:
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items()):
                return s.value
    return None


def snapshot(directory: MetricsDirectory) -> dict:
    families = directory.collect()
    return {
        "messages": sample(families, "report_worker_messages_total", outcome="success"),
        "processed": sample(families, "report_worker_processing_seconds_count"),
        "inflight": sample(families, "report_worker_inflight_messages"),
        "files": len(directory.files()),
    }


def fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def aggregate(path: str) -> dict:
    """Four live children record; one is killed -9; the rest exit. Snapshots in between."""
    directory = prepare_directory(path)
    from metrics import definitions as d

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child(i: int):
        d.MESSAGES.labels("success").inc(i + 1)
        for _ in range(i + 1):
            d.PROCESSING_SECONDS.observe(0.2)
        d.INFLIGHT.set(i + 1)
        os.write(ready_w, b"r")
        os.read(go_r, 1)            # block until the parent lets us go

    pids = [fork(lambda i=i: child(i)) for i in range(4)]
    for _ in pids:
        os.read(ready_r, 1)
    result = {"alive": snapshot(directory)}
    os.kill(pids[0], signal.SIGKILL)
    os.waitpid(pids[0], 0)
    result["killed"] = snapshot(directory)
    directory.mark_dead(pids[0])
    result["killed_marked"] = snapshot(directory)
    os.write(go_w, b"ggg")
    for pid in pids[1:]:
        os.waitpid(pid, 0)
        directory.mark_dead(pid)
    result["all_dead"] = snapshot(directory)
    result["file_names"] = sorted(os.path.basename(f) for f in directory.files())
    return result


def populate(path: str) -> dict:
    """Two children record a known set of metrics and exit; their files stay for a reader."""
    directory = prepare_directory(path)
    from metrics import definitions as d

    def child():
        d.MESSAGES.labels("success").inc(3)
        d.MESSAGES.labels("retried").inc()
        d.STAGE_SECONDS.labels("llm").observe(1.5)
        d.LLM_TOKENS.labels("gpt-4o", "prompt").inc(100)
        d.CACHE_REQUESTS.labels("report", "hit").inc()

    for pid in [fork(child) for _ in range(2)]:
        os.waitpid(pid, 0)
        directory.mark_dead(pid)
    return {"files": len(directory.files())}


def restarts(path: str, total: str = "200", slots: str = "2", naive: str = "") -> dict:
    """`total` short-lived children, `slots` at a time, each records then exits (every 3rd by kill -9).

    A scraper thread collects all the while and notes any counter that went down. With `naive`,
    the library's mark_process_dead is used instead of our folding, for comparison.
    """
    total, slots = int(total), int(slots)
    directory = prepare_directory(path)
    from prometheus_client.multiprocess import mark_process_dead
    from metrics import definitions as d

    def child(n: int):
        d.INFLIGHT.set(1)
        d.MESSAGES.labels("success").inc()
        d.PROCESSING_SECONDS.observe(0.05)
        d.STAGE_SECONDS.labels("llm").observe(0.01)
        d.LLM_TOKENS.labels("gpt-4o", "prompt").inc(10)
        if n % 3 == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    stop = threading.Event()
    seen = {"scrapes": 0, "backwards": [], "max_files": 0, "max_seconds": 0.0, "sum_seconds": 0.0}

    def scrape_loop():
        last = {"messages": 0.0, "processed": 0.0}
        while not stop.is_set():
            started = time.perf_counter()
            snap = snapshot(directory)
            took = time.perf_counter() - started
            seen["scrapes"] += 1
            seen["max_seconds"] = max(seen["max_seconds"], took)
            seen["sum_seconds"] += took
            seen["max_files"] = max(seen["max_files"], snap["files"])
            for key in last:
                value = snap[key] or 0.0
                if value < last[key]:
                    seen["backwards"].append({key: [last[key], value]})
                last[key] = value

    scraper = threading.Thread(target=scrape_loop, daemon=True)
    scraper.start()
    started = time.monotonic()
    live, forked = set(), 0
    while forked < total or live:
        while forked < total and len(live) < slots:
            live.add(fork(lambda n=forked: child(n)))
            forked += 1
        pid, _status = os.waitpid(-1, 0)
        live.discard(pid)
        if naive:
            mark_process_dead(pid, directory.path)
        else:
            directory.mark_dead(pid)
    elapsed = time.monotonic() - started
    stop.set()
    scraper.join()
    timings = []
    for _ in range(20):
        t = time.perf_counter()
        final = snapshot(directory)
        timings.append(time.perf_counter() - t)
    return {**seen, "final": final, "restarts": forked, "seconds": round(elapsed, 2),
            "final_scrape_ms": round(min(timings) * 1000, 3),
            "mean_scrape_ms": round(seen["sum_seconds"] / max(seen["scrapes"], 1) * 1000, 3)}


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    print(json.dumps(globals()[scenario](*args)))
