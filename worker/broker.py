"""Short-lived broker connections for the command-line tools (not the consumer's own)."""

import contextlib
from typing import Iterator

import pika

from worker.settings import Settings
from worker.tls import ssl_options


@contextlib.contextmanager
def channel(settings: Settings, confirm: bool = True) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    params = pika.URLParameters(settings.rabbitmq_url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.ssl_options = ssl_options(settings)
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        if confirm:
            ch.confirm_delivery()
        yield ch
    finally:
        if connection.is_open:
            connection.close()
