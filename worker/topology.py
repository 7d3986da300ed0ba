"""The queues we declare, their arguments, and a clear error when the broker has them otherwise."""

from pika.exceptions import ChannelClosedByBroker

from worker.settings import Settings

PRECONDITION_FAILED = 406


class QueueMismatch(Exception):
    """A queue exists with other arguments than ours; only an operator can settle that."""


def queue_arguments(settings: Settings) -> dict[str, dict]:
    """Every queue we own, by name, with its declare arguments."""
    base = {"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {}
    request = dict(base)
    if settings.max_priority and settings.queue_type == "classic":
        request["x-max-priority"] = settings.max_priority
    queues = {
        settings.request_queue: request,
        settings.response_queue: {**base, "x-message-ttl": settings.response_ttl_seconds * 1000},
        settings.dlq: dict(base),
    }
    # quorum: the hop back to the request queue is confirmed inside the broker (at-least-once
    # dead-lettering); classic queues dead-letter at most once, a known broker limit
    safe_hop = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"} if base else {}
    for delay in settings.retry_delays:
        queues[settings.retry_queue(delay)] = {
            **base,
            **safe_hop,
            "x-message-ttl": int(delay * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.request_queue,
        }
    return queues


def queue_names(settings: Settings) -> dict[str, str]:
    """Every queue we own by its role: request, response, dlq, retry_<delay>s (metrics labels use the roles)."""
    roles = {"request": settings.request_queue, "response": settings.response_queue, "dlq": settings.dlq}
    for delay in settings.retry_delays:
        roles[f"retry_{delay:g}s"] = settings.retry_queue(delay)
    return roles


def declare(connection, settings: Settings) -> None:
    """Declare every queue on a throw-away channel, so a mismatch cannot close the consuming one."""
    channel = connection.channel()
    for name, arguments in queue_arguments(settings).items():
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except ChannelClosedByBroker as exc:
            if exc.reply_code == PRECONDITION_FAILED:
                raise QueueMismatch(
                    f"queue {name!r} already exists with other arguments than this worker's "
                    f"(wanted {arguments or 'none'}): {exc.reply_text}"
                ) from None
            raise
    channel.close()
