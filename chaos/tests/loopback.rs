//! The loopback fallback, forced with `--network loopback`: berth-chaos runs three
//! real nodes on 127.0.0.1 behind its userspace fault proxies, says so in the report,
//! cuts a node off and delays another through the proxies, leaves out the faults that
//! need namespaces with a clear line, and every invariant holds. Needs no root.

use std::path::PathBuf;
use std::process::Command;

/// `$BERTH_BIN`, else `berth` in a parent directory of this test executable (build it
/// with `cargo build -p berth-node --bin berth` first).
fn berth_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors()
        .skip(1)
        .take(4)
        .map(|d| d.join("berth"))
        .find(|c| c.is_file())
        .expect("no berth binary: run `cargo build -p berth-node --bin berth` with the same CARGO_TARGET_DIR")
}

#[test]
fn a_loopback_drill_cuts_and_delays_links_through_the_fault_proxies_and_passes() {
    let out = std::env::temp_dir().join(format!("berth-chaos-loopback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_berth-chaos"))
        .arg("--berth")
        .arg(berth_binary())
        .args(["--network", "loopback", "--nodes", "3", "--duration", "50s"])
        .args([
            "--seed", "11", "--hold", "8s", "--gap", "3s", "--warmup", "8s",
        ])
        .args(["--faults", "partition-one,slow-link,latency-one"])
        .arg("--out")
        .arg(&out)
        // The report is read from report.json; progress lines stay on stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running berth-chaos");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .expect("report.json parses");
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "drill failed: {report:#}");
    assert_eq!(report["passed"], true);

    let mode = report["mode"].as_str().unwrap();
    assert!(mode.contains("LOOPBACK FALLBACK"), "{mode}");
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with("skipped slow-link")),
        "{notes:?}"
    );
    let kinds: Vec<&str> = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"partition-one"), "{kinds:?}");
    assert!(kinds.contains(&"latency-one"), "{kinds:?}");
    // The cut-off node was sent writes while the proxies held its links, and the
    // minority checker looked at them.
    let minority = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "minority")
        .expect("minority verdict");
    assert!(minority["checked"].as_u64().unwrap() > 0, "{minority}");
}
