"""Everything the parent serves, built from the settings; an observer of the arbiter's loop.

The CLI (worker/cli.py) builds it and hands it to `supervisor.service.serve`; this module knows
nothing of the supervisor. Import it only after `metrics.multiprocess.prepare_directory()` (it
imports prometheus_client).
"""

from metrics.multiprocess import MetricsDirectory
from metrics.parent import ParentMetrics
from metrics.probes import Check, Probes, service_checks
from metrics.server import MetricsServer, build_registry
from worker.logs import EventLog
from worker.settings import Settings, SettingsError

log = EventLog(__name__)


class Endpoint:
    """Parent metrics, probes and the HTTP server. The arbiter's loop calls `start`, `tick`,
    `child_started`, `child_exited`, `reload` and `stop`; the HTTP thread only reads what they stored."""

    def __init__(self, settings: Settings, directory: MetricsDirectory,
                 checks: dict[str, Check] | None = None, poll_interval: float = 5.0):
        self.settings = settings
        self.directory = directory
        self.alive = 0            # child processes; written by the loop, read by the HTTP thread
        self.consuming = 0        # capacity: children whose heartbeat says consuming (blocked ones are not)
        self.blocked = 0          # children whose broker connection is blocked
        self.paused: dict[str, int] = {}   # pause reason -> children
        self.nodes: dict[int, str] = {}    # worker index -> broker node
        self.parent = ParentMetrics(settings, directory, poll_interval, consuming=lambda: self.consuming,
                                    blocked=lambda: self.blocked, nodes=lambda: self.nodes)
        self.probes = Probes(lambda: self.alive, lambda: self.consuming,
                             service_checks(settings) if checks is None else checks,
                             details=lambda: {"blocked": self.blocked, "paused": self.paused, "nodes": self.nodes})
        self.server: MetricsServer | None = None
        if settings.metrics_port:
            registry = build_registry(directory, self.parent)
            self.server = MetricsServer(registry, self.probes, settings.metrics_bind, settings.metrics_port)

    def start(self) -> None:
        if self.server is not None:
            try:
                self.server.start()
            except OSError as exc:
                raise SettingsError(f"METRICS_BIND/METRICS_PORT {self.settings.metrics_bind}:"
                                    f"{self.settings.metrics_port}: cannot listen ({exc.strerror})") from None
        self.parent.start()

    def stop(self) -> None:
        """On the parent's way out: stop serving, stop polling, delete the metric files."""
        if self.server is not None:
            self.server.stop()
        self.parent.stop()
        self.directory.remove()

    def tick(self, alive: int, consuming: int, blocked: int = 0, paused: dict | None = None,
             nodes: dict | None = None) -> None:
        """Once per turn of the loop: the loop is alive, this many children are alive / consuming / blocked,
        these pause reasons hold children back, and these are the broker nodes of the slots."""
        self.alive, self.consuming, self.blocked = alive, consuming, blocked
        self.paused, self.nodes = dict(paused or {}), dict(nodes or {})
        self.probes.heartbeat()

    def child_started(self, index: int, pid: int) -> None:
        self.parent.child_started(index, pid)

    def child_exited(self, index: int, pid: int, reason: str, restart: bool) -> None:
        """Right after waitpid, before the next fork: folds the child's metric files; `restart`: count it
        under `reason` (a worker.lifecycle reason) in report_worker_child_restarts_total."""
        self.parent.child_exited(index, pid, reason, restart)

    def reload(self, settings: Settings) -> None:
        self.settings = settings
        self.parent.reload(settings)
