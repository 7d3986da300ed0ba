"""The README and the sample config keep up with the settings."""

import pytest

from tests.conftest import ROOT
from worker.settings import ENV_NAMES


@pytest.mark.timeout(10)
def test_readme_documents_every_setting_and_both_setup_commands():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in ENV_NAMES if f"`{name}`" not in readme]
    assert missing == []
    assert "scripts/demo.sh" in readme and "scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.timeout(10)
def test_readme_shows_the_current_example_report():
    sample = (ROOT / "tests" / "data" / "eval" / "sample_report.md").read_text().rstrip("\n")
    assert "```markdown\n" + sample + "\n```" in (ROOT / "README.md").read_text()
