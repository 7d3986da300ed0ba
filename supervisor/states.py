"""Life cycles as named states: a child's (as the parent sees it) and the parent's own; one place to change each."""

import enum
from dataclasses import dataclass

from supervisor.heartbeat import Beat
from worker import lifecycle
from worker.logs import EventLog

log = EventLog(__name__)


class State(enum.Enum):
    STARTING = "starting"           # forked; has not consumed yet
    RUNNING = "running"             # its heartbeat says: consuming
    RECONNECTING = "reconnecting"   # consumed before; its heartbeat says: connecting (lost the broker)
    BLOCKED = "blocked"             # consumed before; its heartbeat says: blocked (the broker holds its publishes)
    RETIRING = "retiring"           # a successor was started in its slot; it stops once the successor consumes
    STOPPING = "stopping"           # SIGTERM sent: draining in-flight work
    KILLED = "killed"               # SIGKILL sent: waiting to be reaped
    BACKOFF = "backoff"             # died before it consumed; its slot waits before trying again (no process)
    EXITED = "exited"               # reaped, or its slot's backoff ended


UP = (State.RUNNING, State.RECONNECTING, State.BLOCKED)   # consumed since it started, still in its slot

ALLOWED = {
    State.STARTING: {State.RUNNING, State.BLOCKED, State.STOPPING, State.KILLED, State.BACKOFF, State.EXITED},
    State.RUNNING: {State.RECONNECTING, State.BLOCKED, State.RETIRING, State.STOPPING, State.KILLED, State.EXITED},
    State.RECONNECTING: {State.RUNNING, State.BLOCKED, State.RETIRING, State.STOPPING, State.KILLED, State.EXITED},
    State.BLOCKED: {State.RUNNING, State.RECONNECTING, State.RETIRING, State.STOPPING, State.KILLED, State.EXITED},
    State.RETIRING: {State.STOPPING, State.KILLED, State.EXITED},
    State.STOPPING: {State.KILLED, State.EXITED},
    State.KILLED: {State.BACKOFF, State.EXITED},
    State.BACKOFF: {State.EXITED},
    State.EXITED: set(),
}

LIVE = (*UP, State.STARTING, State.RETIRING, State.STOPPING, State.KILLED)   # a process exists

# Where a heartbeat phase moves a child that is STARTING or UP (other phases leave it where it is).
FOLLOWS = {lifecycle.CONSUMING: State.RUNNING, lifecycle.BLOCKED: State.BLOCKED,
           lifecycle.CONNECTING: State.RECONNECTING,
           lifecycle.PAUSED: State.RUNNING}   # connected and well, but taking no messages: not capacity


@dataclass(eq=False)
class Child:
    """One child process (or, in BACKOFF, the memory of one) in worker slot `index`."""

    index: int
    generation: int                 # settings generation it was forked with; HUP retires older ones
    heartbeat: str                  # path of the file its I/O loop writes
    started_at: float               # forked (the parent's monotonic clock)
    beat: Beat                      # its last heartbeat
    pid: int = 0
    state: State = State.STARTING
    since: float = 0.0              # when it entered `state`
    ready_at: float = 0.0           # when it first consumed; 0: never (its death is a failed start)
    deadline: float = 0.0           # STOPPING: SIGKILL after it; BACKOFF: the slot tries again at it
    failures: int = 0               # failed starts in a row in this slot, carried to the next try
    reason: str = ""                # why it left or is leaving: a worker.lifecycle reason

    def __post_init__(self):
        self.since = self.since or self.started_at

    @property
    def alive(self) -> bool:
        return self.state in LIVE

    @property
    def consuming(self) -> bool:
        """Capacity: running, or retiring while its heartbeat still says consuming."""
        return self.state in (State.RUNNING, State.RETIRING) and self.beat.phase == lifecycle.CONSUMING

    def describe(self) -> dict:
        return {"index": self.index, "child_pid": self.pid, "state": self.state.value}


def change_state(child: Child, new: State, now: float, reason: str = "") -> None:
    """Every transition of a child goes through here; an impossible one is a bug in the arbiter.

    `reason` is why it leaves: the first one given sticks, except that a kill says why it was killed.
    """
    if new not in ALLOWED[child.state]:
        raise RuntimeError(f"child {child.index} (pid {child.pid}): {child.state.value} -> {new.value} is not allowed")
    log.debug("child_state", index=child.index, child_pid=child.pid, old=child.state.value, new=new.value)
    child.state, child.since = new, now
    if reason and (not child.reason or new is State.KILLED):
        child.reason = reason


class ParentState(enum.Enum):
    """The parent's own state."""

    STARTING = "starting"     # until every slot's child consumes (READY=1); a HUP now only changes the settings
    RUNNING = "running"
    RELOADING = "reloading"   # after HUP (RELOADING=1), until every slot's child is of the new generation (READY=1)
    STOPPING = "stopping"     # TERM/INT/QUIT or giving up: waiting for every child to leave


PARENT_ALLOWED = {
    ParentState.STARTING: {ParentState.RUNNING, ParentState.STOPPING},
    ParentState.RUNNING: {ParentState.RELOADING, ParentState.STOPPING},
    ParentState.RELOADING: {ParentState.RUNNING, ParentState.RELOADING, ParentState.STOPPING},
    ParentState.STOPPING: set(),
}


@dataclass
class Parent:
    """The parent's state, and the exit code once it has decided to stop."""

    state: ParentState = ParentState.STARTING
    stop_code: int | None = None   # STOPPING: the exit code once every child is gone

    def change(self, new: ParentState) -> None:
        if new not in PARENT_ALLOWED[self.state]:
            raise RuntimeError(f"parent: {self.state.value} -> {new.value} is not allowed")
        log.debug("parent_state", old=self.state.value, new=new.value)
        self.state = new
