//! The `berth` binary: parses the command line, reads configuration, and runs the
//! chosen subcommand. The only crate that reads the environment and config files.

mod admin_cli;
mod cluster_cli;
mod config;
mod memory;
mod scrub_state;
mod serve;
mod telemetry;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A clustered OCI container registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node (with no peers: a single-node registry).
    Serve(Box<config::ServeArgs>),
    /// Inspect a cluster.
    #[command(subcommand)]
    Cluster(cluster_cli::ClusterCommand),
    /// Manage projects, members, users and robots; read the audit log.
    Admin(admin_cli::AdminArgs),
}

/// Runs the chosen subcommand; an error is one line `error: ...` (with its causes)
/// on stderr and exit status 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            memory::limit_malloc_arenas();
            let cfg = config::load(&args)?;
            telemetry::init(&cfg.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve::run(cfg))
        }
        Command::Cluster(cmd) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cluster_cli::run(cmd))
        }
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(admin_cli::run(args))
        }
    }
}
