"""One settings object from defaults, a TOML file (no secrets), credentials, environment, CLI flags; validated once."""

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit


from worker.checks import (  # noqa: F401 (SettingsError, parse_prices and redact_url are part of this module's API)
    SettingsError, _positive, _non_negative, _scheme, _urls, split_urls, redact_url, _one_of, _delays, _priority,
    _port, parse_prices, _prices, _write_concern, _at_least, _between, _patient_fields, _file,
)


def _setting(env, default, check=None, **metadata):
    return field(default=default, metadata={"env": env, "check": check, **metadata})


@dataclass(frozen=True)
class Settings:
    # one node's URL, or a cluster's nodes: "amqp://u:p@node1:5672/,amqp://u:p@node2:5672/" (see rabbitmq_urls)
    rabbitmq_url: str = _setting("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/", _urls("amqp", "amqps"))
    rabbitmq_tls_ca_file: str = _setting("RABBITMQ_TLS_CA_FILE", "", _file)  # amqps: CA of the server ("": system CAs)
    rabbitmq_tls_cert_file: str = _setting("RABBITMQ_TLS_CERT_FILE", "", _file)  # amqps: client certificate
    rabbitmq_tls_key_file: str = _setting("RABBITMQ_TLS_KEY_FILE", "", _file)  # amqps: its private key
    request_queue: str = _setting("RABBITMQ_REQUEST_QUEUE", "report_generation_requests")
    response_queue: str = _setting("RABBITMQ_RESPONSE_QUEUE", "report_generation_responses")
    dlq: str = _setting("RABBITMQ_DLQ", "report_generation_requests_dlq")
    prefetch_count: int = _setting("RABBITMQ_PREFETCH_COUNT", 0, _non_negative)  # 0: same as worker_threads
    queue_type: str = _setting("RABBITMQ_QUEUE_TYPE", "classic", _one_of("classic", "quorum"))
    max_priority: int = _setting("RABBITMQ_MAX_PRIORITY", 0, _priority)
    delivery_limit: int = _setting("RABBITMQ_DELIVERY_LIMIT", 20, _non_negative)  # quorum: x-delivery-limit; 0 off
    heartbeat_seconds: int = _setting("RABBITMQ_HEARTBEAT", 60, _non_negative)
    response_ttl_seconds: int = _setting("RESPONSE_TTL_SECONDS", 86400, _positive)
    redis_url: str = _setting("REDIS_URL", "redis://localhost:6379/0", _scheme("redis", "rediss", "unix"))
    redis_key_prefix: str = _setting("REDIS_KEY_PREFIX", "")
    redis_cache_ttl: int = _setting("REDIS_CACHE_TTL", 3600, _positive)
    redis_cache_input: bool = _setting("REDIS_CACHE_INPUT", True)  # false: no patient input in Redis
    report_cache_ttl: int = _setting("REPORT_CACHE_TTL", 86400, _positive)
    mongodb_url: str = _setting("MONGODB_URL", "mongodb://localhost:27017", _scheme("mongodb", "mongodb+srv"))
    mongodb_database: str = _setting("MONGODB_DATABASE", "report_worker")
    mongodb_timeout_seconds: float = _setting("MONGODB_TIMEOUT_SECONDS", 5.0, _positive)
    mongodb_write_concern: str = _setting("MONGODB_WRITE_CONCERN", "majority", _write_concern)  # reports: w=
    mongodb_journal: bool = _setting("MONGODB_JOURNAL", True)  # reports are acknowledged once journaled
    claim_lease_seconds: float = _setting("CLAIM_LEASE_SECONDS", 30.0, _at_least(3.0))  # renewed every third
    openai_api_key: str = _setting("OPENAI_API_KEY", "", secret=True)
    openai_base_url: str = _setting("OPENAI_BASE_URL", "")
    openai_model: str = _setting("OPENAI_MODEL", "gpt-4o")
    llm_timeout_seconds: float = _setting("LLM_TIMEOUT_SECONDS", 120.0, _positive)
    llm_max_retries: int = _setting("LLM_MAX_RETRIES", 1, _non_negative)
    llm_prices: str = _setting("LLM_PRICES", "", _prices)  # "model=in:out,..." USD per 1M tokens
    llm_temperature: float = _setting("LLM_TEMPERATURE", 0.2, _between(0.0, 2.0))
    llm_max_tokens: int = _setting("LLM_MAX_TOKENS", 4000, _positive)
    llm_structured_output: str = _setting("LLM_STRUCTURED_OUTPUT", "json_schema", _one_of("json_schema", "json_object"))
    llm_patient_fields: str = _setting("LLM_PATIENT_FIELDS", "", _patient_fields)  # "": age, sex, clinical fields
    report_disclaimer: str = _setting("REPORT_DISCLAIMER", "")  # "": the built-in one, when the request has none
    knowledge_cache_seconds: float = _setting("KNOWLEDGE_CACHE_SECONDS", 60.0, _non_negative)
    # fleet-wide LLM limits, shared in Redis by every process on every VM (docs/rate-limits.md); 0 = off
    llm_rpm: float = _setting("LLM_RPM", 0.0, _non_negative)  # requests per minute, the whole fleet
    llm_tpm: float = _setting("LLM_TPM", 0.0, _non_negative)  # tokens per minute (estimate: prompt + max tokens)
    llm_max_concurrency: int = _setting("LLM_MAX_CONCURRENCY", 0, _non_negative)  # calls in flight, the fleet
    llm_budget_usd_per_day: float = _setting("LLM_BUDGET_USD_PER_DAY", 0.0, _non_negative)  # per UTC day
    llm_limit_share: float = _setting("LLM_LIMIT_SHARE", 0.0, _between(0.0, 1.0))  # Redis away; 0: 1/fleet procs
    llm_fleet_processes: int = _setting("LLM_FLEET_PROCESSES", 0, _non_negative)  # 0: WORKER_PROCESSES
    llm_limit_burst_seconds: float = _setting("LLM_LIMIT_BURST_SECONDS", 0.5, _between(0.001, 60.0))
    llm_limit_lease_seconds: float = _setting("LLM_LIMIT_LEASE_SECONDS", 0.0, _non_negative)  # 0: timeout + 30
    llm_cooldown_seconds: float = _setting("LLM_COOLDOWN_SECONDS", 1.0, _positive)  # a 429 without retry-after
    llm_intake_wait_seconds: float = _setting("LLM_INTAKE_WAIT_SECONDS", 60.0, _non_negative)  # 0: never pause
    worker_threads: int = _setting("WORKER_THREADS", 8, _positive)
    worker_name: str = _setting("WORKER_NAME", "")
    max_retries: int = _setting("MAX_RETRIES", 3, _non_negative)
    retry_delays: tuple[float, ...] = _setting("RETRY_DELAYS", (5.0, 30.0, 300.0), _delays)
    max_message_bytes: int = _setting("MAX_MESSAGE_BYTES", 1024 * 1024, _positive)
    request_signing_key: str = _setting("REQUEST_SIGNING_KEY", "", secret=True)  # set: requests must be signed
    # queue names (fnmatch patterns) a request's reply_to may name; "": the response queue and direct reply-to
    reply_to_allowed: str = _setting("REPLY_TO_ALLOWED", "")
    poison_crash_limit: int = _setting("POISON_CRASH_LIMIT", 3, _positive)  # dead-letter after killing K children
    intake_probe_seconds: float = _setting("INTAKE_PROBE_SECONDS", 15.0, _positive)  # paused: probe this often
    graceful_timeout: float = _setting("GRACEFUL_TIMEOUT", 60.0, _non_negative)
    connect_timeout: float = _setting("CONNECT_TIMEOUT", 30.0, _positive)
    # the supervisor (`report-worker run`)
    worker_processes: int = _setting("WORKER_PROCESSES", os.cpu_count() or 1, _positive)
    worker_timeout: float = _setting("WORKER_TIMEOUT", 30.0, _positive)  # a child silent this long is killed
    # a child held back by the broker (flow control, late confirms) this long is replaced; above pika's 300 s
    worker_blocked_timeout: float = _setting("WORKER_BLOCKED_TIMEOUT", 600.0, _positive)
    max_tasks_per_child: int = _setting("MAX_TASKS_PER_CHILD", 0, _non_negative)  # 0: never recycle for tasks
    max_tasks_jitter: int = _setting("MAX_TASKS_JITTER", 0, _non_negative)
    max_memory_per_child: int = _setting("MAX_MEMORY_PER_CHILD", 0, _non_negative)  # MB of RSS; 0: off
    restart_limit: int = _setting("RESTART_LIMIT", 10, _positive)
    restart_window: float = _setting("RESTART_WINDOW", 60.0, _positive)
    rabbitmq_consumer_timeout: float = _setting("RABBITMQ_CONSUMER_TIMEOUT", 1800.0, _non_negative)  # 0: off
    log_level: str = _setting("LOG_LEVEL", "INFO", _one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    metrics_port: int = _setting("METRICS_PORT", 9810, _port)  # 0: no metrics/health endpoint
    metrics_bind: str = _setting("METRICS_BIND", "127.0.0.1")

    @property
    def rabbitmq_urls(self) -> tuple[str, ...]:
        """The broker nodes RABBITMQ_URL lists, in order (one entry for a single broker)."""
        return split_urls(self.rabbitmq_url)

    @property
    def prefetch(self) -> int:
        return self.prefetch_count or self.worker_threads

    @property
    def llm_limited(self) -> bool:
        """Whether any fleet-wide LLM limit is on (else no Redis round trip per call)."""
        return bool(self.llm_rpm or self.llm_tpm or self.llm_max_concurrency or self.llm_budget_usd_per_day)

    @property
    def llm_share(self) -> float:
        """This process's part of each limit while Redis is away."""
        return self.llm_limit_share or 1.0 / (self.llm_fleet_processes or self.worker_processes)

    @property
    def name(self) -> str:
        return self.worker_name or f"report-worker@{socket.gethostname()}"

    @property
    def reply_to_patterns(self) -> tuple[str, ...]:
        given = tuple(p.strip() for p in self.reply_to_allowed.split(",") if p.strip())
        return given or (self.response_queue, "amq.rabbitmq.reply-to*")

    def retry_queue(self, delay: float) -> str:
        return f"{self.request_queue}.retry.{_delay_label(delay)}"

    def retry_delay(self, attempt: int) -> float:
        """Delay before attempt number `attempt` (2 = first retry)."""
        return self.retry_delays[min(attempt - 2, len(self.retry_delays) - 1)]

    def redacted(self) -> dict[str, Any]:
        """Every setting, safe to log: secrets masked, passwords removed from URLs."""
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                value = redact_url(value)
            shown[f.name] = value
        return shown


def _delay_label(delay: float) -> str:
    return f"{delay:g}s"


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _convert(f: dataclasses.Field, raw: Any) -> Any:
    name = f.metadata["env"]
    kind = f.type
    try:
        if kind is bool:
            return _boolean(raw)
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
        if kind == tuple[float, ...]:
            items = raw.split(",") if isinstance(raw, str) else raw
            return tuple(float(x) for x in items if str(x).strip())
        return str(raw).strip()
    except (TypeError, ValueError):
        raise SettingsError(f"{name} has an invalid value {raw!r} (expected {getattr(kind, '__name__', 'a list of numbers')})") from None


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML file whose keys are the environment names, upper or lower case."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {path}: not valid TOML ({exc})") from None
    return {key.upper(): value for key, value in data.items()}


ENV_NAMES = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
# Files in $CREDENTIALS_DIRECTORY (systemd LoadCredential=) that load() reads, named like the fields.
CREDENTIALS = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret")) + (
    "rabbitmq_url", "redis_url", "mongodb_url")


def _holds_secret(f: dataclasses.Field, raw: Any) -> bool:
    """A secret setting, or a URL with a password: these never come from the config file."""
    if f.metadata.get("secret"):
        return True
    try:
        return isinstance(raw, str) and "://" in raw and any(urlsplit(u).password is not None for u in raw.split(","))
    except ValueError:
        return False


def read_credentials(directory: str) -> dict[str, str]:
    """The credentials systemd passed (LoadCredential=), by field name; absent files are skipped."""
    found = {}
    for name in CREDENTIALS:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as handle:
                found[name] = handle.read().strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SettingsError(f"credential {name} ({path}): {exc.strerror}") from None
    return found


def load(
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings; `overrides` are CLI flags keyed by field name.

    Later sources win: defaults < config file < credentials in $CREDENTIALS_DIRECTORY < environment
    < overrides. Secrets (and URLs with a password) in the config file are refused.
    """
    environ = os.environ if environ is None else environ
    fields_by_name = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if config_file:
        for key, raw in read_file(config_file).items():
            if key not in ENV_NAMES:
                raise SettingsError(f"--config {config_file}: unknown setting {key}")
            if _holds_secret(ENV_NAMES[key], raw):
                raise SettingsError(
                    f"--config {config_file}: {key} is a secret (or a URL with a password) and does not belong in "
                    f"the config file; set it in the environment (e.g. /etc/report-worker/env) or as the systemd "
                    f"credential {ENV_NAMES[key].name}")
            values[ENV_NAMES[key].name] = _convert(ENV_NAMES[key], raw)
    if environ.get("CREDENTIALS_DIRECTORY"):
        for name, raw in read_credentials(environ["CREDENTIALS_DIRECTORY"]).items():
            values[name] = _convert(fields_by_name[name], raw)
    for key, f in ENV_NAMES.items():
        if key in environ:
            values[f.name] = _convert(f, environ[key])
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _convert(fields_by_name[name], raw)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    for f in dataclasses.fields(settings):
        check = f.metadata.get("check")
        if check:
            check(getattr(settings, f.name), f.metadata["env"])
    for f in dataclasses.fields(settings):
        if f.type is str and f.name.endswith(("queue", "dlq")) and not getattr(settings, f.name):
            raise SettingsError(f"{f.metadata['env']} must not be empty")
    if not settings.openai_base_url and not settings.openai_api_key:
        raise SettingsError("OPENAI_API_KEY is required when OPENAI_BASE_URL is not set")
    if settings.openai_base_url:
        _scheme("http", "https")(settings.openai_base_url, "OPENAI_BASE_URL")
    tls_files = settings.rabbitmq_tls_ca_file or settings.rabbitmq_tls_cert_file or settings.rabbitmq_tls_key_file
    if tls_files and urlsplit(settings.rabbitmq_url).scheme != "amqps":
        raise SettingsError("RABBITMQ_TLS_CA_FILE/_CERT_FILE/_KEY_FILE need an amqps:// RABBITMQ_URL")
    if settings.rabbitmq_tls_key_file and not settings.rabbitmq_tls_cert_file:
        raise SettingsError("RABBITMQ_TLS_KEY_FILE needs RABBITMQ_TLS_CERT_FILE (the client certificate)")
    if settings.queue_type == "quorum" and 0 < settings.delivery_limit <= settings.poison_crash_limit:
        raise SettingsError("RABBITMQ_DELIVERY_LIMIT must be greater than POISON_CRASH_LIMIT with quorum queues "
                            "(or 0, no limit)")
    if len(set(settings.retry_delays)) != len(settings.retry_delays):
        raise SettingsError("RETRY_DELAYS must not repeat a delay")
    if settings.llm_limited and settings.llm_intake_wait_seconds and settings.rabbitmq_consumer_timeout and \
            settings.llm_intake_wait_seconds >= settings.rabbitmq_consumer_timeout:
        raise SettingsError("LLM_INTAKE_WAIT_SECONDS must be shorter than RABBITMQ_CONSUMER_TIMEOUT")
    if settings.worker_timeout < 1:
        raise SettingsError("WORKER_TIMEOUT must be at least 1 second (a child's loop beats every 0.5 s)")
