"""The error classes the consumer decides on: retry later, wait for another worker, or give up now."""


class TransientError(Exception):
    """Worth another attempt later: a timeout, a 429/5xx, a store or broker that is away."""


class InProgress(TransientError):
    """Another worker is generating this request's report right now; look again shortly."""


class PermanentError(Exception):
    """No attempt will ever succeed (an LLM 400, say)."""


class InvalidRequest(PermanentError):
    """The message itself is bad: not JSON, wrong types, too large. Ids are kept when readable."""

    def __init__(self, reason: str, request_id: str = "", user_id: str = ""):
        super().__init__(reason)
        self.request_id = request_id
        self.user_id = user_id
