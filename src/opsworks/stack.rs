//! Step: the OpsWorks stack exists; its name, ARN, region, VPC and provisioning parameters (the
//! agent installer URL and what the agent needs) are what later steps work from. First of all,
//! before any AWS call, the object's namespace must be allowed the stack ([`crate::tenancy`]).

use std::collections::BTreeMap;

use super::{OpsWorks, StackFacts, findings};
use crate::aws::{self, Kind};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::resource::InstanceRegistration;

pub(super) async fn check(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
) -> Outcome {
    // Tenancy before anything else: an object may not even look at a stack its namespace may
    // not use, let alone write in it.
    if let Err(outcome) = ctx.allowed(obj) {
        return outcome;
    }
    let key = stack_key(obj.spec.region.as_deref(), obj.spec.stack_id());
    // Shared by the objects of one stack for a short while: a fleet reconciled at once makes
    // one look-up, not one each.
    let facts_stack = match ow.stacks.get_or_fetch(&key, || look_up(obj, ctx)).await {
        Ok(stack) => stack,
        Err(outcome) => return outcome,
    };
    let message = format!(
        "stack {:?} ({}) in {}{}",
        facts_stack.name,
        facts_stack.id,
        facts_stack.region,
        facts_stack
            .vpc_id
            .as_deref()
            .map(|v| format!(", VPC {v}"))
            .unwrap_or_default()
    );
    findings(facts).stack = Some(facts_stack);
    Outcome::Done(Observation::holds(reasons::SUCCEEDED, message))
}

/// DescribeStacks and DescribeStackProvisioningParameters for the object's stack.
pub(super) async fn look_up(
    obj: &InstanceRegistration,
    ctx: &Context,
) -> Result<StackFacts, Outcome> {
    let stack_id = obj.spec.stack_id();
    let opsworks = ctx.aws.opsworks(obj.spec.region.as_deref());
    let endpoint_region = obj
        .spec
        .region
        .as_deref()
        .or(ctx.aws.default_region())
        .unwrap_or("?");
    let not_found = || {
        Outcome::Blocked(Observation::fails(
            reasons::STACK_NOT_FOUND,
            format!("OpsWorks ({endpoint_region}) has no stack {stack_id}"),
        ))
    };
    let described = match opsworks.describe_stacks().stack_ids(stack_id).send().await {
        Ok(out) => out,
        Err(e) => {
            let failure = aws::classify(&e);
            return Err(match failure.kind {
                Kind::NotFound => not_found(),
                _ => failure.outcome("opsworks:DescribeStacks"),
            });
        }
    };
    let Some(stack) = described
        .stacks()
        .iter()
        .find(|s| s.stack_id() == Some(stack_id))
    else {
        return Err(not_found());
    };
    let params = match opsworks
        .describe_stack_provisioning_parameters()
        .stack_id(stack_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            let failure = aws::classify(&e);
            return Err(match failure.kind {
                Kind::NotFound => not_found(),
                _ => failure.outcome("opsworks:DescribeStackProvisioningParameters"),
            });
        }
    };
    let Some(installer_url) = params.agent_installer_url().filter(|u| !u.is_empty()) else {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::AWS_REQUEST_REFUSED,
            format!("stack {stack_id} has no agent installer URL in its provisioning parameters"),
        )));
    };
    let parameters: BTreeMap<String, String> = params
        .parameters()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if !parameters.contains_key("assets_download_bucket") {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::AWS_REQUEST_REFUSED,
            format!("stack {stack_id}'s provisioning parameters lack assets_download_bucket"),
        )));
    }
    let facts_stack = StackFacts {
        id: stack_id.to_owned(),
        name: stack.name().unwrap_or_default().to_owned(),
        arn: stack.arn().unwrap_or_default().to_owned(),
        region: stack.region().unwrap_or(endpoint_region).to_owned(),
        vpc_id: stack.vpc_id().map(str::to_owned),
        agent_installer_url: installer_url.to_owned(),
        parameters,
    };
    Ok(facts_stack)
}

/// The key of a stack in the controller's caches.
pub(super) fn stack_key(region: Option<&str>, stack_id: &str) -> String {
    format!("{}/{stack_id}", region.unwrap_or_default())
}
