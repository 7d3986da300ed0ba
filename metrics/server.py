"""The parent's HTTP endpoint: /metrics, /healthz, /readyz, served by a few threads however many clients connect.

Like gunicorn's gthread worker: one thread accepts connections and reads requests with a selector;
only a connection whose request head has fully arrived goes to the small pool of handler threads,
which answers it and closes it (one request per connection, as prometheus_client's own server does).
Idle or slow clients cost a file descriptor, never a thread: a request head must arrive within
`read_timeout`, the answer must be taken within `read_timeout`, and beyond `max_connections` the
oldest waiting connection is closed to make room. A forked child closes every socket of the server.
"""

import io
import json
import os
import selectors
import socket
import socketserver
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from metrics.probes import Probes
from worker.logs import EventLog

log = EventLog(__name__)

POOL = 4                 # handler threads
MAX_CONNECTIONS = 128    # open client connections (waiting for their request, or being answered)
READ_TIMEOUT = 5.0       # seconds for a request head to arrive, and for each write of the answer
MAX_HEAD = 16 * 1024     # bytes of request line and headers

_servers: "weakref.WeakSet[MetricsServer]" = weakref.WeakSet()


def build_registry(*collectors) -> CollectorRegistry:
    """A registry of the given collectors (children's directory, parent metrics) and the parent's process_*."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head the serving thread has read already."""

    server_version = "report-worker"
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT        # applies to writing the answer

    def __init__(self, connection, address, server: "MetricsServer", head: bytes):
        self.head = head
        super().__init__(connection, address, server)

    def setup(self):
        super().setup()
        self.rfile = io.BytesIO(self.head)

    def handle(self):
        self.handle_one_request()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        owner: MetricsServer = self.server
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
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format, *args):  # scrapes every few seconds would flood the log
        pass


class _Listener(socketserver.TCPServer):
    """Only binds and listens (socketserver's address handling); MetricsServer serves."""

    allow_reuse_address = True
    request_queue_size = 64


class _Waiting:
    """A connection whose request head is still arriving."""

    def __init__(self, address, now: float):
        self.address, self.since, self.head = address, now, bytearray()


class MetricsServer:
    """One HTTP server in the parent; serving threads never touch a child, only files and callables."""

    def __init__(self, registry: CollectorRegistry, probes: Probes, bind: str = "127.0.0.1", port: int = 0,
                 pool: int = POOL, max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT):
        self.registry = registry
        self.probes = probes
        self.bind = bind
        self.requested_port = port
        self.pool_size, self.max_connections, self.read_timeout = pool, max_connections, read_timeout
        self._httpd: _Listener | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._selector: selectors.BaseSelector | None = None
        self._waiting: dict[socket.socket, _Waiting] = {}   # serving thread only; oldest first
        self._busy: set[socket.socket] = set()              # handed to the pool
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self.requested_port

    def start(self) -> "MetricsServer":
        """Bind (raises OSError if the port is taken) and serve in a daemon thread."""
        self._httpd = _Listener((self.bind, self.requested_port), None)
        self._httpd.socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._httpd.socket, selectors.EVENT_READ)
        self._pool = ThreadPoolExecutor(self.pool_size, thread_name_prefix="metrics-handler")
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self._thread.start()
        _servers.add(self)
        log.info("metrics_listening", bind=self.bind, port=self.port)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._stop.set()
            self._thread.join(5)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._selector.close()
            self._httpd.server_close()
            self._httpd = None
            _servers.discard(self)

    def connections(self) -> int:
        """Open client connections (waiting for their request, or being answered)."""
        with self._lock:
            return len(self._waiting) + len(self._busy)

    # ---- the serving thread -------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.5):
                if key.fileobj is self._httpd.socket:
                    self._accept()
                else:
                    self._read(key.fileobj)
            self._expire(time.monotonic() - self.read_timeout)
        for connection in list(self._waiting):
            self._drop(connection)

    def _accept(self) -> None:
        while True:
            try:
                connection, address = self._httpd.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog waits for the next turn
                log.warning("metrics_accept_failed", error=str(exc))
                return
            if self.connections() >= self.max_connections:
                if not self._waiting:
                    connection.close()  # every slot is being answered: refuse
                    continue
                self._drop(next(iter(self._waiting)))  # the oldest waiting one makes room
            connection.setblocking(False)
            with self._lock:
                self._waiting[connection] = _Waiting(address, time.monotonic())
            self._selector.register(connection, selectors.EVENT_READ)

    def _read(self, connection: socket.socket) -> None:
        waiting = self._waiting[connection]
        try:
            data = connection.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        waiting.head += data
        if not data or len(waiting.head) > MAX_HEAD:
            self._drop(connection)
        elif b"\r\n\r\n" in waiting.head or b"\n\n" in waiting.head:
            self._selector.unregister(connection)
            with self._lock:
                del self._waiting[connection]
                self._busy.add(connection)
            self._pool.submit(self._answer, connection, waiting)

    def _expire(self, cutoff: float) -> None:
        for connection in [c for c, w in self._waiting.items() if w.since < cutoff]:
            self._drop(connection)

    def _drop(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        with self._lock:
            self._waiting.pop(connection, None)
        connection.close()

    # ---- a handler thread ---------------------------------------------------------------------

    def _answer(self, connection: socket.socket, waiting: _Waiting) -> None:
        try:
            connection.setblocking(True)
            _Handler(connection, waiting.address, self, bytes(waiting.head))
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client left, or did not take the answer within read_timeout
        finally:
            with self._lock:
                self._busy.discard(connection)
            connection.close()

    # ---- after fork -----------------------------------------------------------------------------

    def close_in_child(self) -> None:
        """In a forked child: drop every inherited socket (listening, waiting, being answered) and the
        selector; the threads are not copied. Closing our copies leaves the parent's connections alone."""
        if self._httpd is None:
            return
        for connection in [*self._waiting, *self._busy]:
            connection.close()
        self._waiting, self._busy = {}, set()
        self._selector.close()
        self._httpd.socket.close()
        self._httpd = None


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server.close_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
