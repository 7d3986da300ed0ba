#!/usr/bin/env bash
# A local three-node RabbitMQ cluster beside the main node, for the cluster fault tests and the bench.
#
#   scripts/cluster.sh up           start rw-c1..rw-c3@localhost and join them (idempotent; takes over
#                                   nodes of the same names left running by another checkout)
#   scripts/cluster.sh down         stop the three nodes and wipe their state
#   scripts/cluster.sh status       one line per node; exit 1 if any is down
#   scripts/cluster.sh urls         the AMQP URLs of the three nodes, comma-separated (RABBITMQ_URL)
#   scripts/cluster.sh partition N  cut node N off from the other two (nftables; Erlang distribution only)
#   scripts/cluster.sh heal         remove the partition; a node still paused 30 s later
#                                   (CLUSTER_HEAL_WAIT) is restarted (RabbitMQ 3.10.8 sometimes stays paused)
#   scripts/cluster.sh restart N    restart node N's Erlang VM on its state (killed if it hangs)
#
# Node N (1..3) is rw-cN@localhost: AMQP on 127.0.0.1:568N, distribution on 127.0.0.1:2568N, its outgoing
# distribution connections leave from its own loopback address 127.0.1.N (so a partition can tell the
# nodes apart), management off, `cluster_partition_handling = pause_minority`, net_ticktime 10 s (a cut
# node notices within ~10 s). Data, logs and config live under .services/cluster/ in this checkout. The
# main node (rabbit@localhost, 5672/25672) is never touched; only EPMD (4369) and the Erlang cookie
# (/var/lib/rabbitmq/.erlang.cookie: nodes and CLI both run as the rabbitmq user) are shared.
# Messages go to stderr; only `status` and `urls` write to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CLUSTER_STATE_DIR:-$ROOT/.services/cluster}"
LOCK="/tmp/report-worker-cluster.lock"     # node names are machine-wide, so is the lock
NODES=(1 2 3)
NFT_TABLE="rw_cluster"
START_DEADLINE=120
CTL_TIMEOUT=60
HEAL_WAIT="${CLUSTER_HEAL_WAIT:-30}"

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

node() { echo "rw-c$1@localhost"; }
amqp_port() { echo "568$1"; }
dist_port() { echo "2568$1"; }
src_addr() { echo "127.0.1.$1"; }
dir() { echo "$STATE/rw-c$1"; }
url() { echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$1")/%2F"; }
ctl() { local n=$1; shift; timeout "$CTL_TIMEOUT" rabbitmqctl -q -n "$(node "$n")" "$@"; }

alive() { ctl "$1" eval 'ok.' >/dev/null 2>&1; }           # the Erlang node answers (app may be stopped)
running() { ctl "$1" await_startup --timeout 1 >/dev/null 2>&1; }   # ... and RabbitMQ runs on it

node_pid() { # the OS pid of the running node N, as it says itself
    ctl "$1" eval 'list_to_integer(os:getpid()).' 2>/dev/null | head -c 20 | tr -dc 0-9
}

ours() { # node N runs from this checkout's state dir (its pid matches the pid file we gave it)
    local pid; pid="$(node_pid "$1")" || return 1
    [ -n "$pid" ] && [ -f "$(dir "$1")/rabbit.pid" ] && [ "$pid" = "$(tr -dc 0-9 <"$(dir "$1")/rabbit.pid")" ]
}

clustered() { # every node runs, is ours and sees all three as running members
    local n out
    for n in "${NODES[@]}"; do
        ours "$n" && running "$n" || return 1
    done
    out="$(ctl 1 eval 'lists:sort(rabbit_nodes:all_running()).' 2>/dev/null)" || return 1
    [ "$out" = "['rw-c1@localhost','rw-c2@localhost','rw-c3@localhost']" ]
}

write_config() { # write_config N
    local d; d="$(dir "$1")"
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$1")
loopback_users = none
cluster_partition_handling = pause_minority
log.file.level = info
log.console = false
EOF
    echo "[]." >"$d/enabled_plugins"
    echo "[]." >"$d/advanced.config"
    # Not the main node's env file, which names that node. Fewer busy-waiting schedulers: 2 CPUs, 4 nodes.
    local ip; ip="$(src_addr "$1" | tr . ,)"
    cat >"$d/rabbitmq-env.conf" <<EOF
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel inet_dist_connect_options [{ip,{$ip}}] -kernel net_ticktime 10 +sbwt none +sbwtdcpu none +sbwtdio none"
EOF
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$STATE"; fi
}

start_node() { # start_node N: detached; returns at once
    local d; d="$(dir "$1")"
    RABBITMQ_NODENAME="$(node "$1")" RABBITMQ_NODE_PORT="$(amqp_port "$1")" RABBITMQ_DIST_PORT="$(dist_port "$1")" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/rabbit.pid" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
        rabbitmq-server -detached >/dev/null 2>&1 9>&- || die "rabbitmq-server -detached failed for $(node "$1")"
}

await_node() { # await_node N: until RabbitMQ runs on it
    local deadline=$((SECONDS + START_DEADLINE))
    until running "$1"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$(dir "$1")"/log/*.log >&2 2>/dev/null || true
            die "$(node "$1") did not start within ${START_DEADLINE}s (logs: $(dir "$1")/log)"
        fi
        sleep 0.5
    done
}

stop_node() { # stop_node N: whoever started it; by name, then by its own pid
    alive "$1" || return 0
    local pid; pid="$(node_pid "$1")"
    ctl "$1" stop >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while alive "$1" || { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.3
    done
}

join() { # join N: make node N a member of node 1's cluster
    ctl "$1" stop_app >/dev/null
    ctl "$1" join_cluster "$(node 1)" >/dev/null || die "$(node "$1") could not join $(node 1)"
    ctl "$1" start_app >/dev/null
}

unblock() { nft delete table inet "$NFT_TABLE" 2>/dev/null || true; }

restart() { # restart N: kill node N's Erlang VM (a wedged node ignores `stop`) and start it again on its state
    local pid; pid="$(node_pid "$1")"
    if [ -n "$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    stop_node "$1"
    start_node "$1"
    await_node "$1"
}

heal() { # remove the partition; a paused node that does not resume within HEAL_WAIT seconds is restarted
    unblock
    local n deadline=$((SECONDS + HEAL_WAIT))
    for n in "${NODES[@]}"; do
        [ -d "$(dir "$n")" ] || continue
        until running "$n"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "$(node "$n") did not resume within ${HEAL_WAIT}s of the heal; restarting it"
                restart "$n"
                break
            fi
            sleep 1
        done
    done
}

up() {
    if clustered; then log "cluster already up: $(node 1), $(node 2), $(node 3)"; return 0; fi
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed (scripts/services.sh up installs it)"
    local t0=$SECONDS n
    unblock
    for n in "${NODES[@]}"; do stop_node "$n" & done; wait     # ours half-up, or another checkout's
    rm -rf "$STATE"
    for n in "${NODES[@]}"; do write_config "$n"; start_node "$n"; done
    for n in "${NODES[@]}"; do await_node "$n" & done
    for n in "${NODES[@]}"; do wait -n || die "a node did not start"; done
    join 2
    join 3
    await_node 2; await_node 3
    clustered || die "the three nodes did not form one cluster: $(ctl 1 cluster_status 2>&1 | tail -n 20)"
    log "cluster up in $((SECONDS - t0))s: $(urls)"
}

down() {
    unblock
    local n
    for n in "${NODES[@]}"; do stop_node "$n" & done; wait
    rm -rf "$STATE"
    log "cluster down"
}

status() {
    local rc=0 n members
    for n in "${NODES[@]}"; do
        if running "$n"; then
            members="$(ctl "$n" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo "?")"
            echo "$(node "$n"): up   $(url "$n") (running cluster members it sees: $members)"
        elif alive "$n"; then
            echo "$(node "$n"): down $(url "$n") (Erlang node alive, RabbitMQ stopped or paused)"; rc=1
        else
            echo "$(node "$n"): down $(url "$n")"; rc=1
        fi
    done
    return "$rc"
}

urls() { local n out=(); for n in "${NODES[@]}"; do out+=("$(url "$n")"); done; (IFS=,; echo "${out[*]}"); }

partition() { # partition N: drop distribution traffic between node N and the other two, both ways
    local n=$1 m others=() ports=()
    [[ "$n" =~ ^[123]$ ]] || die "partition: node 1, 2 or 3"
    if ! command -v nft >/dev/null; then
        command -v apt-get >/dev/null || die "nft is not installed and there is no apt-get to install nftables"
        log "installing nftables (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables; } >&2 \
            || die "apt-get install nftables failed"
    fi
    for m in "${NODES[@]}"; do
        [ "$m" = "$n" ] && continue
        others+=("$(src_addr "$m")"); ports+=("$(dist_port "$m")")
    done
    local o="{ $(IFS=,; echo "${others[*]}") }" p="{ $(IFS=,; echo "${ports[*]}") }"
    local me; me="$(src_addr "$n")"; local mine; mine="$(dist_port "$n")"
    unblock
    nft -f - <<EOF
table inet $NFT_TABLE {
    chain out {
        type filter hook output priority 0; policy accept;
        ip saddr $me tcp dport $p drop
        ip daddr $me tcp sport $p drop
        ip saddr $o tcp dport $mine drop
        ip daddr $o tcp sport $mine drop
    }
}
EOF
    log "partitioned $(node "$n") from the other two"
}

[ $# -ge 1 ] || { echo "usage: $0 up|down|status|urls|partition N|heal|restart N" >&2; exit 2; }
case "$1" in
    status) status; exit $? ;;
    urls) urls; exit 0 ;;
    heal) heal; log "partition healed"; exit 0 ;;
    restart) [ $# -eq 2 ] && [[ "$2" =~ ^[123]$ ]] || die "usage: $0 restart N"; restart "$2"; exit 0 ;;
    partition) [ $# -eq 2 ] || die "usage: $0 partition N"; partition "$2"; exit 0 ;;
esac
exec 9>"$LOCK"
flock -w 600 9 || die "timed out waiting for $LOCK"
case "$1" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down|status|urls|partition N|heal|restart N" >&2; exit 2 ;;
esac
