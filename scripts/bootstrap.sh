#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install requirements.txt plus the project (editable).
# Skips pip when .venv/.installed-<sha256 of requirements.txt + setup.cfg> exists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

log() { echo "bootstrap: $*" >&2; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

for f in requirements.txt setup.cfg; do
    [ -f "$f" ] || die "$ROOT/$f is missing"
done

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
fi
"$VENV/bin/python" -c 'import sys' || die "$VENV/bin/python does not run; delete $VENV and retry"

HASH="$(cat requirements.txt setup.cfg | sha256sum | cut -c1-64)"
STAMP="$VENV/.installed-$HASH"
if [ -f "$STAMP" ]; then
    log "dependencies up to date (${STAMP#$ROOT/})"
    exit 0
fi

log "installing requirements.txt and the project (editable) into .venv"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt \
    || die "pip install -r requirements.txt failed"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e . --no-deps \
    || die "pip install -e . failed"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[bench]" \
    || die "pip install -e .[bench] failed (Celery, for the benchmark's peer scenario)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
log "done"
