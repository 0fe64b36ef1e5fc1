//! The target step of a Systems Manager object: the namespace may use the service role, the
//! host is found (an EC2 instance in the Systems Manager region, which must have an instance
//! profile), no earlier object names the same host, and the host's managed node, if Systems
//! Manager lists it already, is looked up: by the node ID recorded on status, by the EC2
//! instance ID, or (after a restart between the install and recording the node) by the
//! activation this object made.

use super::findings;
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::{Facts, TargetFacts};
use crate::resource::{
    InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus, SystemsManagerSpec,
};

pub(super) async fn check(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if let Err(outcome) = ctx.allowed(obj) {
        return outcome;
    }
    let region = super::region(ctx, ssm).to_owned();
    let spec = &obj.spec;
    let resolved = match spec.infrastructure_class {
        InfrastructureClass::OnPremises => TargetFacts::on_premises(&spec.target),
        // Resolved earlier in this pass (it looks again after an install): not looked up again.
        InfrastructureClass::Ec2 => match facts.target.clone() {
            Some(t) => t,
            None => match crate::steps::ec2::find_ec2(ctx, &region, None, &spec.target).await {
                Ok(t) => t,
                Err(outcome) => return outcome,
            },
        },
    };
    if let Some(holder) = crate::conflict::holder_of_the_same_host(
        obj,
        status,
        resolved.ec2_instance_id.as_deref(),
        &ctx.store.state(),
        |o| ctx.competes(obj, o),
    ) {
        return Outcome::Blocked(holder.observation(&format!("Systems Manager in {region}")));
    }
    if let Some(id) = &resolved.ec2_instance_id
        && resolved.instance_profile.is_none()
    {
        return Outcome::Blocked(Observation::fails(
            reasons::NO_INSTANCE_PROFILE,
            format!(
                "EC2 instance {id} has no IAM instance profile, so its SSM agent cannot register \
                 with Systems Manager; attach one whose role has the AmazonSSMManagedInstanceCore \
                 policy"
            ),
        ));
    }

    let node = match (&resolved.ec2_instance_id, &status.managed_node_id) {
        (Some(instance), _) => super::find_node(ctx, &region, "InstanceIds", instance).await,
        (None, Some(node)) => super::find_node(ctx, &region, "InstanceIds", node).await,
        // Installed with an activation of this object's, and the node not recorded: the
        // restart came between the install and its status write.
        (None, None) => match &status.activation_id {
            Some(activation) if crate::steps::installed(status) => {
                super::find_node(ctx, &region, "ActivationIds", activation).await
            }
            _ => Ok(None),
        },
    };
    let node = match node {
        Ok(node) => node,
        Err(outcome) => return outcome,
    };
    let connect_to = spec
        .ssh
        .address
        .clone()
        .unwrap_or_else(|| resolved.address.clone());
    let mut message = match &resolved.ec2_instance_id {
        Some(id) => format!("EC2 instance {id} in {region}"),
        None => format!("on-premises host {}", resolved.address),
    };
    if connect_to != resolved.address || spec.ssh.address.is_some() {
        message += &format!(", connecting through {connect_to}");
    }
    if let Some(node) = &node {
        message += &format!("; managed node {} ({})", node.id, node.ping_status);
        status.managed_node_id = Some(node.id.clone());
    }
    // Registered by this object's install, which was cut short before it said so: the agent
    // may never have started. The setup is run again, keeping the registration.
    let node = match node {
        Some(n)
            if resolved.ec2_instance_id.is_none()
                && n.ping_status != "Online"
                && status.agent_installed_at.is_none()
                && crate::steps::installed(status)
                && n.activation_id.is_some()
                && n.activation_id == status.activation_id =>
        {
            findings(facts).resume = Some(n.id);
            None
        }
        other => other,
    };
    status.ec2_instance_id = resolved.ec2_instance_id.clone();
    status.address = Some(connect_to);
    facts.target = Some(resolved);
    findings(facts).node = node;
    let reason = if status.adopted {
        reasons::ADOPTED
    } else {
        reasons::SUCCEEDED
    };
    Outcome::Done(Observation::holds(reason, message))
}
