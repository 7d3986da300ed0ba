"""docs/INTEGRATION.md and docs/schemas/ keep up with the code: schemas, error codes, examples, stored reports."""

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from pydantic import ValidationError

from tests.conftest import ROOT, sample_request
from tests.gateflow import knowledge_for
from worker import contract
from worker.categories import CLINICAL_ORDER, categories_for
from worker.errors import CODES
from worker.evaluation import load_cases
from worker.facts import input_digest
from worker.intake import validate
from worker.llm import ReportWriter
from worker.pipeline import report_document
from worker.schemas import ReportGenerationRequest, ReportGenerationResponse

DOC = ROOT / "docs" / "INTEGRATION.md"
EXAMPLE = ROOT / "docs" / "examples" / "backend.py"
REGENERATE = "report-worker schema --write docs/schemas"

pytestmark = pytest.mark.timeout(120)


def doc_block(marker: str) -> str:
    """The fenced block that follows `<!-- marker -->` in INTEGRATION.md."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```\w*\n(.*?)\n```", DOC.read_text(), re.DOTALL)
    assert match, f"docs/INTEGRATION.md has no block after <!-- {marker} -->"
    return match.group(1) + "\n"


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RABBITMQ_", "MONGODB_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


# ---- the schemas ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(contract.MODELS))
def test_the_committed_schemas_are_the_models_schemas(name):
    path = ROOT / "docs" / "schemas" / f"{name}.json"
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    assert committed == contract.schema_text(name), \
        f"docs/schemas/{name}.json is out of sync with the models; regenerate it with `{REGENERATE}`"
    assert json.loads(committed)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert f"schemas/{name}.json" in DOC.read_text(), "INTEGRATION.md links every schema"


def test_the_schema_command_prints_each_schema_and_writes_all_three_without_settings(tmp_path):
    for name in contract.MODELS:
        printed = cli("schema", name)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout == contract.schema_text(name)
    written = cli("schema", "--write", str(tmp_path))
    assert written.returncode == 0, written.stderr
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == \
        {f"{name}.json": contract.schema_text(name) for name in contract.MODELS}
    assert cli("schema").returncode == 2


def test_the_request_schema_says_what_the_model_accepts():
    request = contract.schema("request")
    for key in ("request_id", "user_id"):
        kinds = {alternative["type"] for alternative in request["properties"][key]["anyOf"]}
        assert kinds == {"string", "integer"}
    optional = set(request["properties"]) - set(request["required"])
    assert optional == set(ReportGenerationRequest.model_fields) - {"request_id", "user_id"}
    for key in optional:  # null means absent
        assert {"type": "null"} in request["properties"][key]["anyOf"], key
    response = contract.schema("response")
    assert response["properties"]["error_code"]["anyOf"][0]["enum"] == list(CODES)
    assert set(response["required"]) == set(ReportGenerationResponse.model_fields)
    report = contract.schema("report")
    assert report["$defs"]["Section"]["properties"]["category"]["enum"] == list(CLINICAL_ORDER)


# ---- the doc against the code ----------------------------------------------------------------

def test_the_doc_lists_every_error_code_with_its_retryable_flag():
    text = DOC.read_text()
    section = text[text.index("## Error codes"):]
    section = section[:section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", section, re.MULTILINE))
    extra = sorted(set(rows) - set(CODES))
    assert set(rows) == set(CODES), f"missing: {sorted(set(CODES) - set(rows))}; not codes: {extra}"
    assert {code: flag == "yes" for code, flag in rows.items()} == {code: CODES[code][0] for code in CODES}


def test_the_doc_examples_are_valid_messages():
    request = validate(doc_block("example: request").encode(), max_bytes=1 << 20)
    assert request.user_id == "1001" and request.categories == ["blood_pressure", "cholesterol"]
    success = ReportGenerationResponse.model_validate_json(doc_block("example: success response"))
    assert success.status == "success" and success.report_id and success.error_code is None
    failed = ReportGenerationResponse.model_validate_json(doc_block("example: failed response"))
    assert failed.status == "failed" and failed.retryable == CODES[failed.error_code][0] and not failed.report_id


def test_the_doc_shows_the_backend_example_verbatim():
    assert doc_block("docs/examples/backend.py") == EXAMPLE.read_text(), \
        "the Python block in INTEGRATION.md differs from docs/examples/backend.py: copy the file into the doc"


def test_the_doc_names_every_category_and_alias():
    from worker.categories import ALIASES

    text = DOC.read_text()
    missing = [name for name in (*CLINICAL_ORDER, *ALIASES) if f"`{name}`" not in text]
    assert missing == []


# ---- stored reports against the model ---------------------------------------------------------

def test_reports_of_the_evaluation_set_match_the_stored_report_model(llm):
    """Every report the writer makes for the evaluation set, stored as the pipeline stores it, fits the model."""
    writer = ReportWriter(base_url=llm.url, api_key="test-key", model="fake-llm", timeout=10, max_retries=0)
    cases = [case for case in load_cases(ROOT / "tests" / "data" / "eval") if case.outcome == "success"]
    assert len(cases) >= 20
    repaired = 0
    try:
        for case in cases:
            request = ReportGenerationRequest.model_validate_json(json.dumps(case.request))
            categories = categories_for(request)
            knowledge = [e for e in knowledge_for(categories) if e["category"] not in case.knowledge_without]
            document = report_document(request, writer.generate(request, categories, knowledge), categories, None,
                                       input_digest(request))
            stored = contract.StoredReport.model_validate(document)  # strict, no unknown fields
            canonical = json.dumps(document["report_data"]["input"], sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False)
            assert stored.input_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
            contract.StoredReport.model_validate_json(json.dumps(document, default=str))  # the Redis value
            repaired += stored.report_data.audit.repairs
    finally:
        writer.close()
    assert repaired >= 1, "the set holds a repaired report (two calls)"
    with pytest.raises(ValidationError):
        contract.StoredReport.model_validate({**document, "new_field": 1})


@pytest.mark.timeout(90)
def test_a_stored_report_and_its_redis_value_match_the_report_schema(consumer, broker, db, cache, names):
    consumer()
    request = sample_request(user_id=1001, disclaimer=None, categories=["BP", "lipids"])
    request["request_id"] = 777001
    broker.publish(request)
    [response] = broker.responses(1)
    ReportGenerationResponse.model_validate(response)
    assert response["status"] == "success" and response["request_id"] == "777001"
    document = db.medical_reports.find_one({"request_id": "777001"})
    document.pop("_id")
    stored = contract.StoredReport.model_validate(document)
    assert set(document) == set(contract.schema("report")["required"])
    assert stored.report_data.input.user_id == "1001" and stored.report_data.categories == ["blood_pressure",
                                                                                           "cholesterol"]
    cached = cache.get(f"{names['REDIS_KEY_PREFIX']}report:{response['report_id']}")
    assert contract.StoredReport.model_validate_json(cached).report_id == response["report_id"]


def run_backend_example(consumer, env) -> dict:
    """Start a worker that requires signatures, run docs/examples/backend.py against it, return its response."""
    key = "doc-example-" + uuid.uuid4().hex
    consumer(REQUEST_SIGNING_KEY=key)
    result = subprocess.run([sys.executable, str(EXAMPLE)], env={**env, "REQUEST_SIGNING_KEY": key},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(90)
def test_the_backend_example_of_the_doc_gets_its_report_from_a_signing_worker(consumer, broker, db, env):
    response = run_backend_example(consumer, env)
    assert response["status"] == "success" and response["user_id"] == "1001", response
    assert db.medical_reports.count_documents({"report_id": response["report_id"], "user_id": "1001"}) == 1


@pytest.mark.timeout(90)
def test_a_direct_reply_to_response_is_not_copied_to_the_response_queue(consumer, broker, db, env, names):
    run_backend_example(consumer, env)
    broker.connection.sleep(0.5)
    assert broker.depth(names["RABBITMQ_RESPONSE_QUEUE"]) == 0
