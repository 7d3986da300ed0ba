#!/usr/bin/env bash
# Bootstrap the venv, make RabbitMQ/Redis/MongoDB available, run pytest (args passed through).
# The exit code is pytest's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh
bash scripts/services.sh up
bash scripts/tools.sh
exec "$ROOT/.venv/bin/python" -m pytest "$@"
