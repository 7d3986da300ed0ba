"""A tiny raw AMQP 0-9-1 publisher that puts content-header bytes on the wire which pika's encoder would refuse."""

import socket
import struct
import time

from pika import frame, spec

FRAME_END = b"\xce"


def entry(key: bytes, value: bytes) -> bytes:
    """One field-table entry: short-string key, then the value (type octet and payload)."""
    return struct.pack("B", len(key)) + key + value


def table(*entries: bytes) -> bytes:
    """A field table from raw entries: 32-bit size, then the entries."""
    raw = b"".join(entries)
    return struct.pack(">I", len(raw)) + raw


def timestamp(seconds: int) -> bytes:
    """A 'T' value: 64 bits on the wire; a negative `seconds` is sent as its two's complement."""
    return b"T" + struct.pack(">Q", seconds % 2 ** 64)


def nested(depth: int, leaf: bytes = b"V") -> bytes:
    """A field-array value `depth` arrays deep."""
    value = leaf
    for _ in range(depth):
        value = b"A" + struct.pack(">I", len(value)) + value
    return value


def property_bytes(properties: spec.BasicProperties, headers_table: bytes | None = None) -> bytes:
    """pika's own encoding of `properties` (its headers ignored), with `headers_table` spliced in raw."""
    plain = spec.BasicProperties(**{**vars(properties), "headers": None})
    encoded = b"".join(plain.encode())
    if headers_table is None:
        return encoded
    flags = struct.unpack_from(">H", encoded)[0] | spec.BasicProperties.FLAG_HEADERS
    offset = 2  # content_type and content_encoding come before the headers table
    for name in ("content_type", "content_encoding"):
        if getattr(plain, name) is not None:
            offset += 1 + encoded[offset]
    return struct.pack(">H", flags) + encoded[2:offset] + headers_table + encoded[offset:]


class RawPublisher:
    """Connection.Start … Confirm.Select by hand; `publish` sends a raw content header and waits for the confirm."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5672, user: str = "guest",
                 password: str = "guest", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.delivery_tag = 0
        self.sock.sendall(frame.ProtocolHeader().marshal())
        self._expect(spec.Connection.Start)
        self._send(0, spec.Connection.StartOk(client_properties={"product": "tests.rawamqp"}, mechanism="PLAIN",
                                              response=f"\0{user}\0{password}", locale="en_US"))
        tune = self._expect(spec.Connection.Tune)
        self.frame_max = tune.frame_max
        self._send(0, spec.Connection.TuneOk(channel_max=1, frame_max=tune.frame_max, heartbeat=0))
        self._send(0, spec.Connection.Open(virtual_host="/"))
        self._expect(spec.Connection.OpenOk)
        self._send(1, spec.Channel.Open())
        self._expect(spec.Channel.OpenOk)
        self._send(1, spec.Confirm.Select())
        self._expect(spec.Confirm.SelectOk)

    def publish(self, queue: str, body: bytes, properties: bytes) -> None:
        """Publish to the default exchange with raw property bytes; raises unless the broker confirms."""
        assert len(body) <= self.frame_max - 8, "one body frame only"
        self._send(1, spec.Basic.Publish(exchange="", routing_key=queue, mandatory=True))
        header = struct.pack(">HHQ", spec.BasicProperties.INDEX, 0, len(body)) + properties
        self.sock.sendall(struct.pack(">BHI", spec.FRAME_HEADER, 1, len(header)) + header + FRAME_END)
        self.sock.sendall(struct.pack(">BHI", spec.FRAME_BODY, 1, len(body)) + body + FRAME_END)
        self.delivery_tag += 1
        self._expect(spec.Basic.Ack)

    def close(self) -> None:
        self.sock.close()

    def _send(self, channel: int, method) -> None:
        self.sock.sendall(frame.Method(channel, method).marshal())

    def _expect(self, method_class, timeout: float = 10.0):
        """The next method frame, which must be `method_class`; a Close or Return from the broker raises."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            used, value = frame.decode_frame(self.buffer)
            if value is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the broker closed the socket")
                self.buffer += chunk
                continue
            self.buffer = self.buffer[used:]
            if not isinstance(value, frame.Method):
                continue  # the header and body of a Basic.Return
            if isinstance(value.method, method_class):
                return value.method
            raise ConnectionError(f"expected {method_class.NAME}, the broker sent {value.method!r}")
        raise TimeoutError(f"no {method_class.NAME} within {timeout} s")
