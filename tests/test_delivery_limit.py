"""The broker's backstop on quorum request queues: past RABBITMQ_DELIVERY_LIMIT a message goes to the DLQ.

A message that keeps coming back (returned by consumers that die or give up on it, whatever the reason) is
dead-lettered by RabbitMQ itself once its delivery count passes the limit, instead of looping forever or,
on RabbitMQ 4 without a dead-letter target, being dropped.
"""

import json

import pika

from tests.services import RABBITMQ_URL, wait_for
from worker.settings import load
from worker.topology import declare

LIMIT = 4   # must be above POISON_CRASH_LIMIT (3): the worker's own poison handling comes first


def test_a_message_returned_past_the_delivery_limit_lands_in_the_dlq(broker, names):
    settings = load(environ={**names, "OPENAI_API_KEY": "k", "RABBITMQ_URL": RABBITMQ_URL,
                             "RABBITMQ_QUEUE_TYPE": "quorum", "RABBITMQ_DELIVERY_LIMIT": str(LIMIT)})
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        declare(connection, settings)
        channel = connection.channel()
        body = json.dumps({"request_id": "r-limit", "marker": "returned-too-often"}).encode()
        broker.publish(body, queue=settings.request_queue)
        deliveries = 0
        for _ in range(LIMIT + 3):   # a consumer that returns it every time
            method, _, _ = channel.basic_get(settings.request_queue)
            if method is None:
                break
            deliveries += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
        wait_for(lambda: broker.depth(settings.dlq) == 1, 10, message="the message did not reach the DLQ")
        assert deliveries == LIMIT + 1              # delivered once, returned LIMIT times, then no more
        assert broker.depth(settings.request_queue) == 0
        (properties, dead), = broker.take(settings.dlq)
        assert dead == body                          # the body untouched, for `dlq replay`
        deaths = properties.headers["x-death"]
        assert deaths[0]["reason"] == "delivery_limit" and deaths[0]["queue"] == settings.request_queue
    finally:
        connection.close()
