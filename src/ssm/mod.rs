//! AWS Systems Manager, the second service an `InstanceRegistration` can register its host with
//! (`spec.systemsManager`), beside OpsWorks ([`crate::steps`] holds the steps both share).
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
//! What is per service sits here, behind the same step interface as OpsWorks' (the target, the
//! credentials, the install, the registration, the undo); the SSH key, the host probe, the SSH
//! session, the install runner, status, conditions and events are shared.

pub mod activation;
pub mod agent;
pub mod evidence;
pub mod registered;
pub mod target;
pub mod undo;

use aws_sdk_ssm::types::InstanceInformationStringFilter;
use k8s_openapi::jiff::Timestamp;

use crate::aws;
use crate::context::Context;
use crate::resource::{InstanceRegistration, SystemsManagerSpec};
use crate::steps::Outcome;

/// The tag on an activation that names the object it was made for (its UID).
pub const OWNER_UID_TAG: &str = crate::steps::OWNER_TAG;
/// The tag on an activation (and so on the node it registers) that names the object as
/// `namespace/name`, for people.
pub const OWNER_TAG: &str = "registrar.dev/owner";

/// A managed node, as `DescribeInstanceInformation` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
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
pub struct Activation {
    /// Activation ID (not a secret).
    pub id: String,
    /// Activation code.
    pub code: aws::Sensitive,
}

/// The Systems Manager region of `ssm` (the controller's when the spec names none).
pub fn region<'a>(ctx: &'a Context, ssm: &'a SystemsManagerSpec) -> &'a str {
    ssm.region
        .as_deref()
        .or(ctx.aws.default_region())
        .unwrap_or_default()
}

/// Whether `id` has the form of a managed node ID of an on-premises host (`mi-` and 17 hex
/// digits): what a host says it is registered as is checked before it is used anywhere.
pub fn is_managed_node_id(id: &str) -> bool {
    id.strip_prefix("mi-").is_some_and(|hex| {
        hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The node `key` (`InstanceIds` or `ActivationIds`) = `value` names in `region`, if Systems
/// Manager lists one.
pub async fn find_node(
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

/// The name of the Secret that holds the activation code until the install.
pub fn activation_secret_name(obj: &InstanceRegistration) -> String {
    crate::steps::handoff::secret_name(obj, "ssm-activation")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
