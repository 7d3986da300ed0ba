"""The report the LLM must answer (its shape), the stored report we assemble, and its Markdown rendering."""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker import markup
from worker.categories import LABELS
from worker.facts import DEFAULT_DISCLAIMER, cvd_rows, facts_of, resource_rows, text_of
from worker.schemas import ReportGenerationRequest


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


def describe(exc: ValidationError) -> str:
    """Summarise a pydantic error by field and reason, leaving out the offending values."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'root'}: {err['msg']}" for err in exc.errors()]
    return "; ".join(parts[:10])


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


def render_markdown(content: Mapping[str, Any]) -> str:
    """The stored report as Markdown. Only this code writes structure: every text from the model or the request
    is escaped (one plain line for titles, headings and cells; plain paragraphs for bodies)."""
    citations = content.get("citations") or []
    disclaimer = content.get("disclaimer") or ""
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
