//! What OpsWorks made for objects, for the orphan audit (`crate::audit`): the IAM users in the
//! stack groups (`OpsWorks-<stack>`) of the stacks the controller's objects name, that carry an
//! owner UID tag; and their removal (keys, policies, group memberships, then the user).
//!
//! A user is found through its stack's group (`iam:GetGroup`, which deletion needs already):
//! the controller's policy has no `iam:ListUsers`. A user of a stack no object names any more
//! is not found.

use std::collections::BTreeSet;

use super::credentials::{self, group_name};
use crate::aws::{self, Kind};
use crate::context::{Context, Made};
use crate::steps::{CLUSTER_TAG, OWNER_UID_TAG};

/// What the audit calls an IAM user.
const USER: &str = "IAM user";
/// The tag that names the object as `namespace/name` on an IAM user.
const OBJECT_TAG: &str = "registrar.dev/object";

/// The IAM users in the groups of the stacks the controller's objects name that carry an owner
/// UID tag.
pub(super) async fn made(ctx: &Context) -> Result<Vec<Made>, String> {
    let groups: BTreeSet<String> = ctx
        .store
        .state()
        .iter()
        .filter(|o| o.spec.stack_id.is_some())
        .map(|o| group_name(o.spec.stack_id()))
        .collect();
    let mut found = Vec::new();
    for group in groups {
        let members = match ctx.aws.iam.get_group().group_name(&group).send().await {
            Ok(out) => out.users().to_vec(),
            Err(e) => {
                let failure = aws::classify(&e);
                if failure.kind == Kind::NotFound {
                    continue;
                }
                return Err(format!("iam:GetGroup {group}: {failure}"));
            }
        };
        for user in members {
            if user.path() != credentials::IAM_PATH {
                continue;
            }
            let name = user.user_name();
            let tags = match ctx.aws.iam.list_user_tags().user_name(name).send().await {
                Ok(out) => out.tags().to_vec(),
                Err(e) => {
                    let failure = aws::classify(&e);
                    if failure.kind == Kind::NotFound {
                        continue;
                    }
                    return Err(format!("iam:ListUserTags {name}: {failure}"));
                }
            };
            let get = |key: &str| {
                tags.iter()
                    .find(|t| t.key() == key)
                    .map(|t| t.value().to_owned())
            };
            let Some(owner_uid) = get(OWNER_UID_TAG) else {
                continue;
            };
            found.push(Made {
                service: "OpsWorks",
                kind: USER,
                id: name.to_owned(),
                region: None,
                owner_uid,
                owner: get(OBJECT_TAG),
                cluster: get(CLUSTER_TAG),
            });
        }
    }
    Ok(found)
}

/// Deletes the IAM user `made` names, with its keys and policies (gone already is fine).
pub(super) async fn remove(ctx: &Context, made: &Made) -> Result<(), String> {
    if made.kind != USER {
        return Err(format!("OpsWorks makes no {}", made.kind));
    }
    credentials::delete_user(&ctx.aws.iam, &made.id)
        .await
        .map_err(|f| format!("deleting IAM user {}: {f}", made.id))
}
