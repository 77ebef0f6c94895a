//! What every scenario shares: the common flags, the HTTP client, and running jobs with
//! bounded concurrency.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};

use crate::registry::Targets;

/// Flags every scenario takes.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Registry base URLs, comma-separated (e.g. http://127.0.0.1:5000); requests go
    /// round-robin over them.
    #[arg(long)]
    pub url: String,
    /// PID of the server (a single-node run), to report its peak RSS and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Name of this run in the JSON line; `summarize` groups results by it.
    #[arg(long)]
    pub label: Option<String>,
    /// Seed of the generated content. Vary it between runs against one registry so
    /// that no push finds its blob already stored. Default: taken from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds any single request may take before the run fails.
    #[arg(long, default_value_t = 300)]
    pub request_timeout_secs: u64,
}

impl Common {
    pub fn targets(&self) -> anyhow::Result<Targets> {
        Targets::parse(&self.url)
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
    }

    /// An HTTP client keeping up to `connections` idle connections per registry.
    pub fn client(&self, connections: usize) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(self.request_timeout_secs))
            .build()?)
    }
}

/// Runs the jobs with at most `concurrency` in flight, each on its own task so that
/// client-side hashing spreads over the runtime's threads. Stops at the first error.
pub async fn run_bounded<T, F>(
    concurrency: usize,
    jobs: impl IntoIterator<Item = F>,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    futures::stream::iter(
        jobs.into_iter()
            .map(|job| async move { tokio::spawn(job).await? }),
    )
    .buffer_unordered(concurrency.max(1))
    .try_collect()
    .await
}
