"""`report-worker kb import|list`: load knowledge-base entries from JSON or JSON lines."""

import json
import sys
from importlib import resources
from typing import IO, Iterator

from worker.store import Store

REQUIRED = ("id", "category", "title", "content", "source_url")
BATCH = 100


def sample_path() -> str:
    return str(resources.files("worker") / "data" / "knowledge_base.json")


def read_entries(stream: IO[str]) -> list[dict]:
    text = stream.read().strip()
    if text.startswith("["):
        entries = json.loads(text)
    else:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    for number, entry in enumerate(entries, 1):
        missing = [key for key in REQUIRED if not entry.get(key)]
        if missing:
            raise ValueError(f"entry {number}: missing {', '.join(missing)}")
        entry.setdefault("status", "active")
        entry.setdefault("verified_source", False)
    return entries


def batches(entries: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(entries), size):
        yield entries[start:start + size]


def progress(done: int, total: int, out: IO[str]) -> None:
    width = 30
    filled = width * done // max(total, 1)
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        out.write("\n")
    out.flush()


def import_file(store: Store, path: str, out: IO[str] = sys.stderr) -> int:
    with open(path, encoding="utf-8") as handle:
        entries = read_entries(handle)
    done = 0
    for batch in batches(entries, BATCH):
        done += store.upsert_knowledge(batch)
        progress(done, len(entries), out)
    return done
