//! `berth-bench`: a load generator for any OCI registry, speaking only the distribution
//! API over HTTP. Each scenario (`blobs`, `manifests`, `herd`) prints a human table and
//! exactly one JSON line, with its own CPU time and, given `--server-pid`, the server's
//! peak RSS and CPU time. `summarize` turns the JSON lines of two registries into
//! medians and ratios; `bench/side-by-side.sh` drives it all against berth and CNCF
//! Distribution.

mod blobs;
mod common;
mod content;
mod herd;
mod image;
mod manifests;
mod registry;
mod report;
mod stats;
mod summary;
mod usage;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    about = "Throughput and latency of an OCI registry, side by side with another"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Push N blobs of S bytes with C in flight, then pull and verify them: MB/s.
    Blobs(blobs::Args),
    /// GET/HEAD one manifest by tag or digest with C in flight for D seconds:
    /// requests/s, p50 and p99 latency.
    Manifests(manifests::Args),
    /// N clients pull one multi-layer image at once: wall time until the last is done.
    Herd(herd::Args),
    /// Medians and A/B ratios per run label of two JSON-lines result files.
    Summarize(summary::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Blobs(args) => blobs::run(args).await,
        Command::Manifests(args) => manifests::run(args).await,
        Command::Herd(args) => herd::run(args).await,
        Command::Summarize(args) => summary::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn scenarios_parse_their_flags() {
        let cases: &[(&[&str], bool)] = &[
            (&["blobs", "--url", "http://a"], true),
            (
                &[
                    "blobs",
                    "--url",
                    "http://a,http://b",
                    "--size",
                    "1M",
                    "--mode",
                    "chunked",
                    "--chunk",
                    "256K",
                ],
                true,
            ),
            (&["blobs", "--url", "http://a", "--mode", "streamed"], false),
            (&["blobs", "--url", "http://a", "--size", "lots"], false),
            (&["blobs"], false),
            (
                &[
                    "manifests",
                    "--url",
                    "http://a",
                    "--ops",
                    "get-tag",
                    "--concurrency",
                    "64",
                ],
                true,
            ),
            (&["manifests", "--url", "http://a", "--ops", "put"], false),
            (
                &[
                    "herd",
                    "--url",
                    "http://a",
                    "--clients",
                    "5",
                    "--layer-size",
                    "256K",
                ],
                true,
            ),
            (
                &["summarize", "--a", "berth=x", "--b", "distribution=y"],
                true,
            ),
            (
                &["summarize", "--a", "berth", "--b", "distribution=y"],
                false,
            ),
        ];
        for (argv, ok) in cases {
            let parsed =
                Cli::try_parse_from(std::iter::once("berth-bench").chain(argv.iter().copied()));
            assert_eq!(parsed.is_ok(), *ok, "{argv:?}: {parsed:?}");
        }
    }

    #[test]
    fn blob_flags_keep_their_values() {
        let cli = Cli::try_parse_from([
            "berth-bench",
            "blobs",
            "--url",
            "http://a",
            "--count",
            "200",
            "--size",
            "1M",
            "--mode",
            "chunked",
            "--chunk",
            "256K",
            "--server-pid",
            "7",
            "--label",
            "x",
        ])
        .unwrap();
        let Command::Blobs(args) = cli.command else {
            panic!("not blobs: {cli:?}");
        };
        assert_eq!(args.count, 200);
        assert_eq!(args.size, 1 << 20);
        assert_eq!(args.chunk, 256 << 10);
        assert_eq!(args.mode, blobs::Mode::Chunked);
        assert_eq!(args.common.server_pid, Some(7));
        assert_eq!(args.common.label.as_deref(), Some("x"));
    }
}
