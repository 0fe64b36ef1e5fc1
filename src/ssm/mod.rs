//! AWS Systems Manager, the second service an `InstanceRegistration` can register its host with
//! (`spec.systemsManager`). [`SystemsManager`] is the service behind
//! [`crate::context::Service`], with its own facts of a pass ([`Findings`]); it uses the shared
//! machinery of [`crate::steps`] and nothing of any other service.
//!
//! - An on-premises host gets a *hybrid activation* made for it ([`activation`]: one per
//!   object, registration limit 1, short-lived, tagged with the object's UID), and the agent
//!   setup tool registers it with the activation's code and ID over SSH ([`agent`]); it becomes
//!   a managed node `mi-…`, read back from the host's registration file.
//! - An EC2 instance registers with its own instance profile: no activation; the agent is
//!   installed and started over SSH only when it is not running.
//! - The node is healthy when `DescribeInstanceInformation` reports it `Online` ([`registered`]);
//!   deleting the object deletes the activation and deregisters a node the object registered
//!   ([`undo`]).
//!
//! The target, the credentials (the activation), the install ([`script`]), the registration and
//! the undo are this service's own; the SSH key, the host probe, the SSH session, the install
//! runner, status, conditions and events are shared.

mod activation;
mod agent;
mod audit;
mod evidence;
mod registered;
mod script;
mod tags;
mod target;
mod undo;

use std::sync::LazyLock;

use aws_sdk_ssm::types::InstanceInformationStringFilter;
use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;

use crate::aws;
use crate::conditions::{Outcome, Undone};
use crate::context::{Context, Endpoint, Facts, Made, Needs, Probed, Service, Step};
use crate::resource::{
    InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus, SystemsManagerSpec,
};
use crate::tenancy::Scope;

// The tags on an activation (and so on the node it registers) that name the object it was made
// for: by UID, and as `namespace/name` for people.
use crate::steps::{OWNER_TAG, OWNER_UID_TAG};

/// The pipeline of a Systems Manager object: there is no stack; the target, the credentials (the
/// activation), the install and the registration are its own.
const PIPELINE: &[Step] = &[
    Step::Target,
    Step::SshKey,
    Step::Host,
    Step::Credentials,
    Step::Agent,
    Step::Registered,
];

/// AWS Systems Manager hybrid activations (and EC2 instances registering with their own
/// instance profile).
#[derive(Default)]
pub(crate) struct SystemsManager;

/// What Systems Manager's steps of one pass found, for the steps after them (in [`Facts::own`]).
#[derive(Debug, Default)]
struct Findings {
    /// The host's managed node, if Systems Manager lists one.
    node: Option<Node>,
    /// The activation the agent registers with (on-premises).
    activation: Option<Activation>,
    /// A node this object's own install registered and whose agent never came online (the
    /// install was cut short): its setup is run again, keeping the registration.
    resume: Option<String>,
}

/// Systems Manager's own facts of the pass.
fn findings(facts: &mut Facts) -> &mut Findings {
    facts.own::<Findings>()
}

/// `obj`'s `spec.systemsManager` (empty if it has none, which the registry never sends here).
fn spec_of(obj: &InstanceRegistration) -> &SystemsManagerSpec {
    static NONE: LazyLock<SystemsManagerSpec> = LazyLock::new(SystemsManagerSpec::default);
    obj.spec.systems_manager.as_ref().unwrap_or(&NONE)
}

impl Service for SystemsManager {
    fn name(&self) -> &'static str {
        "SystemsManager"
    }

    fn pipeline(&self) -> &'static [Step] {
        PIPELINE
    }

    fn place(&self, _obj: &InstanceRegistration) -> String {
        // A host holds one Systems Manager registration, whatever the region (and an object
        // that omits the region means the controller's).
        "Systems Manager".to_owned()
    }

    fn scope<'o>(&self, obj: &'o InstanceRegistration) -> Option<Scope<'o>> {
        // An EC2 instance registered through its own instance profile makes nothing in AWS and
        // deregisters nothing: nothing to allow.
        spec_of(obj)
            .service_role
            .as_deref()
            .map(Scope::service_role)
    }

    fn registered_as<'f>(&self, facts: &'f Facts) -> Option<&'f str> {
        facts
            .own_ref::<Findings>()
            .and_then(|f| f.node.as_ref())
            .map(|n| n.id.as_str())
    }

    fn probe_question(&self, obj: &InstanceRegistration) -> Option<&'static str> {
        (obj.spec.infrastructure_class == InfrastructureClass::OnPremises)
            .then_some(REGISTRATION_QUESTION)
    }

    fn needs<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        _facts: &'a Facts,
    ) -> BoxFuture<'a, Needs> {
        Box::pin(async move {
            let region = region(ctx, spec_of(obj)).to_owned();
            let mut endpoints = vec![Endpoint {
                name: "the agent setup tool".into(),
                url: setup_url(ctx, &region),
            }];
            endpoints.extend(agent_endpoints(ctx.aws.ssm_endpoint(Some(&region)).await));
            Needs {
                endpoints,
                install_dir: Some(INSTALL_DIR),
                free_mib: INSTALL_FREE_MIB,
            }
        })
    }

    fn made<'a>(
        &'a self,
        ctx: &'a Context,
        regions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Made>, String>> {
        Box::pin(audit::made(ctx, regions))
    }

    fn remove<'a>(&'a self, ctx: &'a Context, made: &'a Made) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(audit::remove(ctx, made))
    }

    fn after_probe<'a>(
        &'a self,
        probed: Probed<'a>,
        ctx: &'a Context,
        facts: &'a mut Facts,
        status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Option<Outcome>> {
        // A host whose registration file names a node is adopted, or refused, on the node's own
        // evidence before anything is made for it in AWS.
        Box::pin(async move {
            let node = probed.answer?;
            agent::after_probe(probed.obj, spec_of(probed.obj), ctx, node, facts, status).await
        })
    }

    fn run<'a>(
        &'a self,
        step: Step,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        facts: &'a mut Facts,
        status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Outcome> {
        let ssm = spec_of(obj);
        Box::pin(async move {
            match step {
                Step::Target => target::check(obj, ssm, ctx, facts, status).await,
                Step::Credentials => activation::check(obj, ssm, ctx, facts, status).await,
                Step::Agent => agent::check(obj, ssm, ctx, facts, status).await,
                Step::Registered => registered::check(obj, ssm, ctx, facts, status).await,
                Step::Stack | Step::SshKey | Step::Host => {
                    unreachable!("{step:?} is not a Systems Manager step")
                }
            }
        })
    }

    fn undo<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Undone, String>> {
        Box::pin(undo::undo(ctx, obj, spec_of(obj)))
    }
}

/// What the probe also asks an on-premises host to be registered with Systems Manager
/// (`Service::probe_question`): the node its registration file ([`script::SSM_REGISTRATION_FILE`]) names, so that a host
/// registered already is known before anything is made for it in AWS. The agent writes that
/// file root's, mode 0600: when the login user may not read it, it is read through `sudo -n`
/// (one fixed, read-only command and no value of anyone's; a host where sudo wants a password
/// or a terminal just does not say, and the install finds the registration as before). Only the
/// first 4 KiB are read.
pub(crate) const REGISTRATION_QUESTION: &str = r#"dir=/var/lib/amazon/ssm
registration=$dir/registration
text=
if [ -r "$registration" ]; then
  text=$(head -c 4096 "$registration" 2>/dev/null)
elif [ -e "$registration" ] || { [ -d "$dir" ] && [ ! -x "$dir" ]; }; then
  text=$(sudo -n /bin/sh -c 'head -c 4096 /var/lib/amazon/ssm/registration 2>/dev/null' </dev/null 2>/dev/null)
fi
echo "registration=$(printf '%s\n' "$text" | sed -n 's/.*"ManagedInstanceID"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9-]*\)".*/\1/p' | head -n 1)"
"#;

/// A managed node, as `DescribeInstanceInformation` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    /// `mi-…` or the EC2 instance ID.
    pub id: String,
    /// `Online`, `ConnectionLost` or `Inactive`.
    pub ping_status: String,
    /// The activation it registered with (on-premises nodes).
    pub activation_id: Option<String>,
    /// When the agent was last heard from.
    pub last_ping: Option<String>,
    /// The IAM role of an on-premises node (the one of the activation it registered with).
    pub iam_role: Option<String>,
    /// The host name its agent reports.
    pub computer_name: Option<String>,
    /// The IP address its agent reports.
    pub ip_address: Option<String>,
}

/// The activation an on-premises host registers with. The code is a secret (redacted in Debug).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Activation {
    /// Activation ID (not a secret).
    pub id: String,
    /// Activation code.
    pub code: aws::Sensitive,
}

/// Where the agent keeps its state (and the setup tool its download), and the free space it
/// needs there, checked before anything is made.
/// The SSM agent's service: `amazon-ssm-agent` (the deb and rpm packages' systemd unit, upstart
/// job or init script), or the snap's systemd unit (Ubuntu's images).
const AGENT: crate::steps::repair::Agent = crate::steps::repair::Agent {
    service: "ssm",
    what: "the SSM agent",
    names: &["amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent"],
};

const INSTALL_DIR: &str = "/var/lib/amazon/ssm";
const INSTALL_FREE_MIB: u64 = 256;

/// Where hosts in `region` download the agent setup tool (`{platform}` and `{arch}` are filled
/// in on the host).
fn setup_url(ctx: &Context, region: &str) -> String {
    ctx.settings.ssm_setup_url.replace("{region}", region)
}

/// The endpoints the agent calls, from the Systems Manager endpoint `ssm`: `ssm`, `ec2messages`
/// and `ssmmessages` in the same region and partition; only `ssm` itself when it is a
/// configured endpoint (not AWS's `https://ssm.…`).
fn agent_endpoints(ssm: Option<String>) -> Vec<Endpoint> {
    let Some(ssm) = ssm else {
        return Vec::new();
    };
    let mut endpoints = Vec::new();
    if ssm.starts_with("https://ssm.") {
        for name in ["ec2messages", "ssmmessages"] {
            endpoints.push(Endpoint {
                name: name.into(),
                url: ssm.replacen("://ssm.", &format!("://{name}."), 1),
            });
        }
    }
    endpoints.insert(
        0,
        Endpoint {
            name: "ssm".into(),
            url: ssm,
        },
    );
    endpoints
}

/// The Systems Manager region of `ssm` (the controller's when the spec names none).
pub(crate) fn region<'a>(ctx: &'a Context, ssm: &'a SystemsManagerSpec) -> &'a str {
    ssm.region
        .as_deref()
        .or(ctx.aws.default_region())
        .unwrap_or_default()
}

/// Whether `id` has the form of a managed node ID of an on-premises host (`mi-` and 17 hex
/// digits): what a host says it is registered as is checked before it is used anywhere.
pub(crate) fn is_managed_node_id(id: &str) -> bool {
    id.strip_prefix("mi-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The node `key` (`InstanceIds` or `ActivationIds`) = `value` names in `region`, if Systems
/// Manager lists one.
pub(crate) async fn find_node(
    ctx: &Context,
    region: &str,
    key: &str,
    value: &str,
) -> Result<Option<Node>, Outcome> {
    let filter = InstanceInformationStringFilter::builder()
        .key(key)
        .values(value)
        .build()
        .expect("key and values are set");
    let out = ctx
        .aws
        .ssm(Some(region))
        .describe_instance_information()
        .filters(filter)
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        // An ID nobody registered is "invalid" to Systems Manager: simply not listed.
        Err(e) => {
            let failure = aws::classify(&e);
            if failure.kind == aws::Kind::NotFound {
                return Ok(None);
            }
            return Err(failure.outcome("ssm:DescribeInstanceInformation"));
        }
    };
    Ok(out
        .instance_information_list()
        .iter()
        .find(|i| match key {
            "ActivationIds" => i.activation_id() == Some(value),
            _ => i.instance_id() == Some(value),
        })
        .map(|i| Node {
            id: i.instance_id().unwrap_or_default().to_owned(),
            ping_status: i
                .ping_status()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            activation_id: i.activation_id().map(str::to_owned),
            last_ping: i
                .last_ping_date_time()
                .and_then(|t| Timestamp::from_second(t.secs()).ok())
                .map(|t| t.to_string()),
            iam_role: i.iam_role().map(str::to_owned),
            computer_name: i.computer_name().map(str::to_owned),
            ip_address: i.ip_address().map(str::to_owned),
        }))
}

/// A Systems Manager tag.
fn tag(key: &str, value: &str) -> aws_sdk_ssm::types::Tag {
    aws_sdk_ssm::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .expect("key and value are set")
}

/// The name of the Secret that holds the activation code until the install.
pub(crate) fn activation_secret_name(obj: &InstanceRegistration) -> String {
    crate::steps::handoff::secret_name(obj, "ssm-activation")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::probe::{parse_probe, script};

    #[test]
    fn the_agent_calls_three_endpoints_of_aws_or_the_one_configured() {
        let names = |e: Vec<Endpoint>| -> Vec<(String, String)> {
            e.into_iter().map(|e| (e.name, e.url)).collect()
        };
        assert_eq!(
            names(agent_endpoints(Some(
                "https://ssm.cn-north-1.amazonaws.com.cn".into()
            ))),
            [
                ("ssm", "https://ssm.cn-north-1.amazonaws.com.cn"),
                (
                    "ec2messages",
                    "https://ec2messages.cn-north-1.amazonaws.com.cn"
                ),
                (
                    "ssmmessages",
                    "https://ssmmessages.cn-north-1.amazonaws.com.cn"
                ),
            ]
            .map(|(n, u)| (n.to_owned(), u.to_owned()))
        );
        assert_eq!(
            names(agent_endpoints(Some("http://127.0.0.1:4566".into()))),
            [("ssm".to_owned(), "http://127.0.0.1:4566".to_owned())]
        );
        assert!(agent_endpoints(None).is_empty());
    }

    #[test]
    fn only_mi_and_seventeen_hex_digits_is_a_managed_node_id() {
        assert!(is_managed_node_id("mi-0123456789abcdef0"));
        for bad in [
            "mi-0123456789ABCDEF0",
            "mi-0123456789abcdef",
            "mi-0123456789abcdef01",
            "i-0123456789abcdef0",
            "mi-0123456789abcdef0; rm -rf /",
            "",
            "mi-",
        ] {
            assert!(!is_managed_node_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_probe_reads_the_systems_manager_registration_when_it_may() {
        let full = script(Some(REGISTRATION_QUESTION), "");
        assert!(full.contains(super::script::SSM_REGISTRATION_FILE));
        assert!(
            !script(None, "").contains("sudo"),
            "the probe runs no sudo for OpsWorks"
        );
        // The file in a directory of the test's own (readable: no sudo is run).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registration");
        let script = full.replace("/var/lib/amazon/ssm", &dir.path().to_string_lossy());
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            parse_probe(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        assert_eq!(run().answer, None);
        std::fs::write(
            &file,
            r#"{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"eu-west-1"}"#,
        )
        .unwrap();
        assert_eq!(run().answer.as_deref(), Some("mi-0123456789abcdef0"));
        // What the host writes is data: anything but an ID's characters is dropped.
        let hostile = "instance-registrar-probe=1\nregistration=mi-1; reboot\n";
        assert_eq!(parse_probe(hostile).unwrap().answer, None);
    }
}
