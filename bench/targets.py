"""Issue 14's targets checked against the rows of one invocation, and report-worker beside Celery."""

from dataclasses import dataclass

BASELINE_L0 = 125.28  # reports/s, `overhead P=2 T=8 L=0s N=2000` in bench/README.md (2026-11-30)


@dataclass(frozen=True)
class Target:
    text: str
    latency: float
    processes: int
    threads: int | None   # None: any T
    measure: str          # efficiency, ratio (report-worker / Celery reports/s) or reports_per_s
    at_least: float


TARGETS = (
    Target("efficiency at L=1 s, P=2, T=32", 1.0, 2, 32, "efficiency", 0.90),
    Target("report-worker P=2 T=32 / Celery threads c=64 at L=1 s", 1.0, 2, 32, "ratio", 1.05),
    Target("report-worker P=2 T=64 / Celery threads c=128 at L=1 s", 1.0, 2, 64, "ratio", 1.25),
    Target(f"reports/s at L=0, P=2 (1.6 × the {BASELINE_L0} of 2026-11-30)", 0.0, 2, None, "reports_per_s",
           round(1.6 * BASELINE_L0, 1)),
)


def pairs(results: list[dict]) -> list[dict]:
    """Each report-worker row with a Celery row of the same round, L and N: the one with as many slots
    (c = P·T) if there is one, else the first after it (a custom run with --peer C)."""
    found = []
    for index, ours in enumerate(results):
        if ours["engine"] != "report-worker":
            continue
        peers = [r for r in results[index + 1:] if r["engine"] == "celery" and r["round"] == ours["round"]
                 and r["latency"] == ours["latency"] and r["requests"] == ours["requests"]]
        peers.sort(key=lambda r: r["threads"] != ours["processes"] * ours["threads"])
        if peers:
            ratio = ours["reports_per_s"] / peers[0]["reports_per_s"] if peers[0]["reports_per_s"] else None
            found.append({"round": ours["round"], "ours": ours, "celery": peers[0],
                          "ratio": round(ratio, 3) if ratio else None})
    return found


def measured(target: Target, results: list[dict]) -> list[tuple[int, float]]:
    """(round, value) of every row this target applies to."""
    def applies(row: dict) -> bool:
        return (row["engine"] == "report-worker" and row["latency"] == target.latency
                and row["processes"] == target.processes and target.threads in (None, row["threads"]))

    if target.measure == "ratio":
        return [(p["round"], p["ratio"]) for p in pairs(results) if applies(p["ours"]) and p["ratio"] is not None
                and p["celery"]["threads"] == p["ours"]["processes"] * p["ours"]["threads"]]
    return [(r["round"], r[target.measure]) for r in results if applies(r) and r.get(target.measure) is not None]


def verdicts(results: list[dict]) -> list[dict]:
    checked = []
    for target in TARGETS:
        values = measured(target, results)
        met = [value >= target.at_least for _, value in values]
        verdict = "not measured" if not met else "met" if all(met) else "missed" if not any(met) else "mixed"
        checked.append({"target": target.text, "measure": target.measure, "at_least": target.at_least,
                        "values": values, "verdict": verdict})
    return checked


def summary(results: list[dict]) -> dict:
    """The pairs and the targets' verdicts, for results.json."""
    found = [{"round": p["round"], "report_worker": p["ours"]["config"], "celery": p["celery"]["config"],
              "ratio": p["ratio"]} for p in pairs(results)]
    return {"pairs": found, "targets": verdicts(results)}


COMPARISON = [("round", 5), ("L", 4), ("N", 5), ("report-worker", 13), ("rep/s", 7), ("eff", 5), ("cpu ms", 6),
              ("db ms", 6), ("busy", 4), ("celery", 16), ("rep/s", 7), ("eff", 5), ("cpu ms", 6), ("db ms", 6),
              ("busy", 4), ("ratio", 5)]


def comparison_lines(results: list[dict]) -> list[str]:
    found = pairs(results)
    if not found:
        return []
    lines = ["report-worker beside Celery (same L, N, fake LLM; a fresh database each; ratio = report-worker / "
             "Celery reports/s; cpu ms = worker processes' CPU per report, db ms = the database server's; "
             "busy = share of the machine's CPU that processes not of the run used meanwhile: other people's load)",
             " | ".join(name.ljust(width) for name, width in COMPARISON)]
    for p in found:
        ours, peer = p["ours"], p["celery"]
        cells = [p["round"], f"{ours['latency']:g}s", ours["requests"],
                 f"P={ours['processes']} T={ours['threads']}", ours["reports_per_s"], ours["efficiency"],
                 ours["cpu_ms_per_report"], ours["db_cpu_ms_per_report"], _percent(ours.get("foreign_cpu_busy")),
                 f"threads c={peer['threads']}", peer["reports_per_s"], peer["efficiency"], peer["cpu_ms_per_report"],
                 peer["db_cpu_ms_per_report"], _percent(peer.get("foreign_cpu_busy")), p["ratio"]]
        lines.append(" | ".join(("-" if c is None else str(c)).ljust(w) for c, (_, w) in zip(cells, COMPARISON)))
    return lines


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{value:.0%}"


def target_lines(results: list[dict]) -> list[str]:
    checked = verdicts(results)
    if all(c["verdict"] == "not measured" for c in checked):
        return []
    lines = ["targets (issue 14), as measured in this invocation:"]
    for c in checked:
        values = ", ".join(f"round {r}: {v}" for r, v in c["values"]) or "no such row"
        lines.append(f"  {c['target']} ≥ {c['at_least']}: {values} -> {c['verdict'].upper()}")
    return lines
