"""Fixtures of the fault-injection suite: `report-worker run` with its own metrics port, and the ledger."""

import uuid

import pytest

from tests.faults.accounting import Ledger
from tests.faults.harness import Parent
from tests.services import free_port


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
def parent(spawn, env, ledger):
    """start(*args, **env) runs `report-worker run ARGS` on a free metrics port and waits for READY."""

    def start(*args: str, wait_ready: bool = True, **overrides) -> Parent:
        # its own worker name: another suite closing "its" worker's connections by name must not hit ours
        run_env = {**env, "METRICS_PORT": str(free_port()), "WORKER_NAME": f"faults-{uuid.uuid4().hex[:8]}",
                   **{k: str(v) for k, v in overrides.items()}}
        if "RETRY_DELAYS" in overrides:
            ledger.use_retry_delays(run_env["RETRY_DELAYS"])
        process = Parent(spawn(["run", *args], run_env), int(run_env["METRICS_PORT"]))
        if wait_ready:
            process.wait_event("ready", timeout=60)
        return process

    return start
