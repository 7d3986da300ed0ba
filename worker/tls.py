"""TLS to RabbitMQ: pika's SSL options for an amqps:// RABBITMQ_URL and the RABBITMQ_TLS_* files."""

import ssl
from urllib.parse import urlsplit

import pika

from worker.settings import Settings


def ssl_options(settings: Settings, node_url: str = "") -> pika.SSLOptions | None:
    """None for amqp://; for amqps://, verify the server's certificate and host name (that of `node_url`,
    one of RABBITMQ_URL's nodes; default: the first).

    The server is checked against RABBITMQ_TLS_CA_FILE when set, else against the system's CAs.
    RABBITMQ_TLS_CERT_FILE (and _KEY_FILE) add a client certificate for servers that ask for one.
    """
    url = urlsplit(node_url or settings.rabbitmq_urls[0])
    if url.scheme != "amqps":
        return None
    context = ssl.create_default_context(cafile=settings.rabbitmq_tls_ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.rabbitmq_tls_cert_file:
        context.load_cert_chain(settings.rabbitmq_tls_cert_file, settings.rabbitmq_tls_key_file or None)
    return pika.SSLOptions(context, server_hostname=url.hostname)
