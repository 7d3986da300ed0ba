"""A request's place in `medical_reports`: claimed under a lease while its report is generated, then done.

One document per request_id (unique index) carries the whole story, so the normal path of a new request
costs two MongoDB round trips (claim, complete) and a duplicate one (the claim finds the report):

    claim    find_one_and_update(upsert, the document after) -> the stub with our owner token: ours
                                         (nothing was there: {status: generating, owner, lease_until})
                                         -> done: answer with its report_id (after the conflict check)
                                         -> generating under a live lease: busy (InProgress)
                                         -> generating, lease lapsed or our own token: take it over
    complete update_one(owner = us)      -> the full report, status done, lease fields removed
    release  delete_one(owner = us)      -> only when generating failed; the message is retried or dead-lettered

The owner renews its lease while it works (`Leases`), so a claim outlives repair calls and retry-after
waits, is never taken from a live owner, and lapses `lease_seconds` after its owner died. Stubs left by
owners that never came back are swept by a TTL index an hour after their lease lapsed.
"""

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from worker.errors import TransientError
from worker.logs import EventLog
from worker.store import now, transient_on_failure

log = EventLog(__name__)
GENERATING, DONE = "generating", "done"
CLAIM_FIELDS = {"_id": 0, "request_id": 1, "report_id": 1, "user_id": 1, "input_sha256": 1, "status": 1,
                "owner": 1, "lease_until": 1}


@dataclass(frozen=True)
class Claim:
    state: str          # "ours", "done" or "busy"
    document: dict      # ours: the stub; done/busy: what is stored (report_id, user_id, input_sha256, ...)

    @property
    def report_id(self) -> str:
        return self.document["report_id"]


class Claims:
    """Claim, complete and release reports of `collection` (medical_reports) under leases."""

    def __init__(self, collection: Collection, lease_seconds: float):
        self.reports = collection
        self.lease_seconds = lease_seconds

    def claim(self, request_id: str, user_id: str, digest: str, report_id: str, owner: str) -> Claim:
        stamp = now()
        stub = {"request_id": request_id, "report_id": report_id, "user_id": user_id, "input_sha256": digest,
                "status": GENERATING, "owner": owner, "lease_until": stamp + timedelta(seconds=self.lease_seconds),
                "created_at": stamp}
        with transient_on_failure("claim request"):
            found = None
            for _ in range(3):  # first copies may race on the unique index: the losers read the winner
                try:
                    found = self.reports.find_one_and_update(
                        {"request_id": request_id}, {"$setOnInsert": stub}, upsert=True,
                        projection=CLAIM_FIELDS, return_document=ReturnDocument.AFTER)
                except DuplicateKeyError:
                    pass
                # MongoDB returns the document; the stand-in of our tests may return none under concurrent upserts
                found = found or self.reports.find_one({"request_id": request_id}, CLAIM_FIELDS)
                if found is not None:
                    break
            else:
                raise TransientError(f"could not claim request {request_id}: it is neither inserted nor found")
            if found.get("status") == GENERATING and found.get("owner") == owner:
                return Claim("ours", found)   # we inserted it (the $setOnInsert applied), or our own retry
            if found.get("status", DONE) != GENERATING:
                return Claim("done", found)
            if found.get("owner") != owner and found.get("lease_until") and found["lease_until"] > stamp:
                return Claim("busy", found)
            taken = self.reports.find_one_and_update(
                {"request_id": request_id, "status": GENERATING, "owner": found.get("owner")},
                {"$set": {"owner": owner, "lease_until": stamp + timedelta(seconds=self.lease_seconds)}},
                projection=CLAIM_FIELDS, return_document=ReturnDocument.AFTER)
            if taken is None:
                return Claim("busy", found)  # someone else took it over a moment ago
            log.info("claim_taken_over", request_id=request_id)  # its owner stopped renewing: it died
            return Claim("ours", taken)

    def complete(self, report: dict, owner: str) -> dict:
        """Turn our stub into the stored report; if our lease was lost meanwhile, whatever is stored wins."""
        fields = {key: value for key, value in report.items() if key not in ("owner", "lease_until")}
        with transient_on_failure("store report"):
            done = self.reports.update_one(
                {"request_id": report["request_id"], "status": GENERATING, "owner": owner},
                {"$set": {**fields, "status": DONE}, "$unset": {"owner": "", "lease_until": ""}})
            if done.matched_count:
                return {**fields, "status": DONE}
            stored = self.reports.find_one({"request_id": report["request_id"]}, {"_id": 0})
        if stored is not None and stored.get("status", DONE) == DONE:
            return stored
        raise TransientError(f"lost the claim of request {report['request_id']} while generating it")

    def release(self, request_id: str, owner: str) -> None:
        with transient_on_failure("release claim"):
            self.reports.delete_one({"request_id": request_id, "status": GENERATING, "owner": owner})

    def abandon(self, request_id: str) -> None:
        """Remove a stub whose lease lapsed (its owner died) when the message will not come back."""
        with transient_on_failure("abandon claim"):
            self.reports.delete_one({"request_id": request_id, "status": GENERATING, "lease_until": {"$lt": now()}})

    def renew(self, held: dict[str, str]) -> int:
        """Extend the leases of {request_id: owner} we hold; one round trip for all of them."""
        if not held:
            return 0
        until = now() + timedelta(seconds=self.lease_seconds)
        with transient_on_failure("renew leases"):
            return self.reports.update_many(
                {"status": GENERATING, "$or": [{"request_id": r, "owner": o} for r, o in held.items()]},
                {"$set": {"lease_until": until}}).modified_count


class Leases:
    """The claims this process holds, renewed every third of the lease by one daemon thread."""

    def __init__(self, claims: Claims):
        self.claims = claims
        self.held: dict[str, str] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.thread.start()

    def hold(self, request_id: str, owner: str) -> None:
        with self.lock:
            self.held[request_id] = owner

    def drop(self, request_id: str) -> None:
        with self.lock:
            self.held.pop(request_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.claims.lease_seconds / 3)
            with self.lock:
                held = dict(self.held)
            try:
                self.claims.renew(held)
            except TransientError as exc:  # MongoDB away: the next turn tries again, the lease has slack
                log.warning("lease_renewal_failed", held=len(held), error=str(exc)[:200])
