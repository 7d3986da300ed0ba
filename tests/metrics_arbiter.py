"""`report-worker run` as the CLI composes it (supervisor, children, metrics endpoint): a test driver.

Usage: python -m tests.metrics_arbiter   (settings from the environment, like `report-worker run`)
"""

import sys

from worker import cli

if __name__ == "__main__":
    sys.exit(cli.main(["run"]))
