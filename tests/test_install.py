"""deploy/install.sh below a temporary --root: files, modes, owners, idempotence, dry runs, uninstall."""

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("report-worker.service", "report-worker@.service")
SHIPPED_VENV = "/opt/report-worker/venv/bin/report-worker"
SAMPLE = ROOT / "deploy" / "config.toml"

INSTALL = ROOT / "deploy" / "install.sh"
PREFIX = "/opt/rw-test"


def install(root: Path, *args: str, timeout: float = 600) -> str:
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--prefix", PREFIX,
                             "--python", sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def listing(root: Path) -> dict[str, tuple]:
    """Every path below root: its type and mode, and a sha256 of files or the target of links."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        found[str(path.relative_to(root))] = (stat.filemode(info.st_mode), content)
    return found


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One real installation (venv and all) below a temporary root, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("vm")
    output = install(root)
    return root, output


@pytest.fixture
def installed_copy(installed, tmp_path):
    """A copy of that installation this test may change."""
    copy = tmp_path / "vm"
    shutil.copytree(installed[0], copy, symlinks=True)
    return copy


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_install_writes_the_venv_config_env_and_units(installed):
    root, output = installed
    etc = root / "etc" / "report-worker"
    assert (etc / "config.toml").read_text() == SAMPLE.read_text()
    assert mode(etc) == "0o750" and mode(etc / "config.toml") == "0o640" and mode(etc / "env") == "0o600"
    assert "OPENAI_API_KEY" in (etc / "env").read_text()
    for unit in UNITS:
        path = root / "etc" / "systemd" / "system" / unit
        assert mode(path) == "0o644"
        assert f"ExecStart={PREFIX}/venv/bin/report-worker run" in path.read_text()
        assert SHIPPED_VENV not in path.read_text()
    binary = root / PREFIX.lstrip("/") / "venv" / "bin" / "report-worker"
    result = subprocess.run([str(binary), "run", "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0 and "--processes" in result.stdout, result.stderr
    assert "not created below --root" in output and "systemd is not running" in output
    assert "useradd" not in output.replace("useradd --system on the target", "")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_second_install_changes_nothing(installed_copy):
    before = listing(installed_copy)
    output = install(installed_copy)
    assert listing(installed_copy) == before
    assert "nothing to do: already installed" in output, output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_existing_config_and_env_are_never_overwritten(installed_copy):
    etc = installed_copy / "etc" / "report-worker"
    (etc / "env").write_text("OPENAI_API_KEY=sk-operator\n")
    (etc / "config.toml").write_text("worker_threads = 3\n")
    output = install(installed_copy)
    assert (etc / "env").read_text() == "OPENAI_API_KEY=sk-operator\n"
    assert (etc / "config.toml").read_text() == "worker_threads = 3\n"
    assert "kept as it is" in output


@pytest.mark.timeout(60)
def test_dry_run_changes_nothing(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    output = install(root, "--dry-run")
    assert list(root.iterdir()) == []
    assert "would run" in output and "would write" in output and "nothing was changed" in output
    assert f"{root}/etc/report-worker/env (mode 0600)" in output
    wheel = tmp_path / "report_worker-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not read in a dry run")
    assert str(wheel) in install(root, "--dry-run", "--wheel", str(wheel))


@pytest.mark.timeout(60)
def test_dry_run_on_the_real_root_would_create_the_user_and_set_owners(tmp_path):
    prefix = f"/opt/report-worker-dry-run-{tmp_path.name}"
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--prefix", prefix, "--python", sys.executable],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "would run: useradd --system" in result.stdout or "system user report-worker exists" in result.stdout
    assert "/etc/report-worker/env (mode 0600, owner root:root)" in result.stdout or "env exists" in result.stdout
    assert not Path(prefix).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_install_from_a_wheel_upgrades_once(installed_copy, tmp_path):
    source = tmp_path / "src"  # a copy, so that building leaves no build/ in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "worker", "supervisor", "metrics"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("report_worker-*.whl")
    output = install(installed_copy, "--wheel", str(wheel))
    assert "--force-reinstall --no-deps" in output and str(wheel) in output
    before = listing(installed_copy)
    assert "nothing to do" in install(installed_copy, "--wheel", str(wheel))
    assert listing(installed_copy) == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dry_run_on_an_installed_root_changes_nothing(installed_copy):
    before = listing(installed_copy)
    install(installed_copy, "--dry-run", "--uninstall", "--purge")
    install(installed_copy, "--dry-run")
    assert listing(installed_copy) == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_uninstall_keeps_config_unless_purge(installed_copy):
    units = installed_copy / "etc" / "systemd" / "system"
    output = install(installed_copy, "--uninstall")
    assert not (installed_copy / PREFIX.lstrip("/")).exists()
    assert not any((units / unit).exists() for unit in UNITS)
    assert (installed_copy / "etc" / "report-worker" / "env").exists()
    assert "--purge removes them" in output
    assert "nothing to remove" in install(installed_copy, "--uninstall")
    install(installed_copy, "--uninstall", "--purge")
    assert not (installed_copy / "etc" / "report-worker").exists()
