"""Faults 1, 2 and 8: children killed under load, the parent killed, SIGTERM with slow LLM calls."""

import os
import random
import signal
import statistics
import time

import pytest

from tests.conftest import sample_request
from tests.harness import gone, log_time
from tests.services import wait_for


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_child_killed_every_2s_while_500_requests_flow_loses_nothing(parent, ledger, llm):
    llm.configure(latency=0.3)
    # 2 kills a minute would already trip the default restart limit (10 per 60 s): these kills are wanted.
    # Every kill also makes the messages in flight poison suspects (tests/faults/test_poison_crash.py); a
    # storm of deliberate kills every 2 s hits some of them three times, which would dead-letter them as
    # crashed_worker: this test is about redelivery, so the poison limit is out of its way.
    run = parent("--processes", "2", "--threads", "4", RESTART_LIMIT="1000", POISON_CRASH_LIMIT="1000")
    for i in range(500):
        ledger.publish(sample_request(user_id=f"user-{i % 25}"))

    chooser = random.Random(20261130)
    kills: list[tuple[float, int]] = []
    next_kill = time.monotonic() + 2.0

    def kill_a_child_every_2s() -> None:
        nonlocal next_kill
        if time.monotonic() < next_kill or not ledger.unresolved():
            return
        next_kill += 2.0
        children = run.children()
        if children:
            victim = chooser.choice(children)
            os.kill(victim, signal.SIGKILL)
            kills.append((time.time(), victim))

    seconds = ledger.settle(timeout=360, tick=kill_a_child_every_2s)
    figures = ledger.verify("kill_child_every_2s")
    assert figures.stored == 500 and figures.dlq == 0
    assert len(kills) >= 3, f"only {len(kills)} kills: the run ended too soon to test anything"

    respawn, consuming = [], []
    restarted = {e["old_pid"]: e["child_pid"] for e in run.events("child_restarted")}
    spawned = {e["child_pid"]: e for e in run.events("child_spawned")}
    started = {e["pid"]: e for e in run.events("consuming")}
    for killed_at, victim in kills:
        successor = restarted.get(victim)
        if successor is None:  # killed before it consumed: its slot went into backoff instead
            assert [e for e in run.events("child_backoff") if e["child_pid"] == victim], victim
            continue
        respawn.append(log_time(spawned[successor]) - killed_at)
        if successor in started:  # (it may itself have been killed before it consumed)
            consuming.append(log_time(started[successor]) - killed_at)
    assert respawn and max(respawn) < 1.0, f"a killed child was not replaced within 1 s: {respawn}"
    run.wait_children(2, timeout=30)
    figures.recover_seconds = max(consuming)
    figures.notes.update(kills=len(kills), seconds=round(seconds, 1),
                         respawn_max=round(max(respawn), 3),
                         consuming_median=round(statistics.median(consuming), 3),
                         consuming_max=round(max(consuming), 3))
    print("\n" + figures.line())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_parent_killed_mid_run_and_started_again_loses_nothing(parent, ledger, llm, broker, db, names):
    llm.configure(latency=0.5)
    first = parent("--processes", "2", "--threads", "4")
    children = list(first.ready_children().values())
    for i in range(150):
        ledger.publish(sample_request(user_id=f"user-{i % 10}"))
    wait_for(lambda: db.medical_reports.count_documents({}) >= 20, 60)

    killed_at = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    wait_for(lambda: broker.consumers(queue) == 0, 5, message="orphan children still consuming")
    orphans_gone = time.monotonic() - killed_at
    wait_for(lambda: all(gone(pid) for pid in children), 5, message="children outlived the parent")
    stored_at_kill = db.medical_reports.count_documents({})

    restarted_at = time.monotonic()
    second = parent("--processes", "2", "--threads", "4")
    assert broker.consumers(queue) == 2  # the new children only
    ledger.settle(timeout=180)
    figures = ledger.verify("kill_parent")
    assert figures.stored == 150 and figures.dlq == 0
    assert broker.consumers(queue) == 2 and len(second.children()) == 2
    figures.recover_seconds = time.monotonic() - restarted_at
    figures.notes.update(stored_at_kill=stored_at_kill, consumers_gone_seconds=round(orphans_gone, 2))
    print("\n" + figures.line())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_with_5s_llm_calls_finishes_inflight_keeps_the_rest_and_a_restart_completes(
        parent, ledger, llm, broker, db, names):
    llm.configure(latency=5.0)
    first = parent("--processes", "2", "--threads", "2", "--prefetch", "4", GRACEFUL_TIMEOUT="20")
    for i in range(20):
        ledger.publish(sample_request(user_id=f"user-{i % 4}"))
    wait_for(lambda: llm.stats()["calls"] >= 4, 30)  # every thread of both children is inside a call

    first.signal(signal.SIGTERM)
    assert first.wait(40) == 0
    finished = db.medical_reports.count_documents({})
    assert finished >= 4
    assert llm.stats()["calls"] == finished  # every call that had started ended in a stored report
    ledger.take()
    assert ledger.answered() == finished and len(ledger.responses) == finished
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    assert broker.depth(queue) == 20 - finished  # the rest is still queued
    assert broker.consumers(queue) == 0

    llm.configure(latency=0.0)
    restarted_at = time.monotonic()
    parent("--processes", "2", "--threads", "2", "--prefetch", "4")
    ledger.settle(timeout=120)
    figures = ledger.verify("sigterm_under_load")
    assert figures.stored == 20 and figures.dlq == 0
    figures.recover_seconds = time.monotonic() - restarted_at
    figures.notes.update(finished_before_stop=finished, queued_at_stop=20 - finished)
    print("\n" + figures.line())
