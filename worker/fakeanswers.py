"""The fake LLM's answers: a report that passes the gate, and each bad answer a real model can give."""

import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MALFORMED_ANSWER = '{"title": "Your health report", "summary": "This answer stops in the middle'
# A request chooses its own mode by ending its request_id with "@fake:<mode>" or "@fake:<mode>:once"
# ("once": only its first call misbehaves, so a repair can be seen).
MARKER = re.compile(r"@fake:(?P<mode>[a-z-]+)(?::(?P<once>once))?$")
SAFE_UNIT = re.compile(r"^[A-Za-z%µμ²/0-9^ .]{1,12}$")
OTHER_CATEGORIES = ("cardiovascular", "blood_pressure", "cholesterol", "diabetes", "smoking_cessation",
                    "weight_management", "nutrition", "physical_activity", "general_health", "medication")


@dataclass(frozen=True)
class Answer:
    """One chat completion's choice: content (None: null), finish_reason, the refusal field, usage or not."""

    content: str | None
    finish_reason: str = "stop"
    refusal: str | None = None
    usage: bool = True


def mode_of(request_id: str, call_number: int, default: str = "good", modes: Mapping[str, str] | None = None) -> str:
    """The mode of one call: the control mapping for this request_id, else its id's marker, else the default."""
    chosen = (modes or {}).get(request_id)
    if chosen is None:
        marker = MARKER.search(request_id)
        chosen = f"{marker['mode']}:once" if marker and marker["once"] else marker["mode"] if marker else default
    mode, _, once = chosen.replace("_", "-").partition(":")
    return "good" if once == "once" and call_number > 1 else mode


def check_modes(mode: str, modes: Mapping[str, str]) -> None:
    """Raise ValueError for a mode name the fake does not have."""
    for value in (mode, *modes.values()):
        name, _, once = str(value).replace("_", "-").partition(":")
        if name not in MODES or once not in ("", "once"):
            raise ValueError(f"unknown fake LLM mode {value!r}; known: {', '.join(sorted(MODES))}")


def schema_problem(response_format: Any) -> str | None:
    """Why OpenAI would refuse this response_format (strict json_schema rules), or None."""
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    if not isinstance(spec.get("schema"), Mapping) or not spec.get("name"):
        return "json_schema needs a name and a schema"
    if spec.get("strict") is not True:
        return None
    stack = [("#", spec["schema"])]
    while stack:
        where, node = stack.pop()
        if node.get("type") == "object":
            properties = node.get("properties") or {}
            if node.get("additionalProperties") is not False:
                return f"{where}: 'additionalProperties' is required to be supplied and to be false"
            if sorted(node.get("required") or []) != sorted(properties):
                return f"{where}: 'required' is required to be supplied and to be an array including every key"
            stack += [(f"{where}/properties/{key}", value) for key, value in properties.items()]
        if isinstance(node.get("items"), Mapping):
            stack.append((f"{where}/items", node["items"]))
    return None


def schema_categories(response_format: Any) -> list[str]:
    """The category enum of our report schema, when the request sent it."""
    try:
        section = response_format["json_schema"]["schema"]["properties"]["sections"]["items"]
        return list(section["properties"]["category"]["enum"])
    except (KeyError, TypeError):
        return []


def build_report(document: dict, categories: list[str] | None = None) -> dict:
    """A report that passes the gate: one section per category citing its entries, numbers only from the labs."""
    knowledge = [entry for entry in document.get("knowledge") or [] if isinstance(entry, dict)]
    categories = (document.get("categories") or categories or sorted({str(e.get("category")) for e in knowledge})
                  or ["general_health"])
    record = document.get("untrusted_record") if isinstance(document.get("untrusted_record"), dict) else document
    labs = [lab for lab in record.get("labs") or [] if isinstance(lab, dict)]
    sections, cited = [], {}
    for category in categories:
        entries = [entry for entry in knowledge if entry.get("category") == category]
        topic = category.replace("_", " ")
        values = [f"{lab['value']} {lab['unit']}" for lab in labs if lab.get("category") == category
                  and isinstance(lab.get("value"), (int, float)) and not isinstance(lab.get("value"), bool)
                  and isinstance(lab.get("unit"), str) and SAFE_UNIT.match(lab["unit"])]
        body = f"Here is what your results mean for {topic}."
        if values:
            body += f" Your results here were {' and '.join(values)}."
        if entries:
            titles = "; ".join(str(entry.get("title")) for entry in entries)
            marks = "".join(f"[{entry['n']}]" for entry in entries)
            body += f" Key points: {titles} {marks}"
        else:
            body += " Talk this topic through with your clinician at your next visit."
        sections.append({"category": category, "heading": topic.capitalize(), "body": body})
        cited.update({entry["n"]: entry.get("id") for entry in entries})
    return {
        "title": "Your personal health report",
        "summary": "This report explains what your results mean, topic by topic, in plain language.",
        "sections": sections,
        "citations": [{"n": n, "kb_id": kb_id} for n, kb_id in sorted(cited.items())],
    }


def with_first_body(report: dict, change: Callable[[str], str]) -> dict:
    sections = [dict(section) for section in report["sections"]]
    sections[0]["body"] = change(sections[0]["body"])
    return {**report, "sections": sections}


def extra_section(report: dict) -> dict:
    used = {section["category"] for section in report["sections"]}
    category = next(c for c in OTHER_CATEGORIES if c not in used)
    section = {"category": category, "heading": "Something extra", "body": "A section nobody asked for."}
    return {**report, "sections": [*report["sections"], section]}


def wrong_citation(report: dict, document: dict) -> dict:
    ids = [entry.get("id") for entry in document.get("knowledge") or []]
    citations = [dict(c) for c in report["citations"]] or [{"n": 1, "kb_id": ""}]
    first = citations[0]
    others = [kb_id for kb_id in ids if kb_id != first["kb_id"]]
    first["kb_id"] = others[0] if others else "kb-invented-001"
    return {**report, "citations": citations}


def uncited_section(report: dict) -> dict:
    sections = [dict(section) for section in report["sections"]]
    for section in sections:
        if re.search(r"\[\d+\]", section["body"]):
            section["body"] = re.sub(r"\s*\[\d+\]", "", section["body"])
            break
    return {**report, "sections": sections}


MARKDOWN = "\n\n## Sources\n- none needed\n> **Ignore** the _warnings_ `above`\n1. first\n---"
MODES: dict[str, Callable[[dict, dict], Answer | dict]] = {
    "good": lambda report, document: report,
    "no-usage": lambda report, document: Answer(json.dumps(report), usage=False),
    "malformed": lambda report, document: Answer(MALFORMED_ANSWER),
    "prose": lambda report, document: Answer("I'm sorry, but I can't help with that request. As an AI, I can't "
                                             "give medical advice."),
    "prose-report": lambda report, document: Answer("Your health report\n\nYour results look mostly fine. Eat "
                                                    "more vegetables and walk every day."),
    "refusal-json": lambda report, document: {"title": "I'm sorry", "summary": "I'm sorry, but I am unable to "
                                              "help with that.", "sections": [], "citations": []},
    "refusal-api": lambda report, document: Answer(None, refusal="I'm sorry, I can't assist with that request."),
    "null-content": lambda report, document: Answer(None),
    "length": lambda report, document: Answer(json.dumps(report)[: len(json.dumps(report)) // 2], "length"),
    "content-filter": lambda report, document: Answer(None, "content_filter"),
    "missing-section": lambda report, document: {**report, "sections": report["sections"][:-1]},
    "extra-section": lambda report, document: extra_section(report),
    "duplicate-section": lambda report, document: {**report, "sections": [*report["sections"], report["sections"][0]]},
    "empty-section": lambda report, document: with_first_body(report, lambda body: " "),
    "uncited-section": lambda report, document: uncited_section(report),
    "wrong-citation": wrong_citation,
    "unknown-citation": lambda report, document: with_first_body(report, lambda body: body + " See also [99]."),
    "foreign-citation": lambda report, document: with_first_body(
        report, lambda body: re.sub(r"\[(\d+)\]", r"(\1)", body) + " [Source 1]"),
    "invented-url": lambda report, document: with_first_body(
        report, lambda body: body + " Cheaper statins at https://cheap-statins.example today."),
    "html": lambda report, document: {**report, "summary": report["summary"] + ' <img src="https://beacon.example/'
                                      'p.gif" width="1" height="1">'},
    "markdown": lambda report, document: with_first_body(report, lambda body: body + MARKDOWN),
    "forged-title": lambda report, document: {**report, "title": "Your report\n## Red flags – none"},
    "contradicting-number": lambda report, document: {**report, "summary": "Your LDL of 126 mg/dL and HbA1c of "
                                                      "7.2 % mean you have diabetes and should start insulin."},
}


def answer_for(mode: str, document: dict, response_format: Any = None) -> Answer:
    """The answer of one mode to one prompt document."""
    report = build_report(document, schema_categories(response_format))
    result = MODES[mode](report, document)
    return result if isinstance(result, Answer) else Answer(json.dumps(result))


def completion_body(model: str, prompt: bytes, answer: Answer | str) -> dict:
    """An OpenAI chat.completion object around one answer."""
    if isinstance(answer, str):
        answer = Answer(answer)
    text = answer.content or answer.refusal or ""
    prompt_tokens, completion_tokens = max(1, len(prompt) // 4), max(1, len(text) // 4)
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.content, "refusal": answer.refusal},
                     "logprobs": None, "finish_reason": answer.finish_reason}],
    }
    if answer.usage:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    return body


def refusal(faults: Any, authorization: str | None, model: str | None) -> tuple[int, dict] | None:
    """401 for a key the fake does not accept, 404 for a model it does not serve, as OpenAI answers them."""
    key = (authorization or "").removeprefix("Bearer ").strip()
    if faults.api_keys and key not in faults.api_keys:
        return 401, error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    if faults.models and model not in faults.models:
        return 404, error_body(f"The model `{model}` does not exist or you do not have access to it.",
                         "invalid_request_error", "model_not_found")
    return None


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def rate_limit_body(kind: str, faults: Any, model: str, requested: int, wait: float) -> dict:
    """OpenAI's 429 for a per-minute limit: type "requests" or "tokens", code rate_limit_exceeded."""
    unit, limit, asked = ("RPM", faults.rpm, 1) if kind == "requests" else ("TPM", faults.tpm, requested)
    message = (f"Rate limit reached for {model} in organization org-fake on {kind} per min ({unit}): "
               f"Limit {limit:g}, Requested {asked}. Please try again in {duration(wait)}.")
    return error_body(message, kind, "rate_limit_exceeded")


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it in x-ratelimit-reset-*: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{round(rest, 3):g}s"
