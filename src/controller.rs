//! The controller: watches `InstanceRegistration`s, runs the [`steps`](crate::steps) for each
//! behind kube-runtime's finalizer, writes status with server-side apply only when its meaning
//! changed, publishes an Event for each condition that changed, and backs off per object.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::aws::Aws;
use crate::backoff::{Schedule, Tracker};
use crate::cache::TtlCache;
use crate::conditions;
use crate::http::Health;
use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::resource::{
    ConditionStatus, DeletionPolicy, FINALIZER, InstanceRegistration, InstanceRegistrationStatus,
};
use crate::steps::{self, Facts, Next, Outcome};
use crate::tenancy::{self, Tenancy, Unannotated, Verdict};
use crate::{Error, Result};

/// How long a stack's description is shared between the objects of the stack.
const STACK_TTL: Duration = Duration::from_secs(30);
/// How long a stack's instance list is shared: long enough that a fleet reconciled at once
/// makes one DescribeInstances per stack, short enough that a pass sees a fresh registration.
const INSTANCES_TTL: Duration = Duration::from_millis(1000);
/// How long a stack's IAM group is taken to exist once seen or made (a group deleted meanwhile
/// is noticed when adding a user to it fails).
const IAM_GROUP_TTL: Duration = Duration::from_secs(600);

/// The field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "instance-registrar";

/// AWS's published location of the Systems Manager agent setup tool for Linux hosts, per
/// region, platform and architecture.
pub const SSM_SETUP_URL: &str =
    "https://amazon-ssm-{region}.s3.{region}.amazonaws.com/latest/{platform}_{arch}/ssm-setup-cli";

/// How the controller runs; the `run` subcommand fills it from flags and environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace (all namespaces when `None`).
    pub watch_namespace: Option<String>,
    /// Reconciles running at once, across objects.
    pub concurrency: u16,
    /// SSH sessions open at once, across objects (installs run inside reconciles, so at most
    /// `concurrency` of them anyway).
    pub ssh_concurrency: u16,
    /// How often a finished object is looked at again to notice drift.
    pub resync: Duration,
    /// How long after a successful install OpsWorks may take to list the instance before the
    /// install is tried again.
    pub registration_timeout: Duration,
    /// Where hosts download the Systems Manager agent setup tool (see [`SSM_SETUP_URL`]).
    pub ssm_setup_url: String,
    /// Name of this replica in Events (`reportingInstance`).
    pub instance: Option<String>,
    /// Which stacks the objects of a namespace without the `registrar.dev/allowed-stacks`
    /// annotation may use.
    pub unannotated_namespaces: Unannotated,
    /// Time limits of every AWS call.
    pub aws_timeouts: crate::aws::Timeouts,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            watch_namespace: None,
            concurrency: 64,
            ssh_concurrency: 64,
            resync: Duration::from_secs(600),
            registration_timeout: Duration::from_secs(900),
            ssm_setup_url: SSM_SETUP_URL.to_owned(),
            instance: None,
            unannotated_namespaces: Unannotated::default(),
            aws_timeouts: crate::aws::Timeouts::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
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
    /// OpsWorks stacks by `region/stack`, shared by the objects of a stack for a while.
    pub stacks: TtlCache<steps::StackFacts>,
    /// OpsWorks instances by `region/stack`, shared by the objects of a stack for a moment.
    pub instances: TtlCache<Arc<Vec<steps::OpsWorksInstance>>>,
    /// IAM groups known to exist, by name.
    pub iam_groups: TtlCache<()>,
    /// Permits for SSH sessions ([`Settings::ssh_concurrency`]).
    pub ssh_slots: tokio::sync::Semaphore,
    /// The newest resourceVersion this controller knows of each object.
    pub versions: Versions,
    /// SSH private keys decoded from Secrets, once per Secret version, off the async workers.
    pub ssh_keys: crate::sshkey::KeyCache,
    /// How the controller runs.
    pub settings: Settings,
}

impl Context {
    /// A context for `client` and `aws` with `settings`, seeing the watched objects in `store`
    /// and their namespaces in `namespaces`.
    pub fn new(
        client: Client,
        aws: Aws,
        store: reflector::Store<InstanceRegistration>,
        namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
        metrics: Arc<Metrics>,
        settings: Settings,
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
            stacks: TtlCache::new(STACK_TTL),
            instances: TtlCache::new(INSTANCES_TTL),
            iam_groups: TtlCache::new(IAM_GROUP_TTL),
            ssh_slots: tokio::sync::Semaphore::new(settings.ssh_concurrency.max(1).into()),
            versions: Versions::default(),
            ssh_keys: Default::default(),
            settings,
        }
    }
}

/// The newest resourceVersion this controller has seen of each object, by UID: its own status
/// writes return one before the watch shows it. resourceVersions are opaque, so only equality is
/// used: a watch copy at another version than the newest known is looked up again.
#[derive(Default)]
pub struct Versions(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Versions {
    /// Records `obj`'s resourceVersion as the newest known.
    pub fn saw(&self, obj: &InstanceRegistration) {
        if let (Some(uid), Some(version)) = (obj.uid(), obj.resource_version()) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, version);
        }
    }

    /// Whether a newer copy of `obj` than this one may exist: this controller wrote or read the
    /// object at another resourceVersion.
    pub fn newer_than(&self, obj: &InstanceRegistration) -> bool {
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
    pub fn forget(&self, obj: &InstanceRegistration) {
        if let Some(uid) = obj.uid() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
    }
}

/// The key an object's backoff is kept under: UID, so a re-created object starts afresh.
fn backoff_key(obj: &InstanceRegistration) -> String {
    obj.uid()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

/// Reconciles one object: the finalizer is the only top-level action; it dispatches to
/// [`apply`] while the object lives and to [`cleanup`] once it is being deleted.
pub async fn reconcile(obj: Arc<InstanceRegistration>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = obj.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<InstanceRegistration> = Api::namespaced(ctx.client.clone(), &namespace);
    let span = info_span!("reconcile", namespace = %namespace, name = %obj.name_any());
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(&obj, &api, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(&obj, &api, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Brings the world to match `obj` as far as the steps can, then records what they found.
async fn apply(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
) -> Result<Action> {
    // The watch's copy can lag behind this controller's own last status write (a requeue that
    // comes before the watch event): then the pass works from the API server's copy, so that it
    // neither redoes work nor writes an older status back.
    let fresh;
    let obj = match ctx.versions.newer_than(obj) {
        false => obj,
        true => {
            fresh = api
                .get(&obj.name_any())
                .await
                .map_err(|e| Error::kube("get object", e))?;
            ctx.versions.saw(&fresh);
            &fresh
        }
    };
    let generation = obj.metadata.generation.unwrap_or_default();
    let old = obj.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let now = Time(Timestamp::now());
    let key = backoff_key(obj);

    let mut version = obj.metadata.resource_version.clone();
    if obj.spec.suspend {
        steps::summarize_suspended(&mut new, generation, &now);
        write_status(obj, api, ctx, &old, &new, &mut version).await?;
        ctx.backoff.reset(&key);
        return Ok(Action::await_change());
    }

    let started = std::time::Instant::now();
    let mut facts = Facts {
        resource_version: version,
        ..Facts::default()
    };
    let pipeline = steps::pipeline(obj);
    new.service = Some(obj.spec.service().name().to_owned());
    let mut results = Vec::with_capacity(pipeline.len());
    for step in pipeline {
        let step_started = std::time::Instant::now();
        let outcome = step.run(obj, ctx, &mut facts, &mut new).await;
        ctx.metrics.step(step.condition(), step_started.elapsed());
        let done = matches!(outcome, Outcome::Done(_));
        results.push((*step, outcome));
        if !done {
            break;
        }
    }
    let next = steps::summarize(&mut new, pipeline, &results, generation, &now);
    write_status(obj, api, ctx, &old, &new, &mut facts.resource_version).await?;
    record_pass(ctx, obj, &old, &new, started.elapsed());

    Ok(match next {
        Next::Resync => {
            ctx.backoff.reset(&key);
            Action::requeue(ctx.settings.resync)
        }
        Next::After(after) => {
            ctx.backoff.reset(&key);
            Action::requeue(after)
        }
        Next::BackoffBlocked => Action::requeue(ctx.backoff.next(&key, Schedule::BLOCKED)),
        Next::BackoffTransient => Action::requeue(ctx.backoff.next(&key, Schedule::TRANSIENT)),
    })
}

/// Counts a finished pass: its duration, whether it ended Ready (and if not, why), and the time
/// from creation to the first Ready.
fn record_pass(
    ctx: &Context,
    obj: &InstanceRegistration,
    old: &InstanceRegistrationStatus,
    new: &InstanceRegistrationStatus,
    took: Duration,
) {
    use conditions::types;
    let m = &ctx.metrics;
    m.reconcile_duration.observe(took.as_secs_f64());
    m.reconciles
        .get_or_create(&ResultLabels {
            result: "ok".into(),
        })
        .inc();
    match conditions::get(&new.conditions, types::READY) {
        Some(ready) if ready.status == ConditionStatus::True => {
            if !conditions::is_true(&old.conditions, types::READY)
                && old.registered_at.is_none()
                && let Some(created) = &obj.metadata.creation_timestamp
            {
                let seconds = Timestamp::now().duration_since(created.0).as_secs_f64();
                m.time_to_ready.observe(seconds.max(0.0));
            }
        }
        Some(ready) => {
            m.failures
                .get_or_create(&ReasonLabels {
                    reason: ready.reason.clone(),
                })
                .inc();
        }
        None => {}
    }
}

/// Undoes what the controller did for `obj`: with `deletionPolicy: Deregister`, deregisters the
/// instance, then deletes the IAM user(s), keys and policies made for it, the stack's group when
/// empty, and the credentials Secret; with `Retain` (or while suspended) it only lets go.
/// Safe to run more than once, and when [`apply`] never ran. A failure is retried with backoff
/// and said on status; it never blocks for good on an unreachable endpoint, but it does not drop
/// the finalizer with work left undone either.
async fn cleanup(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
) -> Result<Action> {
    let key = backoff_key(obj);
    if obj.spec.suspend || obj.spec.deletion_policy == DeletionPolicy::Retain {
        let note = if obj.spec.suspend {
            "suspended: the registration and IAM entities are left as they are"
        } else {
            "deletionPolicy Retain: the registration and IAM entities are left as they are"
        };
        publish(ctx, obj, EventType::Normal, "Retained", "Cleanup", note).await;
        ctx.backoff.reset(&key);
        ctx.versions.forget(obj);
        return Ok(Action::await_change());
    }
    match undo(obj, ctx).await {
        Ok(summary) => {
            info!(name = %obj.name_any(), %summary, "cleaned up");
            let refused = matches!(ctx.tenancy.verdict(obj), Verdict::Refused(_));
            let (kind, reason) = if refused {
                (EventType::Warning, conditions::reasons::STACK_NOT_ALLOWED)
            } else {
                (EventType::Normal, "Deregistered")
            };
            publish(ctx, obj, kind, reason, "Cleanup", &summary).await;
            ctx.backoff.reset(&key);
            ctx.versions.forget(obj);
            Ok(Action::await_change())
        }
        Err(problem) => {
            // Say why on status, then retry with backoff (the finalizer stays).
            let old = obj.status.clone().unwrap_or_default();
            let mut new = old.clone();
            let now = Time(Timestamp::now());
            let generation = obj.metadata.generation.unwrap_or_default();
            steps::summarize_deleting(&mut new, &problem, generation, &now);
            let mut version = obj.metadata.resource_version.clone();
            write_status(obj, api, ctx, &old, &new, &mut version).await?;
            // An error, not a requeue: the finalizer helper drops the finalizer on success, and
            // work is left undone. The error policy retries with this object's backoff.
            Err(Error::CleanupIncomplete(problem))
        }
    }
}

/// The undo of a registration; returns a summary, or what stopped it.
///
/// The IAM user goes first: with the agent's key deleted no registration of this object's can
/// appear after the look-up that follows. Then the registration this object made (or adopted,
/// with DeregisterAdopted) is looked up in the spec's stack, matched on the host's identity, and
/// deregistered; one this object did not make is left, whatever status says.
async fn undo(obj: &InstanceRegistration, ctx: &Context) -> std::result::Result<String, String> {
    if let crate::resource::Service::SystemsManager(ssm) = obj.spec.service() {
        return crate::ssm::undo::undo(ctx, obj, ssm).await;
    }
    // Tenancy first: an object whose namespace may not use the stack writes nothing in it.
    match ctx.tenancy.verdict(obj) {
        Verdict::Allowed => {}
        Verdict::Unknown(why) => return Err(why),
        Verdict::Refused(why) => return undo_outside_the_stack(obj, ctx, &why).await,
    }
    let mut done = Vec::new();
    let opsworks = ctx.aws.opsworks(obj.spec.region.as_deref());
    let stack_name = match opsworks
        .describe_stacks()
        .stack_ids(obj.spec.stack_id())
        .send()
        .await
    {
        Ok(out) => out
            .stacks()
            .first()
            .and_then(|s| s.name())
            .map(str::to_owned),
        Err(e) => {
            let failure = crate::aws::classify(&e);
            if failure.kind != crate::aws::Kind::NotFound {
                return Err(format!("opsworks:DescribeStacks: {failure}"));
            }
            None
        }
    };
    match steps::cleanup_iam(ctx, obj, stack_name.as_deref(), true).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => done.push(format!("deleted IAM user {}", users.join(", "))),
        Err(failure) => return Err(format!("IAM cleanup: {failure}")),
    }
    let deregister_adopted = obj.spec.deletion_policy == DeletionPolicy::DeregisterAdopted;
    match steps::registration_to_undo(ctx, obj, deregister_adopted).await? {
        Ok(instance) => match opsworks
            .deregister_instance()
            .instance_id(&instance.id)
            .send()
            .await
        {
            Ok(_) => done.push(format!("deregistered {}", instance.id)),
            Err(e) => {
                let failure = crate::aws::classify(&e);
                if failure.kind != crate::aws::Kind::NotFound {
                    return Err(format!(
                        "opsworks:DeregisterInstance {}: {failure}",
                        instance.id
                    ));
                }
            }
        },
        Err(note) => done.push(note),
    }
    if steps::forget_secret(ctx, obj).await? {
        done.push("deleted the access key Secret".into());
    }
    Ok(if done.is_empty() {
        "nothing to undo".into()
    } else {
        done.join("; ")
    })
}

/// The undo of an object whose namespace may not use its stack (`why` says so): nothing in the
/// stack is touched, not even read, so its registration, if any, stays. Only what the object
/// alone can own goes: the IAM user tagged with its UID (made while the namespace was allowed
/// the stack) and its access key Secret.
async fn undo_outside_the_stack(
    obj: &InstanceRegistration,
    ctx: &Context,
    why: &str,
) -> std::result::Result<String, String> {
    let mut done = vec![format!(
        "{why}; nothing was done in the stack (a registration there is left as it is)"
    )];
    // No stack name: only the user recorded on status is looked at; and the stack's group is
    // left even if empty.
    match steps::cleanup_iam(ctx, obj, None, false).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => done.push(format!("deleted IAM user {}", users.join(", "))),
        Err(failure) => return Err(format!("IAM cleanup: {failure}")),
    }
    if steps::forget_secret(ctx, obj).await? {
        done.push("deleted the access key Secret".into());
    }
    Ok(done.join("; "))
}

/// Writes `new` to the status subresource with server-side apply, unless it means the same as
/// `old` (timestamps move only with a status flip, so equal means nothing changed), and publishes
/// one Event per condition whose status or reason changed.
///
/// The write is conditional on `version`, the resourceVersion the pass started from (then the
/// one this write made): a pass that ran on a copy older than the API server's is refused with a
/// conflict and runs again, so a field is never moved back.
async fn write_status(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    old: &InstanceRegistrationStatus,
    new: &InstanceRegistrationStatus,
    version: &mut Option<String>,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    patch_status(api, ctx, obj, new, version).await?;
    crate::failpoint::after("kube:PatchStatus");

    for condition in conditions::changed(&old.conditions, &new.conditions) {
        if let Some((kind, action)) = event_for(condition, &old.conditions) {
            let note = format!(
                "{}={:?}: {}",
                condition.r#type, condition.status, condition.message
            );
            publish(ctx, obj, kind, &condition.reason, action, &note).await;
        }
    }
    Ok(())
}

/// The status write itself: server-side apply, forced, conditional on `version` when known; on
/// success `version` is the object's new resourceVersion.
async fn patch_status(
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
pub async fn checkpoint(
    ctx: &Context,
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    version: &mut Option<String>,
) -> std::result::Result<(), String> {
    let api: Api<InstanceRegistration> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    patch_status(&api, ctx, obj, status, version)
        .await
        .map_err(|e| e.to_string())
}

/// Whether a changed condition is worth an Event, and of which type. Step conditions are (a
/// failure is a Warning); Ready is when it turns True or stops being True, since while False it
/// repeats the step that holds it up; the kstatus pair is bookkeeping for tools, not news.
fn event_for<'a>(
    condition: &'a crate::resource::Condition,
    old: &[crate::resource::Condition],
) -> Option<(EventType, &'a str)> {
    use conditions::{reasons, types};
    let failed = condition.status == ConditionStatus::False;
    match condition.r#type.as_str() {
        types::RECONCILING | types::STALLED => None,
        types::READY => {
            let was_ready = conditions::is_true(old, types::READY);
            let is_ready = condition.status == ConditionStatus::True;
            (was_ready != is_ready).then_some((
                if is_ready {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                "Ready",
            ))
        }
        _ if condition.reason == reasons::WAITING => None,
        _ => Some((
            if failed {
                EventType::Warning
            } else {
                EventType::Normal
            },
            // The action names the step, so the recorder keeps one event series per step.
            condition.r#type.as_str(),
        )),
    }
}

/// Publishes an Event on `obj`. A failure to publish is logged, never fatal: Events are a
/// courtesy, status is the record.
async fn publish(
    ctx: &Context,
    obj: &InstanceRegistration,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %crate::kube_error_summary(&error), "could not publish event");
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What to do after a reconcile failed: retry with this object's exponential backoff.
pub fn error_policy(obj: Arc<InstanceRegistration>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.next(&backoff_key(&obj), Schedule::TRANSIENT);
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels {
            result: "error".into(),
        })
        .inc();
    ctx.metrics
        .failures
        .get_or_create(&ReasonLabels {
            reason: error.metric_label().into(),
        })
        .inc();
    warn!(
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        error = %error,
        reason = error.metric_label(),
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` completes; reconciles in flight are allowed to finish.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let api: Api<InstanceRegistration> = match &settings.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    // Fail at once, and clearly, when the CRD is missing or the controller may not list the kind.
    api.list(&kube::api::ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list InstanceRegistrations (is the CRD installed? see `instance-registrar crd`): {}",
            crate::kube_error_summary(&e)
        )
    })?;
    tenancy::check_access(client.clone(), settings.watch_namespace.as_deref()).await?;
    let concurrency = settings.concurrency;
    info!(
        namespace = settings.watch_namespace.as_deref().unwrap_or("<all>"),
        concurrency, "starting controller"
    );
    let secrets: Api<PartialObjectMeta<Secret>> = match &settings.watch_namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let aws = Aws::from_env(Some(metrics.aws_interceptor()), settings.aws_timeouts).await;
    // The controller's own status writes must not start another pass (an install is not run
    // twice because its failure was written down): only what a person or the API server
    // changes does — the spec (generation, which deletion bumps too), finalizers and
    // annotations. Requeues and the resync interval cover the rest.
    let (store, writer) = reflector::store();
    let watch_health = health.clone();
    let changes = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        // The cache holds every object for the process's lifetime; the field managers' records
        // are most of an object's metadata and nothing here reads them.
        .modify(|obj| obj.managed_fields_mut().clear())
        .reflect(writer)
        // Readiness follows the watch: an error marks it down until events flow again.
        .inspect(move |event| watch_health.set_watch_alive(event.is_ok()))
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers)
                .combine(predicates::annotations),
            Default::default(),
        );
    metrics.count_objects_in(store.clone());
    // The Namespaces' annotations say which stacks their objects may use. Their watch runs on
    // its own, so that it can fill before the first pass (a pass that found its namespace not
    // yet known would flip a Ready object's status at every start); a namespace whose
    // annotations change re-runs its objects at once.
    let shutdown = shutdown.shared();
    let (namespaces, namespace_changes) =
        tenancy::watch(client.clone(), settings.watch_namespace.as_deref());
    let (changed_tx, changed_rx) = futures::channel::mpsc::unbounded::<String>();
    let namespace_watch = tokio::spawn(namespace_changes.for_each(move |name| {
        let _ = changed_tx.unbounded_send(name);
        std::future::ready(())
    }));
    let waited = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = namespaces.wait_until_ready() => break,
            _ = shutdown.clone() => {
                namespace_watch.abort();
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(10)) => warn!(
                waited_s = waited.elapsed().as_secs(),
                "waiting for the Namespace watch to list the namespaces"
            ),
        }
    }
    let ctx = Arc::new(Context::new(
        client,
        aws,
        store.clone(),
        namespaces,
        metrics,
        settings,
    ));
    let controller = Controller::for_stream(changes, store.clone());
    // A Secret that appears or changes re-runs the objects that name it, so fixing a missing or
    // wrong key takes effect at once rather than at the next backoff. Metadata only: the
    // controller never holds every Secret's content. With backoff, as the main watch: a watcher
    // retries a failed request at once, so while the API server is away (restarting, say) it
    // would spin on connection errors and flood the log with them.
    let secret_changes = watcher::watcher(secrets, watcher::Config::default().any_semantic())
        .default_backoff()
        .touched_objects();
    let in_namespace = store.clone();
    let namespace_changes = changed_rx.flat_map(move |namespace| {
        let objects: Vec<_> = in_namespace
            .state()
            .into_iter()
            .filter(|obj| obj.namespace().as_deref() == Some(namespace.as_str()))
            .map(|obj| ObjectRef::from_obj(&*obj))
            .collect();
        futures::stream::iter(objects)
    });
    controller
        .watches_stream(secret_changes, move |secret| {
            let namespace = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|obj| {
                    obj.namespace() == namespace && obj.spec.ssh.private_key_secret_ref.name == name
                })
                .map(|obj| ObjectRef::from_obj(&*obj))
                .collect::<Vec<_>>()
        })
        .reconcile_on(namespace_changes)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(object = %object.name, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(error, object)) => {
                    tracing::debug!(object = %object.name, error = %error, "reconcile failed")
                }
                Err(error) => warn!(error = %error, "controller error"),
            }
        })
        .await;
    namespace_watch.abort();
    info!("controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 3);
        assert_eq!(cut, "é…");
    }
}
