//! Step: the host answers over SSH before anything is written in IAM. One short session, with the
//! host key checked per `ssh.hostKeyPolicy` and the login accepted, runs a read-only probe that
//! asks the host what it registers as ([`identity::PROBE_SCRIPT`]: its hostname and its own
//! addresses). The host key's fingerprint (trust on first use) and the answer are recorded on
//! status at once, so an unreachable or mistyped host never gets an IAM user, a later session that
//! fails half-way still finds the key recorded, and the registration the install makes can be
//! recognised whatever address the agent reports.
//!
//! For an on-premises host the answer also decides whether the host is registered already (it is
//! then adopted) or its hostname is another host's ([`identity::find`]).

use std::time::Duration;

use kube::ResourceExt;
use tracing::info;

use super::identity::{self, Found, Identity};
use super::{Facts, OpsWorksInstance, Outcome, TargetFacts};
use crate::conditions::{Observation, reasons};
use crate::controller::Context;
use crate::resource::{
    HostIdentity, InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus,
};
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
    let identity = identity_of(obj, &target, status);
    // OpsWorks recognises its registration by hostname; Systems Manager by the node's ID.
    let opsworks = matches!(obj.spec.service(), crate::resource::Service::OpsWorks(_));
    if opsworks && identity.ec2_instance_id.is_none() && identity.hostname.is_none() {
        return Outcome::Blocked(Observation::fails(
            reasons::HOST_IDENTITY_UNKNOWN,
            format!(
                "{said}: without the host's hostname (uname -n) or spec.hostname the registration \
                 could not be recognised, so nothing is installed"
            ),
        ));
    }
    // An on-premises host is looked for again now that it said what it registers as.
    if obj.spec.infrastructure_class == InfrastructureClass::OnPremises
        && let Some(instances) = facts.instances.clone()
    {
        match identity::find(
            &instances,
            &identity,
            installed(status),
            status.opsworks_instance_id.as_deref(),
        ) {
            Found::Ours(instance) => {
                let reason = record_existing(status, instance);
                facts.existing = Some(instance.clone());
                return Outcome::Done(Observation::holds(
                    reason,
                    format!(
                        "{said}; registered in the stack as {} ({})",
                        instance.id, instance.status
                    ),
                ));
            }
            Found::Taken(holder) => {
                return Outcome::Blocked(taken(&identity, holder, obj.spec.stack_id()));
            }
            Found::Nothing | Found::Unknown => {}
        }
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

/// Records `instance` as the host's registration on status, and whether it was adopted (found
/// registered before this object installed anything) or made by this object; returns the
/// reason to report.
pub(super) fn record_existing(
    status: &mut InstanceRegistrationStatus,
    instance: &OpsWorksInstance,
) -> &'static str {
    if status.opsworks_instance_id.as_deref() != Some(instance.id.as_str()) {
        // A newly found registration: adopted only if this object never installed the agent.
        status.adopted = !installed(status);
    }
    status.opsworks_instance_id = Some(instance.id.clone());
    status.hostname = instance.hostname.clone();
    if status.adopted {
        reasons::ADOPTED
    } else {
        reasons::SUCCEEDED
    }
}

/// The HostnameTaken observation for a hostname held by `holder`.
pub(super) fn taken(identity: &Identity, holder: &OpsWorksInstance, stack: &str) -> Observation {
    let name = identity.hostname.as_deref().unwrap_or_default();
    let why = match (&holder.ec2_instance_id, &identity.ec2_instance_id) {
        (Some(ec2), None) => format!("which is EC2 instance {ec2}"),
        _ => match holder.private_ip.as_deref().or(holder.public_ip.as_deref()) {
            Some(ip) => format!("at {ip}, which is not one of this host's addresses"),
            None => "another host".to_owned(),
        },
    };
    Observation::fails(
        reasons::HOSTNAME_TAKEN,
        format!(
            "hostname {name:?} is already used by instance {} of stack {stack}, {why}; \
             hostnames must be unique within a stack (set spec.hostname to register this host \
             under another name)",
            holder.id
        ),
    )
}

/// What the host registers as: the EC2 instance, the hostname override or the hostname the host
/// reported, and the host's own addresses with those the spec names.
pub(super) fn identity_of(
    obj: &InstanceRegistration,
    target: &TargetFacts,
    status: &InstanceRegistrationStatus,
) -> Identity {
    let spec = &obj.spec;
    let learned = status.host.as_ref();
    let mut addresses: Vec<String> = learned.map(|h| h.addresses.clone()).unwrap_or_default();
    for a in [spec.private_ip.as_ref(), spec.public_ip.as_ref()]
        .into_iter()
        .flatten()
    {
        if !addresses.contains(a) {
            addresses.push(a.clone());
        }
    }
    // A target that is an address is the host's, unless the host said otherwise (NAT).
    if learned.is_none()
        && super::target::target_kind(&spec.target) == super::target::TargetKind::IpAddress
        && !addresses.contains(&spec.target)
    {
        addresses.push(spec.target.clone());
    }
    Identity {
        ec2_instance_id: target.ec2_instance_id.clone(),
        hostname: spec
            .hostname
            .clone()
            .or_else(|| learned.and_then(|h| h.hostname.clone())),
        addresses,
    }
}

/// Where and how to connect to the host, and which host keys to trust.
pub(super) fn connection(
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
) -> Result<(identity::Learned, String), Outcome> {
    let connect = ssh::Target {
        command_timeout: PROBE_TIMEOUT.min(connect.command_timeout),
        ..connect.clone()
    };
    info!(name = %obj.name_any(), host = %connect.host, port = connect.port, "asking the host what it registers as");
    let run = match session(ctx, &connect, rule, key, identity::PROBE_SCRIPT).await {
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
    match identity::parse_probe(&text) {
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
pub(super) async fn session(
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
