//! Deleting a Systems Manager object: every activation of the object's is deleted (found by its
//! UID tag, so one made just before a crash goes too), with the activation Secret (if the
//! object owns it); the node of an on-premises host is deregistered only if this object
//! registered it (the node's activation is the object's, recorded on status, and it carries the
//! object's UID tag) or adopted it, deletionPolicy is DeregisterAdopted, and the node's own
//! record still proves it the host's and the namespace's ([`super::evidence`]).
//! An EC2 instance's node is the instance's own (it cannot be deregistered): it is left.

use aws_sdk_ssm::types::DescribeActivationsFilterKeys;
use kube::ResourceExt;

use crate::aws::{self, Kind};
use crate::conditions::Undone;
use crate::context::Context;
use crate::resource::{
    DeletionPolicy, InfrastructureClass, InstanceRegistration, SystemsManagerSpec,
};
use crate::steps::handoff;

use super::evidence::{self, Judgement, Owner};
use crate::tenancy::Verdict;

/// Undoes what the controller did for `obj`; returns a summary, or what stopped it (retried).
pub(super) async fn undo(
    ctx: &Context,
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
) -> Result<Undone, String> {
    let region = super::region(ctx, ssm).to_owned();
    let client = ctx.aws.ssm(Some(&region));
    let status = obj.status.clone().unwrap_or_default();
    let mut done = Vec::new();
    let mut registration_undone = false;

    // The activations: those tagged with this object's UID (the role's list), and the one on
    // status.
    let mut activations: Vec<String> = status.activation_id.iter().cloned().collect();
    if let (Some(role), Some(uid)) = (&ssm.service_role, obj.uid()) {
        let listed = super::activation::ours(
            ctx,
            &region,
            DescribeActivationsFilterKeys::IamRole,
            role,
            &uid,
        )
        .await
        .map_err(|outcome| outcome.observation().message.clone())?;
        activations.extend(
            listed
                .iter()
                .filter_map(|a| a.activation_id().map(str::to_owned)),
        );
    }
    activations.sort();
    activations.dedup();
    for id in &activations {
        match client.delete_activation().activation_id(id).send().await {
            Ok(_) => done.push(format!("deleted activation {id}")),
            Err(e) => {
                let failure = aws::classify(&e);
                if failure.kind != Kind::NotFound {
                    return Err(format!("ssm:DeleteActivation {id}: {failure}"));
                }
            }
        }
    }

    let refused = matches!(ctx.verdict(obj), Verdict::Refused(_));
    match (&obj.spec.infrastructure_class, &status.managed_node_id) {
        (InfrastructureClass::Ec2, _) => {
            if status.managed_node_id.is_some() {
                done.push("an EC2 instance's node is the instance's own: left".to_owned());
            }
        }
        (_, None) => {}
        (_, Some(_)) if refused => done.push(
            "the namespace may not use the service role any more: the node is left as it is"
                .to_owned(),
        ),
        (InfrastructureClass::OnPremises, Some(id)) => {
            match deregister(ctx, obj, &region, id, &status).await? {
                Some(note) => done.push(note),
                None => {
                    registration_undone = true;
                    done.push(format!("deregistered {id}"))
                }
            }
        }
    }
    if handoff::forget(ctx, obj, &super::activation_secret_name(obj)).await? {
        done.push("deleted the activation Secret".into());
    }
    Ok(Undone::new(&done, registration_undone))
}

/// Deregisters node `id` if this object may; `Ok(Some(note))` says why it was left.
async fn deregister(
    ctx: &Context,
    obj: &InstanceRegistration,
    region: &str,
    id: &str,
    status: &crate::resource::InstanceRegistrationStatus,
) -> Result<Option<String>, String> {
    if !super::is_managed_node_id(id) {
        return Ok(Some(format!("{id:?} is not a managed node ID: left alone")));
    }
    let listed = super::find_node(ctx, region, "InstanceIds", id)
        .await
        .map_err(|outcome| outcome.observation().message.clone())?;
    let Some(node) = listed else {
        return Ok(Some(format!("node {id} is not listed in {region}")));
    };
    let activation_matches =
        node.activation_id.is_some() && node.activation_id == status.activation_id;
    if status.adopted && obj.spec.deletion_policy != DeletionPolicy::DeregisterAdopted {
        return Ok(Some(format!(
            "node {id} was adopted, not registered by this object: left registered \
             (deletionPolicy DeregisterAdopted deregisters it)"
        )));
    }
    if !status.adopted && !activation_matches {
        return Ok(Some(format!(
            "node {id} was not registered with this object's activation: left alone ({})",
            obj.name_any()
        )));
    }
    // Nothing is deregistered on the strength of status alone: the node's own record must say
    // it is this object's (its activation and owner tag), or, adopted, the host's and this
    // namespace's to take, as it had to be when it was adopted.
    let evidence = evidence::gather(ctx, region, obj, node)
        .await
        .map_err(|outcome| outcome.observation().message.clone())?;
    if !status.adopted {
        if evidence.owner != Owner::This {
            return Ok(Some(format!(
                "node {id} registered with the activation recorded on status but does not \
                 carry this object's owner tag: left alone"
            )));
        }
    } else {
        let namespace = obj.namespace().unwrap_or_default();
        match evidence::judge(&evidence, &namespace, status.host.as_ref()) {
            Judgement::Proven => {}
            Judgement::Refused(refused) => {
                return Ok(Some(format!(
                    "node {id} was adopted, and is left registered ({}): {}",
                    refused.reason, refused.message
                )));
            }
            Judgement::Unknown(unknown) => return Err(unknown.message),
        }
    }
    match ctx
        .aws
        .ssm(Some(region))
        .deregister_managed_instance()
        .instance_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(None),
        Err(e) => {
            let failure = aws::classify(&e);
            if failure.kind == Kind::NotFound {
                return Ok(Some(format!("node {id} was deregistered already")));
            }
            Err(format!("ssm:DeregisterManagedInstance {id}: {failure}"))
        }
    }
}
