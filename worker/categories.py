"""The report sections a request needs: asked for explicitly, else found in its data, in clinical order."""

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

# Overall risk first (the frame the clinician explains everything else in), then the measured risk
# factors in the order of a prevention review and a results panel (blood pressure, lipids, glucose),
# then the behaviours, smoking first as the single change that lowers risk most, and general last.
CLINICAL_ORDER = (
    "cardiovascular", "blood_pressure", "cholesterol", "diabetes", "smoking_cessation",
    "weight_management", "nutrition", "physical_activity", "general_health",
)
KNOWN_CATEGORIES = frozenset(CLINICAL_ORDER)
LABELS = {
    "cardiovascular": "Heart and circulation", "blood_pressure": "Blood pressure", "cholesterol": "Cholesterol",
    "diabetes": "Blood sugar and diabetes", "smoking_cessation": "Stopping smoking",
    "weight_management": "Weight", "nutrition": "Eating well", "physical_activity": "Physical activity",
    "general_health": "General health",
}
FALLBACK = "general_health"

ALIASES = {
    "heart": "cardiovascular", "cvd": "cardiovascular", "cardio": "cardiovascular",
    "bp": "blood_pressure", "hypertension": "blood_pressure",
    "lipids": "cholesterol", "lipid": "cholesterol",
    "glucose": "diabetes", "blood_sugar": "diabetes", "prediabetes": "diabetes",
    "smoking": "smoking_cessation", "tobacco": "smoking_cessation",
    "weight": "weight_management", "obesity": "weight_management", "bmi": "weight_management",
    "diet": "nutrition", "exercise": "physical_activity", "activity": "physical_activity",
    "general": "general_health",
}
KEYWORDS = (
    ("cardiovascular", re.compile(r"cardio|\bheart\b|\bcvd\b|ascvd|stroke|chest pain|angina|coronary|myocardial")),
    ("blood_pressure", re.compile(r"blood pressure|\bbp\b|systolic|diastolic|hypertens")),
    ("cholesterol", re.compile(r"\bldl\b|\bhdl\b|cholesterol|triglycerid|lipid|statin")),
    ("diabetes", re.compile(r"hba1c|\ba1c\b|glucose|diabet|insulin|blood sugar")),
    ("smoking_cessation", re.compile(r"smok|tobacco|nicotine|cigar|\bvap")),
    ("weight_management", re.compile(r"\bbmi\b|weight|waist|obes")),
    ("nutrition", re.compile(r"\bdiet|nutrition|sodium|\bsalt\b|\bfood|eating")),
    ("physical_activity", re.compile(r"exercis|physical activity|\bwalk|\bsteps\b|fitness")),
)
# Each pattern's alternatives are plain words (\b aside): a clause holding none of them is not searched.
KEYWORD_WORDS = {category: tuple(word.replace(r"\b", "") for word in pattern.pattern.split("|"))
                 for category, pattern in KEYWORDS}
assert all(re.fullmatch(r"[a-z0-9 ]+", word) for words in KEYWORD_WORDS.values() for word in words)
# Words before a mention that say the patient does not have it (or that it is someone else's):
# "no", "denies", "non-smoker", "never smoked", "former smoker", "family history of diabetes".
NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|denies|denied|denying|without|never|negative for|free of|absence of|"
    r"family history of|mother|father|sibling|brother|sister|parents?)\b"
)
PREFIX_NEGATION = re.compile(r"\b(?:non|ex|never)[\s-]?$")
# A former smoker has quit: the cessation section is for people who smoke (ask for it explicitly otherwise).
PAST_BEFORE = re.compile(r"\b(?:former|ex|previous|previously|past)\b")
# Words after a mention, in the same clause: "diabetes ruled out", "smoking: never", "chest pain: none".
NEGATION_AFTER = re.compile(
    r"^[^:]{0,40}?(?:\bruled out\b|\bexcluded\b|\babsent\b|\bnot present\b)|^[\w -]{0,30}?:\s*(?:no|none|never|"
    r"negative|denied|false|absent|former|ex|quit)\b"
)
# A negation reaches across a list ("no diabetes, hypertension or smoking") but not past these.
SCOPE_END = re.compile(r"\b(?:but|however|although|though|except|yet|apart from|has|have|with|reports|presents)\b")
SEPARATORS = re.compile(r"[\s-]+")
UNDERSCORES = re.compile(r"[_]+")
CLAUSE_END = re.compile(r"[.;!?\n]+")
SCOPE_WORDS = 6
NO_DIABETES = ("", "no", "none", "false", "unknown")
CURRENT_SMOKER = re.compile(r"^(?:yes|true|current|daily|some days|smoker|occasional|everyday)\b")
LAB_NAME_KEYS = ("name", "test", "test_name", "code", "display", "label", "analyte")
# Patient fields read for categories (never the name, notes about identity, or contact details).
PATIENT_TEXT_FIELDS = ("conditions", "diagnoses", "history", "problems", "medications", "risk_factors", "notes")


class UnknownCategory(ValueError):
    """A requested category that is not one the report can have."""


def requested_categories(values: Sequence[Any] | None) -> list[str] | None:
    """A request's own `categories` list, checked and put in clinical order; None when it has none."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise UnknownCategory("categories, when given, must be a non-empty list of category names")
    found = set()
    for value in values:
        category = normalize(value) if isinstance(value, str) else None
        if category not in KNOWN_CATEGORIES:
            raise UnknownCategory(f"unknown category; known ones are {', '.join(CLINICAL_ORDER)}")
        found.add(category)
    return ordered(found)


def categories_for(request: Any) -> list[str]:
    """The sections of a report: the request's `categories` if given, else what its data shows; never empty."""
    explicit = requested_categories(getattr(request, "categories", None))
    if explicit:
        return explicit
    found = set(structured_categories(request.patient))
    for item in request.plan:
        named = normalize(item.get("category")) if isinstance(item, Mapping) else None
        if named in KNOWN_CATEGORIES:
            found.add(named)
        else:
            found |= mentioned(item)
    for lab in request.labs:
        named = normalize(lab.get("category"))
        found |= {named} if named in KNOWN_CATEGORIES else mentioned([lab.get(key) for key in LAB_NAME_KEYS])
    found |= mentioned(request.assessment)
    found |= mentioned({key: request.patient.get(key) for key in PATIENT_TEXT_FIELDS if key in request.patient})
    if request.cvd_summary:
        found.add("cardiovascular")
    return ordered(found)


def ordered(categories: Iterable[str]) -> list[str]:
    """The given categories in clinical order; the general one when there are none."""
    found = set(categories)
    return [category for category in CLINICAL_ORDER if category in found] or [FALLBACK]


def normalize(value: Any) -> str | None:
    """A category name as written by a person ("Blood Pressure", "lipids") as our key, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return normalized(value)


@lru_cache(maxsize=1024)  # category names: the same few on every request
def normalized(value: str) -> str:
    key = SEPARATORS.sub("_", value.strip().lower())
    return ALIASES.get(key, key)


def structured_categories(patient: Mapping[str, Any]) -> set[str]:
    """Categories that structured patient fields call for: a current smoker, diabetes, a BMI out of range, BP."""
    found = set()
    smoker = patient.get("smoker", patient.get("smoking_status"))
    if smoker is True or (isinstance(smoker, str) and CURRENT_SMOKER.match(smoker.strip().lower())):
        found.add("smoking_cessation")
    diabetes = patient.get("diabetes")
    if diabetes is True or (isinstance(diabetes, str) and diabetes.strip().lower() not in NO_DIABETES):
        found.add("diabetes")
    bmi = body_mass_index(patient)
    if bmi is not None and not 18.5 <= bmi < 25:
        found.add("weight_management")
    if any(patient.get(key) is not None for key in ("systolic_bp", "diastolic_bp", "blood_pressure")):
        found.add("blood_pressure")
    return found


def body_mass_index(patient: Mapping[str, Any]) -> float | None:
    """The patient's BMI as given, or from weight_kg and height_cm; None when neither is usable."""
    bmi = patient.get("bmi")
    if isinstance(bmi, (int, float)) and not isinstance(bmi, bool) and bmi > 0:
        return float(bmi)
    weight, height = patient.get("weight_kg"), patient.get("height_cm")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (weight, height)):
        return weight / (height / 100) ** 2
    return None


def mentioned(value: Any) -> set[str]:
    """Categories whose keywords appear in a JSON-like value, leaving out negated mentions."""
    found = set()
    for clause in clauses(value):
        for category, pattern in KEYWORDS:
            if not any(word in clause for word in KEYWORD_WORDS[category]):
                continue
            if any(not negated(clause, match, category) for match in pattern.finditer(clause)):
                found.add(category)
    return found


def clauses(value: Any) -> Iterator[str]:
    """The value's text as lower-case clauses; a dict's scalars read as "key: value"."""
    for line in lines(value):
        plain = UNDERSCORES.sub(" ", line.lower())
        yield from (part for part in CLAUSE_END.split(plain) if part.strip())


def lines(value: Any, key: str = "") -> Iterator[str]:
    prefix = f"{key}: " if key else ""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from lines(item, str(name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from lines(item, key)
    elif isinstance(value, bool):
        yield f"{prefix}{'yes' if value else 'no'}"
    elif isinstance(value, str) and value.strip():
        yield prefix + value
    elif key and value is not None:
        yield prefix + str(value)


def negated(clause: str, match: re.Match, category: str = "") -> bool:
    """Whether a keyword match is negated by a cue shortly before it, or by one right after it."""
    if NEGATION_AFTER.search(clause[match.end():]) and not SCOPE_END.search(clause[match.end():][:40]):
        return True
    before = clause[:match.start()]
    if PREFIX_NEGATION.search(before):  # "non-smoker", "nonsmoker", "ex-smoker", "never-smoker"
        return True
    cues = list(NEGATION_BEFORE.finditer(before))
    if category == "smoking_cessation":
        cues = sorted([*cues, *PAST_BEFORE.finditer(before)], key=lambda cue: cue.end())
    if not cues:
        return False
    between = before[cues[-1].end():]
    return not SCOPE_END.search(between) and len(between.split()) <= SCOPE_WORDS
