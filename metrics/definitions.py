"""Every metric report-worker records; the names and labels are the contract with dashboards."""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MESSAGES = Counter(
    "report_worker_messages", "Request messages by how they ended.", ["outcome"]
)
PROCESSING_SECONDS = Histogram(
    "report_worker_processing_seconds", "Message received to acked.", buckets=LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "report_worker_stage_seconds", "Time spent per pipeline stage.", ["stage"], buckets=STAGE_BUCKETS
)
LLM_REQUESTS = Counter(
    "report_worker_llm_requests", "LLM calls by outcome.", ["model", "outcome"]
)
LLM_SECONDS = Histogram(
    "report_worker_llm_request_seconds", "LLM call duration.", ["model"], buckets=LATENCY_BUCKETS
)
LLM_TOKENS = Counter("report_worker_llm_tokens", "LLM tokens used.", ["model", "type"])
LLM_COST = Counter("report_worker_llm_cost_usd", "Estimated LLM spend in US dollars.", ["model"])
CACHE_REQUESTS = Counter(
    "report_worker_cache_requests", "Cache lookups and writes by result.", ["cache", "result"]
)
INFLIGHT = Gauge(
    "report_worker_inflight_messages", "Messages being processed now.", multiprocess_mode="livesum"
)
BROKER_RECONNECTS = Counter("report_worker_broker_reconnects", "Reconnections to RabbitMQ.")
REDELIVERIES = Counter(
    "report_worker_redeliveries", "Deliveries the broker marked as redelivered (an earlier consumer did not ack)."
)
INTAKE_PAUSED = Gauge(
    "report_worker_intake_paused", "Children that stopped taking messages, by why (1 while any is paused).",
    ["reason"], multiprocess_mode="livemax",
)

# The fleet's LLM limiter (worker/ratelimit.py). Gauges are labelled, so a process that never uses the limiter
# (the parent, a child without limits) creates no file for them. The budget holds a fleet-wide figure read from
# Redis: each child reports what it last saw and the freshest reading wins (livemostrecent), never a sum.
LIMITER_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
LIMITER_GRANTED = Counter(
    "report_worker_llm_limiter_granted", "LLM permits granted: type=requests (calls) or tokens (estimated).", ["type"]
)
LIMITER_WAIT = Histogram(
    "report_worker_llm_limiter_wait_seconds", "Time a granted LLM call waited for its permit.",
    buckets=LIMITER_WAIT_BUCKETS,
)
LIMITER_THROTTLED = Counter(
    "report_worker_llm_limiter_throttled",
    "LLM calls not started: no permit before the message's deadline, or the budget is spent (reason).", ["reason"],
)
LIMITER_COOLDOWNS = Counter(
    "report_worker_llm_limiter_cooldowns", "Fleet-wide cool-downs set after an HTTP 429 from the LLM."
)
LIMITER_FALLBACKS = Counter(
    "report_worker_llm_limiter_fallbacks", "Times a child lost Redis and kept to its share of each limit.", ["reason"]
)
LIMITER_FALLBACK = Gauge(
    "report_worker_llm_limiter_fallback", "1 while a child keeps to its own share because Redis is away (reason).",
    ["reason"], multiprocess_mode="livemax",
)
BUDGET = Gauge(
    "report_worker_llm_budget_usd",
    "The day's LLM budget: type=spent (the fleet's spend this UTC day, from Redis), budget, remaining.",
    ["type"], multiprocess_mode="livemostrecent",
)
