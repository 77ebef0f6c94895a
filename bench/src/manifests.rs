//! The `manifests` scenario: push one small image (config, one layer, manifest under a
//! tag), then for a fixed duration keep C requests in flight that GET or HEAD its
//! manifest by tag or by digest, each checked. Reports requests/s and p50/p99 latency
//! per operation and overall. Every worker first sends each operation once, untimed,
//! so that connection setup stays out of the measured window. The `put-tag` operation
//! writes instead: each request PUTs the manifest under a new tag, one metadata commit
//! (a Raft entry on a cluster) per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use crate::common::{Common, run_bounded};
use crate::content::{blob_bytes, parse_size};
use crate::image::{Image, MANIFEST_MEDIA_TYPE};
use crate::registry::{Targets, get_manifest, head_manifest, put_manifest};
use crate::report::Report;
use crate::stats::percentile;
use crate::usage::Meter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    GetTag,
    GetDigest,
    HeadTag,
    HeadDigest,
    /// PUT of the manifest under a tag no request used before.
    PutTag,
}

/// The operations `all` stands for: the reads.
const ALL_OPS: [Op; 4] = [Op::GetTag, Op::GetDigest, Op::HeadTag, Op::HeadDigest];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GetTag => "get-tag",
            Op::GetDigest => "get-digest",
            Op::HeadTag => "head-tag",
            Op::HeadDigest => "head-digest",
            Op::PutTag => "put-tag",
        }
    }

    /// The prefix of this operation's metrics in the JSON line.
    fn key(self) -> &'static str {
        match self {
            Op::GetTag => "get_tag",
            Op::GetDigest => "get_digest",
            Op::HeadTag => "head_tag",
            Op::HeadDigest => "head_digest",
            Op::PutTag => "put_tag",
        }
    }
}

/// The operations a worker cycles through, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ops(Vec<Op>);

/// Parses `all` (the reads) or a comma-separated list of `get-tag`, `get-digest`,
/// `head-tag`, `head-digest`, `put-tag`, each at most once.
pub fn parse_ops(s: &str) -> anyhow::Result<Ops> {
    if s.trim() == "all" {
        return Ok(Ops(ALL_OPS.to_vec()));
    }
    let mut ops = Vec::new();
    for name in s.split(',').map(str::trim) {
        let Some(op) = ALL_OPS
            .into_iter()
            .chain([Op::PutTag])
            .find(|op| op.name() == name)
        else {
            bail!(
                "unknown operation {name:?}: use all, get-tag, get-digest, head-tag, head-digest, put-tag"
            );
        };
        if ops.contains(&op) {
            bail!("operation {name:?} given twice");
        }
        ops.push(op);
    }
    Ok(Ops(ops))
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds to keep the load on.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Operations each worker cycles through: all, or a comma-separated list of
    /// get-tag, get-digest, head-tag, head-digest, put-tag.
    #[arg(long, default_value = "all", value_parser = parse_ops)]
    pub ops: Ops,
    /// Bytes of the image's one layer.
    #[arg(long, default_value = "1K", value_parser = parse_size)]
    pub layer_size: u64,
    /// Upper bound on timed requests over all workers, should the duration allow more.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
    /// Repository to push into.
    #[arg(long, default_value = "bench/manifests")]
    pub repo: String,
    /// Tag of the image.
    #[arg(long, default_value = "latest")]
    pub tag: String,
}

/// What every request needs to know.
struct Target {
    targets: Targets,
    client: reqwest::Client,
    repo: String,
    tag: String,
    digest: String,
    manifest: bytes::Bytes,
}

/// Sends one `op`; `n` makes the tag of a `put-tag` unique (worker and request number).
async fn call(t: &Target, op: Op, n: (usize, u64)) -> anyhow::Result<()> {
    let base = t.targets.next();
    match op {
        Op::GetTag => get_manifest(&t.client, base, &t.repo, &t.tag, &t.digest)
            .await
            .map(drop),
        Op::GetDigest => get_manifest(&t.client, base, &t.repo, &t.digest, &t.digest)
            .await
            .map(drop),
        Op::HeadTag => head_manifest(&t.client, base, &t.repo, &t.tag, &t.digest).await,
        Op::HeadDigest => head_manifest(&t.client, base, &t.repo, &t.digest, &t.digest).await,
        Op::PutTag => {
            let tag = format!("{}-w{}-{}", t.tag, n.0, n.1);
            put_manifest(
                &t.client,
                base,
                &t.repo,
                &tag,
                MANIFEST_MEDIA_TYPE,
                t.manifest.clone(),
            )
            .await
        }
    }
}

/// One worker's timed requests: latencies per operation, in `ops` order.
async fn worker(
    t: Arc<Target>,
    ops: Ops,
    first: usize,
    until: Instant,
    max_requests: u64,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut samples = vec![Vec::new(); ops.0.len()];
    let mut i = first;
    let mut sent = 0u64;
    while sent < max_requests && Instant::now() < until {
        let k = i % ops.0.len();
        let started = Instant::now();
        call(&t, ops.0[k], (first, sent)).await?;
        samples[k].push(started.elapsed());
        i += 1;
        sent += 1;
    }
    Ok(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(
        args.duration_secs > 0.0 && args.duration_secs <= 3600.0,
        "--duration-secs must be in (0, 3600]"
    );
    let seed = args.common.seed();
    let image = Image::build(vec![blob_bytes(seed, 0, args.layer_size)]);
    let t = Arc::new(Target {
        targets: args.common.targets()?,
        client: args.common.client(args.concurrency)?,
        repo: args.repo.clone(),
        tag: args.tag.clone(),
        digest: image.manifest.digest.clone(),
        manifest: image.manifest.data.clone(),
    });
    image
        .push(&t.client, t.targets.get(0), &t.repo, &t.tag)
        .await?;

    let warm_ups = (0..args.concurrency).map(|w| {
        let (t, ops) = (t.clone(), args.ops.clone());
        async move {
            for op in ops.0 {
                call(&t, op, (w, u64::MAX)).await?;
            }
            Ok(())
        }
    });
    run_bounded(args.concurrency, warm_ups).await?;

    let per_worker = args.max_requests.div_ceil(args.concurrency as u64);
    let meter = Meter::start(args.common.server_pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration_secs);
    let workers =
        (0..args.concurrency).map(|w| worker(t.clone(), args.ops.clone(), w, until, per_worker));
    let results = run_bounded(args.concurrency, workers).await?;
    let secs = started.elapsed().as_secs_f64();
    let usage = meter.finish();

    let mut per_op: Vec<Vec<Duration>> = vec![Vec::new(); args.ops.0.len()];
    for samples in results {
        for (k, s) in samples.into_iter().enumerate() {
            per_op[k].extend(s);
        }
    }
    let mut all: Vec<Duration> = per_op.iter().flatten().copied().collect();
    all.sort_unstable();
    let mut report = Report::new(
        "manifests",
        &[
            "scenario", "conc", "op", "requests", "req/s", "p50 ms", "p99 ms",
        ],
    );
    let several = per_op.len() > 1;
    for (k, samples) in per_op.iter_mut().enumerate() {
        samples.sort_unstable();
        let op = args.ops.0[k];
        let rate = samples.len() as f64 / secs;
        let (p50, p99) = (ms(percentile(samples, 50.0)), ms(percentile(samples, 99.0)));
        report.row(vec![
            "manifests".into(),
            args.concurrency.to_string(),
            op.name().into(),
            samples.len().to_string(),
            format!("{rate:.0}"),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
        ]);
        if several {
            report.metric(&format!("{}_requests_per_s", op.key()), rate);
            report.metric(&format!("{}_p50_ms", op.key()), p50);
            report.metric(&format!("{}_p99_ms", op.key()), p99);
        }
    }
    let rate = all.len() as f64 / secs;
    let (p50, p99) = (ms(percentile(&all, 50.0)), ms(percentile(&all, 99.0)));
    if several {
        report.row(vec![
            "manifests".into(),
            args.concurrency.to_string(),
            "all".into(),
            all.len().to_string(),
            format!("{rate:.0}"),
            format!("{p50:.2}"),
            format!("{p99:.2}"),
        ]);
    }
    report.param("concurrency", args.concurrency);
    report.param("duration_secs", args.duration_secs);
    report.param(
        "ops",
        args.ops.0.iter().map(|op| op.name()).collect::<Vec<_>>(),
    );
    report.param("requests", all.len());
    report.param("targets", t.targets.len());
    report.metric("requests_per_s", rate);
    report.metric("p50_ms", p50);
    report.metric("p99_ms", p99);
    report.print(&args.common, seed, &usage);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_lists_parse() {
        use Op::*;
        let cases: &[(&str, Option<&[Op]>)] = &[
            ("all", Some(&ALL_OPS)),
            ("get-tag", Some(&[GetTag])),
            ("head-digest, get-tag", Some(&[HeadDigest, GetTag])),
            (
                "get-tag,get-digest,head-tag,head-digest",
                Some(&[GetTag, GetDigest, HeadTag, HeadDigest]),
            ),
            ("", None),
            ("get", None),
            ("get-tag,", None),
            ("get-tag,get-tag", None),
            ("all,get-tag", None),
            ("put-tag,get-tag", Some(&[PutTag, GetTag])),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_ops(input).ok(),
                want.map(|w| Ops(w.to_vec())),
                "parse_ops({input:?})"
            );
        }
    }

    #[test]
    fn every_operation_reads_back_from_its_name() {
        for op in ALL_OPS.into_iter().chain([Op::PutTag]) {
            assert_eq!(parse_ops(op.name()).unwrap(), Ops(vec![op]));
            assert_eq!(op.key().replace('_', "-"), op.name());
        }
    }
}
