"""The report the LLM must answer: its shape, the checks on its citations, and its Markdown rendering."""

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def red_flag_text(flag: Mapping[str, Any] | str) -> str:
    """A red flag as one line of text: the string itself, or the dict's message, else its compact JSON."""
    if isinstance(flag, str):
        return flag
    for key in ("message", "text", "description"):
        if isinstance(flag.get(key), str) and flag[key]:
            return flag[key]
    return json.dumps(flag, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def render_markdown(
    content: Mapping[str, Any], citations_resolved: Sequence[Mapping], request: ReportGenerationRequest
) -> str:
    """The report as Markdown; red flags and disclaimer come verbatim from the request, sources from our KB."""
    lines = [f"# {content['title']}", "", content["summary"], ""]
    for section in content["sections"]:
        lines += [f"## {section['heading']}", "", section["body"], ""]
    if request.red_flags:
        lines += ["## Red flags", ""]
        lines += [f"- {red_flag_text(flag)}" for flag in request.red_flags]
        lines.append("")
    if citations_resolved:
        lines += ["## Sources", ""]
        lines += [f"- [{c['n']}] {c['title']} — {c['source_url']}" for c in citations_resolved]
        lines.append("")
    if request.disclaimer:
        lines += ["---", "", request.disclaimer, ""]
    return "\n".join(lines)
