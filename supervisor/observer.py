"""What may watch the arbiter's loop (metrics.endpoint.Endpoint does): the CLI attaches it, the loop calls it."""

from typing import Protocol

from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)


class Observer(Protocol):
    """Called on the loop's thread; `start` before the first fork, `stop` after the last child is gone."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def tick(self, alive: int, consuming: int, blocked: int, paused: dict, nodes: dict) -> None:
        """Every turn of the loop (at most arbiter.TICK apart): children alive, consuming and blocked now,
        {pause reason: children paused for it}, {worker index: broker node}."""

    def child_started(self, index: int, pid: int) -> None: ...

    def child_exited(self, index: int, pid: int, reason: str, restart: bool) -> None:
        """Right after waitpid, before the slot's next fork. `reason` is a worker.lifecycle reason;
        `restart`: the child was replaced (crash, kill, recycle, reload ...), not stopped for good."""

    def reload(self, settings: Settings) -> None: ...


class Observers:
    """Many observers as one: each call goes to all of them, and a failing observer is logged (the 1st,
    10th, 100th ... time), never fatal to the loop."""

    def __init__(self, observers=()):
        self.observers = list(observers)
        self.failures = 0

    def __getattr__(self, event: str):
        def call(*args, **kwargs) -> None:
            for observer in self.observers:
                try:
                    getattr(observer, event)(*args, **kwargs)
                except Exception:
                    self.failures += 1
                    if str(self.failures).strip("0") == "1":
                        log.error("observer_failed", exc_info=True, call=event, failures=self.failures)
        return call
