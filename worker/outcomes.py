"""How a delivery ends, decided from the pipeline's result or error class alone; the consumer carries it out."""

import fnmatch
import functools
import hashlib
import hmac
import time
import uuid
from datetime import datetime, timezone

import pika

from worker.clients import llm_deadline
from worker.delivery import ATTEMPT_HEADER, CLAIM_HEADER, SIGNATURE_HEADER, Delivery, Publish, Settlement
from worker.errors import (
    InProgress, InvalidRequest, Paused, PermanentError, TransientError, describe, retryable,
)
from worker.frames import undecodable
from worker.intake import ID_SCAN_BYTES, readable_ids, scan_ids, signed, validate
from worker.logs import EventLog
from worker.pipeline import Pipeline
from worker.schemas import ReportGenerationResponse
from worker.settings import Settings

log = EventLog(__name__)
MAX_REASON_CHARS = 1000
RETRY_SIGNATURE = "x-retry-signature"


def handle(delivery: Delivery, pipeline: Pipeline, settings: Settings) -> Settlement:
    """Decide how one delivery ends (on a worker thread). Never raises: a bug dead-letters it as `crash`."""
    try:
        return decide(delivery, pipeline, settings)
    except Exception as exc:
        log.error("handler_crashed", exc_info=exc)
        return give_up(delivery, settings, exc, "failed", *answerable_ids(delivery, settings), death_reason="crash")


def decide(delivery: Delivery, pipeline: Pipeline, settings: Settings) -> Settlement:
    started = time.perf_counter()
    attempt, claim = retry_state(delivery, settings)
    if delivery.crashes >= settings.poison_crash_limit:  # it killed its process that often: poison
        return give_up(delivery, settings, PermanentError(f"{delivery.crashes} worker processes died handling it",
                                                          code="worker_crashed"),
                       "dead_lettered", *answerable_ids(delivery, settings), death_reason="crashed_worker")
    try:  # undecodable: its headers could not be read; pika would have dropped the connection (worker.frames)
        request = validate(delivery.body, settings.max_message_bytes, delivery.properties.content_type,
                           delivery.header(SIGNATURE_HEADER), settings.request_signing_key,
                           undecodable(delivery.properties))
    except InvalidRequest as exc:
        outcome = "rejected" if exc.code == "bad_signature" else "invalid"
        return give_up(delivery, settings, exc, outcome, exc.request_id, exc.user_id)
    ids = (request.request_id, request.user_id)
    try:
        response = pipeline.process(request, claim=claim, deadline=llm_deadline(settings, delivery.received_at))
    except Paused as exc:  # a refused key, a missing model, a spent budget: nothing fails, intake stops
        log.warning("message_requeued_paused", request_id=request.request_id, reason=exc.code)
        return Settlement(requeue=True, outcome="paused", pause=exc.code)
    except InProgress as exc:
        return retry(delivery, settings, attempt, exc, claim, request.request_id, shortest=True)
    except PermanentError as exc:
        return give_up(delivery, settings, exc, "failed", *ids)
    except Exception as exc:
        if not isinstance(exc, TransientError):
            log.error("unexpected_error", exc_info=exc, attempt=attempt)
        if attempt <= settings.max_retries:
            return retry(delivery, settings, attempt + 1, exc, claim, request.request_id)
        return give_up(delivery, settings, exc, "dead_lettered", *ids)
    log.info("report_done", request_id=response.request_id, report_id=response.report_id,
             attempt=attempt, seconds=round(time.perf_counter() - started, 4))
    return Settlement((respond(delivery, settings, response),), outcome="success",
                      otherwise=functools.partial(unconfirmed, delivery, settings, attempt, claim, ids))


def unconfirmed(delivery: Delivery, settings: Settings, attempt: int, claim: str, ids: tuple[str, str]) -> Settlement:
    """A success whose response the broker refused: the next attempt (its claim finds the stored report and
    answers again), or the DLQ once the attempts are spent. Built only when that happens."""
    exc = TransientError("the broker did not confirm the response", code="retries_exhausted")
    if attempt <= settings.max_retries:
        return retry(delivery, settings, attempt + 1, exc, claim, ids[0], announce=False)
    return give_up(delivery, settings, exc, "dead_lettered", *ids, announce=False)


def answerable_ids(delivery: Delivery, settings: Settings) -> tuple[str, str]:
    """The ids a `failed` response may name for a message that did not validate: none for an unsigned one
    when signing is on; for a too large one, only what its first bytes say."""
    body = delivery.body
    if settings.request_signing_key and not signed(body, delivery.header(SIGNATURE_HEADER), settings.request_signing_key):
        return "", ""
    return scan_ids(body[:ID_SCAN_BYTES]) if len(body) > settings.max_message_bytes else readable_ids(body)


def retry_state(delivery: Delivery, settings: Settings) -> tuple[int, str]:
    """The attempt number and claim token, trusted only on a message back from one of our delay queues (the
    broker's x-death names the queue; with a signing key, our own signature of the two headers must match
    too, since a publisher can write x-death itself); anything else starts at attempt 1 with a new claim."""
    deaths = delivery.headers.get("x-death")
    last = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    queue = last.get("queue")
    queue = queue.decode("utf-8", "replace") if isinstance(queue, bytes) else queue
    attempt, claim = delivery.attempt, delivery.header(CLAIM_HEADER) or ""
    if queue in {settings.retry_queue(delay) for delay in settings.retry_delays} and (
            not settings.request_signing_key or hmac.compare_digest(
                retry_signature(settings, delivery.body, attempt, claim), delivery.header(RETRY_SIGNATURE) or "")):
        return attempt, claim or uuid.uuid4().hex
    return 1, uuid.uuid4().hex


def retry_signature(settings: Settings, body: bytes, attempt: int, claim: str) -> str:
    """HMAC of a retry's attempt and claim headers under the signing key, bound to the body."""
    digest = hashlib.sha256(body).hexdigest()
    return hmac.new(settings.request_signing_key.encode(), f"{attempt}:{claim}:{digest}".encode(),
                    hashlib.sha256).hexdigest()


def reply_queue(delivery: Delivery, settings: Settings) -> str:
    """The request's reply_to when REPLY_TO_ALLOWED admits it and it is not one of our own queues."""
    reply_to = delivery.properties.reply_to or ""
    ours = {settings.request_queue, settings.dlq, *(settings.retry_queue(d) for d in settings.retry_delays)}
    if not reply_to or reply_to in ours or not any(fnmatch.fnmatchcase(reply_to, p) for p in settings.reply_to_patterns):
        if reply_to and reply_to != settings.response_queue:
            log.warning("reply_to_refused", reply_to=reply_to[:200])
        return settings.response_queue
    return reply_to


def respond(delivery: Delivery, settings: Settings, response: ReportGenerationResponse) -> Publish:
    """The response goes to the request's (allowed) reply_to, else to the response queue."""
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        correlation_id=delivery.properties.correlation_id,
        timestamp=int(time.time()),
        expiration=str(settings.response_ttl_seconds * 1000),
    )
    queue = reply_queue(delivery, settings)
    return Publish(queue, response.to_bytes(), properties,
                   fallback_key=settings.response_queue if queue != settings.response_queue else None)


def retry(delivery: Delivery, settings: Settings, attempt: int, exc: BaseException, claim: str,
          request_id: str, shortest: bool = False, announce: bool = True) -> Settlement:
    """Park a copy in the delay queue for `attempt`; it comes back to the request queue after the delay.

    The copy carries the claim token, so it may take back a claim this attempt could not release.
    `announce` False: a path prepared in case a publish is refused (the settler logs it if taken)."""
    delay = min(settings.retry_delays) if shortest else settings.retry_delay(attempt)
    if announce:
        log.warning("retry_scheduled", attempt=attempt, delay_seconds=delay, error=_reason(exc), request_id=request_id)
    headers = {ATTEMPT_HEADER: attempt, CLAIM_HEADER: claim}
    if settings.request_signing_key:
        headers[RETRY_SIGNATURE] = retry_signature(settings, delivery.body, attempt, claim)
    properties = delivery.copy_properties(**headers)
    publish = Publish(settings.retry_queue(delay), delivery.body, properties)
    refused = TransientError(f"the delay queue refused the retry: {_reason(exc)}", code=getattr(exc, "code", None))
    return Settlement((publish,), outcome="retried", otherwise=functools.partial(
        give_up, delivery, settings, refused, "dead_lettered", request_id, "", announce=False))


def give_up(delivery: Delivery, settings: Settings, exc: BaseException, outcome: str,
            request_id: str, user_id: str, death_reason: str = "", announce: bool = True) -> Settlement:
    """A `failed` response (when the ids can be read) and the original message into the DLQ."""
    reason = _reason(exc)
    code = getattr(exc, "code", "internal_error")
    if announce:
        log.warning("dead_lettered", outcome=outcome, attempt=delivery.attempt, error=reason, error_code=code,
                    request_id=request_id)
    headers = {
        "x-death-reason": death_reason or outcome,
        "x-error": reason,
        "x-error-code": code,
        "x-error-class": type(exc).__name__,
        "x-attempts": delivery.attempt,
        "x-original-queue": settings.request_queue,
        "x-failed-at": datetime.now(timezone.utc).isoformat(),
        "x-worker": settings.name,
    }
    dead_letter = Settlement((Publish(settings.dlq, delivery.body, delivery.copy_properties(**headers)),),
                             outcome=outcome)
    if not request_id:
        return dead_letter
    failed = ReportGenerationResponse(request_id=request_id, user_id=user_id, status="failed", error_code=code,
                                      retryable=retryable(code), error_message=getattr(exc, "public", "") or describe(code))
    # a response nobody takes (the response queue full and refusing) must not keep the message from the DLQ
    return Settlement((respond(delivery, settings, failed), *dead_letter.publishes), outcome=outcome,
                      otherwise=lambda: dead_letter)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:MAX_REASON_CHARS]
