"""The contract with the backend: request and response messages, as pydantic models."""

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.categories import UnknownCategory, requested_categories

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class ReportGenerationRequest(BaseModel):
    """What the backend publishes; unknown extra fields are tolerated, wrong types are not."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    request_id: str = Field(pattern=ID_PATTERN)
    user_id: str = Field(pattern=ID_PATTERN)
    patient: dict[str, Any]
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


class ReportGenerationResponse(BaseModel):
    """What we publish back, one per request attempt that ends."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    user_id: str
    report_id: str = ""
    status: Literal["success", "failed"]
    error_message: str = ""
    timestamp: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
