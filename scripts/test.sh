#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy with warnings as errors, and the whole
# workspace's tests (unit, property, OCI conformance, real clients, kill -9 loops).
# Installs the external tools the integration tests drive when they are missing.
# Ends with a two-minute failover drill (berth-chaos) on three nodes in network
# namespaces, which needs root (or sudo) for `ip netns` and iptables.
# Env: CARGO_TARGET_DIR (default $HOME/.cache/berth/target), BERTH_TEST_LONG=1 for the
# long crash and 4 GiB memory tests, BERTH_TEST_REGISTRY=http://127.0.0.1:PORT to point
# the conformance and client tests at another registry, BERTH_CHAOS_SEED (default 1)
# for the drill's fault schedule.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

missing=()
for tool in skopeo podman docker-registry python3 tar gzip; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing missing tools: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        skopeo podman docker-registry python3 python3-pip tar gzip
fi
if ! command -v ip >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
    echo "test.sh: installing iproute2 and iptables for the failover drill"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y iproute2 iptables
fi
# slapd for the LDAP tests (tests/tests/ldap.rs start their own on a free port). The
# packaged service must not run: a policy-rc.d keeps the installer from starting it.
if ! command -v slapd >/dev/null 2>&1 && [ ! -x /usr/sbin/slapd ] \
    || ! command -v ldapwhoami >/dev/null 2>&1; then
    echo "test.sh: installing slapd and ldap-utils (service not started)"
    policy_rc=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy_rc" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy_rc" >/dev/null
        as_root chmod 755 "$policy_rc"
        made_policy=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils
    if [ "$made_policy" -eq 1 ]; then
        as_root rm -f "$policy_rc"
    fi
fi
if ! python3 -c 'import oras.provider' >/dev/null 2>&1; then
    echo "test.sh: installing oras-py"
    python3 -m pip install --quiet oras \
        || python3 -m pip install --quiet --break-system-packages oras
fi
# schemathesis for the management API fuzz run (tests/tests/apifuzz.rs), pinned, in
# its own virtualenv so reruns reuse it and the system Python stays untouched.
schemathesis_version=4.32.5
schemathesis_venv="$HOME/.cache/berth/schemathesis-venv"
if ! "$schemathesis_venv/bin/schemathesis" --version 2>/dev/null \
    | grep -q "version $schemathesis_version\$"; then
    echo "test.sh: installing schemathesis $schemathesis_version into $schemathesis_venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
    fi
    rm -rf "$schemathesis_venv"
    python3 -m venv "$schemathesis_venv"
    "$schemathesis_venv/bin/python" -m pip install --quiet "schemathesis==$schemathesis_version"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests drive the built binary; `cargo test` alone does not build it.
cargo build -p berth-node --bin berth
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"
# The criterion micro-benchmarks (benches/ of blobstore, consensus and api), built in
# the test profile and each run once in criterion's test mode: no timing, no reports,
# only proof that they still build and run.
cargo test -p berth-blobstore -p berth-consensus -p berth-api \
    --bench shards --bench apply --bench manifest
# Failover drill: three nodes, each in its own network namespace, under a concurrent
# workload; a leader kill, a follower pause, a one-node partition (real packet drops),
# 200 ms added to one node's cluster round trips, and shard files corrupted on one
# disk of one node (rebuilt from the 2+1 parity). Fails on any violated invariant
# (lost acknowledged write, stale tag read, bad digest, unexpected 5xx, a cut-off node
# acknowledging a write, no convergence or diverged state digests).
cargo build -p berth-chaos
chaos_out="$(mktemp -d)"
as_root "$CARGO_TARGET_DIR/debug/berth-chaos" --berth "$CARGO_TARGET_DIR/debug/berth" \
    --nodes 3 --duration 2m --seed "${BERTH_CHAOS_SEED:-1}" --hold 12s \
    --faults kill-leader,pause-follower,partition-one,latency-one,corrupt-shards \
    --out "$chaos_out" 2>&1 | tail -n 40
echo "test.sh: failover drill passed; report in $chaos_out/report.md"
# Benchmark smoke test: every scenario once, tiny sizes, berth beside Distribution.
# It checks the bench and both servers work; it asserts no timing. Then the cluster
# benchmark once: 3 nodes striping 2+1, a node killed, reads degraded, repair onto a 4th.
cargo build -p berth-bench
BERTH_BENCH_PROFILE=debug bench/side-by-side.sh --quick --out "$(mktemp -d)"
BERTH_BENCH_PROFILE=debug bench/cluster.sh --quick --out "$(mktemp -d)"

# One closing line with the totals of every test binary above.
awk '/^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed;?$/) p += $(i - 1)
            if ($i ~ /^failed;?$/) f += $(i - 1)
        }
    }
    END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
