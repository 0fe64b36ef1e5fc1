//! Tags follow the spec: `spec.systemsManager.tags` go on the managed node through its
//! activation when the host registers, and a later change of them is made on the node in place
//! (`AddTagsToResource` / `RemoveTagsFromResource`, resource type `ManagedInstance`): no
//! re-registration, no SSH session.
//!
//! Only the keys the object set are the object's: `status.nodeTags` records what it last set, so
//! a key taken out of the spec is removed from the node, and every other tag (the owner tags,
//! which the spec may not name, and tags someone else added) is left as it is. A key someone else
//! also set is the spec's while the spec names it. The node is looked at only when the spec's
//! tags differ from what was last set (not at every resync), and only for an on-premises node
//! this object registered (an adopted node is someone else's; an EC2 instance's tags are EC2's).

use std::collections::BTreeMap;

use aws_sdk_ssm::types::ResourceTypeForTagging;

use crate::aws;
use crate::conditions::Outcome;
use crate::context::Context;
use crate::resource::{InstanceRegistrationStatus, SystemsManagerSpec};

/// Makes node `id`'s tags follow `ssm.tags`, if they changed since they were last set
/// (`status.nodeTags`, updated once they are); returns what was changed, for the log.
pub(super) async fn follow(
    ctx: &Context,
    region: &str,
    ssm: &SystemsManagerSpec,
    id: &str,
    status: &mut InstanceRegistrationStatus,
) -> Result<Option<String>, Outcome> {
    if status.adopted || !super::is_managed_node_id(id) {
        return Ok(None);
    }
    let wanted: BTreeMap<&str, &str> = ssm
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    let set: Option<BTreeMap<&str, &str>> = status.node_tags.as_ref().map(|tags| {
        tags.iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect()
    });
    if set.as_ref() == Some(&wanted) {
        return Ok(None);
    }
    let on_node: BTreeMap<String, String> = super::evidence::tags(ctx, region, id)
        .await?
        .into_iter()
        .collect();
    let (add, remove) = changes(&wanted, set.as_ref(), &on_node);
    let client = ctx.aws.ssm(Some(region));
    if !add.is_empty() {
        let tags = add.iter().map(|(k, v)| super::tag(k, v)).collect();
        client
            .add_tags_to_resource()
            .resource_type(ResourceTypeForTagging::ManagedInstance)
            .resource_id(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| aws::classify(&e).outcome("ssm:AddTagsToResource"))?;
    }
    if !remove.is_empty() {
        client
            .remove_tags_from_resource()
            .resource_type(ResourceTypeForTagging::ManagedInstance)
            .resource_id(id)
            .set_tag_keys(Some(remove.iter().map(|k| (*k).to_owned()).collect()))
            .send()
            .await
            .map_err(|e| aws::classify(&e).outcome("ssm:RemoveTagsFromResource"))?;
    }
    let changed = (!add.is_empty() || !remove.is_empty()).then(|| {
        let keys = |list: Vec<&str>| match list.is_empty() {
            true => "none".to_owned(),
            false => list.join(", "),
        };
        format!(
            "set {}; removed {}",
            keys(add.iter().map(|(k, _)| *k).collect()),
            keys(remove)
        )
    });
    status.node_tags = Some(ssm.tags.clone());
    Ok(changed)
}

/// What to set and what to remove on a node whose tags are `on_node` so that the keys the object
/// set (`set`, `None` when not known) become `wanted`: wanted tags the node lacks or has with
/// another value; keys the object set that it no longer wants, if the node has them.
fn changes<'a>(
    wanted: &BTreeMap<&'a str, &'a str>,
    set: Option<&BTreeMap<&'a str, &'a str>>,
    on_node: &BTreeMap<String, String>,
) -> (Vec<(&'a str, &'a str)>, Vec<&'a str>) {
    let add = wanted
        .iter()
        .filter(|(k, v)| on_node.get(**k).map(String::as_str) != Some(**v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let remove = set
        .into_iter()
        .flat_map(|set| set.keys())
        .filter(|k| !wanted.contains_key(**k) && on_node.contains_key(**k))
        .copied()
        .collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn only_the_keys_the_object_set_are_changed() {
        let on_node: BTreeMap<String, String> = [
            ("registrar.dev/owner-uid", "uid"),
            ("team", "a"),
            ("env", "dev"),
            ("someone-else", "x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let set = map(&[("team", "a"), ("env", "dev")]);
        let wanted = map(&[("team", "b"), ("cost", "42")]);
        let (add, remove) = changes(&wanted, Some(&set), &on_node);
        assert_eq!(add, [("cost", "42"), ("team", "b")]);
        assert_eq!(remove, ["env"], "never the owner tag or someone else's");
        // Not known what was set (an object from before `status.nodeTags`): nothing is removed.
        let (_, remove) = changes(&wanted, None, &on_node);
        assert!(remove.is_empty());
        // Nothing to do when the node has what is wanted.
        let (add, remove) = changes(&set, Some(&set), &on_node);
        assert!(add.is_empty() && remove.is_empty());
    }
}
