//! Harness for berth's multi-process integration tests: server processes
//! ([`server::Server`]), a tiny OCI client ([`oci::Oci`]), test data ([`data`]), raw
//! HTTP ([`raw`]), and [`Target`], the registry a conformance test talks to: a fresh
//! berth process, or the registry named by `BERTH_TEST_REGISTRY` (to check the tests
//! themselves against another implementation).

pub mod cluster;
pub mod data;
pub mod oci;
pub mod raw;
pub mod server;

use anyhow::Result;

pub use data::{random_bytes, sha256_digest, sha512_digest, unique_repo};
pub use oci::Oci;
pub use server::{Server, ServerOptions, StopSignal};

/// The name the test plan uses for a berth process handle: `Registry::start(opts)`.
pub type Registry = Server;

/// Env var naming an already running registry (`http://127.0.0.1:PORT`) for the
/// conformance tests to use instead of spawning berth.
pub const REGISTRY_ENV: &str = "BERTH_TEST_REGISTRY";

/// Env var that turns on the long versions of the crash and memory tests.
pub const LONG_ENV: &str = "BERTH_TEST_LONG";

/// Whether `BERTH_TEST_LONG=1`.
pub fn long_mode() -> bool {
    std::env::var(LONG_ENV).is_ok_and(|v| v == "1")
}

/// The registry one conformance test talks to. Owns the berth process, if it spawned
/// one, so the process dies with the test.
pub struct Target {
    pub oci: Oci,
    server: Option<Server>,
}

impl Target {
    /// `BERTH_TEST_REGISTRY` if set, else a fresh single-node berth.
    pub async fn conformance() -> Target {
        if let Ok(url) = std::env::var(REGISTRY_ENV) {
            return Target {
                oci: Oci::new(&url),
                server: None,
            };
        }
        Self::berth(ServerOptions::default()).await
    }

    /// A fresh berth started with `opts` (ignores `BERTH_TEST_REGISTRY`).
    pub async fn berth(opts: ServerOptions) -> Target {
        let server = match Server::start(opts).await {
            Ok(server) => server,
            Err(e) => panic!("could not start berth: {e:#}"),
        };
        Target {
            oci: Oci::new(&server.url()),
            server: Some(server),
        }
    }

    /// Base URL.
    pub fn url(&self) -> &str {
        self.oci.base()
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// The berth process, when this target spawned one.
    pub fn server(&mut self) -> Option<&mut Server> {
        self.server.as_mut()
    }

    /// Runs a test body; on error, prints the server's log tail and panics with the
    /// error chain (a panic inside the body prints the log tail from `Server::drop`).
    pub async fn run(self, body: impl AsyncFnOnce(&Target) -> Result<()>) {
        if let Err(e) = body(&self).await {
            if let Some(server) = &self.server {
                eprintln!(
                    "---- berth log tail ({}) ----\n{}\n---- end of berth log ----",
                    server.log_path().display(),
                    server.log_tail()
                );
            }
            panic!("{e:#}");
        }
    }
}

/// Serializes the heavy tests of one test binary (big blobs, kill loops) so two of them
/// never compete for the machine's two cores.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}
