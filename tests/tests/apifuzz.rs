//! A schema-based fuzz run of the management API: schemathesis (from PyPI; installed
//! by ./scripts/test.sh into a virtualenv under `$HOME/.cache/berth/`) generates
//! requests for every operation of `docs/openapi.yaml` (examples, boundary values,
//! random and invalid input, then stateful sequences that follow created resources)
//! and sends them to a real berth in enforced mode as a disposable administrator. The
//! run fails on any 5xx, and on any answer whose status, content type, headers or
//! body the file does not describe. A fixed seed and a fixed number of examples per
//! operation keep it reproducible; it stays under two minutes here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use berth_tests::{Registry, ServerOptions};

/// The administrator the fuzzer authenticates as.
const ADMIN: &str = "admin";
/// Its password (the server starts with it through `BERTH_ADMIN_PASSWORD`).
const ADMIN_PASSWORD: &str = "fuzz-admin-password";
/// Seed of the generated cases; the same seed gives the same run.
const SEED: &str = "20261201";
/// Generated cases per operation and phase.
const EXAMPLES_PER_OPERATION: &str = "12";
/// Seconds the whole schemathesis run may take before it is stopped as a failure.
const RUN_TIMEOUT_SECS: u32 = 300;
/// Fewest requests the server must have answered for the run to count: a fuzzer that
/// never reached the server must not pass.
const REQUESTS_MIN: u64 = 500;
/// The checks applied to every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// The schemathesis executable: `$BERTH_SCHEMATHESIS`, else the one in the
/// virtualenv ./scripts/test.sh makes. Panics with an install hint when missing.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let path = Path::new(&home).join(".cache/berth/schemathesis-venv/bin/schemathesis");
    assert!(
        path.is_file(),
        "{} is missing; ./scripts/test.sh installs schemathesis there (or set \
         BERTH_SCHEMATHESIS to a schemathesis 4.x executable)",
        path.display()
    );
    path
}

/// The operations `docs/openapi.yaml` declares (one method line each).
fn documented_operations(spec: &str) -> usize {
    spec.lines()
        .filter(|l| {
            ["get", "put", "post", "patch", "delete"]
                .iter()
                .any(|m| l.strip_prefix("    ") == Some(&format!("{m}:")))
        })
        .count()
}

/// Sums `berth_http_requests_total` lines: (all requests, those answered 5xx).
fn request_totals(metrics: &str) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut server_errors = Vec::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("berth_http_requests_total{"))
    {
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("unreadable metrics line {line}"));
        total += count;
        if line.contains("status=\"5") {
            server_errors.push(line.to_owned());
        }
    }
    (total, server_errors)
}

#[tokio::test]
async fn management_api_fuzz_finds_no_server_error_and_matches_the_schema() {
    // Proves: every answer of the management API to schemathesis' generated requests
    // (valid, boundary and invalid input, and stateful sequences) is documented in
    // docs/openapi.yaml with its status, content type, headers and body schema, and
    // none is a 5xx (also counted independently from the server's own metrics).
    let st = schemathesis();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec_path = root.join("../docs/openapi.yaml");
    let spec = std::fs::read_to_string(&spec_path).expect("reading docs/openapi.yaml");
    let operations = documented_operations(&spec);
    assert!(operations >= 20, "found only {operations} operations");
    let server = Registry::start(ServerOptions::enforced(
        ADMIN_PASSWORD,
        // Unthrottled, so the fuzzer's request rate does not turn answers into 429s.
        &[
            "--rate-limit-rps",
            "0",
            "--failed-logins-per-minute",
            "1000000",
        ],
    ))
    .await
    .expect("starting berth");
    let work = tempfile::tempdir().expect("temporary directory");
    let started = Instant::now();
    let output = Command::new("timeout")
        .arg(RUN_TIMEOUT_SECS.to_string())
        .arg(&st)
        .arg("run")
        .arg(&spec_path)
        .args(["--url", &server.url()])
        .args(["--auth", &format!("{ADMIN}:{ADMIN_PASSWORD}")])
        .args(["--seed", SEED])
        .args(["--max-examples", EXAMPLES_PER_OPERATION])
        .args(["--workers", "1"])
        .args(["--checks", CHECKS])
        .args(["--request-timeout", "30"])
        .arg("--no-shrink")
        .current_dir(work.path())
        .env("PYTHONPATH", root.join("scripts"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("BERTH_FUZZ_ADMIN", ADMIN)
        .env("BERTH_FUZZ_PASSWORD", ADMIN_PASSWORD)
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .output()
        .expect("running schemathesis");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("schemathesis took {elapsed:?}");
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let tested = format!("Tested: {operations}");
    assert!(
        stdout.contains(&tested),
        "schemathesis did not test all {operations} operations:\n{stdout}"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .expect("fetching /metrics")
        .text()
        .await
        .expect("reading /metrics");
    let (total, server_errors) = request_totals(&metrics);
    assert!(
        server_errors.is_empty(),
        "the server answered 5xx: {server_errors:?}"
    );
    assert!(
        total >= REQUESTS_MIN,
        "only {total} requests reached the server; the fuzzer did not run"
    );
    eprintln!("{total} requests answered, none 5xx");
}
