#!/usr/bin/env bash
# Install the command-line tools the tests use besides the services (promtool, supervisord).
#
#   scripts/tools.sh              install whatever is missing (idempotent); prints nothing on stdout
#   scripts/tools.sh check        exit 1 and name the missing tools, install nothing
#   scripts/tools.sh supervisord  install supervisord if needed, print the directory of its commands
#
# promtool comes with Debian's `prometheus` package; the package's own service is not started.
# supervisord (PyPI `supervisor`) gets its own venv, .services/supervisord: in the project's venv its
# top-level `supervisor` package would clash with ours.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUPERVISOR_VERSION="4.3.0"
SUPERVISOR_VENV="$ROOT/.services/supervisord"

log() { echo "tools: $*" >&2; }
die() { echo "tools: ERROR: $*" >&2; exit 1; }

missing() {
    command -v promtool >/dev/null || echo prometheus
}

supervisord_bin() { # install supervisor==$SUPERVISOR_VERSION into its own venv if needed; print its bin dir
    local stamp="$SUPERVISOR_VENV/.installed-supervisor-$SUPERVISOR_VERSION"
    if [ ! -f "$stamp" ] || [ ! -x "$SUPERVISOR_VENV/bin/supervisord" ]; then
        log "installing supervisor $SUPERVISOR_VERSION into ${SUPERVISOR_VENV#"$ROOT"/}"
        python3 -m venv "$SUPERVISOR_VENV" >&2 || die "python3 -m venv $SUPERVISOR_VENV failed"
        "$SUPERVISOR_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "supervisor==$SUPERVISOR_VERSION" >&2 || die "pip install supervisor==$SUPERVISOR_VERSION failed"
        "$SUPERVISOR_VENV/bin/supervisord" --version >/dev/null || die "supervisord does not run"
        rm -f "$SUPERVISOR_VENV"/.installed-supervisor-*
        touch "$stamp"
    fi
    echo "$SUPERVISOR_VENV/bin"
}

case "${1:-install}" in
    supervisord)
        supervisord_bin
        ;;
    check)
        need="$(missing)"
        [ -x "$SUPERVISOR_VENV/bin/supervisord" ] || { log "missing: supervisord (scripts/tools.sh supervisord)"; exit 1; }
        [ -z "$need" ] || { log "missing: promtool (Debian package: $need)"; exit 1; }
        ;;
    install)
        supervisord_bin >/dev/null
        need="$(missing)"
        [ -n "$need" ] || exit 0
        command -v apt-get >/dev/null || die "apt-get not available; install promtool (package $need) by hand"
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        log "apt-get install $need"
        # policy-rc.d 101: the package must not start (or fail to start) its daemon inside a container.
        policy=/usr/sbin/policy-rc.d; made_policy=0
        if [ ! -e "$policy" ] && [ -w /usr/sbin ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        fi
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >&2 || rc=$?
        [ "$made_policy" = 0 ] || rm -f "$policy"
        [ "$rc" = 0 ] || die "apt-get install $need failed"
        command -v promtool >/dev/null || die "package $need installed but promtool is not on PATH"
        log "promtool: $(promtool --version 2>&1 | head -n 1)"
        ;;
    *) echo "usage: $0 [install|check|supervisord]" >&2; exit 2 ;;
esac
