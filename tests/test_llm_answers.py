"""The chat completion as ReportWriter reads it: the JSON of the openai client's raw answer, whatever its shape."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_llm import knowledge_for, llm_requests, make_request
from metrics.events import PrometheusEvents
from worker.categories import categories_for
from worker.errors import TransientError
from worker.llm import ReportWriter, parse_completion

pytestmark = pytest.mark.timeout(60)


def completion(**changes) -> dict:
    body = {"id": "c1", "object": "chat.completion", "model": "m-1", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}", "refusal": None}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    return {**body, **changes}


def test_a_complete_answer():
    assert parse_completion(json.dumps(completion()).encode()) == {
        "text": "{}", "refusal": None, "finish_reason": "stop", "model": "m-1", "prompt_tokens": 12,
        "completion_tokens": 3}


@pytest.mark.parametrize("changes, field, expected", [
    ({"usage": None}, "prompt_tokens", None),
    ({"usage": {"prompt_tokens": True, "completion_tokens": 2}}, "prompt_tokens", None),
    ({"usage": {"prompt_tokens": -4, "completion_tokens": 2}}, "prompt_tokens", None),
    ({"usage": {"prompt_tokens": "7", "completion_tokens": 2}}, "completion_tokens", 2),
    ({"choices": []}, "text", None),
    ({"choices": [None]}, "finish_reason", None),
    ({"choices": [{"finish_reason": "length", "message": None}]}, "finish_reason", "length"),
    ({"choices": [{"message": {"content": None, "refusal": "I can't"}}]}, "refusal", "I can't"),
    ({"choices": [{"message": {"content": ["a", "list"]}}]}, "text", None),
    ({"model": None}, "model", None),
])
def test_missing_or_odd_fields_read_as_none(changes, field, expected):
    assert parse_completion(json.dumps(completion(**changes)).encode())[field] == expected


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', json.dumps({"choices": "many"}).encode(),
                                  json.dumps({"error": {"message": "upstream timed out"}}).encode()])
def test_what_is_not_a_chat_completion_is_refused(body):
    with pytest.raises(ValueError):
        parse_completion(body)


class Garbage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    content_types: list = []   # what each call said its body was

    def do_POST(self):
        self.content_types.append(self.headers.get("Content-Type"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b"<html>proxy says hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_200_that_is_not_a_chat_completion_is_transient_over_real_http():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        writer = ReportWriter(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k",
                              model="garbage-model", timeout=5, max_retries=0, events=PrometheusEvents())
        request = make_request()
        before = llm_requests("garbage-model", "error")
        with pytest.raises(TransientError) as raised:
            writer.generate(request, categories_for(request), knowledge_for(request))
        assert raised.value.code == "llm_unavailable" and "not a chat completion" in str(raised.value)
        assert llm_requests("garbage-model", "error") == before + 1
        assert Garbage.content_types == ["application/json"]   # the client's default header on our raw body
    finally:
        server.shutdown()
        server.server_close()
