//! The registration step of a Systems Manager object: Systems Manager reports the node `Online`.
//! Once it does, the activation (used, or never needed by an adopted node) is deleted with its
//! Secret: registered nodes keep working without it. A node whose agent stops answering is
//! `ConnectionLost` (or `Inactive`): reported, with Ready False; an agent that stays
//! `ConnectionLost` has its service restarted over SSH ([`crate::steps::repair`]). A node that
//! was online and is no longer listed (deregistered behind the controller's back) is registered
//! again, as OpsWorks' `InstanceGone`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::info;

use super::findings;
use crate::aws::{self, Kind};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus, SystemsManagerSpec};
use crate::steps::{handoff, repair};

/// How often a fresh install is looked at while the node comes online.
const POLL: Duration = Duration::from_secs(1);
/// How long after an install a node that is not online yet is waited for rather than reported.
const FIRST_PING_GRACE: Duration = Duration::from_secs(120);

pub(super) async fn check(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let region = super::region(ctx, ssm).to_owned();
    if findings(facts).node.is_none() && facts.installed_now {
        // Installed in this pass, after the target step looked: look again.
        let id = status
            .ec2_instance_id
            .clone()
            .or(status.managed_node_id.clone());
        if let Some(id) = id {
            match super::find_node(ctx, &region, "InstanceIds", &id).await {
                Ok(node) => findings(facts).node = node,
                Err(outcome) => return outcome,
            }
        }
    }
    let Some(node) = findings(facts).node.clone() else {
        return not_listed(ctx, status);
    };
    status.managed_node_id = Some(node.id.clone());
    // A node is listed as soon as it registered, before its agent's first heartbeat: right
    // after an install it is waited for, not reported.
    let fresh = status
        .agent_installed_at
        .as_ref()
        .is_some_and(|at| Timestamp::now().duration_since(at.0).unsigned_abs() < FIRST_PING_GRACE);
    match node.ping_status.as_str() {
        "Online" => {}
        _ if fresh && status.registered_at.is_none() => {
            return Outcome::Progressing(
                Observation::unknown(
                    reasons::REGISTERING,
                    format!(
                        "node {} is registered; waiting for its agent's first heartbeat",
                        node.id
                    ),
                ),
                POLL,
            );
        }
        "ConnectionLost" => {
            let lost = format!(
                "Systems Manager has not heard from the agent of node {} since {} (PingStatus \
                 ConnectionLost): the host is down, the agent stopped, or it cannot reach Systems \
                 Manager",
                node.id,
                node.last_ping.as_deref().unwrap_or("its registration")
            );
            return repair::out_of_touch(obj, ctx, facts, status, &super::AGENT, lost).await;
        }
        "Inactive" => {
            return Outcome::Blocked(Observation::fails(
                reasons::INACTIVE,
                format!("Systems Manager reports node {} as Inactive", node.id),
            ));
        }
        other => {
            return Outcome::Progressing(
                Observation::unknown(
                    reasons::REGISTERING,
                    format!("node {} is {other:?}", node.id),
                ),
                POLL,
            );
        }
    }
    if status.registered_at.is_none()
        && let Err(outcome) = first_online(ctx, obj, &region, &node.id, status).await
    {
        return outcome;
    }
    // Tags the spec changed since the node registered are made on the node in place.
    match super::tags::follow(ctx, &region, ssm, &node.id, status).await {
        Ok(Some(changed)) => {
            info!(name = %obj.name_any(), node = %node.id, %changed, "the node's tags follow the spec");
        }
        Ok(None) => {}
        Err(outcome) => return outcome,
    }
    let online = format!("node {} is Online in {region}", node.id);
    Outcome::Done(match repair::in_touch(ctx, status, &super::AGENT) {
        Some(repaired) => {
            Observation::holds(reasons::AGENT_REPAIRED, format!("{online}; {repaired}"))
        }
        None => Observation::holds(reasons::SUCCEEDED, online),
    })
}

/// The node is seen online for the first time: the activation has done its work (or was never
/// needed) and goes, with its Secret; the registration time is recorded.
async fn first_online(
    ctx: &Context,
    obj: &InstanceRegistration,
    region: &str,
    node: &str,
    status: &mut InstanceRegistrationStatus,
) -> Result<(), Outcome> {
    if let Some(activation) = &status.activation_id
        && let Err(e) = ctx
            .aws
            .ssm(Some(region))
            .delete_activation()
            .activation_id(activation)
            .send()
            .await
    {
        let failure = aws::classify(&e);
        if failure.kind != Kind::NotFound {
            return Err(failure.outcome("ssm:DeleteActivation"));
        }
    }
    if let Err(problem) = handoff::forget(ctx, obj, &super::activation_secret_name(obj)).await {
        return Err(Outcome::Retry(Observation::fails(
            reasons::KUBERNETES_API_ERROR,
            format!("node {node} is online; {problem}"),
        )));
    }
    status.registered_at = Some(Time(Timestamp::now()));
    Ok(())
}

/// Systems Manager does not list the host's node: gone after being online (registered again),
/// or not yet online after the install (waited for, up to the registration timeout).
fn not_listed(ctx: &Context, status: &mut InstanceRegistrationStatus) -> Outcome {
    if status.registered_at.is_some() {
        status.registered_at = None;
        status.agent_installed_at = None;
        status.install_started_at = None;
        status.agent_repair = None;
        status.install_shard = None;
        status.adopted = false;
        // The node ID stays: the host still names it, and may be registered again over it.
        return Outcome::Progressing(
            Observation::fails(
                reasons::INSTANCE_GONE,
                format!(
                    "Systems Manager no longer lists node {} (deregistered); registering the host again",
                    status.managed_node_id.as_deref().unwrap_or("?")
                ),
            ),
            POLL,
        );
    }
    crate::steps::wait_for_registration(ctx, status, "online node in Systems Manager", POLL)
}
