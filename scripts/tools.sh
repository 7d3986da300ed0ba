#!/usr/bin/env bash
# Install the command-line tools the tests use besides the services (today: promtool).
#
#   scripts/tools.sh          install whatever is missing (idempotent); prints nothing on stdout
#   scripts/tools.sh check    exit 1 and name the missing tools, install nothing
#
# promtool comes with Debian's `prometheus` package; the package's own service is not started.
set -euo pipefail

log() { echo "tools: $*" >&2; }
die() { echo "tools: ERROR: $*" >&2; exit 1; }

missing() {
    command -v promtool >/dev/null || echo prometheus
}

case "${1:-install}" in
    check)
        need="$(missing)"
        [ -z "$need" ] || { log "missing: promtool (Debian package: $need)"; exit 1; }
        ;;
    install)
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
    *) echo "usage: $0 [install|check]" >&2; exit 2 ;;
esac
