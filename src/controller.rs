//! The controller: watches `InstanceRegistration`s, runs the [`pipeline`](crate::pipeline) for each
//! behind kube-runtime's finalizer, writes status with server-side apply only when its meaning
//! changed, publishes an Event for each condition that changed, and backs off per object.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use crate::aws::Aws;
use crate::backoff::Schedule;
use crate::conditions::{self, Undone};
use crate::context::Facts;
use crate::context::patch_status_rebased;
pub(crate) use crate::context::{Context, SSM_SETUP_URL, Settings};
use crate::http::Health;
use crate::metrics::{Metrics, ReasonLabels, ResultLabels};
use crate::resource::{
    ConditionStatus, DeletionPolicy, FINALIZER, InstanceRegistration, InstanceRegistrationStatus,
};
use crate::services::Services;
use crate::steps::{self, Next};
use crate::tenancy::{self, Verdict};
use crate::{Error, Result};

/// The key an object's backoff is kept under: UID, so a re-created object starts afresh.
fn backoff_key(obj: &InstanceRegistration) -> String {
    obj.uid()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

/// Reconciles one object: the finalizer is the only top-level action; it dispatches to
/// [`apply`] while the object lives and to [`cleanup`] once it is being deleted. While a pass of
/// the object runs detached (an SSH session), nothing else is done for it: the reconcile is made
/// up for when that pass ends.
pub(crate) async fn reconcile(obj: Arc<InstanceRegistration>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = obj.namespace().ok_or(Error::NotNamespaced)?;
    if let Some(uid) = obj.uid()
        && ctx.detached.busy(&uid)
    {
        return Ok(Action::await_change());
    }
    let api: Api<InstanceRegistration> = Api::namespaced(ctx.client.clone(), &namespace);
    let span = info_span!("reconcile", namespace = %namespace, name = %obj.name_any());
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => apply(obj, api.clone(), ctx.clone()).await,
            Finalizer::Cleanup(obj) => cleanup(&obj, &api, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Runs a pass of `obj` ([`pass`]) on a task of its own. The reconcile waits for it, unless the
/// pass lets go of it ([`crate::context::Facts::detach`], before an SSH session) or takes longer
/// than [`DETACH_AFTER`] (its AWS calls wait for their turn in the services' budgets, or the
/// services are slow): then the reconcile returns, freeing its worker, and the pass goes on by
/// itself; when it ends, the object is reconciled again after the delay the pass asked for (at
/// once if a reconcile came meanwhile), and a failure is counted and backed off as
/// [`error_policy`] does. So the reconcile workers are never all held by passes of a wave:
/// a deletion, and the first look at a new object, start at once whatever the wave waits on.
async fn apply(
    obj: Arc<InstanceRegistration>,
    api: Api<InstanceRegistration>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let (detach, detached) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(
        {
            let (obj, ctx) = (obj.clone(), ctx.clone());
            // Its AWS calls wait behind those of older objects' passes, and go before newer ones'.
            let created = obj
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second());
            let seniority = crate::budget::Seniority::new(created, std::time::Instant::now());
            crate::budget::with_priority(crate::budget::Priority::Pass(seniority), async move {
                pass(&obj, &api, &ctx, detach).await
            })
        }
        .in_current_span(),
    );
    tokio::select! {
        ended = &mut task => {
            return match ended.map_err(|e| Error::PassFailed(e.to_string()))? {
                Ok(Some(after)) => Ok(Action::requeue(after)),
                Ok(None) => Ok(Action::await_change()),
                Err(error) => Err(error),
            };
        }
        Ok(()) = detached => {}
        () = tokio::time::sleep(DETACH_AFTER) => {}
    }
    let Some(uid) = obj.uid() else {
        // Not from the API server (no UID): nothing can wake it; wait for the pass here.
        return match task.await.map_err(|e| Error::PassFailed(e.to_string()))?? {
            Some(after) => Ok(Action::requeue(after)),
            None => Ok(Action::await_change()),
        };
    };
    ctx.detached.started(&uid);
    tokio::spawn(async move {
        let after = match task.await.map_err(|e| Error::PassFailed(e.to_string())) {
            Ok(Ok(after)) => after,
            Ok(Err(error)) | Err(error) => Some(error_delay(&obj, &error, &ctx)),
        };
        let missed = ctx.detached.ended(&uid);
        match after {
            _ if missed => ctx.detached.wake(&obj),
            Some(after) => {
                tokio::time::sleep(after).await;
                ctx.detached.wake(&obj);
            }
            None => {}
        }
    });
    Ok(Action::await_change())
}

/// Brings the world to match `obj` as far as the steps can, then records what they found;
/// returns when to look again (`None`: at the next change). `detach` is the pass's way to let go
/// of its reconcile ([`crate::context::Facts::detach`]).
async fn pass(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    detach: tokio::sync::oneshot::Sender<()>,
) -> Result<Option<Duration>> {
    let obj = &*newest(obj, api, ctx).await?;
    let generation = obj.metadata.generation.unwrap_or_default();
    let old = obj.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let now = Time(Timestamp::now());
    let key = backoff_key(obj);

    let mut version = obj.metadata.resource_version.clone();
    if obj.spec.suspend {
        steps::summarize_suspended(&mut new, generation, &now);
        write_status(obj, api, ctx, &old, &new, &mut version, None).await?;
        ctx.backoff.reset(&key);
        return Ok(None);
    }

    // Another shard's install may still be running on the host (the object was relabelled
    // meanwhile): nothing is done until it has ended for sure.
    if let Some((why, left)) = steps::install_elsewhere(obj, ctx.shard()) {
        steps::summarize_install_elsewhere(&mut new, &why, generation, &now);
        write_status(obj, api, ctx, &old, &new, &mut version, None).await?;
        return Ok(Some(left));
    }

    let started = std::time::Instant::now();
    let mut facts = Facts::new(version, Some(detach));
    let results = crate::pipeline::run(obj, ctx, &mut facts, &mut new, &now).await;
    let pipeline = ctx.service_of(obj).pipeline();
    let next = steps::summarize(&mut new, pipeline, &results, generation, &now);
    write_status(
        obj,
        api,
        ctx,
        &old,
        &new,
        &mut facts.resource_version,
        facts.written.as_ref(),
    )
    .await?;
    record_pass(ctx, obj, &old, &new, started.elapsed());

    Ok(Some(match next {
        Next::Resync => {
            ctx.backoff.reset(&key);
            ctx.settings.resync
        }
        Next::After(after) => {
            ctx.backoff.reset(&key);
            after
        }
        Next::BackoffBlocked => ctx.backoff.next(&key, Schedule::BLOCKED),
        Next::BackoffTransient => ctx.backoff.next(&key, Schedule::TRANSIENT),
    }))
}

/// The newest copy of `obj`. The watch's copy can lag behind this controller's own last status
/// write (a requeue, or the reconcile a detached pass makes up for, comes before the watch
/// event): then the API server's copy, so that a pass neither redoes work nor writes an older
/// status back, and a deletion sees how the install it waited for ended.
async fn newest<'a>(
    obj: &'a InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
) -> Result<std::borrow::Cow<'a, InstanceRegistration>> {
    if !ctx.versions.newer_than(obj) {
        return Ok(std::borrow::Cow::Borrowed(obj));
    }
    match crate::context::read(api, &obj.name_any()).await? {
        Some(fresh) => {
            ctx.versions.saw(&fresh);
            Ok(std::borrow::Cow::Owned(fresh))
        }
        // Gone meanwhile: what the watch had is all there is.
        None => Ok(std::borrow::Cow::Borrowed(obj)),
    }
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
    info!(policy = ?obj.spec.deletion_policy, "the object is being deleted: cleaning up");
    let obj = &*newest(obj, api, ctx).await?;
    let key = backoff_key(obj);
    if obj.spec.suspend || obj.spec.deletion_policy == DeletionPolicy::Retain {
        let note = if obj.spec.suspend {
            "suspended: the registration and IAM entities are left as they are"
        } else {
            "deletionPolicy Retain: the registration and IAM entities are left as they are"
        };
        publish_after(ctx, obj, EventType::Normal, "Retained", "Cleanup", note);
        ctx.backoff.reset(&key);
        ctx.versions.forget(obj);
        return Ok(Action::await_change());
    }
    match undo(obj, ctx).await {
        // An install that may still run on the host (its pass was cut, or runs in another
        // shard) could register the host after the undo looked and found nothing: the finalizer
        // stays until the registration is seen and undone, or the host has stopped the install
        // for sure.
        Ok(undone)
            if !undone.registration_undone
                && steps::install_may_run_until(obj)
                    .is_some_and(|until| Timestamp::now() < until) =>
        {
            let started = obj
                .status
                .as_ref()
                .and_then(|s| s.install_started_at.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let until = steps::install_may_run_until(obj).unwrap_or_default();
            let problem = format!(
                "{}; the install started at {started} may still be running on the host (no pass \
                 here runs it): the finalizer stays until its registration is seen and undone, or \
                 the host has stopped it for sure at {until} (deletionPolicy: Retain lets go at \
                 once)",
                undone.summary
            );
            Err(cleanup_incomplete(obj, api, ctx, problem).await)
        }
        Ok(Undone { summary, .. }) => {
            info!(name = %obj.name_any(), %summary, "cleaned up");
            let refused = matches!(ctx.verdict(obj), Verdict::Refused(_));
            let (kind, reason) = if refused {
                (EventType::Warning, conditions::reasons::STACK_NOT_ALLOWED)
            } else {
                (EventType::Normal, "Deregistered")
            };
            publish_after(ctx, obj, kind, reason, "Cleanup", &summary);
            ctx.backoff.reset(&key);
            ctx.versions.forget(obj);
            Ok(Action::await_change())
        }
        Err(problem) => Err(cleanup_incomplete(obj, api, ctx, problem).await),
    }
}

/// Says on status why a deletion cannot finish yet; the error to return, so that the finalizer
/// stays and the deletion is retried with the object's backoff (the finalizer helper drops the
/// finalizer on success, and work is left undone).
async fn cleanup_incomplete(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    problem: String,
) -> Error {
    let old = obj.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let now = Time(Timestamp::now());
    let generation = obj.metadata.generation.unwrap_or_default();
    steps::summarize_deleting(&mut new, &problem, generation, &now);
    let mut version = obj.metadata.resource_version.clone();
    if let Err(error) = write_status(obj, api, ctx, &old, &new, &mut version, None).await {
        return error;
    }
    Error::CleanupIncomplete(problem)
}

/// The undo of a registration, by the object's service; returns a summary, or what stopped it.
/// Its AWS calls go before those of every pass waiting for a turn ([`crate::budget::urgent`]): a
/// deletion in a wave makes a few calls, and should not wait behind the wave's hundreds.
async fn undo(obj: &InstanceRegistration, ctx: &Context) -> std::result::Result<Undone, String> {
    crate::budget::urgent(ctx.service_of(obj).undo(obj, ctx)).await
}

/// Writes `new` to the status subresource with server-side apply, unless it means the same as
/// `old` (timestamps move only with a status flip, so equal means nothing changed), and publishes
/// one Event per condition whose status or reason changed.
///
/// The write is conditional on `version`, the resourceVersion the pass started from (then the
/// one this write made): a pass that ran on a copy older than the API server's is refused with a
/// conflict and runs again, so a field is never moved back. When only the object's metadata or
/// spec moved (its status is still `written`, the pass's last checkpoint, or else `old`), the
/// write is made again against the new version ([`patch_status_rebased`]).
async fn write_status(
    obj: &InstanceRegistration,
    api: &Api<InstanceRegistration>,
    ctx: &Context,
    old: &InstanceRegistrationStatus,
    new: &InstanceRegistrationStatus,
    version: &mut Option<String>,
    written: Option<&InstanceRegistrationStatus>,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let base = written.unwrap_or(old);
    patch_status_rebased(api, ctx, obj, new, base, version).await?;
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
    let event = event(type_, reason, action, note);
    send(&ctx.recorder, &event, &obj.object_ref(&())).await;
}

/// [`publish`] on a task of its own, for a deletion that is done: the finalizer goes without
/// waiting for the Event (an API server slow to answer made a `Retain` deletion wait seconds on
/// its Event alone), which is published after, on the object's last name and UID.
fn publish_after(
    ctx: &Context,
    obj: &InstanceRegistration,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = event(type_, reason, action, note);
    let (recorder, reference) = (ctx.recorder.clone(), obj.object_ref(&()));
    tokio::spawn(async move { send(&recorder, &event, &reference).await }.in_current_span());
}

/// An Event of the controller's: its note truncated to what the API server takes.
fn event(type_: EventType, reason: &str, action: &str, note: &str) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(conditions::truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    }
}

/// Sends `event` about `reference`; a failure is logged.
async fn send(
    recorder: &kube::runtime::events::Recorder,
    event: &Event,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    if let Err(error) = recorder.publish(event, reference).await {
        warn!(error = %crate::kube_error_summary(&error), "could not publish event");
    }
}

/// What to do after a reconcile failed: retry with this object's exponential backoff.
pub(crate) fn error_policy(
    obj: Arc<InstanceRegistration>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    Action::requeue(error_delay(&obj, error, &ctx))
}

/// Counts and logs a failed pass of `obj`; returns when to try again (the object's backoff).
fn error_delay(obj: &InstanceRegistration, error: &Error, ctx: &Context) -> Duration {
    let delay = ctx.backoff.next(&backoff_key(obj), Schedule::TRANSIENT);
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
    delay
}

/// The APIs of kind `K` where the controller watches: one for all namespaces, or one per
/// namespace watched.
fn apis<K>(client: &Client, watched: &crate::watches::Watched) -> Vec<Api<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match watched.namespaces.as_slice() {
        [] => vec![Api::all(client.clone())],
        namespaces => namespaces
            .iter()
            .map(|namespace| Api::namespaced(client.clone(), namespace))
            .collect(),
    }
}

/// How long a stopping controller waits for passes in an SSH session to end.
const DETACHED_GRACE: Duration = Duration::from_secs(10);

/// How long a pass may hold its reconcile worker before it goes on detached ([`apply`]): passes
/// that find everything done (a resync) end within it, on the worker, as kube-runtime runs them;
/// those that wait (on AWS, on a host) let the worker go.
const DETACH_AFTER: Duration = Duration::from_millis(250);

/// Runs the controller until `shutdown` completes; reconciles in flight are allowed to finish.
pub(crate) async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let watched = &settings.watched;
    // Fail at once, and clearly, when the CRD is missing or the controller may not list the kind
    // where it watches.
    for api in apis::<InstanceRegistration>(&client, watched) {
        api.list(&kube::api::ListParams::default().limit(1))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list InstanceRegistrations (is the CRD installed? see `instance-registrar crd`): {}",
                    crate::kube_error_summary(&e)
                )
            })?;
    }
    tenancy::check_access(client.clone(), &watched.namespaces).await?;
    let concurrency = settings.concurrency;
    info!(
        watching = %watched.describe(),
        concurrency, "starting controller"
    );
    let mut settings = settings;
    settings.cluster_id = crate::audit::cluster_id(&client).await;
    // One budget of calls per service, cut when the service throttles (the counter sees it).
    let budgets = Arc::new(crate::budget::Budgets::new(
        settings.aws_calls_per_second,
        Some(metrics.clone()),
    ));
    let throttled = budgets.clone();
    let counter =
        metrics
            .aws_interceptor()
            .on_throttled(Arc::new(move |service: &str, operation: &str| {
                throttled.throttled(service, operation)
            }));
    let aws = Aws::from_env(Some(counter), settings.aws_timeouts, Some(budgets)).await;
    let services = Box::new(Services::default());
    run_with(client, aws, services, settings, metrics, health, shutdown).await
}

/// [`run`] with the AWS clients and the services given, once access is checked: the watches
/// and the Namespace store are set up, the controller runs until `shutdown`, then the detached
/// passes get a moment to end.
pub(crate) async fn run_with(
    client: Client,
    aws: Aws,
    services: Box<dyn crate::context::Registry>,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let watched = settings.watched.clone();
    let concurrency = settings.concurrency;
    let (store, writer) = reflector::store();
    let changes = object_changes(&client, &watched, writer, health.clone());
    metrics.count_objects_in(store.clone());
    // The Namespaces' annotations say which stacks their objects may use. Their watch runs on
    // its own, so that it can fill before the first pass (a pass that found its namespace not
    // yet known would flip a Ready object's status at every start); a namespace whose
    // annotations change re-runs its objects at once.
    let shutdown = shutdown.shared();
    let (namespaces, namespace_changes) = tenancy::watch(client.clone(), &watched.namespaces);
    let (changed_tx, changed_rx) = futures::channel::mpsc::unbounded::<String>();
    let namespace_watch = tokio::spawn(namespace_changes.for_each(move |name| {
        let _ = changed_tx.unbounded_send(name);
        std::future::ready(())
    }));
    tokio::select! {
        _ = namespaces_listed(&namespaces) => {}
        _ = shutdown.clone() => {
            namespace_watch.abort();
            return Ok(());
        }
    }
    // Detached passes (SSH sessions) wake their object through this when they end.
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context::new(
        client,
        aws,
        store.clone(),
        namespaces,
        metrics,
        settings,
        crate::context::Detached::new(wake),
        services,
    ));
    let audit = tokio::spawn(crate::audit::run(ctx.clone()));
    let controller = Controller::for_stream(changes, store.clone());
    // A Secret that appears or changes re-runs the objects that name it, so fixing a missing or
    // wrong key takes effect at once rather than at the next backoff. Metadata only: the
    // controller never holds every Secret's content. With backoff, as the main watch: a watcher
    // retries a failed request at once, so while the API server is away (restarting, say) it
    // would spin on connection errors and flood the log with them.
    let secret_changes = futures::stream::select_all(
        apis::<PartialObjectMeta<Secret>>(&ctx.client, &watched)
            .into_iter()
            .map(|secrets| {
                watcher::watcher(secrets, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .touched_objects()
                    .boxed()
            }),
    );
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
                    obj.namespace() == namespace && obj.spec.ssh.key_refs().any(|r| r.name == name)
                })
                .map(|obj| ObjectRef::from_obj(&*obj))
                .collect::<Vec<_>>()
        })
        .reconcile_on(futures::stream::select(namespace_changes, woken))
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
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
    audit.abort();
    stop(&ctx).await;
    Ok(())
}

/// The watched objects' changes that start a pass, kept in the store `writer` fills. The
/// controller's own status writes must not start another pass (an install is not run twice
/// because its failure was written down): only what a person or the API server changes does —
/// the spec (generation, which deletion bumps too), finalizers and annotations. Requeues and the
/// resync interval cover the rest.
fn object_changes(
    client: &Client,
    watched: &crate::watches::Watched,
    writer: reflector::store::Writer<InstanceRegistration>,
    health: Arc<Health>,
) -> impl futures::Stream<Item = Result<InstanceRegistration, watcher::Error>> + Send + 'static {
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = &watched.selector {
        // A shard: only the objects it is given.
        config = config.labels(selector);
    }
    let sources = apis::<InstanceRegistration>(client, watched)
        .into_iter()
        .map(|api| {
            watcher(api, config.clone())
                .default_backoff()
                // The cache holds every object for the process's lifetime; the field managers'
                // records are most of an object's metadata and nothing here reads them.
                .modify(|obj| obj.managed_fields_mut().clear())
        })
        .collect();
    crate::watches::merge(sources)
        .reflect(writer)
        // Readiness follows the watch: an error marks it down until events flow again.
        .inspect(move |event| health.set_watch_alive(event.is_ok()))
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers)
                .combine(predicates::annotations),
            Default::default(),
        )
}

/// Returns once the Namespace watch has listed the namespaces, saying so every 10 s meanwhile.
async fn namespaces_listed(namespaces: &reflector::Store<PartialObjectMeta<Namespace>>) {
    let waited = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = namespaces.wait_until_ready() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => warn!(
                waited_s = waited.elapsed().as_secs(),
                "waiting for the Namespace watch to list the namespaces"
            ),
        }
    }
}

/// Gives the detached passes (SSH sessions) a moment to end; an install cut here goes on on the
/// host under its lock and time limit, and the next controller finds its registration.
async fn stop(ctx: &Context) {
    let waited = std::time::Instant::now();
    while ctx.detached.in_flight() > 0 && waited.elapsed() < DETACHED_GRACE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = ctx.detached.in_flight();
    if cut > 0 {
        warn!(
            passes = cut,
            "stopping with passes still in their SSH session; they are cut"
        );
    }
    info!("controller stopped");
}
