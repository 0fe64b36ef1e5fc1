//! What status says of a pass as a whole: the step conditions a pass recorded summed up into
//! Ready, Reconciling, Stalled and the phase ([`summarize`]), and the same for a pass that did
//! not run its steps (suspended, an install in another shard, a deletion held up) or is in the
//! middle of an install ([`installing`]). Shared by every service; knows none.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::conditions::{self, Observation, Outcome, reasons, types};
use crate::context::{Context, Step};
use crate::resource::{InstanceRegistrationStatus, Phase};

/// The wait for the service to list a host after its install, shared by both services: until
/// `settings.registrationTimeout` has passed since `status.agentInstalledAt` it is Registering
/// (looked at again after `poll`); after that the install is tried again (`RegistrationTimeout`,
/// blocked backoff). `listed` says what the service is waited for, e.g. "OpsWorks to list the
/// instance".
pub(crate) fn wait_for_registration(
    ctx: &Context,
    status: &mut InstanceRegistrationStatus,
    listed: &str,
    poll: Duration,
) -> Outcome {
    let Some(installed) = &status.agent_installed_at else {
        return Outcome::Progressing(
            Observation::unknown(reasons::WAITING, "the agent is not installed yet"),
            poll,
        );
    };
    let waited = k8s_openapi::jiff::Timestamp::now()
        .duration_since(installed.0)
        .unsigned_abs();
    let timeout = ctx.settings.registration_timeout;
    if waited > timeout {
        // Try the install again after the (blocked) backoff.
        status.agent_installed_at = None;
        return Outcome::Blocked(Observation::fails(
            reasons::REGISTRATION_TIMEOUT,
            format!(
                "the agent was installed {}s ago and still no {listed} (timeout {}s); the \
                 install will be tried again",
                waited.as_secs(),
                timeout.as_secs()
            ),
        ));
    }
    // The message names the time, not the seconds since: a message that changed on every poll
    // would rewrite status on every poll.
    Outcome::Progressing(
        Observation::unknown(
            reasons::REGISTERING,
            format!(
                "the agent was installed at {}; waiting for {listed} (timeout {}s)",
                installed.0,
                timeout.as_secs()
            ),
        ),
        poll,
    )
}

/// When to reconcile the object again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
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
pub(crate) fn summarize(
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

    // Ready only when every step of the pipeline ran in this pass and is done.
    let all_done = pipeline.iter().all(|step| {
        results
            .iter()
            .any(|(s, o)| s == step && matches!(o, Outcome::Done(_)))
    });
    let (ready, reconciling, stalled, next) = match stopped {
        None if all_done && pipeline.iter().any(|s| s.condition() == types::REGISTERED) => (
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

/// Records on `status` that `agent` is being installed on `host` since `now`: what `kubectl get
/// ir` shows while the install runs (written before it starts; the pass's end records how it
/// ended).
pub(crate) fn installing(
    obj: &crate::resource::InstanceRegistration,
    status: &mut InstanceRegistrationStatus,
    agent: &str,
    host: &str,
    now: &Time,
) {
    let generation = obj.metadata.generation.unwrap_or_default();
    let said = format!("installing {agent} on {host} (started at {})", now.0);
    let conds = &mut status.conditions;
    let installing = Observation::unknown(reasons::INSTALLING, said.clone());
    conditions::set(conds, types::AGENT_INSTALLED, installing, generation, now);
    let ready = Observation::fails(reasons::INSTALLING, said.clone());
    conditions::set(conds, types::READY, ready, generation, now);
    let reconciling = Observation::holds(reasons::INSTALLING, said.clone());
    conditions::set(conds, types::RECONCILING, reconciling, generation, now);
    let stalled = Observation::fails(reasons::PROGRESSING, "not stalled");
    conditions::set(conds, types::STALLED, stalled, generation, now);
    status.message = Some(said);
    status.phase = Some(Phase::Installing);
}

/// Records that `spec.suspend` is set: nothing is done; Reconciling and Stalled say why, and the
/// step conditions keep what they last said (with the generation they were computed for).
pub(crate) fn summarize_suspended(
    status: &mut InstanceRegistrationStatus,
    generation: i64,
    now: &Time,
) {
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

/// Records that the object waits for an install another shard started (`why`): Ready and the
/// kstatus pair say so; the step conditions keep what they last said.
pub(crate) fn summarize_install_elsewhere(
    status: &mut InstanceRegistrationStatus,
    why: &str,
    generation: i64,
    now: &Time,
) {
    let conds = &mut status.conditions;
    conditions::set(
        conds,
        types::READY,
        Observation::fails(reasons::INSTALL_IN_PROGRESS, why),
        generation,
        now,
    );
    conditions::set(
        conds,
        types::RECONCILING,
        Observation::holds(reasons::INSTALL_IN_PROGRESS, why),
        generation,
        now,
    );
    conditions::set(
        conds,
        types::STALLED,
        Observation::fails(reasons::PROGRESSING, "not stalled"),
        generation,
        now,
    );
    status.message = Some(why.to_owned());
    status.observed_generation = Some(generation);
    status.phase = Some(Phase::Installing);
}

/// Records that deleting the object is held up by `problem` (it is retried with backoff).
pub(crate) fn summarize_deleting(
    status: &mut InstanceRegistrationStatus,
    problem: &str,
    generation: i64,
    now: &Time,
) {
    let conds = &mut status.conditions;
    conditions::set(
        conds,
        types::READY,
        Observation::fails(reasons::DELETING, format!("deleting: {problem}")),
        generation,
        now,
    );
    conditions::set(
        conds,
        types::RECONCILING,
        Observation::holds(reasons::DELETING, format!("retrying: {problem}")),
        generation,
        now,
    );
    status.message = Some(format!("deleting; retrying after: {problem}"));
    status.phase = Some(Phase::Deleting);
}

/// The phase a set of conditions amounts to.
pub(crate) fn phase(conds: &[crate::resource::Condition]) -> Phase {
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

    /// An OpsWorks pipeline.
    const PIPELINE: &[Step] = &[
        Step::Stack,
        Step::Target,
        Step::SshKey,
        Step::Host,
        Step::Credentials,
        Step::Agent,
        Step::Registered,
    ];
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
        summarize(&mut s, &[Step::SshKey], &results, 1, &now());
        assert_eq!(cond(&s, types::READY).status, ConditionStatus::False);
        assert_eq!(cond(&s, types::READY).reason, reasons::NOT_IMPLEMENTED);
        // Nor is a pass in which some step did not run.
        let mut s = InstanceRegistrationStatus::default();
        summarize(&mut s, PIPELINE, &results, 1, &now());
        assert_eq!(cond(&s, types::READY).status, ConditionStatus::False);
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
