"""What a message must be before the pipeline takes it: small enough, signed, JSON, the contract's shape, storable."""

import hashlib
import hmac
import json
import math
import re
from typing import Any

from pydantic import ValidationError

from worker.errors import InvalidRequest
from worker.schemas import ID_PATTERN, ReportGenerationRequest

ID_SCAN_BYTES = 64 * 1024
MAX_DEPTH = 48                      # BSON allows 100 levels; the stored report wraps the input in a few
INT64 = (-2 ** 63, 2 ** 63 - 1)
_ID = re.compile(ID_PATTERN)


def identify(body: bytes | dict) -> tuple[str, str]:
    """Best-effort request_id and user_id (strings or integers) of a message that may be invalid."""
    data = body
    if not isinstance(body, dict):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return "", ""
    if not isinstance(data, dict):
        return "", ""
    return _id_of(data.get("request_id")), _id_of(data.get("user_id"))


def _id_of(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if isinstance(value, str) and _ID.match(value) else ""


def readable_ids(body: bytes) -> tuple[str, str]:
    """The ids of a message that is not a valid request: parsed when it is JSON, else looked for in its head."""
    ids = identify(body)
    return ids if ids[0] else scan_ids(body[:ID_SCAN_BYTES])


def scan_ids(head: bytes) -> tuple[str, str]:
    """Ids of a message too large to parse, looked for in its first bytes only."""
    found = []
    for key in (b"request_id", b"user_id"):
        match = re.search(rb'"' + key + rb'"\s*:\s*(?:"([A-Za-z0-9._:@-]{1,128})"|([0-9]{1,20})\b)', head)
        found.append((match.group(1) or match.group(2)).decode() if match else "")
    return found[0], found[1]


def signed(body: bytes, signature: str | None, key: str) -> bool:
    """True when `signature` is `sha256=<hex HMAC-SHA256 of the body under key>` (the prefix is optional)."""
    if not signature:
        return False
    expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.removeprefix("sha256=").strip().lower())


def validate(body: bytes, max_bytes: int, content_type: str | None = None, signature: str | None = None,
             signing_key: str = "", undecodable: str | None = None) -> ReportGenerationRequest:
    """The request in `body`, or InvalidRequest (with the ids when they can be read) saying what is wrong.

    The size is checked before anything reads the body; the body is parsed once on the way to success.
    With a signing key, only a correctly signed message is ever answered: a too large, unsigned or wrongly
    signed one carries no ids. `undecodable` says why pika could not read the message's headers."""
    if len(body) > max_bytes:
        ids = ("", "") if signing_key else scan_ids(body[:ID_SCAN_BYTES])
        raise InvalidRequest(f"message is {len(body)} bytes, more than the limit of {max_bytes}", *ids,
                             code="too_large")
    if signing_key and not signed(body, signature, signing_key):
        reason = "request signature does not match" if signature else "request is not signed (x-signature missing)"
        raise InvalidRequest(reason, code="bad_signature")
    if undecodable:
        raise InvalidRequest(f"message properties: {undecodable}", *readable_ids(body), code="undecodable_headers")
    if content_type and not _is_json(content_type):
        raise InvalidRequest(f"content type {content_type[:64]!r} is not JSON", *readable_ids(body),
                             code="unsupported_content_type")
    try:
        request = ReportGenerationRequest.model_validate_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("message body is not UTF-8", *scan_ids(body[:ID_SCAN_BYTES]), code="invalid_json") from None
    except ValidationError as exc:
        code = "invalid_json" if any(e["type"] == "json_invalid" for e in exc.errors()) else "invalid_field"
        raise InvalidRequest(_summarize(exc), *readable_ids(body), code=code) from None
    except RecursionError:
        raise InvalidRequest("message JSON is nested too deeply", code="invalid_json") from None
    problem = unstorable(dict(request))  # the fields as parsed, without a dump of their own
    if problem:
        raise InvalidRequest(f"invalid request: {problem}", request.request_id, request.user_id,
                             code="unstorable_input")
    return request


def unstorable(value: Any, where: str = "", depth: int = 0) -> str:
    """Why MongoDB could not store `value` (an integer beyond 64 bits, a key with NUL or a leading `$`,
    a string that is not valid UTF-8, nesting too deep), naming the place but never the value; '' if it can."""
    return "" if storable(value, depth) else _problem(value, where, depth)


def storable(value: Any, depth: int = 0) -> bool:
    """Whether MongoDB can store `value`: the checks of `unstorable`, without naming places (the common case)."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, str):
        if value.isascii():  # ASCII is valid UTF-8
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key or key.startswith("$") or not storable(item, depth + 1):
                return False
        return True
    if isinstance(value, list):
        for item in value:
            if not storable(item, depth + 1):
                return False
        return True
    if isinstance(value, bool):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    return True


def _problem(value: Any, where: str = "", depth: int = 0) -> str:
    """`unstorable`'s answer, found by walking again with the places named."""
    if depth > MAX_DEPTH:
        return f"{where or 'message'}: nested more than {MAX_DEPTH} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            place = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str) or "\x00" in key or key.startswith("$"):
                return f"{where or 'message'}: a key MongoDB cannot store (it holds NUL or starts with $)"
            problem = _problem(item, place, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = _problem(item, f"{where}.{index}", depth + 1)
            if problem:
                return problem
    elif isinstance(value, bool):
        return ""
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{where}: a number that is not finite (NaN or Infinity is not JSON)"
    elif isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        return f"{where}: integer beyond 64 bits"
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text that is not valid UTF-8"
    return ""


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in ("application/json", "text/json") or kind.endswith("+json")


def _summarize(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "message"
        problems.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(problems)
