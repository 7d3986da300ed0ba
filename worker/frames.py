"""Content headers whose properties pika cannot decode arrive as marked messages instead of killing our connection."""

# pika decodes every frame in `Connection._read_frame`; when `BasicProperties.decode` raises there (a headers
# table holding a 'T' timestamp at or past year 10000, an array nested too deep for Python's stack, ...), the
# exception escapes the socket read, pika aborts the transport, every unacked delivery of the connection goes
# back to the queue, and the bad message comes back forever. Our connections use `SafeSelectConnection`,
# whose `_read_frame` lets pika decode as before and, only when a content header's properties raise, builds
# the header itself: body size from the frame, every property that can be read (the headers table is skipped
# by its length prefix), and `headers = {MARKER: reason}`. The body frames that follow are untouched, the
# consumer's callback runs, and the consumer dead-letters the message once (`undecodable(properties)`).
#
# No global patch: other pika connections in the process keep pika's behaviour. Relies on two pika internals
# (the `_impl_class` argument of BlockingConnection and `Connection._read_frame`); import fails loudly if the
# second goes away (it does on pika's master after 1.4.4, which also fixes the 'T' case: pika#1698/#1699),
# and tests/test_frames.py fails if either stops being used.

import struct
from typing import Optional

import pika
from pika import frame, spec
from pika.adapters.select_connection import SelectConnection

MARKER = "x-undecodable-properties"
MAX_REASON_CHARS = 200
_END = bytes((spec.FRAME_END,))
_PREFIX = 7  # frame type, channel, payload size
_BEFORE_HEADERS = (spec.BasicProperties.FLAG_CONTENT_TYPE, spec.BasicProperties.FLAG_CONTENT_ENCODING)

if not callable(getattr(SelectConnection, "_read_frame", None)):
    raise ImportError("pika no longer decodes frames in Connection._read_frame: worker.frames needs a new hook")


class SafeSelectConnection(SelectConnection):
    """pika's SelectConnection with a frame decoder that survives undecodable content-header properties."""

    def _read_frame(self):
        return decode_frame(self._frame_buffer)


def connect(parameters) -> pika.BlockingConnection:
    """A BlockingConnection whose deliveries with undecodable properties carry MARKER instead of raising."""
    return pika.BlockingConnection(parameters, _impl_class=SafeSelectConnection)


def undecodable(properties: Optional[spec.BasicProperties]) -> Optional[str]:
    """Why this delivery's properties could not be decoded, or None when they could."""
    reason = (getattr(properties, "headers", None) or {}).get(MARKER)
    return reason if isinstance(reason, str) else None


def decode_frame(data_in: bytes):
    """`pika.frame.decode_frame`, except that a complete Basic content header whose properties raise
    becomes a Header with the readable properties and the MARKER header; every other error is re-raised."""
    try:
        return frame.decode_frame(data_in)
    except Exception as exc:  # the decoder raises ValueError, OverflowError, OSError, RecursionError, ...
        salvaged = _salvage(data_in, exc)
        if salvaged is None:
            raise
        return salvaged


def _salvage(data_in: bytes, exc: Exception):
    try:
        frame_type, channel_number, size = struct.unpack_from(">BHL", data_in)
        end = _PREFIX + size + 1
        if frame_type != spec.FRAME_HEADER or len(data_in) < end or data_in[end - 1:end] != _END:
            return None
        class_id, _weight, body_size = struct.unpack_from(">HHQ", data_in, _PREFIX)
    except struct.error:
        return None
    if class_id != spec.BasicProperties.INDEX:
        return None
    properties, part = _without_headers(data_in[_PREFIX + 12:end - 1])
    properties.headers = {MARKER: f"{part}: {type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]}
    return end, frame.Header(channel_number, body_size, properties)


def _without_headers(encoded: bytes) -> tuple[spec.BasicProperties, str]:
    """The properties decoded by pika with the headers table cut out (found by its length prefix);
    empty properties when even that fails. The second value names what was lost."""
    try:
        flags = struct.unpack_from(">H", encoded)[0]
        if flags & 1 or not flags & spec.BasicProperties.FLAG_HEADERS:
            raise ValueError("no headers table to cut out")  # BasicProperties has one flag word
        offset = 2
        for flag in _BEFORE_HEADERS:
            if flags & flag:
                offset += 1 + encoded[offset]
        table_end = offset + 4 + struct.unpack_from(">I", encoded, offset)[0]
        if table_end > len(encoded):
            raise ValueError("headers table longer than the frame")
        rest = struct.pack(">H", flags & ~spec.BasicProperties.FLAG_HEADERS) + encoded[2:offset] + encoded[table_end:]
        return spec.BasicProperties().decode(rest), "headers"
    except Exception:
        return spec.BasicProperties(), "properties"
