"""Fixtures of the fault-injection suite: `report-worker run` with its own metrics port, and the ledger."""


import pytest

from tests.faults.accounting import Ledger
from tests.harness import Parent


@pytest.fixture
def llm(llm):
    """The shared fake LLM; also puts back what only fault tests change."""
    yield llm
    llm.configure(hang_seconds=120.0, malformed_first=0)


@pytest.fixture
def ledger(broker, db, names, env):
    """The books of this test; queues it knows of (delay queues included) are deleted afterwards."""
    books = Ledger(broker, db, names, env["RETRY_DELAYS"])
    yield books
    try:
        broker.delete_queues(books.queues[1:])
    except Exception:  # the broker fixture reports a dead connection itself
        pass


@pytest.fixture
def parent(supervisor, ledger):
    """The `supervisor` harness (tests/conftest.py), telling the ledger of the delay queues it uses."""

    def start(*args: str, wait_ready: bool = True, **overrides) -> Parent:
        if "RETRY_DELAYS" in overrides:
            ledger.use_retry_delays(str(overrides["RETRY_DELAYS"]))
        return supervisor(*args, wait_ready=wait_ready, **overrides)

    return start
