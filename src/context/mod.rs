//! What a pass works with: what every reconcile shares ([`Context`]: the clients, limits,
//! settings and the [`Registry`] of services), what one pass found ([`Facts`]), the [`Service`]
//! seam each service implements ([`seam`]), and the status write every part of a pass uses:
//! server-side apply by this controller's field manager, conditional on the resourceVersion the
//! pass works from. The shared steps, both services and the controller loop depend on this
//! module; it depends on none of them.

mod facts;
mod seam;

pub(crate) use facts::{Facts, TargetFacts};
pub(crate) use seam::{Endpoint, Made, Needs, Probed, Registry, Service, Step};

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::aws::Aws;
use crate::backoff::Tracker;
use crate::conditions::{Observation, Outcome, reasons};
use crate::metrics::Metrics;
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::tenancy::{Tenancy, Unannotated, Verdict};
use crate::{Error, Result};

/// The field manager of every write the controller makes.
pub(crate) const FIELD_MANAGER: &str = "instance-registrar";

/// AWS's published location of the Systems Manager agent setup tool for Linux hosts, per
/// region, platform and architecture.
pub(crate) const SSM_SETUP_URL: &str =
    "https://amazon-ssm-{region}.s3.{region}.amazonaws.com/latest/{platform}_{arch}/ssm-setup-cli";

/// How the controller runs; the `run` subcommand fills it from flags and environment.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The namespaces and the label selector watched.
    pub watched: crate::watches::Watched,
    /// Reconciles running at once, across objects.
    pub concurrency: u16,
    /// SSH sessions open at once, across objects. A pass that opens one goes on off the reconcile
    /// workers ([`Detached`]), so installs in flight are bounded by this alone, not by
    /// `concurrency`.
    pub ssh_concurrency: u16,
    /// SSH sessions one namespace may have open at once (`None`: half of `ssh_concurrency`,
    /// rounded up); the slots are shared between namespaces in turn ([`crate::slots`]).
    pub ssh_namespace_share: Option<u16>,
    /// How often a finished object is looked at again to notice drift.
    pub resync: Duration,
    /// How long after a successful install OpsWorks may take to list the instance before the
    /// install is tried again.
    pub registration_timeout: Duration,
    /// Where hosts download the Systems Manager agent setup tool (see [`SSM_SETUP_URL`]).
    pub ssm_setup_url: String,
    /// Whether the host probe checks that the host reaches its agent's endpoints
    /// (`steps::preflight`).
    pub check_host_endpoints: bool,
    /// This cluster's ID (the `kube-system` Namespace's UID), tagged on what the controller
    /// makes (`registrar.dev/cluster`) so that the orphan audit knows its own; `None` when it
    /// could not be read (the audit then removes nothing).
    pub cluster_id: Option<String>,
    /// Seconds between orphan audits (`crate::audit`); 0: none.
    pub audit_every: Duration,
    /// Whether the audit removes what was orphaned at two audits in a row.
    pub delete_orphans: bool,
    /// How long the service may report an agent out of touch (ConnectionLost) before its
    /// service is restarted over SSH (`crate::steps::repair`); zero: never.
    pub agent_repair_after: Duration,
    /// Name of this replica in Events (`reportingInstance`).
    pub instance: Option<String>,
    /// Which stacks the objects of a namespace without the `registrar.dev/allowed-stacks`
    /// annotation may use.
    pub unannotated_namespaces: Unannotated,
    /// Time limits of every AWS call.
    pub aws_timeouts: crate::aws::Timeouts,
    /// AWS calls per second each service's budget starts at and grows back to
    /// ([`crate::budget`]); `None`: no limit.
    pub aws_calls_per_second: Option<f64>,
    /// The permissions boundary (a managed policy ARN) set on every IAM user the controller
    /// makes, if any; `iam-policy.json` can then require it (`iam:PermissionsBoundary`).
    pub iam_permissions_boundary: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            watched: Default::default(),
            concurrency: 64,
            ssh_concurrency: 64,
            ssh_namespace_share: None,
            resync: Duration::from_secs(600),
            registration_timeout: Duration::from_secs(900),
            ssm_setup_url: SSM_SETUP_URL.to_owned(),
            check_host_endpoints: true,
            cluster_id: None,
            audit_every: Duration::ZERO,
            delete_orphans: false,
            agent_repair_after: Duration::ZERO,
            instance: None,
            unannotated_namespaces: Unannotated::default(),
            aws_timeouts: crate::aws::Timeouts::default(),
            aws_calls_per_second: None,
            iam_permissions_boundary: None,
        }
    }
}

/// What every reconcile shares.
pub(crate) struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// AWS clients.
    pub aws: Aws,
    /// Publishes Events on the objects.
    pub recorder: Recorder,
    /// Failure counts by object, for backoff.
    pub backoff: Tracker,
    /// Every object the controller watches, as last seen (for rules across objects).
    pub store: reflector::Store<InstanceRegistration>,
    /// Which stacks each namespace may use.
    pub tenancy: Tenancy,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Which service each object uses (each service keeps its own caches).
    pub services: Box<dyn Registry>,
    /// Slots for SSH sessions ([`Settings::ssh_concurrency`]), shared between namespaces.
    pub ssh_slots: crate::slots::Slots,
    /// The newest resourceVersion this controller knows of each object.
    pub versions: Versions,
    /// SSH private keys decoded from Secrets, once per Secret version, off the async workers.
    pub ssh_keys: crate::sshkey::KeyCache,
    /// Passes that went on off the reconcile workers (an SSH session: an install takes minutes).
    pub detached: Detached,
    /// How the controller runs.
    pub settings: Settings,
}

/// The passes that left their reconcile worker to run an SSH session (see
/// [`Facts::detach`]), by object UID, and the way to reconcile an object again
/// when one ends.
///
/// While an object's detached pass runs, no other pass of it starts: a reconcile of the object
/// (a spec change, a deletion, a Secret that changed) only notes that it came, and the object is
/// reconciled again as soon as the pass ends. So an object still has one pass at a time, as
/// kube-runtime gives it, however long its install takes, while the reconcile workers serve the
/// other objects.
pub(crate) struct Detached {
    passes: std::sync::Mutex<std::collections::HashMap<String, Pass>>,
    wake: futures::channel::mpsc::UnboundedSender<reflector::ObjectRef<InstanceRegistration>>,
}

/// A detached pass in flight.
#[derive(Default)]
struct Pass {
    /// A reconcile of the object came while the pass ran.
    missed: bool,
}

impl Detached {
    /// A registry that wakes objects through `wake` (the controller reconciles what it sends).
    pub(crate) fn new(
        wake: futures::channel::mpsc::UnboundedSender<reflector::ObjectRef<InstanceRegistration>>,
    ) -> Self {
        Self {
            passes: Default::default(),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pass>> {
        self.passes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a detached pass of `uid` is in flight; if so, notes that a reconcile came (it is
    /// made up for when the pass ends).
    pub(crate) fn busy(&self, uid: &str) -> bool {
        match self.lock().get_mut(uid) {
            Some(pass) => {
                pass.missed = true;
                true
            }
            None => false,
        }
    }

    /// Records that a pass of `uid` went on detached.
    pub(crate) fn started(&self, uid: &str) {
        self.lock().insert(uid.to_owned(), Pass::default());
    }

    /// Records that the detached pass of `uid` ended; returns whether a reconcile came meanwhile.
    pub(crate) fn ended(&self, uid: &str) -> bool {
        self.lock().remove(uid).is_some_and(|pass| pass.missed)
    }

    /// How many detached passes are in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Reconciles `obj` again (now).
    pub(crate) fn wake(&self, obj: &InstanceRegistration) {
        let _ = self
            .wake
            .unbounded_send(reflector::ObjectRef::from_obj(obj));
    }
}

impl Context {
    /// The shard this controller is: its label selector, empty when it watches every object.
    pub(crate) fn shard(&self) -> &str {
        self.settings
            .watched
            .selector
            .as_deref()
            .unwrap_or_default()
    }

    /// A context for `client` and `aws` with `settings`, seeing the watched objects in `store`
    /// and their namespaces in `namespaces`, with the services of `services`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Client,
        aws: Aws,
        store: reflector::Store<InstanceRegistration>,
        namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
        metrics: Arc<Metrics>,
        settings: Settings,
        detached: Detached,
        services: Box<dyn Registry>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: settings.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            aws,
            backoff: Tracker::default(),
            store,
            tenancy: Tenancy::new(namespaces, settings.unannotated_namespaces),
            metrics,
            services,
            ssh_slots: crate::slots::Slots::new(
                settings.ssh_concurrency.into(),
                settings.ssh_namespace_share.map(usize::from),
            ),
            versions: Versions::default(),
            ssh_keys: Default::default(),
            detached,
            settings,
        }
    }
}

impl Context {
    /// The service `obj` uses.
    pub(crate) fn service_of(&self, obj: &InstanceRegistration) -> &dyn Service {
        self.services.of(obj)
    }

    /// Whether `obj`'s namespace may use what `obj` names (its service says what: a stack, a
    /// service role, or nothing).
    pub(crate) fn verdict(&self, obj: &InstanceRegistration) -> Verdict {
        self.tenancy.verdict(obj, self.service_of(obj).scope(obj))
    }

    /// The tenancy check that opens a pipeline, before any AWS call: `Ok` when `obj`'s namespace
    /// may use what `obj` names (or it names nothing to allow); else the step's outcome: refused
    /// (blocked, with the scope's reason) or, while the namespace is not known yet, retried.
    pub(crate) fn allowed(&self, obj: &InstanceRegistration) -> Result<(), Outcome> {
        let Some(scope) = self.service_of(obj).scope(obj) else {
            return Ok(());
        };
        match self.tenancy.verdict_for(obj, scope) {
            Verdict::Allowed => Ok(()),
            Verdict::Refused(why) => Err(Outcome::Blocked(Observation::fails(scope.refused, why))),
            Verdict::Unknown(why) => Err(Outcome::Retry(Observation::unknown(
                reasons::NAMESPACE_UNKNOWN,
                why,
            ))),
        }
    }

    /// Whether `obj` counts when objects compete for a host: unless its namespace is known to
    /// be refused what it names (an object that may not act must not hold a host either).
    pub(crate) fn may_hold(&self, obj: &InstanceRegistration) -> bool {
        !matches!(self.verdict(obj), Verdict::Refused(_))
    }

    /// Whether `other` counts against `obj` when objects compete for a host: it names the same
    /// registry and may hold a host.
    pub(crate) fn competes(
        &self,
        obj: &InstanceRegistration,
        other: &InstanceRegistration,
    ) -> bool {
        self.services.same_registry(obj, other) && self.may_hold(other)
    }
}

/// The newest resourceVersion this controller has seen of each object, by UID: its own status
/// writes return one before the watch shows it. resourceVersions are opaque, so only equality is
/// used: a watch copy at another version than the newest known is looked up again.
#[derive(Default)]
pub(crate) struct Versions(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Versions {
    /// Records `obj`'s resourceVersion as the newest known.
    pub(crate) fn saw(&self, obj: &InstanceRegistration) {
        if let (Some(uid), Some(version)) = (obj.uid(), obj.resource_version()) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, version);
        }
    }

    /// Whether a newer copy of `obj` than this one may exist: this controller wrote or read the
    /// object at another resourceVersion.
    pub(crate) fn newer_than(&self, obj: &InstanceRegistration) -> bool {
        let (Some(uid), Some(version)) = (obj.uid(), obj.resource_version()) else {
            return false;
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .is_some_and(|known| *known != version)
    }

    /// Forgets a deleted object.
    pub(crate) fn forget(&self, obj: &InstanceRegistration) {
        if let Some(uid) = obj.uid() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
    }
}

/// The status write itself: server-side apply, forced, conditional on `version` when known; on
/// success `version` is the object's new resourceVersion.
pub(crate) async fn patch_status(
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    version: &mut Option<String>,
) -> Result<()> {
    let written = apply_status(api, &obj.name_any(), status, version.as_deref())
        .await
        .map_err(|e| Error::kube("patch status", e))?;
    ctx.versions.saw(&written);
    *version = written.metadata.resource_version;
    Ok(())
}

/// Applies `status` to object `name` (server-side apply, this controller's field manager,
/// forced). With `version`, only if the object is still at that resourceVersion: otherwise the
/// API server refuses it with 409 Conflict and nothing is written.
pub async fn apply_status(
    api: &Api<InstanceRegistration>,
    name: &str,
    status: &InstanceRegistrationStatus,
    version: Option<&str>,
) -> std::result::Result<InstanceRegistration, kube::Error> {
    let mut body = json!({
        "apiVersion": InstanceRegistration::api_version(&()),
        "kind": InstanceRegistration::kind(&()),
        "status": status,
    });
    if let Some(version) = version {
        body["metadata"] = json!({ "resourceVersion": version });
    }
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
}

/// Writes `status` now, in the middle of a pass, before an action that must not be repeated
/// from an older copy (the agent install): conditional on the version the pass works from, so
/// the action runs only if no newer status exists. Returns why it could not be written.
pub(crate) async fn checkpoint(
    ctx: &Context,
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    facts: &mut Facts,
) -> std::result::Result<(), String> {
    let api: Api<InstanceRegistration> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    patch_status(&api, ctx, obj, status, &mut facts.resource_version)
        .await
        .map_err(|e| e.to_string())?;
    facts.written = Some(status.clone());
    Ok(())
}

/// The status write at the end of a pass: as [`patch_status`], and when it is refused because
/// the object changed meanwhile (409) while its status is still `base` (what the pass started
/// from, or wrote at its last checkpoint), written again against the new version. Only the
/// object's metadata or spec moved then (a deletion began, a label or the spec changed): the
/// pass's status moves no field back, and it is the only record of what the pass did on the
/// host. Without it, an object deleted while its install ran would keep saying the install may
/// still be running, and hold its finalizer until the install's time limit.
pub(crate) async fn patch_status_rebased(
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    base: &InstanceRegistrationStatus,
    version: &mut Option<String>,
) -> Result<()> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let refused = match patch_status(api, ctx, obj, status, version).await {
            Err(Error::Kube { source, .. }) if is_conflict(&source) => source,
            written => return written,
        };
        if attempt == ATTEMPTS {
            return Err(Error::kube("patch status", refused));
        }
        attempt += 1;
        let Some(fresh) = read(api, &obj.name_any()).await? else {
            return Err(Error::kube("patch status", refused));
        };
        let same = |a: Option<&InstanceRegistrationStatus>| {
            serde_json::to_value(a.cloned().unwrap_or_default()).ok()
        };
        if same(fresh.status.as_ref()) != same(Some(base)) {
            // Someone else wrote status meanwhile: this pass's copy is old.
            return Err(Error::kube("patch status", refused));
        }
        tracing::debug!(name = %obj.name_any(), "the object changed during the pass, its status did not: writing it again");
        *version = fresh.metadata.resource_version;
    }
}

/// The API server's copy of object `name`, if it exists. A GET (the chart's role grants it for
/// this): a LIST narrowed by field selector makes the API server filter every object of the
/// namespace, and in a wave of 500 objects those reads slowed the API server for everyone.
pub(crate) async fn read(
    api: &Api<InstanceRegistration>,
    name: &str,
) -> Result<Option<InstanceRegistration>> {
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube("get object", e))
}

/// Whether the API server refused a write because the object is at another resourceVersion.
fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn a_reconcile_during_a_detached_pass_is_noted_and_made_up_for_once() {
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        let detached = Detached::new(wake);
        assert!(!detached.busy("a"), "nothing runs yet");
        detached.started("a");
        assert_eq!(detached.in_flight(), 1);
        assert!(!detached.busy("b"), "another object is not held up");
        // No reconcile came: nothing to make up for.
        assert!(!detached.ended("a"));
        detached.started("a");
        assert!(detached.busy("a"));
        assert!(detached.busy("a"));
        assert!(
            detached.ended("a"),
            "the reconciles that came are made up for"
        );
        assert_eq!(detached.in_flight(), 0);
        assert!(!detached.busy("a"), "the next reconcile runs");
        let obj = InstanceRegistration::new(
            "db",
            serde_json::from_value(serde_json::json!({
                "stackId": "0b1c2d3e-0000-4000-8000-000000000000",
                "infrastructureClass": "ec2",
                "target": "i-0123456789abcdef0",
                "ssh": {"username": "u", "privateKeySecretRef": {"name": "k"}},
            }))
            .unwrap(),
        );
        detached.wake(&obj);
        let sent = futures::executor::block_on(woken.next()).unwrap();
        assert_eq!(sent.name, "db");
    }
}
