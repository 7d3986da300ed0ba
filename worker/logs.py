"""JSON-line logging: one object per event, with the process's worker identity on every line."""

import json
import logging
import os
import sys
import time

OUR_PACKAGES = ("worker", "supervisor", "metrics", "bench")
_identity: dict[str, object] = {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "pid": os.getpid(),
            **_identity,
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "INFO", **identity: object) -> None:
    """Send JSON lines to stdout; `identity` (e.g. worker=1) is added to every line."""
    _identity.clear()
    _identity.update({k: v for k, v in identity.items() if v is not None})
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(NO_BODIES)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries (pika, httpx, pymongo...) speak only when it matters
    for ours in OUR_PACKAGES:
        logging.getLogger(ours).setLevel(level)


class _NoBodies(logging.Filter):
    """pika logs a returned message with its properties and the first 255 bytes of its body (patient data)
    at WARNING; keep the line, drop what the message held."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pika") and str(record.msg).startswith("Published message was returned"):
            record.msg, record.args = "Published message was returned (its properties and body are not logged)", ()
        return True


NO_BODIES = _NoBodies()


class EventLog:
    """`log.info("event_name", request_id=..., seconds=...)`: fields become JSON keys."""

    def __init__(self, name: str):
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info=None, **fields: object) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: object) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info=None, **fields: object) -> None:
        self._log(logging.ERROR, event, exc_info=exc_info, **fields)
