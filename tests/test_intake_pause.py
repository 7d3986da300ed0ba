"""A bad LLM key (or a model that does not exist) stops intake, not requests: nothing fails, all resume."""

import signal
import urllib.request

import pytest

from tests.conftest import sample_request
from tests.harness import readyz
from tests.services import samples, wait_for

pytestmark = pytest.mark.timeout(150)


def metric(port: int, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return sum(samples(answer.read().decode(), name, **labels))


def queued(broker, names) -> bool:
    """Every request back in the queue, none held by a consumer."""
    ok = broker.channel.queue_declare(names["RABBITMQ_REQUEST_QUEUE"], passive=True).method
    return ok.message_count == 3 and ok.consumer_count == 0


@pytest.mark.parametrize("refuse, reason", [({"api_keys": ("another-key",)}, "llm_unauthorized"),
                                            ({"models": ("another-model",)}, "llm_model_not_found")])
def test_a_refused_key_pauses_intake_until_the_llm_accepts_it_again(spawn, env, broker, db, llm, names, refuse,
                                                                    reason):
    from tests.services import free_port

    port = free_port()
    llm.configure(**refuse)
    parent = spawn(["run", "--processes", "2"], {**env, "METRICS_PORT": str(port), "INTAKE_PROBE_SECONDS": "1"})
    parent.wait_event("ready", timeout=60)
    requests = [sample_request() for _ in range(3)]
    for request in requests:
        broker.publish(request)
    wait_for(lambda: queued(broker, names), 60, message="the requests did not go back to the queue")
    # one answer where both children's pause and the capacity it takes away are seen together
    status, body = wait_for(lambda: (lambda r: r if r[1].get("paused") == {reason: 2} and r[1].get("consuming") == 0
                                     else None)(readyz(port)), 60,
                            message="/readyz did not name the pause of both children with none consuming")
    assert status == 503 and reason in body["failed"] and body["consuming"] == 0
    assert metric(port, "report_worker_intake_paused", reason=reason) == 1
    assert broker.depth(names["RABBITMQ_RESPONSE_QUEUE"]) == 0 and broker.depth(names["RABBITMQ_DLQ"]) == 0
    assert db.medical_reports.count_documents({}) == 0       # claims released: nothing half-done is left
    assert parent.events("child_exited") == []               # nothing crashed, nothing was restarted

    llm.configure(api_keys=(), models=())                     # the provider accepts the key again
    answers = broker.responses(3, timeout=60)
    assert sorted(a["request_id"] for a in answers) == sorted(r["request_id"] for r in requests)
    assert all(a["status"] == "success" for a in answers)
    wait_for(lambda: readyz(port)[0] == 200, 30, message="/readyz stayed red after the resume")
    assert metric(port, "report_worker_intake_paused", reason=reason) == 0
    assert [e["reason"] for e in parent.events("intake_resumed")] == [reason, reason]


def test_a_new_key_by_hup_resumes_intake(spawn, env, broker, db, llm, names, tmp_path):
    from tests.services import free_port

    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "openai_api_key").write_text("old-key\n")
    llm.configure(api_keys=("new-key",))
    port = free_port()
    run_env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    parent = spawn(["run", "--processes", "1"], {**run_env, "CREDENTIALS_DIRECTORY": str(credentials),
                                                 "METRICS_PORT": str(port), "INTAKE_PROBE_SECONDS": "60"})
    parent.wait_event("ready", timeout=60)
    for _ in range(3):
        broker.publish(sample_request())
    wait_for(lambda: queued(broker, names), 60, message="the requests did not go back to the queue")
    (credentials / "openai_api_key").write_text("new-key\n")
    parent.signal(signal.SIGHUP)
    answers = broker.responses(3, timeout=60)                 # long before the next probe (60 s)
    assert all(a["status"] == "success" for a in answers)
    # the new child answers as soon as it consumes; the parent says "reloaded" at its next turn after that
    parent.wait_event("reloaded", timeout=30)
    assert db.medical_reports.count_documents({"status": "done"}) == 3
