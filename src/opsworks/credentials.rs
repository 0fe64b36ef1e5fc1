//! Step: the IAM entities the agent registers with, made as `aws opsworks register` makes them
//! (group `OpsWorks-<stack id>`, user `OpsWorks-<stack name>-<host name>` under `/AWS/OpsWorks/`,
//! the managed registration policy or, where that cannot be attached, an inline policy allowing
//! only RegisterInstance on the stack for 15 minutes, and one access key), but safe to repeat:
//!
//! - the user is tagged with the object's UID, and only users carrying that tag are ever changed
//!   or deleted; a name held by anyone else moves on to `+1`, `+2`, ... in a fixed order, so a
//!   restart finds its own user again;
//! - the secret access key exists once, at creation: it is kept in a Secret owned by the object
//!   until the install succeeds; a key found in IAM but not in that Secret (a crash between the
//!   two writes) is deleted and replaced, so the user never holds more than one key of ours;
//! - the inline policy is renewed when it has less than 10 minutes left, so a retried install
//!   does not fail on a policy that expired while the host was unreachable.

use aws_sdk_iam::types::Tag;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::{AccessKey, Findings, OpsWorks, findings};
use crate::aws::{self, Kind, Sensitive};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::failpoint;
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::steps::{OWNER_UID_TAG as OWNER_TAG, handoff};

/// The IAM path of everything made for OpsWorks registrations.
pub const IAM_PATH: &str = "/AWS/OpsWorks/";
/// The AWS managed policy for instance registration.
pub(crate) const MANAGED_POLICY_ARN: &str =
    "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";
/// The inline policy used where the managed one cannot be attached.
pub(crate) const INLINE_POLICY_NAME: &str = "OpsWorks-Instance";
/// How long the inline policy allows registration.
const INLINE_POLICY_LIFETIME: SignedDuration = SignedDuration::from_mins(15);
/// An inline policy with less than this left is renewed.
const INLINE_POLICY_RENEW_BEFORE: SignedDuration = SignedDuration::from_mins(10);
/// How many user names are tried (the base name, then `+1` to `+19`), as the CLI does.
const NAME_ATTEMPTS: usize = 20;
/// Keys of the credentials Secret.
const KEY_ID: &str = "access_key_id";
const KEY_SECRET: &str = "secret_access_key";

/// Replaces each run of characters IAM does not allow in names with `-`.
pub(crate) fn clean_for_iam(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

/// Shortens `name` to `max` characters: the first half, `...`, the last half.
pub(crate) fn shorten_name(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max {
        return name.to_owned();
    }
    let (q, r) = ((max - 3) / 2, (max - 3) % 2);
    let head: String = chars[..q + r].iter().collect();
    let tail: String = chars[chars.len() - q..].iter().collect();
    format!("{head}...{tail}")
}

/// The IAM group of a stack's registrations.
pub(crate) fn group_name(stack_id: &str) -> String {
    format!("OpsWorks-{}", clean_for_iam(stack_id))
}

/// The user names tried for a host, in order: `OpsWorks-<stack>-<host>`, then `+1` to `+19`.
pub(crate) fn user_name_candidates(stack_name: &str, name_for_iam: &str) -> Vec<String> {
    let base = format!(
        "OpsWorks-{}-{}",
        shorten_name(&clean_for_iam(stack_name), 25),
        shorten_name(&clean_for_iam(name_for_iam), 25)
    );
    (0..NAME_ATTEMPTS)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}+{n}")
            }
        })
        .collect()
}

/// The name the IAM user is derived from: the hostname override, else the target.
fn name_for_iam(obj: &InstanceRegistration) -> &str {
    obj.spec.hostname.as_deref().unwrap_or(&obj.spec.target)
}

/// The inline policy: RegisterInstance on the stack only, until `until`.
pub(crate) fn inline_policy_document(stack_arn: &str, until: Timestamp) -> String {
    serde_json::json!({
        "Statement": [{
            "Action": "opsworks:RegisterInstance",
            "Effect": "Allow",
            "Resource": stack_arn,
            "Condition": {"DateLessThan": {"aws:CurrentTime": until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}},
        }],
        "Version": "2012-10-17",
    })
    .to_string()
}

/// When an inline policy document (as IAM returns it: JSON, possibly URL-encoded) stops allowing
/// registration; `None` if it has no such limit or cannot be read.
pub fn inline_policy_expiry(document: &str) -> Option<Timestamp> {
    let json = policy_document_json(document)?;
    let statements = match &json["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        single => vec![single.clone()],
    };
    statements
        .iter()
        .filter_map(|s| s["Condition"]["DateLessThan"]["aws:CurrentTime"].as_str())
        .filter_map(|t| t.parse::<Timestamp>().ok())
        .min()
}

/// A policy document as IAM returns it (JSON, URL-encoded by IAM itself, plain from some
/// compatible endpoints), parsed.
pub fn policy_document_json(document: &str) -> Option<serde_json::Value> {
    serde_json::from_str(document)
        .or_else(|_| serde_json::from_str(&percent_decode(document)))
        .ok()
}

/// Undoes the URL encoding IAM applies to policy documents (RFC 3986, as GetUserPolicy
/// documents it: `%XX` escapes; a `+` is a plus, not a space, as the AWS CLI reads it). A `%` not
/// followed by two hex digits stays as it is; bytes that are not UTF-8 become U+FFFD.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The name of the Secret that holds the access key until the install succeeds.
pub(crate) fn credentials_secret_name(obj: &InstanceRegistration) -> String {
    handoff::secret_name(obj, "opsworks-access-key")
}

pub(super) async fn check(
    ow: &OpsWorks,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if obj.spec.use_instance_profile == Some(true) {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            "the agent registers with the EC2 instance profile; no IAM user is made",
        ));
    }
    if status.agent_installed_at.is_some() {
        // The agent has the key; the controller's copy is gone on purpose and must not be
        // "repaired" by replacing the key the agent is registering with.
        return Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            format!(
                "access key {} was handed to the agent",
                status.access_key_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    if let Some(existing) = findings(facts).existing.clone() {
        if status.registered_at.is_none() && status.access_key_id.is_none() {
            // Registered before this object recorded anything: possibly with the user and key it
            // made itself, if it was stopped between the install and writing status. Show them.
            record_own_user(ctx, obj, facts, status).await;
        }
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!("the host is already registered as {}", existing.id),
        ));
    }
    let Some(stack) = findings(facts).stack.clone() else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the stack is not resolved",
        ));
    };
    let Some(uid) = obj.uid() else {
        return Outcome::Retry(Observation::fails(
            reasons::WAITING,
            "the object has no UID yet",
        ));
    };
    // Each entity is looked at first and made only when missing, so a pass over finished work
    // writes nothing; a user this pass has just made has nothing yet, so its group, policy and
    // key are made without looking.
    let group = group_name(&stack.id);
    if let Err(outcome) = ensure_group(ow, ctx, &group).await {
        return outcome;
    }

    let (user, made_now) = match find_or_create_user(ctx, obj, &uid, &stack.name, status).await {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    status.iam_user_name = Some(user.clone());

    // The membership, the policy and the key each need only the user: made at once, a fresh
    // registration waits for two round trips to IAM, not four. Each is looked at before it is
    // made, so one that failed (or a controller stopped among them) is made by the next pass
    // and the others are found.
    let (member, policy, key) = tokio::join!(
        ensure_member(ow, ctx, &group, &user, made_now),
        ensure_policy(ctx, &user, &stack.arn, made_now),
        ensure_access_key(ctx, obj, &user, made_now),
    );
    let (policy, key) = match (member, policy, key) {
        (Ok(()), Ok(policy), Ok(key)) => (policy, key),
        (Err(outcome), _, _) | (_, Err(outcome), _) | (_, _, Err(outcome)) => return outcome,
    };
    status.access_key_id = Some(key.id.clone());
    let message = format!(
        "IAM user {user} in group {group}, {policy}, access key {}",
        key.id
    );
    findings(facts).access_key = Some(key);
    Outcome::Done(Observation::holds(reasons::SUCCEEDED, message))
}

/// Adds `user` to the stack's `group` unless it is a member already (a user made in this pass is
/// not: it is added without looking).
async fn ensure_member(
    ow: &OpsWorks,
    ctx: &Context,
    group: &str,
    user: &str,
    made_now: bool,
) -> Result<(), Outcome> {
    let iam = &ctx.aws.iam;
    let member = !made_now
        && match iam.list_groups_for_user().user_name(user).send().await {
            Ok(out) => out.groups().iter().any(|g| g.group_name() == group),
            Err(e) => return Err(aws::classify(&e).outcome("iam:ListGroupsForUser")),
        };
    if member {
        return Ok(());
    }
    if let Err(e) = iam
        .add_user_to_group()
        .group_name(group)
        .user_name(user)
        .send()
        .await
    {
        let failure = aws::classify(&e);
        if failure.kind == Kind::NotFound {
            // The group went (the stack's last registration was deleted meanwhile): make it
            // again on the next pass.
            ow.iam_groups.invalidate(group);
        }
        return Err(failure.outcome("iam:AddUserToGroup"));
    }
    failpoint::after("iam:AddUserToGroup");
    Ok(())
}

/// Makes the stack's IAM group unless it is known to exist: looked up (and made when missing)
/// once per stack for a while, shared by the objects of the stack reconciled at once.
async fn ensure_group(ow: &OpsWorks, ctx: &Context, group: &str) -> Result<(), Outcome> {
    let iam = &ctx.aws.iam;
    ow.iam_groups
        .get_or_fetch(group, || async {
            match iam.get_group().group_name(group).max_items(1).send().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let failure = aws::classify(&e);
                    if failure.kind != Kind::NotFound {
                        return Err(failure.outcome("iam:GetGroup"));
                    }
                }
            }
            match iam
                .create_group()
                .group_name(group)
                .path(IAM_PATH)
                .send()
                .await
            {
                Ok(_) => {
                    failpoint::after("iam:CreateGroup");
                    Ok(())
                }
                Err(e) => {
                    let failure = aws::classify(&e);
                    if failure.kind == Kind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(failure.outcome("iam:CreateGroup"))
                    }
                }
            }
        })
        .await
}

/// Records on status the IAM user this object made (tagged with its UID) and that user's access
/// key, if there is one. Best effort: a failed look-up leaves status as it was. Names are taken
/// in order, so the search stops at the first free one: this object's user, if any, took the
/// first name free at the time. A host registered without this object (the usual case) costs
/// one look-up, not one per candidate name.
async fn record_own_user(
    ctx: &Context,
    obj: &InstanceRegistration,
    facts: &Facts,
    status: &mut InstanceRegistrationStatus,
) {
    let stack = facts.own_ref::<Findings>().and_then(|f| f.stack.as_ref());
    let (Some(stack), Some(uid)) = (stack, obj.uid()) else {
        return;
    };
    for name in user_name_candidates(&stack.name, name_for_iam(obj)) {
        match ownership(ctx, &name, &uid).await {
            Ok(Some(true)) => {
                if let Ok(out) = ctx.aws.iam.list_access_keys().user_name(&name).send().await {
                    status.access_key_id = out
                        .access_key_metadata()
                        .first()
                        .and_then(|k| k.access_key_id())
                        .map(str::to_owned);
                }
                status.iam_user_name = Some(name);
                return;
            }
            Ok(Some(false)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Whether IAM user `name` exists and whether it carries `uid` in its owner tag.
async fn ownership(ctx: &Context, name: &str, uid: &str) -> Result<Option<bool>, aws::Failure> {
    match ctx.aws.iam.list_user_tags().user_name(name).send().await {
        Ok(out) => Ok(Some(
            out.tags()
                .iter()
                .any(|t| t.key() == OWNER_TAG && t.value() == uid),
        )),
        Err(e) => {
            let failure = aws::classify(&e);
            match failure.kind {
                Kind::NotFound => Ok(None),
                _ => Err(failure),
            }
        }
    }
}

/// This object's IAM user: the one on status if it is still ours, else the first candidate
/// name that is free (created then, with the owner tag) or ours. A name is tried by creating
/// the user and only looked at when it exists, so a fresh registration makes no look-up. Also
/// says whether the user was made just now (and so has no group, policy or key yet).
async fn find_or_create_user(
    ctx: &Context,
    obj: &InstanceRegistration,
    uid: &str,
    stack_name: &str,
    status: &InstanceRegistrationStatus,
) -> Result<(String, bool), Outcome> {
    if let Some(recorded) = &status.iam_user_name {
        match ownership(ctx, recorded, uid).await {
            Ok(Some(true)) => return Ok((recorded.clone(), false)),
            Ok(_) => {}
            Err(f) => return Err(f.outcome("iam:ListUserTags")),
        }
    }
    let candidates = user_name_candidates(stack_name, name_for_iam(obj));
    let object_tag = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let tag = |key: &str, value: &str| {
        Tag::builder()
            .key(key)
            .value(value)
            .build()
            .expect("key and value set")
    };
    let mut tags = vec![
        tag(OWNER_TAG, uid),
        tag("registrar.dev/object", &object_tag),
    ];
    // The cluster's tag, for the orphan audit (`crate::audit`).
    if let Some(cluster) = &ctx.settings.cluster_id {
        tags.push(tag(crate::steps::CLUSTER_TAG, cluster));
    }
    for name in &candidates {
        let created = ctx
            .aws
            .iam
            .create_user()
            .user_name(name)
            .path(IAM_PATH)
            .set_permissions_boundary(ctx.settings.iam_permissions_boundary.clone())
            .set_tags(Some(tags.clone()))
            .send()
            .await;
        match created {
            Ok(_) => {
                failpoint::after("iam:CreateUser");
                return Ok((name.clone(), true));
            }
            Err(e) => {
                let failure = aws::classify(&e);
                if failure.kind != Kind::AlreadyExists {
                    return Err(failure.outcome("iam:CreateUser"));
                }
                // Made earlier (by this object, stopped before it wrote status, or by someone
                // else): ours only if tagged so.
                match ownership(ctx, name, uid).await {
                    Ok(Some(true)) => return Ok((name.clone(), false)),
                    Ok(_) => continue,
                    Err(f) => return Err(f.outcome("iam:ListUserTags")),
                }
            }
        }
    }
    Err(Outcome::Blocked(Observation::fails(
        reasons::IAM_NAMES_EXHAUSTED,
        format!(
            "IAM users {} to {} all exist and were not made for this object",
            candidates[0],
            candidates[candidates.len() - 1]
        ),
    )))
}

/// Lets `user` register on the stack: the managed policy if attached or attachable, else the
/// inline policy, renewed when it is about to expire. Returns a description for the message.
/// A user `made_now` has no policy: nothing is looked up.
async fn ensure_policy(
    ctx: &Context,
    user: &str,
    stack_arn: &str,
    made_now: bool,
) -> Result<String, Outcome> {
    let iam = &ctx.aws.iam;
    if !made_now {
        let attached = iam
            .list_attached_user_policies()
            .user_name(user)
            .send()
            .await
            .map_err(|e| aws::classify(&e).outcome("iam:ListAttachedUserPolicies"))?;
        if attached
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn() == Some(MANAGED_POLICY_ARN))
        {
            return Ok("managed policy AWSOpsWorksInstanceRegistration".into());
        }
    }
    let now = Timestamp::now();
    let inline = if made_now {
        None
    } else {
        match iam
            .get_user_policy()
            .user_name(user)
            .policy_name(INLINE_POLICY_NAME)
            .send()
            .await
        {
            Ok(out) => Some(inline_policy_expiry(out.policy_document())),
            Err(e) => {
                let failure = aws::classify(&e);
                if failure.kind != Kind::NotFound {
                    return Err(failure.outcome("iam:GetUserPolicy"));
                }
                None
            }
        }
    };
    match inline {
        Some(Some(expiry)) if expiry > now + INLINE_POLICY_RENEW_BEFORE => {
            return Ok(format!(
                "inline policy {INLINE_POLICY_NAME} until {}",
                expiry.strftime("%H:%M:%SZ")
            ));
        }
        Some(_) => {} // ours, about to expire (or unreadable): renew below
        None => match iam
            .attach_user_policy()
            .user_name(user)
            .policy_arn(MANAGED_POLICY_ARN)
            .send()
            .await
        {
            Ok(_) => {
                failpoint::after("iam:AttachUserPolicy");
                return Ok("managed policy AWSOpsWorksInstanceRegistration".into());
            }
            Err(e) => {
                let failure = aws::classify(&e);
                // The CLI falls back on AccessDenied; since the service closed, the managed
                // policy may not exist at all, so NoSuchEntity falls back too.
                if !matches!(failure.kind, Kind::AccessDenied | Kind::NotFound) {
                    return Err(failure.outcome("iam:AttachUserPolicy"));
                }
            }
        },
    }
    let until = now + INLINE_POLICY_LIFETIME;
    iam.put_user_policy()
        .user_name(user)
        .policy_name(INLINE_POLICY_NAME)
        .policy_document(inline_policy_document(stack_arn, until))
        .send()
        .await
        .map_err(|e| aws::classify(&e).outcome("iam:PutUserPolicy"))?;
    failpoint::after("iam:PutUserPolicy");
    Ok(format!(
        "inline policy {INLINE_POLICY_NAME} until {}",
        until.strftime("%H:%M:%SZ")
    ))
}

/// Deletes the Secret that holds the agent's secret access key (done once the agent has it, and
/// on deletion). A Secret already gone is fine.
pub(crate) async fn forget_secret(
    ctx: &Context,
    obj: &InstanceRegistration,
) -> Result<bool, String> {
    handoff::forget(ctx, obj, &credentials_secret_name(obj)).await
}

/// The user's one access key, with its secret half from the credentials Secret; any key the
/// Secret does not hold is deleted, and a new one made (and stored) when none is usable. A user
/// `made_now` has no key: nothing is looked up.
async fn ensure_access_key(
    ctx: &Context,
    obj: &InstanceRegistration,
    user: &str,
    made_now: bool,
) -> Result<AccessKey, Outcome> {
    let iam = &ctx.aws.iam;
    let secret_name = credentials_secret_name(obj);
    let (stored, in_iam) = if made_now {
        (None, Vec::new())
    } else {
        let stored = handoff::read(ctx, obj, &secret_name)
            .await?
            .and_then(|data| {
                let id = data.get(KEY_ID)?.clone();
                let secret = data.get(KEY_SECRET)?.clone();
                (!id.is_empty() && !secret.is_empty()).then(|| AccessKey {
                    id,
                    secret: Sensitive::new(secret),
                })
            });
        let listed = iam
            .list_access_keys()
            .user_name(user)
            .send()
            .await
            .map_err(|e| aws::classify(&e).outcome("iam:ListAccessKeys"))?;
        let in_iam: Vec<String> = listed
            .access_key_metadata()
            .iter()
            .filter_map(|k| k.access_key_id().map(str::to_owned))
            .collect();
        (stored, in_iam)
    };
    let keep = stored.filter(|s| in_iam.contains(&s.id));
    for id in in_iam
        .iter()
        .filter(|id| keep.as_ref().is_none_or(|k| &k.id != *id))
    {
        // Ours (the user is), and unusable: its secret half is not in the Secret.
        iam.delete_access_key()
            .user_name(user)
            .access_key_id(id)
            .send()
            .await
            .map_err(|e| aws::classify(&e).outcome("iam:DeleteAccessKey"))?;
        failpoint::after("iam:DeleteAccessKey");
    }
    if let Some(key) = keep {
        return Ok(key);
    }
    let created = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .map_err(|e| aws::classify(&e).outcome("iam:CreateAccessKey"))?;
    failpoint::after("iam:CreateAccessKey");
    let Some(made) = created.access_key() else {
        return Err(Outcome::Retry(Observation::fails(
            reasons::AWS_UNAVAILABLE,
            "iam:CreateAccessKey returned no key",
        )));
    };
    let key = AccessKey {
        id: made.access_key_id().to_owned(),
        secret: Sensitive::new(made.secret_access_key()),
    };
    // If this write fails the key is unusable; the next pass deletes it and makes another.
    handoff::write(
        ctx,
        obj,
        &secret_name,
        &[(KEY_ID, &key.id), (KEY_SECRET, key.secret.expose())],
    )
    .await?;
    failpoint::after("kube:WriteCredentialsSecret");
    Ok(key)
}

/// Deletes every IAM user this object made (keys, policies, group memberships, then the user),
/// the stack's group if that leaves it empty, and the credentials Secret. Touches nothing not
/// tagged with the object's UID. `stack_name` is `None` when the stack is gone; the user recorded
/// on status is still found then. Without `tidy_group` the stack's group is left even if empty
/// (the object's namespace may not use the stack).
pub(super) async fn cleanup_iam(
    ow: &OpsWorks,
    ctx: &Context,
    obj: &InstanceRegistration,
    stack_name: Option<&str>,
    tidy_group: bool,
) -> Result<Vec<String>, aws::Failure> {
    let iam = &ctx.aws.iam;
    let uid = obj.uid().unwrap_or_default();
    let status = obj.status.clone().unwrap_or_default();
    // The user recorded on status is the one this object made (it owns one at most); the 20
    // candidate names are searched only when none is recorded (stopped between CreateUser and
    // writing status). Each look-up is a call, and every pass of a deletion must get through an
    // IAM that may be throttling: probing 20 names each pass made deletion all but impossible.
    let mut names: Vec<String> = status.iam_user_name.iter().cloned().collect();
    if names.is_empty()
        && let Some(stack_name) = stack_name
    {
        names.extend(user_name_candidates(stack_name, name_for_iam(obj)));
    }
    names.dedup();
    // Looked at all at once: one after another, 20 candidates made a deletion wait on 20 round
    // trips (14.6 s in the fleet benchmark, with IAM busy).
    let owners =
        futures::future::join_all(names.iter().map(|name| ownership(ctx, name, &uid))).await;
    let mut ours = Vec::new();
    for (name, owner) in names.into_iter().zip(owners) {
        if owner? == Some(true) {
            ours.push(name);
        }
    }
    let mut deleted = Vec::new();
    for name in ours {
        delete_user(iam, &name).await?;
        deleted.push(name);
    }
    if !tidy_group {
        return Ok(deleted);
    }
    tidy(ow, iam, &group_name(obj.spec.stack_id())).await?;
    Ok(deleted)
}

/// Deletes IAM user `name` with its access keys and policies, out of its groups first.
pub(super) async fn delete_user(iam: &aws_sdk_iam::Client, name: &str) -> Result<(), aws::Failure> {
    let keys = iam
        .list_access_keys()
        .user_name(name)
        .send()
        .await
        .map_err(|e| aws::classify(&e))?;
    for key in keys.access_key_metadata() {
        if let Some(id) = key.access_key_id() {
            ignore_not_found(
                iam.delete_access_key()
                    .user_name(name)
                    .access_key_id(id)
                    .send()
                    .await,
            )?;
        }
    }
    let attached = iam
        .list_attached_user_policies()
        .user_name(name)
        .send()
        .await
        .map_err(|e| aws::classify(&e))?;
    for policy in attached.attached_policies() {
        if let Some(arn) = policy.policy_arn() {
            ignore_not_found(
                iam.detach_user_policy()
                    .user_name(name)
                    .policy_arn(arn)
                    .send()
                    .await,
            )?;
        }
    }
    let inline = iam
        .list_user_policies()
        .user_name(name)
        .send()
        .await
        .map_err(|e| aws::classify(&e))?;
    for policy in inline.policy_names() {
        ignore_not_found(
            iam.delete_user_policy()
                .user_name(name)
                .policy_name(policy)
                .send()
                .await,
        )?;
    }
    let groups = iam
        .list_groups_for_user()
        .user_name(name)
        .send()
        .await
        .map_err(|e| aws::classify(&e))?;
    for group in groups.groups() {
        ignore_not_found(
            iam.remove_user_from_group()
                .user_name(name)
                .group_name(group.group_name())
                .send()
                .await,
        )?;
    }
    ignore_not_found(iam.delete_user().user_name(name).send().await)?;
    Ok(())
}

/// Deletes the stack's IAM group `group` when no user is left in it.
async fn tidy(ow: &OpsWorks, iam: &aws_sdk_iam::Client, group: &str) -> Result<(), aws::Failure> {
    match iam.get_group().group_name(group).send().await {
        Ok(out) if out.users().is_empty() => {
            ow.iam_groups.invalidate(group);
            if let Err(e) = iam.delete_group().group_name(group).send().await {
                let failure = aws::classify(&e);
                // DeleteConflict: someone joined it meanwhile; it stays.
                if !matches!(failure.kind, Kind::NotFound)
                    && failure.code.as_deref() != Some("DeleteConflict")
                {
                    return Err(failure);
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            let failure = aws::classify(&e);
            if failure.kind != Kind::NotFound {
                return Err(failure);
            }
        }
    }
    Ok(())
}

fn ignore_not_found<T, E>(
    result: Result<T, aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>>,
) -> Result<(), aws::Failure>
where
    E: aws_sdk_iam::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let failure = aws::classify(&e);
            if failure.kind == Kind::NotFound {
                Ok(())
            } else {
                Err(failure)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_shortened_as_the_cli_does() {
        assert_eq!(clean_for_iam("web server #1 (prod)"), "web-server-1-prod-");
        assert_eq!(clean_for_iam("a+b=c,d.e@f_g-h"), "a+b=c,d.e@f_g-h");
        assert_eq!(clean_for_iam("ünïcode"), "-n-code");
        assert_eq!(shorten_name("short", 25), "short");
        let long = "abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(shorten_name(long, 25), "abcdefghijk...z0123456789");
        assert_eq!(shorten_name(long, 26), "abcdefghijkl...z0123456789");
    }

    #[test]
    fn user_names_follow_the_cli_then_count_up() {
        let names = user_name_candidates("EC2Register", "web-1");
        assert_eq!(names[0], "OpsWorks-EC2Register-web-1");
        assert_eq!(names[1], "OpsWorks-EC2Register-web-1+1");
        assert_eq!(names[19], "OpsWorks-EC2Register-web-1+19");
        assert_eq!(names.len(), 20);
        let long = user_name_candidates(&"S".repeat(100), &"h".repeat(100));
        assert!(
            long.iter().all(|n| n.len() <= 64),
            "IAM names are at most 64 characters"
        );
        assert_eq!(
            group_name("2f1ad2a4-6e7f-4c1b-9a55-0c7b1d3e4f50"),
            "OpsWorks-2f1ad2a4-6e7f-4c1b-9a55-0c7b1d3e4f50"
        );
    }

    #[test]
    fn the_inline_policy_allows_only_register_instance_on_the_stack_until_its_expiry() {
        let until: Timestamp = "2026-11-26T03:00:00Z".parse().unwrap();
        let doc = inline_policy_document("arn:aws:opsworks:us-east-1:123456789012:stack/x/", until);
        let json: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(json["Statement"][0]["Action"], "opsworks:RegisterInstance");
        assert_eq!(
            json["Statement"][0]["Resource"],
            "arn:aws:opsworks:us-east-1:123456789012:stack/x/"
        );
        assert_eq!(
            json["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"],
            "2026-11-26T03:00:00Z"
        );
        assert_eq!(inline_policy_expiry(&doc), Some(until));
        let encoded = doc
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace(':', "%3A");
        assert_eq!(inline_policy_expiry(&encoded), Some(until));
        assert_eq!(inline_policy_expiry("{\"Statement\": []}"), None);
        assert_eq!(inline_policy_expiry("not json"), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes_and_never_panics() {
        for (input, decoded) in [
            ("%", "%"),
            ("%é", "%é"),
            ("%4é", "%4é"),
            ("%€", "%€"),
            ("x%aé%", "x%aé%"),
            ("%zz", "%zz"),
            ("%%", "%%"),
            ("%%41", "%A"),
            ("abc%4", "abc%4"),
            ("%C3%A9", "é"),
            ("%e9", "\u{FFFD}"),
            ("a+b%20c%2Bd", "a+b c+d"),
        ] {
            assert_eq!(percent_decode(input), decoded, "{input:?}");
        }
        // A hostile document read back from IAM is merely unreadable.
        assert_eq!(inline_policy_expiry("%7B%22Statement%22%3A%4é"), None);
        assert_eq!(policy_document_json("%4é"), None);
    }
}
