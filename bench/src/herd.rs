//! The `herd` scenario: push one image of several layers, then let N clients loose on
//! it at once, each with its own connections, the way a deployment's nodes all pull a
//! new image together: GET the manifest by tag, then every blob it names concurrently,
//! each verified. Reports the wall time until the last client is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::common::{Common, run_bounded};
use crate::content::{blob_bytes, fmt_size, parse_size};
use crate::image::{Image, referenced_blobs};
use crate::registry::{Targets, get_manifest, pull_blob};
use crate::report::Report;
use crate::stats::percentile;
use crate::usage::Meter;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Clients pulling at the same time.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Layers in the image.
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Bytes per layer.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub layer_size: u64,
    /// Repository to push into.
    #[arg(long, default_value = "bench/herd")]
    pub repo: String,
    /// Tag of the image.
    #[arg(long, default_value = "latest")]
    pub tag: String,
}

/// One client's pull: manifest by tag, then every blob in parallel. Returns how long
/// it took and the blob bytes read.
async fn pull_image(
    client: reqwest::Client,
    targets: Arc<Targets>,
    repo: Arc<str>,
    tag: Arc<str>,
    digest: Arc<str>,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let manifest = get_manifest(&client, targets.next(), &repo, &tag, &digest).await?;
    let pulls = referenced_blobs(&manifest)?.into_iter().map(|blob| {
        let (client, targets, repo) = (&client, &targets, &repo);
        async move { pull_blob(client, targets.next(), repo, &blob).await }
    });
    let bytes: u64 = futures::future::try_join_all(pulls)
        .await?
        .into_iter()
        .sum();
    Ok((started.elapsed(), bytes))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.layers > 0, "--layers must be at least 1");
    let targets = Arc::new(args.common.targets()?);
    let seed = args.common.seed();
    let image = Image::build(
        (0..args.layers)
            .map(|i| blob_bytes(seed, i, args.layer_size))
            .collect(),
    );
    let setup = args.common.client(1)?;
    image
        .push(&setup, targets.get(0), &args.repo, &args.tag)
        .await?;
    let image_bytes: u64 = image.blobs().map(|b| b.data.len() as u64).sum();
    let clients = (0..args.clients)
        .map(|_| args.common.client(args.layers + 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (repo, tag): (Arc<str>, Arc<str>) = (args.repo.as_str().into(), args.tag.as_str().into());
    let digest: Arc<str> = image.manifest.digest.as_str().into();

    let meter = Meter::start(args.common.server_pid);
    let started = Instant::now();
    let pulls = clients.into_iter().map(|client| {
        pull_image(
            client,
            targets.clone(),
            repo.clone(),
            tag.clone(),
            digest.clone(),
        )
    });
    let results = run_bounded(args.clients, pulls).await?;
    let total_secs = started.elapsed().as_secs_f64();
    let usage = meter.finish();

    let pulled: u64 = results.iter().map(|r| r.1).sum();
    if pulled != image_bytes * args.clients as u64 {
        bail!(
            "pulled {pulled} bytes, expected {} clients x {image_bytes}",
            args.clients
        );
    }
    let mut times: Vec<Duration> = results.iter().map(|r| r.0).collect();
    times.sort_unstable();
    let (p50, p99) = (
        percentile(&times, 50.0).as_secs_f64(),
        percentile(&times, 99.0).as_secs_f64(),
    );
    let mb_s = pulled as f64 / 1e6 / total_secs;
    let mut report = Report::new(
        "herd",
        &[
            "scenario", "clients", "layers", "layer", "total s", "MB/s", "p50 s", "p99 s",
        ],
    );
    report.row(vec![
        "herd".into(),
        args.clients.to_string(),
        args.layers.to_string(),
        fmt_size(args.layer_size),
        format!("{total_secs:.2}"),
        format!("{mb_s:.1}"),
        format!("{p50:.2}"),
        format!("{p99:.2}"),
    ]);
    report.param("clients", args.clients);
    report.param("layers", args.layers);
    report.param("layer_size_bytes", args.layer_size);
    report.param("targets", targets.len());
    report.metric("total_secs", total_secs);
    report.metric("pull_mb_s", mb_s);
    report.metric("pull_p50_secs", p50);
    report.metric("pull_p99_secs", p99);
    report.print(&args.common, seed, &usage);
    Ok(())
}
