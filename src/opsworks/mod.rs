//! AWS OpsWorks Stacks, the first service an `InstanceRegistration` can register its host with
//! (`spec.stackId`), beside Systems Manager ([`crate::ssm`]); the steps both share are in
//! [`crate::steps`].
//!
//! - [`stack`]: the stack and its provisioning parameters (and tenancy, before any AWS call).
//! - [`target`]: the EC2 instance or on-premises address, and the host's registration in the
//!   stack, matched on what the host registers as ([`identity`]).
//! - [`credentials`]: the IAM group, user, policy and access key, as `aws opsworks register`
//!   makes them, owned by the object.
//! - [`agent`]: the agent installer run over SSH; [`registered`]: OpsWorks lists the instance.
//! - [`undo`]: what deleting the object undoes.

pub mod agent;
pub mod credentials;
pub mod identity;
pub mod registered;
pub mod stack;
pub mod target;
pub mod undo;

use std::collections::BTreeMap;

pub(crate) use crate::steps::{Facts, Outcome, TargetFacts, handoff};

pub use credentials::{
    OWNER_TAG, cleanup_iam, credentials_secret_name, forget_secret, inline_policy_expiry,
    policy_document_json,
};
pub use target::{find_ec2, registration_to_undo};

/// An OpsWorks stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackFacts {
    /// Stack ID.
    pub id: String,
    /// Stack name.
    pub name: String,
    /// Stack ARN (the resource of the inline RegisterInstance policy).
    pub arn: String,
    /// The stack's own region: where its EC2 instances live.
    pub region: String,
    /// The stack's VPC, if any: only instances in it count.
    pub vpc_id: Option<String>,
    /// Where the agent installer tarball is downloaded from.
    pub agent_installer_url: String,
    /// The provisioning parameters the agent needs (among them `assets_download_bucket`).
    pub parameters: BTreeMap<String, String>,
}

/// An instance of the stack, as OpsWorks DescribeInstances reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsWorksInstance {
    /// OpsWorks instance ID.
    pub id: String,
    /// OpsWorks status (`registering`, `registered`, `online`, `setup_failed`, ...).
    pub status: String,
    /// Hostname in OpsWorks.
    pub hostname: Option<String>,
    /// EC2 instance ID, for EC2 instances.
    pub ec2_instance_id: Option<String>,
    /// Layers it belongs to.
    pub layer_ids: Vec<String>,
    /// Addresses OpsWorks records for it.
    pub private_ip: Option<String>,
    /// Public address OpsWorks records for it.
    pub public_ip: Option<String>,
    /// Who registered it (`RegisteredBy`: the ARN of the IAM user whose key the agent
    /// registered with, e.g. `arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-web-db-1`).
    pub registered_by: Option<String>,
}

/// An access key for the agent. The secret half never leaves this struct except into the
/// credentials Secret and the host's `preconfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKey {
    /// Access key ID (not a secret).
    pub id: String,
    /// Secret access key (redacted in Debug).
    pub secret: crate::aws::Sensitive,
}
