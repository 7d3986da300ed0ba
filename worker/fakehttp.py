"""The fake LLM's HTTP side: the injectable behaviour (Faults), the server with its counters and OpenAI-style
rate limits, and the handler that answers /v1/chat/completions, /v1/models and the /_control endpoints."""

import dataclasses
import json
import math
import random
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.fakeanswers import (MALFORMED_ANSWER, answer_for, check_modes, completion_body, duration, error_body,
                                mode_of, rate_limit_body, refusal, schema_problem)


@dataclasses.dataclass(frozen=True)
class Faults:
    """The injectable behaviour; rates are probabilities per chat call."""

    latency: float = 0.0
    jitter: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0
    hang_seconds: float = 120.0
    malformed_first: int = 0  # answer malformed to the first N calls of each request_id
    mode: str = "good"  # the answer of every request without a mode of its own (see fakeanswers.MODES)
    modes: dict = dataclasses.field(default_factory=dict)  # request_id → mode, or "mode:once" (first call only)
    api_keys: tuple = ()  # bearer tokens accepted (401 for others); empty: any
    models: tuple = ()    # model names served (404 model_not_found for others); empty: any
    rpm: float = 0.0  # requests per minute admitted, for every key together (0: no limit)
    tpm: float = 0.0  # tokens per minute: prompt (~ body bytes / 4) + max_tokens, counted on admission like OpenAI
    burst_seconds: float = 1.0  # how much of the rate may come at once (at least one call)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], faults: Faults, seed: int | None) -> None:
        super().__init__(address, Handler)
        self.faults = faults
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.connections: set[socket.socket] = set()
        self.reset()

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer (a killed worker, a timeout) is normal here, not an error."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def reset(self) -> None:
        with self.lock:
            self.calls = 0
            self.by_request: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()
            self.tats = {"requests": 0.0, "tokens": 0.0}  # GCRA: when each bucket is empty again (monotonic)
            self.accepted = 0
            self.refused: Counter[str] = Counter()

    def stats(self) -> dict:
        with self.lock:
            stats = {"calls": self.calls, "by_request": dict(self.by_request), "status": dict(self.statuses)}
            if self.faults.rpm or self.faults.tpm or self.refused:  # only while limits are (or were) on
                stats["limits"] = {"rpm": self.faults.rpm, "tpm": self.faults.tpm, "accepted": self.accepted,
                                   "refused": dict(self.refused)}
            return stats

    def admit(self, tokens: int) -> tuple[str, float, int, dict[str, str]]:
        """OpenAI's rate limits on one call of `tokens`: ("", 0, ...) when admitted, else the limit that refused
        it ("requests" or "tokens") and the seconds until it would be admitted; plus the x-ratelimit-* headers."""
        with self.lock:
            faults, now = self.faults, time.monotonic()
            refused, wait, taken = "", 0.0, {}
            for name, limit, weight in (("requests", faults.rpm, 1), ("tokens", faults.tpm, tokens)):
                if limit:
                    interval = 60.0 / limit
                    tat = max(self.tats[name], now)
                    cost = weight * interval
                    over = tat + cost - now - max(faults.burst_seconds, cost)
                    if over > 1e-6 and over > wait:
                        refused, wait = name, over
                    taken[name] = tat + cost
            if refused:
                self.refused[refused] += 1
            elif faults.rpm or faults.tpm:
                self.tats.update(taken)
                self.accepted += 1
            return refused, wait, tokens, self._limit_headers(now)

    def _limit_headers(self, now: float) -> dict[str, str]:
        headers = {}
        for name, limit in (("requests", self.faults.rpm), ("tokens", self.faults.tpm)):
            if limit:
                interval = 60.0 / limit
                used = max(self.tats[name] - now, 0.0)
                capacity = max(self.faults.burst_seconds, interval)
                headers[f"x-ratelimit-limit-{name}"] = f"{limit:g}"
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor((capacity - used) / interval)))
                headers[f"x-ratelimit-reset-{name}"] = duration(used)
        return headers

    def configure(self, **settings) -> Faults:
        with self.lock:
            faults = dataclasses.replace(self.faults, **settings)
            check_modes(faults.mode, faults.modes)
            self.faults = faults
            return faults

    def set_mode(self, request_id: str, mode: str) -> None:
        """Answer `request_id` in `mode` ("wrong-citation", or "wrong-citation:once" for its first call only)."""
        with self.lock:
            check_modes(self.faults.mode, {request_id: mode})
            self.faults = dataclasses.replace(self.faults, modes={**self.faults.modes, request_id: mode})

    def draw(self, request_id: str) -> tuple[Faults, int, dict[str, bool], float]:
        """Count one chat call and roll its dice: (faults, call number for its request, fault flags, delay)."""
        with self.lock:
            faults = self.faults
            self.calls += 1
            self.by_request[request_id] += 1
            rolls = {name: self.random.random() < getattr(faults, f"{name}_rate")
                     for name in ("rate_limit", "error", "timeout", "malformed")}
            spread = self.random.uniform(-faults.jitter, faults.jitter)
            return faults, self.by_request[request_id], rolls, max(0.0, faults.latency * (1 + spread))

    def count_status(self, status: int) -> None:
        with self.lock:
            self.statuses[str(status)] += 1

    def close_connections(self) -> None:
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    """One keep-alive connection. Its writes are buffered and its socket has TCP_NODELAY: a response written
    in two pieces on a Nagle socket waits for the client's delayed ACK (40 ms on Linux) between them."""

    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    server: Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: no access log
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": "fake-llm", "object": "model", "created": 0, "owned_by": "fake"}
            self.reply(200, {"object": "list", "data": [model]})
        elif self.path == "/_stats":
            self.reply(200, self.server.stats())
        else:
            self.reply(404, error_body("not found", "invalid_request_error"))

    def do_POST(self) -> None:
        body = self.read_body()
        if self.path.rstrip("/") == "/v1/chat/completions":
            self.answer_chat(body)
        elif self.path == "/_control":
            try:
                faults = self.server.configure(**json.loads(body or b"{}"))
            except (TypeError, ValueError) as exc:
                self.reply(400, error_body(str(exc), "invalid_request_error"))
                return
            self.reply(200, dataclasses.asdict(faults))
        elif self.path == "/_reset":
            self.server.reset()
            self.reply(200, {"ok": True})
        else:
            self.reply(404, error_body("not found", "invalid_request_error"))

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer_chat(self, body: bytes) -> None:
        """Answer `latency` seconds after the request arrived: the answer is computed while the clock runs, so
        the latency a client sees is the injected one, not that plus this server's own work."""
        arrived = time.monotonic()
        try:
            chat = json.loads(body)
            messages = chat["messages"]
        except (ValueError, KeyError, TypeError):
            self.reply(400, error_body("body is not a chat completion request", "invalid_request_error"))
            return
        denied = refusal(self.server.faults, self.headers.get("Authorization"), chat.get("model"))
        if denied:
            self.reply(*denied)
            return
        document = request_document(messages)
        tokens = len(body) // 4 + int(chat.get("max_completion_tokens") or chat.get("max_tokens") or 0)
        refused, wait, tokens, limit_headers = self.server.admit(tokens)
        if refused:
            self.reply(429, rate_limit_body(refused, self.server.faults, chat.get("model") or "fake-llm", tokens, wait),
                       {**limit_headers, "retry-after": str(max(1, math.ceil(wait))),
                        "retry-after-ms": str(max(1, math.ceil(wait * 1000)))})
            return
        faults, call_number, rolls, delay = self.server.draw(str(document.get("request_id", "")))
        status, payload, headers, hang = self.decide(chat, body, document, faults, call_number, rolls, limit_headers)
        data = json.dumps(payload).encode()
        if self.server.stopping.wait(max(0.0, arrived + delay - time.monotonic())) or (
                hang and self.server.stopping.wait(faults.hang_seconds)):
            self.close_connection = True
            return
        self.send(status, data, headers)

    def decide(self, chat: dict, body: bytes, document: dict, faults: Faults, call_number: int,
               rolls: dict[str, bool], limit_headers: dict[str, str]) -> tuple[int, dict, dict[str, str], bool]:
        """The answer to one admitted chat call: (status, payload, headers, whether to hang `hang_seconds` first)."""
        if rolls["rate_limit"]:
            return 429, error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"), {
                "retry-after": "1"}, False
        if rolls["error"]:
            return 500, error_body("The server had an error while processing your request.", "server_error"), {}, False
        hang = rolls["timeout"]  # then the answer as usual, if the client is still there
        problem = schema_problem(chat.get("response_format"))
        if problem:
            return 400, error_body(f"Invalid schema for response_format: {problem}", "invalid_request_error"), {}, hang
        model = chat.get("model") or "fake-llm"
        if rolls["malformed"] or call_number <= faults.malformed_first:
            return 200, completion_body(model, body, MALFORMED_ANSWER), limit_headers, hang
        mode = mode_of(str(document.get("request_id", "")), call_number, faults.mode, faults.modes)
        answer = answer_for(mode, document, chat.get("response_format"))
        return 200, completion_body(model, body, answer), limit_headers, hang

    def reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), headers)

    def send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Status line, headers and body leave in one write (wfile is buffered; the handler flushes it)."""
        if self.path.startswith("/v1/chat"):
            self.server.count_status(status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away (it timed out); nothing to tell it


def request_document(messages: list) -> dict:
    """The first user message that is a JSON object: the report request, also inside a repair round."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            try:
                document = json.loads(message.get("content") or "")
            except (TypeError, ValueError):
                continue
            if isinstance(document, dict):
                return document
    return {}
