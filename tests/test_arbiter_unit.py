"""The arbiter driven tick by tick on fakes (tests/supervisor_fakes.py): no processes, no sleeps, milliseconds."""

import signal

import pytest

from supervisor.restarts import backoff_delay
from supervisor.states import ParentState, State
from tests.supervisor_fakes import KILL, TERM, Rig, make_settings
from worker import exitcodes, lifecycle


def test_ready_only_once_every_child_consumes():
    rig = Rig(worker_processes=3)
    rig.tick()
    assert [index for index, _ in rig.os.forks] == [1, 2, 3]
    pids = rig.slots()
    rig.consume(pids[1], pids[2])
    rig.consume(pids[3], phase=lifecycle.CONNECTING)
    rig.tick()
    assert rig.arbiter.parent.state is ParentState.STARTING and "READY=1" not in rig.notifier.sent
    assert rig.notifier.status == "2/3 children consuming, 0 in flight"
    rig.consume(pids[3], inflight=2)
    rig.tick()
    assert rig.arbiter.parent.state is ParentState.RUNNING and rig.notifier.sent.count("READY=1") == 1
    assert rig.notifier.status == "3/3 children consuming, 2 in flight"
    assert rig.observer.last_tick == {"alive": 3, "consuming": 3, "blocked": 0, "paused": {}, "nodes": {}}
    assert [e for e in rig.observer.events if e[0] == "started"] == [("started", i, pids[i]) for i in (1, 2, 3)]


@pytest.mark.parametrize("code,reason", [(exitcodes.FAILURE, "crash"), (-signal.SIGKILL, "signal_9"),
                                         (exitcodes.OK, "ok"), (exitcodes.CONNECT, "cannot_connect")])
def test_a_running_child_that_dies_is_replaced_at_once(code, reason):
    rig = Rig()
    old = rig.started()
    rig.os.exit(old[1], code)
    rig.tick()
    new = rig.slots()
    assert new[2] == old[2] and new[1] not in old.values() and rig.state(new[1]) is State.STARTING
    assert rig.observer.exits() == [(1, old[1], reason, True)]
    assert rig.os.signals == []


def test_a_child_that_dies_while_starting_backs_off_longer_each_time():
    rig = Rig(worker_processes=1, restart_limit=20, restart_window=1.0)
    rig.tick()
    delays = []
    for failure in range(1, 8):
        pid = rig.slots()[1]
        rig.os.exit(pid, exitcodes.CONNECT)
        rig.tick(2.0)                              # outside the window: only the streak of failed starts counts
        record = rig.arbiter.children.current(1)
        assert record.state is State.BACKOFF and record.failures == failure and record.pid == pid
        delays.append(record.deadline - rig.clock())
        rig.tick(delays[-1] - 0.01)
        assert rig.slots()[1] == pid               # still waiting
        rig.tick(0.02)
        assert rig.slots()[1] != pid and rig.arbiter.children.current(1).failures == failure
    assert delays == [pytest.approx(backoff_delay(n)) for n in range(1, 8)] == pytest.approx([0.5, 1, 2, 4, 8, 16, 30])
    rig.consume()
    rig.tick()
    assert rig.arbiter.children.current(1).failures == 0 and rig.arbiter.restarts.streak == 0


def test_too_many_restarts_within_the_window_gives_up_with_exit_5():
    rig = Rig(restart_limit=3, restart_window=60.0)
    rig.started()
    for _ in range(3):
        rig.os.exit(rig.slots()[1], exitcodes.FAILURE)
        rig.tick(1.0)
        rig.consume()
        rig.tick()
    assert rig.arbiter.parent.state is ParentState.RUNNING
    survivor = rig.slots()[2]
    rig.os.exit(rig.slots()[1], exitcodes.FAILURE)
    rig.tick(1.0)
    assert rig.arbiter.parent.state is ParentState.STOPPING and rig.arbiter.parent.stop_code == exitcodes.GAVE_UP
    assert rig.os.sent(TERM) == [survivor] and 1 not in rig.slots() and "STOPPING=1" in rig.notifier.sent
    assert not rig.arbiter.finished()
    rig.os.exit(survivor, exitcodes.OK)
    rig.tick()
    assert rig.arbiter.finished() and rig.observer.exits()[-1] == (2, survivor, "shutdown", False)


def test_failed_starts_in_a_row_give_up_however_slowly_they_come():
    rig = Rig(worker_processes=1, restart_limit=3, restart_window=1.0)
    rig.tick()
    for _ in range(3):
        rig.os.exit(rig.slots()[1], exitcodes.CONNECT)
        rig.tick(100.0)
        rig.tick(100.0)                            # backoff over: a new try
    rig.os.exit(rig.slots()[1], exitcodes.CONNECT)
    rig.tick(100.0)
    assert rig.arbiter.parent.stop_code == exitcodes.GAVE_UP and rig.arbiter.finished()


def test_a_config_error_is_not_restarted_and_the_parent_exits_2():
    rig = Rig()
    rig.tick()
    first, second = rig.slots().values()
    rig.os.exit(first, exitcodes.CONFIG)
    rig.tick()
    assert len(rig.os.forks) == 2 and rig.arbiter.parent.stop_code == exitcodes.CONFIG
    assert rig.os.sent(TERM) == [second] and rig.observer.exits() == [(1, first, "config_error", False)]


def test_a_silent_child_is_killed_as_hung_and_replaced():
    rig = Rig(worker_timeout=30.0)
    pids = rig.started()
    rig.tick(29.0)
    rig.consume(pids[2])
    rig.tick(1.5)                                   # pid 1 silent 30.5 s, pid 2 beat 1.5 s ago
    assert rig.os.signals == [(pids[1], KILL)] and rig.state(pids[1]) is State.KILLED
    rig.tick(5.0)
    assert rig.os.signals == [(pids[1], KILL)]      # killed once
    rig.os.exit(pids[1], -signal.SIGKILL)
    rig.tick()
    assert rig.slots()[1] not in pids.values() and rig.observer.exits() == [(1, pids[1], "hung", True)]


def test_a_child_that_never_consumes_is_killed_at_the_start_timeout_and_backs_off():
    rig = Rig(worker_processes=1, worker_timeout=10.0, connect_timeout=5.0)
    rig.tick()
    pid = rig.slots()[1]
    rig.consume(pid, phase=lifecycle.CONNECTING)
    rig.tick(19.9)
    assert rig.os.signals == []
    rig.tick(0.2)
    assert rig.os.signals == [(pid, KILL)] and rig.child(pid).reason == lifecycle.START_TIMEOUT
    rig.os.exit(pid, -signal.SIGKILL)
    rig.tick()
    assert rig.arbiter.children.current(1).state is State.BACKOFF


def test_a_stopping_child_is_killed_after_the_grace_period():
    rig = Rig(worker_processes=1, graceful_timeout=10.0)
    pid = rig.started()[1]
    rig.signal(signal.SIGTERM)
    assert rig.os.signals == [(pid, TERM)]
    rig.consume(pid, phase=lifecycle.DRAINING)
    rig.tick(14.9)
    assert rig.os.signals == [(pid, TERM)]
    rig.tick(0.2)
    assert rig.os.signals == [(pid, TERM), (pid, KILL)] and rig.child(pid).reason == lifecycle.STOP_TIMEOUT
    rig.os.exit(pid, -signal.SIGKILL)
    rig.tick()
    assert rig.arbiter.finished() and rig.arbiter.parent.stop_code == exitcodes.OK


def test_recycle_hands_over_to_a_successor_that_consumes_first():
    rig = Rig(worker_processes=1)
    old = rig.started()[1]
    rig.consume(old, settled=3, request=lifecycle.RECYCLE)
    rig.tick()
    new = rig.slots()[1]
    assert new != old and rig.state(old) is State.RETIRING and rig.os.signals == []
    rig.consume(old, settled=3, request=lifecycle.RECYCLE)
    rig.consume(new, phase=lifecycle.CONNECTING)
    rig.tick(1.0)
    assert rig.os.signals == [] and rig.observer.last_tick == {"alive": 2, "consuming": 1, "blocked": 0, "paused": {}, "nodes": {}}
    rig.consume(new)
    rig.tick()
    assert rig.os.signals == [(old, TERM)] and rig.state(old) is State.STOPPING
    rig.os.exit(old, exitcodes.RECYCLE)
    rig.tick()
    assert rig.observer.exits() == [(1, old, "recycle", True)] and rig.slots() == {1: new}
    assert rig.arbiter.restarts.times == type(rig.arbiter.restarts.times)()   # not counted against the limit


def test_recycles_go_one_slot_at_a_time():
    rig = Rig(worker_processes=3)
    old = rig.started()
    rig.consume(request=lifecycle.RECYCLE)                  # all three ask at once
    steps = []
    for _ in range(4):
        rig.tick()
        rig.tick()                                          # a successor that does not consume holds the next one back
        steps.append((len(rig.os.forks), sorted(rig.os.sent(TERM))))
        rig.consume(*[pid for pid in rig.slots().values() if pid not in old.values()])
    a, b, c = old.values()
    assert steps == [(4, []), (5, [a]), (6, [a, b]), (6, [a, b, c])]


def test_a_child_that_leaves_as_recycled_on_its_own_is_replaced_without_counting():
    rig = Rig(worker_processes=1, restart_limit=1)
    for _ in range(3):
        pid = rig.started()[1] if not rig.os.forks else rig.slots()[1]
        rig.os.exit(pid, exitcodes.RECYCLE)
        rig.tick()
        rig.consume()
        rig.tick()
    assert rig.arbiter.parent.state is ParentState.RUNNING and len(rig.os.forks) == 4
    assert [e[2:] for e in rig.observer.exits()] == [("recycle", True)] * 3


def test_hup_replaces_children_one_at_a_time_and_says_ready_again():
    rig = Rig(worker_processes=2)
    old = rig.started()
    rig.load = make_settings(worker_processes=2, prefetch_count=3)
    rig.signal(signal.SIGHUP)
    assert rig.notifier.sent[-1] == "RELOADING=1" and rig.arbiter.parent.state is ParentState.RELOADING
    assert rig.arbiter.settings.prefetch_count == 3 and ("reload", 2) in rig.observer.events
    steps = []
    for _ in range(4):
        rig.tick()
        rig.consume()
        steps.append((len(rig.os.forks), sorted(rig.os.sent(TERM))))
    # a successor for slot 1; it consumes: slot 1's old child stops and slot 2 gets its successor; ...
    assert steps == [(3, []), (4, [old[1]]), (4, [old[1], old[2]]), (4, [old[1], old[2]])]
    assert rig.arbiter.parent.state is ParentState.RUNNING and rig.notifier.sent.count("READY=1") == 2
    for pid in old.values():
        rig.os.exit(pid, exitcodes.OK)
    rig.tick()
    assert [e[2:] for e in rig.observer.exits()] == [("reload", True)] * 2


def test_ttin_adds_a_slot_and_ttou_removes_the_highest_never_the_last():
    rig = Rig(worker_processes=1)
    first = rig.started()[1]
    rig.signal(signal.SIGTTIN)
    rig.signal(signal.SIGTTIN)
    rig.tick()
    assert sorted(rig.slots()) == [1, 2, 3]
    third = rig.slots()[3]
    rig.signal(signal.SIGTTOU)
    rig.tick()
    assert rig.os.signals == [(third, TERM)] and sorted(rig.slots()) == [1, 2]
    for _ in range(3):
        rig.signal(signal.SIGTTOU)
    rig.tick()
    assert rig.arbiter.wanted == 1 and list(rig.slots()) == [1] and rig.slots()[1] == first
    rig.os.exit(third, exitcodes.OK)
    rig.tick()
    assert rig.observer.exits()[0] == (3, third, "scale_down", False)


def test_ttou_of_a_slot_in_backoff_just_forgets_it():
    rig = Rig(worker_processes=2)
    rig.tick()
    rig.os.exit(rig.slots()[2], exitcodes.CONNECT)
    rig.tick()
    assert rig.arbiter.children.current(2).state is State.BACKOFF
    rig.signal(signal.SIGTTOU)
    rig.tick()
    assert list(rig.slots()) == [1] and rig.os.signals == []


def test_term_drains_everyone_and_quit_kills_everyone():
    rig = Rig(worker_processes=2)
    pids = rig.started()
    rig.signal(signal.SIGTERM)
    assert sorted(rig.os.sent(TERM)) == sorted(pids.values()) and rig.arbiter.parent.stop_code == exitcodes.OK
    rig.signal(signal.SIGHUP)                      # ignored while stopping
    rig.signal(signal.SIGQUIT)
    assert sorted(rig.os.sent(KILL)) == sorted(pids.values())
    for pid in pids.values():
        rig.os.exit(pid, -signal.SIGKILL)
    rig.tick()
    assert rig.arbiter.finished() and len(rig.os.forks) == 2
    assert {e[2:] for e in rig.observer.exits()} == {("quit", False)}


@pytest.mark.parametrize("phase, state", [(lifecycle.CONNECTING, State.RECONNECTING), (lifecycle.BLOCKED, State.BLOCKED)])
def test_a_reconnecting_or_blocked_child_is_tolerated_while_it_beats_but_is_no_capacity(phase, state):
    rig = Rig(worker_timeout=30.0)
    pids = rig.started()
    for _ in range(10):
        rig.consume(pids[1], phase=phase)
        rig.consume(pids[2])
        rig.tick(10.0)
    assert rig.state(pids[1]) is state and rig.os.signals == []
    assert rig.observer.last_tick == {"alive": 2, "consuming": 1, "blocked": int(state is State.BLOCKED),
                                      "paused": {}, "nodes": {}}
    assert rig.notifier.status.startswith("1/2 children consuming, 0 in flight")
    rig.consume(pids[1])
    rig.tick()
    assert rig.state(pids[1]) is State.RUNNING


def test_the_watchdog_is_fed_while_all_is_healthy():
    rig = Rig(worker_processes=1)
    rig.started()
    assert "WATCHDOG=1" in rig.notifier.sent


def test_the_loop_runs_until_the_children_are_gone():
    class Signals:
        def __init__(self, script):
            self.script = script

        def install(self):
            pass

        def wait(self, timeout):
            return self.script.pop(0) if self.script else []

    rig = Rig(worker_processes=1)
    rig.arbiter.signals = Signals([[], [signal.SIGTERM], [signal.SIGCHLD]])
    original_wait = rig.arbiter.signals.wait

    def wait(timeout):
        arrived = original_wait(timeout)
        if arrived == [signal.SIGTERM]:
            rig.consume()
        if arrived == [signal.SIGCHLD]:
            rig.os.exit(rig.os.forks[0][1], exitcodes.OK)
        return arrived

    rig.arbiter.signals.wait = wait
    assert rig.arbiter.run() == exitcodes.OK
    assert rig.os.closed == []


@pytest.mark.parametrize("code, killed_for, blamed", [
    (-9, "", True),                       # killed by someone else: the OOM killer, an operator
    (-11, "", True),                      # a segfault
    (1, "", True),                        # a crash
    (-9, lifecycle.HUNG, True),           # we killed it because its loop went silent
    (-9, lifecycle.QUIT, False),          # we killed it on purpose
    (0, "", False), (exitcodes.RECYCLE, "", False), (exitcodes.CONFIG, "", False),
])
def test_the_messages_of_a_child_that_died_abnormally_are_blamed(code, killed_for, blamed):
    from supervisor.children import died_abnormally
    from supervisor.heartbeat import first
    from supervisor.states import Child

    child = Child(1, 1, "/fake/heartbeats/child-1", 0.0, first(0.0), pid=100, reason=killed_for)
    assert died_abnormally(child, code) is blamed


def test_a_reaped_crash_blames_its_heartbeat_path():
    rig = Rig(worker_processes=1)
    pid = rig.started()[1]
    path = rig.child(pid).heartbeat
    rig.os.exit(pid, -11)
    rig.tick()
    assert rig.os.blamed == [path]
