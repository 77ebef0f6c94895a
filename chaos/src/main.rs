//! `berth-chaos`: runs a failover drill against a local cluster it starts itself (each
//! node in its own network namespace) or against a deployed cluster described by a
//! topology file, then checks the recorded history and writes the report. Exit status
//! 0 when every invariant held, 1 when one was violated, 2 when the drill could not run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_chaos::check;
use berth_chaos::drill::{self, Driver, Settings};
use berth_chaos::fault::{self, FaultKind};
use berth_chaos::lab::Lab;
use berth_chaos::report::{self, Report};
use berth_chaos::topology::Topology;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Breaks a berth cluster on purpose while a workload runs, and proves nothing
/// acknowledged was lost.
#[derive(Parser, Debug, Clone)]
#[command(name = "berth-chaos")]
struct Args {
    /// The berth binary to start (local mode).
    #[arg(long, env = "BERTH_BIN")]
    berth: Option<PathBuf>,
    /// Nodes to start (local mode); default 3, 5 with --long.
    #[arg(long)]
    nodes: Option<u64>,
    /// Workload duration, e.g. 120s, 2m, 30m; default 2m, 30m with --long.
    #[arg(long)]
    duration: Option<String>,
    /// Seed of the fault schedule and the workload; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Faults, comma-separated, injected in this order (cycling), or `all` for a seeded
    /// random pick of every kind. Default: kill-leader,pause-follower,partition-one;
    /// `all` with --long.
    #[arg(long)]
    faults: Option<String>,
    /// Long drill: 30 minutes, 5 nodes, every fault kind (flags given still win).
    #[arg(long)]
    long: bool,
    /// How long a fault is held (varied by the seed between 75 % and 125 %).
    #[arg(long, default_value = "15s")]
    hold: String,
    /// Delay the latency-one fault adds to each direction of a node's cluster traffic
    /// (a request and its answer each wait this long).
    #[arg(long, default_value = "100ms")]
    latency: String,
    /// Pause after a fault has healed and converged.
    #[arg(long, default_value = "5s")]
    gap: String,
    /// Workload before the first fault.
    #[arg(long, default_value = "10s")]
    warmup: String,
    /// Concurrent workload clients per node (each sends all its requests to one node).
    #[arg(long, default_value_t = 2)]
    workers_per_node: u32,
    /// Bound on recorded workload operations.
    #[arg(long, default_value_t = 500_000)]
    max_ops: u64,
    /// Shared tags repointed by the workload.
    #[arg(long, default_value_t = 4)]
    hot_tags: usize,
    /// Largest layer blob pushed (bytes); up to 64 KiB a blob is stored inline in the
    /// metadata.
    #[arg(long, default_value_t = 32 * 1024)]
    max_blob_bytes: usize,
    /// One layer blob in this many is large (64-256 KiB, erasure-coded into shard
    /// files on three disks); default 16 when a disk fault is listed, else none.
    #[arg(long)]
    large_blob_every: Option<u32>,
    /// Local network: `namespaces` (one per node; needs root), `loopback` (nodes on
    /// 127.0.0.1 behind userspace fault proxies; no packet loss or link limits), or
    /// `auto` (namespaces, falling back to loopback when they cannot be created).
    #[arg(long, value_enum, default_value_t = Network::Auto)]
    network: Network,
    /// Drill a deployed cluster described by this TOML file instead of starting nodes.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Report folder (report.md, report.json, chart.svg, history.jsonl, node logs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the nodes' data folders after the drill.
    #[arg(long)]
    keep_data: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    Auto,
    Namespaces,
    Loopback,
}

fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => bail!("duration {s:?}: use ms, s, m or h"),
    };
    Ok(Duration::from_secs(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn replay_command(
    args: &Args,
    seed: u64,
    nodes: u64,
    duration: &str,
    faults: &str,
    large_every: u32,
) -> String {
    let mut c = format!("berth-chaos --seed {seed} --duration {duration} --faults {faults}");
    if let Some(t) = &args.topology {
        c += &format!(" --topology {}", t.display());
    } else {
        c += &format!(" --nodes {nodes}");
    }
    c += &format!(
        " --hold {} --gap {} --warmup {} --workers-per-node {} --hot-tags {} --max-blob-bytes {} --latency {} --large-blob-every {}",
        args.hold,
        args.gap,
        args.warmup,
        args.workers_per_node,
        args.hot_tags,
        args.max_blob_bytes,
        args.latency,
        large_every
    );
    if args.network == Network::Loopback {
        c += " --network loopback";
    }
    c
}

async fn run(args: Args) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let nodes = args.nodes.unwrap_or(if args.long { 5 } else { 3 });
    let duration_s = args
        .duration
        .clone()
        .unwrap_or_else(|| if args.long { "30m" } else { "2m" }.into());
    let faults_s = args.faults.clone().unwrap_or_else(|| {
        if args.long {
            "all".into()
        } else {
            "kill-leader,pause-follower,partition-one".into()
        }
    });
    let mut kinds = fault::parse_list(&faults_s)?;
    let disk_faults = kinds.iter().any(|k| k.is_disk());
    let large_every = args
        .large_blob_every
        .unwrap_or(if disk_faults { 16 } else { 0 });
    let settings_base = Settings {
        seed,
        duration: parse_duration(&duration_s)?,
        workers: 0,
        faults: kinds.clone(),
        shuffle: faults_s == "all",
        hold: parse_duration(&args.hold)?,
        gap: parse_duration(&args.gap)?,
        warmup: parse_duration(&args.warmup)?,
        max_ops: args.max_ops,
        hot_tags: args.hot_tags.clamp(1, 64),
        max_blob: args.max_blob_bytes.clamp(64, 64 << 20),
        large_blob_every: large_every,
        latency: parse_duration(&args.latency)?.min(berth_chaos::proxy::DELAY_MAX),
    };
    let replay = replay_command(&args, seed, nodes, &duration_s, &faults_s, large_every);
    let suffix = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("berth-chaos-{seed}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    eprintln!("berth-chaos: seed {seed}; replay with: {replay}");

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let topology = args.topology.as_deref().map(Topology::load).transpose()?;
    let mut skipped_kinds: Vec<String> = Vec::new();
    let (lab, mode) = match &topology {
        Some(_) => (None, "deployed cluster (topology file)".to_string()),
        None => {
            let berth = args
                .berth
                .clone()
                .context("--berth (or BERTH_BIN) must name the berth binary")?;
            let lab = Lab::start(
                &berth,
                nodes,
                &out,
                args.network == Network::Loopback,
                &suffix,
                kinds.contains(&FaultKind::DiskFull),
            )?;
            if args.network == Network::Namespaces
                && let Some(why) = &lab.loopback_reason
            {
                bail!("--network namespaces: {why}");
            }
            let mode = match &lab.loopback_reason {
                None => format!(
                    "local, {nodes} nodes each in its own network namespace (suffix {suffix}); partitions are iptables drops"
                ),
                Some(why) => format!(
                    "LOOPBACK FALLBACK: local, {nodes} nodes on 127.0.0.1 ({why}); partitions and latency \
                     are a userspace fault proxy in front of each node's cluster port (bytes held, not \
                     packets dropped)"
                ),
            };
            for k in &kinds {
                if let Some(why) = lab.unsupported(*k) {
                    skipped_kinds.push(format!("skipped {k}: {why}"));
                }
            }
            kinds.retain(|k| lab.supports(*k));
            (Some(lab), mode)
        }
    };
    eprintln!("berth-chaos: {mode}");
    let mut settings = settings_base;
    let node_count = match (&lab, &topology) {
        (Some(lab), _) => lab.specs.len(),
        (None, Some(t)) => t.nodes.len(),
        (None, None) => 0,
    };
    settings.workers =
        u32::try_from(node_count)?.saturating_mul(args.workers_per_node.clamp(1, 16));
    settings.faults = kinds;
    if settings.faults.is_empty() {
        settings.faults = vec![FaultKind::KillFollower];
    }
    let driver = match (&lab, &topology) {
        (Some(lab), _) => Driver::Local(lab),
        (None, Some(t)) => Driver::Deployed(t),
        (None, None) => bail!("neither a lab nor a topology"),
    };
    let result = tokio::select! {
        r = drill::run(driver, &settings) => r,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if let Some(lab) = &lab {
        lab.teardown();
        if !args.keep_data {
            for s in &lab.specs {
                let _ = std::fs::remove_dir_all(&s.data);
            }
        }
    }
    let mut outcome = result?;
    outcome.notes.extend(skipped_kinds);
    let report = build_report(&outcome, seed, replay, mode);
    write_report(&out, &report, &outcome)?;
    println!("{}", report::markdown(&report));
    eprintln!("berth-chaos: report in {}", out.display());
    Ok(report.passed)
}

fn build_report(o: &drill::Outcome, seed: u64, replay: String, mode: String) -> Report {
    let verdicts = vec![
        check::durability::check(&o.events, &o.nodes),
        check::digests::check(&o.events),
        check::tags::check(&o.events),
        check::statuses::check(&o.events, &o.faults, 5_000, o.end_ms),
        check::minority::check(&o.events, &o.faults),
        check::convergence::check(&o.states),
    ];
    let faults: Vec<_> = o
        .faults
        .iter()
        .map(|f| report::fault_metrics(&o.events, f))
        .collect();
    let recovery = report::by_kind(&faults, |f| f.recovery_ms);
    let redundancy = report::by_kind(&faults, |f| f.heal_to_redundant_ms);
    Report {
        passed: verdicts.iter().all(|v| v.passed()),
        seed,
        replay,
        mode,
        nodes: o.nodes.clone(),
        duration_ms: o.end_ms,
        totals: report::totals(&o.events),
        faults,
        recovery,
        redundancy,
        verdicts,
        final_states: o.states.clone(),
        notes: o.notes.clone(),
    }
}

fn write_report(out: &Path, report: &Report, o: &drill::Outcome) -> Result<()> {
    std::fs::write(out.join("report.md"), report::markdown(report))?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(
        out.join("chart.svg"),
        report::svg(&o.events, &o.faults, o.end_ms),
    )?;
    let mut lines = String::new();
    for e in &o.events {
        lines.push_str(&serde_json::to_string(e)?);
        lines.push('\n');
    }
    std::fs::write(out.join("history.jsonl"), lines)?;
    Ok(())
}
