"""Everything the parent serves, built from the settings, and the few hooks that feed it from the arbiter.

Import this module only after `metrics.multiprocess.prepare_directory()` (it imports prometheus_client).
"""

from metrics.multiprocess import MetricsDirectory
from metrics.parent import ParentMetrics
from metrics.probes import Check, Probes, service_checks
from metrics.server import MetricsServer, build_registry
from worker.logs import EventLog
from worker.settings import Settings, SettingsError

log = EventLog(__name__)

PLANNED_RESTARTS = ("recycle", "reload")   # replacements the arbiter does not count against its limit


class Endpoint:
    """Parent metrics, probes and the HTTP server. The arbiter's loop calls `tick`, `child_started`,
    `child_exited` and `reload`; the HTTP thread only reads what they stored."""

    def __init__(self, settings: Settings, directory: MetricsDirectory,
                 checks: dict[str, Check] | None = None, poll_interval: float = 5.0):
        self.settings = settings
        self.directory = directory
        self.alive = 0            # child processes; written by the loop, read by the HTTP thread
        self.consuming = 0
        self.parent = ParentMetrics(settings, directory, poll_interval, consuming=lambda: self.consuming)
        self.probes = Probes(lambda: self.alive, lambda: self.consuming,
                             service_checks(settings) if checks is None else checks)
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

    def tick(self, alive: int, consuming: int) -> None:
        """Once per turn of the loop: the loop is alive, and this many children are alive / consuming."""
        self.alive, self.consuming = alive, consuming
        self.probes.heartbeat()

    def child_started(self, index: int, pid: int) -> None:
        self.parent.child_started(index, pid)

    def child_exited(self, index: int, pid: int, reason: str, restart: bool) -> None:
        """Right after waitpid, before the next fork: folds the child's metric files, counts the restart."""
        self.parent.child_exited(index, pid, reason, restart)

    def reload(self, settings: Settings) -> None:
        self.settings = settings
        self.parent.reload(settings)


def attach(arbiter, directory: MetricsDirectory, checks: dict[str, Check] | None = None) -> Endpoint:
    """Build an Endpoint for `arbiter` (supervisor.arbiter.Arbiter) and hook it into its loop.

    Uses only the arbiter's extension points: `tick_steps`, `on_spawn(child)`, `on_exit(child, counted)`,
    `on_reload(settings)`, and a child's `index`, `pid`, `state` and `reason`.
    """
    from supervisor.states import State

    endpoint = Endpoint(arbiter.settings, directory, checks)
    live: dict[int, object] = {}          # pid -> Child, between on_spawn and on_exit

    def tick() -> None:
        endpoint.tick(len(live), sum(1 for c in live.values() if c.state is State.RUNNING))

    def spawned(child) -> None:
        live[child.pid] = child
        endpoint.child_started(child.index, child.pid)

    def exited(child, counted: bool) -> None:
        live.pop(child.pid, None)
        endpoint.child_exited(child.index, child.pid, child.reason or "unknown",
                              restart=counted or child.reason in PLANNED_RESTARTS)

    arbiter.tick_steps.append(tick)
    arbiter.on_spawn.append(spawned)
    arbiter.on_exit.append(exited)
    arbiter.on_reload.append(endpoint.reload)
    return endpoint
