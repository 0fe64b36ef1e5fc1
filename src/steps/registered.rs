//! Step: OpsWorks reports the instance registered, judged as the service model's
//! `InstanceRegistered` waiter judges it: success `registered`; failure `setup_failed`,
//! `shutting_down`, `stopped`, `stopping`, `terminating`, `terminated`, `stop_failed`. A host that
//! went on from `registered` (assigned to a layer: `running_setup`, `online`, ...) is healthy too.

use std::time::Duration;

use super::{Facts, Outcome};
use crate::conditions::{Observation, reasons};
use crate::resource::InstanceRegistrationStatus;

/// The waiter's failure states.
pub const FAILURE_STATES: &[&str] = &[
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
/// How often a pending registration is looked at.
const POLL: Duration = Duration::from_secs(5);

/// The condition reason for an OpsWorks status: the status in CamelCase (`setup_failed` →
/// `SetupFailed`), so the reason names what OpsWorks said.
pub fn reason_for_status(status: &str) -> String {
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

pub(super) fn check(facts: &Facts, status: &mut InstanceRegistrationStatus) -> Outcome {
    let Some(instance) = &facts.existing else {
        // Installing the agent over SSH is the step that comes before this one; this build
        // does not have it yet, so a host that is not registered already stays so.
        return Outcome::Blocked(Observation::fails(
            reasons::NOT_IMPLEMENTED,
            "the host is not registered, and this build of the controller cannot install the agent yet",
        ));
    };
    let state = instance.status.as_str();
    if HEALTHY_STATES.contains(&state) {
        if status.registered_at.is_none() {
            status.registered_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        }
        return Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            format!("OpsWorks instance {} is {state}", instance.id),
        ));
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
    Outcome::Progressing(
        Observation::unknown(
            reasons::REGISTERING,
            format!("OpsWorks instance {} is {state}", instance.id),
        ),
        POLL,
    )
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
