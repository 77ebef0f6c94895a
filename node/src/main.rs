//! The `berth` binary: parses the command line, reads configuration, and runs the
//! chosen subcommand. The only crate that reads the environment and config files.

mod admin_cli;
mod cluster_cli;
mod config;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
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
