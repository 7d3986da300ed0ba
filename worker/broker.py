"""Broker connection parameters for every connection of ours, and short-lived channels for the CLI tools."""

import contextlib
from typing import Iterator

import pika

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
