//! Step: the host answers over SSH before anything is written in IAM. One short session, with the
//! host key checked per `ssh.hostKeyPolicy` and the login accepted, runs a read-only probe that
//! asks the host what it registers as ([`probe::PROBE_SCRIPT`]: its hostname and its own
//! addresses). The host key's fingerprint (trust on first use) and the answer are recorded on
//! status at once, so an unreachable or mistyped host never gets an IAM user, a later session that
//! fails half-way still finds the key recorded, and the registration the install makes can be
//! recognised whatever address the agent reports.
//!
//! For an OpsWorks on-premises host the answer also decides whether the host is registered
//! already (it is then adopted) or its hostname is another host's
//! ([`crate::opsworks::identity::after_probe`]).

use std::time::Duration;

use kube::ResourceExt;
use tracing::info;

use super::{Facts, Outcome, TargetFacts, probe};
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::resource::{HostIdentity, InstanceRegistration, InstanceRegistrationStatus};
use crate::ssh::{self, HostKeyRule, SshError};

pub(super) async fn check(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if let Some(id) = facts.registered_as() {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!("the host is registered as {id}"),
        ));
    }
    let (Some(target), Some(key)) = (facts.target.clone(), facts.ssh_key.clone()) else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the host or the SSH key is not resolved",
        ));
    };
    let (connect, rule) = match connection(obj, &target, status) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let via = via(&connect);
    let learned_here = match status.host.as_ref().filter(|h| h.via == via) {
        Some(_) => false,
        None => {
            let learned = match probe(obj, ctx, &connect, rule, key).await {
                Ok((learned, fingerprint)) => {
                    if status.host_key_fingerprint.is_none() {
                        status.host_key_fingerprint = Some(fingerprint);
                    }
                    learned
                }
                Err(outcome) => return outcome,
            };
            status.host = Some(HostIdentity {
                hostname: learned.hostname,
                addresses: learned.addresses,
                via: via.clone(),
            });
            true
        }
    };
    let host = status.host.clone().unwrap_or_default();
    let said = format!(
        "{via} answered as {} ({})",
        host.hostname.as_deref().unwrap_or("no hostname"),
        if host.addresses.is_empty() {
            "no addresses".to_owned()
        } else {
            host.addresses.join(", ")
        }
    );
    // OpsWorks recognises the registration by what the host said; Systems Manager by the node.
    if let crate::resource::Service::OpsWorks(_) = obj.spec.service()
        && let Some(outcome) =
            crate::opsworks::identity::after_probe(obj, facts, status, &target, &said)
    {
        return outcome;
    }
    Outcome::Done(Observation::holds(
        reasons::SUCCEEDED,
        if learned_here {
            said
        } else {
            format!("{said} (learned earlier)")
        },
    ))
}

/// Whether this object started an install on the host (so a registration of the host may be one
/// it made).
pub fn installed(status: &InstanceRegistrationStatus) -> bool {
    status.install_started_at.is_some() || status.agent_installed_at.is_some()
}

/// Where and how to connect to the host, and which host keys to trust.
pub(crate) fn connection(
    obj: &InstanceRegistration,
    target: &TargetFacts,
    status: &InstanceRegistrationStatus,
) -> Result<(ssh::Target, HostKeyRule), Outcome> {
    let spec = &obj.spec.ssh;
    let connect = ssh::Target {
        host: spec
            .address
            .clone()
            .unwrap_or_else(|| target.address.clone()),
        port: spec.port,
        username: spec.username.clone(),
        connect_timeout: Duration::from_secs(spec.timeout_seconds.into()),
        command_timeout: Duration::from_secs(spec.command_timeout_seconds.into()),
        tty_retry_status: None,
    };
    let rule = HostKeyRule {
        policy: spec.host_key_policy,
        pinned: spec
            .host_keys
            .iter()
            .filter_map(|line| ssh::parse_known_host(line))
            .collect(),
        recorded: status.host_key_fingerprint.clone(),
    };
    if !spec.host_keys.is_empty() && rule.pinned.is_empty() {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::HOST_KEY_MISMATCH,
            "none of ssh.hostKeys is a public key the controller can read",
        )));
    }
    Ok((connect, rule))
}

/// `address:port`, as status.host.via records it.
fn via(connect: &ssh::Target) -> String {
    format!("{}:{}", connect.host, connect.port)
}

/// How long the probe may run once logged in.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the probe; returns what the host said and its host key's fingerprint.
async fn probe(
    obj: &InstanceRegistration,
    ctx: &Context,
    connect: &ssh::Target,
    rule: HostKeyRule,
    key: std::sync::Arc<russh::keys::PrivateKey>,
) -> Result<(probe::Learned, String), Outcome> {
    let connect = ssh::Target {
        command_timeout: PROBE_TIMEOUT.min(connect.command_timeout),
        ..connect.clone()
    };
    info!(name = %obj.name_any(), host = %connect.host, port = connect.port, "asking the host what it registers as");
    let run = match session(ctx, &connect, rule, key, probe::PROBE_SCRIPT).await {
        Ok(run) => run,
        // A probe that does not finish in its time says the host is not answering.
        Err(outcome) if outcome.observation().reason == reasons::INSTALL_TIMEOUT => {
            return Err(Outcome::Retry(Observation::fails(
                reasons::HOST_UNREACHABLE,
                format!(
                    "{}:{}: the probe did not finish within {}s; retrying",
                    connect.host,
                    connect.port,
                    connect.command_timeout.as_secs()
                ),
            )));
        }
        Err(outcome) => return Err(outcome),
    };
    let text = String::from_utf8_lossy(&run.output);
    match probe::parse_probe(&text) {
        Some(learned) if run.exit_status == Some(0) => Ok((learned, run.host_key_fingerprint)),
        _ => Err(Outcome::Blocked(Observation::fails(
            reasons::HOST_IDENTITY_UNKNOWN,
            format!(
                "{}:{}: the host's login shell did not run the probe (exit status {}); it must \
                 run /bin/sh commands for the install too",
                connect.host,
                connect.port,
                run.exit_status
                    .map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        ))),
    }
}

/// Runs `script` on the host in one SSH session, within the SSH concurrency limit (sessions are
/// bounded apart from reconciles: a slow fleet of hosts must not starve the reconciles that only
/// talk to AWS), counted by how they ended: succeeded, failed (a non-zero exit), or the condition
/// reason of the SSH failure, which is the outcome returned.
pub(crate) async fn session(
    ctx: &Context,
    connect: &ssh::Target,
    rule: HostKeyRule,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    script: &str,
) -> Result<ssh::Run, Outcome> {
    let slot = ctx
        .ssh_slots
        .acquire()
        .await
        .expect("the SSH semaphore is never closed");
    ctx.metrics.ssh_in_flight.inc();
    let result = ssh::run_script(connect, rule, key, script).await;
    ctx.metrics.ssh_in_flight.dec();
    drop(slot);
    let (ended, result) = match result {
        Ok(run) if run.exit_status == Some(0) => ("succeeded", Ok(run)),
        Ok(run) => ("failed", Ok(run)),
        Err(error) => {
            let outcome = ssh_failure(error, &connect.host, connect.port);
            (outcome.observation().reason, Err(outcome))
        }
    };
    ctx.metrics
        .ssh_sessions
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: ended.to_owned(),
        })
        .inc();
    result
}

/// The outcome of an SSH failure: the host may come back (retried quickly); a key or an identity
/// problem waits for a person.
fn ssh_failure(error: SshError, host: &str, port: u16) -> Outcome {
    let message = error.to_string();
    match error {
        SshError::Unreachable(_) | SshError::ConnectTimeout(_) => Outcome::Retry(
            Observation::fails(reasons::HOST_UNREACHABLE, format!("{message}; retrying")),
        ),
        SshError::HostKeyMismatch(_) => Outcome::Blocked(Observation::fails(
            reasons::HOST_KEY_MISMATCH,
            format!("{host}:{port}: {message}; nothing was sent to the host"),
        )),
        SshError::AuthFailed(_) => Outcome::Blocked(Observation::fails(
            reasons::SSH_AUTH_FAILED,
            format!("{host}:{port}: {message}"),
        )),
        SshError::Protocol(_) => Outcome::Retry(Observation::fails(
            reasons::SSH_PROTOCOL_ERROR,
            format!("{host}:{port}: {message}"),
        )),
        SshError::CommandTimeout(_) => Outcome::Blocked(Observation::fails(
            reasons::INSTALL_TIMEOUT,
            format!("{host}:{port}: {message}"),
        )),
    }
}
