//! The pipeline: the steps of an object's service ([`crate::context::Service::pipeline`]) run in
//! order, the first that is not done ending the pass. The steps every service shares (the SSH
//! key, the host) and the rules every service keeps (nothing is installed twice, nothing is
//! needed for a host registered already) are applied here; every other step is the service's
//! own ([`crate::context::Service::run`]).

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{self, Observation, Outcome, reasons};
use crate::context::{Context, Facts, Service, Step};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::steps::{host, ssh_key};

/// How long a pass that installed the agent goes on looking for the agent's registration before
/// it ends. An agent registers within a second or two of its install (the service may then hold
/// it in a state such as `registering` for longer): looked for here, the registration is
/// usually on the status the pass writes at its end, instead of a status saying "installed,
/// waiting" written first and the registration one poll later.
pub(crate) const LOOK_AFTER_INSTALL: Duration = Duration::from_secs(3);
/// How often the pass looks meanwhile (a stack's instance list is shared for a second).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Runs `obj`'s pipeline until a step is not done; returns each step's outcome, in order. Each
/// outcome is recorded on `status` at once, so that a status written before the pass ends (the
/// install's start) shows what the steps before found.
///
/// A pass that installed the agent and finds the service waiting for its registration runs the
/// pipeline again at once, then every [`LOOK_EVERY`], for [`LOOK_AFTER_INSTALL`] at most, as the next pass
/// would, but without writing status and being requeued in between. The pass runs detached
/// then (it let go of its reconcile worker before the install); a deletion of the object waits
/// for it, those few seconds at most.
pub(crate) async fn run(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    now: &Time,
) -> Vec<(Step, Outcome)> {
    let installed_before = status.agent_installed_at.is_some();
    let mut results = run_once(obj, ctx, facts, status, now).await;
    if installed_before {
        return results;
    }
    let installed = results.clone();
    let until = Instant::now() + LOOK_AFTER_INSTALL;
    // The first look is at once: the run that installed looked up the registration before the
    // install.
    let mut wait = Duration::ZERO;
    while status.agent_installed_at.is_some()
        && matches!(
            results.last(),
            Some((Step::Registered, Outcome::Progressing(..)))
        )
        && Instant::now() + wait <= until
    {
        tokio::time::sleep(wait).await;
        results = run_once(obj, ctx, facts, status, now).await;
        wait = LOOK_EVERY;
    }
    // The host's own words stay: what it answered, and how its install went (a look again only
    // says the install is done, or the host no longer needs asking).
    let generation = obj.metadata.generation.unwrap_or_default();
    for (step, outcome) in installed {
        if !matches!(step, Step::Host | Step::Agent) || !matches!(outcome, Outcome::Done(_)) {
            continue;
        }
        if let Some(again) = results.iter_mut().find(|(s, _)| *s == step)
            && matches!(again.1, Outcome::Done(_))
        {
            record(status, step, &outcome, generation, now);
            again.1 = outcome;
        }
    }
    results
}

/// Sets `step`'s condition on `status` to what `outcome` observed.
fn record(
    status: &mut InstanceRegistrationStatus,
    step: Step,
    outcome: &Outcome,
    generation: i64,
    now: &Time,
) {
    conditions::set(
        &mut status.conditions,
        step.condition(),
        outcome.observation().clone(),
        generation,
        now,
    );
}

/// Runs `obj`'s pipeline once, until a step is not done.
async fn run_once(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    now: &Time,
) -> Vec<(Step, Outcome)> {
    let service = ctx.service_of(obj);
    let generation = obj.metadata.generation.unwrap_or_default();
    status.service = Some(service.name().to_owned());
    let mut results = Vec::with_capacity(service.pipeline().len());
    for &step in service.pipeline() {
        let started = std::time::Instant::now();
        let outcome = run_step(service, step, obj, ctx, facts, status).await;
        ctx.metrics.step(step.condition(), started.elapsed());
        record(status, step, &outcome, generation, now);
        let done = matches!(outcome, Outcome::Done(_));
        results.push((step, outcome));
        if !done {
            break;
        }
    }
    results
}

/// Runs one step of `service`'s pipeline for `obj`.
async fn run_step(
    service: &dyn Service,
    step: Step,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let registered_as = service.registered_as(facts).map(str::to_owned);
    match step {
        Step::SshKey => match registered_as {
            // Installed by this object: the key did its work and is not needed while the host
            // stays registered (the reason stays Succeeded: nothing changed).
            Some(id) if status.agent_installed_at.is_some() => Outcome::Done(Observation::holds(
                reasons::SUCCEEDED,
                format!("the agent was installed; not needed while the host is registered as {id}"),
            )),
            Some(id) => Outcome::Done(Observation::holds(
                reasons::NOT_NEEDED,
                format!("the host is already registered as {id}"),
            )),
            None => ssh_key::check(obj, ctx, facts).await,
        },
        Step::Host => host::check(service, obj, ctx, facts, status).await,
        // Installed by this object, or registered already: nothing to install (the host is not
        // touched again unless the registration has to be made anew).
        Step::Agent if status.agent_installed_at.is_some() => Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            format!(
                "the agent install finished at {}",
                status
                    .agent_installed_at
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or_default()
            ),
        )),
        Step::Agent if registered_as.is_some() => Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!(
                "the host is already registered as {}",
                registered_as.unwrap_or_default()
            ),
        )),
        _ => service.run(step, obj, ctx, facts, status).await,
    }
}
