"""The contract as JSON Schema: the request, the response and the stored report document (`medical_reports`).

`StoredReport` models what `pipeline.report_document` writes and `report.assemble_report` produces; tests validate
real stored documents against it, so the committed schemas in docs/schemas/ cannot drift from what is stored.
"""

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema

from worker.categories import CLINICAL_ORDER
from worker.schemas import ReportGenerationRequest, ReportGenerationResponse

DIALECT = "https://json-schema.org/draft/2020-12/schema"
Category = Literal[CLINICAL_ORDER]  # type: ignore[valid-type]
Item = dict[str, Any] | str
_STORED = ConfigDict(extra="forbid", strict=True)


class Section(BaseModel):
    model_config = _STORED

    category: Category
    heading: str = Field(description="one line, written by the model")
    body: str = Field(description="plain text written by the model, with citations as [n]")


class Citation(BaseModel):
    model_config = _STORED

    n: int = Field(ge=1, description="the number the text cites as [n]")
    kb_id: str = Field(description="the knowledge-base entry's id")
    title: str = Field(description="the entry's title, from the knowledge base")
    source_url: str = Field(description="the entry's source_url, from the knowledge base (never from the model)")


class ResultRow(BaseModel):
    model_config = _STORED

    name: str = Field(description="the lab's name (or '—')")
    value: Any = Field(description="the lab's value as sent")
    unit: str
    reference_range: str = Field(description="as sent, or built from ref_low/ref_high; empty when unknown")
    flag: Literal["high", "low", "abnormal", "critical"] | None = Field(
        description="the lab's own flag, else high/low against its range; null when in range or unknown")


class PlanItem(BaseModel):
    model_config = _STORED

    category: str | None = Field(description="the plan item's category as sent, if it had one")
    action: str = Field(description="the plan item as one line of text")


class ReportContent(BaseModel):
    """The report: the model's checked prose and citations, and the facts our code takes from the request."""

    model_config = _STORED

    title: str = Field(description="one line, written by the model")
    summary: str = Field(description="written by the model")
    sections: list[Section] = Field(description="one per category of report_data.categories, in that order")
    citations: list[Citation] = Field(description="the knowledge entries the text cites, by number")
    red_flags: list[Item] = Field(description="the request's red_flags, as sent")
    results: list[ResultRow] = Field(description="one row per lab of the request")
    cvd_summary: dict[str, Any] = Field(description="the request's cvd_summary, as sent")
    plan: list[PlanItem] = Field(description="the request's plan, in its order")
    resources: list[dict[str, Any]] = Field(description="the request's resources_table rows")
    disclaimer: str = Field(description="the request's disclaimer, else REPORT_DISCLAIMER or the built-in one")


class ClinicalInput(BaseModel):
    """The validated request without its request_id: ids as strings, nulls as empty values, categories normalized."""

    model_config = _STORED

    user_id: str
    patient: dict[str, Any]
    labs: list[dict[str, Any]]
    cvd_summary: dict[str, Any]
    assessment: dict[str, Any]
    plan: list[Item]
    red_flags: list[Item]
    resources_table: list[dict[str, Any]]
    disclaimer: str
    categories: list[Category] | None = Field(description="the request's own categories, in clinical order")


class KnowledgeRecord(BaseModel):
    model_config = _STORED

    n: int = Field(ge=1, description="the entry's number in the prompt")
    id: str
    last_updated: Any = Field(description="the entry's last_updated as the knowledge base has it (e.g. '2026-01-15')")


class Audit(BaseModel):
    """How the report was made: prompt, model parameters, calls, knowledge shown, and what the gate found."""

    model_config = _STORED

    prompt_version: str
    model: str = Field(description="the configured model (OPENAI_MODEL)")
    structured_output: Literal["json_schema", "json_object"]
    temperature: float
    max_tokens: int
    finish_reason: str | None = Field(description="of the accepted answer")
    llm_calls: int = Field(ge=1, le=2, description="2 when the first answer was refused at the gate and repaired")
    repairs: int = Field(ge=0, le=1)
    usage_missing: bool = Field(description="a call came back without token usage (tokens_used is then null)")
    knowledge: list[KnowledgeRecord] = Field(description="every entry the prompt showed, numbered as shown")
    unverified_numbers: list[str] = Field(description="numbers without a clinical unit the input does not hold")
    dropped_citations: list[int] = Field(description="citations the model listed but did not use")
    verified_numbers: int = Field(description="numbers with a clinical unit found in the input or a cited entry")


class ReportData(BaseModel):
    model_config = _STORED

    input: ClinicalInput = Field(description="the request's clinical input the report was checked against")
    content: ReportContent
    categories: list[Category] = Field(description="the report's sections, in clinical order")
    knowledge_ids: list[str] = Field(description="the ids of the knowledge entries shown to the model")
    input_changed: bool | None = Field(description="whether the user's input differs from their previous request "
                                                   "in Redis; null when unknown")
    input_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    audit: Audit


class StoredReport(BaseModel):
    """A document of MongoDB's `medical_reports` (read without `_id`), and the JSON of Redis's `report:{report_id}`."""

    model_config = _STORED

    report_id: str = Field(description="a UUID; the response's report_id")
    request_id: str = Field(description="unique: one report per request_id")
    status: Literal["done"] = Field(description="a stored report is done; while a report is "
                                    "being generated its request_id holds a claim stub (status generating, "
                                    "no content), see docs/INTEGRATION.md")
    user_id: str
    input_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the canonical JSON of "
                              "report_data.input (sorted keys, no spaces, UTF-8)")
    report_data: ReportData
    json_content: ReportContent = Field(description="the same report as report_data.content")
    markdown_content: str = Field(description="the report rendered as Markdown")
    created_at: datetime = Field(description="a BSON date in MongoDB (UTC); text in the Redis value")
    generation_time_seconds: float = Field(description="time spent in LLM calls")
    tokens_used: int | None = Field(description="prompt + completion tokens of every call; null when not reported")
    estimated_cost: float | None = Field(description="USD; null for a model without a price or without usage")
    model: str = Field(description="the model that answered, as the LLM API named it")
    processed_by: str = Field(description="host:pid of the worker process")


MODELS: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
    "request": (ReportGenerationRequest, "validation"),     # what we accept
    "response": (ReportGenerationResponse, "serialization"),  # what we publish
    "report": (StoredReport, "validation"),                 # what we store
}


class _Generator(GenerateJsonSchema):
    """pydantic's draft 2020-12 generator, without a title on every field."""

    def field_title_should_be_set(self, schema) -> bool:
        return False


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of `name` (request, response or report)."""
    model, mode = MODELS[name]
    generated = model.model_json_schema(mode=mode, schema_generator=_Generator)
    if model is ReportGenerationRequest:
        _allow_null_for_optional(generated, model)
    return {"$schema": DIALECT, **generated}


def schema_text(name: str) -> str:
    """The schema as committed under docs/schemas/<name>.json."""
    return json.dumps(schema(name), indent=2, ensure_ascii=False) + "\n"


def _allow_null_for_optional(generated: dict[str, Any], model: type[BaseModel]) -> None:
    """The request treats `null` in an optional field as absent: say so in its schema."""
    for name, field in model.model_fields.items():
        prop = generated["properties"][name]
        if field.is_required() or {"type": "null"} in prop.get("anyOf", []):
            continue
        kept = {key: prop.pop(key) for key in ("description", "default") if key in prop}
        generated["properties"][name] = {"anyOf": [prop, {"type": "null"}], **kept}
