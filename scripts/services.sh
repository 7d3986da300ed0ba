#!/usr/bin/env bash
# Make RabbitMQ, Redis and a MongoDB-protocol server (SecantusDB) available on 127.0.0.1.
#
#   scripts/services.sh up             start whatever is not already answering (idempotent)
#   scripts/services.sh down           stop the Mongo stand-in started by this script (only that)
#   scripts/services.sh status         one line per service; exit 1 if any is down
#   scripts/services.sh secantus-path  install SecantusDB if needed, print the path of secantusd-py
#
# Environment: MONGO_PORT (default 27017), RABBITMQ_PORT (5672), REDIS_PORT (6379).
# Messages go to stderr; only `status` and `secantus-path` write to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="$ROOT/.services"
SECANTUS_VERSION="0.7.0b3"
SECANTUS_VENV="$SERVICES_DIR/secantus"
SECANTUSD="$SECANTUS_VENV/bin/secantusd-py"
SECANTUS_STAMP="$SECANTUS_VENV/.installed-SecantusDB-$SECANTUS_VERSION"
SECANTUS_INSTALL_LOG="$SERVICES_DIR/secantus-install.log"
HOST="127.0.0.1"
MONGO_PORT="${MONGO_PORT:-27017}"
# A non-default MONGO_PORT gets its own pid file, log and data directory.
MONGO_SUFFIX=""; [ "$MONGO_PORT" = 27017 ] || MONGO_SUFFIX="-$MONGO_PORT"
MONGO_PID_FILE="$SERVICES_DIR/secantus$MONGO_SUFFIX.pid"
MONGO_LOG="$SERVICES_DIR/secantus$MONGO_SUFFIX.log"
MONGO_DATA="$SERVICES_DIR/mongo-data$MONGO_SUFFIX"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
REDIS_PORT="${REDIS_PORT:-6379}"

RABBITMQ_DEADLINE=90
REDIS_DEADLINE=30
MONGO_DEADLINE=30
MONGO_STOP_DEADLINE=10

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------- helpers

port_open() { # port_open PORT -> 0 when something accepts TCP connections on $HOST:PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

APT_UPDATED=0
apt_install() { # apt_install PKG... (runs apt-get update once per invocation)
    command -v apt-get >/dev/null || die "apt-get not available; cannot install $*"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || die "apt-get install $* failed"
}

# ---------------------------------------------------------------------------- RabbitMQ

rabbitmq_up() {
    if ! port_open "$RABBITMQ_PORT"; then
        if ! command -v rabbitmq-server >/dev/null || ! command -v rabbitmqctl >/dev/null; then
            apt_install rabbitmq-server
        fi
        log "starting RabbitMQ (rabbitmq-server -detached)"
        rabbitmq-server -detached >&2 || die "rabbitmq-server -detached failed"
        local deadline=$((SECONDS + RABBITMQ_DEADLINE))
        until port_open "$RABBITMQ_PORT" \
                && timeout 10 rabbitmqctl await_startup --timeout 5 >/dev/null 2>&1; do
            [ "$SECONDS" -lt "$deadline" ] \
                || die "RabbitMQ did not come up on $HOST:$RABBITMQ_PORT within ${RABBITMQ_DEADLINE}s (see /var/log/rabbitmq/)"
            sleep 1
        done
        log "RabbitMQ started on $HOST:$RABBITMQ_PORT"
    fi
    # guest/guest must work (RabbitMQ allows guest from loopback by default).
    if command -v rabbitmqctl >/dev/null; then
        if ! timeout 20 rabbitmqctl authenticate_user guest guest >/dev/null 2>&1; then
            log "user guest/guest does not authenticate; (re)creating it with full rights on vhost /"
            timeout 20 rabbitmqctl add_user guest guest >/dev/null 2>&1 \
                || timeout 20 rabbitmqctl change_password guest guest >/dev/null 2>&1 \
                || die "cannot create or reset RabbitMQ user guest"
            timeout 20 rabbitmqctl set_user_tags guest administrator >/dev/null 2>&1 || true
            timeout 20 rabbitmqctl set_permissions -p / guest '.*' '.*' '.*' >/dev/null 2>&1 \
                || die "cannot set RabbitMQ permissions for guest on vhost /"
            timeout 20 rabbitmqctl authenticate_user guest guest >/dev/null 2>&1 \
                || die "RabbitMQ user guest/guest still does not authenticate"
        fi
    fi
    log "RabbitMQ up on $HOST:$RABBITMQ_PORT"
}

rabbitmq_status() {
    if port_open "$RABBITMQ_PORT"; then echo "rabbitmq: up   amqp://guest:guest@$HOST:$RABBITMQ_PORT/"; return 0; fi
    echo "rabbitmq: down amqp://guest:guest@$HOST:$RABBITMQ_PORT/"; return 1
}

# ---------------------------------------------------------------------------- Redis

redis_ping() {
    command -v redis-cli >/dev/null || return 1
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

redis_up() {
    if ! redis_ping; then
        if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
            apt_install redis-server redis-tools
        fi
        port_open "$REDIS_PORT" && die "port $HOST:$REDIS_PORT is taken but does not answer Redis PING"
        mkdir -p /var/lib/redis /var/log/redis
        log "starting Redis on $HOST:$REDIS_PORT"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 \
            || die "redis-server failed to start (see /var/log/redis/ci.log)"
        local deadline=$((SECONDS + REDIS_DEADLINE))
        until redis_ping; do
            [ "$SECONDS" -lt "$deadline" ] \
                || die "Redis did not answer PING on $HOST:$REDIS_PORT within ${REDIS_DEADLINE}s (see /var/log/redis/ci.log)"
            sleep 0.2
        done
    fi
    log "Redis up on $HOST:$REDIS_PORT"
}

redis_status() {
    if redis_ping; then echo "redis:    up   redis://$HOST:$REDIS_PORT/0"; return 0; fi
    echo "redis:    down redis://$HOST:$REDIS_PORT/0"; return 1
}

# ---------------------------------------------------------------------------- SecantusDB (MongoDB stand-in)

secantus_installed() {
    [ -x "$SECANTUSD" ] || return 1
    [ -f "$SECANTUS_STAMP" ] && return 0
    # Installed by someone else (e.g. a provisioning step): accept it if the pinned version is there.
    "$SECANTUS_VENV/bin/python" - "$SECANTUS_VERSION" >/dev/null 2>&1 <<'PY' || return 1
import sys, importlib.metadata as md
sys.exit(0 if md.version("SecantusDB") == sys.argv[1] else 1)
PY
    touch "$SECANTUS_STAMP"
}

wait_for_foreign_install() {
    # Another process may be installing into the venv right now; it logs to $SECANTUS_INSTALL_LOG
    # and ends the log with "done". Wait while that log is unfinished and still being written.
    [ -f "$SECANTUS_INSTALL_LOG" ] || return 0
    local deadline=$((SECONDS + 900)) warned=0
    while [ "$(tail -n 1 "$SECANTUS_INSTALL_LOG" 2>/dev/null)" != "done" ]; do
        local age=$(( $(date +%s) - $(stat -c %Y "$SECANTUS_INSTALL_LOG") ))
        [ "$age" -lt 120 ] || return 0           # stale, unfinished log: a dead install
        [ "$SECONDS" -lt "$deadline" ] || die "SecantusDB install by another process did not finish within 900s ($SECANTUS_INSTALL_LOG)"
        [ "$warned" = 1 ] || { log "waiting for a SecantusDB install in progress ($SECANTUS_INSTALL_LOG)"; warned=1; }
        sleep 2
    done
}

secantus_install() {
    secantus_installed && return 0
    mkdir -p "$SERVICES_DIR"
    # Serialise concurrent callers of this script (e.g. parallel test workers).
    exec 8>"$SERVICES_DIR/secantus-install.lock"
    flock -w 900 8 || die "timed out waiting for the SecantusDB install lock"
    wait_for_foreign_install
    if ! secantus_installed; then
        log "installing SecantusDB==$SECANTUS_VERSION into $SECANTUS_VENV (log: $SECANTUS_INSTALL_LOG)"
        local t0=$SECONDS
        {
            [ -x "$SECANTUS_VENV/bin/python" ] || python3 -m venv "$SECANTUS_VENV"
            "$SECANTUS_VENV/bin/pip" install --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
        } >"$SECANTUS_INSTALL_LOG" 2>&1 || { tail -n 20 "$SECANTUS_INSTALL_LOG" >&2; die "SecantusDB install failed (see $SECANTUS_INSTALL_LOG)"; }
        [ -x "$SECANTUSD" ] || die "SecantusDB installed but $SECANTUSD is missing"
        touch "$SECANTUS_STAMP"
        echo "done" >>"$SECANTUS_INSTALL_LOG"
        log "SecantusDB installed in $((SECONDS - t0))s"
    fi
    flock -u 8; exec 8>&-
}

ping_python() { # prints a python interpreter to run the ping check with
    local py
    for py in "$SECANTUS_VENV/bin/python" "$ROOT/.venv/bin/python"; do
        if [ -x "$py" ] && "$py" -c 'import pymongo' >/dev/null 2>&1; then echo "$py"; return 0; fi
    done
    command -v python3
}

mongo_ping() { # mongo_ping PORT -> 0 when a MongoDB `ping` command answers ok
    local py; py="$(ping_python)" || return 1
    "$py" - "$HOST" "$1" >/dev/null 2>&1 <<'PY'
import sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    import pymongo
except ImportError:
    pymongo = None
if pymongo is not None:
    c = pymongo.MongoClient(host, port, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000,
                            directConnection=True)
    try:
        sys.exit(0 if c.admin.command("ping").get("ok") == 1 else 1)
    finally:
        c.close()
# No pymongo: a raw OP_MSG {ping: 1, $db: "admin"} over the wire protocol.
import socket, struct
def cstr(s): return s.encode() + b"\0"
body = b"\x10" + cstr("ping") + struct.pack("<i", 1) + b"\x02" + cstr("$db") + struct.pack("<i", 6) + cstr("admin")
doc = struct.pack("<i", len(body) + 5) + body + b"\0"
payload = struct.pack("<I", 0) + b"\0" + doc
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload
with socket.create_connection((host, port), timeout=2) as s:
    s.sendall(msg)
    data = b""
    while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(1)
        data += chunk
sys.exit(0 if b"\x01ok\x00" + struct.pack("<d", 1.0) in data else 1)
PY
}

mongo_pid() { # prints the pid of the stand-in this script started, if it is still running
    [ -f "$MONGO_PID_FILE" ] || return 1
    local pid; pid="$(cat "$MONGO_PID_FILE" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q secantusd || return 1  # pid reuse guard
    echo "$pid"
}

mongo_up() {
    secantus_install
    if ! mongo_ping "$MONGO_PORT"; then
        local pid
        if pid="$(mongo_pid)"; then
            log "SecantusDB (pid $pid) is running but not answering yet; waiting"
        else
            port_open "$MONGO_PORT" && die "port $HOST:$MONGO_PORT is taken but does not answer a MongoDB ping"
            mkdir -p "$MONGO_DATA" || die "cannot create the data directory $MONGO_DATA"
            log "starting SecantusDB on $HOST:$MONGO_PORT (data: $MONGO_DATA, log: $MONGO_LOG)"
            echo "--- $(date -Is) start on $HOST:$MONGO_PORT" >>"$MONGO_LOG"
            rm -f "$MONGO_PID_FILE"
            # Every step execs the next (subshell -> setsid -> nohup -> bash -> server), so no shell
            # lingers holding our stdout/stderr, and the inner bash writes the server's own pid.
            (
                cd "$SERVICES_DIR"
                exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$MONGO_PID_FILE" \
                    "$SECANTUSD" --host "$HOST" --port "$MONGO_PORT" --storage-path "$MONGO_DATA" \
                    --log-level WARNING </dev/null >>"$MONGO_LOG" 2>&1 8>&- 9>&-
            ) &
        fi
        local t0=$SECONDS deadline=$((SECONDS + MONGO_DEADLINE))
        until mongo_ping "$MONGO_PORT"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                tail -n 20 "$MONGO_LOG" >&2 || true
                die "SecantusDB did not answer a ping on $HOST:$MONGO_PORT within ${MONGO_DEADLINE}s (log: $MONGO_LOG)"
            fi
            if [ "$SECONDS" -gt "$((t0 + 1))" ] && ! mongo_pid >/dev/null; then
                # No live server of ours: it died (e.g. the port or the data dir was busy).
                mongo_ping "$MONGO_PORT" && break
                tail -n 20 "$MONGO_LOG" >&2 || true
                die "SecantusDB exited during startup (log: $MONGO_LOG)"
            fi
            sleep 0.2
        done
        log "SecantusDB answered ping after $((SECONDS - t0))s"
    fi
    log "MongoDB (SecantusDB) up on $HOST:$MONGO_PORT"
}

mongo_down() {
    local pid
    if ! pid="$(mongo_pid)"; then
        rm -f "$MONGO_PID_FILE"
        log "no SecantusDB started by this script is running; nothing to stop"
        return 0
    fi
    log "stopping SecantusDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + MONGO_STOP_DEADLINE))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "SecantusDB (pid $pid) ignored SIGTERM for ${MONGO_STOP_DEADLINE}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            kill -0 "$pid" 2>/dev/null && die "could not stop SecantusDB (pid $pid)"
            break
        fi
        sleep 0.2
    done
    rm -f "$MONGO_PID_FILE"
    log "SecantusDB stopped"
}

mongo_status() {
    local who=""
    if mongo_ping "$MONGO_PORT"; then
        local pid; pid="$(mongo_pid)" && who=" (SecantusDB pid $pid)" || who=" (not started by this script)"
        echo "mongodb:  up   mongodb://$HOST:$MONGO_PORT$who"; return 0
    fi
    echo "mongodb:  down mongodb://$HOST:$MONGO_PORT"; return 1
}

# ---------------------------------------------------------------------------- main

usage() { echo "usage: $0 up|down|status|secantus-path" >&2; exit 2; }

[ $# -eq 1 ] || usage
case "$1" in
    up)
        t0=$SECONDS
        rabbitmq_up
        redis_up
        mongo_up
        log "all services up ($((SECONDS - t0))s)"
        ;;
    down)
        mongo_down
        ;;
    status)
        rc=0
        rabbitmq_status || rc=1
        redis_status || rc=1
        mongo_status || rc=1
        exit "$rc"
        ;;
    secantus-path)
        secantus_install
        echo "$SECANTUSD"
        ;;
    *) usage ;;
esac
