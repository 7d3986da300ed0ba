"""The report pipeline, stage by stage as in the seed's flow; each stage is timed."""

import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

from pydantic import ValidationError

from metrics.definitions import STAGE_SECONDS
from worker.cache import Cache
from worker.errors import InProgress, InvalidRequest
from worker.knowledge import KnowledgeCache
from worker.llm import GeneratedReport, ReportWriter, categories_for
from worker.schemas import ReportGenerationRequest, ReportGenerationResponse
from worker.store import Store, now

ID_SCAN_BYTES = 64 * 1024


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


def identify(body: bytes) -> tuple[str, str]:
    """Best-effort request_id and user_id of a message that may be invalid, for a `failed` response."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    ids = []
    for key in ("request_id", "user_id"):
        value = data.get(key)
        ids.append(value if isinstance(value, str) and 0 < len(value) <= 128 else "")
    return ids[0], ids[1]


def scan_ids(head: bytes) -> tuple[str, str]:
    """Ids of a message too large to parse, looked for in its first bytes only."""
    found = []
    for key in (b"request_id", b"user_id"):
        match = re.search(rb'"' + key + rb'"\s*:\s*"([A-Za-z0-9._:@-]{1,128})"', head)
        found.append(match.group(1).decode() if match else "")
    return found[0], found[1]


def check_signature(body: bytes, signature: str | None, key: str) -> None:
    """With a signing key set, the `x-signature` header must be the hex HMAC-SHA256 of the body."""
    if not key:
        return
    if not signature:
        raise InvalidRequest("request is not signed (x-signature header missing)", *identify(body))
    expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    given = signature.removeprefix("sha256=").strip().lower()
    if not hmac.compare_digest(expected, given):
        raise InvalidRequest("request signature does not match", *identify(body))


def validate(body: bytes, max_bytes: int, content_type: str | None = None) -> ReportGenerationRequest:
    if content_type and not _is_json(content_type):
        raise InvalidRequest(f"content type {content_type[:64]!r} is not JSON", *identify(body))
    if len(body) > max_bytes:
        raise InvalidRequest(f"message is {len(body)} bytes, more than the limit of {max_bytes}",
                             *scan_ids(body[:ID_SCAN_BYTES]))
    try:
        text = body.decode("utf-8")
        return ReportGenerationRequest.model_validate_json(text)
    except UnicodeDecodeError:
        raise InvalidRequest("message body is not UTF-8") from None
    except ValidationError as exc:
        request_id, user_id = identify(body)
        raise InvalidRequest(_summarize(exc), request_id, user_id) from None
    except RecursionError:
        raise InvalidRequest("message JSON is nested too deeply") from None


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in ("application/json", "text/json") or kind.endswith("+json")


def _summarize(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "message"
        problems.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(problems)


def remember_input(cache: Cache, user_id: str, document: dict) -> dict | None:
    """Return the user's previous input (if cached) and cache this one."""
    return cache.swap_input(user_id, document)


def _clinical(document: dict) -> dict:
    """An input without its request id: what decides whether the user's data changed."""
    return {key: value for key, value in document.items() if key != "request_id"}


def ensure_user(store: Store, user_id: str) -> None:
    store.upsert_user(user_id)


def knowledge_for(knowledge: KnowledgeCache, categories: list[str]) -> list[dict]:
    return knowledge.entries_for(categories)


def generate(writer: ReportWriter, request: ReportGenerationRequest, entries: list[dict]) -> GeneratedReport:
    return writer.generate(request, entries)


def store_report(store: Store, request: ReportGenerationRequest, generated: GeneratedReport,
                 categories: list[str], entries: list[dict], input_changed: bool | None) -> dict:
    """Insert the report; if the request already has one, that one wins. Returns what is stored."""
    report = {
        "report_id": str(uuid.uuid4()),
        "request_id": request.request_id,
        "user_id": request.user_id,
        "report_data": {
            "content": generated.content,
            "categories": categories,
            "knowledge_ids": [entry["id"] for entry in entries],
            "input_changed": input_changed,
        },
        "json_content": generated.content,
        "markdown_content": generated.markdown,
        "created_at": now(),
        "generation_time_seconds": round(generated.seconds, 3),
        "tokens_used": generated.prompt_tokens + generated.completion_tokens,
        "estimated_cost": generated.cost_usd,
        "model": generated.model,
        "processed_by": f"{socket.gethostname()}:{os.getpid()}",
    }
    report["report_id"] = store.insert_report(report)
    return report


def cache_report(cache: Cache, report: dict) -> None:
    cache.remember_report(report["report_id"], report)


def success(request: ReportGenerationRequest, report_id: str) -> ReportGenerationResponse:
    return ReportGenerationResponse(
        request_id=request.request_id, user_id=request.user_id, report_id=report_id, status="success"
    )


@dataclass
class Pipeline:
    store: Store
    cache: Cache
    knowledge: KnowledgeCache
    writer: ReportWriter
    max_message_bytes: int
    claim_seconds: float
    signing_key: str = ""

    def process(self, body: bytes, *, content_type: str | None = None, signature: str | None = None,
                redelivered: bool = False, claim: str = "") -> ReportGenerationResponse:
        """Body in, success response out; raises TransientError, InProgress or PermanentError.

        `claim` is the token of this message and its retries: a claim left by an earlier attempt of the
        same message (one that could not release it, e.g. MongoDB went away) is taken back at once."""
        check_signature(body, signature, self.signing_key)
        request = validate(body, self.max_message_bytes, content_type)
        with timed("store"):
            existing = self.store.find_report(request.request_id)
        if existing:
            return success(request, existing["report_id"])
        owner = claim or f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        with timed("store"):
            if not self.store.claim(request.request_id, owner, self.claim_seconds, steal=redelivered):
                raise InProgress(f"request {request.request_id} is being generated by another worker")
        try:
            report = self._generate_and_store(request)
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.release(request.request_id, owner)
            raise
        with timed("cache"):
            cache_report(self.cache, report)
        return success(request, report["report_id"])

    def _generate_and_store(self, request: ReportGenerationRequest) -> dict:
        """The seed's flow from the input cache to the stored report, under this message's claim."""
        document = request.model_dump(mode="json")
        with timed("cache"):
            previous = remember_input(self.cache, request.user_id, document)
        with timed("user"):
            ensure_user(self.store, request.user_id)
        categories = categories_for(request)
        with timed("knowledge"):
            entries = knowledge_for(self.knowledge, categories)
        with timed("llm"):
            generated = generate(self.writer, request, entries)
        same_request = previous is not None and previous.get("request_id") == request.request_id  # a retry
        input_changed = None if previous is None or same_request else _clinical(previous) != _clinical(document)
        with timed("store"):
            return store_report(self.store, request, generated, categories, entries, input_changed)
