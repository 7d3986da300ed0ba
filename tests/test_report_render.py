"""The stored report and its Markdown: facts from the input, model text escaped, only our code writes structure."""

import json
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gateflow import ROOT, knowledge_for
from worker import markup
from worker.categories import categories_for
from worker.fakeanswers import build_report
from worker.facts import DEFAULT_DISCLAIMER, flag_by_text, results_table
from worker.gate import review
from worker.prompt import prompt_document
from worker.report import assemble_report, render_markdown
from worker.schemas import ReportGenerationRequest

SAMPLE = json.loads((ROOT / "worker" / "data" / "sample_request.json").read_text())
OUR_HEADINGS = ("Act now if…", "Your results", "Your heart and circulation risk", "Your plan", "Resources", "Sources")
# Lines that open a Markdown block (CommonMark + GFM tables), after up to three spaces of indentation.
BLOCK = re.compile(r"^ {0,3}(?:#{1,6}(?:\s|$)|[-+*](?:\s|$)|\d{1,9}[.)](?:\s|$)|>|```|~~~|<|\||(?:-\s*){3,}$|"
                   r"(?:\*\s*){3,}$|(?:_\s*){3,}$|=+\s*$|\[[^\]]*\]:)|^ {4,}\S")
UNESCAPED = re.compile(r"(?<!\\)(?:\*|_|`|<|\]\(|!\[|&)")

pytestmark = pytest.mark.timeout(60)


def report_for(request: ReportGenerationRequest, change=None) -> dict:
    categories = categories_for(request)
    knowledge = knowledge_for(categories)
    answer = build_report(prompt_document(request, knowledge, categories))
    if change:
        answer = change(answer)
    verdict = review(json.dumps(answer), categories=categories, knowledge=knowledge, request=request)
    return assemble_report(verdict, request)


def blocks(markdown: str) -> list[str]:
    """Every line that opens a block; a line right after a text line that is all = or - would make a heading."""
    return [line for line in markdown.splitlines() if BLOCK.match(line)]


def test_stored_content_keeps_the_old_keys_and_adds_the_facts():
    request = ReportGenerationRequest.model_validate(SAMPLE)
    content = report_for(request)
    assert set(content) == {"title", "summary", "sections", "citations", "red_flags", "disclaimer", "results",
                            "cvd_summary", "plan", "resources"}
    assert content["red_flags"] == SAMPLE["red_flags"] and content["disclaimer"] == SAMPLE["disclaimer"]
    assert content["cvd_summary"] == SAMPLE["cvd_summary"] and content["resources"] == SAMPLE["resources_table"]
    assert [row["name"] for row in content["results"]] == [lab["name"] for lab in SAMPLE["labs"]]
    assert [row["flag"] for row in content["results"]] == ["high", None, "high", "high", "high", "high"]
    assert [item["action"] for item in content["plan"]] == [item["action"] for item in SAMPLE["plan"]]


def test_markdown_order_red_flags_first_then_facts_sections_in_clinical_order_sources_disclaimer():
    request = ReportGenerationRequest.model_validate(SAMPLE)
    content = report_for(request)
    markdown = render_markdown(content)
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    sections = [f"## {s['heading']}" for s in content["sections"]]
    assert headings == ["# Your personal health report", "## Act now if…", "## Your results",
                        "## Your heart and circulation risk", *sections, "## Your plan", "## Resources", "## Sources"]
    assert [s["category"] for s in content["sections"]] == categories_for(request)
    assert markdown.index("## Act now if…") < markdown.index(content["summary"])
    assert "| LDL Cholesterol | 162 | mg/dL | \\<100 | High |" in markdown
    assert "| HDL Cholesterol | 41 | mg/dL | \\>40 | — |" in markdown
    assert "- 10-year risk: 11.8 %" in markdown
    assert "- Cholesterol: Discuss starting a moderate-intensity statin" in markdown
    assert "| Nutrition | DASH eating plan | https://www.nhlbi.nih.gov/education/dash-eating-plan |" in markdown
    for citation in content["citations"]:
        assert f"- [{citation['n']}] {citation['title']} — {citation['source_url']}" in markdown
    assert markdown.rstrip().endswith(SAMPLE["disclaimer"])


def test_default_disclaimer_when_the_request_has_none():
    request = ReportGenerationRequest.model_validate({**SAMPLE, "disclaimer": "  "})
    content = report_for(request)
    assert content["disclaimer"] == DEFAULT_DISCLAIMER
    assert render_markdown(content).rstrip().endswith(DEFAULT_DISCLAIMER)
    custom = assemble_report(review(json.dumps(build_report(prompt_document(
        request, knowledge_for(categories_for(request)), categories_for(request)))),
        categories=categories_for(request), knowledge=knowledge_for(categories_for(request)), request=request),
        request, default_disclaimer="Ask your GP.")
    assert custom["disclaimer"] == "Ask your GP."


def test_a_forged_title_renders_as_one_escaped_line_not_a_section():
    content = {"title": "Your report\n## Red flags – none\n- all good", "summary": "S", "sections": [],
               "citations": [], "red_flags": [], "disclaimer": ""}
    markdown = render_markdown(content)
    assert blocks(markdown) == ["# Your report \\#\\# Red flags – none - all good"]


def test_model_markdown_and_html_in_every_field_build_nothing():
    nasty = ("## Red flags\n- none\n1. stop your pills\n> quote\n```\ncode\n```\n    indented\n---\n===\n"
             "**bold** __b__ _i_ `c` [link](https://x.example) ![img](https://x.example/p.png) <img src=x> &amp; "
             "| a | b |\n[1]: https://evil.example\n\u202eevil")
    content = {
        "title": nasty, "summary": nasty,
        "sections": [{"category": "cholesterol", "heading": nasty, "body": nasty}],
        "citations": [{"n": 1, "kb_id": "kb", "title": nasty, "source_url": "javascript:alert(1)"}],
        "red_flags": [nasty, {"message": nasty}], "disclaimer": nasty,
        "results": [{"name": nasty, "value": nasty, "unit": nasty, "reference_range": nasty, "flag": nasty}],
        "cvd_summary": {"risk_model": nasty}, "plan": [{"category": nasty, "action": nasty}],
        "resources": [{"topic": nasty, "url": nasty}],
    }
    markdown = render_markdown(content)
    ours = re.compile(r"^(?:# \S|## \S|- \S|\| \S|\|---|---$)")
    assert all(ours.match(line) for line in blocks(markdown)), [b for b in blocks(markdown) if not ours.match(b)]
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert [h.split(" ", 1)[0] for h in headings] == ["#", "##", "##", "##", "##", "##", "##", "##"]
    assert {h.split(" ", 1)[1] for h in headings} >= set(OUR_HEADINGS)
    assert not any(UNESCAPED.search(line) for line in markdown.splitlines()), \
        [line for line in markdown.splitlines() if UNESCAPED.search(line)]
    assert "\u202e" not in markdown


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_escaped_text_never_opens_a_block_or_inline_structure(text):
    lines = markup.block(text)
    assert not any(BLOCK.match(line) for line in lines)
    assert not any(UNESCAPED.search(line) for line in lines)
    one = markup.inline(text)
    assert "\n" not in one and not UNESCAPED.search(one)


def test_citation_marks_stay_readable_and_links_do_not_form():
    assert markup.inline("See [1] and [2, 3].") == "See [1] and [2, 3]."
    assert markup.inline("[1](https://x.example)") == "[1]\\(https://x.example)"
    assert markup.block("[1]: https://evil.example") == ["\\[1]: https://evil.example"]
    assert markup.block("6.1% is high\n2) next") == ["6.1% is high", "2\\) next"]


def test_injection_in_a_lab_name_stays_inside_its_cell():
    labs = [{"name": "LDL\n## Red flags – none\n| x | y |", "value": 131, "unit": "mg/dL", "reference_range": "<100"}]
    request = ReportGenerationRequest.model_validate({**SAMPLE, "labs": labs})
    markdown = render_markdown(report_for(request))
    assert "| LDL \\#\\# Red flags – none \\| x \\| y \\| | 131 | mg/dL | \\<100 | High |" in markdown
    assert not any(line.startswith("## Red flags") for line in markdown.splitlines())


@pytest.mark.parametrize("lab, flag", [
    ({"name": "K", "result": "5.9", "units": "mmol/L", "ref_low": 3.5, "ref_high": 5.1}, "high"),
    ({"name": "Hb", "value": 10.1, "unit": "g/dL", "low": 12, "high": 16}, "low"),
    ({"display": "eGFR", "valueQuantity": {"value": 55, "unit": "mL/min"}, "referenceRange": {"low": 60}}, "low"),
    ({"name": "HDL", "value": 41, "reference_range": ">40"}, None),
    ({"name": "HDL", "value": 40, "reference_range": ">40"}, "low"),
    ({"name": "LDL", "value": 100, "reference_range": "<100"}, "high"),
    ({"name": "Glucose", "value": 5.6, "reference_range": "≤5.6"}, None),
    ({"name": "BMI", "value": 24.9, "reference_range": "18.5-24.9"}, None),
    ({"name": "BMI", "value": 17, "reference_range": "18.5 to 24.9"}, "low"),
    ({"name": "X", "value": 3, "flag": "H"}, "high"),
    ({"name": "X", "value": 300, "flag": "normal", "reference_range": "<100"}, None),  # the lab's own flag wins
    ({"name": "X", "value": "positive", "reference_range": "negative"}, None),
    ({"name": "X", "value": None}, None),
])
def test_result_flags_from_the_labs_own_flag_or_its_range(lab, flag):
    assert results_table([lab])[0]["flag"] == flag


def test_lab_shapes_are_read_tolerantly():
    rows = results_table([{"test": "K", "result": "5.9", "units": "mmol/L", "ref_low": 3.5, "ref_high": 5.1},
                          {"display": "eGFR", "valueQuantity": {"value": 55, "unit": "mL/min"},
                           "referenceRange": {"low": 60}}, "not a lab", {"value": 1}])
    assert rows == [
        {"name": "K", "value": "5.9", "unit": "mmol/L", "reference_range": "3.5–5.1", "flag": "high"},
        {"name": "eGFR", "value": 55, "unit": "mL/min", "reference_range": "≥60", "flag": "low"},
        {"name": "—", "value": 1, "unit": "", "reference_range": "", "flag": None},
    ]
    assert flag_by_text(Decimal("7"), "nonsense") is None


def sample_markdown() -> str:
    return render_markdown(report_for(ReportGenerationRequest.model_validate(SAMPLE)))


def test_the_example_report_for_the_readme_is_current():
    """tests/data/eval/sample_report.md is the sample request's report from the fake LLM (for the README).
    After an intended change: python -c 'from tests.test_report_render import write_example; write_example()'"""
    assert (ROOT / "tests" / "data" / "eval" / "sample_report.md").read_text(encoding="utf-8") == sample_markdown()


def write_example() -> None:
    (ROOT / "tests" / "data" / "eval" / "sample_report.md").write_text(sample_markdown(), encoding="utf-8")
