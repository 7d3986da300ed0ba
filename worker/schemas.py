"""The contract with the backend: request and response messages, as pydantic models."""

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from worker.categories import UnknownCategory, requested_categories
from worker.errors import CODES

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
ErrorCode = Literal[tuple(CODES)]  # type: ignore[valid-type]


def _id_text(value: Any) -> Any:
    """Ids may be strings or integers (a SQL primary key); they are stored and answered as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_text), Field(pattern=ID_PATTERN), WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": ID_PATTERN},
    {"type": "integer", "minimum": 0, "description": "at most 128 digits; answered and stored as its decimal string"},
]})]


class ReportGenerationRequest(BaseModel):
    """What the backend publishes; unknown extra fields are tolerated, wrong types are not.

    `null` in an optional field means the same as leaving the field out."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    request_id: Id = Field(description="the backend's id of this request; one report per request_id, for one user "
                                   "and one input")
    user_id: Id = Field(description="the patient's user id in the backend")
    patient: dict[str, Any] = Field(default_factory=dict, description="age, sex and clinical fields (smoker, "
                                    "height_cm, weight_kg, conditions, ...); only an allow-list reaches the LLM")
    labs: list[dict[str, Any]] = Field(default_factory=list, description="lab results: name, value, unit, "
                                       "reference_range (or ref_low/ref_high), flag, category")
    cvd_summary: dict[str, Any] = Field(default_factory=dict, description="cardiovascular risk: risk_model, "
                                        "ten_year_risk_percent, risk_category, main_drivers")
    assessment: dict[str, Any] = Field(default_factory=dict, description="the clinician's assessment: summary, "
                                       "conditions")
    plan: list[dict[str, Any] | str] = Field(default_factory=list, description="plan items, as text or "
                                             "{category, action}; printed in this order")
    red_flags: list[dict[str, Any] | str] = Field(default_factory=list, description="warning signs, as text or "
                                                  "{code, message}; printed first, word for word")
    resources_table: list[dict[str, Any]] = Field(default_factory=list, description="rows of a resources table "
                                                  "(e.g. topic, resource, url)")
    disclaimer: str = Field(default="", description="the report's disclaimer; empty: the worker's default")
    categories: list[str] | None = Field(  # the report's sections, chosen by the clinician; else derived from the data
        default=None, description="the report's sections, when the clinician chooses them (non-empty; known names or "
        "aliases, any case); absent: derived from the data")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str] | None) -> list[str] | None:
        try:
            return requested_categories(value)
        except UnknownCategory as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            optional = {name for name, f in cls.model_fields.items() if not f.is_required()}
            return {key: value for key, value in data.items() if not (value is None and key in optional)}
        return data


class ReportGenerationResponse(BaseModel):
    """What we publish back, one per request attempt that ends."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    request_id: str = Field(description="the request's request_id, as a string")
    user_id: str = Field(description="the request's user_id as a string; empty when a failed request's could not "
                                     "be read")
    report_id: str = Field(default="", description="success: the stored report's id (MongoDB medical_reports, Redis "
                                                   "report:{report_id}); failed: empty")
    status: Literal["success", "failed"]
    error_code: ErrorCode | None = Field(default=None, description="set when status is failed: a stable code")
    retryable: bool | None = Field(default=None, description="failed: may the same request succeed later?")
    error_message: str = Field(default="", description="failed: what went wrong, for people; never a patient value")
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc),
                                description="when the worker answered (UTC)")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
