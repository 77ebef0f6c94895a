# Shell helpers the benchmark scripts share (sourced, not run): free loopback ports,
# readiness waits, RSS, CNCF Distribution's start-up. The caller sets `work` (a temp
# dir for logs and data) and `pids` (an array of the processes it started).

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
    echo "bench: no free loopback port after 100 tries" >&2
    return 1
}

# Waits (at most 20 s) until GET /v2/ answers 200 while the process lives; its log is
# $work/$name.log.
wait_ready() {
    local name="$1" pid="$2" port="$3" i
    for i in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench: $name exited at start; its log:" >&2
            cat "$work/$name.log" >&2
            return 1
        fi
        if [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/v2/")" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: $name did not answer on port $port within 20 s" >&2
    return 1
}

rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# Stops every process in `pids` (SIGTERM, then SIGKILL after 5 s), by PID.
stop_pids() {
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
}

# Starts CNCF Distribution ($registry) on port $1 with filesystem storage in
# $work/distribution-data, delete enabled and the in-memory blob descriptor cache its
# packaged config ships with; sets dist_pid.
start_distribution() {
    cat >"$work/distribution.yml" <<CONF
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
  addr: 127.0.0.1:$1
CONF
    "$registry" serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
    dist_pid=$!
    pids+=("$dist_pid")
}

# Fails with install hints when $berth, $bench (built with $profile) or $registry is
# missing.
need_binaries() {
    local bin
    for bin in "$berth" "$bench"; do
        if [ ! -x "$bin" ]; then
            echo "bench: $bin is missing; build it first:" >&2
            echo "  cargo build --profile $profile -p berth-node -p berth-bench" >&2
            exit 2
        fi
    done
    if [ ! -x "$registry" ]; then
        echo "bench: CNCF Distribution ($registry) is missing; install it with" >&2
        echo "  sudo apt-get install docker-registry     (Debian, Ubuntu)" >&2
        echo "or point DOCKER_REGISTRY at a registry binary that takes 'serve CONFIG.yml'." >&2
        exit 2
    fi
}

# Runs one berth-bench scenario: run_bench SIDE LABEL ROUND URLS PID SEED FLAGS...
# (PID may be empty). Appends its JSON line to $out/SIDE.jsonl, or a failure line,
# counting it in `failures`; prints its table.
run_bench() {
    local side="$1" label="$2" round="$3" url="$4" pid="$5" seed="$6"
    shift 6
    local run="$out/runs/$label.$side.$round" pid_flag=()
    [ -n "$pid" ] && pid_flag=(--server-pid "$pid")
    if RUST_LIB_BACKTRACE=0 "$bench" "$@" --url "$url" "${pid_flag[@]}" --label "$label" \
        --seed "$seed" >"$run.out" 2>"$run.err" &&
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
}

# parse_args DEFAULT_ROUNDS MAX_ROUNDS "$@": the flags both scripts take (--rounds N,
# --quick, --out DIR, --help, which prints the calling script's header); sets `rounds`,
# `quick` and `out`, or exits 2 on a bad argument.
parse_args() {
    local script max="$2"
    script="$(basename "$0")"
    rounds="$1" quick=0 out=""
    shift 2
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
                echo "$script: unknown argument $1 (try --help)" >&2
                exit 2
                ;;
        esac
    done
    case "$rounds" in
        '' | *[!0-9]*)
            echo "$script: --rounds takes a whole number" >&2
            exit 2
            ;;
    esac
    if [ "$rounds" -lt 1 ] || [ "$rounds" -gt "$max" ]; then
        echo "$script: --rounds must be 1..$max" >&2
        exit 2
    fi
}
