"""The report the LLM must answer (its shape), the stored report we assemble, and its Markdown rendering."""

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker import markup
from worker.categories import LABELS
from worker.facts import DEFAULT_DISCLAIMER, cvd_rows, facts_of, resource_rows, text_of
from worker.schemas import ReportGenerationRequest

CITATION_MARK = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


class MalformedReport(ValueError):
    """The LLM's answer is not a usable report; the message says why, without echoing the answer."""


class Section(BaseModel):
    model_config = ConfigDict(extra="ignore")

    category: str
    heading: str = Field(min_length=1)
    body: str = Field(min_length=1)


class Citation(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a "url" from the model is dropped here, never trusted

    n: int = Field(ge=1)
    kb_id: str = Field(min_length=1)


class ReportContent(BaseModel):
    """The one JSON object the LLM answers with."""

    model_config = ConfigDict(extra="ignore")

    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    sections: list[Section] = Field(min_length=1)
    citations: list[Citation] = Field(default_factory=list)


REPORT_SHAPE = {
    "title": "string",
    "summary": "string, may cite as [n]",
    "sections": [{"category": "string", "heading": "string", "body": "string, cites as [n]"}],
    "citations": [{"n": "integer, the knowledge entry number", "kb_id": "string, that entry's id"}],
}


def parse_report(answer: str | None, knowledge: Sequence[Mapping]) -> tuple[ReportContent, list[dict]]:
    """Validate the LLM's raw answer; return the report and its citations resolved against `knowledge`."""
    if not answer:
        raise MalformedReport("the answer is empty")
    try:
        data = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise MalformedReport(f"the answer is not valid JSON: {exc.msg} at position {exc.pos}") from None
    try:
        content = ReportContent.model_validate(data)
    except ValidationError as exc:
        raise MalformedReport(f"the JSON does not match the required shape: {describe(exc)}") from None
    return content, resolve_citations(content, knowledge)


def describe(exc: ValidationError) -> str:
    """Summarise a pydantic error by field and reason, leaving out the offending values."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'root'}: {err['msg']}" for err in exc.errors()]
    return "; ".join(parts[:10])


def resolve_citations(content: ReportContent, knowledge: Sequence[Mapping]) -> list[dict]:
    """Check every [n] is cited and every citation names a given entry; return n, kb_id, title, source_url."""
    by_id = {str(entry["id"]): entry for entry in knowledge}
    numbers = [citation.n for citation in content.citations]
    if len(numbers) != len(set(numbers)):
        raise MalformedReport("citations repeat a number n")
    unknown = sorted({c.kb_id for c in content.citations if c.kb_id not in by_id})
    if unknown:
        raise MalformedReport(f"citations name kb_id values that are not in the knowledge list: {unknown}")
    missing = sorted(used_numbers(content) - set(numbers))
    if missing:
        raise MalformedReport(f"the text uses citation numbers {missing} that are not in citations")
    return [
        {
            "n": c.n,
            "kb_id": c.kb_id,
            "title": str(by_id[c.kb_id].get("title", "")),
            "source_url": str(by_id[c.kb_id].get("source_url", "")),
        }
        for c in sorted(content.citations, key=lambda c: c.n)
    ]


def used_numbers(content: ReportContent) -> set[int]:
    """Every citation number written as [n] or [n, m] in the summary and section bodies."""
    texts = [content.summary, *(section.body for section in content.sections)]
    return {int(n) for text in texts for mark in CITATION_MARK.findall(text) for n in mark.split(",")}


def assemble_content(content: ReportContent, citations: list[dict], request: ReportGenerationRequest) -> dict:
    """The stored report: the model's prose, our resolved citations, the request's red flags and disclaimer."""
    return {
        "title": content.title,
        "summary": content.summary,
        "sections": [section.model_dump() for section in content.sections],
        "citations": citations,
        "red_flags": list(request.red_flags),
        "disclaimer": request.disclaimer,
    }


def assemble_report(verdict: Any, request: ReportGenerationRequest,
                    default_disclaimer: str = DEFAULT_DISCLAIMER) -> dict[str, Any]:
    """The stored report: the gate's accepted prose and citations, and the facts our code takes from the request."""
    return {
        "title": verdict.title,
        "summary": verdict.summary,
        "sections": [dict(section) for section in verdict.sections],
        "citations": [dict(citation) for citation in verdict.citations],
        **facts_of(request, default_disclaimer),
    }


def red_flag_text(flag: Mapping[str, Any] | str) -> str:
    """A red flag as one line of text: the string itself, or the dict's message, else its compact JSON."""
    return text_of(flag, ("message", "text", "description"))


def render_markdown(content: Mapping[str, Any], citations_resolved: Sequence[Mapping] | None = None,
                    request: ReportGenerationRequest | None = None) -> str:
    """The stored report as Markdown. Only this code writes structure: every text from the model or the request
    is escaped (one plain line for titles, headings and cells; plain paragraphs for bodies).

    `citations_resolved` and `request` are accepted for the current llm.py: `content` carries both."""
    citations = content.get("citations") or citations_resolved or []
    disclaimer = content.get("disclaimer") or (request.disclaimer if request is not None else "")
    lines = [f"# {markup.inline(content['title'])}", ""]
    if content.get("red_flags"):
        lines += ["## Act now if…", ""]
        lines += [f"- {markup.inline(red_flag_text(flag))}" for flag in content["red_flags"]]
        lines.append("")
    lines += [*markup.block(content["summary"]), ""]
    if content.get("results"):
        lines += ["## Your results", "", "| Test | Result | Unit | Reference range | Flag |", "|---|---|---|---|---|"]
        lines += [f"| {markup.cell(row['name'])} | {markup.cell(row['value'])} | {markup.cell(row['unit'])} | "
                  f"{markup.cell(row['reference_range'])} | {markup.cell((row['flag'] or '').capitalize())} |"
                  for row in content["results"]]
        lines.append("")
    if content.get("cvd_summary"):
        lines += ["## Your heart and circulation risk", ""]
        lines += [f"- {markup.inline(label)}: {markup.inline(value)}"
                  for label, value in cvd_rows(content["cvd_summary"])]
        lines.append("")
    for section in content["sections"]:
        heading = section.get("heading") or LABELS.get(section.get("category"), "")
        lines += [f"## {markup.inline(heading)}", "", *markup.block(section["body"]), ""]
    if content.get("plan"):
        lines += ["## Your plan", ""]
        for item in content["plan"]:
            label = LABELS.get(item.get("category") or "", item.get("category") or "")
            prefix = f"{markup.inline(label)}: " if label else ""
            lines.append(f"- {prefix}{markup.inline(item['action'])}")
        lines.append("")
    if content.get("resources"):
        columns, rows = resource_rows(content["resources"])
        lines += ["## Resources", "", "| " + " | ".join(markup.cell(c.replace("_", " ").capitalize()) for c in columns)
                  + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(resource_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
        lines.append("")
    if citations:
        lines += ["## Sources", ""]
        lines += [f"- [{int(c['n'])}] {markup.inline(c['title'])} — {markup.url(c['source_url'])}" for c in citations]
        lines.append("")
    if disclaimer:
        lines += ["---", "", *markup.block(disclaimer), ""]
    return "\n".join(lines)


def resource_cell(value: str) -> str:
    """A resources-table cell: a plain http(s) URL as written (the clinician's link), other text escaped."""
    return value if markup.SAFE_URL.fullmatch(value.strip()) else markup.cell(value)
