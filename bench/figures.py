"""Turn one run's raw timings, scrape and process samples into the figures we report."""

from collections import Counter

from tests.services import series

STAGES = ("cache", "user", "knowledge", "llm", "store", "publish")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def metric_sums(text: str, name: str, label: str | None = None) -> dict[str, float] | float:
    """Sum a metric's samples from exposition text, by one label's value when `label` is given."""
    by_label: dict[str, float] = {}
    total = 0.0
    for found, labels, value in series(text):
        if found == name:
            total += value
            key = labels.get(label, "") if label else ""
            by_label[key] = by_label.get(key, 0.0) + value
    return by_label if label else total


def scraped_stage_times(scrape: str) -> dict[str, tuple[float, int]]:
    """Stage -> (seconds, calls) from report-worker's `report_worker_stage_seconds` histogram."""
    sums = metric_sums(scrape, "report_worker_stage_seconds_sum", "stage")
    counts = metric_sums(scrape, "report_worker_stage_seconds_count", "stage")
    return {stage: (sums[stage], int(counts.get(stage, 0))) for stage in sums}


def stage_shares(stages: dict[str, tuple[float, int]]) -> dict[str, float]:
    total = sum(seconds for seconds, _ in stages.values())
    return {stage: round(stages.get(stage, (0.0, 0))[0] / total, 4) for stage in STAGES} if total else {}


def stage_means(stages: dict[str, tuple[float, int]], reports: int) -> dict[str, dict]:
    """Per stage: mean ms per call, calls per report, ms per report (the slot time a report spends there)."""
    means = {}
    for stage in STAGES:
        seconds, calls = stages.get(stage, (0.0, 0))
        if calls:
            means[stage] = {"ms_per_call": round(seconds * 1000 / calls, 3),
                            "calls_per_report": round(calls / max(reports, 1), 2),
                            "ms_per_report": round(seconds * 1000 / max(reports, 1), 3)}
    return means


def db_round_trips(before: dict, after: dict, reports: int) -> dict[str, float]:
    """The database server's counters per report over the run: CRUD operations (insert, query, update,
    delete, getmore), other commands (findAndModify, hello heartbeats, ...) and every request it received."""
    per_report = {name: round((after.get(name, 0) - before.get(name, 0)) / max(reports, 1), 2)
                  for name in ("insert", "query", "update", "delete", "getmore", "command", "requests")}
    crud = ("insert", "query", "update", "delete", "getmore")
    per_report["crud"] = round(sum(per_report[name] for name in crud), 2)
    return per_report


def summarize(config, published: dict, received: dict, reports: list[dict], scrape: str,
              cpu_seconds: float, memory: dict, db_cpu_seconds: float | None,
              stages: dict[str, tuple[float, int]]) -> dict:
    done = [rid for rid in published if rid in received]
    first_publish = min(published.values())
    last_response = max(received[rid] for rid in done) if done else first_publish
    elapsed = max(last_response - first_publish, 1e-9)
    rate = len(done) / elapsed
    latencies = [received[rid] - published[rid] for rid in done]
    llm_time = {r["request_id"]: r.get("generation_time_seconds", 0.0) for r in reports}
    overheads = [received[rid] - published[rid] - llm_time.get(rid, 0.0) for rid in done]
    spread = Counter(r.get("processed_by", "?") for r in reports)
    ideal = config.ideal_rate
    return {
        "config": config.label, "engine": config.engine, "scenario": config.scenario,
        "processes": config.processes, "threads": config.threads, "latency": config.latency,
        "prefetch": config.prefetch or config.threads, "requests": config.requests,
        "answered": len(done), "reports_stored": len(reports),
        "seconds": round(elapsed, 3),
        "reports_per_s": round(rate, 2),
        "ideal_per_s": round(ideal, 2) if ideal else None,
        "efficiency": round(rate / ideal, 3) if ideal else None,
        "latency_p50": _r(percentile(latencies, 50)), "latency_p95": _r(percentile(latencies, 95)),
        "latency_p99": _r(percentile(latencies, 99)),
        "overhead_p50": _r(percentile(overheads, 50)), "overhead_p95": _r(percentile(overheads, 95)),
        "stage_shares": stage_shares(stages),
        "stage_means": stage_means(stages, len(done)),
        "cpu_ms_per_report": round(cpu_seconds * 1000 / max(len(done), 1), 3),
        "db_cpu_ms_per_report": round(db_cpu_seconds * 1000 / max(len(done), 1), 3) if db_cpu_seconds else None,
        "parent_rss_mb": round(memory["parent_rss"] / 2**20, 1),
        "max_child_rss_mb": round(memory["child_rss"] / 2**20, 1) if memory["child_rss"] else None,
        "parent_pss_mb": round(memory["parent_pss"] / 2**20, 1),
        "max_child_pss_mb": round(memory["child_pss"] / 2**20, 1) if memory["child_pss"] else None,
        "reconnects": int(metric_sums(scrape, "report_worker_broker_reconnects_total")) if scrape else None,
        "redeliveries": int(metric_sums(scrape, "report_worker_redeliveries_total")) if scrape else None,
        "per_child": sorted(spread.values()),
        "fairness": round(min(spread.values()) / max(spread.values()), 3) if len(spread) > 1 else 1.0,
        "scrape_ok": bool(scrape),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


COLUMNS = [
    ("config", 44), ("reports_per_s", 8), ("ideal_per_s", 8), ("efficiency", 6), ("latency_p50", 7),
    ("latency_p95", 7), ("latency_p99", 7), ("overhead_p50", 7), ("overhead_p95", 7), ("cpu_ms_per_report", 7),
    ("parent_rss_mb", 6), ("parent_pss_mb", 6), ("max_child_rss_mb", 6), ("max_child_pss_mb", 6),
    ("reconnects", 4), ("redeliveries", 4), ("fairness", 5),
]
HEADERS = ["configuration", "rep/s", "ideal", "eff", "p50 s", "p95 s", "p99 s", "ovh50", "ovh95", "cpu ms",
           "parRSS", "parPSS", "chRSS", "chPSS", "reco", "redl", "fair"]


def table_header() -> str:
    return " | ".join(h.ljust(w) for h, (_, w) in zip(HEADERS, COLUMNS))


def table_row(figures: dict) -> str:
    cells = []
    for key, width in COLUMNS:
        value = figures.get(key)
        cells.append(("-" if value is None else str(value)).ljust(width))
    return " | ".join(cells)


def stage_line(figures: dict) -> str:
    shares = figures.get("stage_shares") or {}
    stages = ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) if shares else "n/a (no stage timings)"
    means = figures.get("stage_means") or {}
    per_report = ", ".join(f"{k} {m['calls_per_report']:g}×{m['ms_per_call']:.2f}={m['ms_per_report']:.1f}"
                           for k, m in means.items()) or "n/a"
    cpu = [f"{name} {figures[key]}" for name, key in (("db server", "db_cpu_ms_per_report"),
           ("fake llm", "llm_cpu_ms_per_report"), ("broker", "broker_cpu_ms_per_report")) if figures.get(key)]
    busy, foreign = figures.get("machine_cpu_busy"), figures.get("foreign_cpu_busy")
    db = figures.get("db_per_report") or {}
    trips = (f"\n    db per report: {db['crud']} CRUD round trips (insert {db['insert']}, query {db['query']}, "
             f"update {db['update']}, delete {db['delete']}), {db['command']} other commands, "
             f"{db['requests']} requests in all") if db else ""
    return (f"    stage shares: {stages}\n    stage ms per report (calls × mean ms): {per_report}{trips}"
            f"\n    other cpu ms/report: {', '.join(cpu) or 'n/a'}"
            + (f"; machine cpu busy {busy:.0%}" if busy is not None else "")
            + (f", of which not this run's processes {foreign:.0%}" if foreign is not None else ""))
