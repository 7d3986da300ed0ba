"""What may watch the arbiter's loop (metrics.endpoint.Endpoint does): the CLI attaches it, the loop calls it."""

from typing import Protocol

from worker.settings import Settings


class Observer(Protocol):
    """Called on the loop's thread; `start` before the first fork, `stop` after the last child is gone."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def tick(self, alive: int, consuming: int) -> None:
        """Every turn of the loop (at most arbiter.TICK apart): children alive, and consuming now."""

    def child_started(self, index: int, pid: int) -> None: ...

    def child_exited(self, index: int, pid: int, reason: str, restart: bool) -> None:
        """Right after waitpid, before the slot's next fork. `reason` is a worker.lifecycle reason;
        `restart`: the child was replaced (crash, kill, recycle, reload ...), not stopped for good."""

    def reload(self, settings: Settings) -> None: ...
