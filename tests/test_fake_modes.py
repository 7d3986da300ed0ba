"""The fake LLM's bad answers over real HTTP through the openai client, and what the gate makes of each."""

import json
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.gateflow import ROOT, generate, knowledge_for
from worker.categories import categories_for
from worker.fakeanswers import MODES
from worker.fakellm import FakeLLM
from worker.gate import review
from worker.prompt import build_messages, response_format
from worker.schemas import ReportGenerationRequest

SAMPLE = json.loads((ROOT / "worker" / "data" / "sample_request.json").read_text())
# Each mode's outcome through prompt → call → gate → one repair: every bad answer is failed with its code,
# or (markdown) stored with the fault escaped; none is a success that contains it.
OUTCOMES = {
    "good": "success", "no-usage": "success", "markdown": "success",
    "malformed": "report_malformed", "prose-report": "report_malformed", "null-content": "report_malformed",
    "prose": "llm_refused", "refusal-json": "llm_refused", "refusal-api": "llm_refused",
    "length": "llm_truncated", "content-filter": "llm_content_filter",
    "missing-section": "report_incomplete", "extra-section": "report_incomplete",
    "duplicate-section": "report_incomplete", "empty-section": "report_incomplete",
    "uncited-section": "citation_invalid", "wrong-citation": "citation_invalid",
    "unknown-citation": "citation_invalid", "foreign-citation": "citation_invalid",
    "invented-url": "unsafe_content", "html": "unsafe_content", "forged-title": "unsafe_content",
    "contradicting-number": "number_mismatch",
}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def fake():
    with FakeLLM() as server:
        yield server


def make_request(mode: str | None = None, **changes) -> ReportGenerationRequest:
    request_id = f"t-{uuid.uuid4().hex[:12]}" + (f"@fake:{mode}" if mode else "")
    return ReportGenerationRequest.model_validate({**SAMPLE, "request_id": request_id, **changes})


def client_for(fake: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0, timeout=10)


def call(fake: FakeLLM, request: ReportGenerationRequest, structured: str = "json_schema"):
    categories = categories_for(request)
    knowledge = knowledge_for(categories)
    return client_for(fake).chat.completions.create(
        model="fake-llm", messages=build_messages(request, knowledge, categories, structured=structured),
        response_format=response_format(categories, knowledge, structured))


def test_every_mode_has_an_expected_outcome():
    assert set(OUTCOMES) == set(MODES)


def test_raw_outputs_of_the_api_level_modes(fake):
    refusal = call(fake, make_request("refusal-api")).choices[0]
    assert refusal.message.content is None and refusal.message.refusal.startswith("I'm sorry")
    assert refusal.finish_reason == "stop"
    length = call(fake, make_request("length")).choices[0]
    assert length.finish_reason == "length" and length.message.content.startswith('{"title"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(length.message.content)
    filtered = call(fake, make_request("content-filter")).choices[0]
    assert filtered.finish_reason == "content_filter" and filtered.message.content is None
    null = call(fake, make_request("null-content")).choices[0]
    assert null.finish_reason == "stop" and null.message.content is None and null.message.refusal is None
    assert call(fake, make_request("no-usage")).usage is None
    good = call(fake, make_request())
    assert good.usage.prompt_tokens > 0 and good.usage.completion_tokens > 0
    assert good.choices[0].message.refusal is None and good.choices[0].finish_reason == "stop"
    prose = call(fake, make_request("prose")).choices[0].message.content
    assert prose.startswith("I'm sorry") and not prose.startswith("{")


def test_the_default_answer_passes_the_gate_in_both_structured_modes(fake):
    for structured in ("json_schema", "json_object"):
        request = make_request()
        choice = call(fake, request, structured).choices[0]
        categories = categories_for(request)
        verdict = review(choice.message.content, categories=categories, knowledge=knowledge_for(categories),
                         request=request, refusal=choice.message.refusal, finish_reason=choice.finish_reason)
        assert [s["category"] for s in verdict.sections] == categories


def test_a_schema_openai_would_refuse_is_answered_400(fake):
    request = make_request()
    fmt = response_format(["general_health"], [])
    fmt["json_schema"]["schema"]["additionalProperties"] = True
    with pytest.raises(openai.BadRequestError, match="additionalProperties"):
        client_for(fake).chat.completions.create(model="m", messages=build_messages(request, [], ["general_health"]),
                                                 response_format=fmt)


@pytest.mark.parametrize("mode", sorted(OUTCOMES))
def test_each_mode_through_the_gate(fake, mode):
    request = make_request(mode)
    result = generate(client_for(fake), request, knowledge_for(categories_for(request)))
    assert (result["status"] if result["status"] == "success" else result["error_code"]) == OUTCOMES[mode]
    assert result["calls"] == (1 if OUTCOMES[mode] == "success" else 2)
    if mode == "markdown":
        lines = result["markdown"].splitlines()
        assert [line for line in lines if line.startswith("## Sources")] == ["## Sources"]
        assert "\\#\\# Sources" in result["markdown"] and "\\*\\*Ignore\\*\\*" in result["markdown"]
    if mode == "no-usage":
        assert result["call_details"] == [{"finish_reason": "stop", "usage": False}]


@pytest.mark.parametrize("mode", sorted(mode for mode, outcome in OUTCOMES.items() if outcome != "success"))
def test_each_bad_mode_once_is_repaired(fake, mode):
    request = make_request(f"{mode}:once")
    result = generate(client_for(fake), request, knowledge_for(categories_for(request)))
    assert result["status"] == "success" and result["calls"] == 2
    assert result["checks"][0] != result["checks"][1] or result["checks"][0]["answer"] != "pass"
    assert all(value == "pass" for value in result["checks"][1].values())


def test_modes_mixed_in_one_run_by_control_mapping_and_marker(fake):
    plain = [make_request() for _ in range(3)]
    for request, mode in zip(plain, ("refusal-api", "wrong-citation:once", "html")):
        fake.set_mode(request.request_id, mode)
    marked = [make_request(mode) for mode in ("contradicting-number", "missing-section:once")]
    expected = ["llm_refused", "success", "unsafe_content", "number_mismatch", "success"]
    client = client_for(fake)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda r: generate(client, r, knowledge_for(categories_for(r))), [*plain, *marked]))
    assert [r["status"] if r["status"] == "success" else r["error_code"] for r in results] == expected
    by_request = fake.stats()["by_request"]
    assert [by_request[r.request_id] for r in [*plain, *marked]] == [2, 2, 2, 2, 2]


def test_control_over_http_and_a_global_mode(fake):
    base = fake.url.removesuffix("/v1")

    def post(body):
        data = json.dumps(body).encode()
        return json.load(urllib.request.urlopen(urllib.request.Request(base + "/_control", data=data), timeout=5))

    request = make_request()
    assert post({"modes": {request.request_id: "uncited-section"}})["modes"] == {request.request_id: "uncited-section"}
    assert generate(client_for(fake), request, knowledge_for(categories_for(request)))["error_code"] == \
        "citation_invalid"
    for bad in ({"modes": {"x": "no-such-mode"}}, {"mode": "nope"}, {"modes": {"x": "html:twice"}}):
        with pytest.raises(urllib.error.HTTPError) as info:
            post(bad)
        assert info.value.code == 400
    with pytest.raises(ValueError):
        fake.set_mode("x", "no-such-mode")
    try:
        post({"mode": "forged-title", "modes": {}})
        assert generate(client_for(fake), make_request(), knowledge_for(categories_for(make_request())))[
            "error_code"] == "unsafe_content"
        marked = make_request("good")  # a request's own marker beats the global mode
        assert generate(client_for(fake), marked, knowledge_for(categories_for(marked)))["status"] == "success"
    finally:
        post({"mode": "good"})


def test_older_fault_options_still_take_precedence(fake):
    fake.configure(malformed_first=1)
    try:
        request = make_request("html")
        first = call(fake, request).choices[0].message.content
        assert first.startswith('{"title": "Your health report", "summary": "This answer stops')
        assert "beacon.example" in call(fake, request).choices[0].message.content
    finally:
        fake.configure(malformed_first=0)


def test_the_injected_latency_is_the_latency_a_client_sees():
    """The answer leaves `latency` after the request arrived (its work is done while the clock runs), in one
    write on a TCP_NODELAY socket: a response written in pieces on a Nagle socket waits for the client's
    delayed ACK, 40 ms a call on Linux, which the bench would count against the worker."""
    with FakeLLM() as instant, FakeLLM(latency=0.25) as slow:
        request = make_request()
        call(instant, request)  # the connection is open and the client warm
        client = client_for(instant)
        categories = categories_for(request)
        knowledge = knowledge_for(categories)
        messages = build_messages(request, knowledge, categories)
        answer_format = response_format(categories, knowledge, "json_schema")
        started = time.monotonic()
        for _ in range(20):  # one keep-alive connection: each call's answer must not wait for an ACK
            client.chat.completions.create(model="fake-llm", messages=messages, response_format=answer_format)
        per_call = (time.monotonic() - started) / 20
        assert per_call < 0.025, f"{per_call * 1000:.1f} ms a call at latency 0: a delayed-ACK stall is back"
        started = time.monotonic()
        assert call(slow, request).choices[0].message.content
        took = time.monotonic() - started
        assert 0.25 <= took < 0.25 + 0.2, f"an answer at latency 0.25 s took {took:.3f} s"
