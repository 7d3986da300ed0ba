"""The parent's HTTP endpoint: /metrics, /healthz, /readyz on a ThreadingHTTPServer in a daemon thread."""

import json
import os
import threading
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from metrics.probes import Probes
from worker.logs import EventLog

log = EventLog(__name__)

_servers: "weakref.WeakSet[MetricsServer]" = weakref.WeakSet()


def build_registry(*collectors) -> CollectorRegistry:
    """A registry of the given collectors (children's directory, parent metrics) and the parent's process_*."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


class _Handler(BaseHTTPRequestHandler):
    server_version = "report-worker"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        owner: MetricsServer = self.server.owner
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(owner.registry))
        elif path == "/healthz":
            self._json(*owner.probes.liveness())
        elif path == "/readyz":
            self._json(*owner.probes.readiness())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n")

    def _json(self, ok: bool, body: dict):
        self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")

    def _send(self, status: int, content_type: str, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format, *args):  # scrapes every few seconds would flood the log
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class MetricsServer:
    """One HTTP server in the parent; serving threads never touch a child, only files and callables."""

    def __init__(self, registry: CollectorRegistry, probes: Probes, bind: str = "127.0.0.1", port: int = 0):
        self.registry = registry
        self.probes = probes
        self.bind = bind
        self.requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self.requested_port

    def start(self) -> "MetricsServer":
        """Bind (raises OSError if the port is taken) and serve in a daemon thread."""
        self._httpd = _HTTPServer((self.bind, self.requested_port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        _servers.add(self)
        log.info("metrics_listening", bind=self.bind, port=self.port)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None
            _servers.discard(self)

    def close_in_child(self) -> None:
        """In a forked child: drop the inherited listening socket (the serving thread is not copied)."""
        if self._httpd is not None:
            self._httpd.socket.close()
            self._httpd = None


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server.close_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
