"""Issue 13: broker flow control is not a hang. A memory alarm blocks every publisher for 25 s (longer than
WORKER_TIMEOUT) in the middle of 100 requests: no child is killed, nothing is lost or stored twice, the
parent reports the blocked children, and work is back within 5 s of the alarm clearing.

It changes the one RabbitMQ node the whole suite shares, so it puts the watermark back in a `finally`.
"""

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import sample_request
from tests.harness import rabbitmqctl
from tests.services import wait_for

ALARM_SECONDS = 25.0


def watermark() -> str:
    return rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip().splitlines()[-1]


def readyz(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_memory_alarm_longer_than_the_worker_timeout_kills_no_child(parent, ledger, llm, db):
    llm.configure(latency=0.3)
    run = parent("--processes", "2", "--threads", "4", WORKER_TIMEOUT="5")
    children = sorted(run.children())
    for i in range(100):
        ledger.publish(sample_request(user_id=f"user-{i % 10}"))
    wait_for(lambda: db.medical_reports.count_documents({"status": "done"}) >= 15, 60)
    before = watermark()
    blocked_seen = metric_seen = 0.0
    try:
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        alarm_at = time.monotonic()
        while time.monotonic() - alarm_at < ALARM_SECONDS:
            blocked_seen = max(blocked_seen, readyz(run.metrics_port).get("blocked") or 0)
            metric_seen = max(metric_seen, run.metric("report_worker_broker_blocked"))
            time.sleep(1.0)
        stored_during = db.medical_reports.count_documents({"status": "done"})
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", before)
    cleared_at = time.monotonic()
    wait_for(lambda: db.medical_reports.count_documents({"status": "done"}) > stored_during + 5, 30, interval=0.1,
             message="work did not come back after the alarm cleared")
    back_seconds = time.monotonic() - cleared_at

    seconds = ledger.settle(timeout=180)
    figures = ledger.verify("memory_alarm")
    assert sorted(run.children()) == children                       # 0 children killed or replaced
    assert not run.events("child_killed") and not run.events("child_exited")
    assert blocked_seen >= 1 and metric_seen >= 1                    # /readyz and the gauge said so
    assert back_seconds < 5.0, f"throughput back {back_seconds:.1f} s after the alarm cleared"
    assert figures.stored == figures.succeeded == 100 and figures.dlq == 0
    figures.notes.update(alarm_seconds=ALARM_SECONDS, blocked_children=blocked_seen, back_seconds=round(back_seconds, 2),
                         seconds=round(seconds, 1))
    print("\n" + figures.line())
