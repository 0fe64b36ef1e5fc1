//! The command line: `run` (the controller) and `crd` (prints the CustomResourceDefinition).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use crate::aws;
use crate::controller::{self, Settings};
use crate::http::{self, Health, Leadership};
use crate::leader;
use crate::metrics::Metrics;
use crate::resource::InstanceRegistration;
use crate::telemetry::{self, LogFormat};
use crate::tenancy::Unannotated;

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
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
}

/// Flags of `run`; each can also be set through the environment variable named.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only these namespaces, separated by commas (default: all namespaces). Each is
    /// watched on its own, so the controller needs rights in those namespaces only.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',', value_parser = namespace_name)]
    watch_namespace: Vec<String>,
    /// Reconcile only the objects whose labels match this label selector (`shard=a`,
    /// `team in (a,b)`): one shard of several controllers, each with its own selector and
    /// its own leader lease.
    #[arg(long, env = "LABEL_SELECTOR", value_parser = label_selector)]
    label_selector: Option<String>,
    /// Objects reconciled at once. A pass that opens an SSH session (an install), or takes longer
    /// than a quarter of a second (its AWS calls wait), lets go of its worker meanwhile, so this
    /// bounds neither the installs in flight nor the passes waiting on AWS (the AWS budget,
    /// --aws-calls-per-second, bounds their calls).
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// SSH sessions (agent installs, probes) open at once: the installs in flight.
    #[arg(long, env = "SSH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    ssh_concurrency: u16,
    /// SSH sessions one namespace may have open at once (default: half of --ssh-concurrency,
    /// rounded up): the other namespaces' installs always find the rest of the slots, and a slot
    /// that frees goes to the waiting namespaces in turn. A cluster with one tenant may set it to
    /// --ssh-concurrency.
    #[arg(long, env = "SSH_NAMESPACE_SHARE", value_parser = clap::value_parser!(u16).range(1..=1024))]
    ssh_namespace_share: Option<u16>,
    /// Seconds OpsWorks may take to list a host after its agent was installed before the install
    /// is tried again.
    #[arg(long, env = "REGISTRATION_TIMEOUT_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..))]
    registration_timeout_seconds: u64,
    /// Seconds between looks at a finished object, to notice drift.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(5..))]
    resync_seconds: u64,
    /// Which OpsWorks stacks the objects of a namespace without the `registrar.dev/allowed-stacks`
    /// annotation may use: `any` (as before the annotation existed) or `none` (a shared cluster:
    /// a namespace uses only the stacks a cluster administrator listed in its annotation).
    #[arg(long, env = "UNANNOTATED_NAMESPACES", value_enum, default_value_t = Unannotated::Any)]
    unannotated_namespaces: Unannotated,
    /// Seconds an AWS call may take in all, its retries included; a call that runs out fails
    /// with reason AwsUnavailable and is tried again with backoff.
    #[arg(long, env = "AWS_OPERATION_TIMEOUT_SECONDS", default_value_t = aws::OPERATION_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    aws_operation_timeout_seconds: u64,
    /// Seconds one attempt of an AWS call may take (an attempt that runs out is retried within
    /// the call's own time).
    #[arg(long, env = "AWS_ATTEMPT_TIMEOUT_SECONDS", default_value_t = aws::ATTEMPT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    aws_attempt_timeout_seconds: u64,
    /// AWS calls per second the controller makes to each service (IAM, OpsWorks, EC2, Systems
    /// Manager), all objects together, at most 16 unanswered at once; an operation the service
    /// throttles gets a rate of its own (70 % of what it sent in the last second), grown back to
    /// this. 0: no limit (the SDK's retries alone absorb throttling).
    #[arg(long, env = "AWS_CALLS_PER_SECOND", default_value_t = 20.0, value_parser = calls_per_second)]
    aws_calls_per_second: f64,
    /// Seconds to connect to an AWS endpoint.
    #[arg(long, env = "AWS_CONNECT_TIMEOUT_SECONDS", default_value_t = aws::CONNECT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
    aws_connect_timeout_seconds: u64,
    /// Where hosts download the Systems Manager agent setup tool (ssm-setup-cli): `{region}`,
    /// and on the host `{platform}` (`linux`, or `debian` where dpkg is) and `{arch}` (`amd64`,
    /// `arm64`, `386`), are filled in. The default is AWS's published location; a private mirror
    /// goes here.
    #[arg(long, env = "REGISTRAR_SSM_SETUP_URL", default_value = crate::controller::SSM_SETUP_URL)]
    ssm_setup_url: String,
    /// Whether the host probe checks, before anything is made in AWS, that the host reaches the
    /// endpoints its agent will call (`EndpointUnreachable` otherwise). `false` for hosts that
    /// reach AWS only through a proxy their agent is configured with but their login shell is
    /// not (the clock, disk and init checks stay).
    #[arg(long, env = "CHECK_HOST_ENDPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    check_host_endpoints: bool,
    /// Seconds between audits for orphans (and one at start): what the controller made in AWS
    /// for objects that no longer exist (a finalizer removed by hand, a namespace force-deleted).
    /// 0 turns the audit off.
    #[arg(long, env = "AUDIT_SECONDS", default_value_t = 3600)]
    audit_seconds: u64,
    /// Whether the audit removes what was orphaned at two audits in a row (only what carries
    /// this cluster's tag). Off: orphans are only reported.
    #[arg(long, env = "DELETE_ORPHANS", default_value_t = false, action = clap::ArgAction::Set)]
    delete_orphans: bool,
    /// Seconds the service may report a registered host's agent out of touch (ConnectionLost)
    /// before the controller restarts the agent's service over SSH (one attempt an hour at
    /// most per object). 0 turns repairs off.
    #[arg(long, env = "AGENT_REPAIR_AFTER_SECONDS", default_value_t = 600)]
    agent_repair_after_seconds: u64,
    /// A managed policy ARN set as the permissions boundary of every IAM user the controller
    /// makes for the OpsWorks agent. When the controller's own policy requires one (the
    /// `iam:PermissionsBoundary` condition on `iam:CreateUser`), this must name it.
    #[arg(long, env = "IAM_PERMISSIONS_BOUNDARY", value_parser = policy_arn)]
    iam_permissions_boundary: Option<String>,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Name of this replica in Events and in the leader lease (in a Pod, set from
    /// metadata.name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Address of the Prometheus metrics endpoint (/metrics).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Address of the health probes (/healthz, /readyz).
    #[arg(long, env = "PROBE_ADDRESS", default_value = "0.0.0.0:8081")]
    probe_address: SocketAddr,
    /// Run as one of several replicas: only the holder of a coordination.k8s.io Lease acts.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the Pod's namespace, else the watched one).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE_NAME",
        default_value = "instance-registrar"
    )]
    leader_election_lease_name: String,
    /// Seconds a leader lease holds without renewal (a standby takes over after this long
    /// when the leader dies without releasing it). The leader renews every fifth of it and
    /// stops when it could not renew for two thirds of it (10 s of 15 s: an API server away
    /// for less than that costs no leader).
    #[arg(long, env = "LEADER_ELECTION_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    leader_election_lease_seconds: u64,
}

impl Cli {
    /// Parses the command line and runs the chosen subcommand.
    pub async fn parse_and_run() -> anyhow::Result<()> {
        match Cli::parse().command {
            Command::Crd => {
                print!("{}", crd_yaml()?);
                Ok(())
            }
            Command::Run(args) => run(*args).await,
        }
    }
}

/// `run`: serves metrics and probes, takes part in leader election when asked, and runs the
/// controller until SIGTERM.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log_level, args.log_format)?;
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    http::serve_metrics(args.metrics_address, metrics.clone())
        .await
        .map_err(|e| anyhow::anyhow!("metrics address {}: {e}", args.metrics_address))?;
    http::serve_probes(args.probe_address, health.clone())
        .await
        .map_err(|e| anyhow::anyhow!("probe address {}: {e}", args.probe_address))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let identity = args.instance.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "instance-registrar".into()),
            std::process::id()
        )
    });
    let election = args.leader_election.then(|| {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| args.watch_namespace.first().cloned());
        namespace.map(|namespace| leader::Election {
            namespace,
            name: args.leader_election_lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.leader_election_lease_seconds),
        })
    });
    let settings = Settings {
        watched: crate::watches::Watched {
            namespaces: args.watch_namespace,
            selector: args.label_selector,
        },
        concurrency: args.concurrency,
        ssh_concurrency: args.ssh_concurrency,
        ssh_namespace_share: args.ssh_namespace_share,
        resync: Duration::from_secs(args.resync_seconds),
        registration_timeout: Duration::from_secs(args.registration_timeout_seconds),
        ssm_setup_url: args.ssm_setup_url,
        check_host_endpoints: args.check_host_endpoints,
        cluster_id: None,
        audit_every: Duration::from_secs(args.audit_seconds),
        delete_orphans: args.delete_orphans,
        agent_repair_after: Duration::from_secs(args.agent_repair_after_seconds),
        iam_permissions_boundary: args.iam_permissions_boundary,
        instance: Some(identity),
        unannotated_namespaces: args.unannotated_namespaces,
        aws_calls_per_second: (args.aws_calls_per_second > 0.0)
            .then_some(args.aws_calls_per_second),
        aws_timeouts: aws::Timeouts {
            connect: Duration::from_secs(args.aws_connect_timeout_seconds),
            attempt: Duration::from_secs(args.aws_attempt_timeout_seconds),
            operation: Duration::from_secs(args.aws_operation_timeout_seconds),
        },
    };
    let Some(election) = election else {
        return controller::run(client, settings, metrics, health, stopped()).await;
    };
    let election = election.ok_or_else(|| {
        anyhow::anyhow!(
            "leader election needs a namespace for its Lease: --leader-election-namespace, POD_NAMESPACE or --watch-namespace"
        )
    })?;
    health.set_leadership(Leadership::Standby);
    let mut held = tokio::select! {
        held = leader::acquire(client.clone(), election) => held,
        _ = stopped() => return Ok(()),
    };
    health.set_leadership(Leadership::Leader);
    let outcome = tokio::select! {
        result = controller::run(client, settings, metrics, health, stopped()) => Ok(result),
        why = held.keep() => Err(why),
    };
    match outcome {
        Ok(result) => {
            held.release().await;
            result
        }
        Err(why) => {
            // Fail-stop: a replica that may no longer lead must not act, not even to finish.
            tracing::error!(%why, "lost the leader lease; stopping");
            std::process::exit(1);
        }
    }
}

/// The CustomResourceDefinition, as YAML.
pub(crate) fn crd_yaml() -> anyhow::Result<String> {
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

/// A namespace name: a DNS label (refused at start, not at the first API call).
fn namespace_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    match ok {
        true => Ok(value.to_owned()),
        false => Err(format!("{value:?} is not a namespace name")),
    }
}

/// A label selector, as the API server takes it (checked for what cannot be one: empty, or
/// characters no selector has).
fn label_selector(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " -_./=!,()".contains(c));
    match ok {
        true => Ok(value.to_owned()),
        false => Err(format!("{value:?} is not a label selector")),
    }
}

/// An IAM managed policy ARN: `arn:<partition>:iam::<account or aws>:policy/<path and name>`.
fn policy_arn(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[3].is_empty()
        && !parts[4].is_empty()
        && parts[5].len() > "policy/".len()
        && parts[5].starts_with("policy/");
    match ok {
        true => Ok(value.to_owned()),
        false => Err(format!("{value:?} is not an IAM managed policy ARN")),
    }
}

/// A rate of calls per second: 0 (no limit), or from 0.5 to 10000.
fn calls_per_second(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    match rate {
        0.0 => Ok(0.0),
        r if (crate::budget::MIN_RATE..=10_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{value} is not 0 (no limit) nor from {} to 10000 calls per second",
            crate::budget::MIN_RATE
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_in_crds_is_what_the_binary_prints() {
        let committed = include_str!("../crds/instanceregistration.yaml");
        let generated = super::crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/instanceregistration.yaml is stale: run `cargo run -- crd > crds/instanceregistration.yaml`"
        );
    }

    #[test]
    fn namespaces_and_selectors_are_checked_before_anything_runs() {
        assert_eq!(namespace_name("team-a").unwrap(), "team-a");
        for bad in ["", "Team", "-a", "a-", "a,b", &"a".repeat(64)] {
            assert!(namespace_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(label_selector(" shard=a ").unwrap(), "shard=a");
        assert!(label_selector("team in (a,b),!legacy").is_ok());
        for bad in ["", "a=$(x)", "a=b;c"] {
            assert!(label_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_permissions_boundary_must_be_a_managed_policy_arn() {
        let ok = "arn:aws:iam::123456789012:policy/boundaries/OpsWorksAgent";
        assert_eq!(policy_arn(ok).unwrap(), ok);
        assert!(policy_arn("arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration").is_ok());
        for bad in [
            "",
            "OpsWorksAgent",
            "arn:aws:iam::123456789012:role/x",
            "arn:aws:iam::123456789012:policy/",
            "arn:aws:s3:::policy/x",
        ] {
            assert!(policy_arn(bad).is_err(), "{bad:?}");
        }
    }
}
