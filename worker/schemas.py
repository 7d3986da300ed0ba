"""The contract with the backend: request and response messages, as pydantic models."""

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from worker.categories import UnknownCategory, requested_categories
from worker.errors import CODES

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
ErrorCode = Literal[tuple(CODES)]  # type: ignore[valid-type]


def _id_text(value: Any) -> Any:
    """Ids may be strings or integers (a SQL primary key); they are stored and answered as strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_id_text), Field(pattern=ID_PATTERN)]


class ReportGenerationRequest(BaseModel):
    """What the backend publishes; unknown extra fields are tolerated, wrong types are not.

    `null` in an optional field means the same as leaving the field out."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    request_id: Id
    user_id: Id
    patient: dict[str, Any] = Field(default_factory=dict)
    labs: list[dict[str, Any]] = Field(default_factory=list)
    cvd_summary: dict[str, Any] = Field(default_factory=dict)
    assessment: dict[str, Any] = Field(default_factory=dict)
    plan: list[dict[str, Any] | str] = Field(default_factory=list)
    red_flags: list[dict[str, Any] | str] = Field(default_factory=list)
    resources_table: list[dict[str, Any]] = Field(default_factory=list)
    disclaimer: str = ""
    categories: list[str] | None = None  # the report's sections, chosen by the clinician; else derived from the data

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

    model_config = ConfigDict(extra="forbid")

    request_id: str
    user_id: str
    report_id: str = ""
    status: Literal["success", "failed"]
    error_code: ErrorCode | None = Field(default=None, description="set when status is failed: a stable code")
    retryable: bool | None = Field(default=None, description="failed: may the same request succeed later?")
    error_message: str = ""
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
