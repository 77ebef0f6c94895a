#!/usr/bin/env bash
# Benchmarks a 3-node berth cluster that erasure-codes blobs across its nodes (2+1)
# against single-node CNCF Distribution on this machine, in one interleaved run; then
# measures reads with one node killed against healthy ones, and the repair worker.
#
# 1. Starts berth nodes 1-3 (release build, `--cluster-profile 2+1`, fresh data dirs,
#    deploy/local/cluster.sh) and Distribution, all on loopback.
# 2. Rounds, berth then Distribution: one upload stream (4 x 64 MiB, one at a time),
#    8 x 64 MiB at c4, 200 x 1 MiB at c16. berth's blob i is pushed through node i and
#    pulled through node i+1, so every pull reads through another node.
# 3. Degraded reads: pushes 8 x 64 MiB once, pulls them every round through nodes 1
#    and 2, kills node 3 (SIGKILL), waits until nodes 1 and 2 both name a leader other
#    than node 3, pulls them every round again.
# 4. Repair: starts node 4, which joins; once node 3 has been down for the grace
#    period the repair worker rebuilds its shards onto the others. Reports the bytes
#    rebuilt per node and MB/s, from the members' metrics, until node 3's share is
#    back (at most 10 minutes).
#
# Usage: bench/cluster.sh [--rounds N] [--quick] [--out DIR]
#   --rounds N  rounds of every scenario (default 3)
#   --quick     one round with tiny sizes: a smoke test for CI
#   --out DIR   where results go (default: a new temp dir, kept and printed)
# Env: CARGO_TARGET_DIR (default $HOME/.cache/berth/target) locates the binaries;
#      DOCKER_REGISTRY overrides /usr/bin/docker-registry.
# Exit: 0 when every run succeeded and repair finished, 1 otherwise, 2 when a binary
# is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

parse_args 3 20 "$@"

target="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"
profile="${BERTH_BENCH_PROFILE:-release}"
berth="$target/$profile/berth"
bench="$target/$profile/berth-bench"
registry="${DOCKER_REGISTRY:-/usr/bin/docker-registry}"
need_binaries

work="$(mktemp -d "${TMPDIR:-/tmp}/berth-cluster.XXXXXX")"
out="${out:-$work/results}"
mkdir -p "$out/runs"
for side in berth distribution healthy degraded setup; do
    : >"$out/$side.jsonl"
done

# Eight consecutive free ports from a random base: HTTP base+1..4, gRPC base+11..14.
pick_base() {
    local base i port ok
    for _ in $(seq 50); do
        base=$((20000 + (RANDOM % 3000) * 10))
        ok=1
        for i in 1 2 3 4 11 12 13 14; do
            port=$((base + i))
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                ok=0
                break
            fi
        done
        [ "$ok" = 1 ] && echo "$base" && return 0
    done
    echo "cluster.sh: no free block of loopback ports" >&2
    return 1
}
base="$(pick_base)"
export BERTH_BIN="$berth" BERTH_HTTP_BASE="$base" BERTH_GRPC_BASE="$((base + 10))"
export BERTH_LOG=error BERTH_CLUSTER_PROFILE=2+1 BERTH_REPAIR_INTERVAL_SECS=1
grace=15
[ "$quick" = 1 ] && grace=3
export BERTH_REPAIR_GRACE_SECS="$grace"
node_url() { echo "http://127.0.0.1:$((base + $1))"; }

pids=()
stop_all() {
    deploy/local/cluster.sh down "$work/cluster" >/dev/null 2>&1 || true
    stop_pids
    rm -rf "$work/cluster"/node-*/ "$work/distribution-data"
}
trap stop_all EXIT

deploy/local/cluster.sh up 3 "$work/cluster" >"$work/cluster-up.txt"
dist_port="$(free_port)"
start_distribution "$dist_port"
wait_ready distribution "$dist_pid" "$dist_port"
cluster_urls="$(node_url 1),$(node_url 2),$(node_url 3)"
node_pid() { cat "$work/cluster/node-$1.pid"; }

if [ "$quick" = 1 ]; then
    scenarios=(
        "stream-1M-x2-c1|blobs --count 2 --size 1M --concurrency 1"
        "blobs-64K-x8-c4|blobs --count 8 --size 64K --concurrency 4"
    )
    degraded_set=(--count 4 --size 1M --concurrency 2)
else
    scenarios=(
        "stream-64M-x4-c1|blobs --count 4 --size 64M --concurrency 1"
        "blobs-64M-x8-c4|blobs --count 8 --size 64M --concurrency 4"
        "blobs-1M-x200-c16|blobs --count 200 --size 1M --concurrency 16"
    )
    degraded_set=(--count 8 --size 64M --concurrency 4)
fi

echo "# berth 3-node cluster (2+1 across nodes) vs single-node CNCF Distribution"
echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "command:  bench/cluster.sh $([ "$quick" = 1 ] && echo --quick || echo "--rounds $rounds")"
echo "machine:  $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "berth:    $berth, nodes $cluster_urls"
echo "distrib.: $("$registry" --version 2>/dev/null | head -n1) (pid $dist_pid, port $dist_port)"
echo "results:  $out"
echo "logs:     $work"
echo

seed_base="$(date +%s)"
failures=0
for round in $(seq "$rounds"); do
    for entry in "${scenarios[@]}"; do
        label="${entry%%|*}"
        read -r -a flags <<<"${entry#*|}"
        seed="$((seed_base * 1000 + round))"
        run_bench berth "$label" "$round" "$cluster_urls" "" "$seed" "${flags[@]}"
        run_bench distribution "$label" "$round" "http://127.0.0.1:$dist_port" "$dist_pid" "$seed" "${flags[@]}"
    done
done

# Degraded reads: one set, pulled through nodes 1 and 2 before and after node 3 dies.
set_seed="$((seed_base * 1000 + 999))"
label="pull-${degraded_set[3]}-x${degraded_set[1]}-c${degraded_set[5]}"
run_bench setup push-set 0 "$(node_url 1)" "" "$set_seed" blobs "${degraded_set[@]}" --phase push
for round in $(seq "$rounds"); do
    run_bench healthy "$label" "$round" "$(node_url 1),$(node_url 2)" "" "$set_seed" \
        blobs "${degraded_set[@]}" --phase pull
done
kill -KILL "$(node_pid 3)"
killed_at=$SECONDS
echo "killed node 3 (SIGKILL)"
# Node 3 may have led: reads wait for a new leader, which is failover time, not read
# speed. Measure once nodes 1 and 2 both name a leader other than node 3 (bounded).
# /readyz alone is not enough: it answers 200 while a node still names the dead
# leader, until the election timeout.
leader_of() { # the leader node $1 names, or "none"
    curl -s -m 1 "$(node_url "$1")/api/v1/cluster/status" \
        | sed -n 's/.*"leader":\([0-9][0-9]*\).*/\1/p' | grep . || echo none
}
sleep 1
for _ in $(seq 300); do
    ready=0
    for i in 1 2; do
        leader="$(leader_of "$i")"
        [ "$leader" = 1 ] || [ "$leader" = 2 ] && ready=$((ready + 1))
    done
    [ "$ready" = 2 ] && break
    sleep 0.1
done
echo "nodes 1 and 2 name leader $(leader_of 1) $((SECONDS - killed_at)) s after the kill"
for round in $(seq "$rounds"); do
    run_bench degraded "$label" "$round" "$(node_url 1),$(node_url 2)" "" "$set_seed" \
        blobs "${degraded_set[@]}" --phase pull
done

# Repair: node 3's shard files stay on disk; their bytes are what must be rebuilt.
deploy/local/cluster.sh add "$work/cluster" 4 >>"$work/cluster-up.txt"
shard_bytes="$(find "$work/cluster/node-3" -path '*/blobs/*' -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')"
echo "node 4 joined; node 3 held $shard_bytes bytes of shard files"
metric() { # metric NODE NAME: the value of one gauge, 0 when absent or unreachable
    curl -s -m 2 "$(node_url "$1")/metrics" | awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }'
}
repair_deadline=$((SECONDS + 600))
first="" last="" last_total=0 stable=0
declare -A rebuilt
while [ "$SECONDS" -lt "$repair_deadline" ]; do
    total=0
    for i in 1 2 4; do
        rebuilt[$i]="$(metric "$i" berth_repair_rebuilt_bytes)"
        total=$((total + ${rebuilt[$i]%.*}))
    done
    now="$(date +%s.%N)"
    if [ "$total" -gt "$last_total" ]; then
        [ -z "$first" ] && first="$now"
        last="$now" last_total="$total" stable=0
    else
        stable=$((stable + 1))
    fi
    # Done when node 3's share is back (its files also hold chunk checksums and a
    # header, under 1 %), or nothing moved for 20 s after it started.
    if [ "$total" -gt 0 ] && [ $((total * 100)) -ge $((shard_bytes * 98)) ]; then break; fi
    if [ -n "$first" ] && [ "$stable" -ge 40 ]; then break; fi
    sleep 0.5
done
echo
echo "## Repair after node 3 was killed (grace $grace s, started $((SECONDS - killed_at)) s ago)"
echo
if [ -z "$first" ]; then
    echo "repair rebuilt nothing within 10 minutes"
    failures=$((failures + 1))
else
    secs="$(awk -v a="$first" -v b="$last" 'BEGIN { d = b - a; if (d < 0.5) d = 0.5; print d }')"
    for i in 1 2 4; do
        echo "node $i rebuilt ${rebuilt[$i]} bytes"
    done
    awk -v t="$last_total" -v s="$secs" -v want="$shard_bytes" 'BEGIN {
        printf "rebuilt %.1f MB of %.1f MB in %.1f s: %.1f MB/s for the cluster\n", t / 1e6, want / 1e6, s, t / 1e6 / s }'
    [ $((last_total * 100)) -ge $((shard_bytes * 98)) ] || {
        echo "repair stopped short of node 3's share"
        failures=$((failures + 1))
    }
    printf '{"scenario":"repair","label":"repair","metrics":{"rebuilt_bytes":%s,"lost_shard_bytes":%s,"secs":%s}}\n' \
        "$last_total" "$shard_bytes" "$secs" >"$out/repair.json"
fi

echo
echo "## Cluster (2+1) vs single-node Distribution, medians over $rounds round(s)"
echo
"$bench" summarize --a "berth=$out/berth.jsonl" --b "distribution=$out/distribution.jsonl"
echo
echo "## Reads with node 3 killed vs healthy, medians over $rounds round(s)"
echo
"$bench" summarize --a "degraded=$out/degraded.jsonl" --b "healthy=$out/healthy.jsonl"
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures run(s) failed; their stderr is in $out/runs/*.err"
    exit 1
fi
