"""A child's life cycle as named states, and the one place where a child changes state."""

import enum
import time
from dataclasses import dataclass

from worker.logs import EventLog

log = EventLog(__name__)


class State(enum.Enum):
    STARTING = "starting"   # forked; not consuming yet
    RUNNING = "running"     # consuming: its heartbeat said so
    STOPPING = "stopping"   # asked to leave (SIGTERM sent): draining in-flight work
    BACKOFF = "backoff"     # died before it consumed; its slot waits before trying again
    EXITED = "exited"       # reaped, or its slot was given up


ALLOWED = {
    State.STARTING: {State.RUNNING, State.STOPPING, State.BACKOFF, State.EXITED},
    State.RUNNING: {State.STOPPING, State.EXITED},
    State.STOPPING: {State.EXITED},
    State.BACKOFF: {State.EXITED},
    State.EXITED: set(),
}

LIVE = (State.STARTING, State.RUNNING, State.STOPPING)  # a process exists


@dataclass(eq=False)
class Child:
    """One child process (or, in BACKOFF, the memory of one) in worker slot `index`."""

    index: int
    generation: int                 # settings generation it was forked with; HUP makes older ones retire
    heartbeat: str                  # path of the file its I/O loop writes
    pid: int = 0
    state: State = State.STARTING
    started_at: float = 0.0         # time.monotonic()
    since: float = 0.0              # when it entered `state`
    failures: int = 0               # failed starts in a row in this slot, carried to the next try
    retry_at: float = 0.0           # BACKOFF: when the slot tries again
    stop_deadline: float = 0.0      # STOPPING: when patience ends and SIGKILL follows
    reason: str = ""                # why it is leaving, once known ("hung", "reload", "recycle", ...)
    exit_code: int | None = None    # once reaped: its exit code (negative: killed by that signal)
    wants_recycle: bool = False     # its heartbeat asks for a successor (max tasks or max memory reached)
    killed: bool = False            # SIGKILL sent
    beat_at: float = 0.0            # last heartbeat, time.monotonic() of the child
    settled: int = 0
    inflight: int = 0

    @property
    def alive(self) -> bool:
        return self.state in LIVE

    def describe(self) -> dict:
        return {"index": self.index, "child_pid": self.pid, "state": self.state.value}


def change_state(child: Child, new: State, now: float | None = None) -> None:
    """Every transition goes through here; an impossible one is a bug in the arbiter."""
    if new not in ALLOWED[child.state]:
        raise RuntimeError(f"child {child.index} (pid {child.pid}): {child.state.value} -> {new.value} is not allowed")
    log.debug("child_state", index=child.index, child_pid=child.pid, old=child.state.value, new=new.value)
    child.state = new
    child.since = time.monotonic() if now is None else now
