//! What Systems Manager made for objects, for the orphan audit (`crate::audit`): the
//! activations and the managed nodes `mi-…` that carry an owner UID tag, in each region asked;
//! and their removal (`DeleteActivation`, `DeregisterManagedInstance`).

use aws_sdk_ssm::types::Tag;

use super::{OWNER_TAG, OWNER_UID_TAG};
use crate::aws::{self, Kind};
use crate::context::{Context, Made};
use crate::steps::CLUSTER_TAG;

/// What the audit calls an activation and a node.
const ACTIVATION: &str = "activation";
const NODE: &str = "managed node";
/// At most this many pages of each list are read in a region (an endpoint whose pages never
/// end is reported, not followed forever).
const MAX_PAGES: usize = 200;

/// `Made` for `id` if `tags` carry an owner UID tag.
fn owned(kind: &'static str, id: &str, region: &str, tags: &[(String, String)]) -> Option<Made> {
    let get = |key: &str| tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Some(Made {
        service: "SystemsManager",
        kind,
        id: id.to_owned(),
        region: Some(region.to_owned()),
        owner_uid: get(OWNER_UID_TAG)?,
        owner: get(OWNER_TAG),
        cluster: get(CLUSTER_TAG),
    })
}

fn pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// The activations and managed nodes in `regions` that carry an owner UID tag.
pub(super) async fn made(ctx: &Context, regions: &[String]) -> Result<Vec<Made>, String> {
    let mut found = Vec::new();
    for region in regions {
        let client = ctx.aws.ssm(Some(region));
        let mut pages = client
            .describe_activations()
            .max_results(50)
            .into_paginator()
            .send();
        let mut read = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                format!("ssm:DescribeActivations in {region}: {}", aws::classify(&e))
            })?;
            read += 1;
            if read > MAX_PAGES {
                return Err(format!(
                    "ssm:DescribeActivations in {region}: more than {MAX_PAGES} pages"
                ));
            }
            for a in page.activation_list() {
                if let Some(id) = a.activation_id()
                    && let Some(made) = owned(ACTIVATION, id, region, &pairs(a.tags()))
                {
                    found.push(made);
                }
            }
        }
        let mut pages = client
            .describe_instance_information()
            .max_results(50)
            .into_paginator()
            .send();
        let mut read = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                format!(
                    "ssm:DescribeInstanceInformation in {region}: {}",
                    aws::classify(&e)
                )
            })?;
            read += 1;
            if read > MAX_PAGES {
                return Err(format!(
                    "ssm:DescribeInstanceInformation in {region}: more than {MAX_PAGES} pages"
                ));
            }
            for node in page.instance_information_list() {
                let Some(id) = node
                    .instance_id()
                    .filter(|id| super::is_managed_node_id(id))
                else {
                    continue;
                };
                let tags = super::evidence::tags(ctx, region, id)
                    .await
                    .map_err(|o| o.observation().message.clone())?;
                if let Some(made) = owned(NODE, id, region, &tags) {
                    found.push(made);
                }
            }
        }
    }
    Ok(found)
}

/// Deletes the activation or deregisters the node `made` names (gone already is fine).
pub(super) async fn remove(ctx: &Context, made: &Made) -> Result<(), String> {
    let client = ctx.aws.ssm(made.region.as_deref());
    let (operation, result) = match made.kind {
        ACTIVATION => (
            "ssm:DeleteActivation",
            client
                .delete_activation()
                .activation_id(&made.id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws::classify(&e)),
        ),
        NODE => (
            "ssm:DeregisterManagedInstance",
            client
                .deregister_managed_instance()
                .instance_id(&made.id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws::classify(&e)),
        ),
        other => return Err(format!("Systems Manager makes no {other}")),
    };
    match result {
        Ok(()) => Ok(()),
        Err(f) if f.kind == Kind::NotFound => Ok(()),
        Err(f) => Err(format!("{operation}: {f}")),
    }
}
