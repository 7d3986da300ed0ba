"""The gate against every bad answer of the issue: each is caught with its code, good reports pass."""

import json
import uuid

import pytest

from tests.gateflow import KB, ROOT, knowledge_for
from worker.categories import categories_for
from worker.fakeanswers import build_report
from worker.gate import ERROR_CODES, GateFailure, inspect, review
from worker.prompt import prompt_document
from worker.schemas import ReportGenerationRequest

SAMPLE = json.loads((ROOT / "worker" / "data" / "sample_request.json").read_text())
REQUEST = ReportGenerationRequest.model_validate(SAMPLE)
CATEGORIES = categories_for(REQUEST)
KNOWLEDGE = knowledge_for(CATEGORIES)
PATIENT_VALUES = ("162", "6.1", "138", "86", "28.7", "11.8", "41")

pytestmark = pytest.mark.timeout(30)


def good(request: ReportGenerationRequest = REQUEST, categories=None, knowledge=None) -> dict:
    categories = categories or categories_for(request)
    knowledge = KNOWLEDGE if knowledge is None else knowledge
    return build_report(prompt_document(request, knowledge, categories))


def check(answer, request=REQUEST, categories=None, knowledge=None, **kwargs):
    text = answer if isinstance(answer, str) or answer is None else json.dumps(answer)
    return review(text, categories=categories or categories_for(request),
                  knowledge=KNOWLEDGE if knowledge is None else knowledge, request=request, **kwargs)


def refused(answer, code: str, **kwargs) -> GateFailure:
    with pytest.raises(GateFailure) as info:
        check(answer, **kwargs)
    assert info.value.code == code, info.value
    assert not any(value in info.value.reason for value in PATIENT_VALUES), info.value.reason
    return info.value


def body(report: dict, index: int, text: str) -> dict:
    sections = [dict(section) for section in report["sections"]]
    sections[index]["body"] = text
    return {**report, "sections": sections}


def test_the_default_fake_report_passes_in_requested_order_with_citations_by_prompt_number():
    report = good()
    report["sections"].reverse()
    verdict = check(report)
    assert [s["category"] for s in verdict.sections] == CATEGORIES
    assert verdict.citations and all(KNOWLEDGE[c["n"] - 1]["id"] == c["kb_id"] for c in verdict.citations)
    assert {c["source_url"] for c in verdict.citations} <= {e["source_url"] for e in KB}
    assert verdict.verified_numbers > 0 and verdict.audit()["dropped_citations"] == []


def test_every_error_code_is_documented():
    assert set(ERROR_CODES) == {"llm_refused", "llm_truncated", "llm_content_filter", "report_malformed",
                                "report_incomplete", "citation_invalid", "unsafe_content", "number_mismatch"}


@pytest.mark.parametrize("answer", [
    "I'm sorry, I can't help with that.",
    "As an AI language model, I cannot provide medical advice.",
    {"title": "I'm sorry", "summary": "I am unable to help with that.", "sections": [], "citations": []},
    {"error": "I cannot assist with this request."},
])
def test_refusals_in_prose_or_json_fields(answer):
    refused(answer, "llm_refused")


def test_refusal_inside_a_section_and_the_api_refusal_field():
    refused(body(good(), 0, "As an AI, I cannot give you health advice [1]."), "llm_refused")
    refused(None, "llm_refused", refusal="I'm sorry, I can't assist with that.")
    refused(json.dumps(good()), "llm_refused", refusal="I can't")


@pytest.mark.parametrize("answer, finish, code", [
    ('{"title": "Your re', "length", "llm_truncated"),
    (None, "content_filter", "llm_content_filter"),
    (None, "stop", "report_malformed"),
    ("   ", "stop", "report_malformed"),
    ("Your results look fine. Walk more.", "stop", "report_malformed"),
    ('{"title": "T", "summary": "S", "sections": "none"}', "stop", "report_malformed"),
    ("[1, 2, 3]", "stop", "report_malformed"),
])
def test_cut_off_empty_or_shapeless_answers(answer, finish, code):
    refused(answer, code, finish_reason=finish)


def test_sections_exactly_one_non_empty_per_requested_category():
    report = good()
    extra = {"category": "smoking_cessation", "heading": "Smoking", "body": "Extra [1]."}
    for bad in (
        {**report, "sections": report["sections"][:-1]},  # one missing
        {**report, "sections": report["sections"][:1]},  # one section when seven were asked for
        {**report, "sections": [*report["sections"], extra]},  # a category not requested
        {**report, "sections": [*report["sections"], report["sections"][0]]},  # a duplicate
        body(report, 2, "   "),  # empty body
        {**report, "sections": [{**report["sections"][0], "heading": " "}, *report["sections"][1:]]},
        {**report, "sections": []},
    ):
        refused(bad, "report_incomplete")


def test_categories_written_like_a_person_are_accepted():
    report = good()
    report["sections"][1]["category"] = "Blood Pressure"
    assert check(report).sections[1]["category"] == "blood_pressure"


def test_a_section_without_a_citation_is_refused_unless_its_category_has_no_entries():
    report = good()
    uncited = body(report, 2, "Your cholesterol explained, with no source at all.")
    refused(uncited, "citation_invalid")
    without = [entry for entry in KNOWLEDGE if entry["category"] != "cholesterol"]
    report = good(knowledge=without)
    assert "[" not in report["sections"][2]["body"]
    assert check(report, knowledge=without).sections[2]["category"] == "cholesterol"


def test_citation_numbers_must_be_the_prompts():
    knowledge = [KB[0], KB[9], KB[8], KB[10]]  # entry 3 of this prompt is kb-bp-003, entry 4 kb-dm-002
    assert knowledge[2]["id"] == "kb-bp-003" and knowledge[3]["id"] == "kb-dm-002"
    request = REQUEST.model_copy(update={"categories": ["cardiovascular", "blood_pressure", "diabetes"]})
    report = good(request, knowledge=knowledge)
    assert check(report, request=request, knowledge=knowledge)
    wrong = {**report, "citations": [*report["citations"][:2], {"n": 3, "kb_id": "kb-dm-002"}, report["citations"][3]]}
    refused(wrong, "citation_invalid", request=request, knowledge=knowledge)
    refused(body(report, 0, report["sections"][0]["body"] + " [99]"), "citation_invalid", request=request,
            knowledge=knowledge)
    refused({**report, "citations": [*report["citations"], {"n": 99, "kb_id": "kb-x"}]}, "citation_invalid",
            request=request, knowledge=knowledge)
    twice = {**report, "citations": [*report["citations"], {"n": 1, "kb_id": knowledge[1]["id"]}]}
    refused(twice, "citation_invalid", request=request, knowledge=knowledge)


@pytest.mark.parametrize("mark", ["(1)", "(1, 2)", "[^2]", "[1-3]", "[1–3]", "[Source 4]", "【1】", "text¹²",
                                  "[1; 2]", "(source 2)", "{3}", "entry 3"])
def test_other_citation_syntaxes_are_caught(mark):
    refused(body(good(), 0, f"Your heart explained [1] and more {mark}."), "citation_invalid")


def test_unused_citations_are_dropped_and_missing_ones_resolved_from_the_prompt():
    report = good()
    listed = report["citations"]
    trimmed = {**report, "citations": [c for c in listed if c["n"] != 1]}  # [1] used but not listed
    verdict = check(trimmed)
    assert verdict.citations[0] == {"n": 1, "kb_id": KNOWLEDGE[0]["id"], "title": KNOWLEDGE[0]["title"],
                                    "source_url": KNOWLEDGE[0]["source_url"]}
    unused = body(report, 0, "Your heart explained [2].")
    verdict = check(unused)
    assert verdict.dropped_citations == (1, 3)
    assert 1 not in {c["n"] for c in verdict.citations}


@pytest.mark.parametrize("bad", [
    "Cheaper statins at https://cheap-statins.example today.", "Visit cheap-statins.example for offers.",
    "See www.x.com.", "Short link: bit.ly/x", "Write to help@clinic.org.", "Call 555-123-4567 to book.",
    "Call +44 20 7946 0958.", 'Look <img src="https://beacon.example/p.gif">', "<script>alert(1)</script>",
    "A <b>bold</b> claim.", "[click](javascript:alert(1))", "ftp://files.example/x",
])
@pytest.mark.parametrize("field", ["title", "summary", "heading", "body"])
def test_links_contact_details_and_html_are_unsafe_anywhere(bad, field):
    report = good()
    if field in ("title", "summary"):
        report[field] = f"{report[field]} {bad}"
    else:
        report["sections"][0][field] = f"{report['sections'][0][field]} {bad}"
    failure = refused(report, "unsafe_content")
    assert bad not in failure.reason


@pytest.mark.parametrize("title", ["Your report\n## Red flags – none", "No red flags for you", "Disclaimer",
                                   "Sources"])
def test_a_title_or_heading_cannot_claim_a_part_only_we_write(title):
    refused({**good(), "title": title}, "unsafe_content")
    report = good()
    report["sections"][0]["heading"] = title
    refused(report, "unsafe_content")


def test_the_issues_contradicting_numbers_are_caught_without_echoing_them():
    report = {**good(), "summary": "Your LDL of 126 and HbA1c of 7.2 % mean you have diabetes and should start "
                                   "insulin."}
    failure = refused(report, "number_mismatch")
    assert "126" not in str(failure) and "7.2" not in str(failure)
    refused({**good(), "summary": "Your LDL of 126 means your cholesterol is high."}, "number_mismatch")
    refused(body(good(), 2, "Your LDL is 160 mg/dL [4]."), "number_mismatch")


@pytest.mark.parametrize("text", [
    "Your LDL was 162 mg/dL and your HbA1c 6.1 % [4].", "Your LDL was 162.0 mg/dL [4].", "HbA1c 6,1 % [4].",
    "Blood pressure 138/86 mmHg [4].", "A BMI of 28.7 kg/m² [4].", "Your 10-year risk is 11.8% [4].",
    "About 12 % over ten years [4].", "Seek care above 180/120 mmHg [4].", "Keep sodium under 2,300 mg [4].",
    "Your weight is 91 kg and height 178 cm [4].", "Walk 30 minutes on 5 days a week [4].",
])
def test_numbers_from_the_input_pass_with_rounding(text):
    check(body(good(), 2, text))


def test_rounding_both_ways():
    request = REQUEST.model_copy(update={"labs": [{"name": "HbA1c", "value": 6.08, "unit": "%", "category": "diabetes"},
                                                  {"name": "Sodium", "value": 7.0, "unit": "mmol/L"}]})
    categories = categories_for(request)
    report = good(request, categories, knowledge_for(categories))
    index = categories.index("diabetes")
    for text, ok in (("6.1 %", True), ("6.08 %", True), ("6 %", True), ("6.2 %", False), ("7 mmol/L", True),
                     ("7.0 mmol/L", True), ("7.2 mmol/L", False)):
        answer = body(report, index, f"Your value is {text} [{report['citations'][0]['n']}].")
        if ok:
            check(answer, request=request, categories=categories, knowledge=knowledge_for(categories))
        else:
            refused(answer, "number_mismatch", request=request, categories=categories,
                    knowledge=knowledge_for(categories))


def test_a_knowledge_number_counts_only_when_that_entry_is_cited():
    diabetes = CATEGORIES.index("diabetes")
    a1c = next(n for n, e in enumerate(KNOWLEDGE, 1) if e["id"] == "kb-dm-002")
    other = next(n for n, e in enumerate(KNOWLEDGE, 1) if e["category"] == "diabetes" and n != a1c)
    check(body(good(), diabetes, f"An A1C of 6.5% or higher on two tests means diabetes [{a1c}]."))
    refused(body(good(), diabetes, f"An A1C of 6.5% or higher on two tests means diabetes [{other}]."),
            "number_mismatch")


def test_numbers_without_units_are_listed_as_unverified():
    verdict = check(body(good(), 0, "Three things matter: 4 habits and 33 checks [1]."))
    assert verdict.unverified_numbers == ("4", "33")


def test_a_value_the_model_never_saw_does_not_count_as_input():
    request = REQUEST.model_copy(update={"patient": {**SAMPLE["patient"], "mrn": 445566, "name": "Ana"}})
    refused(body(good(request), 2, "Your LDL is 445566 mg/dL [4]."), "number_mismatch", request=request)


def test_inspect_reports_every_check_of_one_answer():
    report = body(good(), 0, "Buy at https://cheap-statins.example, LDL 99 mg/dL [1].")
    results = inspect(json.dumps(report), categories=CATEGORIES, knowledge=KNOWLEDGE, request=REQUEST)
    assert results == {"answer": "pass", "sections": "pass", "safety": "unsafe_content", "citations": "pass",
                       "numbers": "number_mismatch"}
    assert inspect(None, categories=CATEGORIES, knowledge=KNOWLEDGE, request=REQUEST, refusal="no") == {
        "answer": "llm_refused", "sections": "skipped", "safety": "skipped", "citations": "skipped",
        "numbers": "skipped"}


def test_request_ids_do_not_matter_to_the_gate():
    request = REQUEST.model_copy(update={"request_id": str(uuid.uuid4())})
    assert check(good(request), request=request).title == "Your personal health report"


def test_a_fenced_json_answer_is_read_and_titles_are_stored_on_one_line():
    report = {**good(), "title": "Your   personal\nhealth report"}
    verdict = check("```json\n" + json.dumps(report) + "\n```")
    assert verdict.title == "Your personal health report"
    refused("```json\n" + json.dumps(report), "report_malformed")


@pytest.mark.parametrize("hidden", ["\u202e", "\u2066", "\x00", "\x1b[31m"])
def test_invisible_control_characters_are_unsafe(hidden):
    refused({**good(), "summary": f"Your results{hidden} explained."}, "unsafe_content")
