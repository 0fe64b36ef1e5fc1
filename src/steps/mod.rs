//! The reconcile as a sequence of steps. Each step looks at the world, acts only if the world is
//! not yet as wanted, records what it found on the status it is given, and reports one condition.
//! The first step that is not done ends the pass; [`summarize`] turns what the steps reported
//! into the conditions, phase and kstatus pair, and says when to look again.
//!
//! Adding a step is adding a variant to [`Step`] and a module beside this one: the loop around
//! them does not change.

mod ssh_key;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{self, Observation, reasons, types};
use crate::controller::Context;
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus, Phase};

/// The steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The Secret named by `ssh.privateKeySecretRef` holds a usable private key.
    SshKey,
}

/// The pipeline this build runs. Later steps (stack, target, credentials, install,
/// registration) are added here as they are built.
pub const PIPELINE: &[Step] = &[Step::SshKey];

impl Step {
    /// The condition this step reports.
    pub fn condition(self) -> &'static str {
        match self {
            Step::SshKey => types::SSH_KEY_READY,
        }
    }

    /// Runs the step for `obj`, recording what it finds on `status`.
    pub async fn run(
        self,
        obj: &InstanceRegistration,
        ctx: &Context,
        _status: &mut InstanceRegistrationStatus,
    ) -> Outcome {
        match self {
            Step::SshKey => ssh_key::check(obj, ctx).await,
        }
    }
}

/// What a step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step's condition holds: go on to the next step.
    Done(Observation),
    /// Under way and moving by itself (an install running, a registration pending): look again
    /// after the given time.
    Progressing(Observation, Duration),
    /// Cannot go on until a person changes something (the spec, a Secret): kstatus Stalled.
    Blocked(Observation),
    /// A failure that may pass (throttling, network, 5xx): retried with backoff.
    Retry(Observation),
}

impl Outcome {
    /// The observation to record on the step's condition.
    pub fn observation(&self) -> &Observation {
        match self {
            Outcome::Done(o)
            | Outcome::Progressing(o, _)
            | Outcome::Blocked(o)
            | Outcome::Retry(o) => o,
        }
    }
}

/// When to reconcile the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Everything is as wanted: look again at the slow resync interval to notice drift.
    Resync,
    /// Check again after this long.
    After(Duration),
    /// Blocked on a person: back off slowly (the fix may come without a spec change).
    BackoffBlocked,
    /// A transient failure: back off quickly.
    BackoffTransient,
}

/// Records the steps' `results` (in pipeline order, ending at the first step that was not done)
/// on `status` for `generation`, and derives Ready, Reconciling, Stalled and the phase.
pub fn summarize(
    status: &mut InstanceRegistrationStatus,
    pipeline: &[Step],
    results: &[(Step, Outcome)],
    generation: i64,
    now: &Time,
) -> Next {
    let conds = &mut status.conditions;
    for (step, outcome) in results {
        conditions::set(
            conds,
            step.condition(),
            outcome.observation().clone(),
            generation,
            now,
        );
    }
    // Steps after the one that stopped the pass were not evaluated for this generation.
    let stopped = results.iter().find(|(_, o)| !matches!(o, Outcome::Done(_)));
    if let Some((stopped_at, _)) = stopped {
        for later in pipeline.iter().skip_while(|s| *s != stopped_at).skip(1) {
            conditions::set(
                conds,
                later.condition(),
                Observation::unknown(
                    reasons::WAITING,
                    format!("waiting for {}", stopped_at.condition()),
                ),
                generation,
                now,
            );
        }
    }

    let (ready, reconciling, stalled, next) = match stopped {
        None if pipeline.iter().any(|s| s.condition() == types::REGISTERED) => (
            Observation::holds(reasons::SUCCEEDED, "the host is registered"),
            Observation::fails(reasons::RECONCILED, "nothing left to do"),
            Observation::fails(reasons::RECONCILED, "not stalled"),
            Next::Resync,
        ),
        // Every step this build has passed, but it cannot register hosts yet: say so rather than
        // report Ready for something that did not happen.
        None => (
            Observation::fails(
                reasons::NOT_IMPLEMENTED,
                "inputs are valid; this build of the controller does not register hosts yet",
            ),
            Observation::fails(reasons::RECONCILED, "nothing this build can do"),
            Observation::fails(reasons::RECONCILED, "not stalled"),
            Next::Resync,
        ),
        Some((_, outcome)) => {
            let o = outcome.observation();
            let ready = Observation::fails(o.reason, o.message.clone());
            match outcome {
                Outcome::Done(_) => unreachable!("a done step does not stop the pass"),
                Outcome::Progressing(_, after) => (
                    ready,
                    Observation::holds(o.reason, o.message.clone()),
                    Observation::fails(reasons::PROGRESSING, "not stalled"),
                    Next::After(*after),
                ),
                Outcome::Retry(_) => (
                    ready,
                    Observation::holds(o.reason, o.message.clone()),
                    Observation::fails(reasons::PROGRESSING, "not stalled; retrying"),
                    Next::BackoffTransient,
                ),
                Outcome::Blocked(_) => (
                    ready,
                    Observation::fails(o.reason, "cannot progress until the input is fixed"),
                    Observation::holds(o.reason, o.message.clone()),
                    Next::BackoffBlocked,
                ),
            }
        }
    };
    status.message = Some(ready.message.clone());
    conditions::set(conds, types::READY, ready, generation, now);
    conditions::set(conds, types::RECONCILING, reconciling, generation, now);
    conditions::set(conds, types::STALLED, stalled, generation, now);
    status.phase = Some(phase(&status.conditions));
    status.observed_generation = Some(generation);
    next
}

/// Records that `spec.suspend` is set: nothing is done; Reconciling and Stalled say why, and the
/// step conditions keep what they last said (with the generation they were computed for).
pub fn summarize_suspended(status: &mut InstanceRegistrationStatus, generation: i64, now: &Time) {
    let conds = &mut status.conditions;
    if conditions::get(conds, types::READY).is_none() {
        conditions::set(
            conds,
            types::READY,
            Observation::unknown(reasons::SUSPENDED, "spec.suspend is true"),
            generation,
            now,
        );
    }
    conditions::set(
        conds,
        types::RECONCILING,
        Observation::fails(
            reasons::SUSPENDED,
            "spec.suspend is true: the controller takes no action",
        ),
        generation,
        now,
    );
    conditions::set(
        conds,
        types::STALLED,
        Observation::fails(reasons::SUSPENDED, "suspended, not stalled"),
        generation,
        now,
    );
    status.message = Some("suspended: the controller takes no action".to_owned());
    status.observed_generation = Some(generation);
    status.phase = Some(phase(&status.conditions));
}

/// The phase a set of conditions amounts to.
pub fn phase(conds: &[crate::resource::Condition]) -> Phase {
    let is = |t| conditions::is_true(conds, t);
    if is(types::REGISTERED) && is(types::READY) {
        Phase::Registered
    } else if is(types::STALLED) {
        Phase::Failed
    } else if is(types::AGENT_INSTALLED) {
        Phase::Registering
    } else if is(types::CREDENTIALS_READY) && is(types::TARGET_RESOLVED) {
        Phase::Installing
    } else {
        Phase::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ConditionStatus;
    use k8s_openapi::jiff::Timestamp;

    fn now() -> Time {
        Time(Timestamp::from_second(1_000).unwrap())
    }

    fn cond<'a>(s: &'a InstanceRegistrationStatus, t: &str) -> &'a crate::resource::Condition {
        conditions::get(&s.conditions, t).unwrap_or_else(|| panic!("no {t} condition"))
    }

    #[test]
    fn a_blocked_step_stalls_the_object_and_fails_ready_with_its_reason() {
        let mut s = InstanceRegistrationStatus::default();
        let results = [(
            Step::SshKey,
            Outcome::Blocked(Observation::fails(
                reasons::SECRET_NOT_FOUND,
                "no such Secret",
            )),
        )];
        let next = summarize(&mut s, PIPELINE, &results, 3, &now());
        assert_eq!(next, Next::BackoffBlocked);
        assert_eq!(
            cond(&s, types::SSH_KEY_READY).status,
            ConditionStatus::False
        );
        assert_eq!(cond(&s, types::READY).reason, reasons::SECRET_NOT_FOUND);
        assert_eq!(cond(&s, types::STALLED).status, ConditionStatus::True);
        assert_eq!(cond(&s, types::RECONCILING).status, ConditionStatus::False);
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.observed_generation, Some(3));
        assert!(s.conditions.iter().all(|c| c.observed_generation == 3));
    }

    #[test]
    fn a_transient_failure_is_reconciling_not_stalled() {
        let mut s = InstanceRegistrationStatus::default();
        let results = [(
            Step::SshKey,
            Outcome::Retry(Observation::fails(reasons::KUBERNETES_API_ERROR, "timeout")),
        )];
        assert_eq!(
            summarize(&mut s, PIPELINE, &results, 1, &now()),
            Next::BackoffTransient
        );
        assert_eq!(cond(&s, types::RECONCILING).status, ConditionStatus::True);
        assert_eq!(cond(&s, types::STALLED).status, ConditionStatus::False);
        assert_eq!(s.phase, Some(Phase::Pending));
    }

    #[test]
    fn passing_every_step_of_a_pipeline_without_registration_is_never_ready() {
        let mut s = InstanceRegistrationStatus::default();
        let results = [(
            Step::SshKey,
            Outcome::Done(Observation::holds(reasons::SUCCEEDED, "ok")),
        )];
        summarize(&mut s, PIPELINE, &results, 1, &now());
        assert_eq!(cond(&s, types::READY).status, ConditionStatus::False);
        assert_eq!(cond(&s, types::READY).reason, reasons::NOT_IMPLEMENTED);
    }

    #[test]
    fn summarizing_the_same_results_twice_changes_nothing() {
        let mut s = InstanceRegistrationStatus::default();
        let results = [(
            Step::SshKey,
            Outcome::Blocked(Observation::fails(
                reasons::SECRET_NOT_FOUND,
                "no such Secret",
            )),
        )];
        summarize(&mut s, PIPELINE, &results, 1, &now());
        let first = s.clone();
        let later = Time(Timestamp::from_second(9_999).unwrap());
        summarize(&mut s, PIPELINE, &results, 1, &later);
        assert_eq!(s, first);
    }

    #[test]
    fn suspending_keeps_step_conditions_and_says_why() {
        let mut s = InstanceRegistrationStatus::default();
        let results = [(
            Step::SshKey,
            Outcome::Blocked(Observation::fails(
                reasons::SECRET_NOT_FOUND,
                "no such Secret",
            )),
        )];
        summarize(&mut s, PIPELINE, &results, 1, &now());
        summarize_suspended(&mut s, 2, &now());
        assert_eq!(cond(&s, types::SSH_KEY_READY).observed_generation, 1);
        assert_eq!(cond(&s, types::RECONCILING).reason, reasons::SUSPENDED);
        assert_eq!(cond(&s, types::STALLED).status, ConditionStatus::False);
        assert_eq!(s.observed_generation, Some(2));
    }
}
