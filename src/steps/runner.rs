//! The install runner both services share: one SSH session to the host the earlier steps
//! resolved (host key checked per `ssh.hostKeyPolicy` before anything is sent), after recording
//! on status that an install started, running a script of [`super::script`]; and what the
//! script's own exit statuses mean. What the script installs (the OpsWorks agent installer, the
//! Systems Manager setup tool) and what success means are the services' own.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::info;

use super::script;
use crate::conditions::{Observation, Outcome, reasons};
use crate::context::{Context, Facts};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};

/// Lines of the installer's output kept for the condition message.
const TAIL_LINES: usize = 15;
/// Bytes of the installer's output kept for the condition message.
const TAIL_BYTES: usize = 1500;
/// How soon an install that found another one running on the host tries again.
const INSTALL_IN_PROGRESS_RETRY: Duration = Duration::from_secs(30);

/// Time added to an install's own limits before it is taken to have ended on the host for sure
/// (a host that is slow to start the script, clocks that differ by a little).
const INSTALL_END_MARGIN: Duration = Duration::from_secs(15);

/// When an install this object's status says was started, and never said ended, has ended on
/// the host for sure: `None` if no install is in that state. An install is recorded as started
/// (`installStartedAt`, `AgentInstalled` `Installing`) before it runs, and the pass that runs it
/// records how it ended; a status still saying `Installing` with no pass of it running here was
/// cut (the controller was killed, lost its lease, or the object moved to another shard) or is
/// running elsewhere. The host itself stops the installer within its limits: connecting (each
/// hop's `timeoutSeconds`), running (`commandTimeoutSeconds`) and the grace before KILL.
pub(crate) fn install_may_run_until(obj: &InstanceRegistration) -> Option<Timestamp> {
    let status = obj.status.as_ref()?;
    let started = status.install_started_at.as_ref()?;
    let installing = crate::conditions::get(
        &status.conditions,
        crate::conditions::types::AGENT_INSTALLED,
    )
    .is_some_and(|c| c.reason == reasons::INSTALLING);
    if !installing {
        return None;
    }
    let spec = &obj.spec.ssh;
    let hops = 1 + spec.jump_hosts.len() as u64;
    let limit = Duration::from_secs(u64::from(spec.timeout_seconds) * hops)
        + Duration::from_secs(spec.command_timeout_seconds.into())
        + script::KILL_AFTER
        + INSTALL_END_MARGIN;
    started.0.checked_add(limit).ok()
}

/// Whether an install started by another shard's controller may still be running on the host:
/// then what to say, and how long until it has ended for sure. That shard's pass stops at the end
/// of the install without acting further ([`left_the_shard`]); this one must not start before
/// the install has ended, nor make credentials that install's agent is using. An install
/// recorded without a shard (by an older controller) is taken to be this shard's.
pub(crate) fn install_elsewhere(
    obj: &InstanceRegistration,
    shard: &str,
) -> Option<(String, Duration)> {
    let until = install_may_run_until(obj)?;
    let status = obj.status.as_ref()?;
    let theirs = status.install_shard.as_deref()?;
    if theirs == shard {
        return None;
    }
    let left: Duration = until.duration_since(Timestamp::now()).try_into().ok()?;
    let started = status.install_started_at.as_ref()?;
    Some((
        format!(
            "an install started at {} by the shard {theirs:?} may still be running on the host; \
             this shard ({shard:?}) takes over once it has ended for sure, at {until}",
            started.0
        ),
        left,
    ))
}

/// Why this pass must not act on what its install did: the object left this controller's shard
/// (its labels no longer match the label selector) while the install ran. `None` when it is
/// still this shard's, or when that cannot be told (the API server did not answer: the pass goes
/// on as before).
async fn left_the_shard(ctx: &Context, obj: &InstanceRegistration) -> Option<String> {
    let selector = ctx.settings.watched.selector.as_deref()?;
    let namespace = obj.namespace()?;
    let api: kube::Api<InstanceRegistration> =
        kube::Api::namespaced(ctx.client.clone(), &namespace);
    let params = kube::api::ListParams::default()
        .labels(selector)
        .fields(&format!("metadata.name={}", obj.name_any()));
    match api.list_metadata(&params).await {
        Ok(list) if list.items.is_empty() => {
            let why = format!(
                "the object left this controller's shard ({selector}) while its install ran: the \
                 shard that has it now takes over once the install has ended"
            );
            info!(name = %obj.name_any(), "{why}");
            Some(why)
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(name = %obj.name_any(), %error, "could not tell whether the object is still in this shard");
            None
        }
    }
}

/// An install's run on the host: what it printed and how it ended.
pub(crate) struct InstallRun {
    run: crate::ssh::Run,
    took: f64,
}

impl InstallRun {
    /// The script's exit status.
    pub(crate) fn exit_status(&self) -> Option<u32> {
        self.run.exit_status
    }

    /// What the script printed.
    pub(crate) fn output(&self) -> &[u8] {
        &self.run.output
    }

    /// `what`, with how long the run took and the tail of its output (with `secrets` redacted),
    /// for a condition message.
    pub(crate) fn said(&self, what: &str, secrets: &[&str]) -> String {
        let tail = script::output_tail(&self.run.output, secrets, TAIL_LINES, TAIL_BYTES);
        let took = self.took;
        if tail.is_empty() {
            format!("{what} (after {took:.1}s; no output)")
        } else {
            format!("{what} (after {took:.1}s); output tail:\n{tail}")
        }
    }

    /// The outcome of an exit status the install scripts of every service share (the script's
    /// own failures); `program` names what the script ran, for messages.
    pub(crate) fn failed(
        &self,
        obj: &InstanceRegistration,
        secrets: &[&str],
        program: &str,
    ) -> Outcome {
        let spec = &obj.spec.ssh;
        let said = |what: &str| self.said(what, secrets);
        match self.run.exit_status {
            Some(0) => Outcome::Done(Observation::holds(reasons::SUCCEEDED, said("finished"))),
            Some(script::EXIT_CHECKSUM_MISMATCH) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_CHECKSUM_MISMATCH,
                said("the download does not have the SHA-256 the spec requires; nothing was run"),
            )),
            Some(script::EXIT_DOWNLOAD_FAILED) => Outcome::Retry(Observation::fails(
                reasons::INSTALLER_DOWNLOAD_FAILED,
                said(&format!("the host could not download {program}")),
            )),
            Some(script::EXIT_SUDO_DENIED) => Outcome::Blocked(Observation::fails(
                reasons::SUDO_NOT_PERMITTED,
                said(&format!(
                    "user {:?} may not run sudo without a password",
                    spec.username
                )),
            )),
            // Only when the run in a pseudo-terminal got none (sshd refused it).
            Some(script::EXIT_SUDO_NEEDS_TTY) => Outcome::Blocked(Observation::fails(
                reasons::SUDO_REQUIRES_TTY,
                said(&format!(
                    "sudo on the host runs only from a terminal (requiretty), and the host's sshd \
                     gave the session none; add `Defaults:{user} !requiretty` to the host's sudoers, \
                     or let sshd give {user:?} a terminal (PermitTTY yes)",
                    user = spec.username
                )),
            )),
            Some(script::EXIT_UNPACK_FAILED) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_INVALID,
                said(&format!("{program} could not be unpacked")),
            )),
            Some(script::EXIT_HOST_UNSUITABLE) => Outcome::Blocked(Observation::fails(
                reasons::HOST_UNSUITABLE,
                said("the host lacks a tool the install needs"),
            )),
            Some(script::EXIT_INSTALL_IN_PROGRESS) => Outcome::Progressing(
                Observation::unknown(
                    reasons::INSTALL_IN_PROGRESS,
                    said(&format!(
                        "another install holds the host's install lock (one at a time); nothing \
                         was run; trying again in {}s",
                        INSTALL_IN_PROGRESS_RETRY.as_secs()
                    )),
                ),
                INSTALL_IN_PROGRESS_RETRY,
            ),
            Some(script::EXIT_INSTALLER_FAILED) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_FAILED,
                said(&match script::installer_status(&self.run.output) {
                    Some(code) => format!("{program} failed with exit status {code}"),
                    None => format!("{program} could not be run"),
                }),
            )),
            Some(script::EXIT_TIMED_OUT) => Outcome::Blocked(Observation::fails(
                reasons::INSTALL_TIMEOUT,
                said(&format!(
                    "the install did not finish within ssh.commandTimeoutSeconds ({}s); the host \
                     stopped it",
                    spec.command_timeout_seconds
                )),
            )),
            Some(code) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_FAILED,
                said(&format!(
                    "the install script ended with exit status {code}, which is not one of its own"
                )),
            )),
            None => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_FAILED,
                said("the install session ended without an exit status"),
            )),
        }
    }
}

/// Runs an install `script` on the host the earlier steps resolved, over one SSH session with
/// its host key checked, after recording on status that an install started (so that a restart
/// knows a registration of this object's may exist, and a pass working from an old copy cannot
/// install a second time). `agent` names what is installed, for the log.
pub(crate) async fn run_install(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    script: &str,
    agent: &str,
) -> Result<InstallRun, Outcome> {
    let (Some(target), Some(key)) = (&facts.target, &facts.ssh_key) else {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the host or the SSH key is not resolved",
        )));
    };
    let spec = &obj.spec.ssh;
    let (mut connect, rule) = super::host::connection(obj, target, facts, status)?;
    // sudo's requiretty: the script is run again in a pseudo-terminal.
    connect.tty_retry_status = Some(script::EXIT_SUDO_NEEDS_TTY);
    let host = connect.host.clone();
    if let Some(hop) = super::host::unrecorded_hop(obj, status) {
        // The host step records the keys before anything is installed; without a record the
        // install would accept any key.
        return Err(Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            match hop {
                Some(index) => format!(
                    "the key of jump host {} was not recorded on first use yet",
                    index + 1
                ),
                None => "the host key was not recorded on first use yet".to_owned(),
            },
        )));
    }
    let key = key.clone();
    let ec2_instance_id = target.ec2_instance_id.clone();
    // Waiting for a slot may take long, and the install takes as long as the installer: off the
    // reconcile workers. The install starts once a slot is held.
    facts.detach();
    let slot = super::host::slot(
        obj,
        ctx,
        facts,
        status,
        crate::conditions::types::AGENT_INSTALLED,
    )
    .await?;
    // Looked at again just before anything is installed (once a slot is held): another object
    // that reached the same host may have recorded it since the host step.
    if let Some(holder) = crate::conflict::holder_of_the_same_host(
        obj,
        status,
        ec2_instance_id.as_deref(),
        &ctx.store.state(),
        |o| ctx.competes(obj, o),
    ) {
        return Err(Outcome::Blocked(
            holder.observation(&ctx.service_of(obj).place(obj)),
        ));
    }

    // Recorded before the install starts, conditional on the version this pass works from: the
    // install runs only if no newer status exists (a pass on an old copy could otherwise install
    // a second time), and a restart during the install knows that a registration of this
    // object's may exist (so it is never taken for someone else's and adopted).
    let now = Time(Timestamp::now());
    let started_at = status.install_started_at.replace(now.clone());
    let shard = status.install_shard.replace(ctx.shard().to_owned());
    let adopted = std::mem::take(&mut status.adopted);
    // What `kubectl get ir` shows while the install runs (the pass's end writes the rest).
    super::installing(obj, status, agent, &host, &now);
    if let Err(problem) = crate::context::checkpoint(ctx, obj, status, facts).await {
        status.install_started_at = started_at;
        status.install_shard = shard;
        status.adopted = adopted;
        return Err(Outcome::Retry(Observation::fails(
            reasons::KUBERNETES_API_ERROR,
            format!("recording the install's start before running it: {problem}"),
        )));
    }

    info!(name = %obj.name_any(), host = %host, port = spec.port, "installing {agent}");
    let started = std::time::Instant::now();
    let run = super::host::session(ctx, slot, &connect, rule, key, script).await?;
    crate::failpoint::after("ssh:Install");
    if let Some(why) = left_the_shard(ctx, obj).await {
        return Err(Outcome::Blocked(Observation::fails(reasons::WAITING, why)));
    }
    facts.installed_now = true;
    super::host::record_host_keys(obj, status, &run);
    Ok(InstallRun {
        run,
        took: started.elapsed().as_secs_f64(),
    })
}
