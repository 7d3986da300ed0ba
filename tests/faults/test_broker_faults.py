"""Faults 3 and 10: the broker restarts mid-run; the broker's delivery-ack timeout is shorter than an LLM call.

Both change the one RabbitMQ node the whole suite shares, so each puts it back in a `finally`.
"""

import time
from collections import Counter

import pytest

from tests.conftest import sample_request
from tests.harness import log_time, rabbitmqctl, reconnect
from tests.services import wait_for


def start_broker_app() -> None:
    """`rabbitmqctl start_app`, tried again if the node is still busy stopping."""
    for attempt in range(3):
        try:
            rabbitmqctl("start_app")
            return
        except AssertionError:
            if attempt == 2:
                raise
            time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_broker_restart_mid_run_loses_nothing_and_consuming_resumes_within_5s(parent, ledger, llm, broker, db, names):
    llm.configure(latency=0.3)
    run = parent("--processes", "2", "--threads", "4")
    children = sorted(run.children())
    for i in range(200):
        ledger.publish(sample_request(user_id=f"user-{i % 10}"))
    wait_for(lambda: db.medical_reports.count_documents({}) >= 30, 60)
    ledger.take()

    def both_children_felt_it() -> bool:
        """Each child saw its connection go and then failed twice more to reconnect, backing off."""
        lost = Counter(e["pid"] for e in run.events("broker_connection_lost"))
        return all(lost[pid] >= 3 for pid in children)

    try:
        rabbitmqctl("stop_app")
        stopped_at = time.monotonic()
        wait_for(both_children_felt_it, 60, message=f"children did not notice; log:\n{run.output()[-3000:]}")
        down_seconds = time.monotonic() - stopped_at
    finally:
        start_broker_app()
    back_at = time.monotonic()
    reconnect(broker)
    queue = names["RABBITMQ_REQUEST_QUEUE"]
    consuming_at = wait_for(lambda: broker.consumers(queue) == 2 and time.monotonic(), 30, interval=0.02,
                            message=f"children did not consume again; log:\n{run.output()[-3000:]}")
    resumed = consuming_at - back_at
    assert resumed < 5.0, f"consuming again {resumed:.2f} s after the broker was back"

    seconds = ledger.settle(timeout=180)
    figures = ledger.verify("broker_restart")
    assert figures.stored == 200 and figures.dlq == 0
    assert sorted(run.children()) == children and not run.events("child_exited")  # the children lived through it
    delays = [e["retry_in"] for e in run.events("broker_connection_lost")]
    assert all(d > 0 for d in delays)  # backoff between the attempts, not a hot loop
    figures.recover_seconds = resumed
    figures.notes.update(broker_down_seconds=round(down_seconds, 1), reconnect_attempts=len(delays),
                         settle_seconds=round(seconds, 1))
    print("\n" + figures.line())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_consumer_timeout_shorter_than_the_llm_call_is_survived_and_the_request_completed_once(
        parent, ledger, llm, broker, names):
    # RabbitMQ checks unacked deliveries against consumer_timeout on each channel's tick, about once a
    # minute, so the first LLM call must outlast ~65 s; LLM_TIMEOUT_SECONDS lets it.
    llm.configure(latency=95.0)
    previous = rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()
    try:
        rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 5000).")
        # A channel reads consumer_timeout when it opens: only the children's first channels get 5 s.
        run = parent("--processes", "2", "--threads", "2", LLM_TIMEOUT_SECONDS="150",
                     RABBITMQ_CONSUMER_TIMEOUT="5")
    finally:
        if previous.startswith("{ok,"):
            rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {previous[4:-1]}).")
        else:
            rabbitmqctl("eval", "application:unset_env(rabbit, consumer_timeout).")
    assert rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip() == previous
    assert run.events("consumer_timeout_risk")  # the parent warned at start already
    children = sorted(run.children())

    request = sample_request()
    ledger.publish(request)
    wait_for(lambda: llm.stats()["calls"] >= 1, 20)
    llm.configure(latency=0.0)  # the first call keeps its 95 s; the redelivered copy's call will not wait
    published_at = time.monotonic()
    timed_out = wait_for(lambda: [e for e in run.events("broker_connection_lost")
                                  if "delivery acknowledgement" in e["error"]], 120,
                         message=f"the worker never noticed its channel closing; log:\n{run.output()[-3000:]}")
    closed_after = time.monotonic() - published_at
    assert all("hint" in e["error"] and "RABBITMQ_PREFETCH_COUNT" in e["error"] for e in timed_out), timed_out

    ledger.settle(timeout=60)
    figures = ledger.verify("consumer_timeout")
    assert figures.stored == 1
    assert run.metric("report_worker_redeliveries_total") >= 1  # the broker gave the message back, once more
    assert sorted(run.children()) == children and not run.events("child_exited")  # survived the close
    first = timed_out[0]
    again = [e for e in run.events("consuming") if e["pid"] == first["pid"] and e["ts"] > first["ts"]]
    assert again, "the child whose channel was closed never consumed again"
    figures.recover_seconds = log_time(again[0]) - log_time(first)
    figures.notes.update(channel_closed_after_seconds=round(closed_after, 1), llm_calls=llm.stats()["calls"])
    print("\n" + figures.line())
