"""The parent never takes healthy children down with it, and blocked is not hung: the arbiter on fakes, in milliseconds."""

import errno
import signal

import pytest

from supervisor.arbiter import LOOP_FAILURES
from supervisor.states import ParentState, State
from tests.supervisor_fakes import KILL, TERM, Rig
from worker import exitcodes, lifecycle
from worker.settings import SettingsError, load


class QuietSignals:
    """The loop's signal source: nothing arrives, except what a test puts in `script` (one list per turn)."""

    def __init__(self, script=()):
        self.script = list(script)

    def install(self):
        pass

    def wait(self, timeout):
        return self.script.pop(0) if self.script else []


def boom(*args, **kwargs):
    raise RuntimeError("a bug in the loop")


# -- no exception in the loop kills a child -----------------------------------------------------------


def test_a_failing_turn_is_logged_and_counted_and_the_children_live_on(caplog):
    rig = Rig(worker_processes=2)
    pids = rig.started()
    real = rig.arbiter.replace_retiring
    rig.arbiter.replace_retiring = boom
    rig.arbiter.signals = QuietSignals([[]] * (LOOP_FAILURES - 1) + [[signal.SIGTERM]])
    turns = []

    def replace_retiring():
        turns.append(1)
        if len(turns) < LOOP_FAILURES:
            boom()
        if len(turns) == LOOP_FAILURES + 1:
            for pid in pids.values():
                rig.os.exit(pid, exitcodes.OK)
        real()

    rig.arbiter.replace_retiring = replace_retiring
    assert rig.arbiter.run() == exitcodes.OK
    assert rig.os.sent(KILL) == [] and sorted(rig.os.sent(TERM)) == sorted(pids.values())
    assert len(rig.os.forks) == 2 and rig.os.closed == []
    assert len([r for r in caplog.records if r.msg == "arbiter_loop_failed"]) == LOOP_FAILURES - 1


def test_a_loop_that_keeps_failing_gives_up_gracefully_term_and_drain_not_kill():
    rig = Rig(worker_processes=2, graceful_timeout=7.0)
    pids = rig.started()
    rig.arbiter.signals = QuietSignals()
    rig.arbiter.replace_retiring = boom
    assert rig.arbiter.run() == exitcodes.FAILURE
    assert sorted(rig.os.sent(TERM)) == sorted(pids.values()) and rig.os.sent(KILL) == []
    assert rig.arbiter.parent.stop_code == exitcodes.FAILURE and rig.arbiter.broken
    assert sorted(rig.os.closed) == sorted(pids.values()) and rig.os.grace == 12.0   # Processes.close drains


def test_a_failing_signal_handler_is_one_failing_turn():
    rig = Rig(worker_processes=1)
    pid = rig.started()[1]
    rig.arbiter.handle_ttin = boom
    rig.arbiter.guarded(rig.arbiter.dispatch, signal.SIGTTIN)
    rig.tick()
    assert rig.slots() == {1: pid} and rig.arbiter.parent.state is ParentState.RUNNING and rig.os.signals == []


def test_an_observer_that_fails_neither_stops_the_loop_nor_a_respawn():
    rig = Rig(worker_processes=1)
    for name in ("tick", "child_started", "child_exited"):
        setattr(rig.observer, name, boom)
    pid = rig.started()[1]
    rig.os.exit(pid, exitcodes.FAILURE)
    rig.tick()
    assert rig.slots()[1] != pid and rig.arbiter.observers.failures >= 4


@pytest.mark.parametrize("error", [SettingsError("RABBITMQ_PREFETCH_COUNT must be >= 0, got -1"),
                                   SettingsError("RABBITMQ_URL is not a valid URL (Invalid IPv6 URL)"),
                                   ValueError("Invalid IPv6 URL"), KeyError("x"), OSError(errno.EACCES, "denied")])
def test_hup_with_any_bad_config_keeps_the_old_children_and_says_why(error, caplog):
    rig = Rig()
    pids = rig.started()
    rig.load = error
    rig.signal(signal.SIGHUP)
    for _ in range(3):
        rig.consume()
        rig.tick(1.0)
    assert rig.slots() == pids and rig.os.signals == [] and len(rig.os.forks) == 2
    assert rig.arbiter.parent.state is ParentState.RUNNING and rig.arbiter.generation == 1
    [failed] = [r for r in caplog.records if r.msg == "reload_failed"]
    assert str(error).strip("'") in failed.fields["error"] or type(error).__name__ in failed.fields["error"]


@pytest.mark.parametrize("url", ["amqp://[broker", "amqp://broker]/"])
def test_a_url_that_does_not_parse_is_a_configuration_error(url):
    with pytest.raises(SettingsError, match="RABBITMQ_URL is not a valid URL"):
        load(environ={"RABBITMQ_URL": url, "OPENAI_API_KEY": "x"})


def test_a_failed_fork_backs_off_that_slot_and_the_others_start():
    rig = Rig(worker_processes=2, restart_limit=1)
    rig.os.fork_errors = [OSError(errno.EAGAIN, "Resource temporarily unavailable")] * 3
    rig.tick()
    record = rig.arbiter.children.current(1)
    assert record.state is State.BACKOFF and record.reason == lifecycle.FORK_FAILED and record.pid == 0
    assert rig.arbiter.children.current(2).state is State.BACKOFF
    for delay in (0.5, 1.0):                       # the third failure, then a fork that works
        rig.tick(delay)
    rig.tick(2.0)
    rig.consume()
    rig.tick()
    assert rig.arbiter.parent.state is ParentState.RUNNING and sorted(rig.slots()) == [1, 2]
    assert [e for e in rig.observer.events if e[0] == "exited"] == []   # no process, nothing to fold
    assert rig.arbiter.children.current(1).failures == 0


def test_a_failed_fork_of_a_successor_keeps_its_predecessor_consuming():
    rig = Rig(worker_processes=1)
    old = rig.started()[1]
    rig.consume(old, request=lifecycle.RECYCLE)
    rig.os.fork_errors = [OSError(errno.EAGAIN, "no tasks left")]
    rig.tick()
    assert rig.state(old) is State.RETIRING and rig.arbiter.children.current(1).state is State.BACKOFF
    rig.consume(old, request=lifecycle.RECYCLE)
    rig.tick(0.6)
    new = rig.slots()[1]
    assert new != old and rig.os.signals == []
    rig.consume(new)
    rig.tick()
    assert rig.os.signals == [(old, TERM)]


def test_the_watchdog_is_fed_every_turn_the_loop_works_even_with_a_slot_in_backoff():
    rig = Rig(worker_processes=2)
    rig.started()
    rig.os.exit(rig.slots()[1], exitcodes.FAILURE)
    rig.tick()
    rig.os.exit(rig.slots()[1], exitcodes.CONNECT)   # its successor dies before it consumes
    fed = rig.notifier.sent.count("WATCHDOG=1")
    rig.tick()
    assert rig.arbiter.children.current(1).state is State.BACKOFF
    for _ in range(3):
        rig.tick(0.1)
    assert rig.notifier.sent.count("WATCHDOG=1") == fed + 4
    assert rig.notifier.status == "1/2 children consuming, 0 in flight"   # readiness tells the capacity


# -- blocked is not hung ------------------------------------------------------------------------------


def blocked_for(rig: Rig, pid: int, seconds: float, others=()) -> None:
    for _ in range(int(seconds / 10)):
        rig.consume(pid, phase=lifecycle.BLOCKED, inflight=2)
        if others:
            rig.consume(*others)
        rig.tick(10.0)


def test_a_blocked_child_that_beats_is_neither_killed_nor_counted_as_capacity():
    rig = Rig(worker_processes=2, worker_timeout=30.0)
    pids = rig.started()
    blocked_for(rig, pids[1], 290.0, others=[pids[2]])
    assert rig.state(pids[1]) is State.BLOCKED and rig.os.signals == [] and len(rig.os.forks) == 2
    assert rig.observer.last_tick == {"alive": 2, "consuming": 1, "blocked": 1, "paused": {}, "nodes": {}}
    assert rig.notifier.status == "1/2 children consuming, 2 in flight, 1 blocked"
    rig.clock.advance(31.0)
    rig.consume(pids[2])
    rig.tick()                                       # pid 1 silent now: hung, blocked or not
    assert rig.os.signals == [(pids[1], KILL)]


def test_a_child_blocked_longer_than_its_limit_is_replaced_like_a_recycle():
    rig = Rig(worker_processes=1, restart_limit=1, worker_blocked_timeout=300.0)
    old = rig.started()[1]
    blocked_for(rig, old, 310.0)                     # the parent saw it blocked from the first of these ticks on
    assert len(rig.os.forks) == 1 and rig.clock() - rig.child(old).since == 300.0
    blocked_for(rig, old, 10.0)
    new = rig.slots()[1]
    assert new != old and rig.state(old) is State.RETIRING and rig.os.signals == []
    rig.consume(old, phase=lifecycle.BLOCKED)
    rig.consume(new)
    rig.tick()
    assert rig.os.signals == [(old, TERM)]
    rig.os.exit(old, exitcodes.OK)
    rig.tick()
    assert rig.observer.exits() == [(1, old, "blocked", True)] and rig.arbiter.parent.state is ParentState.RUNNING


def test_the_blocked_limit_is_a_setting_of_its_own():
    rig = Rig(worker_processes=1)
    object.__setattr__(rig.arbiter.settings, "worker_blocked_timeout", 60.0)   # WORKER_BLOCKED_TIMEOUT, to come
    old = rig.started()[1]
    blocked_for(rig, old, 70.0)
    assert rig.slots()[1] == old
    blocked_for(rig, old, 10.0)
    assert rig.slots()[1] != old
