//! Step: the OpsWorks agent is installed on the host. Over SSH (host key verified per
//! `ssh.hostKeyPolicy` before anything is sent), the script of [`super::script`] downloads the
//! stack's agent installer, checks its checksum when the spec sets one, writes `preconfig` and
//! runs `boot-registration` under sudo, through the shared runner ([`crate::steps::run_install`]).
//! Success is recorded in `status.agentInstalledAt`; from then on the host is not touched again
//! unless the instance has to be registered anew, and the Secret that held the secret access key
//! for the agent is deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;
use tracing::warn;

use super::Findings;
use super::script::{self, Plan};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::resource::{InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus};
use crate::steps::run_install;
use crate::steps::script as install;

pub(super) async fn check(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let findings = facts.own_ref::<Findings>();
    let (Some(stack), access_key) = (
        findings.and_then(|f| f.stack.clone()),
        findings.and_then(|f| f.access_key.clone()),
    ) else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the stack is not resolved",
        ));
    };
    let access_key = access_key.as_ref();
    if access_key.is_none() && obj.spec.use_instance_profile != Some(true) {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "no access key for the agent",
        ));
    }

    let plan = plan(obj, &stack, access_key);
    let script = match script::render(&plan) {
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
