"""Poison that kills its process: which messages were in flight when a child died abnormally, and how often.

The child keeps a journal next to its heartbeat: the fingerprints of the messages its threads are
handling now, rewritten before each one starts and after it ends (one small pwrite). When the parent
reaps a child that died abnormally (a signal it did not send for a planned stop, a crash, a hang kill),
it adds one to each journalled fingerprint's count in the crash book, a small JSON file the children
read when a message comes back redelivered. The consumer runs a message with a count alone (so
messages that merely shared a dying child are not blamed again) and the handler dead-letters one
whose count reached POISON_CRASH_LIMIT (`crashed_worker`). Counts are per VM and fade after a day.
"""

import hashlib
import json
import os
import threading
import time

from worker.logs import EventLog

log = EventLog(__name__)
JOURNAL_SUFFIX = ".inflight"
BOOK = "crashes.json"
FORGET_AFTER = 86400.0
TEST_CRASH_ENV = "REPORT_WORKER_TEST_CRASH_ON"  # test-only: a body containing this text kills its child


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


class Journal:
    """The child's side: what its threads handle now, and what the book says of a message."""

    def __init__(self, heartbeat_path: str, crash_on: str | None = None):
        self.path = heartbeat_path + JOURNAL_SUFFIX
        self.book = os.path.join(os.path.dirname(heartbeat_path), BOOK)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.handling: dict[str, int] = {}
        self.lock = threading.Lock()
        self.crash_on = crash_on.encode() if crash_on else b""
        self._book: tuple[float, dict] = (0.0, {})

    def started(self, body: bytes) -> None:
        key = fingerprint(body)
        with self.lock:
            self.handling[key] = self.handling.get(key, 0) + 1
            self._write()
        if self.crash_on and self.crash_on in body:
            log.warning("test_crash", hook=TEST_CRASH_ENV)
            os._exit(1)  # test-only: the poison that kills its process

    def finished(self, body: bytes) -> None:
        key = fingerprint(body)
        with self.lock:
            if self.handling.get(key, 0) > 1:
                self.handling[key] -= 1
            else:
                self.handling.pop(key, None)
            self._write()

    def crashes(self, body: bytes) -> int:
        """How many children died while handling this message (0 when the book does not know it)."""
        try:
            mtime = os.stat(self.book).st_mtime
        except FileNotFoundError:
            return 0
        if mtime != self._book[0]:
            self._book = (mtime, read_book(self.book))
        return self._book[1].get(fingerprint(body), {}).get("crashes", 0)

    def _write(self) -> None:
        data = "\n".join(self.handling).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))


class CrashBook:
    """The parent's side: blame the messages a dead child was handling."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, BOOK)

    def blame(self, heartbeat_path: str) -> list[str]:
        """Count one crash for every message in the journal of the child of `heartbeat_path`."""
        try:
            with open(heartbeat_path + JOURNAL_SUFFIX, encoding="ascii") as handle:
                keys = [line for line in handle.read().splitlines() if line]
        except FileNotFoundError:
            return []
        if not keys:
            return []
        now = time.time()
        book = {key: entry for key, entry in read_book(self.path).items() if now - entry["at"] < FORGET_AFTER}
        for key in keys:
            book[key] = {"crashes": book.get(key, {}).get("crashes", 0) + 1, "at": now}
        partial = self.path + ".tmp"
        with open(partial, "w", encoding="ascii") as handle:
            json.dump(book, handle)
        os.replace(partial, self.path)
        log.warning("messages_blamed", count=len(keys), crashes=max(book[key]["crashes"] for key in keys))
        return keys


def forget(heartbeat_path: str) -> None:
    try:
        os.unlink(heartbeat_path + JOURNAL_SUFFIX)
    except FileNotFoundError:
        pass


def read_book(path: str) -> dict:
    try:
        with open(path, encoding="ascii") as handle:
            book = json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}
    return book if isinstance(book, dict) else {}
