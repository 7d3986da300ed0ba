"""ReportWriter against our fake OpenAI server over real HTTP, plus the report checks and category mapping."""

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import openai
import pytest
from prometheus_client import REGISTRY

from metrics.events import PrometheusEvents
from worker.categories import CLINICAL_ORDER, categories_for
from worker.errors import Paused, PermanentError, TransientError
from worker.fakellm import FakeLLM, add_arguments
from worker.llm import DEFAULT_PRICES, ReportWriter, classify, cost_of
from worker.report import ReportContent, red_flag_text
from worker.schemas import ReportGenerationRequest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "worker" / "data"
KB = json.loads((DATA / "knowledge_base.json").read_text())
SAMPLE = json.loads((DATA / "sample_request.json").read_text())

pytestmark = pytest.mark.timeout(60)


def make_request(**changes) -> ReportGenerationRequest:
    return ReportGenerationRequest.model_validate({**SAMPLE, "request_id": str(uuid.uuid4()), **changes})


def knowledge_for(request: ReportGenerationRequest) -> list[dict]:
    categories = set(categories_for(request))
    return [entry for entry in KB if entry["category"] in categories]


def make_writer(fake: FakeLLM, model: str = "gpt-4o-mini", timeout: float = 10.0, max_retries: int = 1) -> ReportWriter:
    return ReportWriter(base_url=fake.url, api_key="test-key", model=model, timeout=timeout, max_retries=max_retries,
                        events=PrometheusEvents())


def llm_requests(model: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("report_worker_llm_requests_total", {"model": model, "outcome": outcome})
    return value or 0.0


def assert_valid(result, request: ReportGenerationRequest, knowledge: list[dict]) -> None:
    ReportContent.model_validate(result.content)
    by_id = {entry["id"]: entry for entry in knowledge}
    citations = {c["n"]: c for c in result.content["citations"]}
    assert citations, "the report cites nothing"
    for citation in citations.values():
        entry = by_id[citation["kb_id"]]
        assert citation["source_url"] == entry["source_url"]
        assert citation["title"] == entry["title"]
        assert f"[{citation['n']}] {entry['title']} — {entry['source_url']}" in result.markdown
    texts = [result.content["summary"], *(s["body"] for s in result.content["sections"])]
    used = {int(n) for text in texts for n in re.findall(r"\[(\d+)\]", text)}
    assert used and used <= set(citations)
    assert result.content["red_flags"] == list(request.red_flags)
    assert result.content["disclaimer"] == request.disclaimer
    for flag in request.red_flags:
        assert red_flag_text(flag) in result.markdown
    assert result.markdown.rstrip().endswith(request.disclaimer)


def test_generate_success_cites_only_given_entries():
    request = make_request()
    knowledge = knowledge_for(request)
    before = llm_requests("gpt-4o-mini", "success")
    with FakeLLM() as fake:
        writer = make_writer(fake)
        result = writer.generate(request, categories_for(request), knowledge)
        stats = fake.stats()
    assert_valid(result, request, knowledge)
    assert {s["category"] for s in result.content["sections"]} == set(categories_for(request))
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    price_in, price_out = DEFAULT_PRICES["gpt-4o-mini"]
    expected = result.prompt_tokens / 1e6 * price_in + result.completion_tokens / 1e6 * price_out
    assert result.cost_usd == pytest.approx(expected) and result.cost_usd > 0
    assert result.model == "gpt-4o-mini"
    assert stats["calls"] == 1 and stats["by_request"] == {request.request_id: 1}
    assert llm_requests("gpt-4o-mini", "success") == before + 1


def test_red_flag_text_is_taken_verbatim():
    request = make_request(red_flags=[
        "Plain string flag.",
        {"text": "Text field flag."},
        {"description": "Description flag."},
        {"code": "x1", "level": 2},
    ])
    with FakeLLM() as fake:
        result = make_writer(fake).generate(request, categories_for(request), knowledge_for(request))
    for line in ("- Plain string flag.", "- Text field flag.", "- Description flag.", '- {"code":"x1","level":2}'):
        assert line in result.markdown


def test_malformed_answer_is_repaired_once():
    request = make_request()
    knowledge = knowledge_for(request)
    malformed_before = llm_requests("gpt-4.1", "malformed")
    with FakeLLM(malformed_first=1) as fake:
        result = make_writer(fake, model="gpt-4.1").generate(request, categories_for(request), knowledge)
        stats = fake.stats()
    assert_valid(result, request, knowledge)
    assert stats["by_request"] == {request.request_id: 2}
    assert llm_requests("gpt-4.1", "malformed") == malformed_before + 1
    price_in, price_out = DEFAULT_PRICES["gpt-4.1"]
    expected = result.prompt_tokens / 1e6 * price_in + result.completion_tokens / 1e6 * price_out
    assert result.cost_usd == pytest.approx(expected)


def test_always_malformed_fails_after_one_repair_with_its_code():
    request = make_request()
    with FakeLLM(malformed_rate=1.0) as fake:
        with pytest.raises(PermanentError, match="gate twice") as failed:
            make_writer(fake).generate(request, categories_for(request), knowledge_for(request))
        assert fake.stats()["by_request"] == {request.request_id: 2}
    assert failed.value.code == "report_malformed"


def test_server_error_is_transient_after_the_client_retry():
    request = make_request()
    before = llm_requests("fake-5xx", "error")
    with FakeLLM(error_rate=1.0) as fake:
        with pytest.raises(TransientError):
            make_writer(fake, model="fake-5xx").generate(request, categories_for(request), knowledge_for(request))
        stats = fake.stats()
    assert stats["calls"] == 2 and stats["status"] == {"500": 2}
    assert llm_requests("fake-5xx", "error") == before + 1


def test_rate_limit_is_transient_after_waiting_retry_after():
    request = make_request()
    before = llm_requests("fake-429", "rate_limited")
    with FakeLLM(rate_limit_rate=1.0) as fake:
        started = time.monotonic()
        with pytest.raises(TransientError, match="429"):
            make_writer(fake, model="fake-429").generate(request, categories_for(request), knowledge_for(request))
        waited = time.monotonic() - started
        stats = fake.stats()
    assert stats["status"] == {"429": 2} and stats["by_request"] == {request.request_id: 2}
    assert waited >= 0.9  # the retry honoured retry-after: 1
    assert llm_requests("fake-429", "rate_limited") == before + 1


def test_hanging_server_times_out_as_transient():
    request = make_request()
    before = llm_requests("fake-hang", "timeout")
    with FakeLLM(timeout_rate=1.0, hang_seconds=30) as fake:
        with pytest.raises(TransientError, match="timed out"):
            make_writer(fake, model="fake-hang", timeout=0.5, max_retries=0).generate(request, categories_for(request), knowledge_for(request))
        assert fake.stats()["calls"] == 1
    assert llm_requests("fake-hang", "timeout") == before + 1


def test_concurrent_generate_calls_all_valid():
    requests = [make_request() for _ in range(32)]
    with FakeLLM(latency=0.5, jitter=0.2) as fake:
        writer = make_writer(fake)
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(lambda r: writer.generate(r, categories_for(r), knowledge_for(r)), requests))
        stats = fake.stats()
    assert stats["calls"] == 32
    assert stats["by_request"] == {r.request_id: 1 for r in requests}
    for request, result in zip(requests, results):
        assert_valid(result, request, knowledge_for(request))


def test_ping():
    with FakeLLM() as fake:
        make_writer(fake).ping()
        url = fake.url
    writer = ReportWriter(base_url=url, api_key="k", model="m", timeout=1.0)
    with pytest.raises(TransientError):
        writer.ping()


def test_status_classification():
    request = httpx2.Request("POST", "http://llm.invalid/v1/chat/completions")

    def status_error(cls, status):
        return cls("boom", response=httpx2.Response(status, request=request), body=None)

    assert isinstance(classify(status_error(openai.BadRequestError, 400))[1], PermanentError)
    assert isinstance(classify(status_error(openai.UnprocessableEntityError, 422))[1], PermanentError)
    assert classify(status_error(openai.AuthenticationError, 401))[1].code == "llm_unauthorized"
    assert isinstance(classify(status_error(openai.PermissionDeniedError, 403))[1], Paused)
    assert classify(status_error(openai.NotFoundError, 404))[1].code == "llm_model_not_found"
    assert classify(status_error(openai.RateLimitError, 429))[0] == "rate_limited"
    assert isinstance(classify(status_error(openai.InternalServerError, 503))[1], TransientError)
    assert classify(openai.APITimeoutError(request=request))[0] == "timeout"
    assert cost_of(DEFAULT_PRICES, "unknown-model", 1_000_000, 1_000_000) is None  # not priced as gpt-4o
    assert cost_of({**DEFAULT_PRICES, "default": (1.0, 2.0)}, "unknown-model", 1_000_000, 1_000_000) == 3.0


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, ["blood_pressure", "cardiovascular", "cholesterol", "diabetes", "nutrition",
              "physical_activity", "weight_management"]),
        ({"labs": [], "cvd_summary": {}, "assessment": {}, "plan": []}, ["general_health"]),
        ({"labs": [], "cvd_summary": {"ten_year_risk_percent": 7.5}, "assessment": {}, "plan": []}, ["cardiovascular"]),
        ({"labs": [{"name": "LDL-C", "value": 130}, {"name": "Fasting glucose"}], "cvd_summary": {},
          "assessment": {}, "plan": ["Quit smoking this year"]}, ["cholesterol", "diabetes", "smoking_cessation"]),
        ({"labs": [{"name": "BP systolic"}], "cvd_summary": {}, "assessment": {"notes": "BMI 31"},
          "plan": [{"category": "Physical Activity"}, {"category": "medication"}]},
         ["blood_pressure", "physical_activity", "weight_management"]),
    ],
)
def test_categories_for(changes, expected):
    request = make_request(**{"patient": {"age": 56, "sex": "male"}, **changes})  # a BMI would add weight_management
    assert categories_for(request) == sorted(expected, key=CLINICAL_ORDER.index)


def test_fake_control_and_reset_over_http():
    with FakeLLM() as fake:
        base = fake.url.removesuffix("/v1")
        post = lambda path, body: urllib.request.urlopen(  # noqa: E731
            urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST"), timeout=5)
        assert json.load(post("/_control", {"malformed_rate": 1.0}))["malformed_rate"] == 1.0
        with pytest.raises(urllib.error.HTTPError) as info:
            post("/_control", {"no_such_setting": 1})
        assert info.value.code == 400
        request = make_request()
        with pytest.raises(PermanentError, match="gate twice"):  # malformed twice: failed, not retried
            make_writer(fake).generate(request, categories_for(request), knowledge_for(request))
        post("/_reset", {})
        stats = json.load(urllib.request.urlopen(base + "/_stats", timeout=5))
        assert stats == {"calls": 0, "by_request": {}, "status": {}}


def test_fake_cli_serves_until_sigterm():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).port == 8400
    code = ("import argparse, sys; from worker.fakellm import add_arguments, run; "
            "p = argparse.ArgumentParser(); add_arguments(p); sys.exit(run(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "--latency", "0.01"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "fake_llm_listening"
        models = json.load(urllib.request.urlopen(line["url"] + "/models", timeout=5))
        assert models["object"] == "list"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
