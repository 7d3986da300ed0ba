"""The benchmark's scenarios: each a list of run configurations."""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RunConfig:
    scenario: str
    processes: int
    threads: int
    latency: float
    requests: int
    prefetch: int = 0          # 0: same as threads
    heartbeat: int = 0         # 0: the broker's default
    jitter: float = 0.0
    engine: str = "report-worker"  # or "celery": Celery's threads pool with concurrency `threads` (processes 1)

    @property
    def ideal_rate(self) -> float | None:
        """Reports/s if only the LLM's latency counted: P·T/L."""
        return self.processes * self.threads / self.latency if self.latency > 0 else None

    @property
    def slots(self) -> int:
        """How many requests can be in the LLM at once: P·T, or Celery's concurrency."""
        return self.processes * self.threads

    @property
    def label(self) -> str:
        if self.engine == "celery":
            return f"{self.scenario} celery threads c={self.threads} L={self.latency:g}s N={self.requests}"
        prefetch = self.prefetch or self.threads
        return f"{self.scenario} P={self.processes} T={self.threads} pf={prefetch} L={self.latency:g}s N={self.requests}"


def overhead() -> list[RunConfig]:
    return [RunConfig("overhead", p, 8, 0.0, 2000) for p in (1, 2)]


def concurrency() -> list[RunConfig]:
    return [RunConfig("concurrency", 2, t, 1.0, 10 * 2 * t) for t in (8, 32, 64)]


def long_calls() -> list[RunConfig]:
    return [RunConfig("long-calls", 2, 16, 30.0, 64, heartbeat=2)]


def scaling() -> list[RunConfig]:
    shapes = [(1, 32), (2, 32), (2, 64), (2, 128), (4, 64)]
    return [RunConfig("scaling", p, t, 2.0, 4 * p * t) for p, t in shapes]


def prefetch() -> list[RunConfig]:
    return [RunConfig("prefetch", 2, 16, 0.5, 320, prefetch=pf) for pf in (1, 16, 32, 64)]


def smoke() -> list[RunConfig]:
    return [RunConfig("smoke", 2, 4, 0.05, 20)]


def celery(config: RunConfig) -> RunConfig:
    """Celery's threads pool with as many slots as `config`, at the same L and N (prefetch = slots too)."""
    return replace(config, engine="celery", processes=1, threads=config.slots, prefetch=0)


def pair(scenario: str, processes: int, threads: int, latency: float, requests: int) -> list[RunConfig]:
    ours = RunConfig(scenario, processes, threads, latency, requests)
    return [ours, celery(ours)]


def peer() -> list[RunConfig]:
    """report-worker and Celery side by side, 10 messages per slot at L = 1 s; throughput bound at L = 0."""
    return [*pair("peer", 2, 32, 1.0, 640), *pair("peer", 2, 64, 1.0, 1280), *pair("peer", 2, 32, 0.0, 2000)]


def peer_smoke() -> list[RunConfig]:
    return pair("peer-smoke", 1, 4, 0.0, 20)


SCENARIOS = {
    "overhead": overhead, "concurrency": concurrency, "long-calls": long_calls,
    "scaling": scaling, "prefetch": prefetch, "smoke": smoke, "peer": peer, "peer-smoke": peer_smoke,
}


def custom(processes: int, threads: int, latency: float, requests: int, prefetch_count: int,
           peer_concurrency: int = 0) -> list[RunConfig]:
    """One run of ours; with `peer_concurrency`, Celery's threads pool with that concurrency after it."""
    ours = RunConfig("custom", processes, threads, latency, requests, prefetch_count)
    if not peer_concurrency:
        return [ours]
    return [ours, replace(celery(ours), threads=peer_concurrency)]


def scaled(configs: list[RunConfig], factor: float) -> list[RunConfig]:
    """Fewer requests per run (for a quick look); never fewer than P·T."""
    return [replace(c, requests=max(c.processes * c.threads, int(c.requests * factor))) for c in configs]
