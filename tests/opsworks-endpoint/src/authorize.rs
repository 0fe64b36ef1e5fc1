//! What an AWS call is authorized as: the action, the resource ARN and the request context keys
//! AWS's Service Authorization Reference gives for it, as far as the controller's calls go.
//!
//! moto authorizes its own IAM and EC2 calls on the resource `*` and never meets a `Condition`,
//! so a policy scoped the way IAM allows (users under a path, `iam:PolicyARN`,
//! `iam:PassedToService`) cannot be tried against it. The proxy in front of moto
//! ([`crate::ProxyConfig::enforce_iam_policies`]) and the endpoint
//! ([`crate::Config::enforce_iam_policies`]) authorize with these checks instead, with
//! [`crate::policy::evaluate_in`].
//!
//! IAM names a user, group or role in its resource ARN with the entity's path
//! (`arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-web-1`). For an entity that does not
//! exist, IAM cannot know a path, and authorizes on the ARN without one (`user/OpsWorks-web-1`):
//! a policy scoped to a path refuses looking up a name that is free, with `AccessDenied` rather
//! than `NoSuchEntity`. [`iam_checks`] takes the ARNs of the entities that exist ([`named`]
//! says which to look up) and builds the path-less ARN for the others; `CreateUser` and
//! `CreateGroup` are authorized on the ARN with the path they ask for.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::aws::{Aws, KeyOwner};
use crate::policy::{Context, Outcome, Policy, evaluate_in};

/// One authorization AWS makes for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `service:Action`, e.g. `iam:CreateUser`.
    pub action: String,
    /// The resource ARN, or `*` for an action without resource-level permissions.
    pub resource: String,
    /// The request's condition keys.
    pub context: Context,
}

/// A kind of IAM entity named by a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// A user (`UserName`).
    User,
    /// A group (`GroupName`).
    Group,
    /// A role (`RoleName`).
    Role,
}

impl Entity {
    fn arn_part(self) -> &'static str {
        match self {
            Entity::User => "user",
            Entity::Group => "group",
            Entity::Role => "role",
        }
    }
}

/// The parameters of a query-protocol call (`UserName`, `Tags.member.1.Key`, ...).
pub type Params = BTreeMap<String, String>;

/// IAM actions whose resource is the user named by `UserName` (the caller when it is absent).
const USER_ACTIONS: &[&str] = &[
    "CreateUser",
    "GetUser",
    "DeleteUser",
    "TagUser",
    "UntagUser",
    "ListUserTags",
    "ListGroupsForUser",
    "ListAttachedUserPolicies",
    "ListUserPolicies",
    "GetUserPolicy",
    "PutUserPolicy",
    "DeleteUserPolicy",
    "AttachUserPolicy",
    "DetachUserPolicy",
    "ListAccessKeys",
    "CreateAccessKey",
    "UpdateAccessKey",
    "DeleteAccessKey",
];

/// IAM actions whose resource is the group named by `GroupName`.
const GROUP_ACTIONS: &[&str] = &[
    "CreateGroup",
    "GetGroup",
    "DeleteGroup",
    "AddUserToGroup",
    "RemoveUserFromGroup",
];

/// IAM actions whose resource is the role named by `RoleName`.
const ROLE_ACTIONS: &[&str] = &["GetRole"];

/// The entity an IAM call's resource is, and its name (`caller` when a user action names none).
fn target(action: &str, params: &Params, caller: &str) -> Option<(Entity, String)> {
    let named = |key: &str| params.get(key).cloned();
    if USER_ACTIONS.contains(&action) {
        return Some((
            Entity::User,
            named("UserName").unwrap_or_else(|| caller.to_owned()),
        ));
    }
    if GROUP_ACTIONS.contains(&action) {
        return named("GroupName").map(|n| (Entity::Group, n));
    }
    if ROLE_ACTIONS.contains(&action) {
        return named("RoleName").map(|n| (Entity::Role, n));
    }
    None
}

/// The entity whose ARN [`iam_checks`] needs for an IAM `action` (to look up whether it exists,
/// and at which path); `None` when it needs none (the action makes it, or has no such resource).
pub fn named(action: &str, params: &Params, caller: &str) -> Option<(Entity, String)> {
    if matches!(action, "CreateUser" | "CreateGroup") {
        return None;
    }
    target(action, params, caller)
}

/// `aws:RequestTag/<key>` and `aws:TagKeys` of the tags a call carries (`Tags.member.N.Key`).
fn tag_context(params: &Params, context: &mut Context) -> bool {
    let mut tagged = false;
    for (name, key) in params {
        let Some(n) = name
            .strip_prefix("Tags.member.")
            .and_then(|rest| rest.strip_suffix(".Key"))
        else {
            continue;
        };
        let value = params
            .get(&format!("Tags.member.{n}.Value"))
            .cloned()
            .unwrap_or_default();
        context.insert(&format!("aws:RequestTag/{key}"), value);
        context.insert("aws:TagKeys", key.clone());
        tagged = true;
    }
    tagged
}

/// The authorizations of IAM call `action` with `params` by IAM user `caller`, in account
/// `account`. `existing` holds the ARN of the entity [`named`] names, when it exists.
pub fn iam_checks(
    action: &str,
    params: &Params,
    account: &str,
    caller: &str,
    existing: Option<&str>,
) -> Vec<Check> {
    let qualified = format!("iam:{action}");
    let Some((entity, name)) = target(action, params, caller) else {
        return vec![Check {
            action: qualified,
            resource: "*".into(),
            context: Context::new(),
        }];
    };
    let resource = match (action, existing) {
        ("CreateUser" | "CreateGroup", _) => {
            let path = params.get("Path").map(String::as_str).unwrap_or("/");
            format!("arn:aws:iam::{account}:{}{path}{name}", entity.arn_part())
        }
        (_, Some(arn)) => arn.to_owned(),
        (_, None) => format!("arn:aws:iam::{account}:{}/{name}", entity.arn_part()),
    };
    let mut context = Context::new();
    let mut checks = Vec::new();
    match action {
        "AttachUserPolicy" | "DetachUserPolicy" => {
            if let Some(arn) = params.get("PolicyArn") {
                context.insert("iam:PolicyARN", arn.clone());
            }
        }
        "CreateUser" | "TagUser" => {
            if let Some(boundary) = params.get("PermissionsBoundary") {
                context.insert("iam:PermissionsBoundary", boundary.clone());
            }
            // Tags given to CreateUser are authorized as iam:TagUser as well (IAM's user guide,
            // "Permissions required to tag IAM entities").
            if tag_context(params, &mut context) && action == "CreateUser" {
                checks.push(Check {
                    action: "iam:TagUser".into(),
                    resource: resource.clone(),
                    context: context.clone(),
                });
            }
        }
        _ => {}
    }
    checks.insert(
        0,
        Check {
            action: qualified,
            resource,
            context,
        },
    );
    checks
}

/// Where a JSON-protocol call (OpsWorks, Systems Manager) happens, for its resource ARNs.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The caller's account.
    pub account: &'a str,
    /// The region of the call's signature.
    pub region: &'a str,
    /// The OpsWorks stack the call names (by `StackId`, one of `StackIds`, or its
    /// `InstanceId`'s stack), as an ARN.
    pub stack_arn: Option<&'a str>,
    /// The ARN of the role `IamRole` names (Systems Manager's `CreateActivation`).
    pub role_arn: Option<&'a str>,
}

/// The authorizations of OpsWorks or Systems Manager call `operation` with `input`:
/// - OpsWorks: `opsworks:<Operation>` on the stack it names (`*` when it names none);
/// - Systems Manager: `ssm:DeregisterManagedInstance`, and `ssm:ListTagsForResource`,
///   `ssm:AddTagsToResource` and `ssm:RemoveTagsFromResource` of a `ManagedInstance`, on the
///   managed instance
///   (`arn:aws:ssm:<region>:<account>:managed-instance/mi-...`), the others on `*`;
///   `CreateActivation` is also `iam:PassRole` on its role, with `iam:PassedToService`
///   `ssm.amazonaws.com`, and with tags `ssm:AddTagsToResource` (tags given on creation are
///   authorized as tagging too), both with the tags as `aws:RequestTag/...`, `aws:TagKeys`.
pub fn json_checks(
    service: crate::Service,
    operation: &str,
    input: &serde_json::Value,
    place: &Place<'_>,
) -> Vec<Check> {
    use serde_json::Value;
    let prefix = match service {
        crate::Service::OpsWorks => "opsworks",
        crate::Service::Ssm => "ssm",
    };
    let mut tags = Context::new();
    // The keys a RemoveTagsFromResource takes off.
    for key in input
        .get("TagKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        tags.insert("aws:TagKeys", key.as_str().unwrap_or_default());
    }
    let tagged = input
        .get("Tags")
        .and_then(Value::as_array)
        .is_some_and(|list| {
            for tag in list {
                let text = |k: &str| tag.get(k).and_then(Value::as_str).unwrap_or_default();
                tags.insert(&format!("aws:RequestTag/{}", text("Key")), text("Value"));
                tags.insert("aws:TagKeys", text("Key"));
            }
            !list.is_empty()
        });
    let resource = match (service, operation) {
        (crate::Service::OpsWorks, _) => place.stack_arn.unwrap_or("*").to_owned(),
        (crate::Service::Ssm, "DeregisterManagedInstance") => format!(
            "arn:aws:ssm:{}:{}:managed-instance/{}",
            place.region,
            place.account,
            input
                .get("InstanceId")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        // A managed node's tags: on the node (other resource types are not served here).
        (
            crate::Service::Ssm,
            "ListTagsForResource" | "AddTagsToResource" | "RemoveTagsFromResource",
        ) if input.get("ResourceType").and_then(Value::as_str) == Some("ManagedInstance") => {
            format!(
                "arn:aws:ssm:{}:{}:managed-instance/{}",
                place.region,
                place.account,
                input
                    .get("ResourceId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )
        }
        _ => "*".to_owned(),
    };
    let mut checks = vec![Check {
        action: format!("{prefix}:{operation}"),
        resource,
        context: tags.clone(),
    }];
    if service == crate::Service::Ssm && operation == "CreateActivation" {
        if tagged {
            checks.push(Check {
                action: "ssm:AddTagsToResource".into(),
                resource: "*".into(),
                context: tags.clone(),
            });
        }
        checks.push(Check {
            action: "iam:PassRole".into(),
            resource: place.role_arn.unwrap_or("*").to_owned(),
            context: Context::new().with("iam:PassedToService", "ssm.amazonaws.com"),
        });
    }
    checks
}

/// The parameters of a form-encoded query-protocol request.
pub fn form_params(form: &str) -> Params {
    let decode = crate::proxy::form_decode;
    form.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The account of an ARN (`arn:aws:iam::123456789012:user/x` gives `123456789012`).
pub fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The caller's policies do not allow it: AWS's `AccessDenied` message.
    Denied(String),
    /// Its policies could not be learnt from IAM.
    Failed(String),
}

/// Whether `policies` of IAM user `user_arn` allow `check`, with AWS's message when not.
pub(crate) fn judge(user_arn: &str, policies: &[Policy], check: &Check) -> Result<(), Refusal> {
    let Check {
        action, resource, ..
    } = check;
    match evaluate_in(
        policies,
        action,
        resource,
        &check.context,
        SystemTime::now(),
    ) {
        Outcome::Allowed(_) => Ok(()),
        Outcome::Denied(source) => Err(Refusal::Denied(format!(
            "User: {user_arn} is not authorized to perform: {action} on resource: {resource} \
             with an explicit deny in {source}"
        ))),
        Outcome::NotAllowed(_) => Err(Refusal::Denied(format!(
            "User: {user_arn} is not authorized to perform: {action} on resource: {resource} \
             because no identity-based policy allows the {action} action"
        ))),
    }
}

/// Authorizes query-protocol call `service:action` (IAM, EC2) signed with `access_key_id`
/// against the policies of the IAM user owning the key, as [`iam_checks`] says AWS does (EC2
/// calls on `*`). Keys that are no IAM user's (the tests' static keys) are not judged.
pub(crate) async fn authorize_query_call(
    aws: &Aws,
    access_key_id: &str,
    service: &str,
    action: &str,
    params: &Params,
) -> Result<(), Refusal> {
    let owner = aws
        .key_owner(access_key_id)
        .await
        .map_err(Refusal::Failed)?;
    let KeyOwner::IamUser { user_name, .. } = owner else {
        return Ok(());
    };
    let (user_arn, policies) = aws
        .user_policies(&user_name)
        .await
        .map_err(Refusal::Failed)?;
    let account = account_of(&user_arn).unwrap_or("123456789012");
    let checks = match service {
        "iam" => {
            let existing = match named(action, params, &user_name) {
                Some((entity, name)) => aws
                    .entity_arn(entity, &name)
                    .await
                    .map_err(Refusal::Failed)?,
                None => None,
            };
            iam_checks(action, params, account, &user_name, existing.as_deref())
        }
        _ => vec![Check {
            action: format!("{service}:{action}"),
            resource: "*".into(),
            context: Context::new(),
        }],
    };
    for check in &checks {
        judge(&user_arn, &policies, check)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ACCOUNT: &str = "123456789012";

    #[test]
    fn create_user_is_authorized_on_its_path_with_its_tags_and_boundary() {
        let p = params(&[
            ("UserName", "OpsWorks-s-web"),
            ("Path", "/AWS/OpsWorks/"),
            ("PermissionsBoundary", "arn:aws:iam::aws:policy/B"),
            ("Tags.member.1.Key", "registrar.dev/owner"),
            ("Tags.member.1.Value", "uid-1"),
        ]);
        assert_eq!(named("CreateUser", &p, "me"), None);
        let checks = iam_checks("CreateUser", &p, ACCOUNT, "me", None);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].action, "iam:CreateUser");
        assert_eq!(checks[1].action, "iam:TagUser");
        for c in &checks {
            assert_eq!(
                c.resource,
                "arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-s-web"
            );
            let expected = Context::new()
                .with("iam:PermissionsBoundary", "arn:aws:iam::aws:policy/B")
                .with("aws:RequestTag/registrar.dev/owner", "uid-1")
                .with("aws:TagKeys", "registrar.dev/owner");
            assert_eq!(c.context, expected);
        }
        // No tags: no TagUser; no path: the root.
        let bare = iam_checks(
            "CreateUser",
            &params(&[("UserName", "u")]),
            ACCOUNT,
            "me",
            None,
        );
        assert_eq!(bare.len(), 1);
        assert_eq!(bare[0].resource, "arn:aws:iam::123456789012:user/u");
    }

    #[test]
    fn existing_entities_keep_their_path_and_free_names_have_none() {
        let p = params(&[("UserName", "OpsWorks-s-web")]);
        assert_eq!(
            named("ListUserTags", &p, "me"),
            Some((Entity::User, "OpsWorks-s-web".into()))
        );
        let arn = "arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-s-web";
        assert_eq!(
            iam_checks("ListUserTags", &p, ACCOUNT, "me", Some(arn))[0].resource,
            arn
        );
        assert_eq!(
            iam_checks("ListUserTags", &p, ACCOUNT, "me", None)[0].resource,
            "arn:aws:iam::123456789012:user/OpsWorks-s-web"
        );
        let g = params(&[("GroupName", "OpsWorks-abc"), ("UserName", "u")]);
        assert_eq!(
            named("AddUserToGroup", &g, "me"),
            Some((Entity::Group, "OpsWorks-abc".into()))
        );
        assert_eq!(
            iam_checks("GetGroup", &g, ACCOUNT, "me", None)[0].resource,
            "arn:aws:iam::123456789012:group/OpsWorks-abc"
        );
        // No UserName: the caller.
        assert_eq!(
            named("ListAccessKeys", &Params::new(), "me"),
            Some((Entity::User, "me".into()))
        );
        // Actions without a resource of these kinds: `*`.
        let any = iam_checks("ListUsers", &Params::new(), ACCOUNT, "me", None);
        assert_eq!(any[0].resource, "*");
    }

    #[test]
    fn attaching_names_the_policy_in_the_context() {
        let p = params(&[
            ("UserName", "u"),
            ("PolicyArn", "arn:aws:iam::aws:policy/AdministratorAccess"),
        ]);
        let checks = iam_checks("AttachUserPolicy", &p, ACCOUNT, "me", None);
        assert_eq!(
            checks[0].context,
            Context::new().with(
                "iam:PolicyARN",
                "arn:aws:iam::aws:policy/AdministratorAccess"
            )
        );
    }

    #[test]
    fn forms_and_accounts() {
        let p = form_params("Action=CreateUser&UserName=a%2Bb&Path=%2FAWS%2FOpsWorks%2F&X=1+2");
        assert_eq!(p["UserName"], "a+b");
        assert_eq!(p["Path"], "/AWS/OpsWorks/");
        assert_eq!(p["X"], "1 2");
        assert_eq!(
            account_of("arn:aws:iam::123456789012:user/x"),
            Some("123456789012")
        );
        assert_eq!(account_of("nonsense"), None);
    }

    #[test]
    fn opsworks_and_ssm_calls_name_their_stack_instance_and_role() {
        let stack = "arn:aws:opsworks:us-east-1:123456789012:stack/abc/";
        let place = Place {
            account: ACCOUNT,
            region: "eu-west-1",
            stack_arn: Some(stack),
            role_arn: Some("arn:aws:iam::123456789012:role/service-role/SSMServiceRole"),
        };
        let input = serde_json::json!({"InstanceId": "i-1"});
        let c = json_checks(
            crate::Service::OpsWorks,
            "DeregisterInstance",
            &input,
            &place,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].action.as_str(), c[0].resource.as_str()),
            ("opsworks:DeregisterInstance", stack)
        );

        let mi = serde_json::json!({"InstanceId": "mi-0123456789abcdef0"});
        let c = json_checks(
            crate::Service::Ssm,
            "DeregisterManagedInstance",
            &mi,
            &place,
        );
        assert_eq!(
            c[0].resource,
            "arn:aws:ssm:eu-west-1:123456789012:managed-instance/mi-0123456789abcdef0"
        );
        let tags = serde_json::json!({"ResourceType": "ManagedInstance",
            "ResourceId": "mi-0123456789abcdef0"});
        let c = json_checks(crate::Service::Ssm, "ListTagsForResource", &tags, &place);
        assert_eq!(
            (c[0].action.as_str(), c[0].resource.as_str()),
            (
                "ssm:ListTagsForResource",
                "arn:aws:ssm:eu-west-1:123456789012:managed-instance/mi-0123456789abcdef0"
            )
        );

        let create = serde_json::json!({"IamRole": "SSMServiceRole",
            "Tags": [{"Key": "registrar.dev/owner", "Value": "u"}]});
        let c = json_checks(crate::Service::Ssm, "CreateActivation", &create, &place);
        let actions: Vec<&str> = c.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "ssm:CreateActivation",
                "ssm:AddTagsToResource",
                "iam:PassRole"
            ]
        );
        assert_eq!(
            c[2].resource,
            "arn:aws:iam::123456789012:role/service-role/SSMServiceRole"
        );
        assert_eq!(
            c[2].context,
            Context::new().with("iam:PassedToService", "ssm.amazonaws.com")
        );
        assert_eq!(
            c[0].context,
            Context::new()
                .with("aws:RequestTag/registrar.dev/owner", "u")
                .with("aws:TagKeys", "registrar.dev/owner")
        );
        let untagged = json_checks(
            crate::Service::Ssm,
            "CreateActivation",
            &serde_json::json!({"IamRole": "r"}),
            &place,
        );
        assert_eq!(untagged.len(), 2);
    }
}
