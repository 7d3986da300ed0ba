"""MongoDB: users, medical_reports and knowledge_base, with the indexes the pipeline relies on."""

import contextlib
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from worker.errors import TransientError

INDEXES = {
    "users": [([("user_id", ASCENDING)], {"unique": True}), ([("created_at", ASCENDING)], {})],
    "medical_reports": [
        ([("report_id", ASCENDING)], {"unique": True}),
        ([("request_id", ASCENDING)], {"unique": True}),
        ([("user_id", ASCENDING), ("created_at", DESCENDING)], {}),
        ([("lease_until", ASCENDING)], {"expireAfterSeconds": 3600}),  # stubs of owners that never came back
    ],
    "knowledge_base": [
        ([("id", ASCENDING)], {"unique": True}),
        ([("category", ASCENDING)], {}),
        ([("status", ASCENDING)], {}),
    ],
}


@contextlib.contextmanager
def transient_on_failure(action: str) -> Iterator[None]:
    """Any database failure other than a duplicate key is worth a retry later."""
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        raise TransientError(f"mongodb {action}: {type(exc).__name__}: {exc}") from exc


def now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    def __init__(self, url: str, database: str, timeout_seconds: float = 5.0, write_concern: str = "majority",
                 journal: bool = True):
        timeout_ms = int(timeout_seconds * 1000)
        self.client: MongoClient = MongoClient(
            url,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms * 6,
            appname="report-worker",
            tz_aware=True,
        )
        self.db = self.client[database]
        self.users = self.db["users"]
        concern = WriteConcern(w=int(write_concern) if write_concern.isdigit() else write_concern, j=journal)
        self.reports = self.db.get_collection("medical_reports", write_concern=concern)  # acked once durable
        self.knowledge = self.db["knowledge_base"]

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        with transient_on_failure("ping"):
            self.client.admin.command("ping")

    def ensure_indexes(self) -> None:
        with transient_on_failure("create indexes"):
            for collection, indexes in INDEXES.items():
                for keys, options in indexes:
                    self.db[collection].create_index(keys, **options)

    def upsert_user(self, user_id: str) -> None:
        stamp = now()
        with transient_on_failure("upsert user"):
            try:
                self.users.update_one(
                    {"user_id": user_id},
                    {"$setOnInsert": {"user_id": user_id, "created_at": stamp}, "$set": {"updated_at": stamp}},
                    upsert=True,
                )
            except DuplicateKeyError:
                pass  # two first requests of one user raced; the other upsert created it

    def find_report(self, request_id: str) -> dict | None:
        with transient_on_failure("find report"):
            return self.reports.find_one({"request_id": request_id}, {"_id": 0})

    def active_knowledge(self, categories: Iterable[str]) -> list[dict]:
        query = {"status": "active", "category": {"$in": sorted(set(categories))}}
        with transient_on_failure("load knowledge"):
            cursor = self.knowledge.find(query, {"_id": 0}).sort([("category", ASCENDING), ("id", ASCENDING)])
            return list(cursor)

    def upsert_knowledge(self, entries: Iterable[Mapping[str, Any]]) -> int:
        operations = [UpdateOne({"id": e["id"]}, {"$set": dict(e)}, upsert=True) for e in entries]
        if not operations:
            return 0
        with transient_on_failure("import knowledge"):
            self.knowledge.bulk_write(operations, ordered=False)
        return len(operations)

    def list_knowledge(self, category: str | None = None) -> list[dict]:
        query = {"category": category} if category else {}
        with transient_on_failure("list knowledge"):
            return list(self.knowledge.find(query, {"_id": 0}).sort("id", ASCENDING))

