"""The parent's table of children, and every transition of a child: the only code that changes either.

A slot (worker index 1..N) holds its current child: STARTING, UP, KILLED (hung, not reaped yet) or
BACKOFF (no process). A child that left its slot (RETIRING, STOPPING, or KILLED from those) is
"leaving": its successor has the slot, or the slot is gone, and its exit is planned.
"""

import signal
from dataclasses import dataclass
from typing import Callable, Iterator

from supervisor import heartbeat
from supervisor.processes import Processes
from supervisor.restarts import backoff_delay
from supervisor.states import FOLLOWS, UP, Child, State, change_state
from worker import exitcodes, lifecycle
from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)


PLANNED_ENDS = frozenset({lifecycle.QUIT, lifecycle.SHUTDOWN, lifecycle.STOP_TIMEOUT, lifecycle.SCALE_DOWN,
                          lifecycle.RELOAD, lifecycle.RECYCLE, lifecycle.BLOCKED})
CLEAN_EXITS = frozenset({exitcodes.OK, exitcodes.RECYCLE, exitcodes.CONFIG, exitcodes.CONNECT})


def died_abnormally(child: Child, code: int) -> bool:
    """A crash, a signal the parent did not send to end it on purpose, or a kill because it hung."""
    return child.reason not in PLANNED_ENDS and code not in CLEAN_EXITS


@dataclass(frozen=True)
class Census:
    """What the children's heartbeats add up to, for systemd's STATUS= and the observers."""

    alive: int              # child processes
    consuming: int          # capacity: their heartbeat says consuming (a retiring one included)
    blocked: int            # their broker connection is blocked
    inflight: int
    slots_consuming: int    # slots whose current child consumes
    paused: dict            # pause reason -> children that take no messages for it
    nodes: dict             # worker index -> broker node ("host:port") its current child is connected to

    def status(self, wanted: int, stopping: bool) -> str:
        if stopping:
            return f"stopping: {self.alive} children left, {self.inflight} in flight"
        blocked = f", {self.blocked} blocked" if self.blocked else ""
        return f"{self.slots_consuming}/{wanted} children consuming, {self.inflight} in flight{blocked}"


class Children:
    def __init__(self, processes: Processes, clock: Callable[[], float]):
        self.processes = processes
        self.clock = clock
        self._slots: dict[int, Child] = {}
        self._leaving: list[Child] = []

    # ---- reading the table --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Child]:
        """Every record: slots in index order, then the leaving ones."""
        yield from self.slotted()
        yield from list(self._leaving)

    def slotted(self) -> list[Child]:
        return [self._slots[i] for i in sorted(self._slots)]

    def current(self, index: int) -> Child | None:
        return self._slots.get(index)

    def leaving(self) -> list[Child]:
        return list(self._leaving)

    def alive(self) -> list[Child]:
        """Every child that has a process: in slots, and leaving."""
        return [c for c in self if c.alive]

    def in_slot(self, child: Child) -> bool:
        return self._slots.get(child.index) is child

    def indexes(self) -> list[int]:
        return sorted(self._slots)

    def census(self) -> Census:
        live = self.alive()
        paused: dict[str, int] = {}
        for child in live:
            for reason in filter(None, child.beat.paused.split(",")):
                paused[reason] = paused.get(reason, 0) + 1
        return Census(alive=len(live), consuming=sum(c.consuming for c in live),
                      blocked=sum(c.state is State.BLOCKED for c in live),
                      inflight=sum(c.beat.inflight for c in live),
                      slots_consuming=sum(c.consuming for c in self.slotted()), paused=paused,
                      nodes={c.index: c.beat.node for c in self.slotted() if c.alive and c.beat.node})

    # ---- what the operating system tells -----------------------------------------------------

    def reap(self) -> Iterator[tuple[Child, int]]:
        """Every child of ours that exited since the last call, with its exit code (negative: the signal)."""
        for pid, code in self.processes.reap():
            child = next((c for c in self.alive() if c.pid == pid), None)
            if child is not None:
                if died_abnormally(child, code):
                    self.processes.blame(child.heartbeat)   # the messages it was handling: poison suspects
                self.processes.forget(child.heartbeat)
                yield child, code

    def read_heartbeats(self) -> Iterator[Child]:
        """Update every child from its heartbeat file; yields the ones that consume for the first time."""
        now = self.clock()
        for child in self.alive():
            beat = self.processes.read(child.heartbeat)
            if beat is not None and self.observe(child, beat, now):
                yield child

    # ---- transitions --------------------------------------------------------------------------

    def spawn(self, index: int, generation: int, settings: Settings, failures: int = 0) -> Child:
        """A new child in slot `index` (STARTING); the slot's previous child must have left or ended.
        If fork() fails (EAGAIN at TasksMax, say), the slot backs off like after a failed start."""
        previous = self._slots.get(index)
        if previous is not None:
            raise RuntimeError(f"slot {index} still holds pid {previous.pid} ({previous.state.value})")
        now = self.clock()
        child = Child(index, generation, "", started_at=now, beat=heartbeat.first(now), failures=failures)
        self._slots[index] = child
        try:
            child.pid, child.heartbeat = self.processes.spawn(index, settings, now)
        except OSError as exc:
            log.error("fork_failed", index=index, error=f"{type(exc).__name__}: {exc}")
            self.back_off(child, lifecycle.FORK_FAILED)
            return child
        log.info("child_spawned", **child.describe(), generation=generation)
        return child

    def observe(self, child: Child, beat: heartbeat.Beat, now: float) -> bool:
        """The heartbeat is all the parent knows of a child: its phase moves a STARTING or UP child.
        True when the child consumes for the first time (its start succeeded)."""
        child.beat = beat
        new = FOLLOWS.get(beat.phase)
        if new is None or new is child.state or child.state not in (State.STARTING, *UP):
            return False
        if child.state is State.STARTING and new is State.RECONNECTING:
            return False  # connecting for the first time is part of starting
        change_state(child, new, now)
        if child.ready_at:
            return False
        child.ready_at, child.failures = now, 0
        log.info("child_ready", **child.describe(), seconds=round(now - child.started_at, 3))
        return True

    def retire(self, child: Child, reason: str) -> None:
        """UP -> RETIRING: it leaves its slot to a successor and consumes until the successor does."""
        change_state(child, State.RETIRING, self.clock(), reason)
        self._leave_slot(child)

    def stop(self, child: Child, reason: str, grace: float) -> None:
        """SIGTERM: it stops consuming and drains; `grace` seconds later it is killed. Leaves its slot."""
        self._leave_slot(child)
        if child.state in (State.STOPPING, State.KILLED):
            return
        now = self.clock()
        change_state(child, State.STOPPING, now, reason)
        child.deadline = now + grace
        log.info("child_stopping", **child.describe(), reason=child.reason)
        self.processes.send(child.pid, signal.SIGTERM)

    def kill(self, child: Child, reason: str) -> None:
        """SIGKILL; it stays where it is (in its slot, or leaving) until reaped."""
        if child.state is State.KILLED:
            return
        now = self.clock()
        log.warning("child_killed", **child.describe(), reason=reason, silent_seconds=round(now - child.beat.at, 3))
        change_state(child, State.KILLED, now, reason)
        self.processes.send(child.pid, signal.SIGKILL)

    def back_off(self, child: Child, reason: str) -> None:
        """A child that died before it consumed: its record waits in the slot, longer after each failure."""
        now = self.clock()
        child.failures += 1
        delay = backoff_delay(child.failures)
        change_state(child, State.BACKOFF, now, reason)
        child.deadline = now + delay
        log.warning("child_backoff", **child.describe(), failures=child.failures, retry_in=round(delay, 3))

    def end(self, child: Child, reason: str = "") -> None:
        """A reaped child, or a slot's backoff that is over (EXITED): forget the record."""
        change_state(child, State.EXITED, self.clock(), reason)
        if self.in_slot(child):
            del self._slots[child.index]
        if child in self._leaving:
            self._leaving.remove(child)

    def _leave_slot(self, child: Child) -> None:
        if self.in_slot(child):
            del self._slots[child.index]
        if child not in self._leaving:
            self._leaving.append(child)

    def close(self, grace: float) -> None:
        """On the parent's way out: drain, then SIGKILL, whatever is left (nothing, normally)."""
        self.processes.close([c.pid for c in self.alive()], grace)
