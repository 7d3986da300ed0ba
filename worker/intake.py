"""What a message must be before the pipeline takes it: small enough, signed, JSON, the contract's shape."""

import hashlib
import hmac
import json
import re

from pydantic import ValidationError

from worker.errors import InvalidRequest
from worker.schemas import ReportGenerationRequest

ID_SCAN_BYTES = 64 * 1024


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


def validate(body: bytes, max_bytes: int, content_type: str | None = None, signature: str | None = None,
             signing_key: str = "") -> ReportGenerationRequest:
    """The request in `body`, or InvalidRequest (with the ids when they can be read) saying what is wrong.

    The size is checked before anything reads the body; the body is parsed once on the way to success."""
    if len(body) > max_bytes:
        raise InvalidRequest(f"message is {len(body)} bytes, more than the limit of {max_bytes}",
                             *scan_ids(body[:ID_SCAN_BYTES]))
    check_signature(body, signature, signing_key)
    if content_type and not _is_json(content_type):
        raise InvalidRequest(f"content type {content_type[:64]!r} is not JSON", *identify(body))
    try:
        text = body.decode("utf-8")
        return ReportGenerationRequest.model_validate_json(text)
    except UnicodeDecodeError:
        raise InvalidRequest("message body is not UTF-8") from None
    except ValidationError as exc:
        raise InvalidRequest(_summarize(exc), *identify(body)) from None
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
