"""The report path's fast paths (issue 14) give what the code they replaced gave.

Each `old_*` below is the replaced code, kept word for word; hypothesis feeds both the same varied inputs,
including the characters that make case-insensitive patterns and guards differ (ſ, K, ı, NUL, superscripts)."""

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import categories, clients, disclosure, gate, markup, numbers, prose
from worker.errors import InvalidRequest
from worker.facts import clinical_input, input_digest
from worker.intake import unstorable, validate
from worker.numbers import NUMBER, value_of
from worker.prompt import document_json
from worker.schemas import ReportGenerationRequest
from worker.settings import load

SAMPLE = json.loads((Path(__file__).resolve().parents[1] / "worker" / "data" / "sample_request.json").read_text())
FRAGMENTS = [
    "I'm sorry, but I can't help", "we are afraid we cannot", "As an AI", "as a language model", "Sorry",
    "i am unable to "
    "provide", "www.", "WWW2.", "http://", "https://x.org/a", "mailto:", "tel: +1", "data:text/html;", "example.com",
    "bit.ly/x", "e.g. ", "a@b.co", "@", "mg/dL", "mmHg", "kg/m²", "%", "[1]", "[1, 2]", "[^2]", "[Source 4]", "(1)",
    "【1】", "¹²", "m²", "source 2", "ref #3", "LDL 162", "HbA1c of 6.1 %", "2,300 mg", "6,1", "150 minutes",
    "555 123 4567",
    "2026-12-01", "<b>", "<!--", "\u202e", "\x00", "\n", "\t", " ", ".", ":", "-", "_", "*", "|", "#", "!", "[", "](x)",
    "\\", "`", "~", "&", "<", ">", "ſ", "\u212a", "ı", "İ", "µ", "Blood Pressure", "non-smoker", "no diabetes", "heart",
    "as an a\u0130", "ok. I'm \u017forry, but I can't.", "we are afraid we cannot help", "I won't write",
    "ſource 2", "\u212aB 3",
    "HTTPS://X.ORG", "JavaScript:", "TEL:5", "Data:image/png;", "I AM AN AI", "As A Large Language Model", "1-2 3",
    "555.123.4567", "(555) 123-4567", "+44 20 7946 0958", "Blood Pressure 138/86 mmHg", "BM\u0130 28", "kb 4",
    "hämoglobin 13.5", "μmol 7", "weight: 91 kg", "LDL of 126", "1,2", "a1", "x2.5", "/3", "[4", ".5", "12-18 5",
]
ALPHABET = "aAbcdeiIklmoprsStwWxyz0123456789 .,:;@/[]()-_#*|!&~`<>\\\n\t\x00¹²【】ſ\u212aıİµ’'%"
TEXT = st.lists(st.sampled_from(FRAGMENTS) | st.text(alphabet=ALPHABET, max_size=12), max_size=12).map("".join)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20)
FAST = settings(max_examples=300, deadline=None)


def old_key_of(name):
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def old_identifying(name, nested=False):
    key = old_key_of(name)
    return not (nested and key == "name") and bool(disclosure.IDENTIFYING.search(key))


def old_values_in(value):
    found = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, (int, float)):
            try:
                found.add(Decimal(str(item)))
            except InvalidOperation:
                pass
        elif isinstance(item, str):
            found |= {number for _, number, _ in old_numbers_in(item)}
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def old_numbers_in(text):
    for match in re.finditer(rf"(?<![^\W\d]){NUMBER}", text):
        parsed = value_of(match.group())
        if parsed:
            yield match.group(), *parsed


OLD_MEASURE = re.compile(rf"(?<![\w.,/])(?P<value>{numbers.CHAIN})\s*{numbers.UNIT}", re.IGNORECASE)
OLD_BARE = re.compile(rf"(?<![\w.,/\[]){NUMBER}(?![\w\]]|[.,]\d)")


def old_mentions(text, analytes=()):
    plain = numbers.CITATION.sub(lambda m: " " * len(m.group()), text)
    found = {}
    for match in OLD_MEASURE.finditer(plain):
        for number in re.finditer(NUMBER, match.group("value")):
            numbers.add(found, match.start("value") + number.start(), number.group(), clinical=True)
    context = numbers.analyte_pattern(tuple(sorted({name.lower() for name in analytes if len(name) >= 3})))
    for match in context.finditer(plain):
        if not numbers.NOT_A_VALUE.match(plain[match.end():]):
            for number in re.finditer(NUMBER, match.group("value")):
                numbers.add(found, match.start("value") + number.start(), number.group(), clinical=True)
    for match in OLD_BARE.finditer(plain):
        numbers.add(found, match.start(), match.group(), clinical=False)
    return [found[position] for position in sorted(found)]


def old_inline(text):
    line = " ".join(old_clean(text).split())
    escaped = markup.INLINE_SPECIAL.sub(r"\\\1", line)
    escaped = markup.KEPT_MARK.sub(r"[\1]", escaped)
    escaped = re.sub(r"(\[\d[\d, ]*\])\(", r"\1\\(", escaped)
    return escaped.replace("![", "\\![")


def old_unsafe_kind(text):
    for pattern, kind in ((prose.HTML, "HTML"), (prose.HIDDEN, "invisible control characters"), (prose.URL, "a URL"),
                          (prose.EMAIL, "an e-mail address"), (prose.DOMAIN, "a domain name")):
        if pattern.search(text):
            return kind
    if any(prose.phone_like(match.group()) for match in prose.PHONE.finditer(text)):
        return "a phone number"
    return None


def old_refuses(text):
    return any(pattern.search(text) for pattern in prose.REFUSALS)


def old_foreign_citation(text):
    rest = prose.CITATION.sub(" ", text)
    return any(pattern.search(rest) for pattern in prose.FOREIGN_CITATIONS)


def old_strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from old_strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from old_strings_in(item)


def old_unstorable(value, where="", depth=0):
    if depth > 48:
        return f"{where or 'message'}: nested more than 48 levels"
    if isinstance(value, dict):
        for key, item in value.items():
            place = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str) or "\x00" in key or key.startswith("$"):
                return f"{where or 'message'}: a key MongoDB cannot store (it holds NUL or starts with $)"
            problem = old_unstorable(item, place, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = old_unstorable(item, f"{where}.{index}", depth + 1)
            if problem:
                return problem
    elif isinstance(value, bool):
        return ""
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{where}: a number that is not finite (NaN or Infinity is not JSON)"
    elif isinstance(value, int) and not -2 ** 63 <= value <= 2 ** 63 - 1:
        return f"{where}: integer beyond 64 bits"
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text that is not valid UTF-8"
    return ""


def old_clean(text):
    plain = "" if text is None else str(text)
    return markup.HIDDEN.sub("", plain.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))


def old_normalize(value):
    if not isinstance(value, str) or not value.strip():
        return None
    key = re.sub(r"[\s-]+", "_", value.strip().lower())
    return categories.ALIASES.get(key, key)


@FAST
@given(st.lists(TEXT | st.sampled_from(["heightCm", "Weight (kg)", "first_name", "MRN", "name", "dob"]), max_size=6),
       st.booleans())
def test_field_names_as_before(names, nested):
    for name in names:
        assert disclosure.key_of(name) == old_key_of(name)
        assert disclosure.identifying(name, nested) == old_identifying(name, nested)


@FAST
@given(st.dictionaries(TEXT | st.sampled_from(disclosure.DEFAULT_PATIENT_FIELDS + ("first_name", "dob")), JSON,
                       max_size=6),
       st.lists(st.sampled_from(disclosure.DEFAULT_PATIENT_FIELDS + ("heightCm", "name", "zip")), max_size=6))
def test_patient_fields_as_before(patient, fields):
    allowed = {old_key_of(field) for field in fields if not old_identifying(field)}
    expected = {}
    for name, value in patient.items():
        if old_key_of(str(name)) in allowed and value is not None:
            expected[old_key_of(str(name))] = disclosure.without_identifiers(value)
    shared = disclosure.patient_for_llm(patient, fields)
    assert {k: v for k, v in shared.items() if k != "age"} == {k: v for k, v in expected.items() if k != "age"}
    assert disclosure.patient_for_llm(patient, iter(fields)) == shared  # a one-pass iterable of fields too


@FAST
@given(TEXT, st.lists(TEXT | st.sampled_from(["LDL Cholesterol", "HbA1c", "eGFR", "Hämoglobin", "\u212aB", "µmol",
                                               "Blood Pressure"]), max_size=3))
def test_numbers_as_before(text, analytes):
    assert list(numbers.numbers_in(text)) == list(old_numbers_in(text))
    assert numbers.mentions(text, analytes) == old_mentions(text, analytes)


@FAST
@given(JSON)
def test_values_and_strings_as_before(value):
    assert numbers.values_in(value) == old_values_in(value)
    assert gate.strings_in(value) == list(old_strings_in(value))


@FAST
@given(st.dictionaries(st.sampled_from(["title", "content", "id"]), JSON, max_size=3))
def test_entry_values_as_before(entry):
    assert gate.entry_values(entry) == old_values_in([entry.get("title"), entry.get("content")])
    assert gate.entry_values(entry) == gate.entry_values(dict(entry))  # a cached answer is the same answer


@FAST
@given(TEXT | JSON)
def test_inline_as_before(text):
    assert markup.clean(text) == old_clean(text)
    assert markup.inline(text) == old_inline(text)


STORABLE = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | TEXT | st.text(),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                            TEXT | st.sampled_from(["$set", "a\x00b", "ok"]) | st.integers(0, 3), inner, max_size=3),
                        max_leaves=12)


def nested(depth, leaf):
    return leaf if depth == 0 else {"x": [nested(depth - 1, leaf)]}


@FAST
@given(STORABLE, st.integers(0, 50))
def test_unstorable_as_before(value, depth):
    assert unstorable(value) == old_unstorable(value)
    assert unstorable(value, "labs", depth) == old_unstorable(value, "labs", depth)


@pytest.mark.parametrize("depth", [20, 23, 24, 25, 30])
def test_unstorable_depth_as_before(depth):
    for leaf in ("x", "\ud800", 2 ** 64, float("nan"), {"$a": 1}):
        assert unstorable(nested(depth, leaf)) == old_unstorable(nested(depth, leaf))


@FAST
@given(TEXT)
def test_prose_checks_as_before(text):
    assert prose.unsafe_kind(text) == old_unsafe_kind(text)
    assert prose.foreign_citation(text) == old_foreign_citation(text)


@FAST
@given(st.lists(TEXT, max_size=6))
def test_refusals_in_one_search_as_before(texts):
    assert prose.any_refuses(texts) == any(old_refuses(text) for text in texts)
    assert prose.any_refuses(iter(texts)) == any(old_refuses(text) for text in texts)
    assert [prose.refuses(text) for text in texts] == [old_refuses(text) for text in texts]


@pytest.mark.parametrize("texts, refused", [
    (["fine", "I'm sorry, but I can't help with that."], True), (["I", "am afraid I cannot"], False),
    (["i", "can't help"], False),
    (["x", "Sorry, no."], True), (["As an", "AI"], False), (["ok\x00", "as an AI model"], True), ([], False),
])
def test_refusals_do_not_join_across_texts(texts, refused):
    assert prose.any_refuses(texts) is refused


def old_mentioned(value):
    found = set()
    for clause in categories.clauses(value):
        for category, pattern in categories.KEYWORDS:
            if any(not categories.negated(clause, match, category) for match in pattern.finditer(clause)):
                found.add(category)
    return found


@FAST
@given(TEXT | JSON | st.lists(st.sampled_from(["no heart disease", "Former smoker; BMI 31", "walks daily", "LDL high",
                                               "Hypertension, prediabetes", "statin", "vaping", "ascvd 12%", "HbA1c"])))
def test_category_keywords_as_before(value):
    assert categories.mentioned(value) == old_mentioned(value)


@FAST
@given(TEXT | JSON)
def test_category_names_as_before(value):
    assert categories.normalize(value) == old_normalize(value)


@FAST
@given(st.dictionaries(st.sampled_from(["patient", "labs", "assessment", "cvd_summary"]), JSON, max_size=4))
def test_storable_check_without_a_dump(extra):
    data = {**SAMPLE, "patient": {"age": 56, "notes": extra}, "assessment": {"x": extra}}
    try:
        request = ReportGenerationRequest.model_validate_json(json.dumps(data))
    except ValueError:
        return
    assert unstorable(dict(request)) == unstorable(request.model_dump())


@pytest.mark.parametrize("value, problem", [
    ("plain", ""), ("ünïcode", ""), ("\ud800", ": text that is not valid UTF-8"), ({"$x": 1}, "a key"),
    (2 ** 63, ": integer beyond 64 bits"), ([float("inf")], ".0: a number that is not finite"),
])
def test_unstorable_still_finds_each_problem(value, problem):
    found = unstorable(value)
    assert (problem in found) and (bool(found) == bool(problem))


def test_one_dump_gives_the_same_input_digest_and_stored_input():
    request = validate(json.dumps(SAMPLE).encode(), 1 << 20)
    document = request.model_dump(mode="json")
    assert clinical_input(request, document) == clinical_input(request)
    assert input_digest(request, clinical_input(request, document)) == input_digest(request)
    with pytest.raises(InvalidRequest):  # an int beyond 64 bits is refused at intake, as before
        validate(json.dumps({**SAMPLE, "labs": [{"value": 2 ** 70}]}).encode(), 1 << 20)


@pytest.mark.parametrize("threads", [1, 32, 128, 300])
def test_llm_connection_pool_holds_a_connection_per_thread(threads):
    """Issue 14: every worker thread keeps its HTTP connection to the LLM between calls (none closed and reopened)."""
    writer = clients.writer(load(environ={"WORKER_THREADS": str(threads), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}))
    try:
        pool = writer._client._client._transport._pool
        assert pool._max_keepalive_connections >= threads and pool._max_connections >= threads
    finally:
        writer.close()


MESSAGES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.text(),
                        lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(
                            TEXT | st.text() | st.integers(0, 3) | st.booleans(), inner, max_size=3), max_leaves=15)


@FAST
@given(st.dictionaries(TEXT, MESSAGES, max_size=3),
       st.lists(st.fixed_dictionaries({"n": st.integers(1, 9), "id": TEXT, "title": TEXT, "content": MESSAGES}),
                max_size=4))
def test_prompt_document_json_as_before(document, knowledge):
    for value in ({**document, "knowledge": knowledge}, {"knowledge": knowledge, **document}, document):
        assert document_json(value) == json.dumps(value, ensure_ascii=False, default=str)
    # the same entries again (a cache hit) and an entry that cannot be a cache key give the same text
    assert document_json({"knowledge": knowledge}) == json.dumps({"knowledge": knowledge}, ensure_ascii=False)
    odd = [*knowledge, {"n": 1, "content": {"a": [1]}, "when": Path("x")}]
    assert document_json({"knowledge": odd}) == json.dumps({"knowledge": odd}, ensure_ascii=False, default=str)


@pytest.mark.parametrize("value", [1, 1.0, True, 0.0, -0.0, "1", None, [1], 2 ** 70])
def test_prompt_knowledge_json_never_mixes_equal_values(value):
    """1, 1.0 and True are equal cache keys; their JSON differs, so they must not share a cached text."""
    for first in (1, 1.0, True, 0.0, -0.0):
        document_json({"knowledge": [{"n": 1, "id": first}]})  # fill the cache with an equal key first
        document = {"knowledge": [{"n": 1, "id": value}]}
        assert document_json(document) == json.dumps(document, ensure_ascii=False, default=str)
