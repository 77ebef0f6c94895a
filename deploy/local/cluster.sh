#!/usr/bin/env bash
# Starts or stops a local berth cluster of N nodes on 127.0.0.1, for trying a cluster
# on one machine and for tests.
#
#   deploy/local/cluster.sh up N DIR     start nodes 1..N (HTTP 5001..500N, gRPC
#                                        6001..600N), data in DIR/node-<id>, wait
#                                        until every node is ready, print one line
#                                        per node: node <id> http://127.0.0.1:<port> pid <pid>
#   deploy/local/cluster.sh add DIR ID [VIA]  start one more node (id ID, same port
#                                        scheme), or a stopped one again, that joins
#                                        the cluster through node VIA (default 1)
#   deploy/local/cluster.sh down DIR     stop the nodes started in DIR (SIGTERM, by PID)
#
# Env: BERTH_BIN (default: target/release/berth, else target/debug/berth under
# CARGO_TARGET_DIR or ./target), BERTH_HTTP_BASE (5000), BERTH_GRPC_BASE (6000),
# BERTH_CLUSTER_TLS_DIR (mutual TLS between nodes: ca.pem, node-<id>.pem and
# node-<id>.key in that folder), BERTH_DISKS_PER_NODE (default 1: each node's data
# folder holds one disk folder; N gives each node disk0..disk<N-1> there).
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" >&2
    exit 2
}

# The TLS flags of node $1, when BERTH_CLUSTER_TLS_DIR is set.
tls_args() {
    local tls="${BERTH_CLUSTER_TLS_DIR:-}"
    [ -n "$tls" ] || return 0
    echo "--cluster-ca $tls/ca.pem --cluster-cert $tls/node-$1.pem --cluster-key $tls/node-$1.key"
}

# The --disk flags of the node with data folder $1, when BERTH_DISKS_PER_NODE > 1.
disk_args() {
    local n="${BERTH_DISKS_PER_NODE:-1}" d
    [[ "$n" =~ ^[0-9]+$ ]] || {
        echo "cluster.sh: BERTH_DISKS_PER_NODE must be a number" >&2
        exit 2
    }
    [ "$n" -gt 1 ] || return 0
    for d in $(seq 0 $((n - 1))); do
        echo -n "--disk $1/disk$d "
    done
}

find_bin() {
    if [ -n "${BERTH_BIN:-}" ]; then
        echo "$BERTH_BIN"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}"
    for profile in release debug; do
        if [ -x "$target/$profile/berth" ]; then
            echo "$target/$profile/berth"
            return
        fi
    done
    echo "cluster.sh: no berth binary; build it with: cargo build --release -p berth-node" >&2
    exit 2
}

up() {
    local n="$1" dir="$2"
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 9 ] || {
        echo "cluster.sh: N must be 1..9" >&2
        exit 2
    }
    local bin http_base="${BERTH_HTTP_BASE:-5000}" grpc_base="${BERTH_GRPC_BASE:-6000}"
    bin="$(find_bin)"
    mkdir -p "$dir"
    local members="" i
    for i in $(seq 1 "$n"); do
        members+="${members:+,}$i=127.0.0.1:$((grpc_base + i))"
    done
    for i in $(seq 1 "$n"); do
        "$bin" serve --node-id "$i" \
            --listen "127.0.0.1:$((http_base + i))" \
            --grpc-listen "127.0.0.1:$((grpc_base + i))" \
            --initial-cluster "$members" \
            --data "$dir/node-$i" $(disk_args "$dir/node-$i") \
            --log-format json $(tls_args "$i") \
            >>"$dir/node-$i.log" 2>&1 &
        echo $! >"$dir/node-$i.pid"
    done
    # Ready means: a leader is known and the node serves requests. Bounded wait.
    for i in $(seq 1 "$n"); do
        wait_ready "$i" "$((http_base + i))" "$dir"
    done
    for i in $(seq 1 "$n"); do
        echo "node $i http://127.0.0.1:$((http_base + i)) pid $(cat "$dir/node-$i.pid")"
    done
}

# Waits until node $1 (HTTP port $2) answers /readyz, or fails. Bounded.
wait_ready() {
    local i="$1" port="$2" dir="$3" deadline=$((SECONDS + 90))
    until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$dir/node-$i.pid")" 2>/dev/null; then
            echo "cluster.sh: node $i exited; see $dir/node-$i.log" >&2
            tail -5 "$dir/node-$i.log" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "cluster.sh: node $i not ready after 90 s; see $dir/node-$i.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}

add() {
    local dir="$1" i="$2" via="${3:-1}"
    [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le 9 ] \
        && [[ "$via" =~ ^[0-9]+$ ]] && [ "$via" -ge 1 ] && [ "$via" -le 9 ] || {
        echo "cluster.sh: ID and VIA must be 1..9" >&2
        exit 2
    }
    [ -e "$dir/node-$i.pid" ] && {
        echo "cluster.sh: node $i already runs in $dir" >&2
        exit 2
    }
    local bin http_base="${BERTH_HTTP_BASE:-5000}" grpc_base="${BERTH_GRPC_BASE:-6000}"
    bin="$(find_bin)"
    "$bin" serve --node-id "$i" \
        --listen "127.0.0.1:$((http_base + i))" \
        --grpc-listen "127.0.0.1:$((grpc_base + i))" \
        --join "http://127.0.0.1:$((http_base + via))" \
        --data "$dir/node-$i" $(disk_args "$dir/node-$i") \
        --log-format json $(tls_args "$i") \
        >>"$dir/node-$i.log" 2>&1 &
    echo $! >"$dir/node-$i.pid"
    wait_ready "$i" "$((http_base + i))" "$dir"
    echo "node $i http://127.0.0.1:$((http_base + i)) pid $(cat "$dir/node-$i.pid")"
}

down() {
    local dir="$1" pidfile pid
    shopt -s nullglob
    for pidfile in "$dir"/node-*.pid; do
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$pidfile"
    done
}

case "${1:-}" in
    up) [ $# -eq 3 ] || usage; up "$2" "$3" ;;
    add) [ $# -eq 3 ] || [ $# -eq 4 ] || usage; add "$2" "$3" "${4:-1}" ;;
    down) [ $# -eq 2 ] || usage; down "$2" ;;
    *) usage ;;
esac
