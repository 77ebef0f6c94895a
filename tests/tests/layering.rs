//! Guards the workspace's dependency direction: `types` <- `consensus`, `blobstore`
//! <- `api` <- `node`. `consensus` and `blobstore` never depend on each other, only
//! `api` knows HTTP, and `types` does no I/O.

use std::path::Path;

/// The `[dependencies]` names of a workspace crate, read from its Cargo.toml.
fn dependencies(krate: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_owned();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name);
            }
        }
    }
    assert!(!deps.is_empty(), "{krate} lists no dependencies");
    deps
}

#[test]
fn dependency_direction_holds() {
    let forbidden: &[(&str, &[&str])] = &[
        (
            "types",
            &[
                "tokio",
                "axum",
                "hyper",
                "redb",
                "openraft",
                "berth-consensus",
                "berth-blobstore",
                "berth-api",
            ],
        ),
        (
            "consensus",
            &["berth-blobstore", "berth-api", "axum", "hyper", "reqwest"],
        ),
        (
            "blobstore",
            &[
                "berth-consensus",
                "berth-api",
                "axum",
                "hyper",
                "redb",
                "openraft",
            ],
        ),
        ("api", &["berth-node", "figment", "clap"]),
        // Drills drive the built binary over HTTP like a user, never its internals.
        (
            "chaos",
            &[
                "berth-types",
                "berth-consensus",
                "berth-blobstore",
                "berth-api",
                "berth-node",
            ],
        ),
    ];
    for (krate, banned) in forbidden {
        let deps = dependencies(krate);
        for b in *banned {
            assert!(
                !deps.iter().any(|d| d == b),
                "{krate} must not depend on {b}: {deps:?}"
            );
        }
    }
    let node = dependencies("node");
    for needed in [
        "berth-api",
        "berth-consensus",
        "berth-blobstore",
        "berth-types",
    ] {
        assert!(
            node.iter().any(|d| d == needed),
            "node should wire {needed}"
        );
    }
}
