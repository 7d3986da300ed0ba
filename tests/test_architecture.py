"""The structure rules: import contracts (import-linter, configured in setup.cfg) and small modules."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("worker", "supervisor", "metrics")
MAX_LINES = 300


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def contracts() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "BROKEN" not in result.stdout


def test_every_worker_module_has_a_layer():
    layers = contracts()["importlinter:contract:layers"]["layers"]
    listed = re.findall(r"worker\.(\w+)", layers)
    assert len(listed) == len(set(listed)), "a module is in two layers"
    modules = {path.stem for path in (ROOT / "worker").glob("*.py") if path.stem != "__init__"}
    assert modules == set(listed), f"not in a layer: {sorted(modules - set(listed))}; gone: {sorted(set(listed) - modules)}"


@pytest.mark.parametrize("module, forbidden, contract", [
    ("worker/pipeline.py", "import metrics.definitions", "know nothing of pika"),
    ("worker/store.py", "import pika", "know nothing of pika"),
    ("worker/consumer.py", "import prometheus_client", "No module under worker/"),
    ("metrics/queues.py", "import supervisor.states", "supervisor | metrics"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, forbidden, contract):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / module, "a") as handle:
        handle.write(f"\n{forbidden}  # added by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and contract in result.stdout.replace("\n", " "), result.stdout
    assert forbidden.split()[-1] in result.stdout


def test_no_module_outside_tests_is_over_300_lines():
    long = {}
    for package in (*PACKAGES, "bench"):
        for path in (ROOT / package).rglob("*.py"):
            lines = path.read_text().count("\n")
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"
