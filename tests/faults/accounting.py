"""Full accounting after a fault: each request stored once and answered, nothing left queued, the DLQ exact.

A fault test publishes through a `Ledger`, injects its fault, then calls `ledger.settle(timeout)` (wait
until every message has had its last word and the queues are quiet) and `ledger.verify(name)`, which
asserts that the books balance and returns the figures for the closing note:

- every request_id has exactly one document in `medical_reports` (or, for a request allowed to fail,
  none, one `failed` response and one DLQ message);
- every stored request has at least one `success` response, and all of them carry the stored report_id;
- nothing is left ready or unacknowledged in the request queue or its retry delay queues;
- the DLQ holds exactly the expected messages, each once, each with the headers saying why.
"""

import json
import subprocess

from tests.services import queues_of
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

DEAD_LETTER_HEADERS = ("x-death-reason", "x-error")


@dataclass
class Figures:
    """What one fault test sent and what the worker left, for the closing note."""

    scenario: str
    sent: int = 0                 # messages published (duplicates and poison included)
    requests: int = 0             # distinct valid request ids
    stored: int = 0               # documents in medical_reports
    responses: int = 0            # response messages taken, duplicates included
    succeeded: int = 0            # requests answered `success`
    failed: int = 0               # requests answered `failed` (and dead-lettered)
    dlq: int = 0                  # messages in the DLQ
    recover_seconds: float | None = None
    notes: dict = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"scenario={self.scenario}", f"sent={self.sent}", f"requests={self.requests}",
                 f"stored={self.stored}", f"responses={self.responses}", f"succeeded={self.succeeded}",
                 f"failed={self.failed}", f"dlq={self.dlq}"]
        if self.recover_seconds is not None:
            parts.append(f"recover_seconds={self.recover_seconds:.2f}")
        parts += [f"{key}={value}" for key, value in self.notes.items()]
        return "FIGURE " + " ".join(parts)


def queue_counts(queues: list[str]) -> dict[str, tuple[int, int]]:
    """(ready, unacknowledged) of each named queue, as the broker itself counts them."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", *QUEUE_COUNT_COLUMNS],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return parse_queue_counts(out, queues)


QUEUE_COUNT_COLUMNS = ("name", "messages_ready", "messages_unacknowledged", "--no-table-headers")


def parse_queue_counts(out: str, queues: list[str]) -> dict[str, tuple[int, int]]:
    """`rabbitmqctl list_queues` with QUEUE_COUNT_COLUMNS -> {queue: (ready, unacknowledged)} of `queues`."""
    counts = {}
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] in queues:
            counts[fields[0]] = (int(fields[1]), int(fields[2]))
    return counts


class Ledger:
    """What a test sent, and everything the worker left: responses, dead letters, stored reports."""

    def __init__(self, broker, db, names: dict, retry_delays: str):
        self.broker = broker
        self.db = db
        self.names = names
        self.queues: list[str] = []
        self.use_retry_delays(retry_delays)
        self.requests: dict[str, dict] = {}   # request_id -> request, each must end stored and answered
        self.may_fail: set[str] = set()       # ... or, for these, answered `failed` and dead-lettered once
        self.poison: dict[str, bytes] = {}    # message_id -> body; each must reach the DLQ exactly once
        self.sent = 0
        self.responses: list[dict] = []
        self.dead: list[tuple[object, bytes]] = []
        self.counts = queue_counts            # how the broker counts queues (a cluster test asks the cluster)

    def use_retry_delays(self, retry_delays: str) -> None:
        """The worker's RETRY_DELAYS: its delay queues must end empty too."""
        roles = queues_of({**self.names, "RETRY_DELAYS": retry_delays})
        self.queues = [queue for role, queue in roles.items() if role not in ("response", "dlq")]

    # ---- sending ------------------------------------------------------------------------------

    def publish(self, request: dict, copies: int = 1, may_fail: bool = False, **properties) -> None:
        for _ in range(copies):
            self.broker.publish(request, **properties)
            self.sent += 1
        self.requests[request["request_id"]] = request
        if may_fail:
            self.may_fail.add(request["request_id"])

    def publish_poison(self, message_id: str, body: bytes, **properties) -> None:
        """A message that must end in the DLQ; `message_id` is how its dead letter is recognised."""
        assert message_id not in self.poison
        self.broker.publish(body, message_id=message_id, **properties)
        self.poison[message_id] = body
        self.sent += 1

    # ---- reading what came back -----------------------------------------------------------------

    def take(self) -> None:
        """Move every response and dead letter now in the broker into the ledger."""
        for _, body in self.broker.take(self.names["RABBITMQ_RESPONSE_QUEUE"]):
            self.responses.append(json.loads(body))
        self.dead.extend(self.broker.take(self.names["RABBITMQ_DLQ"]))

    def by_request(self) -> dict[str, list[dict]]:
        grouped = defaultdict(list)
        for response in self.responses:
            grouped[response["request_id"]].append(response)
        return grouped

    def unresolved(self) -> list[str]:
        """Request ids without their last word yet, and poison message ids not dead-lettered yet."""
        grouped = self.by_request()
        dead_ids = {properties.message_id for properties, _ in self.dead}
        waiting = []
        for request_id in self.requests:
            statuses = {r["status"] for r in grouped.get(request_id, ())}
            if "success" in statuses or (request_id in self.may_fail and "failed" in statuses):
                continue
            waiting.append(request_id)
        waiting += [message_id for message_id in self.poison if message_id not in dead_ids]
        return waiting

    def answered(self) -> int:
        """Requests with a `success` response so far (taking what is there first)."""
        self.take()
        grouped = self.by_request()
        return sum(1 for rid in self.requests if any(r["status"] == "success" for r in grouped.get(rid, ())))

    def quiet(self) -> bool:
        """Nothing ready or unacknowledged in the request queue and its delay queues."""
        if any(self.broker.depth(queue) for queue in self.queues):
            return False
        counts = self.counts(self.queues)
        return all(counts.get(queue, (0, 0)) == (0, 0) for queue in self.queues)

    def settle(self, timeout: float, tick=None) -> float:
        """Wait until every message had its last word and the queues are quiet; returns the seconds waited.

        `tick()`, if given, is called on every poll (a test injecting faults while requests flow)."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if tick is not None:
                tick()
            self.take()
            waiting = self.unresolved()
            if not waiting and self.quiet():
                break
            assert time.monotonic() < deadline, (
                f"after {timeout} s, {len(waiting)} of {len(self.requests)} requests and {len(self.poison)} "
                f"poison messages have not had their last word (e.g. {waiting[:5]}); queues: "
                f"{self.counts(self.queues)}")
            self.broker.sleep(0.2 if waiting else 1.0)
        self.take()  # a last response published just before the last ack
        return time.monotonic() - started

    # ---- the books ------------------------------------------------------------------------------

    def verify(self, scenario: str) -> Figures:
        """Assert that everything balances; return the figures."""
        grouped = self.by_request()
        reports = list(self.db.medical_reports.find({}, {"_id": 0, "request_id": 1, "report_id": 1}))
        stored = defaultdict(list)
        for report in reports:
            stored[report["request_id"]].append(report["report_id"])
        dead_requests = Counter()
        dead_poison = Counter()
        for properties, body in self.dead:
            headers = properties.headers or {}
            assert all(headers.get(h) for h in DEAD_LETTER_HEADERS), f"dead letter without a reason: {headers}"
            if properties.message_id in self.poison:
                assert body == self.poison[properties.message_id], f"{properties.message_id}: body changed"
                dead_poison[properties.message_id] += 1
            else:
                dead_requests[json.loads(body)["request_id"]] += 1

        succeeded, failed = set(), set()
        for request_id in self.requests:
            answers = grouped.get(request_id, [])
            success = [r for r in answers if r["status"] == "success"]
            if success:
                succeeded.add(request_id)
                assert len(stored[request_id]) == 1, f"{request_id}: {len(stored[request_id])} reports stored"
                [report_id] = stored[request_id]
                assert {r["report_id"] for r in success} == {report_id}, f"{request_id}: answers name other reports"
                assert len(success) == len(answers), f"{request_id}: also answered failed: {answers}"
                assert dead_requests[request_id] == 0, f"{request_id}: succeeded but also dead-lettered"
            else:
                failed.add(request_id)
                assert request_id in self.may_fail, f"{request_id}: never answered success: {answers}"
                assert [r["status"] for r in answers] == ["failed"], f"{request_id}: {answers}"
                assert not stored[request_id], f"{request_id}: failed yet a report is stored"
                assert dead_requests[request_id] == 1, f"{request_id}: {dead_requests[request_id]} dead letters"
        assert set(dead_requests) <= failed, f"dead letters of requests that were not given up: {dead_requests}"
        assert dict(dead_poison) == {message_id: 1 for message_id in self.poison}, (
            f"poison dead-lettered not exactly once: missing {set(self.poison) - set(dead_poison)}, "
            f"twice {[m for m, n in dead_poison.items() if n > 1]}")
        strangers = {rid for rid in stored if rid not in self.requests}
        assert not strangers, f"reports for requests never sent: {strangers}"
        for request_id, answers in grouped.items():
            if request_id not in self.requests:  # a poison message whose ids could be read
                assert {r["status"] for r in answers} == {"failed"}, f"{request_id}: {answers}"
        assert self.quiet(), f"messages left behind: {self.counts(self.queues)}"
        return Figures(scenario, sent=self.sent, requests=len(self.requests), stored=len(reports),
                       responses=len(self.responses), succeeded=len(succeeded), failed=len(failed),
                       dlq=len(self.dead))
