"""The child and parent state machines, the heartbeat line and Pulse: tables, no processes, milliseconds."""

import itertools
import os

import pytest

from supervisor import heartbeat
from supervisor.child import Pulse
from supervisor.children import Children
from supervisor.heartbeat import Beat
from supervisor.states import ALLOWED, PARENT_ALLOWED, Child, Parent, ParentState, State, change_state
from tests.supervisor_fakes import FakeClock, FakeProcesses, make_settings
from worker import exitcodes, lifecycle
from worker.lifecycle import Status

S = State

# Every transition a child may make, and what makes it (the one place it happens, in supervisor/children.py).
CHILD_TRANSITIONS = {
    (S.STARTING, S.RUNNING): "observe: first beat 'consuming'",
    (S.STARTING, S.BLOCKED): "observe: first beat 'blocked'",
    (S.STARTING, S.STOPPING): "stop: shutdown or scale down",
    (S.STARTING, S.KILLED): "kill: start timeout, QUIT",
    (S.STARTING, S.BACKOFF): "back_off: died before it consumed",
    (S.STARTING, S.EXITED): "end: died before it consumed, and the parent gives up",
    (S.RUNNING, S.RECONNECTING): "observe: beat 'connecting'",
    (S.RUNNING, S.BLOCKED): "observe: beat 'blocked'",
    (S.RUNNING, S.RETIRING): "retire: reload, recycle, blocked too long",
    (S.RUNNING, S.STOPPING): "stop",
    (S.RUNNING, S.KILLED): "kill: hung",
    (S.RUNNING, S.EXITED): "end: crashed",
    (S.RECONNECTING, S.RUNNING): "observe: beat 'consuming'",
    (S.RECONNECTING, S.BLOCKED): "observe: beat 'blocked'",
    (S.RECONNECTING, S.RETIRING): "retire",
    (S.RECONNECTING, S.STOPPING): "stop",
    (S.RECONNECTING, S.KILLED): "kill: hung",
    (S.RECONNECTING, S.EXITED): "end",
    (S.BLOCKED, S.RUNNING): "observe: beat 'consuming'",
    (S.BLOCKED, S.RECONNECTING): "observe: beat 'connecting'",
    (S.BLOCKED, S.RETIRING): "retire: blocked too long",
    (S.BLOCKED, S.STOPPING): "stop",
    (S.BLOCKED, S.KILLED): "kill: hung (silent, not merely blocked)",
    (S.BLOCKED, S.EXITED): "end",
    (S.RETIRING, S.STOPPING): "stop: its successor consumes",
    (S.RETIRING, S.KILLED): "kill: hung",
    (S.RETIRING, S.EXITED): "end",
    (S.STOPPING, S.KILLED): "kill: stop timeout, QUIT",
    (S.STOPPING, S.EXITED): "end",
    (S.KILLED, S.BACKOFF): "back_off: killed before it consumed (start timeout)",
    (S.KILLED, S.EXITED): "end",
    (S.BACKOFF, S.EXITED): "end: the slot tries again, is scaled away, or the parent stops",
}


def a_child(state: State) -> Child:
    child = Child(1, 1, "beat", started_at=10.0, beat=heartbeat.first(10.0), pid=42)
    child.state = state
    return child


def test_the_table_lists_exactly_the_allowed_transitions():
    assert {(old, new) for old, news in ALLOWED.items() for new in news} == set(CHILD_TRANSITIONS)


@pytest.mark.parametrize("old,new", list(itertools.product(State, State)), ids=lambda s: s.value)
def test_every_child_transition_is_allowed_or_refused(old, new):
    child = a_child(old)
    if (old, new) in CHILD_TRANSITIONS:
        change_state(child, new, 20.0)
        assert (child.state, child.since) == (new, 20.0)
    else:
        with pytest.raises(RuntimeError, match="not allowed"):
            change_state(child, new, 20.0)
        assert child.state is old


def test_the_first_reason_sticks_but_a_kill_says_why_it_was_killed():
    child = a_child(S.RUNNING)
    change_state(child, S.RETIRING, 1.0, lifecycle.RELOAD)
    change_state(child, S.STOPPING, 2.0, lifecycle.SHUTDOWN)
    assert child.reason == lifecycle.RELOAD
    change_state(child, S.KILLED, 3.0, lifecycle.STOP_TIMEOUT)
    change_state(child, S.EXITED, 4.0, "signal_9")
    assert child.reason == lifecycle.STOP_TIMEOUT


PARENT_TRANSITIONS = {
    (ParentState.STARTING, ParentState.RUNNING), (ParentState.STARTING, ParentState.STOPPING),
    (ParentState.RUNNING, ParentState.RELOADING), (ParentState.RUNNING, ParentState.STOPPING),
    (ParentState.RELOADING, ParentState.RUNNING), (ParentState.RELOADING, ParentState.RELOADING), (ParentState.RELOADING, ParentState.STOPPING),
}


@pytest.mark.parametrize("old,new", list(itertools.product(ParentState, ParentState)), ids=lambda p: p.value)
def test_every_parent_transition_is_allowed_or_refused(old, new):
    assert {(o, n) for o, ns in PARENT_ALLOWED.items() for n in ns} == PARENT_TRANSITIONS
    parent = Parent(state=old)
    if (old, new) in PARENT_TRANSITIONS:
        parent.change(new)
        assert parent.state is new
    else:
        with pytest.raises(RuntimeError, match="not allowed"):
            parent.change(new)


# (state before, heartbeat phase) -> state after; the heartbeat is all the parent knows of a child
HEARTBEATS = [
    (S.STARTING, lifecycle.STARTING, S.STARTING),
    (S.STARTING, lifecycle.CONNECTING, S.STARTING),
    (S.STARTING, lifecycle.CONSUMING, S.RUNNING),
    (S.STARTING, lifecycle.BLOCKED, S.BLOCKED),
    (S.STARTING, lifecycle.DRAINING, S.STARTING),
    (S.RUNNING, lifecycle.CONSUMING, S.RUNNING),
    (S.RUNNING, lifecycle.CONNECTING, S.RECONNECTING),
    (S.RUNNING, lifecycle.BLOCKED, S.BLOCKED),
    (S.RUNNING, lifecycle.DRAINING, S.RUNNING),
    (S.RECONNECTING, lifecycle.CONSUMING, S.RUNNING),
    (S.RECONNECTING, lifecycle.BLOCKED, S.BLOCKED),
    (S.BLOCKED, lifecycle.CONSUMING, S.RUNNING),
    (S.BLOCKED, lifecycle.CONNECTING, S.RECONNECTING),
    (S.RETIRING, lifecycle.CONNECTING, S.RETIRING),
    (S.STOPPING, lifecycle.CONSUMING, S.STOPPING),
    (S.KILLED, lifecycle.CONSUMING, S.KILLED),
]


@pytest.mark.parametrize("before,phase,after", HEARTBEATS, ids=lambda v: getattr(v, "value", v))
def test_a_heartbeat_phase_moves_a_child(before, phase, after):
    clock = FakeClock()
    table = Children(FakeProcesses(clock), clock)
    child = a_child(before)
    child.ready_at = 0.0 if before is S.STARTING else 5.0
    first = table.observe(child, Beat(phase, 3, 1, clock()), clock())
    assert child.state is after and child.beat.settled == 3
    assert first == (before is S.STARTING and after is not S.STARTING)
    assert bool(child.ready_at) == (after is not S.STARTING or before is not S.STARTING)


def test_capacity_counts_children_whose_heartbeat_says_consuming():
    for state, phase, counted in [
        (S.RUNNING, lifecycle.CONSUMING, True), (S.RETIRING, lifecycle.CONSUMING, True),
        (S.RETIRING, lifecycle.CONNECTING, False), (S.RECONNECTING, lifecycle.CONNECTING, False),
        (S.BLOCKED, lifecycle.BLOCKED, False), (S.STOPPING, lifecycle.DRAINING, False),
    ]:
        child = a_child(state)
        child.beat = Beat(phase, 0, 0, 1.0)
        assert child.consuming is counted, (state, phase)


def test_a_heartbeat_line_round_trips_with_its_request(tmp_path):
    path = str(tmp_path / "beat")
    with open(path, "wb") as handle:
        handle.write(heartbeat.first(12.5).line())
    assert heartbeat.read(path) == Beat(lifecycle.STARTING, 0, 0, 12.5, "")
    writer = heartbeat.Writer(path)
    for beat in (Beat(lifecycle.CONNECTING, 123456789, 64, 99999.125, lifecycle.RECYCLE),
                 Beat(lifecycle.CONSUMING, 1, 0, 3.0)):
        writer.write(beat)
        assert heartbeat.read(path) == beat
        assert os.path.getsize(path) == heartbeat.WIDTH
    assert heartbeat.read(str(tmp_path / "missing")) is None


def test_reason_words_name_the_exit_codes():
    assert [exitcodes.describe(c) for c in (0, 1, 2, 3, 4, 5, 9, -9)] == [
        "ok", "crash", "config_error", "cannot_connect", "recycle", "gave_up", "exit_9", "signal_9"]
    assert lifecycle.REPLACED == {"recycle", "reload", "blocked"}


# -- Pulse: the child's on_tick, with a fake consumer --------------------------------------------------


class FakeConsumer:
    def __init__(self):
        self.phase, self.settled, self.inflight = lifecycle.CONSUMING, 0, 0
        self.ticked_at = 0.0
        self.stops: list[int] = []

    def status(self) -> Status:
        return Status(self.phase, self.settled, self.inflight, ticked_at=self.ticked_at)

    def stop(self, code: int = exitcodes.OK) -> None:
        self.stops.append(code)
        self.phase = lifecycle.DRAINING


class FakeWriter:
    def __init__(self):
        self.beats: list[Beat] = []

    def write(self, beat: Beat) -> None:
        self.beats.append(beat)


def pulse(clock, writer, parent=lambda: 7, rss=lambda: 10 * 2**20, **settings):
    return Pulse(make_settings(**settings), writer, 7, clock=clock, rss=rss, parent=parent)


def test_pulse_beats_the_consumers_status_and_nothing_else():
    clock, writer, consumer = FakeClock(), FakeWriter(), FakeConsumer()
    tick = pulse(clock, writer)
    for phase in (lifecycle.CONNECTING, lifecycle.CONSUMING, lifecycle.BLOCKED, lifecycle.DRAINING):
        consumer.phase, consumer.settled, consumer.inflight = phase, 4, 2
        clock.advance(0.5)
        consumer.ticked_at = clock()
        tick(consumer)
        assert writer.beats[-1] == Beat(phase, 4, 2, clock(), "")
    assert consumer.stops == []


def test_pulse_asks_for_a_recycle_after_max_tasks_and_leaves_as_recycled_when_told_to_stop():
    clock, writer, consumer = FakeClock(), FakeWriter(), FakeConsumer()
    tick = pulse(clock, writer, max_tasks_per_child=3, max_tasks_jitter=0)
    consumer.settled = 2
    tick(consumer)
    assert writer.beats[-1].request == ""
    consumer.settled = 3
    tick(consumer)
    assert writer.beats[-1].request == lifecycle.RECYCLE and consumer.stops == []
    consumer.phase = lifecycle.DRAINING          # the parent's SIGTERM arrived
    tick(consumer)
    assert consumer.stops == [exitcodes.RECYCLE]


def test_pulse_leaves_as_recycled_when_the_parent_never_answers():
    clock, writer, consumer = FakeClock(), FakeWriter(), FakeConsumer()
    tick = pulse(clock, writer, max_memory_per_child=1, worker_timeout=30.0, rss=lambda: 2 * 2**20)
    tick(consumer)
    assert writer.beats[-1].request == ""        # checked only after a task settled
    consumer.settled = 1
    tick(consumer)
    assert writer.beats[-1].request == lifecycle.RECYCLE
    clock.advance(30.5)
    tick(consumer)
    assert consumer.stops == [exitcodes.RECYCLE]


def test_pulse_stops_the_consumer_when_the_parent_is_gone():
    clock, writer, consumer = FakeClock(), FakeWriter(), FakeConsumer()
    tick = pulse(clock, writer, parent=lambda: 1)
    tick(consumer)
    tick(consumer)
    assert consumer.stops == [exitcodes.OK]     # once: a draining consumer is not told again


def test_the_beat_carries_the_io_loops_time_unless_the_broker_holds_it_back():
    clock, writer, consumer = FakeClock(), FakeWriter(), FakeConsumer()
    tick = pulse(clock, writer)
    consumer.ticked_at = clock()
    clock.advance(5.0)                              # the I/O loop has not turned for 5 s: hung, or ...
    tick(consumer)
    assert writer.beats[-1].at == consumer.ticked_at
    consumer.phase = lifecycle.BLOCKED              # ... held back by the broker: the beat stays fresh
    tick(consumer)
    assert writer.beats[-1].at == clock() and writer.beats[-1].phase == lifecycle.BLOCKED


def test_a_heartbeat_line_carries_pause_reasons_and_the_broker_node(tmp_path):
    path = tmp_path / "beat"
    path.write_bytes(b"")
    beat = Beat(lifecycle.PAUSED, 3, 0, 12.5, "", "budget_exhausted,llm_unauthorized", "127.0.0.1:5681")
    heartbeat.Writer(str(path)).write(beat)
    assert heartbeat.read(str(path)) == beat
    assert len(beat.line()) == heartbeat.WIDTH
