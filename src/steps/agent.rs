//! Step: the OpsWorks agent is installed on the host. Over SSH (host key verified per
//! `ssh.hostKeyPolicy` before anything is sent), the script of [`crate::install`] downloads the
//! stack's agent installer, checks its checksum when the spec sets one, writes `preconfig` and
//! runs `boot-registration` under sudo. Success is recorded in `status.agentInstalledAt`; from
//! then on the host is not touched again unless the instance has to be registered anew, and the
//! Secret that held the secret access key for the agent is deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;
use tracing::{info, warn};

use super::{Facts, Outcome};
use crate::conditions::{Observation, reasons};
use crate::controller::Context;
use crate::install::{self, Plan};
use crate::resource::{
    HostKeyPolicy, InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus,
};

/// Lines of the installer's output kept for the condition message.
const TAIL_LINES: usize = 15;
/// Bytes of the installer's output kept for the condition message.
const TAIL_BYTES: usize = 1500;
/// How soon an install that found another one running on the host tries again.
const INSTALL_IN_PROGRESS_RETRY: Duration = Duration::from_secs(30);

pub(super) async fn check(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if let Some(at) = &status.agent_installed_at {
        return Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            format!("the agent installer finished at {}", at.0),
        ));
    }
    if let Some(existing) = &facts.existing {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!("the host is already registered as {}", existing.id),
        ));
    }
    let Some(stack) = &facts.stack else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the stack is not resolved",
        ));
    };
    let access_key = facts.access_key.clone();
    let access_key = access_key.as_ref();
    if access_key.is_none() && obj.spec.use_instance_profile != Some(true) {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "no access key for the agent",
        ));
    }

    let plan = plan(obj, stack, access_key);
    let script = match install::render(&plan) {
        Ok(script) => script,
        Err(e) => {
            return Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_INVALID,
                e.to_string(),
            ));
        }
    };
    let secrets: Vec<&str> = access_key.iter().map(|k| k.secret.expose()).collect();
    let run = match run_install(obj, ctx, facts, status, &script, "the OpsWorks agent").await {
        Ok(run) => run,
        Err(outcome) => return outcome,
    };
    let said = |what: &str| run.said(what, &secrets);
    match run.exit_status() {
        Some(0) => {
            status.agent_installed_at = Some(Time(Timestamp::now()));
            // The agent has the key now; the controller's copy goes (status keeps the key ID).
            if let Err(problem) = super::credentials::forget_secret(ctx, obj).await {
                warn!(name = %obj.name_any(), %problem, "could not delete the access key Secret yet");
            }
            Outcome::Done(Observation::holds(
                reasons::SUCCEEDED,
                said("the agent installer finished"),
            ))
        }
        Some(install::EXIT_CHECKSUM_MISMATCH) => Outcome::Blocked(Observation::fails(
            reasons::INSTALLER_CHECKSUM_MISMATCH,
            said("the installer tarball does not match spec.agentInstallerSha256; nothing was run"),
        )),
        Some(install::EXIT_UNPACK_FAILED) => Outcome::Blocked(Observation::fails(
            reasons::INSTALLER_INVALID,
            said("the installer tarball is not an OpsWorks agent installer"),
        )),
        _ => run.failed(obj, &secrets, "the agent installer"),
    }
}

/// An install's run on the host: what it printed and how it ended.
pub struct InstallRun {
    run: crate::ssh::Run,
    took: f64,
}

impl InstallRun {
    /// The script's exit status.
    pub fn exit_status(&self) -> Option<u32> {
        self.run.exit_status
    }

    /// What the script printed.
    pub fn output(&self) -> &[u8] {
        &self.run.output
    }

    /// `what`, with how long the run took and the tail of its output (with `secrets` redacted),
    /// for a condition message.
    pub fn said(&self, what: &str, secrets: &[&str]) -> String {
        let tail = install::output_tail(&self.run.output, secrets, TAIL_LINES, TAIL_BYTES);
        let took = self.took;
        if tail.is_empty() {
            format!("{what} (after {took:.1}s; no output)")
        } else {
            format!("{what} (after {took:.1}s); output tail:\n{tail}")
        }
    }

    /// The outcome of an exit status the install scripts of every service share (the script's
    /// own failures); `program` names what the script ran, for messages.
    pub fn failed(&self, obj: &InstanceRegistration, secrets: &[&str], program: &str) -> Outcome {
        let spec = &obj.spec.ssh;
        let said = |what: &str| self.said(what, secrets);
        match self.run.exit_status {
            Some(0) => Outcome::Done(Observation::holds(reasons::SUCCEEDED, said("finished"))),
            Some(install::EXIT_CHECKSUM_MISMATCH) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_CHECKSUM_MISMATCH,
                said("the download does not have the SHA-256 the spec requires; nothing was run"),
            )),
            Some(install::EXIT_DOWNLOAD_FAILED) => Outcome::Retry(Observation::fails(
                reasons::INSTALLER_DOWNLOAD_FAILED,
                said(&format!("the host could not download {program}")),
            )),
            Some(install::EXIT_SUDO_DENIED) => Outcome::Blocked(Observation::fails(
                reasons::SUDO_NOT_PERMITTED,
                said(&format!(
                    "user {:?} may not run sudo without a password",
                    spec.username
                )),
            )),
            // Only when the run in a pseudo-terminal got none (sshd refused it).
            Some(install::EXIT_SUDO_NEEDS_TTY) => Outcome::Blocked(Observation::fails(
                reasons::SUDO_REQUIRES_TTY,
                said(&format!(
                    "sudo on the host runs only from a terminal (requiretty), and the host's sshd \
                     gave the session none; add `Defaults:{user} !requiretty` to the host's sudoers, \
                     or let sshd give {user:?} a terminal (PermitTTY yes)",
                    user = spec.username
                )),
            )),
            Some(install::EXIT_UNPACK_FAILED) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_INVALID,
                said(&format!("{program} could not be unpacked")),
            )),
            Some(install::EXIT_HOST_UNSUITABLE) => Outcome::Blocked(Observation::fails(
                reasons::HOST_UNSUITABLE,
                said("the host lacks a tool the install needs"),
            )),
            Some(install::EXIT_INSTALL_IN_PROGRESS) => Outcome::Progressing(
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
            Some(install::EXIT_INSTALLER_FAILED) => Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_FAILED,
                said(&match install::installer_status(&self.run.output) {
                    Some(code) => format!("{program} failed with exit status {code}"),
                    None => format!("{program} could not be run"),
                }),
            )),
            Some(install::EXIT_TIMED_OUT) => Outcome::Blocked(Observation::fails(
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
pub async fn run_install(
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
    let (mut connect, rule) = super::host::connection(obj, target, status)?;
    // sudo's requiretty: the script is run again in a pseudo-terminal.
    connect.tty_retry_status = Some(install::EXIT_SUDO_NEEDS_TTY);
    let host = connect.host.clone();
    if status.host_key_fingerprint.is_none()
        && spec.host_key_policy == HostKeyPolicy::TrustOnFirstUse
    {
        // The host step records the key before anything is installed; without a record the
        // install would accept any key.
        return Err(Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the host key was not recorded on first use yet",
        )));
    }
    let key = key.clone();

    // Recorded before the install starts, conditional on the version this pass works from: the
    // install runs only if no newer status exists (a pass on an old copy could otherwise install
    // a second time), and a restart during the install knows that a registration of this
    // object's may exist (so it is never taken for someone else's and adopted).
    let started_at = status.install_started_at.replace(Time(Timestamp::now()));
    let adopted = std::mem::take(&mut status.adopted);
    if let Err(problem) =
        crate::controller::checkpoint(ctx, obj, status, &mut facts.resource_version).await
    {
        status.install_started_at = started_at;
        status.adopted = adopted;
        return Err(Outcome::Retry(Observation::fails(
            reasons::KUBERNETES_API_ERROR,
            format!("recording the install's start before running it: {problem}"),
        )));
    }

    info!(name = %obj.name_any(), host = %host, port = spec.port, "installing {agent}");
    let started = std::time::Instant::now();
    let run = super::host::session(ctx, &connect, rule, key, script).await?;
    crate::failpoint::after("ssh:Install");
    facts.installed_now = true;
    if status.host_key_fingerprint.is_none() {
        status.host_key_fingerprint = Some(run.host_key_fingerprint.clone());
    }
    Ok(InstallRun {
        run,
        took: started.elapsed().as_secs_f64(),
    })
}

/// The script's inputs, as the CLI builds them: `stack_id`, every provisioning parameter, the
/// access key when one was made, the overrides, and `import` (true for EC2); and the time the
/// host gives the install (`ssh.commandTimeoutSeconds`).
fn plan(
    obj: &InstanceRegistration,
    stack: &super::StackFacts,
    access_key: Option<&super::AccessKey>,
) -> Plan {
    let spec = &obj.spec;
    let mut preconfig: BTreeMap<String, Value> = stack
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    preconfig.insert("stack_id".into(), Value::from(stack.id.as_str()));
    if let Some(key) = access_key {
        preconfig.insert("access_key_id".into(), Value::from(key.id.as_str()));
        preconfig.insert("secret_access_key".into(), Value::from(key.secret.expose()));
    }
    for (name, value) in [
        ("hostname", &spec.hostname),
        ("private_ip", &spec.private_ip),
        ("public_ip", &spec.public_ip),
    ] {
        if let Some(value) = value {
            preconfig.insert(name.into(), Value::from(value.as_str()));
        }
    }
    preconfig.insert(
        "import".into(),
        Value::Bool(spec.infrastructure_class == InfrastructureClass::Ec2),
    );
    Plan {
        installer_url: stack.agent_installer_url.clone(),
        installer_sha256: spec.agent_installer_sha256.clone(),
        assets_download_bucket: stack.parameters.get("assets_download_bucket").cloned(),
        preconfig,
        time_limit: Duration::from_secs(spec.ssh.command_timeout_seconds.into()),
    }
}

/// The access key Secret's content never leaves [`super::AccessKey`]; this is only for tests of
/// the plan.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::Sensitive;

    fn obj(class: &str, extra: &str) -> InstanceRegistration {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata: {{name: web, namespace: ns}}
spec:
  stackId: 0b1c2d3e-0000-4000-8000-000000000000
  infrastructureClass: {class}
  target: web-1
  ssh: {{username: ubuntu, privateKeySecretRef: {{name: key}}}}
{extra}
"#
        ))
        .unwrap()
    }

    fn stack() -> super::super::StackFacts {
        super::super::StackFacts {
            id: "0b1c2d3e-0000-4000-8000-000000000000".into(),
            name: "EC2Register".into(),
            arn: "arn".into(),
            region: "us-east-1".into(),
            vpc_id: None,
            agent_installer_url: "https://example.invalid/installer.tgz".into(),
            parameters: BTreeMap::from([
                ("assets_download_bucket".into(), "bucket-a".into()),
                ("agent_installer_base_url".into(), "https://x".into()),
            ]),
        }
    }

    #[test]
    fn the_plan_has_the_clis_preconfig_keys_for_an_ec2_host_with_a_key() {
        let key = super::super::AccessKey {
            id: "AKIAEXAMPLE".into(),
            secret: Sensitive::new("s3cr3t"),
        };
        let plan = plan(&obj("ec2", "  hostname: web-1"), &stack(), Some(&key));
        let keys: Vec<&str> = plan.preconfig.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "access_key_id",
                "agent_installer_base_url",
                "assets_download_bucket",
                "hostname",
                "import",
                "secret_access_key",
                "stack_id"
            ]
        );
        assert_eq!(plan.preconfig["import"], Value::Bool(true));
        assert_eq!(plan.assets_download_bucket.as_deref(), Some("bucket-a"));
    }

    #[test]
    fn the_plan_for_an_on_premises_host_has_its_overrides_and_no_import() {
        let plan = plan(
            &obj(
                "on-premises",
                "  privateIp: 10.0.0.5\n  publicIp: 192.0.2.7\n",
            ),
            &stack(),
            None,
        );
        assert_eq!(plan.preconfig["import"], Value::Bool(false));
        assert_eq!(plan.preconfig["private_ip"], Value::from("10.0.0.5"));
        assert_eq!(plan.preconfig["public_ip"], Value::from("192.0.2.7"));
        assert!(!plan.preconfig.contains_key("access_key_id"));
        assert!(!plan.preconfig.contains_key("hostname"));
    }
}
