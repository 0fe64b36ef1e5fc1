//! The machinery every service shares, knowing none of them: the SSH key ([`ssh_key`]), the host
//! probe and what a host says of itself ([`host`], [`probe`]), what the agent will need of it
//! ([`preflight`]), the install runner and the
//! script around every service's installer ([`runner`], [`script`]), the hand-off Secret
//! ([`handoff`]), repairs of an agent out of touch ([`repair`]), EC2 look-ups ([`ec2`]), the tags that say which object made something
//! ([`OWNER_UID_TAG`]), and what status says of a pass ([`summary`]).
//!
//! Each service (`crate::opsworks`, `crate::ssm`) builds its own steps from these and plugs in
//! behind [`crate::context::Service`]; the pipeline on top (`crate::pipeline`) runs them.

pub(crate) mod ec2;
pub(crate) mod handoff;
pub(crate) mod host;
pub(crate) mod preflight;
pub(crate) mod probe;
pub(crate) mod repair;
mod runner;
pub(crate) mod script;
pub(crate) mod ssh_key;
pub(crate) mod summary;

pub(crate) use host::installed;
pub(crate) use runner::{install_elsewhere, install_may_run_until, run_install};
pub(crate) use summary::{
    Next, installing, summarize, summarize_deleting, summarize_install_elsewhere,
    summarize_suspended, wait_for_registration,
};

/// The tag on what the controller makes in AWS for one object (an IAM user, an activation and
/// the node it registers) that names the object by UID: what proves it the object's own.
pub const OWNER_UID_TAG: &str = "registrar.dev/owner-uid";
/// The tag that names the object as `namespace/name`, for people.
pub const OWNER_TAG: &str = "registrar.dev/owner";
/// The tag that names the cluster the object is in (its `kube-system` Namespace's UID), so
/// that the orphan audit touches only what its own cluster made.
pub(crate) const CLUSTER_TAG: &str = "registrar.dev/cluster";
