"""Report path CPU: realistic requests through the pure-CPU part of the pipeline, with a digest of every output.

Everything between the broker and the network clients runs as in the worker: intake.validate, the input
cache's JSON, the input digest, categories, the prompt and response_format, the token estimate, the gate
(with its one repair), the report's facts and Markdown, the stored document, the cached report's JSON and
the response's bytes. Only the LLM call is replaced: each answer comes from the fake LLM's generator
(worker/fakeanswers.py), computed before the measured loop. MongoDB, Redis and RabbitMQ are not touched.

    python -m tests.perf.corepath                     # ms/report (process CPU) and the outputs' digest
    python -m tests.perf.corepath --callgrind         # instructions/report: two callgrind runs, subtracted
    python -m tests.perf.corepath --outputs out.jsonl # every output, one JSON line each, to diff two trees
"""

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from worker import fakeanswers
from worker.cache import _iso
from worker.categories import categories_for
from worker.errors import InvalidRequest, ReportError
from worker.facts import clinical_input, input_digest
from worker.intake import validate
from worker.llm import Completion, ReportWriter, chat_body, estimate_tokens
from worker.pipeline import input_changed, report_document, success
from worker.prompt import build_messages, response_format

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "data" / "eval"
SAMPLE = ROOT / "worker" / "data" / "sample_request.json"
KNOWLEDGE = ROOT / "worker" / "data" / "knowledge_base.json"
FIXED_TIME = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
MAX_BYTES = 1024 * 1024


class ScriptedWriter(ReportWriter):
    """The real ReportWriter (prompt, gate, repair, assembly, Markdown); its chat call answers from a script."""

    def __init__(self) -> None:
        super().__init__(base_url="http://127.0.0.1:9/v1", api_key="not-needed", model="gpt-4o-mini", timeout=5.0)
        self.answers: list[fakeanswers.Answer] = []
        self.calls: list[tuple[list[dict], dict]] = []

    def _complete(self, messages: list[dict], answer_format: dict, deadline: float | None = None) -> Completion:
        prompt_tokens = estimate_tokens(chat_body(self.model, messages, answer_format, self._options))  # as the real call
        self.calls.append((messages, answer_format))
        answer = self.answers[len(self.calls) - 1]
        text = answer.content or answer.refusal or ""
        prompt, completion = (prompt_tokens, max(1, len(text) // 4)) if answer.usage else (None, None)
        return Completion(text=answer.content, refusal=answer.refusal, finish_reason=answer.finish_reason,
                          model=self.model, prompt_tokens=prompt, completion_tokens=completion,
                          cost_usd=self._cost(prompt, completion), seconds=0.0)


def load_requests() -> list[dict]:
    """The sample request and every request of the evaluation set (invalid ones included), in file order."""
    requests = [json.loads(SAMPLE.read_text(encoding="utf-8"))]
    for path in sorted(CASES.glob("*.json")):
        requests.append(json.loads(path.read_text(encoding="utf-8"))["request"])
    return requests


def with_round(request: dict, number: int) -> dict:
    """The request of one round: its request_id made unique (a fake-LLM marker stays at the end)."""
    request = dict(request)
    rid = str(request.get("request_id", "req"))
    marker = fakeanswers.MARKER.search(rid)
    head, tail = (rid[:marker.start()], rid[marker.start():]) if marker else (rid, "")
    request["request_id"] = f"{head}-r{number}{tail}"
    return request


class Corepath:
    """One worker's pure-CPU path; `run(body)` returns every output of one request."""

    def __init__(self, knowledge: list[dict]) -> None:
        self.knowledge = knowledge
        self.writer = ScriptedWriter()
        self.inputs: dict[str, str] = {}   # the input cache: user_id -> JSON, as Redis holds it
        self.script: dict[str, list[fakeanswers.Answer]] = {}  # user message without request_id -> answers
        self.count = 0

    def entries_for(self, categories: list[str]) -> list[dict]:
        wanted = set(categories)  # Store.active_knowledge: active entries of these categories, by category and id
        return sorted((e for e in self.knowledge if e["category"] in wanted), key=lambda e: (e["category"], e["id"]))

    def answers_for(self, request_id: str, categories: list[str], entries: list[dict], request) -> list:
        """The fake LLM's answers to this request's first and second call (computed outside the measurement)."""
        messages = build_messages(request, entries, categories)
        fmt = response_format(categories, entries)
        document = json.loads(messages[-1]["content"])
        return [fakeanswers.answer_for(fakeanswers.mode_of(request_id, call), document, fmt) for call in (1, 2)]

    def prepare(self, body: bytes) -> None:
        try:
            request = validate(body, MAX_BYTES)
        except InvalidRequest:
            return
        categories = categories_for(request)
        key = script_key(body)
        if key not in self.script:
            self.script[key] = self.answers_for(request.request_id, categories, self.entries_for(categories), request)

    def run(self, body: bytes, entries_cache: dict) -> dict:
        self.count += 1
        try:
            request = validate(body, MAX_BYTES)
        except InvalidRequest as exc:
            return {"invalid": exc.code, "message": str(exc)}
        document = request.model_dump(mode="json")  # as Pipeline.process and _generate_and_store do
        digest = input_digest(request, clinical_input(request, document))
        categories = categories_for(request)
        previous_raw = self.inputs.get(request.user_id)
        self.inputs[request.user_id] = json.dumps(document)
        previous = json.loads(previous_raw) if previous_raw is not None else None
        key = tuple(categories)
        if key not in entries_cache:
            entries_cache[key] = self.entries_for(categories)
        self.writer.answers, self.writer.calls = self.script[script_key(body)], []
        try:
            generated = self.writer.generate(request, categories, entries_cache[key])
        except ReportError as exc:
            return {"calls": self.writer.calls, "failed": exc.code, "message": str(exc)}
        report = report_document(request, generated, categories, input_changed(previous, document), digest,
                                 clinical_input(request, document))
        report["report_id"] = f"report-{self.count}"
        report["created_at"], report["processed_by"] = FIXED_TIME, "corepath"
        cached = json.dumps(report, default=_iso)
        response = success(request, report["report_id"])
        response.timestamp = FIXED_TIME
        return {"calls": self.writer.calls, "report": report, "cached": cached, "response": response.to_bytes()}


def script_key(body: bytes) -> str:
    """What decides the fake's answers: the request without its round number."""
    return re.sub(rb'-r\d+(@fake:[a-z:-]+)?"', rb'\1"', body, count=1).decode()


def canonical(output: dict) -> str:
    """One output as a JSON line (stable key order; the stored document's datetimes as ISO 8601)."""
    return json.dumps(output, sort_keys=True, default=lambda v: v.decode() if isinstance(v, bytes) else _iso(v),
                      ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.corepath", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="each request of the set this many times")
    parser.add_argument("--no-digest", action="store_true", help="skip the digest (for instruction counts)")
    parser.add_argument("--outputs", help="write every output as JSON lines to this file")
    parser.add_argument("--callgrind", action="store_true", help="instructions per report, by callgrind")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the gate's refusals log a warning each: not the report path's work
    if args.callgrind:
        return callgrind(args.rounds)
    knowledge = [e for e in json.loads(KNOWLEDGE.read_text(encoding="utf-8")) if e.get("status", "active") == "active"]
    base = load_requests()
    bodies = [[json.dumps(with_round(request, r)).encode() for request in base] for r in range(args.rounds)]
    path = Corepath(knowledge)
    for request in base:  # the same setup with --rounds 0, which --callgrind subtracts
        path.prepare(json.dumps(with_round(request, 0)).encode())
    entries_cache: dict = {}
    outputs = []
    started = time.process_time()
    for round_bodies in bodies:
        for body in round_bodies:
            outputs.append(path.run(body, entries_cache))
    seconds = time.process_time() - started
    reports = max(1, sum(len(b) for b in bodies))
    print(f"corepath: {reports} requests ({len(base)} distinct) in {seconds:.3f} s CPU: "
          f"{seconds / reports * 1000:.3f} ms/report")
    if not args.no_digest:
        digest = hashlib.sha256()
        out = open(args.outputs, "w", encoding="utf-8") if args.outputs else None
        for output in outputs:
            line = canonical(output)
            digest.update(line.encode() + b"\n")
            if out:
                out.write(line + "\n")
        if out:
            out.close()
        print(f"corepath: outputs sha256 {digest.hexdigest()}")
    return 0


def callgrind(rounds: int) -> int:
    """Instructions per report: a run of `rounds` rounds less a run of none (imports and setup), over the reports."""
    counts = []
    for n in (0, rounds):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                            "tests.perf.corepath", "--rounds", str(n), "--no-digest"],
                           check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
            text = Path(out).read_text(encoding="utf-8", errors="replace")
            counts.append(int(re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M).group(1)))
    reports = rounds * len(load_requests())
    print(f"corepath: callgrind {counts[1] - counts[0]:,} instructions for {reports} requests: "
          f"{(counts[1] - counts[0]) / reports / 1e6:.2f}M instructions/report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
