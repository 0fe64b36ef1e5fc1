//! Step: OpsWorks reports the instance registered, judged as the service model's
//! `InstanceRegistered` waiter judges it: success `registered`; failure `setup_failed`,
//! `shutting_down`, `stopped`, `stopping`, `terminating`, `terminated`, `stop_failed`. A host that
//! went on from `registered` (assigned to a layer: `running_setup`, `online`, ...) is healthy too.
//! `connection_lost` (OpsWorks has not heard from the agent) is reported, and the agent's service
//! restarted over SSH when it stays so ([`crate::steps::repair`]).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::{Findings, OpsWorks};
use crate::aws::{self, Kind};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::steps::repair;

/// The waiter's failure states.
pub(super) const FAILURE_STATES: &[&str] = &[
    "setup_failed",
    "shutting_down",
    "stopped",
    "stopping",
    "terminating",
    "terminated",
    "stop_failed",
];
/// States a registered instance passes through or rests in while healthy.
const HEALTHY_STATES: &[&str] = &[
    "registered",
    "online",
    "running_setup",
    "booting",
    "pending",
    "requested",
    "rebooting",
    "assigning",
    "unassigning",
];
/// The state of an instance whose agent OpsWorks has not heard from: reported, and repaired
/// ([`repair`]).
const CONNECTION_LOST: &str = "connection_lost";
/// How often a pending registration is looked at.
const POLL: Duration = Duration::from_secs(5);

/// The condition reason for an OpsWorks status: the status in CamelCase (`setup_failed` →
/// `SetupFailed`), so the reason names what OpsWorks said.
pub(super) fn reason_for_status(status: &str) -> String {
    status
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// How often a fresh install is looked at while OpsWorks registers it (the first minute), and
/// after that.
const POLL_FAST: Duration = Duration::from_millis(500);
const FAST_FOR: Duration = Duration::from_secs(60);

pub(super) async fn check(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let Some(instance) = facts.own_ref::<Findings>().and_then(|f| f.existing.clone()) else {
        return not_listed(ctx, status);
    };
    let state = instance.status.as_str();
    if state == CONNECTION_LOST {
        let lost = format!(
            "OpsWorks reports instance {} as connection_lost: it has not heard from its agent (the \
             host is down, the agent stopped, or it cannot reach OpsWorks)",
            instance.id
        );
        return repair::out_of_touch(obj, ctx, facts, status, &super::AGENT, lost).await;
    }
    if FAILURE_STATES.contains(&state) {
        // The reason is the OpsWorks status itself, so alerts can key on it.
        let reason: &'static str = match state {
            "setup_failed" => "SetupFailed",
            "shutting_down" => "ShuttingDown",
            "stopped" => "Stopped",
            "stopping" => "Stopping",
            "terminating" => "Terminating",
            "terminated" => "Terminated",
            _ => "StopFailed",
        };
        debug_assert_eq!(reason, reason_for_status(state));
        return Outcome::Blocked(Observation::fails(
            reason,
            format!("OpsWorks reports instance {} as {state}", instance.id),
        ));
    }
    if !HEALTHY_STATES.contains(&state) {
        return Outcome::Progressing(
            Observation::unknown(
                reasons::REGISTERING,
                format!("OpsWorks instance {} is {state}", instance.id),
            ),
            poll(status),
        );
    }
    if status.registered_at.is_none() {
        // First seen registered: the agent no longer needs the key the controller kept for it.
        if let Err(problem) = super::credentials::forget_secret(ctx, obj).await {
            return Outcome::Retry(Observation::fails(
                reasons::KUBERNETES_API_ERROR,
                format!("instance {} is registered; {problem}", instance.id),
            ));
        }
        status.registered_at = Some(Time(Timestamp::now()));
    }
    let missing: Vec<&String> = obj
        .spec
        .layer_ids
        .iter()
        .filter(|l| !instance.layer_ids.contains(l))
        .collect();
    if !missing.is_empty() {
        let opsworks = ctx.aws.opsworks(obj.spec.region.as_deref());
        if let Err(e) = opsworks
            .assign_instance()
            .instance_id(&instance.id)
            .set_layer_ids(Some(missing.iter().map(|l| (*l).clone()).collect()))
            .send()
            .await
        {
            let failure = aws::classify(&e);
            return match failure.kind {
                Kind::NotFound | Kind::Invalid => Outcome::Blocked(Observation::fails(
                    reasons::AWS_REQUEST_REFUSED,
                    format!("opsworks:AssignInstance {}: {failure}", instance.id),
                )),
                _ => failure.outcome("opsworks:AssignInstance"),
            };
        }
        // The cached instance list no longer shows the layers.
        ow.instances.invalidate(&super::stack::stack_key(
            obj.spec.region.as_deref(),
            obj.spec.stack_id(),
        ));
        let list: Vec<&str> = missing.iter().map(|l| l.as_str()).collect();
        return Outcome::Progressing(
            Observation::unknown(
                reasons::ASSIGNING_LAYERS,
                format!(
                    "instance {} is {state}; assigning it to layer(s) {}",
                    instance.id,
                    list.join(", ")
                ),
            ),
            POLL_FAST,
        );
    }
    let healthy = format!("OpsWorks instance {} is {state}", instance.id);
    Outcome::Done(match repair::in_touch(ctx, status, &super::AGENT) {
        Some(repaired) => {
            Observation::holds(reasons::AGENT_REPAIRED, format!("{healthy}; {repaired}"))
        }
        None => Observation::holds(reasons::SUCCEEDED, healthy),
    })
}

/// The stack does not list the host. Either it was registered and is gone (drift: register it
/// again), or the agent was installed and OpsWorks has not listed it yet (wait, up to the
/// registration timeout).
fn not_listed(ctx: &Context, status: &mut InstanceRegistrationStatus) -> Outcome {
    if status.registered_at.is_some() {
        let was = status.opsworks_instance_id.take().unwrap_or_default();
        status.registered_at = None;
        status.agent_installed_at = None;
        status.install_started_at = None;
        status.agent_repair = None;
        status.install_shard = None;
        status.adopted = false;
        return Outcome::Progressing(
            Observation::fails(
                reasons::INSTANCE_GONE,
                format!(
                    "OpsWorks no longer lists instance {was} (deregistered or gone); registering the host again"
                ),
            ),
            POLL_FAST,
        );
    }
    let poll = poll(status);
    crate::steps::wait_for_registration(ctx, status, "OpsWorks listing of the instance", poll)
}

/// Fast polling right after an install, slower later.
fn poll(status: &InstanceRegistrationStatus) -> Duration {
    let recent = status
        .agent_installed_at
        .as_ref()
        .is_some_and(|at| Timestamp::now().duration_since(at.0).unsigned_abs() < FAST_FOR);
    if recent { POLL_FAST } else { POLL }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_the_opsworks_status_in_camel_case() {
        for state in FAILURE_STATES {
            let reason = reason_for_status(state);
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase() && !reason.contains('_'),
                "{reason}"
            );
        }
        assert_eq!(reason_for_status("setup_failed"), "SetupFailed");
    }
}
