//! Deleting an OpsWorks object: the IAM entities made for it first (tagged with its UID), then
//! the registration it made (or adopted, with `DeregisterAdopted`), found in the spec's stack by
//! the host's identity; nothing in a stack the namespace may no longer use.

use super::OpsWorks;
use super::credentials::{cleanup_iam, forget_secret};
use super::target::registration_to_undo;
use crate::conditions::Undone;
use crate::context::Context;
use crate::resource::{DeletionPolicy, InstanceRegistration};
use crate::tenancy::Verdict;

/// The undo of a registration; returns a summary, or what stopped it.
///
/// The IAM user goes first: with the agent's key deleted no registration of this object's can
/// appear after the look-up that follows. Then the registration this object made (or adopted,
/// with DeregisterAdopted) is looked up in the spec's stack, matched on the host's identity, and
/// deregistered; one this object did not make is left, whatever status says.
pub(super) async fn undo(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
) -> Result<Undone, String> {
    // Tenancy first: an object whose namespace may not use the stack writes nothing in it.
    match ctx.verdict(obj) {
        Verdict::Allowed => {}
        Verdict::Unknown(why) => return Err(why),
        Verdict::Refused(why) => return undo_outside_the_stack(ow, obj, ctx, &why).await,
    }
    let mut done = Vec::new();
    let mut registration_undone = false;
    let opsworks = ctx.aws.opsworks(obj.spec.region.as_deref());
    let stack_name = match opsworks
        .describe_stacks()
        .stack_ids(obj.spec.stack_id())
        .send()
        .await
    {
        Ok(out) => out
            .stacks()
            .first()
            .and_then(|s| s.name())
            .map(str::to_owned),
        Err(e) => {
            let failure = crate::aws::classify(&e);
            if failure.kind != crate::aws::Kind::NotFound {
                return Err(format!("opsworks:DescribeStacks: {failure}"));
            }
            None
        }
    };
    match cleanup_iam(ow, ctx, obj, stack_name.as_deref(), true).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => done.push(format!("deleted IAM user {}", users.join(", "))),
        Err(failure) => return Err(format!("IAM cleanup: {failure}")),
    }
    let deregister_adopted = obj.spec.deletion_policy == DeletionPolicy::DeregisterAdopted;
    match registration_to_undo(ow, ctx, obj, deregister_adopted).await? {
        Ok(instance) => match opsworks
            .deregister_instance()
            .instance_id(&instance.id)
            .send()
            .await
        {
            Ok(_) => {
                registration_undone = true;
                done.push(format!("deregistered {}", instance.id))
            }
            Err(e) => {
                let failure = crate::aws::classify(&e);
                if failure.kind != crate::aws::Kind::NotFound {
                    return Err(format!(
                        "opsworks:DeregisterInstance {}: {failure}",
                        instance.id
                    ));
                }
                registration_undone = true;
            }
        },
        Err(note) => done.push(note),
    }
    if forget_secret(ctx, obj).await? {
        done.push("deleted the access key Secret".into());
    }
    Ok(Undone::new(&done, registration_undone))
}

/// The undo of an object whose namespace may not use its stack (`why` says so): nothing in the
/// stack is touched, not even read, so its registration, if any, stays. Only what the object
/// alone can own goes: the IAM user tagged with its UID (made while the namespace was allowed
/// the stack) and its access key Secret.
async fn undo_outside_the_stack(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
    why: &str,
) -> Result<Undone, String> {
    let mut done = vec![format!(
        "{why}; nothing was done in the stack (a registration there is left as it is)"
    )];
    // No stack name: only the user recorded on status is looked at; and the stack's group is
    // left even if empty.
    match cleanup_iam(ow, ctx, obj, None, false).await {
        Ok(users) if users.is_empty() => {}
        Ok(users) => done.push(format!("deleted IAM user {}", users.join(", "))),
        Err(failure) => return Err(format!("IAM cleanup: {failure}")),
    }
    if forget_secret(ctx, obj).await? {
        done.push("deleted the access key Secret".into());
    }
    Ok(Undone::new(&done, false))
}
