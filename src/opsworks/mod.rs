//! AWS OpsWorks Stacks, the first service an `InstanceRegistration` can register its host with
//! (`spec.stackId`). [`OpsWorks`] is the service behind [`crate::context::Service`]; it keeps its
//! own caches and its own facts of a pass ([`Findings`]). It uses the shared machinery of
//! [`crate::steps`] and nothing of any other service.
//!
//! - [`stack`]: the stack and its provisioning parameters (and tenancy, before any AWS call).
//! - [`target`]: the EC2 instance or on-premises address, and the host's registration in the
//!   stack, matched on what the host registers as ([`identity`]).
//! - [`credentials`]: the IAM group, user, policy and access key, as `aws opsworks register`
//!   makes them, owned by the object.
//! - [`agent`]: the agent installer run over SSH ([`script`]); [`registered`]: OpsWorks lists
//!   the instance.
//! - [`undo`]: what deleting the object undoes.

mod agent;
mod audit;
pub(crate) mod credentials;
mod identity;
mod registered;
mod script;
mod stack;
mod target;
mod undo;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::cache::TtlCache;
use crate::conditions::{Outcome, Undone};
use crate::context::{Context, Endpoint, Facts, Made, Needs, Probed, Service, Step};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::tenancy::Scope;

pub use credentials::{inline_policy_expiry, policy_document_json};

/// Where the OpsWorks agent installs, and the free space it needs there (the agent with its
/// own Ruby, and room for the cookbooks it fetches), checked before anything is made.
/// The OpsWorks agent's service (the init script its installer sets up).
const AGENT: crate::steps::repair::Agent = crate::steps::repair::Agent {
    service: "opsworks",
    what: "the OpsWorks agent",
    names: &["opsworks-agent"],
};

const INSTALL_DIR: &str = "/opt/aws/opsworks";
const INSTALL_FREE_MIB: u64 = 512;

/// How long a stack's description is shared between the objects of the stack.
const STACK_TTL: Duration = Duration::from_secs(30);
/// How long a stack's instance list is shared: long enough that a fleet reconciled at once
/// makes one DescribeInstances per stack, short enough that a pass sees a fresh registration.
const INSTANCES_TTL: Duration = Duration::from_millis(1000);
/// How long a stack's IAM group is taken to exist once seen or made (a group deleted meanwhile
/// is noticed when adding a user to it fails).
const IAM_GROUP_TTL: Duration = Duration::from_secs(600);

/// The pipeline of an OpsWorks object, in order. Reads come first and inputs are checked before
/// anything is written in AWS.
const PIPELINE: &[Step] = &[
    Step::Stack,
    Step::Target,
    Step::SshKey,
    Step::Host,
    Step::Credentials,
    Step::Agent,
    Step::Registered,
];

/// AWS OpsWorks Stacks, with the caches the objects of one stack share.
pub(crate) struct OpsWorks {
    /// Stacks by `region/stack`, shared by the objects of a stack for a while.
    stacks: TtlCache<StackFacts>,
    /// Instances by `region/stack`, shared by the objects of a stack for a moment.
    instances: TtlCache<Arc<Vec<OpsWorksInstance>>>,
    /// IAM groups known to exist, by name.
    iam_groups: TtlCache<()>,
}

impl Default for OpsWorks {
    fn default() -> Self {
        Self {
            stacks: TtlCache::new(STACK_TTL),
            instances: TtlCache::new(INSTANCES_TTL),
            iam_groups: TtlCache::new(IAM_GROUP_TTL),
        }
    }
}

/// What OpsWorks' steps of one pass found, for the steps after them (in [`Facts::own`]).
#[derive(Debug, Default)]
struct Findings {
    /// The stack, once the stack step found it.
    stack: Option<StackFacts>,
    /// The host's instance in the stack, if it is registered already.
    existing: Option<OpsWorksInstance>,
    /// The stack's instances, as the target step listed them.
    instances: Option<Arc<Vec<OpsWorksInstance>>>,
    /// The access key the agent registers with (None with the instance profile).
    access_key: Option<AccessKey>,
}

/// OpsWorks' own facts of the pass.
fn findings(facts: &mut Facts) -> &mut Findings {
    facts.own::<Findings>()
}

impl Service for OpsWorks {
    fn name(&self) -> &'static str {
        "OpsWorks"
    }

    fn pipeline(&self) -> &'static [Step] {
        PIPELINE
    }

    fn place(&self, obj: &InstanceRegistration) -> String {
        format!("stack {}", obj.spec.stack_id())
    }

    fn scope<'o>(&self, obj: &'o InstanceRegistration) -> Option<Scope<'o>> {
        Some(Scope::stack(obj.spec.stack_id()))
    }

    fn registered_as<'f>(&self, facts: &'f Facts) -> Option<&'f str> {
        facts
            .own_ref::<Findings>()
            .and_then(|f| f.existing.as_ref())
            .map(|i| i.id.as_str())
    }

    fn needs<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        facts: &'a Facts,
    ) -> BoxFuture<'a, Needs> {
        // The installer is downloaded from the stack's URL; the agent registers with and then
        // talks to OpsWorks (the endpoint the controller uses, or AWS's for the region).
        let installer = facts
            .own_ref::<Findings>()
            .and_then(|f| f.stack.as_ref())
            .map(|s| s.agent_installer_url.clone());
        Box::pin(async move {
            let mut endpoints = Vec::new();
            if let Some(url) = ctx.aws.opsworks_endpoint(obj.spec.region.as_deref()).await {
                endpoints.push(Endpoint {
                    name: "OpsWorks".into(),
                    url,
                });
            }
            if let Some(url) = installer {
                endpoints.push(Endpoint {
                    name: "the agent installer".into(),
                    url,
                });
            }
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
        _regions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Made>, String>> {
        // IAM is global.
        Box::pin(audit::made(ctx))
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
        // OpsWorks recognises the registration by what the host said.
        let others = ctx.store.state();
        let outcome = identity::after_probe(probed, &others, facts, status);
        Box::pin(async move { outcome })
    }

    fn run<'a>(
        &'a self,
        step: Step,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        facts: &'a mut Facts,
        status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match step {
                Step::Stack => stack::check(self, obj, ctx, facts).await,
                Step::Target => target::check(self, obj, ctx, facts, status).await,
                Step::Credentials => credentials::check(self, obj, ctx, facts, status).await,
                Step::Agent => agent::check(obj, ctx, facts, status).await,
                Step::Registered => registered::check(self, obj, ctx, facts, status).await,
                Step::SshKey | Step::Host => unreachable!("{step:?} is a shared step"),
            }
        })
    }

    fn undo<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Undone, String>> {
        Box::pin(undo::undo(self, obj, ctx))
    }
}

/// An OpsWorks stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StackFacts {
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
pub(crate) struct OpsWorksInstance {
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
pub(crate) struct AccessKey {
    /// Access key ID (not a secret).
    pub id: String,
    /// Secret access key (redacted in Debug).
    pub secret: crate::aws::Sensitive,
}
