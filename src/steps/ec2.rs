//! EC2 look-ups both services make: the one instance an `ec2` target names, found the way the
//! AWS CLI's `aws opsworks register` finds it (instance ID, an IPv4 address matched against the
//! private and public address, or the Name tag).

use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};

use crate::aws;
use crate::conditions::{Observation, Outcome, reasons};
use crate::context::{Context, TargetFacts};

/// How an `ec2` target names its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// `i-` followed by hex digits.
    InstanceId,
    /// Four dot-separated numbers: matched against private and public addresses.
    IpAddress,
    /// Anything else: the Name tag.
    NameTag,
}

/// Classifies an `ec2` target the way the AWS CLI does.
pub(crate) fn target_kind(target: &str) -> TargetKind {
    let is_instance_id = target.strip_prefix("i-").is_some_and(|hex| {
        !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    let parts: Vec<&str> = target.split('.').collect();
    let is_ip = parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_instance_id {
        TargetKind::InstanceId
    } else if is_ip {
        TargetKind::IpAddress
    } else {
        TargetKind::NameTag
    }
}

/// Finds the one EC2 instance `target` names in `region` (and `vpc`, when given).
pub(crate) async fn find_ec2(
    ctx: &Context,
    region: &str,
    vpc: Option<&str>,
    target: &str,
) -> Result<TargetFacts, Outcome> {
    let kind = target_kind(target);
    let instances: Vec<Instance> = if kind == TargetKind::InstanceId {
        // Looked up together with the other objects' at the same moment.
        match ctx.aws.ec2_instance(region, vpc, target).await {
            Ok(found) => found.into_iter().collect(),
            Err(failure) => return Err(failure.outcome("ec2:DescribeInstances")),
        }
    } else {
        let mut request = ctx.aws.ec2(region).describe_instances();
        if let Some(vpc) = vpc {
            request = request.filters(Filter::builder().name("vpc-id").values(vpc).build());
        }
        if kind == TargetKind::NameTag {
            request = request.filters(Filter::builder().name("tag:Name").values(target).build());
        }
        match request
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
        {
            Ok(reservations) => reservations
                .into_iter()
                .flat_map(|r| r.instances.unwrap_or_default())
                .collect(),
            Err(e) => return Err(aws::classify(&e).outcome("ec2:DescribeInstances")),
        }
    };
    let matches: Vec<_> = instances
        .iter()
        .filter(|i| {
            // A terminated instance keeps its tags for a while; it is not a host to register.
            !matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            )
        })
        .filter(|i| {
            kind != TargetKind::IpAddress
                || i.private_ip_address() == Some(target)
                || i.public_ip_address() == Some(target)
        })
        .collect();
    match matches.as_slice() {
        [] => Err(not_found(region, vpc, target)),
        [one] => {
            let id = one.instance_id().unwrap_or_default().to_owned();
            let address = match kind {
                TargetKind::IpAddress => Some(target.to_owned()),
                _ => one
                    .public_ip_address()
                    .or(one.private_ip_address())
                    .map(str::to_owned),
            };
            match address {
                Some(address) => Ok(TargetFacts {
                    ec2_instance_id: Some(id),
                    address,
                    instance_profile: one
                        .iam_instance_profile()
                        .and_then(|p| p.arn())
                        .map(str::to_owned),
                }),
                None => Err(Outcome::Blocked(Observation::fails(
                    reasons::TARGET_HAS_NO_ADDRESS,
                    format!("EC2 instance {id} has neither a public nor a private IP address"),
                ))),
            }
        }
        several => {
            let mut ids: Vec<&str> = several.iter().filter_map(|i| i.instance_id()).collect();
            ids.sort_unstable();
            Err(Outcome::Blocked(Observation::fails(
                reasons::TARGET_AMBIGUOUS,
                format!(
                    "{} EC2 instances match {target:?}: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            )))
        }
    }
}

fn not_found(region: &str, vpc: Option<&str>, target: &str) -> Outcome {
    let scope = match vpc {
        Some(vpc) => format!("in {region} (VPC {vpc})"),
        None => format!("in {region}"),
    };
    Outcome::Blocked(Observation::fails(
        reasons::TARGET_NOT_FOUND,
        format!("no EC2 instance {scope} matches {target:?} (instance ID, IP address or Name tag)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_classified_as_the_cli_does() {
        assert_eq!(target_kind("i-0123456789abcdef0"), TargetKind::InstanceId);
        assert_eq!(target_kind("i-"), TargetKind::NameTag);
        assert_eq!(target_kind("i-XYZ"), TargetKind::NameTag);
        assert_eq!(target_kind("10.0.0.1"), TargetKind::IpAddress);
        assert_eq!(target_kind("10.0.0"), TargetKind::NameTag);
        assert_eq!(target_kind("web server 1"), TargetKind::NameTag);
        assert_eq!(target_kind("web.example.com"), TargetKind::NameTag);
    }
}
