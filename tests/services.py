"""Helpers for tests that need real services (not a test module).

``MongoServer`` runs a throwaway MongoDB wire-protocol server (SecantusDB, installed by
``scripts/services.sh``) on a free port with an in-memory store, so each test session or
benchmark gets a fresh, isolated database.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pymongo
import pymongo.errors

REPO_ROOT = Path(__file__).resolve().parent.parent
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.sh"

START_TIMEOUT = 30.0
POLL_INTERVAL = 0.1
STOP_TIMEOUT = 10.0

T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    """Poll ``predicate()`` until it returns something truthy and return that value.

    Raises AssertionError(message) if it is still falsy after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


@functools.lru_cache(maxsize=None)
def secantusd_path() -> str:
    """Absolute path of ``secantusd-py``; installs SecantusDB on first use if needed."""
    result = subprocess.run(
        ["bash", str(SERVICES_SCRIPT), "secantus-path"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"scripts/services.sh secantus-path failed (exit {result.returncode}): "
            f"{result.stderr.strip()}"
        )
    return path


_live_servers: "set[MongoServer]" = set()


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_live_servers):
        try:
            server.stop()
        except Exception:
            pass


class MongoServer:
    """A throwaway SecantusDB server on 127.0.0.1:<free port> with ``--storage-path :memory:``.

    Use as ``with MongoServer() as mongo: ... mongo.url ...`` or call start()/stop().
    ``restart()`` keeps the port; the in-memory store starts empty again, unless a
    ``storage_path`` directory was given: then the data lives there and survives a restart
    (the directory belongs to the caller and is not removed by stop()).
    """

    def __init__(self, test_commands: bool = False, port: Optional[int] = None,
                 storage_path: Optional[str] = None) -> None:
        self.test_commands = test_commands
        self.storage_path = storage_path
        self._fixed_port = port is not None
        self._port: Optional[int] = port
        self._proc: Optional[subprocess.Popen] = None
        self._workdir: Optional[str] = None
        self._log_path: Optional[str] = None
        self.startup_seconds: Optional[float] = None

    # -- properties -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MongoServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Optional[str]:
        return self._log_path

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs) -> pymongo.MongoClient:
        """A new MongoClient for this server (the caller closes it)."""
        return pymongo.MongoClient(self.url, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        if not self._log_path or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "r", errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "MongoServer":
        return self._start(retry_ports=not self._fixed_port)

    def _start(self, retry_ports: bool) -> "MongoServer":
        if self.running:
            return self
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="secantus-test-")
            self._log_path = os.path.join(self._workdir, "secantus.log")
        if self._port is None:
            self._port = free_port()
        # An auto-chosen port can be taken between free_port() and the server's bind: retry.
        attempts = 3 if retry_ports else 1
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self._port = free_port()
            try:
                self._launch_and_wait()
                return self
            except RuntimeError:
                died = self._proc is not None and self._proc.poll() is not None
                if attempt == attempts or not died:
                    self.stop()  # the error message already carries the log tail
                    raise
                self._stop_process()
        raise AssertionError("unreachable")

    def _launch_and_wait(self) -> None:
        cmd = [
            secantusd_path(),
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--storage-path", self.storage_path or ":memory:",
            "--log-level", "WARNING",
        ]
        if self.test_commands:
            cmd.append("--enable-test-commands")
        assert self._log_path is not None and self._workdir is not None
        with open(self._log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._workdir,  # no ./secantusd.toml to auto-discover here
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live_servers.add(self)
        deadline = started + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"secantusd-py exited with code {self._proc.returncode} during startup on "
                    f"port {self._port}; log tail:\n{self.log_tail()}"
                )
            if self._ping():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() >= deadline:
                self._stop_process()
                raise RuntimeError(
                    f"secantusd-py did not answer ping on port {self._port} within "
                    f"{START_TIMEOUT:.0f} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _ping(self) -> bool:
        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500)
        try:
            client.admin.command("ping")
            return True
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    def _stop_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: pgid == pid
                except ProcessLookupError:
                    pass
                proc.wait()
            except ProcessLookupError:
                pass
        self._proc = None
        _live_servers.discard(self)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; removes the temporary log directory."""
        self._stop_process()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._log_path = None

    def stop_process(self) -> None:
        """Stop the server (SIGTERM) but keep its port, log and storage: restart() brings it back."""
        self._stop_process()

    def restart(self) -> "MongoServer":
        """Stop and start again on the same port (in memory: with a new, empty store)."""
        self._stop_process()
        return self._start(retry_ports=False)

    def __enter__(self) -> "MongoServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MongoServer {self._port} {state}>"


def queues_of(environ: dict) -> dict[str, str]:
    """The queues a worker with this environment declares, by role, from the project's own topology code."""
    from worker.settings import load
    from worker.topology import queue_names

    keys = ("RABBITMQ_REQUEST_QUEUE", "RABBITMQ_RESPONSE_QUEUE", "RABBITMQ_DLQ", "RETRY_DELAYS")
    names = {key: environ[key] for key in keys if environ.get(key)}
    assert "RABBITMQ_REQUEST_QUEUE" in names, "no queue names of a test or bench run: refusing the defaults"
    return queue_names(load(environ={"OPENAI_BASE_URL": "http://unused", **names}))


def series(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample in Prometheus text exposition as (name, labels, value): the one parser of tests and bench."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples]


def samples(text: str, name: str, **labels) -> list[float]:
    """Values of every series of `name` in Prometheus text exposition whose labels include `labels`."""
    wanted = {key: str(value) for key, value in labels.items()}
    return [value for found, have, value in series(text)
            if found == name and all(have.get(k) == v for k, v in wanted.items())]
