"""The facts of a report, taken from the request by our code: results, risk, plan, resources, red flags."""

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from worker.disclosure import DEFAULT_PATIENT_FIELDS, patient_for_llm
from worker.numbers import value_of, values_in

DEFAULT_DISCLAIMER = (
    "This report is for general information only and does not replace advice from your doctor or another "
    "qualified health professional. If you feel unwell or are worried about a symptom, contact a health "
    "professional, or emergency services if it is urgent."
)
NAME_KEYS = ("name", "test", "test_name", "display", "label", "analyte", "code")
VALUE_KEYS = ("value", "result", "value_numeric", "measurement", "valueQuantity", "value_quantity")
UNIT_KEYS = ("unit", "units", "uom")
RANGE_KEYS = ("reference_range", "ref_range", "referenceRange", "normal_range", "range", "reference")
LOW_KEYS = ("ref_low", "reference_low", "low", "range_low", "min")
HIGH_KEYS = ("ref_high", "reference_high", "high", "range_high", "max")
FLAG_KEYS = ("flag", "interpretation", "abnormal_flag")
TEXT_KEYS = ("message", "text", "description", "action", "recommendation", "item", "title")
FLAG_WORDS = {"h": "high", "hh": "high", "high": "high", "above": "high", "elevated": "high", "l": "low",
              "ll": "low", "low": "low", "below": "low", "n": "normal", "normal": "normal", "a": "abnormal",
              "abnormal": "abnormal", "critical": "critical", "critical high": "high", "critical low": "low"}
BOUND = re.compile(r"(<=?|>=?)\s*([\d.,]+)\s*\S*")
SPAN = re.compile(r"([\d.,]+)\s*(?:-|–|—|to)\s*([\d.,]+)\s*\S*")
DIGITS = re.compile(r"\d[\d.,]*")
PERCENT_SUFFIX = re.compile(r"_?percent$")
CVD_LABELS = {"risk_model": "Risk model", "ten_year_risk_percent": "10-year risk", "risk_category": "Risk category",
              "main_drivers": "Main drivers", "ten_year_risk": "10-year risk", "lifetime_risk_percent": "Lifetime risk"}


def text_of(item: Mapping[str, Any] | str | Any, keys: Sequence[str] = TEXT_KEYS) -> str:
    """An item as one line: the string itself, or the dict's first text field, else its compact JSON."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        for key in keys:
            if isinstance(item.get(key), str) and item[key].strip():
                return item[key]
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def first(lab: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = lab.get(key)
        if value is not None and value != "":
            return value
    return None


def results_table(labs: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per lab: name, value, unit, reference range and flag ("high"/"low"/… or None when in range)."""
    rows = []
    for lab in labs:
        if not isinstance(lab, Mapping):
            continue
        value, unit = first(lab, VALUE_KEYS), first(lab, UNIT_KEYS)
        if isinstance(value, Mapping):  # {"value": 162, "unit": "mg/dL"} (FHIR valueQuantity)
            value, unit = value.get("value"), unit or value.get("unit")
        low, high = first(lab, LOW_KEYS), first(lab, HIGH_KEYS)
        reference = first(lab, RANGE_KEYS)
        if isinstance(reference, Mapping):
            low, high, reference = reference.get("low", low), reference.get("high", high), None
        if reference is None and low is not None and high is not None:
            reference = f"{low}–{high}"
        elif reference is None and (low is not None or high is not None):
            reference = f"≥{low}" if low is not None else f"≤{high}"
        rows.append({
            "name": str(first(lab, NAME_KEYS) or "—"),
            "value": value,
            "unit": "" if unit is None else str(unit),
            "reference_range": "" if reference is None else str(reference),
            "flag": flag_of(lab, value, low, high, reference),
        })
    return rows


def flag_of(lab: Mapping[str, Any], value: Any, low: Any, high: Any, reference: Any) -> str | None:
    """The lab's own flag if it has one, else high/low against its range; None when in range or unknown."""
    given = first(lab, FLAG_KEYS)
    word = FLAG_WORDS.get(given.strip().lower()) if isinstance(given, str) else None
    if word:
        return None if word == "normal" else word
    number = number_of(value)
    if number is None:
        return None
    low_n, high_n = number_of(low), number_of(high)
    if low_n is None and high_n is None and isinstance(reference, str):
        return flag_by_text(number, reference)
    if low_n is not None and number < low_n:
        return "low"
    if high_n is not None and number > high_n:
        return "high"
    return None


def flag_by_text(number: Decimal, reference: str) -> str | None:
    """High/low against a written range: "<100", "≤5.6", ">40", "18.5-24.9", "3.5 to 5.0"."""
    text = reference.strip().replace("≤", "<=").replace("≥", ">=")
    bound = BOUND.fullmatch(text)
    if bound:
        limit = number_of(bound.group(2))
        if limit is None:
            return None
        op = bound.group(1)
        if op == "<" and number >= limit or op == "<=" and number > limit:
            return "high"
        if op == ">" and number <= limit or op == ">=" and number < limit:
            return "low"
        return None
    span = SPAN.fullmatch(text)
    if span:
        low, high = number_of(span.group(1)), number_of(span.group(2))
        if low is not None and number < low:
            return "low"
        if high is not None and number > high:
            return "high"
    return None


def number_of(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    if isinstance(value, str):
        parsed = value_of(value.strip()) if DIGITS.fullmatch(value.strip()) else None
        return parsed[0] if parsed else None
    return None


def cvd_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The CVD risk summary as (label, value) rows; a *_percent value is shown with a % sign."""
    rows = []
    for key, value in summary.items():
        if value is None or value == "" or value == []:
            continue
        label = CVD_LABELS.get(key) or PERCENT_SUFFIX.sub("", str(key)).replace("_", " ").strip().capitalize()
        if isinstance(value, (list, tuple)):
            shown = ", ".join(text_of(item) for item in value)
        elif isinstance(value, Mapping):
            shown = text_of(value)
        else:
            shown = str(value)
        if str(key).endswith("percent") and isinstance(value, (int, float)):
            shown += " %"
        rows.append((label, shown))
    return rows


def plan_items(plan: Iterable[Any]) -> list[dict[str, Any]]:
    """The plan as {"category", "action"} items, in the clinician's order."""
    items = []
    for item in plan:
        category = item.get("category") if isinstance(item, Mapping) else None
        items.append({"category": category if isinstance(category, str) else None, "action": text_of(item)})
    return items


def resource_rows(resources: Iterable[Any]) -> tuple[list[str], list[dict[str, str]]]:
    """The resources table: its columns (keys in order of first use) and rows of text cells."""
    columns: list[str] = []
    rows = []
    for resource in resources:
        if not isinstance(resource, Mapping):
            continue
        for key in resource:
            if str(key) not in columns:
                columns.append(str(key))
        rows.append({str(key): "" if value is None else value if isinstance(value, str) else text_of(value)
                     for key, value in resource.items()})
    return columns, rows


def disclaimer_for(request: Any, default: str = DEFAULT_DISCLAIMER) -> str:
    """The request's disclaimer, or the configured default (REPORT_DISCLAIMER) when it has none."""
    given = getattr(request, "disclaimer", "") or ""
    return given.strip() or default


def known_values(request: Any, patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS) -> set[Decimal]:
    """Every number of the clinical input the model is shown: the numbers its prose may state."""
    shown = [patient_for_llm(request.patient, patient_fields), request.labs, request.cvd_summary,
             request.assessment, request.plan, request.red_flags]
    return values_in(shown)


def facts_of(request: Any, default_disclaimer: str = DEFAULT_DISCLAIMER) -> dict[str, Any]:
    """The parts of the stored report that come from the request, never from the model."""
    return {
        "red_flags": list(request.red_flags),
        "results": results_table(request.labs),
        "cvd_summary": dict(request.cvd_summary),
        "plan": plan_items(request.plan),
        "resources": [dict(resource) for resource in request.resources_table if isinstance(resource, Mapping)],
        "disclaimer": disclaimer_for(request, default_disclaimer),
    }


def clinical_input(request: Any, document: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request as stored for the audit trail (the seed's full MedicalReport): everything but its request_id.
    `document` is the request's `model_dump(mode="json")` when the caller has made it already."""
    dumped = request.model_dump(mode="json") if document is None else document
    return {key: value for key, value in dumped.items() if key != "request_id"}


def input_digest(request: Any, clinical: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of the canonical JSON of `clinical_input` (sorted keys, no spaces, UTF-8); `clinical` is that
    input when the caller has it already."""
    clinical = clinical_input(request) if clinical is None else clinical
    canonical = json.dumps(clinical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
