#!/usr/bin/env bash
# The main job on local defaults: services, the fake LLM, the worker, one sample request and its report.
#   scripts/demo.sh                  run, show the report, stop the worker and the fake LLM
#   scripts/demo.sh --keep-running   leave them in the foreground until Ctrl-C
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep-running" ] && KEEP=1
LLM_PORT="${FAKE_LLM_PORT:-8400}"
RUN_DIR="$ROOT/.services/demo"
mkdir -p "$RUN_DIR"

bash scripts/bootstrap.sh
bash scripts/services.sh up
export PATH="$ROOT/.venv/bin:$PATH"
export OPENAI_BASE_URL="${OPENAI_BASE_URL:-http://127.0.0.1:$LLM_PORT/v1}"
export OPENAI_API_KEY="${OPENAI_API_KEY:-local-fake-llm}"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

report-worker kb import sample
report-worker fake-llm --port "$LLM_PORT" --latency 1.0 --jitter 0.3 >"$RUN_DIR/fake-llm.log" 2>&1 &
pids+=($!)
report-worker run --processes 2 --threads 8 >"$RUN_DIR/worker.log" 2>&1 &
pids+=($!)
echo "demo: worker logs in ${RUN_DIR#$ROOT/}/worker.log" >&2
METRICS_PORT="${METRICS_PORT:-9810}"
python3 - "$METRICS_PORT" <<'PY' || { tail -20 "$RUN_DIR/worker.log" >&2; exit 1; }
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("demo: the worker did not become ready within 60 s")
        time.sleep(0.3)
PY
echo "demo: worker ready (http://127.0.0.1:$METRICS_PORT/metrics)" >&2

response="$(report-worker submit worker/data/sample_request.json --new-ids --wait 60)"
echo "$response"
report_id="$(printf '%s' "$response" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["report_id"])')"
echo "--- report $report_id ---"
report-worker show "$report_id"

if [ "$KEEP" = 1 ]; then
    echo "demo: worker running (metrics and health: see README); Ctrl-C stops it" >&2
    wait "${pids[1]}"
fi
