"""Fakes for driving the arbiter without processes: a clock, the OS side of the children, systemd, an observer.

`Rig` wires them to a real `Arbiter`; a test moves the clock, writes heartbeats, queues exits and
calls `tick()`, then looks at what was forked, signalled, notified and observed.
"""

import dataclasses
import signal

from supervisor.arbiter import Arbiter
from supervisor.heartbeat import Beat
from supervisor.states import State
from worker import lifecycle
from worker.settings import Settings


def make_settings(**overrides) -> Settings:
    base = dict(openai_api_key="test", worker_processes=2, worker_timeout=30.0, connect_timeout=30.0,
                graceful_timeout=60.0, restart_limit=10, restart_window=60.0, rabbitmq_consumer_timeout=0.0)
    return dataclasses.replace(Settings(), **{**base, **overrides})


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProcesses:
    """Stands in for supervisor.processes.Processes: pids are counted, signals and forks recorded."""

    path = "/fake/heartbeats"

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.next_pid = 100
        self.forks: list[tuple[int, int]] = []           # (index, pid)
        self.signals: list[tuple[int, int]] = []         # (pid, signum)
        self.exits: list[tuple[int, int]] = []           # queued for the next reap: (pid, code)
        self.beats: dict[str, Beat] = {}
        self.fork_errors: list[OSError] = []             # raised by the next spawns, in order
        self.closed: list[int] | None = None
        self.blamed: list[str] = []                      # heartbeat paths of children that died abnormally

    def spawn(self, index, settings, at):
        if self.fork_errors:
            raise self.fork_errors.pop(0)
        self.next_pid += 1
        pid, path = self.next_pid, f"beat-{self.next_pid}"
        self.beats[path] = Beat(lifecycle.STARTING, 0, 0, at)
        self.forks.append((index, pid))
        return pid, path

    def send(self, pid, signum):
        self.signals.append((pid, signum))

    def reap(self):
        exited, self.exits = self.exits, []
        return exited

    def read(self, path):
        return self.beats.get(path)

    def blame(self, path):
        self.blamed.append(path)

    def forget(self, path):
        self.beats.pop(path, None)

    def close(self, pids, grace):
        self.closed = list(pids)
        self.grace = grace

    # -- what a test does to a child ---------------------------------------------------------

    def beat(self, pid: int, phase: str = lifecycle.CONSUMING, settled: int = 0, inflight: int = 0,
             request: str = "") -> None:
        self.beats[f"beat-{pid}"] = Beat(phase, settled, inflight, self.clock(), request)

    def exit(self, pid: int, code: int) -> None:
        self.exits.append((pid, code))

    def sent(self, signum: int) -> list[int]:
        return [pid for pid, sig in self.signals if sig == signum]


class FakeNotifier:
    def __init__(self):
        self.sent: list[str] = []
        self.status = ""

    def ready(self, status):
        self.status = status
        self.sent.append("READY=1")

    def reloading(self):
        self.sent.append("RELOADING=1")

    def stopping(self):
        self.sent.append("STOPPING=1")

    def update_status(self, status):
        self.status = status

    def watchdog(self, now):
        self.sent.append("WATCHDOG=1")


class FakeObserver:
    def __init__(self):
        self.events: list[tuple] = []
        self.last_tick: dict = {}

    def start(self):
        self.events.append(("start",))

    def stop(self):
        self.events.append(("stop",))

    def tick(self, **census):
        self.last_tick = census

    def child_started(self, index, pid):
        self.events.append(("started", index, pid))

    def child_exited(self, index, pid, reason, restart):
        self.events.append(("exited", index, pid, reason, restart))

    def reload(self, settings):
        self.events.append(("reload", settings.worker_processes))

    def exits(self) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == "exited"]


class Rig:
    """A real Arbiter on fakes. `load` is what the next HUP reads: Settings, or an exception to raise."""

    def __init__(self, **overrides):
        self.clock = FakeClock()
        self.os = FakeProcesses(self.clock)
        self.notifier = FakeNotifier()
        self.observer = FakeObserver()
        self.settings = make_settings(**overrides)
        self.load: Settings | Exception = self.settings
        self.arbiter = Arbiter(self.settings, self._load, self.notifier, self.os, [self.observer], clock=self.clock)

    def _load(self) -> Settings:
        if isinstance(self.load, BaseException):
            raise self.load
        return self.load

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.arbiter.tick()

    def slots(self) -> dict[int, int]:
        """index -> pid of each slot's current child (BACKOFF records included)."""
        return {c.index: c.pid for c in self.arbiter.children.slotted()}

    def child(self, pid: int):
        return next(c for c in self.arbiter.children if c.pid == pid)

    def state(self, pid: int) -> State:
        return self.child(pid).state

    def consume(self, *pids: int, **beat) -> None:
        for pid in pids or [c.pid for c in self.arbiter.children.alive()]:
            self.os.beat(pid, **beat)

    def started(self) -> dict[int, int]:
        """Tick until every slot has a child, let them all consume, tick: the parent is READY."""
        self.tick()
        self.consume()
        self.tick()
        assert "READY=1" in self.notifier.sent, self.notifier.sent
        return self.slots()

    def signal(self, signum: int) -> None:
        self.arbiter.dispatch(signum)


TERM, KILL = signal.SIGTERM, signal.SIGKILL
