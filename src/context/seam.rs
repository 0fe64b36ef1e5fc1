//! The one seam between the shared machinery and a service: a service is one value behind the
//! [`Service`] trait, and the [`Registry`] says which service an object uses. The pipeline,
//! deletion, tenancy and conflict ask the object's service through this trait and nowhere else,
//! so a service is a folder of its own (`src/opsworks/`, `src/ssm/`) plus one line in the
//! registry (`src/services.rs`).

use futures::future::BoxFuture;

use super::{Context, Facts, TargetFacts};
use crate::conditions::{Outcome, Undone, types};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::tenancy::Scope;

/// The steps a pipeline is made of, each reporting one condition. [`Step::SshKey`] and
/// [`Step::Host`] are the same for every service; the others are each service's own
/// ([`Service::run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// What the registration goes into (an OpsWorks stack and its provisioning parameters).
    Stack,
    /// The host: the EC2 instance (or on-premises address), an existing registration to adopt,
    /// and the hostname check.
    Target,
    /// The Secret named by `ssh.privateKeySecretRef` holds a usable private key (not needed for
    /// a host that is already registered).
    SshKey,
    /// The host answers over SSH and says what it registers as (before anything is written in
    /// AWS; not needed for a host that is already registered).
    Host,
    /// What the agent registers with (an IAM user and access key, an activation).
    Credentials,
    /// The agent was installed on the host over SSH.
    Agent,
    /// The service reports the host registered.
    Registered,
}

impl Step {
    /// The condition this step reports.
    pub(crate) fn condition(self) -> &'static str {
        match self {
            Step::Stack => types::STACK_RESOLVED,
            Step::Target => types::TARGET_RESOLVED,
            Step::SshKey => types::SSH_KEY_READY,
            Step::Host => types::HOST_REACHABLE,
            Step::Credentials => types::CREDENTIALS_READY,
            Step::Agent => types::AGENT_INSTALLED,
            Step::Registered => types::REGISTERED,
        }
    }
}

/// What a service's agent will need of a host, checked by the host probe before anything is
/// made in AWS (`steps::preflight`). The host's clock and init system are checked whatever
/// the service.
#[derive(Clone, Debug, Default)]
pub(crate) struct Needs {
    /// The endpoints the agent and its installer will call.
    pub endpoints: Vec<Endpoint>,
    /// Where the agent installs (its nearest existing parent is measured).
    pub install_dir: Option<&'static str>,
    /// Free space the install needs there, in MiB.
    pub free_mib: u64,
}

/// An endpoint a host must reach over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// What it is, for messages (`ssm`, `the agent installer`).
    pub name: String,
    /// Its URL (`https://ssm.us-east-1.amazonaws.com`); the port is the URL's.
    pub url: String,
}

/// Something a service made in AWS for an object, found by its owner tags
/// ([`Service::made`]), for the orphan audit (`crate::audit`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Made {
    /// The service that made it (its [`Service::name`]), which removes it.
    pub service: &'static str,
    /// What it is, for logs and the metric (`activation`, `managed node`, `IAM user`).
    pub kind: &'static str,
    /// Its ID or name.
    pub id: String,
    /// Its region, for what is regional.
    pub region: Option<String>,
    /// The UID of the object it was made for (its owner UID tag).
    pub owner_uid: String,
    /// That object, as `namespace/name`, if the tags say.
    pub owner: Option<String>,
    /// The cluster it was made from (its cluster tag), if tagged.
    pub cluster: Option<String>,
}

/// What the host step learned, for the service to look at ([`Service::after_probe`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probed<'a> {
    /// The object.
    pub obj: &'a InstanceRegistration,
    /// The host it reached.
    pub target: &'a TargetFacts,
    /// What the host said, for messages ("db-1 answered as db-1 (10.0.0.5)").
    pub said: &'a str,
    /// The host's answer to the service's own question ([`Service::probe_question`]): a bounded
    /// token of letters, digits and `-`, not checked further; `None` when not asked or not
    /// answered.
    pub answer: Option<&'a str>,
}

/// One service: the steps of its own, what it undoes, and what tenancy and conflict need to ask
/// of it. Implemented by `opsworks::OpsWorks` and `ssm::SystemsManager`.
pub(crate) trait Service: Send + Sync {
    /// Its name on `status.service` and in metrics (`OpsWorks`).
    fn name(&self) -> &'static str;

    /// The steps of its pipeline, in order. Reads come first, and inputs are checked before
    /// anything is written in AWS.
    fn pipeline(&self) -> &'static [Step];

    /// Where `obj`'s registration goes ("stack …"): two objects of this service whose place is
    /// the same compete for one registration of a host, and `Conflict` messages name it.
    fn place(&self, obj: &InstanceRegistration) -> String;

    /// What `obj`'s namespace must be allowed to use (its stack, its activation's service role),
    /// if anything.
    fn scope<'o>(&self, obj: &'o InstanceRegistration) -> Option<Scope<'o>>;

    /// What the host is registered as, when this pass found it registered already.
    fn registered_as<'f>(&self, facts: &'f Facts) -> Option<&'f str>;

    /// A question of the service's own that the host probe asks too: shell lines that print
    /// `registration=<token>` (read-only, no input, no value of anyone's). The host is then
    /// asked at every pass until it is registered, since the answer is not kept on status.
    fn probe_question(&self, _obj: &InstanceRegistration) -> Option<&'static str> {
        None
    }

    /// What the agent will need of the host, checked when the host is probed (`facts` holds
    /// what the steps before the host step found). By default only the clock and the init
    /// system are checked.
    fn needs<'a>(
        &'a self,
        _obj: &'a InstanceRegistration,
        _ctx: &'a Context,
        _facts: &'a Facts,
    ) -> BoxFuture<'a, Needs> {
        Box::pin(async { Needs::default() })
    }

    /// Looks at what the host said, before anything is made in AWS: an outcome ends the host
    /// step (an adoption, a refusal), `None` lets the pipeline go on.
    fn after_probe<'a>(
        &'a self,
        _probed: Probed<'a>,
        _ctx: &'a Context,
        _facts: &'a mut Facts,
        _status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Option<Outcome>> {
        Box::pin(async { None })
    }

    /// Runs `step`, one of the service's own (not [`Step::SshKey`] or [`Step::Host`]), using and
    /// adding to what earlier steps found (`facts`) and recording on `status` what must survive a
    /// restart.
    fn run<'a>(
        &'a self,
        step: Step,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        facts: &'a mut Facts,
        status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Outcome>;

    /// What this service made in AWS that carries an owner UID tag, in `regions` (and its
    /// global resources), for the orphan audit. By default, nothing.
    fn made<'a>(
        &'a self,
        _ctx: &'a Context,
        _regions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Made>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Removes `made`, found by [`Service::made`] and orphaned (its object is gone).
    fn remove<'a>(
        &'a self,
        _ctx: &'a Context,
        made: &'a Made,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { Err(format!("{} {} cannot be removed", made.kind, made.id)) })
    }

    /// Undoes what was done for `obj` (its `deletionPolicy` is `Deregister`); safe to run more
    /// than once, and when nothing was done. Returns what was undone, or what stopped it.
    fn undo<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Undone, String>>;
}

/// Which service an object uses: the one place that reads the service out of the spec.
pub(crate) trait Registry: Send + Sync {
    /// `obj`'s service.
    fn of(&self, obj: &InstanceRegistration) -> &dyn Service;

    /// Every service (for the orphan audit).
    fn all(&self) -> Vec<&dyn Service>;
}

impl dyn Registry {
    /// Whether `a` and `b` compete for one registration of a host: the same service, and the
    /// same place in it (one OpsWorks stack; Systems Manager, whatever the region).
    pub(crate) fn same_registry(&self, a: &InstanceRegistration, b: &InstanceRegistration) -> bool {
        let (sa, sb) = (self.of(a), self.of(b));
        sa.name() == sb.name() && sa.place(a) == sb.place(b)
    }
}
