#!/usr/bin/env bash
# Install report-worker on a VM, idempotently: a second run with the same input changes nothing.
#
#   deploy/install.sh [--prefix DIR] [--wheel FILE] [--python PY] [--no-start] [--dry-run]
#   deploy/install.sh --uninstall [--purge]
#
#   --prefix DIR   where the venv goes: DIR/venv (default /opt/report-worker)
#   --wheel FILE   install this wheel (default: the checkout this script belongs to)
#   --python PY    interpreter for the venv, 3.11 or newer (default python3)
#   --root DIR     install below DIR as if it were / (tests, staging): no user is created, no ownership
#                  is changed, systemctl is not called; the venv is built at DIR/PREFIX/venv
#   --no-start     install and daemon-reload, but do not enable or start the service
#   --dry-run      print the steps, change nothing
#   --uninstall    stop and disable the service, remove the units and the venv; keep /etc/report-worker
#                  (config and secrets) and the system user
#   --purge        with --uninstall: remove /etc/report-worker and the system user too
#
# What it does: system user `report-worker` (useradd --system), venv with the package (pinned by the
# checkout's requirements.txt), /etc/report-worker/config.toml (from deploy/config.toml, 0640
# root:report-worker) and /etc/report-worker/env (secrets, 0600 root:root), both written only when
# absent, the units in /etc/systemd/system, then `systemctl daemon-reload` and `enable --now` when
# systemd runs. A freshly created env file holds no OPENAI_API_KEY yet: the service is then enabled
# but not started; fill in the file and `systemctl start report-worker`.
set -euo pipefail
umask 022

CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USER_NAME=report-worker
UNITS=(report-worker.service report-worker@.service)
DEFAULT_PREFIX=/opt/report-worker

ROOT=/ PREFIX=$DEFAULT_PREFIX WHEEL="" PYTHON=python3 NO_START=0 DRY_RUN=0 UNINSTALL=0 PURGE=0
CHANGED=0

log() { echo "install: $*"; }
die() { echo "install: ERROR: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --root) ROOT="${2:?--root needs a directory}"; shift ;;
        --wheel) WHEEL="${2:?--wheel needs a file}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
        --no-start) NO_START=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage ;;
        *) echo "install: unknown option $1" >&2; usage ;;
    esac
    shift
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
ROOT="$(cd "$ROOT" 2>/dev/null && pwd)" || die "--root directory does not exist"
[ "$ROOT" != / ] || ROOT=""          # paths below are "$ROOT/etc/...": "" means the real /
if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or try --dry-run, or --root DIR for a staging tree)"
fi
[ -z "$WHEEL" ] || WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"

VENV="$ROOT$PREFIX/venv"
ETC="$ROOT/etc/report-worker"
UNIT_DIR="$ROOT/etc/systemd/system"
STAMP="$VENV/.report-worker-source"

# ---------------------------------------------------------------------------- helpers

run() { # run CMD...: do it (or, with --dry-run, only say it), and remember that something changed
    CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then log "would run: $*"; else log "run: $*"; "$@"; fi
}

real_root() { [ -z "$ROOT" ]; }
systemd_running() { real_root && [ -d /run/systemd/system ]; }

set_owner() { # set_owner OWNER:GROUP PATH: only on the real root, where the user exists
    if real_root; then
        [ "$(stat -c %U:%G "$2")" = "$1" ] || run chown "$1" "$2"
    fi
}

set_mode() { # set_mode MODE PATH
    [ "$(stat -c %a "$2")" = "${1#0}" ] || run chmod "$1" "$2"
}

put_file() { # put_file PATH MODE OWNER:GROUP < content: write when the content differs
    local path="$1" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        set_mode "$2" "$path"
        set_owner "$3" "$path"
        return 1
    fi
    local what="$path (mode $2)"
    ! real_root || what="$path (mode $2, owner $3)"
    CHANGED=1
    if [ "$DRY_RUN" = 1 ]; then
        log "would write $what"
    else
        log "write $what"
        install -m "$2" "$tmp" "$path"
    fi
    rm -f "$tmp"
    [ ! -e "$path" ] || set_owner "$3" "$path"
}

source_hash() { # what the venv was built from: the wheel, or the packaged files of the checkout
    if [ -n "$WHEEL" ]; then
        sha256sum "$WHEEL" | cut -c1-64
    else
        (cd "$CHECKOUT" && find setup.cfg pyproject.toml requirements.txt README.md worker supervisor metrics \
            -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum) \
            | sha256sum | cut -c1-64
    fi
}

unit_text() { # unit_text NAME: the unit from systemd/, with the venv path of this --prefix
    sed "s#/opt/report-worker/venv/#$PREFIX/venv/#g" "$CHECKOUT/systemd/$1"
}

env_text() {
    cat <<'EOF'
# Secrets for report-worker, read by systemd (EnvironmentFile=); keep this file 0600, owned by root.
# Variables here win over /etc/report-worker/config.toml. Never put them in config.toml.
# Quote a value holding & ; or spaces with single quotes (systemd and sh read it the same way):
#   MONGODB_URL='mongodb://report-worker:PASSWORD@db1,db2/?replicaSet=rs0&tls=true'
#OPENAI_API_KEY=sk-...
#RABBITMQ_URL=amqp://report-worker:PASSWORD@localhost:5672/
#REDIS_URL=redis://:PASSWORD@localhost:6379/0
#MONGODB_URL=mongodb://report-worker:PASSWORD@localhost:27017/?authSource=admin
#REQUEST_SIGNING_KEY=
EOF
}

# ---------------------------------------------------------------------------- install steps

ensure_user() {
    if ! real_root; then
        log "system user $USER_NAME: not created below --root $ROOT (useradd --system on the target)"
    elif getent passwd "$USER_NAME" >/dev/null; then
        log "system user $USER_NAME exists"
    else
        run useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "report-worker service" "$USER_NAME"
    fi
}

ensure_venv() {
    local hash
    hash="$(source_hash)"
    if [ -x "$VENV/bin/report-worker" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$hash" ]; then
        log "venv $VENV is up to date"
        return
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON is not Python 3.11 or newer (use --python)"
    [ -d "$ROOT$PREFIX" ] || run install -d -m 0755 "$ROOT$PREFIX"
    [ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV" \
        || die "$PYTHON -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    local wheel="$WHEEL" build=""
    if [ -z "$wheel" ]; then
        if [ "$DRY_RUN" = 1 ]; then
            wheel="<a wheel built from $CHECKOUT>"
        else
            # Build from a copy, so the checkout gets no build/ or egg-info from us.
            build="$(mktemp -d)"
            mkdir "$build/src" "$build/dist"
            tar -C "$CHECKOUT" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
                setup.cfg pyproject.toml README.md worker supervisor metrics | tar -C "$build/src" -xf -
            log "building a wheel from $CHECKOUT"
            "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
                --wheel-dir "$build/dist" "$build/src" >&2 || die "building the wheel failed"
            wheel="$(echo "$build"/dist/*.whl)"
        fi
    fi
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    [ ! -f "$CHECKOUT/requirements.txt" ] || pip+=(--constraint "$CHECKOUT/requirements.txt")
    run "${pip[@]}" "$wheel"
    run "${pip[@]}" --force-reinstall --no-deps "$wheel"   # same version number, new content
    [ -z "$build" ] || rm -rf "$build"
    [ "$DRY_RUN" = 1 ] || echo "$hash" >"$STAMP"
}

ensure_config() {
    [ -d "$ETC" ] || run install -d -m 0750 "$ETC"
    if [ -d "$ETC" ]; then set_mode 0750 "$ETC"; set_owner "root:$USER_NAME" "$ETC"; fi
    if [ -e "$ETC/config.toml" ]; then
        log "$ETC/config.toml exists: kept as it is"
    else
        put_file "$ETC/config.toml" 0640 "root:$USER_NAME" <"$CHECKOUT/deploy/config.toml" || true
    fi
    if [ -e "$ETC/env" ]; then
        log "$ETC/env exists: kept as it is"
        [ "$(stat -c %a "$ETC/env")" = 600 ] || log "WARNING: $ETC/env should be mode 0600 (it holds secrets)"
    else
        env_text | put_file "$ETC/env" 0600 root:root || true
        FRESH_ENV=1
    fi
}

ensure_units() {
    [ -d "$UNIT_DIR" ] || run install -d -m 0755 "$UNIT_DIR"
    local unit
    for unit in "${UNITS[@]}"; do
        if unit_text "$unit" | put_file "$UNIT_DIR/$unit" 0644 root:root; then
            UNITS_CHANGED=1
        else
            log "$UNIT_DIR/$unit is up to date"
        fi
    done
}

start_service() {
    if ! systemd_running; then
        log "systemd is not running here: no daemon-reload, enable or start"
        return
    fi
    [ "$UNITS_CHANGED" = 0 ] || run systemctl daemon-reload
    if [ "$NO_START" = 1 ]; then
        log "--no-start: not enabling report-worker.service"
    elif [ "${FRESH_ENV:-0}" = 1 ]; then
        systemctl is-enabled --quiet report-worker.service || run systemctl enable report-worker.service
        log "put OPENAI_API_KEY (and passwords) in $ETC/env, then: systemctl start report-worker"
    elif ! systemctl is-active --quiet report-worker.service || ! systemctl is-enabled --quiet report-worker.service; then
        run systemctl enable --now report-worker.service
    elif [ "$VENV_CHANGED" = 1 ] || [ "$UNITS_CHANGED" = 1 ]; then
        run systemctl restart report-worker.service    # graceful: TERM drains in-flight work
    fi
}

install_all() {
    UNITS_CHANGED=0
    ensure_user
    local before=$CHANGED
    ensure_venv
    VENV_CHANGED=$((CHANGED - before))
    ensure_config
    ensure_units
    start_service
    if [ "$CHANGED" = 0 ]; then log "nothing to do: already installed"
    elif [ "$DRY_RUN" = 1 ]; then log "dry run: nothing was changed"
    else log "done"; fi
}

# ---------------------------------------------------------------------------- uninstall

uninstall_all() {
    if systemd_running; then
        if systemctl is-enabled --quiet report-worker.service || systemctl is-active --quiet report-worker.service; then
            run systemctl disable --now report-worker.service
        fi
        local instance
        for instance in $(systemctl list-units --plain --no-legend 'report-worker@*.service' | awk '{print $1}'); do
            run systemctl disable --now "$instance"
        done
    fi
    local unit removed=0
    for unit in "${UNITS[@]}"; do
        [ ! -e "$UNIT_DIR/$unit" ] || { run rm -f "$UNIT_DIR/$unit"; removed=1; }
    done
    [ "$removed" = 0 ] || ! systemd_running || run systemctl daemon-reload
    [ ! -e "$VENV" ] || run rm -rf "$VENV"
    [ ! -d "$ROOT$PREFIX" ] || [ -n "$(ls -A "$ROOT$PREFIX")" ] || run rmdir "$ROOT$PREFIX"
    if [ "$PURGE" = 1 ]; then
        [ ! -e "$ETC" ] || run rm -rf "$ETC"
        if real_root && getent passwd "$USER_NAME" >/dev/null; then run userdel "$USER_NAME"; fi
    elif [ -e "$ETC" ]; then
        log "kept $ETC (config and secrets) and the user $USER_NAME; --purge removes them"
    fi
    if [ "$CHANGED" = 0 ]; then log "nothing to remove"
    elif [ "$DRY_RUN" = 1 ]; then log "dry run: nothing was changed"
    else log "done"; fi
}

if [ "$UNINSTALL" = 1 ]; then uninstall_all; else install_all; fi
