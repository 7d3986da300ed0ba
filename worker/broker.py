"""Broker connections: their parameters, reconnect backoff, error hints, and short-lived channels for the CLI tools."""

import contextlib
import random
from typing import Iterator

import pika
from pika.exceptions import AMQPChannelError

from worker import frames
from worker.settings import Settings
from worker.tls import ssl_options


def connection_parameters(settings: Settings, purpose: str = "") -> pika.URLParameters:
    """How every connection of ours reaches the broker; `purpose` names it in the management UI."""
    params = pika.URLParameters(settings.rabbitmq_url)
    if "heartbeat=" not in settings.rabbitmq_url:
        params.heartbeat = settings.heartbeat_seconds
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": f"{settings.name} {purpose}".strip()}
    params.ssl_options = ssl_options(settings)
    return params


@contextlib.contextmanager
def channel(settings: Settings, confirm: bool = True) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = frames.connect(connection_parameters(settings, "cli"))
    try:
        ch = connection.channel()
        if confirm:
            ch.confirm_delivery()
        yield ch
    finally:
        if connection.is_open:
            connection.close()


CONSUMER_TIMEOUT_HINT = (
    "the broker closed the channel: if the reply says 'delivery acknowledgement timed out', "
    "a message waited longer than RabbitMQ's consumer_timeout between delivery and ack; lower "
    "RABBITMQ_PREFETCH_COUNT (towards WORKER_THREADS) or LLM_TIMEOUT_SECONDS, or raise consumer_timeout"
)


class Backoff:
    """Exponential delays with full jitter between `first` and `cap` seconds."""

    def __init__(self, first: float = 0.25, cap: float = 2.0):
        self.first, self.cap, self.attempts = first, cap, 0

    def next(self) -> float:
        self.attempts += 1
        return random.uniform(self.first, min(self.cap, self.first * 2 ** self.attempts))

    def reset(self) -> None:
        self.attempts = 0


def describe_error(exc: BaseException) -> str:
    """The error for a log line, with a hint when the broker closed the channel for a late ack."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AMQPChannelError) and "ack" in str(exc).lower():
        text += " | hint: " + CONSUMER_TIMEOUT_HINT
    return text

