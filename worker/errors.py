"""The error classes the consumer decides on, and the stable `error_code` each one answers with.

Clients' exceptions are mapped to these where the client is called; the consumer decides retry,
dead-letter or respond from the class alone. `str(error)` is for our logs and the DLQ headers;
`public` is what a `failed` response says: no host names, no stack traces, no patient values.
"""

# The stable list of `error_code` values of `failed` responses (docs/INTEGRATION.md explains each).
CODES = {
    "invalid_json": (False, "the message body is not a JSON object in UTF-8"),
    "invalid_field": (False, "a field of the request is missing or has the wrong type or format"),
    "too_large": (False, "the message is larger than the worker accepts"),
    "unsupported_content_type": (False, "the message's content type is not JSON"),
    "undecodable_headers": (False, "the message's AMQP headers could not be decoded"),
    "unstorable_input": (False, "the request holds a value MongoDB cannot store"),
    "bad_signature": (False, "the message is not signed, or its signature does not match"),
    "request_id_conflict": (False, "this request_id was already used for another user or another input"),
    "llm_rejected": (False, "the LLM refused the request as invalid"),
    "llm_refused": (False, "the LLM declined to write this report"),
    "llm_truncated": (True, "the LLM's answer stopped at the token limit, also after one repair"),
    "llm_content_filter": (True, "the LLM provider's content filter stopped the answer, also after one repair"),
    "report_malformed": (True, "the LLM's answer was not a report of the required shape, also after one repair"),
    "report_incomplete": (True, "the LLM's report did not have one section per category, also after one repair"),
    "citation_invalid": (True, "the LLM's report cited its sources wrongly, also after one repair"),
    "unsafe_content": (True, "the LLM's report held links, contact details or markup, also after one repair"),
    "number_mismatch": (True, "the LLM's report stated numbers the input does not hold, also after one repair"),
    "llm_unavailable": (True, "the LLM did not answer in time, or kept failing, through every retry"),
    "retries_exhausted": (True, "a service the worker needs kept failing through every retry"),
    "internal_error": (True, "the worker failed unexpectedly on this message"),
    "worker_crashed": (False, "worker processes kept dying while handling this message"),
}


def retryable(code: str) -> bool:
    """Whether publishing the same request again later may succeed."""
    return CODES.get(code, (True, ""))[0]


def describe(code: str) -> str:
    return CODES.get(code, (True, "the request failed"))[1]


class ReportError(Exception):
    """Base of ours: a message for the logs, a stable `code` and a `public` text for the response."""

    code = "internal_error"

    def __init__(self, message: str = "", code: str | None = None, public: str | None = None):
        super().__init__(message)
        if code:
            self.code = code
        self.public = public or describe(self.code)


class TransientError(ReportError):
    """Worth another attempt later: a timeout, a 429/5xx, a store or broker that is away."""

    code = "retries_exhausted"


class InProgress(TransientError):
    """Another worker is generating this request's report right now; look again shortly."""


class PermanentError(ReportError):
    """No attempt will ever succeed (an LLM 400, a reused request_id, ...)."""


class Paused(ReportError):
    """Stop taking messages, fail none: the LLM key is refused (`llm_unauthorized`), the model does not exist
    (`llm_model_not_found`) or the day's budget is spent (`budget_exhausted`). The message goes back to the
    queue untouched; the process resumes by itself once a probe succeeds."""


class InvalidRequest(PermanentError):
    """The message itself is bad: not JSON, wrong types, too large. Ids are kept when readable.

    The reason is composed by us from field names and sizes, never from values, so it is public."""

    code = "invalid_field"

    def __init__(self, reason: str, request_id: str = "", user_id: str = "", code: str | None = None):
        super().__init__(reason, code, public=reason)
        self.request_id = request_id
        self.user_id = user_id
