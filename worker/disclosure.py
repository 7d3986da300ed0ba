"""What of the patient record may go to the LLM: an allow-list of clinical fields, identifiers never."""

import re
from collections.abc import Iterable, Mapping
from datetime import date
from functools import lru_cache
from typing import Any

# The default of LLM_PATIENT_FIELDS: what a health educator needs to address this person, nothing that
# names or locates them. Race and ethnicity are left out by default (the risk score is already computed).
DEFAULT_PATIENT_FIELDS = (
    "age", "sex", "gender", "smoker", "smoking_status", "diabetes", "pregnant",
    "bmi", "weight_kg", "weight_lb", "weight", "height_cm", "height", "waist_cm",
    "systolic_bp", "diastolic_bp", "blood_pressure", "heart_rate",
    "medications", "conditions", "diagnoses", "allergies", "family_history", "risk_factors",
)
# Never sent, whatever LLM_PATIENT_FIELDS says; also dropped inside the allowed fields' values.
IDENTIFYING = re.compile(
    r"(?:^|_)(?:id|ids|uuid|guid|name|names|first_name|last_name|full_name|given_name|family_name|surname|"
    r"initials|dob|date_of_birth|birth_date|birthdate|birthday|mrn|medical_record(?:_number)?|record(?:_number)?|"
    r"ssn|social_security(?:_number)?|nhs_number|insurance(?:_number|_id)?|policy(?:_number)?|member_id|"
    r"address|street|city|zip|zip_code|postcode|postal_code|phone|phone_number|telephone|mobile|fax|email|"
    r"e_mail|contact|emergency_contact|prescriber|physician|doctor|provider|clinician|npi|ip_address|"
    r"account|license|passport|photo|url)(?:_|$)"
)
CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
NOT_ALNUM = re.compile(r"[^a-z0-9]+")
AGE_CAP = 90  # ages above 89 are reported as "90 or older" (HIPAA Safe Harbor)
BIRTH_KEYS = ("date_of_birth", "dob", "birth_date", "birthdate")


class DisallowedField(ValueError):
    """LLM_PATIENT_FIELDS names a field that identifies the patient."""


@lru_cache(maxsize=4096)  # field names, not values: the same few on every request
def key_of(name: str) -> str:
    """A field name as a snake_case key: "heightCm" → "height_cm", "Weight (kg)" → "weight_kg"."""
    spaced = CAMEL.sub("_", name.strip())
    return NOT_ALNUM.sub("_", spaced.lower()).strip("_")


@lru_cache(maxsize=4096)
def identifying(name: str, nested: bool = False) -> bool:
    """Whether a field name identifies a person; inside a clinical list "name" names a drug or diagnosis."""
    key = key_of(name)
    return not (nested and key == "name") and bool(IDENTIFYING.search(key))


def parse_fields(text: str) -> tuple[str, ...]:
    """LLM_PATIENT_FIELDS ("age,sex,bmi"; empty: the default) as keys; raises on an identifying field."""
    fields = tuple(dict.fromkeys(key_of(part) for part in text.split(",") if part.strip()))
    bad = [field for field in fields if identifying(field)]
    if bad:
        raise DisallowedField(f"LLM_PATIENT_FIELDS may not name identifying fields: {', '.join(bad)}")
    return fields or DEFAULT_PATIENT_FIELDS


def patient_for_llm(
    patient: Mapping[str, Any], fields: Iterable[str] = DEFAULT_PATIENT_FIELDS, today: date | None = None
) -> dict[str, Any]:
    """The allowed fields of `patient`, identifiers removed even inside them; age derived from a birth date."""
    allowed = allowed_keys(tuple(fields))
    shared = {}
    for name, value in patient.items():
        key = key_of(str(name))
        if key in allowed and value is not None:
            shared[key] = without_identifiers(value)
    if "age" in allowed:
        age = shared.get("age")
        if age is None:
            age = age_from_birth(patient, today or date.today())
        if age is not None:
            shared["age"] = capped_age(age)
        else:
            shared.pop("age", None)
    return shared


@lru_cache(maxsize=64)
def allowed_keys(fields: tuple[str, ...]) -> frozenset[str]:
    """The keys of the allowed fields (identifying ones never), once per setting."""
    return frozenset(key_of(field) for field in fields if not identifying(field))


def without_identifiers(value: Any) -> Any:
    """A JSON-like value with every identifying key removed at any depth."""
    if isinstance(value, Mapping):
        return {k: without_identifiers(v) for k, v in value.items() if not identifying(str(k), nested=True)}
    if isinstance(value, list):
        return [without_identifiers(item) for item in value]
    return value


def age_from_birth(patient: Mapping[str, Any], today: date) -> int | None:
    """Whole years since a birth date given as YYYY-MM-DD under one of the usual keys; None otherwise."""
    for name, value in patient.items():
        if key_of(str(name)) in BIRTH_KEYS and isinstance(value, str):
            try:
                born = date.fromisoformat(value.strip()[:10])
            except ValueError:
                continue
            years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
            return years if 0 <= years < 150 else None
    return None


def capped_age(age: Any) -> Any:
    """An age of 90 or more as the text "90 or older"; other ages (or non-numbers) unchanged."""
    if isinstance(age, (int, float)) and not isinstance(age, bool) and age >= AGE_CAP:
        return f"{AGE_CAP} or older"
    return age
