#!/usr/bin/env bash
# Benchmarks berth against CNCF Distribution on this machine, in one interleaved run.
#
# Starts a single berth node (release build, fresh data dir) and Distribution
# (filesystem storage in a temp dir, delete enabled, the in-memory blob descriptor
# cache its packaged config ships with, log level error), both on free
# loopback ports; runs every scenario against A then B, round after round; and prints
# the median of every metric per scenario with the berth/Distribution ratio, plus both
# servers' idle RSS. Only ratios from one such run mean anything: the two servers see
# the same machine, load and page cache.
#
# Usage: bench/side-by-side.sh [--rounds N] [--quick] [--out DIR]
#   --rounds N  rounds of every scenario (default 5)
#   --quick     one round with tiny sizes: a smoke test for CI
#   --out DIR   where results go (default: beside the server logs in a new temp dir;
#               both are kept and printed, the servers' data dirs are removed)
# Env: CARGO_TARGET_DIR (default $HOME/.cache/berth/target) locates the binaries;
#      DOCKER_REGISTRY overrides /usr/bin/docker-registry.
# Exit: 0 when every run succeeded, 1 when some failed, 2 when a binary is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

parse_args 5 100 "$@"

target="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"
# BERTH_BENCH_PROFILE=debug runs the smoke test on the test build (no timing claims).
profile="${BERTH_BENCH_PROFILE:-release}"
berth="$target/$profile/berth"
bench="$target/$profile/berth-bench"
registry="${DOCKER_REGISTRY:-/usr/bin/docker-registry}"
need_binaries

work="$(mktemp -d "${TMPDIR:-/tmp}/berth-side.XXXXXX")"
out="${out:-$work/results}"
mkdir -p "$out/runs"
: >"$out/berth.jsonl"
: >"$out/distribution.jsonl"

pids=()
stop_servers() {
    stop_pids
    rm -rf "$work/berth-data" "$work/distribution-data"
}
trap stop_servers EXIT

berth_port="$(free_port)"
dist_port="$(free_port)"

BERTH_LOG=error "$berth" serve --listen "127.0.0.1:$berth_port" \
    --data "$work/berth-data" --log-format json >"$work/berth.log" 2>&1 &
berth_pid=$!
pids+=("$berth_pid")

start_distribution "$dist_port"

wait_ready berth "$berth_pid" "$berth_port"
wait_ready distribution "$dist_pid" "$dist_port"
sleep 1
berth_idle="$(rss_mib "$berth_pid")"
dist_idle="$(rss_mib "$dist_pid")"

# label | scenario flags
if [ "$quick" = 1 ]; then
    scenarios=(
        "blobs-1M-c2|blobs --count 2 --size 1M --concurrency 2 --mode monolithic"
        "blobs-64K-c4-chunked|blobs --count 8 --size 64K --concurrency 4 --mode chunked --chunk 16K"
        "manifests-tag-c4|manifests --ops get-tag --concurrency 4 --duration-secs 1"
        "manifests-all-c4|manifests --ops all --concurrency 4 --duration-secs 1"
        "herd-5|herd --clients 5 --layers 3 --layer-size 256K"
    )
else
    scenarios=(
        "blobs-64M-x8-c4|blobs --count 8 --size 64M --concurrency 4 --mode monolithic"
        "blobs-1M-x200-c16|blobs --count 200 --size 1M --concurrency 16 --mode monolithic"
        "blobs-1M-x200-c16-chunked|blobs --count 200 --size 1M --concurrency 16 --mode chunked --chunk 256K"
        "manifests-tag-c16|manifests --ops get-tag --concurrency 16 --duration-secs 10"
        "manifests-tag-c64|manifests --ops get-tag --concurrency 64 --duration-secs 10"
        "manifests-all-c16|manifests --ops all --concurrency 16 --duration-secs 10"
        "herd-50|herd --clients 50 --layers 3 --layer-size 4M"
    )
fi

echo "# berth vs CNCF Distribution, side by side"
echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "command:  bench/side-by-side.sh $([ "$quick" = 1 ] && echo --quick || echo "--rounds $rounds")"
echo "machine:  $(nproc) cores, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "berth:    $berth (pid $berth_pid, port $berth_port)"
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
        for side in berth distribution; do
            if [ "$side" = berth ]; then
                url="http://127.0.0.1:$berth_port" pid="$berth_pid"
            else
                url="http://127.0.0.1:$dist_port" pid="$dist_pid"
            fi
            run_bench "$side" "$label" "$round" "$url" "$pid" "$((seed_base * 1000 + round))" "${flags[@]}"
        done
    done
done

echo
echo "## Medians over $rounds round(s)"
echo
echo "Idle RSS after start: berth $berth_idle MiB, distribution $dist_idle MiB."
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
"$bench" summarize --a "berth=$out/berth.jsonl" --b "distribution=$out/distribution.jsonl"
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures run(s) failed; their stderr is in $out/runs/*.err"
    exit 1
fi
