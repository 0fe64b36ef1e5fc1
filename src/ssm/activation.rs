//! The credentials step of a Systems Manager object: the hybrid activation an on-premises host
//! registers with. The service role must exist (`RoleNotFound` otherwise). One activation per
//! object, registration limit 1, expiring after `systemsManager.activationLifetimeMinutes`,
//! tagged with the object's UID. Its code is shown once, at creation: it is kept in a Secret
//! owned by the object until the install (never in status, events or logs). An activation of
//! this object's whose code that Secret does not hold (a restart between `CreateActivation` and
//! the Secret's write), that expired or that was used is deleted before another is made, so at
//! most one activation of an object exists at any time. EC2 instances need none.

use aws_sdk_ssm::types::{DescribeActivationsFilter, DescribeActivationsFilterKeys};

use super::tag;
use aws_smithy_types::DateTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::Activation;
use super::findings;
use crate::aws::{self, Kind, Sensitive};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::failpoint;
use crate::resource::{
    InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus, SystemsManagerSpec,
};
use crate::steps::handoff;

/// Keys of the activation Secret.
const KEY_ID: &str = "activation_id";
const KEY_CODE: &str = "activation_code";
/// An activation with less time than this left is replaced rather than handed to an install.
const MIN_LIFETIME_LEFT: SignedDuration = SignedDuration::from_mins(5);

pub(super) async fn check(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if obj.spec.infrastructure_class == InfrastructureClass::Ec2 {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            "an EC2 instance's agent registers with the instance profile: no activation is made",
        ));
    }
    if let Some(node) = &findings(facts).node {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!("the host is registered as {}", node.id),
        ));
    }
    if status.agent_installed_at.is_some() {
        return Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            format!(
                "activation {} was handed to the agent",
                status.activation_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    let Some(role) = ssm.service_role.as_deref() else {
        return Outcome::Blocked(Observation::fails(
            reasons::ROLE_NOT_FOUND,
            "systemsManager.serviceRole is not set",
        ));
    };
    let Some(uid) = obj.uid() else {
        return Outcome::Retry(Observation::fails(
            reasons::WAITING,
            "the object has no UID yet",
        ));
    };
    if let Err(outcome) = role_exists(ctx, role).await {
        return outcome;
    }
    let region = super::region(ctx, ssm).to_owned();
    let secret_name = super::activation_secret_name(obj);

    // The one kept in the Secret, if it can still register the host.
    let stored = match handoff::read(ctx, obj, &secret_name).await {
        Ok(data) => data.and_then(|d| {
            Some(Activation {
                id: d.get(KEY_ID)?.clone(),
                code: Sensitive::new(d.get(KEY_CODE)?.clone()),
            })
        }),
        Err(outcome) => return outcome,
    };
    if let Some(resume) = findings(facts).resume.clone() {
        return resumed(status, facts, stored, &resume);
    }
    // Why the stored one (if any) is replaced, for the new one's message.
    let mut replaced = None;
    if let Some(stored) = stored.clone() {
        let found = match ours(
            ctx,
            &region,
            DescribeActivationsFilterKeys::ActivationIds,
            &stored.id,
            &uid,
        )
        .await
        {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        if let Some(listed) = found.iter().find(|a| usable(a)) {
            let message = describe(listed, role);
            status.activation_id = Some(stored.id.clone());
            findings(facts).activation = Some(stored);
            return Outcome::Done(Observation::holds(reasons::SUCCEEDED, message));
        }
        replaced = Some(match found.first() {
            Some(listed) => unusable(listed),
            None => format!("activation {} is no longer listed", stored.id),
        });
    }

    // None usable: every activation of this object's goes, then a new one is made.
    let found = match ours(
        ctx,
        &region,
        DescribeActivationsFilterKeys::IamRole,
        role,
        &uid,
    )
    .await
    {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    if let Some(outcome) = own_node(ctx, &region, &found, stored, facts, status).await {
        return outcome;
    }
    make(
        obj,
        ssm,
        ctx,
        Wanted {
            role,
            uid: &uid,
            region: &region,
            secret_name: &secret_name,
            replaced,
        },
        &found,
        facts,
        status,
    )
    .await
}

/// Whether the IAM role an on-premises node will use exists.
async fn role_exists(ctx: &Context, role: &str) -> Result<(), Outcome> {
    let Err(e) = ctx.aws.iam.get_role().role_name(role).send().await else {
        return Ok(());
    };
    let failure = aws::classify(&e);
    Err(match failure.kind {
        Kind::NotFound => Outcome::Blocked(Observation::fails(
            reasons::ROLE_NOT_FOUND,
            format!(
                "IAM role {role:?} (systemsManager.serviceRole) does not exist; create it with a \
                 trust policy for ssm.amazonaws.com and the AmazonSSMManagedInstanceCore policy"
            ),
        )),
        _ => failure.outcome("iam:GetRole"),
    })
}

/// A used activation of this object's (among `found`) registered a node: the object's own, from
/// an install cut short before it said so (another activation must not be made for the host,
/// nor that node taken for someone else's). The step's outcome when there is one.
async fn own_node(
    ctx: &Context,
    region: &str,
    found: &[aws_sdk_ssm::types::Activation],
    stored: Option<Activation>,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Option<Outcome> {
    for used in found
        .iter()
        .filter(|a| a.registrations_count().unwrap_or(0) > 0)
    {
        let id = used.activation_id().unwrap_or_default();
        let node = match super::find_node(ctx, region, "ActivationIds", id).await {
            Ok(node) => node,
            Err(outcome) => return Some(outcome),
        };
        if let Some(node) = node {
            status.activation_id = Some(id.to_owned());
            status.managed_node_id = Some(node.id.clone());
            if node.ping_status == "Online" {
                let message = format!("activation {id} registered node {}", node.id);
                findings(facts).node = Some(node);
                return Some(Outcome::Done(Observation::holds(
                    reasons::SUCCEEDED,
                    message,
                )));
            }
            findings(facts).resume = Some(node.id.clone());
            let resume = node.id;
            return Some(resumed(status, facts, stored, &resume));
        }
    }
    None
}

/// What a new activation is for: the service role, the object (UID), the region, the Secret that
/// hands it to the install, and why the object's stored activation is replaced, if it is.
struct Wanted<'a> {
    role: &'a str,
    uid: &'a str,
    region: &'a str,
    secret_name: &'a str,
    replaced: Option<String>,
}

/// Makes the object's activation for `role` (after deleting its unusable ones, `found`) and
/// hands it to the install through the Secret `secret_name`.
async fn make(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    wanted: Wanted<'_>,
    found: &[aws_sdk_ssm::types::Activation],
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let Wanted {
        role,
        uid,
        region,
        secret_name,
        replaced,
    } = wanted;
    let client = ctx.aws.ssm(Some(region));
    for old in found {
        let id = old.activation_id().unwrap_or_default();
        if let Err(e) = client.delete_activation().activation_id(id).send().await {
            let failure = aws::classify(&e);
            if failure.kind != Kind::NotFound {
                return failure.outcome("ssm:DeleteActivation");
            }
        }
    }
    let lifetime = SignedDuration::from_mins(ssm.activation_lifetime_minutes.into());
    let expires = Timestamp::now() + lifetime;
    let name = ssm
        .default_instance_name
        .clone()
        .unwrap_or_else(|| obj.name_any());
    let owner = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let mut tags = vec![tag(OWNER_UID, uid), tag(super::OWNER_TAG, &owner)];
    if let Some(cluster) = &ctx.settings.cluster_id {
        tags.push(tag(crate::steps::CLUSTER_TAG, cluster));
    }
    tags.extend(ssm.tags.iter().map(|t| tag(&t.key, &t.value)));
    let created = client
        .create_activation()
        .iam_role(role)
        .registration_limit(1)
        .expiration_date(DateTime::from_secs(expires.as_second()))
        .default_instance_name(name)
        .description(format!("instance-registrar: {owner}"))
        .set_tags(Some(tags))
        .send()
        .await;
    let created = match created {
        Ok(out) => out,
        Err(e) => {
            let failure = aws::classify(&e);
            return match failure.kind {
                Kind::Invalid => Outcome::Blocked(Observation::fails(
                    reasons::AWS_REQUEST_REFUSED,
                    format!("ssm:CreateActivation: {failure}"),
                )),
                _ => failure.outcome("ssm:CreateActivation"),
            };
        }
    };
    failpoint::after("ssm:CreateActivation");
    let (Some(id), Some(code)) = (created.activation_id(), created.activation_code()) else {
        return Outcome::Retry(Observation::fails(
            reasons::AWS_UNAVAILABLE,
            "ssm:CreateActivation returned no activation ID or code",
        ));
    };
    let activation = Activation {
        id: id.to_owned(),
        code: Sensitive::new(code),
    };
    // If this write fails the activation is unusable; the next pass deletes it and makes another.
    if let Err(outcome) = handoff::write(
        ctx,
        obj,
        secret_name,
        &[
            (KEY_ID, &activation.id),
            (KEY_CODE, activation.code.expose()),
        ],
    )
    .await
    {
        return outcome;
    }
    failpoint::after("kube:WriteActivationSecret");
    status.activation_id = Some(activation.id.clone());
    // The node this activation registers gets its tags, the spec's: what the object set.
    status.node_tags = Some(ssm.tags.clone());
    let mut message = format!(
        "activation {} for role {role}, for one registration until {}",
        activation.id,
        expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    );
    if let Some(replaced) = replaced {
        message += &format!(" (replacing one that could not be used: {replaced})");
    }
    findings(facts).activation = Some(activation);
    Outcome::Done(Observation::holds(reasons::SUCCEEDED, message))
}

/// The node `resume` registered with the object's activation (`status.activationId`) and its
/// setup cut short: the setup tool is run again without `-override`, which keeps the
/// registration and starts the agent. It asks for a code, which it does not use then: the one
/// kept, or a stand-in when the Secret went with the install that was cut short.
fn resumed(
    status: &InstanceRegistrationStatus,
    facts: &mut Facts,
    stored: Option<Activation>,
    resume: &str,
) -> Outcome {
    let Some(id) = status.activation_id.clone() else {
        findings(facts).resume = None;
        return Outcome::Retry(Observation::fails(
            reasons::WAITING,
            format!("node {resume} is this object's, and its activation is not recorded"),
        ));
    };
    let code = match stored {
        Some(stored) if stored.id == id => stored.code,
        _ => Sensitive::new(RESUME_CODE),
    };
    let message = format!("activation {id} registered node {resume}, whose setup did not finish");
    findings(facts).activation = Some(Activation { id, code });
    Outcome::Done(Observation::holds(reasons::SUCCEEDED, message))
}

/// What the setup tool is given for a code when it resumes a registration whose code is gone
/// (it keeps the registration and does not use the code then).
const RESUME_CODE: &str = "registered-already";

/// The tag that names the object's UID.
const OWNER_UID: &str = super::OWNER_UID_TAG;

/// How many activations one `DescribeActivations` page asks for (the most the API gives).
const PAGE_SIZE: i32 = 50;
/// At most this many pages are read (5,000 activations for one role): an endpoint whose pages
/// never end (a new `NextToken` every time) is reported, not followed forever.
const MAX_PAGES: usize = 100;

/// The activations `key` = `value` selects in `region` that carry this object's UID tag.
pub(crate) async fn ours(
    ctx: &Context,
    region: &str,
    key: DescribeActivationsFilterKeys,
    value: &str,
    uid: &str,
) -> Result<Vec<aws_sdk_ssm::types::Activation>, Outcome> {
    let filter = DescribeActivationsFilter::builder()
        .filter_key(key)
        .filter_values(value)
        .build();
    let mut pages = ctx
        .aws
        .ssm(Some(region))
        .describe_activations()
        .filters(filter)
        .max_results(PAGE_SIZE)
        .into_paginator()
        .send();
    let mut list = Vec::new();
    let mut read = 0;
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let failure = aws::classify(&e);
                if failure.kind == Kind::NotFound {
                    return Ok(Vec::new());
                }
                return Err(failure.outcome("ssm:DescribeActivations"));
            }
        };
        read += 1;
        if read > MAX_PAGES {
            return Err(Outcome::Retry(Observation::fails(
                reasons::AWS_UNAVAILABLE,
                format!(
                    "ssm:DescribeActivations: more than {MAX_PAGES} pages of activations for \
                     {value}, each with another NextToken: the endpoint's list does not end; \
                     stopped reading it"
                ),
            )));
        }
        list.extend(
            page.activation_list()
                .iter()
                .filter(|a| {
                    a.tags()
                        .iter()
                        .any(|t| t.key() == OWNER_UID && t.value() == uid)
                })
                .cloned(),
        );
    }
    Ok(list)
}

/// Whether an activation can still register the host: not expired, not used, and with time
/// left for an install.
fn usable(a: &aws_sdk_ssm::types::Activation) -> bool {
    let left = a
        .expiration_date()
        .and_then(|t| Timestamp::from_second(t.secs()).ok())
        .map(|t| t.duration_since(Timestamp::now()));
    !a.expired()
        && a.registrations_count().unwrap_or(0) < a.registration_limit().unwrap_or(1)
        && left.is_some_and(|left| left > MIN_LIFETIME_LEFT)
}

/// Why activation `a` cannot register the host any more: expired (and when), its registration
/// used, or too little time left (and until when).
fn unusable(a: &aws_sdk_ssm::types::Activation) -> String {
    let id = a.activation_id().unwrap_or_default();
    let until = a
        .expiration_date()
        .and_then(|t| Timestamp::from_second(t.secs()).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "?".to_owned());
    let used = a.registrations_count().unwrap_or(0);
    let limit = a.registration_limit().unwrap_or(1);
    if a.expired() || until == "?" {
        format!("activation {id} expired at {until}")
    } else if used >= limit {
        format!("activation {id} was used for {used} of its {limit} registration(s)")
    } else {
        format!(
            "activation {id} expires at {until}, too soon for an install (less than {} min left)",
            MIN_LIFETIME_LEFT.as_mins()
        )
    }
}

fn describe(a: &aws_sdk_ssm::types::Activation, role: &str) -> String {
    let until = a
        .expiration_date()
        .and_then(|t| Timestamp::from_second(t.secs()).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "?".to_owned());
    format!(
        "activation {} for role {role}, for one registration until {until}",
        a.activation_id().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(expired: bool, used: i32, minutes_left: i64) -> aws_sdk_ssm::types::Activation {
        let expires = Timestamp::now() + SignedDuration::from_mins(minutes_left);
        aws_sdk_ssm::types::Activation::builder()
            .activation_id("0b1c2d3e-aaaa-4bbb-8ccc-000000000001")
            .expired(expired)
            .registration_limit(1)
            .registrations_count(used)
            .expiration_date(DateTime::from_secs(expires.as_second()))
            .build()
    }

    #[test]
    fn a_replaced_activation_says_why_it_could_not_be_used() {
        let expired = activation(true, 0, -3);
        assert!(!usable(&expired));
        let said = unusable(&expired);
        assert!(said.contains("expired at 20"), "{said}");
        let used = activation(false, 1, 60);
        assert!(!usable(&used));
        assert!(
            unusable(&used).contains("used for 1 of its 1"),
            "{}",
            unusable(&used)
        );
        let ending = activation(false, 0, 2);
        assert!(!usable(&ending));
        assert!(
            unusable(&ending).contains("too soon"),
            "{}",
            unusable(&ending)
        );
        assert!(usable(&activation(false, 0, 60)));
    }
}
