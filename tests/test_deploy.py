"""What operators install: the systemd units (verify, exposure, the sandbox at work) and the sample config."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sample_request
from tests.services import free_port, wait_for
from worker.settings import ENV_NAMES, Settings, load

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("report-worker.service", "report-worker@.service")
SHIPPED_VENV = "/opt/report-worker/venv/bin/report-worker"
PROJECT_BIN = str(ROOT / ".venv" / "bin" / "report-worker")
MAX_EXPOSURE = 2.0


def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is not installed (Debian package systemd): this test cannot run")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def unit_copy(tmp_path: Path, unit: str, as_name: str | None = None) -> Path:
    """The shipped unit with ExecStart pointing at a binary that exists here; everything else as shipped."""
    text = (ROOT / "systemd" / unit).read_text()
    assert text.count(SHIPPED_VENV) == 1
    path = tmp_path / (as_name or unit)
    path.write_text(text.replace(SHIPPED_VENV, PROJECT_BIN))
    return path


def service_lines(unit: str) -> list[str]:
    """The [Service] section's settings, without comments."""
    section, lines = "", []
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------- systemd units

@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit, as_name", [
    (UNITS[0], None), (UNITS[1], None), (UNITS[1], "report-worker@priority.service")])
def test_systemd_analyze_verify_passes(tmp_path, unit, as_name):
    path = unit_copy(tmp_path, unit, as_name)
    result = systemd_analyze("verify", "--man=no", str(path))
    output = (result.stdout + result.stderr).strip()
    print(f"systemd-analyze verify {path.name}: exit {result.returncode}, output: {output or '(none)'}")
    assert result.returncode == 0, output
    assert path.name not in output, output  # a warning about our unit (unknown key, bad value) fails too


@pytest.mark.timeout(60)
def test_verify_really_checks_the_unit(tmp_path):
    """The control: as shipped, ExecStart names a venv that does not exist on this machine."""
    path = tmp_path / UNITS[0]
    shutil.copy(ROOT / "systemd" / UNITS[0], path)
    result = systemd_analyze("verify", "--man=no", str(path))
    assert result.returncode != 0 and "is not executable" in result.stderr, result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit, as_name", [(UNITS[0], None), (UNITS[1], "report-worker@priority.service")])
def test_security_exposure_is_at_most_2(tmp_path, unit, as_name):
    path = unit_copy(tmp_path, unit, as_name)
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(path))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security --offline=true {path.name}: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


@pytest.mark.timeout(10)
def test_both_units_share_the_same_service_settings():
    per_instance = ("ExecStart=", "EnvironmentFile=", "Environment=PROMETHEUS_MULTIPROC_DIR=", "RuntimeDirectory=")
    plain, template = ([x for x in service_lines(unit) if not x.startswith(per_instance)] for unit in UNITS)
    assert plain == template
    template_lines = service_lines(UNITS[1])
    assert "ExecStart=/opt/report-worker/venv/bin/report-worker run --config /etc/report-worker/%i.toml" in template_lines
    assert "EnvironmentFile=-/etc/report-worker/%i.env" in template_lines
    assert "RuntimeDirectory=report-worker-%i" in template_lines  # not inside report-worker.service's directory


@pytest.mark.timeout(10)
def test_stop_timeout_outlasts_the_graceful_timeout_and_watchdog_is_set():
    lines = dict(line.split("=", 1) for line in service_lines(UNITS[0]))
    seconds = lambda value: float(value.removesuffix("s"))  # noqa: E731
    assert seconds(lines["TimeoutStopSec"]) > Settings().graceful_timeout + 10
    assert lines["KillMode"] == "mixed" and lines["Type"] == "notify" and lines["NotifyAccess"] == "main"
    assert seconds(lines["WatchdogSec"]) >= 10
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"


# ---------------------------------------------------------------------------- the sample config

SAMPLE = ROOT / "deploy" / "config.toml"
DIFFERS_FROM_DEFAULT = {"RABBITMQ_URL"}  # shown without guest:guest, which pika uses anyway


def sample_keys() -> tuple[set[str], set[str]]:
    """(keys set in the sample, keys only named in a comment such as `# worker_processes = 2`)."""
    active, commented = set(), set()
    for line in SAMPLE.read_text().splitlines():
        found = re.match(r"(#\s*)?([a-z_]+)\s*=", line)
        if found:
            (commented if found.group(1) else active).add(found.group(2).upper())
    return active, commented


@pytest.mark.timeout(10)
def test_sample_config_names_every_setting_and_no_secret():
    active, commented = sample_keys()
    secrets = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    assert not (active & secrets)
    assert active | commented == set(ENV_NAMES) - secrets, "deploy/config.toml is out of step with Settings"
    text = SAMPLE.read_text()
    assert all(name.lower() in text for name in secrets), "say where each secret goes instead"


@pytest.mark.timeout(10)
def test_sample_config_loads_and_shows_the_defaults():
    settings = load({"OPENAI_API_KEY": "k"}, SAMPLE)
    defaults = Settings()
    active, _ = sample_keys()
    for key in active - DIFFERS_FROM_DEFAULT:
        name = ENV_NAMES[key].name
        assert getattr(settings, name) == getattr(defaults, name), key
    for line in SAMPLE.read_text().splitlines():
        if re.match(r"[a-z_]+\s*=", line):
            assert "#" in line.split("=", 1)[1], f"no comment on: {line}"


# ---------------------------------------------------------------------------- the sandbox, for real

MDWE_THEN_EXEC = (  # PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN), as MemoryDenyWriteExecute=yes; kept across exec
    "import ctypes, os, sys\n"
    "assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0, 'PR_SET_MDWE failed'\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def sandbox_command(*args: str) -> list[str]:
    """`python -m worker.cli ARGS` with /proc as ProtectProc=invisible + ProcSubset=pid mount it, no
    capabilities (CapabilityBoundingSet=), NoNewPrivileges=yes and MemoryDenyWriteExecute=yes."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"', "sh",
            "setpriv", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all",
            sys.executable, "-c", MDWE_THEN_EXEC, "-m", "worker.cli", *args]


def events(output: str) -> list[str]:
    names = []
    for line in output.splitlines():
        try:
            names.append(json.loads(line).get("event"))
        except (ValueError, AttributeError):
            pass
    return names


def sandbox_available() -> str:
    probe = subprocess.run(sandbox_command("--help"), capture_output=True, text=True, timeout=60, cwd=ROOT)
    return "" if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["?"])[-1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_works_under_the_units_process_and_memory_restrictions(env, broker, db, tmp_path):
    """Children read their RSS (psutil, for MAX_MEMORY_PER_CHILD) with only /proc/<pid> visible, nothing
    needs writable+executable memory, no capability is needed. (Seccomp and address families are not
    emulated here; systemd-analyze checks that they are set.)"""
    why_not = sandbox_available()
    if why_not:
        pytest.fail(f"cannot build the sandbox here (unshare/mount/setpriv/PR_SET_MDWE): {why_not}")
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:  # a 1 MB RSS limit: every child recycles after its first report
        proc = subprocess.Popen(sandbox_command("run", "--processes", "2", "--max-memory-per-child", "1"),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**env, "METRICS_PORT": str(free_port())})
    try:
        output = lambda: log_path.read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "ready" in events(output()) or proc.poll() is not None, 60)
        assert proc.poll() is None, output()[-3000:]
        requests = [sample_request() for _ in range(4)]
        for request in requests:
            broker.publish(request)
        responses = broker.responses(4, timeout=60)
        assert {r["request_id"] for r in responses} == {r["request_id"] for r in requests}
        assert {r["status"] for r in responses} == {"success"}
        wait_for(lambda: "recycle_requested" in events(output()), 10, message=output()[-3000:])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, output()[-3000:]
        assert "child_crashed" not in events(output())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
