"""Numbers in the model's prose: which are clinical (a unit, a percent, a lab's value), and is each in the input."""

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

NUMBER = r"\d+(?:,\d{3})*(?:[.,]\d+)?"
CHAIN = rf"{NUMBER}(?:\s*(?:/|-|–|—|\bto\b|\band\b|\bor\b)\s*{NUMBER})*"
# Clinical units and the percent. Counts of time (minutes, weeks, years), steps and servings are not
# clinical values: the model may speak of them freely, and they are listed as unverified when unknown.
UNIT = (
    r"(?:%|percent\b|per\s?cent\b|mg/dl\b|mmol/l\b|mmol/mol\b|[µμu]mol/l\b|nmol/l\b|pmol/l\b|g/dl\b|g/l\b|"
    r"mg/l\b|ng/ml\b|pg/ml\b|[µμ]g/l\b|m?iu/l\b|u/l\b|meq/l\b|mm\s?hg\b|kg/m(?:²|2\b|\^2)|"
    r"ml/min(?:/1[.,]73\s?m(?:²|2\b))?|bpm\b|beats?\s(?:per|a|each)\sminute\b|breaths?\sper\sminute\b|kcal\b|"
    r"calories\b|kilograms?\b|kg\b|lbs?\b|pounds?\b|cm\b|mm\b|milligrams?\b|mg\b|mcg\b|[µμ]g\b|ml\b|grams?\b|g\b|"
    r"units?\b|°\s?[cf]\b|degrees\b)"
)
# The patterns below start with a digit and look behind it from there (`\d(?<!X\d)` is `(?<!X)\d`), so
# that the regex engine skips ahead to the next digit instead of trying every position.
AFTER_FIRST_DIGIT = r"\d*(?:,\d{3})*(?:[.,]\d+)?"  # NUMBER without its first digit
NUMBER_RE = re.compile(NUMBER)
DIGIT = re.compile(r"\d")
WRITTEN = re.compile(rf"\d(?<![^\W\d]\d){AFTER_FIRST_DIGIT}")  # not the 1 of "A1c" or the 2 of "m2"
GROUPED = re.compile(r"\d+(?:,\d{3})+")
SPACES = re.compile(r"\s+")
MEASURE = re.compile(rf"(?P<value>\d(?<![\w.,/]\d){AFTER_FIRST_DIGIT}{CHAIN[len(NUMBER):]})\s*{UNIT}", re.IGNORECASE)
BARE = re.compile(rf"\d(?<![\w.,/\[]\d){AFTER_FIRST_DIGIT}(?![\w\]]|[.,]\d)")
# re.IGNORECASE matches these four non-ASCII characters to ASCII letters (İ ı ſ K); a text without them can be
# tested for ASCII names with `in` on its lower case (worker/prose.py has the same test).
FOLDS_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")
CITATION = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")
# A number written soon after the name of a measurement is that measurement, with or without a unit.
ANALYTES = (
    "ldl", "hdl", "cholesterol", "triglycerides", "hba1c", "a1c", "glucose", "blood sugar", "bmi",
    "body mass index", "blood pressure", "systolic", "diastolic", "heart rate", "pulse", "weight", "waist",
    "egfr", "creatinine", "potassium", "risk score", "10-year risk",
)
NOT_A_VALUE = re.compile(
    r"^\s*(?:-?\s*)?(?:minutes?|mins?|hours?|days?|weeks?|months?|years?|times?|sessions?|servings?|"
    r"portions?|steps?|nights?|meals?|glasses|drinks?|cups?)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Mention:
    """One number in the prose: as written, its value, how many decimals it shows, and if it is clinical."""

    text: str
    value: Decimal
    decimals: int
    clinical: bool


def value_of(text: str) -> tuple[Decimal, int] | None:
    """A written number ("2,300", "6.1", "6,1") as a Decimal and its count of decimals."""
    plain = text.strip()
    if GROUPED.fullmatch(plain):
        plain = plain.replace(",", "")
    plain = plain.replace(",", ".")
    try:
        value = Decimal(plain)
    except InvalidOperation:
        return None
    decimals = len(plain.split(".", 1)[1]) if "." in plain else 0
    return value, decimals


def numbers_in(text: str) -> Iterator[tuple[str, Decimal, int]]:
    """Every number in a text, as written, with its value and decimals."""
    for match in WRITTEN.finditer(text):
        parsed = value_of(match.group())
        if parsed:
            yield match.group(), *parsed


def mentions(text: str, analytes: Iterable[str] = ()) -> list[Mention]:
    """The numbers of a piece of prose; citation marks such as [2] are not numbers."""
    plain = CITATION.sub(lambda m: " " * len(m.group()), text)
    if not DIGIT.search(plain):  # every pattern below starts from a digit
        return []
    found: dict[int, Mention] = {}
    for match in MEASURE.finditer(plain):
        for number in NUMBER_RE.finditer(match.group("value")):
            add(found, match.start("value") + number.start(), number.group(), clinical=True)
    names = tuple(sorted({name.lower() for name in analytes if len(name) >= 3}))
    context = analyte_pattern(names)
    for match in context.finditer(plain) if may_name(plain, names) else ():
        if not NOT_A_VALUE.match(plain[match.end():]):
            for number in NUMBER_RE.finditer(match.group("value")):
                add(found, match.start("value") + number.start(), number.group(), clinical=True)
    for match in BARE.finditer(plain):
        add(found, match.start(), match.group(), clinical=False)
    return [found[position] for position in sorted(found)]


def may_name(text: str, names: tuple[str, ...]) -> bool:
    """False only when none of our analyte names or `names` is in the text (tested with `in`, where that is exact)."""
    if not (text.isascii() or FOLDS_TO_ASCII.isdisjoint(text)) or not all(name.isascii() for name in names):
        return True
    low = text.lower()
    return any(name in low for name in ANALYTES) or any(name in low for name in names)


def add(found: dict[int, Mention], position: int, text: str, clinical: bool) -> None:
    parsed = value_of(text)
    if parsed and position not in found:
        found[position] = Mention(text, parsed[0], parsed[1], clinical)


@lru_cache(maxsize=256)
def analyte_pattern(extra: tuple[str, ...]) -> re.Pattern:
    """Our analyte names and the request's lab names, each followed within a few words by a number."""
    names = sorted({*ANALYTES, *extra}, key=len, reverse=True)
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)[^.;:\d\[\]\n]{{0,30}}?(?P<value>{CHAIN})(?![\w.,]\d)",
                      re.IGNORECASE)


def values_in(value: Any) -> set[Decimal]:
    """Every number in a JSON-like value: numbers themselves and the numbers written inside strings."""
    found: set[Decimal] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(number for _, number, _ in numbers_in(item))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, (int, float)):
            try:
                found.add(Decimal(str(item)))
            except InvalidOperation:
                pass
        elif isinstance(item, (dict, Mapping)):  # dict first: an ABC check costs more
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def matches(mention: Mention, known: Iterable[Decimal]) -> bool:
    """Whether a written number is one of the known values, rounded to as many decimals as it shows."""
    tolerance = Decimal(5) * Decimal(10) ** -(mention.decimals + 1)
    return any(abs(value - mention.value) <= tolerance for value in known)


def lab_names(labs: Iterable[Any]) -> list[str]:
    """The analyte names of the request's labs, as the model may call them."""
    names = []
    for lab in labs:
        if isinstance(lab, Mapping):
            for key in ("name", "test", "test_name", "display", "label", "analyte", "code"):
                if isinstance(lab.get(key), str) and lab[key].strip():
                    names.append(SPACES.sub(" ", lab[key].strip())[:60])
    return names
