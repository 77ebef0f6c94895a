//! The `blobs` scenario: push N blobs of S bytes with C requests in flight (monolithic
//! or chunked uploads), then pull every one back and verify its digest. Reports MB/s
//! for each direction. Blob `i` is pushed through URL `i` and pulled through URL
//! `i + 1`, so with several URLs every pull reads through another node. `--phase`
//! runs one direction alone: push a set once, then pull the same set (same `--seed`)
//! as often as wanted, for example before and after a cluster node is stopped.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure};

use crate::common::{Common, run_bounded};
use crate::content::{blob_bytes, fmt_size, parse_size, sha256_digest};
use crate::registry::{pull_blob, push_blob};
use crate::report::Report;
use crate::usage::Meter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `POST`, then one `PUT` with the whole blob.
    Monolithic,
    /// `POST`, `PATCH` per chunk, then an empty `PUT ?digest=`.
    Chunked,
}

/// Which directions a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Push the blobs, then pull them back.
    Both,
    /// Only push.
    Push,
    /// Only pull blobs an earlier `--phase push` with the same seed stored.
    Pull,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Monolithic => "monolithic",
            Mode::Chunked => "chunked",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Blobs to push.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Bytes per blob (suffixes K, M, G accepted).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub size: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Upload mode.
    #[arg(long, value_enum, default_value_t = Mode::Monolithic)]
    pub mode: Mode,
    /// Bytes per PATCH in chunked mode.
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub chunk: u64,
    /// Repository to push into.
    #[arg(long, default_value = "bench/blobs")]
    pub repo: String,
    /// Directions to measure; `pull` needs the `--seed` of the run that pushed.
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    pub phase: Phase,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.count > 0, "--count must be at least 1");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.chunk > 0, "--chunk must be at least 1 byte");
    ensure!(
        args.phase != Phase::Pull || args.common.seed.is_some(),
        "--phase pull needs the --seed of the run that pushed the blobs"
    );
    let targets = Arc::new(args.common.targets()?);
    let client = args.common.client(args.concurrency)?;
    let seed = args.common.seed();
    let repo: Arc<str> = args.repo.as_str().into();
    let chunk = (args.mode == Mode::Chunked).then_some(args.chunk);
    let blobs: Vec<(bytes::Bytes, String)> = (0..args.count)
        .map(|i| {
            let data = blob_bytes(seed, i, args.size);
            let digest = sha256_digest(&data);
            (data, digest)
        })
        .collect();
    let total = args.size * args.count as u64;

    let meter = Meter::start(args.common.server_pid);
    let started = Instant::now();
    if args.phase != Phase::Pull {
        run_bounded(
        args.concurrency,
        blobs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (data, digest))| {
                let (client, targets, repo) = (client.clone(), targets.clone(), repo.clone());
                async move { push_blob(&client, targets.get(i), &repo, data, &digest, chunk).await }
            }),
        )
        .await?;
    }
    let push_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let pulled: u64 = if args.phase == Phase::Push {
        total
    } else {
        run_bounded(
            args.concurrency,
            blobs
                .iter()
                .map(|(_, d)| d.clone())
                .enumerate()
                .map(|(i, digest)| {
                    let (client, targets, repo) = (client.clone(), targets.clone(), repo.clone());
                    async move { pull_blob(&client, targets.get(i + 1), &repo, &digest).await }
                }),
        )
        .await?
        .into_iter()
        .sum()
    };
    let pull_secs = started.elapsed().as_secs_f64();
    let usage = meter.finish();
    if pulled != total {
        bail!("pulled {pulled} bytes, expected {total}");
    }

    let mb = total as f64 / 1e6;
    let mut report = Report::new(
        "blobs",
        &[
            "scenario",
            "blobs",
            "size",
            "conc",
            "mode",
            "chunk",
            "push MB/s",
            "pull MB/s",
        ],
    );
    report.row(vec![
        "blobs".into(),
        args.count.to_string(),
        fmt_size(args.size),
        args.concurrency.to_string(),
        args.mode.name().into(),
        chunk.map_or_else(|| "-".into(), fmt_size),
        rate(args.phase != Phase::Pull, mb, push_secs),
        rate(args.phase != Phase::Push, mb, pull_secs),
    ]);
    report.param("count", args.count);
    report.param("size_bytes", args.size);
    report.param("concurrency", args.concurrency);
    report.param("mode", args.mode.name());
    report.param("chunk_bytes", chunk);
    report.param("targets", targets.len());
    report.param("phase", format!("{:?}", args.phase).to_lowercase());
    if args.phase != Phase::Pull {
        report.metric("push_mb_s", mb / push_secs);
        report.metric("push_secs", push_secs);
    }
    if args.phase != Phase::Push {
        report.metric("pull_mb_s", mb / pull_secs);
        report.metric("pull_secs", pull_secs);
    }
    report.print(&args.common, seed, &usage);
    Ok(())
}

/// MB/s for the table, or `-` for a direction the run did not measure.
fn rate(measured: bool, mb: f64, secs: f64) -> String {
    if measured {
        format!("{:.1}", mb / secs)
    } else {
        "-".into()
    }
}
