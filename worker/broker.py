"""Broker connections: their parameters, the nodes of a cluster in turn, reconnect backoff, error hints, and
short-lived channels for the CLI tools."""

import contextlib
import dataclasses
import random
import socket
import zlib
from typing import Iterator

import pika
from pika.exceptions import AMQPChannelError

from worker import frames
from worker.settings import Settings
from worker.tls import ssl_options


def connection_parameters(settings: Settings, purpose: str = "", url: str = "") -> pika.URLParameters:
    """How every connection of ours reaches the broker node at `url` (default: RABBITMQ_URL's first);
    `purpose` names it in the management UI."""
    url = url or settings.rabbitmq_urls[0]
    params = pika.URLParameters(url)
    if "heartbeat=" not in url:
        params.heartbeat = settings.heartbeat_seconds
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 300
    params.client_properties = {"connection_name": f"{settings.name} {purpose}".strip()}
    params.ssl_options = ssl_options(settings, url)
    return params


def every_node(settings: Settings, purpose: str = "") -> list[pika.URLParameters]:
    """Parameters for each node RABBITMQ_URL lists, in its order: pika's BlockingConnection tries them in turn."""
    return [connection_parameters(settings, purpose, url) for url in settings.rabbitmq_urls]


def node_label(params: pika.ConnectionParameters) -> str:
    """How we name a node in logs, heartbeats, /readyz and report_worker_broker_node: host:port."""
    return f"{params.host}:{params.port}"


def spread(settings: Settings, index: int, host: str = "") -> Settings:
    """The settings of child `index`: RABBITMQ_URL's nodes rotated so that it starts on node
    (index + a number stable for this host) mod n; the children of one VM start on different nodes,
    and VMs on different ones too. One node: the settings unchanged."""
    urls = settings.rabbitmq_urls
    if len(urls) < 2:
        return settings
    first = (index + zlib.crc32((host or socket.gethostname()).encode())) % len(urls)
    return dataclasses.replace(settings, rabbitmq_url=",".join(urls[first:] + urls[:first]))


class Nodes:
    """A consumer's nodes, tried in turn from the first: after a failure, the next node at once; after a
    round of failures (every node in a row), the backoff's delay first."""

    def __init__(self, settings: Settings, backoff: "Backoff"):
        self.urls = settings.rabbitmq_urls
        self.backoff = backoff
        self.turn = 0
        self.failures = 0   # connections (or attempts) that failed in a row

    def current(self) -> str:
        return self.urls[self.turn % len(self.urls)]

    def connected(self) -> None:
        self.failures = 0
        self.backoff.reset()

    def failed(self) -> float:
        """Move on to the next node; the seconds to wait before trying it (0: at once)."""
        self.turn += 1
        self.failures += 1
        return self.backoff.next() if self.failures % len(self.urls) == 0 else 0.0


@contextlib.contextmanager
def channel(settings: Settings, confirm: bool = True) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A channel on the first node of RABBITMQ_URL that answers."""
    connection = frames.connect(every_node(settings, "cli"))
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

