"""The queues we declare, their arguments, and what happens when the broker already has them otherwise."""

from pika.exceptions import ChannelClosedByBroker

from worker.logs import EventLog
from worker.settings import Settings

log = EventLog(__name__)
PRECONDITION_FAILED = 406
_warned: set[str] = set()   # shared queues already reported as different, once per process


class QueueMismatch(Exception):
    """A queue of ours exists with other arguments than ours; only an operator can settle that."""


def queue_arguments(settings: Settings) -> dict[str, dict]:
    """Every queue we declare, by name, with its declare arguments.

    The response queue and the DLQ get nothing beyond the queue type, so a backend that declares them
    first (plain `durable=True`) and the worker agree; responses carry their TTL as a message expiration."""
    base = {"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {}
    request = dict(base)
    if settings.max_priority and settings.queue_type == "classic":
        request["x-max-priority"] = settings.max_priority
    # quorum: the hop back to the request queue is confirmed inside the broker (at-least-once
    # dead-lettering); classic queues dead-letter at most once, a known broker limit
    safe_hop = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"} if base else {}
    if base and settings.delivery_limit:
        # the broker's backstop behind POISON_CRASH_LIMIT (which is lower, so the worker's own dead letter
        # with its reason comes first): a message handed out more often goes to the DLQ, not away
        request.update(safe_hop, **{"x-delivery-limit": settings.delivery_limit, "x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": settings.dlq})
    queues = {settings.request_queue: request, settings.response_queue: dict(base), settings.dlq: dict(base)}
    for delay in settings.retry_delays:
        queues[settings.retry_queue(delay)] = {
            **base,
            **safe_hop,
            "x-message-ttl": int(delay * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.request_queue,
        }
    return queues


def shared_queues(settings: Settings) -> set[str]:
    """Queues the backend may declare too, with arguments of its own: we use them as they are."""
    return {settings.response_queue, settings.dlq}


def queue_names(settings: Settings) -> dict[str, str]:
    """Every queue we own by its role: request, response, dlq, retry_<delay>s (metrics labels use the roles)."""
    roles = {"request": settings.request_queue, "response": settings.response_queue, "dlq": settings.dlq}
    for delay in settings.retry_delays:
        roles[f"retry_{delay:g}s"] = settings.retry_queue(delay)
    return roles


def declare(connection, settings: Settings) -> None:
    """Declare every queue on a throw-away channel, so a mismatch cannot close the consuming one.

    A shared queue (response, DLQ) that exists with other arguments is used as it is, with one warning;
    the request queue and the delay queues are ours to insist on (QueueMismatch)."""
    channel = connection.channel()
    for name, arguments in queue_arguments(settings).items():
        try:
            channel.queue_declare(name, durable=True, arguments=arguments)
        except ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            if name not in shared_queues(settings):
                raise QueueMismatch(
                    f"queue {name!r} already exists with other arguments than this worker's "
                    f"(wanted {arguments or 'none'}): {exc.reply_text}"
                ) from None
            channel = connection.channel()
            channel.queue_declare(name, passive=True)
            if name in _warned:
                continue
            _warned.add(name)
            log.warning("queue_arguments_differ", queue=name, wanted=arguments or "none", broker=exc.reply_text,
                        hint="using the queue as it is; its arguments were set by whoever declared it first")
    channel.close()
