//! The command line: `run` (the controller) and `crd` (prints the CustomResourceDefinition).

use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use crate::controller::{self, Settings};
use crate::resource::InstanceRegistration;
use crate::telemetry::{self, LogFormat};

/// Registers Linux hosts with AWS OpsWorks Stacks, one InstanceRegistration object per host.
#[derive(Debug, Parser)]
#[command(name = "instance-registrar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
}

/// Flags of `run`; each can also be set through the environment variable named.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Objects reconciled at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// SSH sessions (agent installs) open at once.
    #[arg(long, env = "SSH_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    ssh_concurrency: u16,
    /// Seconds OpsWorks may take to list a host after its agent was installed before the install
    /// is tried again.
    #[arg(long, env = "REGISTRATION_TIMEOUT_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..))]
    registration_timeout_seconds: u64,
    /// Seconds between looks at a finished object, to notice drift.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(5..))]
    resync_seconds: u64,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Name of this replica in Events (in a Pod, set from metadata.name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

impl Cli {
    /// Parses the command line and runs the chosen subcommand.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        match Cli::parse().command {
            Command::Crd => {
                print!("{}", crd_yaml()?);
                Ok(())
            }
            Command::Run(args) => {
                telemetry::init(&args.log_level, args.log_format)?;
                let client = kube::Client::try_default().await?;
                let settings = Settings {
                    watch_namespace: args.watch_namespace,
                    concurrency: args.concurrency,
                    ssh_concurrency: args.ssh_concurrency,
                    resync: Duration::from_secs(args.resync_seconds),
                    registration_timeout: Duration::from_secs(args.registration_timeout_seconds),
                    instance: args.instance,
                };
                controller::run(client, settings, shutdown_signal()).await
            }
        }
    }
}

/// The CustomResourceDefinition, as YAML.
pub fn crd_yaml() -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&InstanceRegistration::crd())?)
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the controller");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing reconciles in flight"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing reconciles in flight"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crd_in_crds_is_what_the_binary_prints() {
        let committed = include_str!("../crds/instanceregistration.yaml");
        let generated = super::crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/instanceregistration.yaml is stale: run `cargo run -- crd > crds/instanceregistration.yaml`"
        );
    }
}
