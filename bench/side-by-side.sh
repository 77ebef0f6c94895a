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

rounds=5
quick=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds)
            rounds="${2:?--rounds needs a number}"
            shift 2
            ;;
        --quick)
            quick=1
            rounds=1
            shift
            ;;
        --out)
            out="${2:?--out needs a directory}"
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "side-by-side.sh: unknown argument $1 (try --help)" >&2
            exit 2
            ;;
    esac
done
case "$rounds" in
    '' | *[!0-9]*)
        echo "side-by-side.sh: --rounds takes a whole number" >&2
        exit 2
        ;;
esac
if [ "$rounds" -lt 1 ] || [ "$rounds" -gt 100 ]; then
    echo "side-by-side.sh: --rounds must be 1..100" >&2
    exit 2
fi

target="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"
# BERTH_BENCH_PROFILE=debug runs the smoke test on the test build (no timing claims).
profile="${BERTH_BENCH_PROFILE:-release}"
berth="$target/$profile/berth"
bench="$target/$profile/berth-bench"
registry="${DOCKER_REGISTRY:-/usr/bin/docker-registry}"
for bin in "$berth" "$bench"; do
    if [ ! -x "$bin" ]; then
        echo "side-by-side.sh: $bin is missing; build it first:" >&2
        echo "  cargo build --profile $profile -p berth-node -p berth-bench" >&2
        exit 2
    fi
done
if [ ! -x "$registry" ]; then
    echo "side-by-side.sh: CNCF Distribution ($registry) is missing; install it with" >&2
    echo "  sudo apt-get install docker-registry     (Debian, Ubuntu)" >&2
    echo "or point DOCKER_REGISTRY at a registry binary that takes 'serve CONFIG.yml'." >&2
    exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/berth-side.XXXXXX")"
out="${out:-$work/results}"
mkdir -p "$out/runs"
: >"$out/berth.jsonl"
: >"$out/distribution.jsonl"

pids=()
stop_servers() {
    local pid i
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work/berth-data" "$work/distribution-data"
}
trap stop_servers EXIT

# A loopback port nobody answers on (bounded tries).
used_ports=" "
free_port() {
    local port i
    for i in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        case "$used_ports" in *" $port "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            used_ports="$used_ports$port "
            echo "$port"
            return 0
        fi
    done
    echo "side-by-side.sh: no free loopback port after 100 tries" >&2
    return 1
}

# Waits (at most 20 s) until GET /v2/ answers 200 while the process lives.
wait_ready() {
    local name="$1" pid="$2" port="$3" i
    for i in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "side-by-side.sh: $name exited at start; its log:" >&2
            cat "$work/$name.log" >&2
            return 1
        fi
        if [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/v2/")" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "side-by-side.sh: $name did not answer on port $port within 20 s" >&2
    return 1
}

rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

berth_port="$(free_port)"
dist_port="$(free_port)"

BERTH_LOG=error "$berth" serve --listen "127.0.0.1:$berth_port" \
    --data "$work/berth-data" --log-format json >"$work/berth.log" 2>&1 &
berth_pid=$!
pids+=("$berth_pid")

cat >"$work/distribution.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $work/distribution-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$dist_port
EOF
"$registry" serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
dist_pid=$!
pids+=("$dist_pid")

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
            run="$out/runs/$label.$side.$round"
            if RUST_LIB_BACKTRACE=0 "$bench" "${flags[@]}" --url "$url" --server-pid "$pid" --label "$label" \
                --seed "$((seed_base * 1000 + round))" >"$run.out" 2>"$run.err" &&
                [ "$(grep -c '^{' "$run.out")" = 1 ]; then
                grep '^{' "$run.out" >>"$out/$side.jsonl"
                echo "[round $round/$rounds] $label on $side:"
                grep -v '^{' "$run.out" | sed 's/^/    /'
            else
                failures=$((failures + 1))
                printf '{"label":"%s","failed":true}\n' "$label" >>"$out/$side.jsonl"
                echo "[round $round/$rounds] $label on $side FAILED:"
                head -n 8 "$run.err" | sed 's/^/    /'
            fi
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
