"""The pipeline and the settle decision with fake store, cache and LLM: no services, milliseconds each."""

import json
from dataclasses import dataclass, field

import pika
import pytest
from pika.exceptions import NackError

from tests.conftest import sample_request
from worker.claims import Claim
from worker.delivery import ATTEMPT_HEADER, CLAIM_HEADER, Delivery, Publish, Settlement
from worker.errors import InProgress, PermanentError, TransientError
from worker.events import Events
from worker.frames import MARKER
from worker.llm import GeneratedReport
from worker.outcomes import handle
from worker.pipeline import Pipeline
from worker.settings import load
from worker.settler import Settler

SETTINGS = load({"OPENAI_API_KEY": "k", "RETRY_DELAYS": "1,2", "MAX_RETRIES": "2", "RABBITMQ_REQUEST_QUEUE": "req",
                 "RABBITMQ_RESPONSE_QUEUE": "resp", "RABBITMQ_DLQ": "dead"})


class FakeStore:
    """medical_reports as the claims see it, and the users; `calls` lists every round trip."""

    def __init__(self):
        self.reports: dict[str, dict] = {}
        self.users: list[str] = []
        self.calls: list[str] = []

    def claim(self, request_id, user_id, digest, report_id, owner):
        self.calls.append("claim")
        found = self.reports.get(request_id)
        if found is None:
            stub = {"request_id": request_id, "report_id": report_id, "user_id": user_id, "input_sha256": digest,
                    "status": "generating", "owner": owner}
            self.reports[request_id] = stub
            return Claim("ours", stub)
        if found["status"] == "done":
            return Claim("done", found)
        if found["owner"] != owner:
            return Claim("busy", found)
        return Claim("ours", found)

    def complete(self, report, owner):
        self.calls.append("complete")
        self.reports[report["request_id"]] = {**report, "status": "done"}
        return self.reports[report["request_id"]]

    def release(self, request_id, owner):
        self.calls.append("release")
        if self.reports.get(request_id, {}).get("owner") == owner:
            del self.reports[request_id]

    def upsert_user(self, user_id):
        self.calls.append("user")
        self.users.append(user_id)


class FakeLeases:
    def __init__(self):
        self.held: dict[str, str] = {}

    def hold(self, request_id, owner):
        self.held[request_id] = owner

    def drop(self, request_id):
        self.held.pop(request_id)


class FakeCache:
    def __init__(self):
        self.inputs: dict[str, dict] = {}
        self.reports: dict[str, dict] = {}

    def swap_input(self, user_id, document):
        previous, self.inputs[user_id] = self.inputs.get(user_id), document
        return previous

    def remember_report(self, report_id, report):
        self.reports[report_id] = report


class FakeKnowledge:
    def entries_for(self, categories):
        return [{"id": f"kb-{c}", "category": c} for c in categories]


@dataclass
class FakeWriter:
    fail: list = field(default_factory=list)   # exceptions to raise, one per call
    calls: list = field(default_factory=list)

    def generate(self, request, categories, knowledge, deadline=None):
        self.calls.append((request.request_id, list(categories), [k["id"] for k in knowledge]))
        if self.fail:
            raise self.fail.pop(0)
        return GeneratedReport({"title": "t"}, "# t", "fake", 10, 5, 0.01, 0.2)


class Recorder(Events):
    def __init__(self):
        self.stages: list[str] = []

    def stage_timed(self, stage, seconds):
        self.stages.append(stage)


def make_pipeline(writer=None):
    events = Recorder()
    store = FakeStore()
    pipeline = Pipeline(store, store, FakeLeases(), FakeCache(), FakeKnowledge(), writer or FakeWriter(), events)
    return pipeline, events


def delivery(body, attempt=None, redelivered=False, **headers) -> Delivery:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    if attempt is not None:  # as it comes back from one of our delay queues: the broker's x-death says so
        headers[ATTEMPT_HEADER] = attempt
        headers["x-death"] = [{"queue": "req.retry.1s", "reason": "expired", "count": 1}]
    properties = pika.BasicProperties(content_type="application/json", correlation_id="c-1", headers=headers or None)
    return Delivery(body, properties, tag=1, redelivered=redelivered, channel=None)


def routes(settlement) -> list[str]:
    return [publish.routing_key for publish in settlement.publishes]


def test_a_new_request_runs_the_stages_in_the_seed_order_and_is_answered():
    pipeline, events = make_pipeline()
    request = sample_request(request_id="r-1", user_id="u-1")
    settlement = handle(delivery(request), pipeline, SETTINGS)
    assert settlement.outcome == "success" and routes(settlement) == ["resp"] and not settlement.requeue
    response = json.loads(settlement.publishes[0].body)
    stored = pipeline.store.reports["r-1"]
    assert response["status"] == "success" and response["report_id"] == stored["report_id"]
    assert settlement.publishes[0].properties.correlation_id == "c-1"
    assert pipeline.store.calls == ["claim", "user", "complete"]  # a new user; no release on success
    assert events.stages == ["store", "cache", "user", "knowledge", "llm", "store", "cache"]
    assert stored["status"] == "done" and pipeline.leases.held == {}
    assert pipeline.cache.reports[stored["report_id"]] is stored and "u-1" in pipeline.cache.inputs
    [(request_id, categories, knowledge)] = pipeline.writer.calls
    assert stored["report_data"]["categories"] == categories and knowledge == [f"kb-{c}" for c in categories]


def test_a_stored_request_is_answered_again_without_the_llm():
    pipeline, _ = make_pipeline()
    request = sample_request(request_id="r-2")
    first = handle(delivery(request), pipeline, SETTINGS)
    again = handle(delivery(request, redelivered=True), pipeline, SETTINGS)
    assert json.loads(again.publishes[0].body)["report_id"] == json.loads(first.publishes[0].body)["report_id"]
    assert len(pipeline.writer.calls) == 1 and pipeline.store.calls[-1] == "claim"  # one round trip


def test_a_request_claimed_by_another_worker_waits_in_the_shortest_delay_queue():
    pipeline, _ = make_pipeline()
    pipeline.store.reports["r-3"] = {"request_id": "r-3", "report_id": "p", "user_id": "user-1",
                                     "status": "generating", "owner": "someone-else"}
    settlement = handle(delivery(sample_request(request_id="r-3"), attempt=2), pipeline, SETTINGS)
    assert settlement.outcome == "retried" and routes(settlement) == ["req.retry.1s"]
    headers = settlement.publishes[0].properties.headers
    assert headers[ATTEMPT_HEADER] == 2 and headers[CLAIM_HEADER]  # waiting does not use up an attempt
    assert pipeline.writer.calls == []


@pytest.mark.parametrize("attempt, queue", [(1, "req.retry.1s"), (2, "req.retry.2s")])
def test_a_transient_failure_is_retried_through_the_delay_queue_of_its_attempt(attempt, queue):
    pipeline, _ = make_pipeline(FakeWriter(fail=[TransientError("LLM timed out")]))
    settlement = handle(delivery(sample_request(request_id="r-4"), attempt=attempt, **{CLAIM_HEADER: "tok"}),
                        pipeline, SETTINGS)
    assert settlement.outcome == "retried" and routes(settlement) == [queue]
    headers = settlement.publishes[0].properties.headers
    assert headers[ATTEMPT_HEADER] == attempt + 1 and headers[CLAIM_HEADER] == "tok"
    assert pipeline.store.reports == {} and pipeline.store.calls[-1] == "release"  # released in one place


def test_a_success_whose_response_the_broker_refuses_falls_back_to_the_next_attempt_then_the_dlq():
    pipeline, _ = make_pipeline()
    first = handle(delivery(sample_request(request_id="r-fb"), **{CLAIM_HEADER: "tok"}), pipeline, SETTINGS)
    assert first.outcome == "success" and callable(first.otherwise)   # built only if the broker refuses
    retry = first.fallback()
    assert retry.outcome == "retried" and routes(retry) == ["req.retry.1s"]
    assert retry.publishes[0].properties.headers[ATTEMPT_HEADER] == 2
    refused = retry.fallback()   # the delay queue refuses too: answer failed, into the DLQ
    assert refused.outcome == "dead_lettered" and routes(refused) == ["resp", "dead"]
    assert refused.fallback().outcome == "dead_lettered" and routes(refused.fallback()) == ["dead"]
    last = handle(delivery(sample_request(request_id="r-fb"), attempt=3), pipeline, SETTINGS)
    assert last.outcome == "success" and len(pipeline.writer.calls) == 1   # the stored report, answered again
    spent = last.fallback()
    assert spent.outcome == "dead_lettered" and routes(spent) == ["resp", "dead"]
    assert json.loads(spent.publishes[0].body)["error_code"] == "retries_exhausted"


class RefusingChannel:
    """The channel side of a nack: every publish is refused; acks and nacks are recorded."""

    is_open = True

    def __init__(self):
        self.acked, self.nacked = [], []

    def basic_publish(self, *args, **kwargs):
        raise NackError([])

    def basic_ack(self, tag):
        self.acked.append(tag)

    def basic_nack(self, tag, requeue=True):
        self.nacked.append(tag)


def test_a_fallback_that_cannot_be_built_requeues_later_instead_of_raising_on_the_io_thread():
    later = []
    channel = RefusingChannel()
    broken = Settlement((Publish("resp", b"{}", pika.BasicProperties()),), outcome="success",
                        otherwise=lambda: 1 / 0)
    outcome = Settler(Events(), lambda delay, callback: later.append((delay, callback))).settle(
        channel, delivery(sample_request(request_id="r-fx")), broken)
    assert outcome == "requeued" and channel.acked == [] and channel.nacked == []
    [(delay, requeue)] = later
    requeue()
    assert delay > 0 and channel.nacked == [1]


def test_retries_exhausted_answer_failed_and_dead_letter():
    pipeline, _ = make_pipeline(FakeWriter(fail=[TransientError("LLM timed out")]))
    settlement = handle(delivery(sample_request(request_id="r-5"), attempt=3), pipeline, SETTINGS)
    assert settlement.outcome == "dead_lettered" and routes(settlement) == ["resp", "dead"]
    assert json.loads(settlement.publishes[0].body)["status"] == "failed"
    assert settlement.publishes[1].properties.headers["x-death-reason"] == "dead_lettered"


def test_a_permanent_failure_is_not_retried():
    pipeline, _ = make_pipeline(FakeWriter(fail=[PermanentError("LLM answered HTTP 400")]))
    settlement = handle(delivery(sample_request(request_id="r-6")), pipeline, SETTINGS)
    assert settlement.outcome == "failed" and routes(settlement) == ["resp", "dead"]


@pytest.mark.parametrize("body, request_id", [
    (b"{not json", ""),
    (json.dumps(dict(sample_request(request_id="r-7"), labs="x")).encode(), "r-7"),
    (b"x" * (2 << 20), ""),
])
def test_invalid_input_is_dead_lettered_with_a_failed_response_when_the_id_is_readable(body, request_id):
    pipeline, _ = make_pipeline()
    settlement = handle(delivery(body), pipeline, SETTINGS)
    assert settlement.outcome == "invalid"
    assert routes(settlement) == (["resp", "dead"] if request_id else ["dead"])
    assert settlement.publishes[-1].properties.headers["x-death-reason"] == "invalid"
    assert pipeline.store.calls == [] and pipeline.writer.calls == []


def test_undecodable_properties_are_invalid_before_anything_runs():
    pipeline, _ = make_pipeline()
    settlement = handle(delivery(sample_request(request_id="r-8"), **{MARKER: "headers: ValueError"}),
                        pipeline, SETTINGS)
    assert settlement.outcome == "invalid" and routes(settlement) == ["resp", "dead"]
    assert pipeline.store.calls == []


def test_a_bug_in_handling_dead_letters_through_the_same_code():
    pipeline, _ = make_pipeline()
    pipeline.store.claim = None  # calling it raises TypeError: a bug, not a transient error
    settlement = handle(delivery(sample_request(request_id="r-9")), pipeline, SETTINGS)
    assert settlement.outcome == "retried"  # unexpected errors inside the pipeline are retried like transient ones
    broken = delivery(sample_request(request_id="r-10"))
    broken.properties.content_type = object()  # validate() raises AttributeError: a crash outside the pipeline
    crashed = handle(broken, pipeline, SETTINGS)
    assert crashed.outcome == "failed" and routes(crashed) == ["resp", "dead"]  # the ids could be read
    assert crashed.publishes[1].properties.headers["x-death-reason"] == "crash"
    assert json.loads(crashed.publishes[0].body)["error_code"] == "internal_error"


def test_in_progress_is_transient():
    assert issubclass(InProgress, TransientError)


def test_attempt_and_claim_headers_count_only_on_messages_back_from_our_delay_queues():
    pipeline, _ = make_pipeline(FakeWriter(fail=[TransientError("LLM timed out")]))
    forged = delivery(sample_request(request_id="r-11"), **{ATTEMPT_HEADER: 999, CLAIM_HEADER: "stolen"})
    settlement = handle(forged, pipeline, SETTINGS)
    assert settlement.outcome == "retried" and routes(settlement) == ["req.retry.1s"]  # attempt 1, not 999
    headers = settlement.publishes[0].properties.headers
    assert headers[ATTEMPT_HEADER] == 2 and headers[CLAIM_HEADER] != "stolen"
    elsewhere = delivery(sample_request(request_id="r-12"), **{ATTEMPT_HEADER: 3, "x-death": [{"queue": "other"}]})
    pipeline.writer.fail.append(TransientError("LLM timed out"))
    assert handle(elsewhere, pipeline, SETTINGS).outcome == "retried"


@pytest.mark.parametrize("reply_to, queue", [
    (None, "resp"), ("resp", "resp"), ("amq.rabbitmq.reply-to.g1h2AA", "amq.rabbitmq.reply-to.g1h2AA"),
    ("backend-private", "resp"), ("req", "resp"), ("req.retry.2s", "resp"), ("dead", "resp"),
])
def test_reply_to_is_honoured_only_when_allowed_and_never_for_our_own_queues(reply_to, queue):
    pipeline, _ = make_pipeline()
    message = delivery(sample_request(request_id=f"r-{reply_to}"))
    message.properties.reply_to = reply_to
    settlement = handle(message, pipeline, SETTINGS)
    assert routes(settlement) == [queue]
    assert settlement.publishes[0].fallback_key == (None if queue == "resp" else "resp")


def test_failed_responses_carry_a_stable_code_and_never_internal_details():
    pipeline, _ = make_pipeline(FakeWriter(fail=[TransientError("mongodb insert report: db-7.internal:27017 down")]))
    settlement = handle(delivery(sample_request(request_id="r-13", patient={"name": "Ada"}), attempt=3),
                        pipeline, SETTINGS)
    response = json.loads(settlement.publishes[0].body)
    assert (response["status"], response["error_code"], response["retryable"]) == ("failed", "retries_exhausted", True)
    assert "db-7" not in response["error_message"] and "Ada" not in response["error_message"]
    assert settlement.publishes[1].properties.headers["x-error-code"] == "retries_exhausted"
    invalid = json.loads(handle(delivery(dict(sample_request(request_id="r-14"), labs=3)), pipeline,
                                SETTINGS).publishes[0].body)
    assert (invalid["error_code"], invalid["retryable"]) == ("invalid_field", False) and "labs" in invalid["error_message"]


def test_a_returning_user_costs_two_round_trips_and_a_duplicate_one():
    pipeline, _ = make_pipeline()
    handle(delivery(sample_request(request_id="r-20", user_id="u-9")), pipeline, SETTINGS)
    pipeline.store.calls.clear()
    handle(delivery(sample_request(request_id="r-21", user_id="u-9")), pipeline, SETTINGS)
    assert pipeline.store.calls == ["claim", "complete"]  # the input cache saw u-9: no user upsert
    pipeline.store.calls.clear()
    handle(delivery(sample_request(request_id="r-21", user_id="u-9"), redelivered=True), pipeline, SETTINGS)
    assert pipeline.store.calls == ["claim"]
