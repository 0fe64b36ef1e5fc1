//! Step: the host. For `ec2`, the one EC2 instance the target names, in the stack's region and
//! VPC, found as `aws opsworks register` finds it (instance ID, IPv4 address matched against the
//! private and public address, or the Name tag); for `on-premises`, the target itself.
//!
//! One departure from the CLI: for a stack without a VPC (an EC2-Classic stack) the CLI counts
//! only instances outside any VPC. EC2-Classic was retired in 2023 and its instances moved into
//! VPCs, so that rule would make such stacks unusable; here any instance of the region counts. Then the
//! stack is searched for the host's existing registration (adopted rather than redone), and a
//! hostname override is checked against the stack's other instances.

use std::time::Duration;

use super::identity::{self, Found};
use super::{OpsWorks, OpsWorksInstance, findings};
use crate::aws;
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::{Facts, TargetFacts};
use crate::resource::{
    ConditionStatus, InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus, Phase,
};
use crate::steps::ec2::find_ec2;

/// How old a stack's instance list may be when it verifies a registration that is done.
const SETTLED_INSTANCES_MAX_AGE: Duration = Duration::from_secs(30);
/// How old a list the registration of an install that ended within [`JUST_INSTALLED`] may be
/// looked for in: below the 0.5 s between the looks of the pass that installed.
const AFTER_INSTALL_INSTANCES_MAX_AGE: Duration = Duration::from_millis(400);
/// How long after an install its registration is looked for in the fresher list: the pass that
/// installed looks for 3 s; later polls (OpsWorks may take minutes) share the usual one.
const JUST_INSTALLED: Duration = Duration::from_secs(5);

pub(super) async fn check(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let Some(stack) = findings(facts).stack.clone() else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the stack is not resolved",
        ));
    };
    let spec = &obj.spec;
    let resolved = match spec.infrastructure_class {
        InfrastructureClass::OnPremises => TargetFacts::on_premises(&spec.target),
        // Resolved earlier in this pass (it looks again after an install), or by the pass that
        // installed the agent: not looked up again.
        InfrastructureClass::Ec2 => match facts
            .target
            .clone()
            .or_else(|| resolved_before(obj, status))
        {
            Some(t) => t,
            None => match resolve_ec2(ctx, &stack, &spec.target).await {
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
        return Outcome::Blocked(holder.observation(&format!("stack {}", stack.id)));
    }
    let connect_to = spec
        .ssh
        .address
        .clone()
        .unwrap_or_else(|| resolved.address.clone());

    // Is the host registered already? Look for it in the stack.
    // A registration that is done is verified against a list that may be a little older, so
    // that a restart's pass over thousands of objects shares one look-up per stack.
    // A registration an install just made is looked for in a list made since the last look
    // (the pass looks every 0.5 s after its install).
    let max_age = if status.phase == Some(Phase::Registered) {
        SETTLED_INSTANCES_MAX_AGE
    } else if status.agent_installed_at.as_ref().is_some_and(|at| {
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(at.0)
            .unsigned_abs()
            < JUST_INSTALLED
    }) {
        AFTER_INSTALL_INSTANCES_MAX_AGE.min(ow.instances.ttl())
    } else {
        ow.instances.ttl()
    };
    let instances = match stack_instances(ow, ctx, spec.region.as_deref(), &stack.id, max_age).await
    {
        Ok(instances) => instances,
        Err(outcome) => return outcome,
    };
    let (existing, identity) = match registration_in_stack(
        obj,
        ctx,
        status,
        &resolved,
        &connect_to,
        &instances,
        &stack.id,
    ) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };

    let mut message = target_message(obj, &resolved, &connect_to);
    status.ec2_instance_id = resolved.ec2_instance_id.clone();
    status.address = Some(connect_to);
    let reason = match &existing {
        Some(instance) => {
            message += &format!(
                "; registered in the stack as {} ({})",
                instance.id, instance.status
            );
            // Adopted (registered without this object's install) stays Adopted on every later
            // pass: a reason that changed on the second pass would rewrite every adopted
            // object's status once.
            let made = super::identity::made(instance, &identity, crate::steps::installed(status));
            super::identity::record_existing(status, instance, made)
        }
        None => {
            if !crate::steps::installed(status) {
                status.hostname = spec.hostname.clone();
            }
            reasons::SUCCEEDED
        }
    };
    facts.target = Some(resolved);
    let findings = findings(facts);
    findings.existing = existing;
    findings.instances = Some(instances);
    Outcome::Done(Observation::holds(reason, message))
}

/// The host's registration in the stack's `instances`, matched on what the host registers as
/// (see [`super::identity`]), with that identity; `Err` when another object's agent or another
/// host holds it. An on-premises host whose own hostname or addresses are not known yet is
/// looked for again by the host step, once the host has said them.
fn registration_in_stack(
    obj: &InstanceRegistration,
    ctx: &Context,
    status: &InstanceRegistrationStatus,
    resolved: &TargetFacts,
    connect_to: &str,
    instances: &[OpsWorksInstance],
    stack_id: &str,
) -> Result<(Option<OpsWorksInstance>, identity::Identity), Outcome> {
    let mut identity = super::identity::identity_of(obj, resolved, status);
    identity.others = super::identity::others_users(obj, &ctx.store.state());
    let learned = status
        .host
        .as_ref()
        .is_some_and(|h| h.via == format!("{connect_to}:{}", obj.spec.ssh.port));
    let existing = match identity::find(
        instances,
        &identity,
        crate::steps::installed(status),
        status.opsworks_instance_id.as_deref(),
    ) {
        Found::Ours(instance) => Some(instance.clone()),
        // Another object's agent registered it: whatever the spec says, never this one's.
        Found::Claimed(instance, by) => {
            return Err(Outcome::Blocked(super::identity::claimed(
                instance, &by, stack_id,
            )));
        }
        // Decided now when nothing the host could say would change it: its own answer is known
        // already, it is an EC2 host, or the holder is an EC2 instance (never an on-premises
        // host). Otherwise the host step asks the host first (a host behind NAT reports
        // addresses the spec does not know).
        Found::Taken(holder)
            if learned
                || identity.ec2_instance_id.is_some()
                || holder.ec2_instance_id.is_some() =>
        {
            return Err(Outcome::Blocked(super::identity::taken(
                &identity, holder, stack_id,
            )));
        }
        Found::Taken(_) | Found::Nothing | Found::Unknown => None,
    };
    Ok((existing, identity))
}

/// What the target step says of the host: the EC2 instance or on-premises host, and the
/// address the controller connects through when it is another. The EC2 instance's own address
/// is left out when the SSH address overrides it, so the message is the same whether the
/// instance was looked up or taken from status.
fn target_message(obj: &InstanceRegistration, resolved: &TargetFacts, connect_to: &str) -> String {
    let spec = &obj.spec;
    let mut message = match (&resolved.ec2_instance_id, &spec.ssh.address) {
        (Some(id), Some(_)) => format!("EC2 instance {id}"),
        (Some(id), None) => format!("EC2 instance {id} at {}", resolved.address),
        (None, _) => format!("on-premises host {}", resolved.address),
    };
    if connect_to != resolved.address || spec.ssh.address.is_some() {
        message += &format!(", connecting through {connect_to}");
    }
    message
}

/// What deleting `obj` may deregister: the host's registration in the spec's stack, if this
/// object made it (it started an install on the host), or adopted it and `deregister_adopted`.
/// Status alone decides nothing: the stack is the spec's, an EC2 host is the instance the spec's
/// target resolves to now, and the instance must be the host's by [`identity::find`]. `Ok(None)`
/// with a note when there is nothing this object may deregister.
pub(super) async fn registration_to_undo(
    ow: &OpsWorks,
    ctx: &Context,
    obj: &InstanceRegistration,
    deregister_adopted: bool,
) -> Result<Result<OpsWorksInstance, String>, String> {
    let status = obj.status.clone().unwrap_or_default();
    let spec = &obj.spec;
    let installed = crate::steps::installed(&status);
    let may_deregister = installed || (status.adopted && deregister_adopted);
    if !may_deregister {
        return Ok(Err(match status.adopted {
            true => "the registration was adopted, not made by this object: left registered \
                     (deletionPolicy DeregisterAdopted deregisters it)"
                .to_owned(),
            false => "no install was started for this object: nothing to deregister".to_owned(),
        }));
    }
    let key = super::stack::stack_key(spec.region.as_deref(), spec.stack_id());
    let stack = match ow
        .stacks
        .get_or_fetch(&key, || super::stack::look_up(obj, ctx))
        .await
    {
        Ok(stack) => stack,
        Err(outcome) if outcome.observation().reason == reasons::STACK_NOT_FOUND => {
            return Ok(Err(format!("stack {} is gone", spec.stack_id())));
        }
        Err(outcome) => return Err(outcome.observation().message.clone()),
    };
    let resolved = match spec.infrastructure_class {
        InfrastructureClass::OnPremises => TargetFacts::on_premises(&spec.target),
        InfrastructureClass::Ec2 => match resolve_ec2(ctx, &stack, &spec.target).await {
            Ok(t) => t,
            // A terminated instance no longer resolves; its ID, when the target is one, is
            // still the spec's own word.
            Err(_)
                if crate::steps::ec2::target_kind(&spec.target)
                    == crate::steps::ec2::TargetKind::InstanceId =>
            {
                TargetFacts {
                    ec2_instance_id: Some(spec.target.clone()),
                    address: String::new(),
                    instance_profile: None,
                }
            }
            Err(outcome)
                if outcome.observation().status == ConditionStatus::False
                    && matches!(outcome, Outcome::Blocked(_)) =>
            {
                return Ok(Err(format!(
                    "the target no longer names one EC2 instance ({}): its registration is left",
                    outcome.observation().reason
                )));
            }
            Err(outcome) => return Err(outcome.observation().message.clone()),
        },
    };
    let instances = stack_instances(ow, ctx, spec.region.as_deref(), &stack.id, Duration::ZERO)
        .await
        .map_err(|outcome| outcome.observation().message.clone())?;
    let mut identity = super::identity::identity_of(obj, &resolved, &status);
    identity.others = super::identity::others_users(obj, &ctx.store.state());
    Ok(
        match identity::find(
            &instances,
            &identity,
            installed,
            status.opsworks_instance_id.as_deref(),
        ) {
            // Made by this object's own agent (RegisteredBy names its IAM user), or adopted and
            // DeregisterAdopted.
            Found::Ours(instance)
                if deregister_adopted || identity::made(instance, &identity, installed) =>
            {
                Ok(instance.clone())
            }
            Found::Ours(instance) => Err(format!(
                "instance {} was registered by {}, not by this object's IAM user: adopted, left \
                 registered (deletionPolicy DeregisterAdopted deregisters it)",
                instance.id,
                instance
                    .registered_by
                    .as_deref()
                    .unwrap_or("another principal")
            )),
            Found::Claimed(instance, by) => Err(format!(
                "instance {} was registered by InstanceRegistration {by}: left alone",
                instance.id
            )),
            _ if status.opsworks_instance_id.is_some() => Err(format!(
                "status names instance {}, which is not this host's registration in stack {}: \
                 left alone",
                status.opsworks_instance_id.as_deref().unwrap_or_default(),
                stack.id
            )),
            _ => Err(format!("the host is not registered in stack {}", stack.id)),
        },
    )
}

/// The stack's instances (OpsWorks DescribeInstances), shared for a moment by the objects of the
/// stack reconciled at the same time.
async fn stack_instances(
    ow: &OpsWorks,
    ctx: &Context,
    region: Option<&str>,
    stack_id: &str,
    max_age: Duration,
) -> Result<std::sync::Arc<Vec<OpsWorksInstance>>, Outcome> {
    ow.instances
        .get_or_fetch_within(
            &super::stack::stack_key(region, stack_id),
            max_age,
            || async {
                match ctx
                    .aws
                    .opsworks(region)
                    .describe_instances()
                    .stack_id(stack_id)
                    .send()
                    .await
                {
                    Ok(out) => Ok(std::sync::Arc::new(
                        out.instances().iter().map(to_instance).collect(),
                    )),
                    Err(e) => Err(aws::classify(&e).outcome("opsworks:DescribeInstances")),
                }
            },
        )
        .await
}

fn to_instance(i: &aws_sdk_opsworks::types::Instance) -> OpsWorksInstance {
    OpsWorksInstance {
        id: i.instance_id().unwrap_or_default().to_owned(),
        status: i.status().unwrap_or_default().to_owned(),
        hostname: i.hostname().map(str::to_owned),
        ec2_instance_id: i.ec2_instance_id().map(str::to_owned),
        layer_ids: i.layer_ids().to_vec(),
        private_ip: i.private_ip().map(str::to_owned),
        public_ip: i.public_ip().map(str::to_owned),
        registered_by: i.registered_by().map(str::to_owned),
    }
}

/// The EC2 instance and address this object resolved before, when they can be trusted without
/// asking EC2 again: the agent was installed on that instance for the current spec. Whatever
/// leads to another install (the instance gone from the stack, a registration timeout, a spec
/// change) clears that, and the target is looked up again before it.
fn resolved_before(
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
) -> Option<TargetFacts> {
    if status.agent_installed_at.is_none() || status.observed_generation != obj.metadata.generation
    {
        return None;
    }
    Some(TargetFacts {
        ec2_instance_id: Some(status.ec2_instance_id.clone()?),
        address: status.address.clone()?,
        instance_profile: None,
    })
}

/// Finds the one EC2 instance `target` names in the stack's region (and VPC).
async fn resolve_ec2(
    ctx: &Context,
    stack: &super::StackFacts,
    target: &str,
) -> Result<TargetFacts, Outcome> {
    find_ec2(ctx, &stack.region, stack.vpc_id.as_deref(), target).await
}
