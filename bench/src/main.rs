//! `berth-bench`: a load generator for any OCI registry. The `blobs` scenario pushes N
//! blobs of S bytes with concurrency C (monolithic or chunked), pulls them back,
//! verifies every digest, and prints MB/s for both directions as a table and as one
//! JSON line. With `--server-pid` it also reports the server's peak RSS and CPU time.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use sha2::Digest as _;

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    about = "Push and pull throughput against an OCI registry"
)]
struct Args {
    /// Registry base URL, e.g. http://127.0.0.1:5000
    #[arg(long)]
    url: String,
    /// Blobs to push.
    #[arg(long, default_value_t = 8)]
    count: usize,
    /// Bytes per blob (suffixes K, M, G accepted).
    #[arg(long, default_value = "64M")]
    size: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Upload mode: monolithic (POST then PUT with the body) or chunked (PATCH chunks).
    #[arg(long, default_value = "monolithic")]
    mode: String,
    /// Chunk size for chunked mode.
    #[arg(long, default_value = "8M")]
    chunk: String,
    /// Repository to push into.
    #[arg(long, default_value = "bench/blobs")]
    repo: String,
    /// PID of the server, to report its peak RSS and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(num
        .parse::<u64>()
        .with_context(|| format!("bad size {s:?}"))?
        * mul)
}

/// Deterministic, incompressible-looking content for blob `i`.
fn blob_bytes(i: usize, size: u64) -> Bytes {
    let mut out = Vec::with_capacity(size as usize);
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    Bytes::from(out)
}

fn location(base: &str, resp: &reqwest::Response) -> anyhow::Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .context("no Location header")?
        .to_str()?;
    Ok(if loc.starts_with("http") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    })
}

fn with_query(url: &str, q: &str) -> String {
    if url.contains('?') {
        format!("{url}&{q}")
    } else {
        format!("{url}?{q}")
    }
}

async fn push(
    client: &reqwest::Client,
    args: &Args,
    data: Bytes,
    digest: &str,
    chunk: u64,
) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{}/v2/{}/blobs/uploads/", args.url, args.repo))
        .send()
        .await?;
    if resp.status() != 202 {
        bail!("POST upload: {}", resp.status());
    }
    let mut loc = location(&args.url, &resp)?;
    if args.mode == "chunked" {
        let mut off = 0u64;
        while off < data.len() as u64 {
            let end = (off + chunk).min(data.len() as u64);
            let resp = client
                .patch(&loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{off}-{}", end - 1))
                .body(data.slice(off as usize..end as usize))
                .send()
                .await?;
            if resp.status() != 202 {
                bail!("PATCH: {}", resp.status());
            }
            loc = location(&args.url, &resp)?;
            off = end;
        }
        let resp = client
            .put(with_query(&loc, &format!("digest={digest}")))
            .send()
            .await?;
        if resp.status() != 201 {
            bail!("PUT: {}", resp.status());
        }
    } else {
        let resp = client
            .put(with_query(&loc, &format!("digest={digest}")))
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        if resp.status() != 201 {
            bail!("PUT: {}", resp.status());
        }
    }
    Ok(())
}

async fn pull(client: &reqwest::Client, args: &Args, digest: &str) -> anyhow::Result<u64> {
    let resp = client
        .get(format!("{}/v2/{}/blobs/{digest}", args.url, args.repo))
        .send()
        .await?;
    if resp.status() != 200 {
        bail!("GET blob: {}", resp.status());
    }
    let mut hasher = sha2::Sha256::new();
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        bail!("pulled content of {digest} hashes to {got}");
    }
    Ok(n)
}

/// Peak RSS (KiB) and CPU seconds of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((hwm, ticks / 100.0))
}

fn own_cpu_seconds() -> f64 {
    proc_usage(std::process::id()).map_or(0.0, |u| u.1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let size = parse_size(&args.size)?;
    let chunk = parse_size(&args.chunk)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let blobs: Vec<(Bytes, String)> = (0..args.count)
        .map(|i| {
            let data = blob_bytes(i, size);
            let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
            (data, digest)
        })
        .collect();
    let total = size * args.count as u64;
    let server_cpu_before = args.server_pid.and_then(proc_usage).map(|u| u.1);
    let cpu_before = own_cpu_seconds();

    let started = Instant::now();
    let pushes = futures::stream::iter(blobs.iter().cloned().map(|(data, digest)| {
        let client = client.clone();
        let args = args.clone();
        async move { push(&client, &args, data, &digest, chunk).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await;
    let push_secs = started.elapsed().as_secs_f64();
    for r in pushes {
        r?;
    }

    let started = Instant::now();
    let pulls = futures::stream::iter(blobs.iter().map(|(_, d)| d.clone()).map(|digest| {
        let client = client.clone();
        let args = args.clone();
        async move { pull(&client, &args, &digest).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await;
    let pull_secs = started.elapsed().as_secs_f64();
    let mut pulled = 0;
    for r in pulls {
        pulled += r?;
    }
    if pulled != total {
        bail!("pulled {pulled} bytes, expected {total}");
    }

    let mb = total as f64 / 1e6;
    let client_cpu = own_cpu_seconds() - cpu_before;
    let server = args.server_pid.and_then(proc_usage);
    let server_cpu = match (server, server_cpu_before) {
        (Some((_, after)), Some(before)) => Some(after - before),
        _ => None,
    };
    println!("scenario  blobs  size      conc  mode        push MB/s  pull MB/s");
    println!(
        "blobs     {:<5}  {:<8}  {:<4}  {:<10}  {:>9.1}  {:>9.1}",
        args.count,
        args.size,
        args.concurrency,
        args.mode,
        mb / push_secs,
        mb / pull_secs
    );
    println!(
        "client cpu {client_cpu:.2}s over {:.2}s wall",
        push_secs + pull_secs
    );
    if let Some((hwm, _)) = server {
        println!(
            "server peak RSS {} MiB, cpu {:.2}s",
            hwm / 1024,
            server_cpu.unwrap_or(0.0)
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "blobs", "count": args.count, "size_bytes": size,
            "concurrency": args.concurrency, "mode": args.mode,
            "push_mb_s": mb / push_secs, "pull_mb_s": mb / pull_secs,
            "push_secs": push_secs, "pull_secs": pull_secs,
            "client_cpu_secs": client_cpu,
            "server_peak_rss_kib": server.map(|s| s.0),
            "server_cpu_secs": server_cpu,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("10").unwrap(), 10);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn blob_content_is_deterministic_and_distinct() {
        assert_eq!(blob_bytes(1, 1000), blob_bytes(1, 1000));
        assert_ne!(blob_bytes(1, 1000), blob_bytes(2, 1000));
        assert_eq!(blob_bytes(3, 1001).len(), 1001);
    }
}
