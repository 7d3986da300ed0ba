"""Messages that were in flight when a process died (poison suspects) run alone; every handling is journalled."""

import contextlib
import threading
from typing import Iterator, Protocol

from worker.delivery import Delivery
from worker.logs import EventLog

log = EventLog(__name__)


class Journal(Protocol):
    """What the supervisor keeps for its child (supervisor.crashes.Journal): no journal, no crash counting."""

    def started(self, body: bytes) -> None: ...

    def finished(self, body: bytes) -> None: ...

    def crashes(self, body: bytes) -> int: ...


class NoJournal:
    def started(self, body: bytes) -> None:
        pass

    def finished(self, body: bytes) -> None:
        pass

    def crashes(self, body: bytes) -> int:
        return 0


class Handling:
    """`with handling(delivery):` around each handler call. A suspect (a delivery with crashes) waits until
    nothing else runs and keeps others from starting until it ends: if it kills the process again, it is
    the only one blamed."""

    def __init__(self, journal: Journal | None, crash_limit: int):
        self.journal = journal or NoJournal()
        self.crash_limit = crash_limit
        self.condition = threading.Condition()
        self.running = 0
        self.waiting_suspects = 0
        self.alone = False

    @contextlib.contextmanager
    def __call__(self, delivery: Delivery) -> Iterator[None]:
        if delivery.crashes >= self.crash_limit:  # the handler dead-letters it without running it
            yield
            return
        suspect = delivery.crashes > 0
        with self.condition:
            if suspect:
                self.waiting_suspects += 1
                self.condition.wait_for(lambda: self.running == 0 and not self.alone)
                self.waiting_suspects -= 1
                self.alone = True
                log.warning("suspect_running_alone", crashes=delivery.crashes)
            else:
                self.condition.wait_for(lambda: not self.alone and not self.waiting_suspects)
            self.running += 1
        try:
            self.journal.started(delivery.body)
            yield
        finally:
            self.journal.finished(delivery.body)
            with self.condition:
                self.running -= 1
                if suspect:
                    self.alone = False
                self.condition.notify_all()
