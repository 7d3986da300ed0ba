"""The gate before the store: a model's report is accepted only when it checks against the request and the prompt."""

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pydantic import ValidationError

from worker import prose
from worker.categories import normalize
from worker.disclosure import DEFAULT_PATIENT_FIELDS
from worker.facts import known_values
from worker.numbers import lab_names, matches, mentions, values_in
from worker.report import ReportContent, describe

ERROR_CODES = {
    "llm_refused": "the model declined (the API's refusal field, or prose that refuses); the same input gets the "
                   "same refusal, so it is not retried through the delay queues",
    "llm_truncated": "the answer stopped at the token limit (finish_reason length)",
    "llm_content_filter": "the provider's content filter stopped the answer (finish_reason content_filter)",
    "report_malformed": "the answer is empty, not JSON, or not the report's JSON shape",
    "report_incomplete": "not exactly one non-empty section per requested category (missing, extra, duplicate, empty)",
    "citation_invalid": "a section without a citation, a number the prompt did not have, a number mapped to another "
                        "entry, or a citation syntax other than [n]",
    "unsafe_content": "a URL, domain, e-mail address, phone number or HTML in the prose, or a title or heading that "
                      "imitates a part only our renderer writes (red flags, sources, disclaimer)",
    "number_mismatch": "a number with a clinical unit or a percent that is neither in the request nor in a cited entry",
}
CHECKS = ("answer", "sections", "safety", "citations", "numbers")
FENCED = re.compile(r"\s*```(?:json)?\s*\n(.*)\n\s*```\s*", re.DOTALL)


class GateFailure(Exception):
    """A report the gate refuses: a stable `code` (see ERROR_CODES) and a reason that quotes no patient data."""

    def __init__(self, code: str, reason: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Verdict:
    """An accepted report: the model's text in requested order, citations resolved by prompt number, audit data."""

    title: str
    summary: str
    sections: tuple[dict, ...]
    citations: tuple[dict, ...]
    unverified_numbers: tuple[str, ...] = ()
    dropped_citations: tuple[int, ...] = ()
    verified_numbers: int = 0

    def audit(self) -> dict[str, Any]:
        return {"unverified_numbers": list(self.unverified_numbers), "dropped_citations": list(self.dropped_citations),
                "verified_numbers": self.verified_numbers}


def review(answer: str | None, *, categories: Sequence[str], knowledge: Sequence[Mapping], request: Any,
           refusal: str | None = None, finish_reason: str | None = None,
           patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS) -> Verdict:
    """Accept one model answer or raise GateFailure; `knowledge` is the entries as numbered in the prompt (1-based)."""
    content = accept_answer(answer, refusal=refusal, finish_reason=finish_reason)
    return check_content(content, categories, knowledge, request, patient_fields)


def accept_answer(answer: str | None, *, refusal: str | None = None, finish_reason: str | None = None) -> ReportContent:
    """The answer as a ReportContent, unless the model refused, was cut off or wrote something else."""
    if refusal:
        raise GateFailure("llm_refused", "the API's refusal field is set")
    if finish_reason == "length":
        raise GateFailure("llm_truncated", "the answer reached the token limit")
    if finish_reason == "content_filter":
        raise GateFailure("llm_content_filter", "the provider's content filter stopped the answer")
    if answer is None or not answer.strip():
        raise GateFailure("report_malformed", "the answer is empty")
    fenced = FENCED.fullmatch(answer)  # some OpenAI-compatible servers wrap JSON mode answers in a code fence
    try:
        data = json.loads(fenced.group(1) if fenced else answer)
    except (json.JSONDecodeError, RecursionError) as exc:
        if prose.refuses(answer):
            raise GateFailure("llm_refused", "the answer is prose that refuses") from None
        where = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise GateFailure("report_malformed", f"the answer is not valid JSON{where}") from None
    if prose.any_refuses(strings_in(data)):
        raise GateFailure("llm_refused", "a field of the JSON answer refuses")
    if isinstance(data, dict) and data.get("sections") == []:
        raise GateFailure("report_incomplete", "the answer has no sections")
    try:
        return ReportContent.model_validate(data)
    except ValidationError as exc:
        raise GateFailure("report_malformed", f"the JSON does not match the report's shape: {describe(exc)}") from None


def check_content(content: ReportContent, categories: Sequence[str], knowledge: Sequence[Mapping], request: Any,
                  patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS) -> Verdict:
    """Every check after parsing, in a fixed order; the first failing one raises."""
    sections = complete_sections(content, categories)
    screen(content)
    citations, dropped = resolve_citations(content, sections, knowledge)
    unverified, verified = check_numbers(content, citations, knowledge, request, patient_fields)
    return Verdict(one_line(content.title), content.summary.strip(), tuple(sections), tuple(citations),
                   tuple(unverified), tuple(dropped), verified)


def one_line(text: str) -> str:
    """A title or heading as one line: the backend may show the stored JSON without our Markdown."""
    return " ".join(text.split())


def inspect(answer: str | None, *, categories: Sequence[str], knowledge: Sequence[Mapping], request: Any,
            refusal: str | None = None, finish_reason: str | None = None,
            patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS) -> dict[str, str]:
    """Each check's result for one answer ("pass", an error code, or "skipped"), all run: for the evaluation."""
    results = dict.fromkeys(CHECKS, "skipped")
    try:
        content = accept_answer(answer, refusal=refusal, finish_reason=finish_reason)
    except GateFailure as failure:
        return {**results, "answer": failure.code}
    results["answer"] = "pass"
    steps: dict[str, Callable[[], Any]] = {
        "sections": lambda: complete_sections(content, categories),
        "safety": lambda: screen(content),
        "citations": lambda: resolve_citations(content, sorted_sections(content), knowledge),
        "numbers": lambda: check_numbers(content, cited_entries(content, knowledge), knowledge, request,
                                         patient_fields),
    }
    for name, step in steps.items():
        try:
            step()
            results[name] = "pass"
        except GateFailure as failure:
            results[name] = failure.code
    return results


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON value, depth first, in order."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, Mapping):  # last: an ABC check costs more than the others together
            stack.extend(reversed(list(item.values())))
    return found


def sorted_sections(content: ReportContent) -> list[dict]:
    return [{"category": normalize(s.category) or s.category, "heading": one_line(s.heading), "body": s.body.strip()}
            for s in content.sections]


def complete_sections(content: ReportContent, categories: Sequence[str]) -> list[dict]:
    """Exactly one non-empty section per requested category and no other, in the requested order."""
    by_category: dict[str, dict] = {}
    for section in sorted_sections(content):
        category = section["category"]
        if category not in categories:
            raise GateFailure("report_incomplete", "a section is for a category that was not requested")
        if category in by_category:
            raise GateFailure("report_incomplete", f"two sections for the category {category}")
        if not section["heading"] or not section["body"]:
            raise GateFailure("report_incomplete", f"the section for {category} is empty")
        by_category[category] = section
    missing = [category for category in categories if category not in by_category]
    if missing:
        raise GateFailure("report_incomplete", f"no section for the requested categories {', '.join(missing)}")
    return [by_category[category] for category in categories]


def screen(content: ReportContent) -> None:
    """No links, contact details or HTML anywhere in the prose; no title or heading that forges our parts."""
    for where, text in texts_of(content):
        kind = prose.unsafe_kind(text)
        if kind:
            raise GateFailure("unsafe_content", f"{where} contains {kind}")
    for where, text in [("title", content.title), *((f"sections[{i}].heading", s.heading)
                                                    for i, s in enumerate(content.sections))]:
        if prose.reserved(text):
            raise GateFailure("unsafe_content", f"{where} imitates a part of the report that only our renderer writes")


def texts_of(content: ReportContent) -> list[tuple[str, str]]:
    """(where, text) of every piece of model prose."""
    found = [("title", content.title), ("summary", content.summary)]
    for i, section in enumerate(content.sections):
        found += [(f"sections[{i}].heading", section.heading), (f"sections[{i}].body", section.body)]
    return found


def resolve_citations(content: ReportContent, sections: Sequence[dict], knowledge: Sequence[Mapping]
                      ) -> tuple[list[dict], list[int]]:
    """The citations the text uses, resolved by their prompt numbers, and the listed ones it does not use."""
    for where, text in texts_of(content):
        if prose.foreign_citation(text):
            raise GateFailure("citation_invalid", f"{where} cites in a syntax other than [n]")
    listed: dict[int, str] = {}
    for citation in content.citations:
        if not 1 <= citation.n <= len(knowledge):
            raise GateFailure("citation_invalid", f"citations list number {citation.n}, which the prompt did not have")
        if str(knowledge[citation.n - 1].get("id")) != citation.kb_id:
            raise GateFailure("citation_invalid", f"citation {citation.n} names an entry other than prompt entry "
                                                  f"{citation.n}")
        if listed.setdefault(citation.n, citation.kb_id) != citation.kb_id:
            raise GateFailure("citation_invalid", f"citation {citation.n} is listed twice")
    used: set[int] = set()
    for where, text in texts_of(content):
        for n in prose.marks_in(text):
            if not 1 <= n <= len(knowledge):
                raise GateFailure("citation_invalid", f"{where} cites [{n}], a number the prompt did not have")
            used.add(n)
    with_entries = {normalize(entry.get("category")) for entry in knowledge}
    for section in sections:
        if section["category"] in with_entries and not any(True for _ in prose.marks_in(section["body"])):
            raise GateFailure("citation_invalid", f"the section for {section['category']} cites no knowledge entry")
    citations = [cited(n, knowledge[n - 1]) for n in sorted(used)]
    return citations, sorted(set(listed) - used)


def cited(n: int, entry: Mapping) -> dict:
    return {"n": n, "kb_id": str(entry.get("id")), "title": str(entry.get("title", "")),
            "source_url": str(entry.get("source_url", ""))}


def cited_entries(content: ReportContent, knowledge: Sequence[Mapping]) -> list[dict]:
    """The entries the text cites by a number the prompt had (for checks that run after a citation failure)."""
    used = {n for _, text in texts_of(content) for n in prose.marks_in(text) if 1 <= n <= len(knowledge)}
    return [cited(n, knowledge[n - 1]) for n in sorted(used)]


def entry_values(entry: Mapping) -> frozenset:
    """The numbers of a knowledge entry's title and content (worked out once per text when they are text)."""
    title, content = entry.get("title"), entry.get("content")
    if isinstance(title, (str, type(None))) and isinstance(content, (str, type(None))):
        return text_values(title, content)
    return frozenset(values_in([title, content]))


@lru_cache(maxsize=1024)  # the knowledge base's own text, the same entries for many reports: no patient data
def text_values(title: str | None, content: str | None) -> frozenset:
    return frozenset(values_in([title, content]))


def check_numbers(content: ReportContent, citations: Sequence[Mapping], knowledge: Sequence[Mapping], request: Any,
                  patient_fields: Iterable[str] = DEFAULT_PATIENT_FIELDS) -> tuple[list[str], int]:
    """Clinical numbers must be the input's or a cited entry's; returns the other unknown numbers, and how many
    clinical numbers matched."""
    known = known_values(request, patient_fields).union(*(entry_values(knowledge[c["n"] - 1]) for c in citations))
    analytes = lab_names(request.labs)
    unverified, verified = [], 0
    for where, text in texts_of(content):
        wrong = 0
        for mention in mentions(text, analytes):
            if matches(mention, known):
                verified += mention.clinical
            elif mention.clinical:
                wrong += 1
            else:
                unverified.append(mention.text)
        if wrong:
            raise GateFailure("number_mismatch", f"{wrong} number(s) with a clinical unit in {where} are neither "
                                                 "in the request nor in a cited entry")
    return unverified, verified
