"""deploy/supervisord/report-worker.conf under a real supervisord: start, work, `supervisorctl stop` drains."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import sample_request
from tests.services import free_port, wait_for
from worker.settings import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "supervisord" / "report-worker.conf"


def supervisord_bin() -> Path:
    """supervisord lives in its own venv (scripts/tools.sh installs it once)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "tools.sh"), "supervisord"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"scripts/tools.sh supervisord failed: {result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


class Supervisord:
    """supervisord in the foreground with a temp config that includes the shipped program section."""

    def __init__(self, directory: Path, env: dict):
        self.directory, self.bin = directory, supervisord_bin()
        etc, logs = directory / "etc", directory / "log"
        etc.mkdir()
        logs.mkdir()
        # The secrets and this test's queues, database and LLM go in the env file the program sources.
        settings = {k: v for k, v in env.items() if k in ENV_NAMES}
        (etc / "env").write_text("".join(f"{k}='{v}'\n" for k, v in settings.items()))
        (etc / "env").chmod(0o600)
        (etc / "config.toml").write_text("worker_processes = 2\n")
        program = (SHIPPED.read_text()
                   .replace("/opt/report-worker/venv/bin/report-worker", str(ROOT / ".venv" / "bin" / "report-worker"))
                   .replace("/etc/report-worker/", f"{etc}/")
                   .replace("/var/log/supervisor/", f"{logs}/")
                   .replace("user=report-worker\n", ""))  # the test runs as whoever it is
        assert "/opt/" not in program and "/etc/report-worker" not in program
        (directory / "report-worker.conf").write_text(program)
        self.socket = directory / "supervisor.sock"
        self.conf = directory / "supervisord.conf"
        self.conf.write_text(f"""\
[unix_http_server]
file={self.socket}

[supervisord]
nodaemon=true
logfile={logs}/supervisord.log
pidfile={directory}/supervisord.pid
childlogdir={logs}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.socket}

[include]
files = {directory}/report-worker.conf
""")
        self.worker_log = logs / "report-worker.log"
        self.log = logs / "supervisord.log"
        # A bare environment: what the worker gets must come from the env file and the program section.
        self.proc = subprocess.Popen([str(self.bin / "supervisord"), "-c", str(self.conf)],
                                     env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(directory)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def ctl(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(self.bin / "supervisorctl"), "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=timeout)
        return result.stdout + result.stderr

    def worker_output(self) -> str:
        return self.worker_log.read_text(errors="replace") if self.worker_log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ctl("shutdown", timeout=150)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def supervisord(env, tmp_path):
    started = []

    def start(**overrides) -> Supervisord:
        daemon = Supervisord(tmp_path, {**env, "METRICS_PORT": str(free_port()), **overrides})
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def parent_ready(daemon: Supervisord) -> bool:
    for line in daemon.worker_output().splitlines():
        try:
            if json.loads(line).get("event") == "ready":
                return True
        except (ValueError, AttributeError):
            pass
    return False


def wait_running(daemon: Supervisord, timeout: float = 60) -> None:
    try:
        wait_for(lambda: "RUNNING" in daemon.ctl("status", "report-worker") and parent_ready(daemon), timeout, 0.5)
    except AssertionError:
        pytest.fail(f"report-worker did not become ready under supervisord; its log:\n{daemon.worker_output()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_supervisorctl_stop_drains_in_flight_work_and_loses_nothing(supervisord, broker, db, llm, names):
    llm.configure(latency=3.0)
    daemon = supervisord(GRACEFUL_TIMEOUT="30", WORKER_THREADS="2")
    wait_running(daemon)

    requests = [sample_request() for _ in range(12)]
    for request in requests:
        broker.publish(request)
    wait_for(lambda: llm.stats()["calls"] >= 4, 30)  # 2 children x 2 threads busy, the rest queued
    started = time.monotonic()
    stopped = daemon.ctl("stop", "report-worker")
    stop_seconds = time.monotonic() - started
    print(f"supervisorctl stop took {stop_seconds:.1f} s: {stopped.strip()}")
    assert "report-worker: stopped" in stopped, stopped
    assert "STOPPED" in daemon.ctl("status", "report-worker")
    assert "stopped: report-worker (exit status 0)" in daemon.log.read_text(), daemon.log.read_text()[-2000:]
    assert stop_seconds < 30

    answered = broker.take(names["RABBITMQ_RESPONSE_QUEUE"])
    in_flight_calls = llm.stats()["calls"]
    assert len(answered) >= 4, "in-flight reports were not finished before the exit"
    assert len(answered) + broker.depth(names["RABBITMQ_REQUEST_QUEUE"]) == len(requests)
    assert len(answered) <= in_flight_calls

    assert "report-worker: started" in daemon.ctl("start", "report-worker")
    rest = broker.responses(len(requests) - len(answered), timeout=90)
    ids = [json.loads(body)["request_id"] for _, body in answered] + [r["request_id"] for r in rest]
    assert sorted(ids) == sorted(r["request_id"] for r in requests)
    assert db.medical_reports.count_documents({}) == len(requests)
