"""Headers cannot break the connection: what makes pika's decoder raise, and worker.frames surviving it."""

import datetime
import decimal
import json
import struct
import time

import pika
import pytest
from pika import exceptions, frame, spec

from tests.conftest import RABBITMQ_URL, sample_request
from tests.rawamqp import RawPublisher, entry, nested, property_bytes, table, timestamp
from worker import frames
from worker.delivery import Delivery
from worker.outcomes import handle
from worker.settings import load

YEAR_10000 = 253402300800  # 10000-01-01T00:00:00Z, one second past what datetime can hold
KEPT = dict(content_type="application/json", correlation_id="corr-1", reply_to="replies-1",
            message_id="msg-1", timestamp=1700000000, app_id="backend", delivery_mode=2, priority=3)

# RabbitMQ 3.10 takes these from a publisher and delivers them; pika's decoder raises on each.
REACHABLE = {
    "T at year 10000": (table(entry(b"sent", timestamp(YEAR_10000))), "ValueError"),
    "T at 2**62 s": (table(entry(b"sent", timestamp(2 ** 62))), "OSError"),
    "T negative": (table(entry(b"sent", timestamp(-1))), "OverflowError"),
    "T inside a nested table": (table(entry(b"ok", b"I\0\0\0\1"),
                                      entry(b"trace", b"F" + table(entry(b"at", timestamp(YEAR_10000))))),
                                "ValueError"),
    "arrays 1500 deep": (table(entry(b"path", nested(1500))), "RecursionError"),
}
# RabbitMQ 3.10 closes the publisher's connection for these (541 INTERNAL_ERROR): pika raises on them too.
REFUSED_BY_BROKER = {
    "unknown type octet": (table(entry(b"z", b"Zabc")), "InvalidFieldTypeException"),
    "double NaN": (table(entry(b"d", b"d" + struct.pack(">d", float("nan")))), "ValueError"),
    "float infinity": (table(entry(b"f", b"f" + struct.pack(">f", float("inf")))), "OverflowError"),
}
TIMEOUT = 10.0


def header_frame(properties: bytes, body_size: int, channel: int = 1) -> bytes:
    payload = struct.pack(">HHQ", spec.BasicProperties.INDEX, 0, body_size) + properties
    return struct.pack(">BHI", spec.FRAME_HEADER, channel, len(payload)) + payload + b"\xce"


def valid_frames() -> list[bytes]:
    headers = {"s": "text", "b": b"\xff\x00", "t": True, "i": -7, "l": 2 ** 40, "d": decimal.Decimal("1.25"),
               "ts": datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc),
               "a": [1, "x", None, [2]], "f": {"nested": {"deeper": 1}}, "v": None}
    props = [spec.BasicProperties(), spec.BasicProperties(headers=headers, **KEPT),
             spec.BasicProperties(timestamp=2 ** 64 - 1, headers={}, expiration="1000", type="t", user_id="guest")]
    frames_ = [frame.Header(1, 42, p).marshal() for p in props]
    frames_ += [frame.Method(1, spec.Basic.Deliver("ctag", 7, False, "", "q")).marshal(),
                frame.Body(1, b"body").marshal(), frame.Heartbeat().marshal(), frame.ProtocolHeader().marshal()]
    return frames_ + [frames_[1][:-1], frames_[1][:5]]  # incomplete frames: nothing consumed yet


def test_valid_frames_decode_exactly_as_pika_decodes_them():
    for data in valid_frames():
        ours, theirs = frames.decode_frame(data), frame.decode_frame(data)
        assert ours[0] == theirs[0]
        if theirs[1] is None:
            assert ours[1] is None
            continue
        assert type(ours[1]) is type(theirs[1]) and ours[1].marshal() == theirs[1].marshal()
        if isinstance(theirs[1], frame.Header):
            assert vars(ours[1].properties) == vars(theirs[1].properties)
            assert frames.undecodable(ours[1].properties) is None


@pytest.mark.parametrize("case", sorted({**REACHABLE, **REFUSED_BY_BROKER}))
def test_undecodable_properties_become_a_marked_header_and_the_body_still_follows(case):
    raw_table, error = {**REACHABLE, **REFUSED_BY_BROKER}[case]
    header = header_frame(property_bytes(spec.BasicProperties(**KEPT), raw_table), body_size=4)
    data = header + frame.Body(1, b"body").marshal()
    with pytest.raises(Exception) as raised:
        frame.decode_frame(data)
    assert type(raised.value).__name__ == error

    used, decoded = frames.decode_frame(data)
    assert used == len(header) and isinstance(decoded, frame.Header)
    assert (decoded.channel_number, decoded.body_size) == (1, 4)
    assert frames.undecodable(decoded.properties).startswith(f"headers: {error}")
    assert {name: getattr(decoded.properties, name) for name in KEPT} == KEPT
    assert frames.decode_frame(data[used:])[1].fragment == b"body"


def test_a_headers_table_longer_than_its_frame_loses_every_property_but_not_the_body_size():
    header = header_frame(property_bytes(spec.BasicProperties(reply_to="r"), struct.pack(">I", 999) + b"\x01k"), 9)
    used, decoded = frames.decode_frame(header)
    assert used == len(header) and decoded.body_size == 9
    assert decoded.properties.reply_to is None
    assert frames.undecodable(decoded.properties).startswith("properties: ")


@pytest.mark.parametrize("data, error", [
    (frame.Body(1, b"x").marshal()[:-1] + b"\x00", exceptions.InvalidFrameError),  # bad frame-end octet
    (struct.pack(">BHI", 9, 0, 0) + b"\xce", exceptions.InvalidFrameError),  # unknown frame type
    (struct.pack(">BHIHHQ", spec.FRAME_HEADER, 1, 12, 99, 0, 1) + b"\xce", KeyError),  # unknown class id
    (struct.pack(">BHII", spec.FRAME_METHOD, 1, 4, 0x00FF00FF) + b"\xce", KeyError),  # unknown method
])
def test_other_frame_errors_are_raised_as_pika_raises_them(data, error):
    with pytest.raises(error):
        frame.decode_frame(data)
    with pytest.raises(error):
        frames.decode_frame(data)


@pytest.fixture
def queues(broker, names):
    """Request, response and dead-letter queues of this test (deleted by the broker fixture)."""
    for key in ("RABBITMQ_REQUEST_QUEUE", "RABBITMQ_RESPONSE_QUEUE", "RABBITMQ_DLQ"):
        broker.channel.queue_declare(names[key], durable=True)
    return names


def publish_raw(queue: str, body: bytes, properties: bytes) -> None:
    publisher = RawPublisher()
    try:
        publisher.publish(queue, body, properties)
    finally:
        publisher.close()


def receive(connection, channel, queue: str, count: int, got: list | None = None) -> list:
    """Consume until `count` deliveries (method, properties, body) arrived; fail at the deadline."""
    got = [] if got is None else got
    if not channel.consumer_tags:
        channel.basic_consume(queue, lambda _ch, method, props, body: got.append((method, props, body)))
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    assert len(got) >= count, f"{len(got)} of {count} deliveries within {TIMEOUT} s"
    return got


def wait_depth(broker, queue: str, depth: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while broker.depth(queue) != depth and time.monotonic() < deadline:
        broker.connection.sleep(0.05)
    assert broker.depth(queue) == depth


@pytest.mark.parametrize("refused", sorted(REFUSED_BY_BROKER))
def test_rabbitmq_refuses_these_values_from_a_publisher(refused, queues):
    with pytest.raises(ConnectionError, match="INTERNAL_ERROR"):
        publish_raw(queues["RABBITMQ_REQUEST_QUEUE"], b"x", property_bytes(spec.BasicProperties(),
                                                                            REFUSED_BY_BROKER[refused][0]))


def test_without_the_fix_pika_drops_the_connection_and_every_inflight_message_comes_back(queues, broker):
    queue = queues["RABBITMQ_REQUEST_QUEUE"]
    broker.publish(b"innocent", queue)
    publish_raw(queue, b"bad", property_bytes(spec.BasicProperties(**KEPT), REACHABLE["T at year 10000"][0]))
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    with pytest.raises(exceptions.StreamLostError, match="year 10000 is out of range"):
        receive(connection, channel, queue, 2)
    assert connection.is_closed
    wait_depth(broker, queue, 2)  # both requeued: the bad one would come back forever

    connection = frames.connect(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        got = receive(connection, channel, queue, 2)
        assert [body for _, _, body in got] == [b"innocent", b"bad"]
        assert all(method.redelivered for method, _, _ in got)
        assert frames.undecodable(got[1][1]).startswith("headers: ValueError")
        for method, _, _ in got:
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    wait_depth(broker, queue, 0)


@pytest.mark.parametrize("case", sorted(REACHABLE))
def test_a_marked_message_is_acked_and_the_same_connection_keeps_consuming(case, queues, broker):
    queue = queues["RABBITMQ_REQUEST_QUEUE"]
    raw_table, error = REACHABLE[case]
    publish_raw(queue, b"bad", property_bytes(spec.BasicProperties(**KEPT), raw_table))
    broker.publish(b"next", queue, headers={"x-attempt": 2})
    connection = frames.connect(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        got = receive(connection, channel, queue, 2)
        (bad_method, bad, bad_body), (next_method, following, next_body) = got
        assert (bad_body, next_body) == (b"bad", b"next")
        assert frames.undecodable(bad).startswith(f"headers: {error}")
        assert {name: getattr(bad, name) for name in KEPT} == KEPT
        channel.basic_ack(bad_method.delivery_tag)
        assert frames.undecodable(following) is None and following.headers == {"x-attempt": 2}
        channel.basic_ack(next_method.delivery_tag)

        broker.publish(b"after", queue)
        later = receive(connection, channel, queue, 3, got)[2]
        channel.basic_ack(later[0].delivery_tag)
        assert later[2] == b"after"
        assert not any(method.redelivered for method, _, _ in got)
        assert connection.is_open and channel.is_open
    finally:
        connection.close()
    wait_depth(broker, queue, 0)


def test_a_timestamp_property_past_year_9999_is_read_by_pika_as_a_plain_integer(queues, broker):
    queue = queues["RABBITMQ_REQUEST_QUEUE"]
    for seconds in (YEAR_10000, 2 ** 64 - 1):
        publish_raw(queue, b"t", property_bytes(spec.BasicProperties(timestamp=seconds)))
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))  # pika alone, no fix
    try:
        channel = connection.channel()
        got = receive(connection, channel, queue, 2)
        assert [props.timestamp for _, props, _ in got] == [YEAR_10000, 2 ** 64 - 1]
        assert all(props.headers is None for _, props, _ in got)
        for method, _, _ in got:
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()


def test_dead_lettered_once_with_a_failed_response_and_no_redelivery(queues, broker):
    """What the consumer does with a marked delivery: the handler dead-letters it without touching the pipeline."""
    settings = load({"OPENAI_API_KEY": "k", "RABBITMQ_URL": RABBITMQ_URL, **queues})
    request = sample_request(request_id="frames-1")
    properties = spec.BasicProperties(**{**KEPT, "reply_to": queues["RABBITMQ_RESPONSE_QUEUE"]})
    publish_raw(settings.request_queue, json.dumps(request).encode(),
                property_bytes(properties, REACHABLE["T at year 10000"][0]))
    connection = frames.connect(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        method, props, body = receive(connection, channel, settings.request_queue, 1)[0]
        reason = frames.undecodable(props)
        delivery = Delivery(body, props, method.delivery_tag, method.redelivered, channel)
        settlement = handle(delivery, pipeline=None, settings=settings)  # no pipeline, no LLM call: never reached
        assert settlement.outcome == "invalid" and not settlement.requeue
        for publish in settlement.publishes:
            channel.basic_publish("", publish.routing_key, publish.body, publish.properties, mandatory=True)
        channel.basic_ack(method.delivery_tag)
        connection.process_data_events(time_limit=1.0)  # a redelivery would show up here
        assert connection.is_open
    finally:
        connection.close()
    wait_depth(broker, settings.request_queue, 0)
    dead = broker.take(settings.dlq)
    assert len(dead) == 1 and dead[0][1] == body
    assert dead[0][0].headers[frames.MARKER] == reason and dead[0][0].headers["x-death-reason"] == "invalid"
    assert dead[0][0].correlation_id == "corr-1"
    [response] = broker.responses(1, timeout=TIMEOUT)
    assert (response["request_id"], response["status"]) == ("frames-1", "failed")
