//! Whether a managed node may be taken as a host's own: adopted, or deregistered as adopted.
//!
//! What a host says it is registered as (the `ManagedInstanceID` of its registration file) is
//! only a claim: anyone who can write that file can name any node of the region, another
//! tenant's included. The node is taken only on Systems Manager's own record of it
//! (`DescribeInstanceInformation` and `ListTagsForResource`):
//!
//! - no other object's owner tags: a node registered with another object's activation carries
//!   that object's `registrar.dev/owner-uid` and `registrar.dev/owner`; it is refused if that
//!   object is of another namespace, or still exists (a node an object of this namespace left
//!   behind with `deletionPolicy: Retain` may be adopted);
//! - its IAM role allowed for the object's namespace (`registrar.dev/allowed-ssm-service-roles`,
//!   as for the activations the namespace may make);
//! - the host it reports (its computer name or its IP address) is the host the probe reached
//!   (`status.host`).
//!
//! The same evidence is asked again before an adopted node is deregistered.

use aws_sdk_ssm::types::ResourceTypeForTagging;
use kube::{Api, ResourceExt};

use super::Node;
use crate::aws;
use crate::conditions::{Observation, Outcome, reasons};
use crate::context::Context;
use crate::resource::{HostIdentity, InstanceRegistration};
use crate::tenancy::{Scope, Verdict};

/// Who a node's owner tags say it was registered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// No owner tags: registered by hand, or with an activation the controller did not make.
    Unclaimed,
    /// This object (its UID).
    This,
    /// Another object: `namespace/name` from `registrar.dev/owner` and the UID, as far as the
    /// tags say.
    Other {
        namespace: Option<String>,
        name: Option<String>,
        uid: Option<String>,
    },
}

impl Owner {
    /// Reads the owner tags of a node against the object `namespace`/`name` with `uid`.
    pub(super) fn of(tags: &[(String, String)], namespace: &str, name: &str, uid: &str) -> Owner {
        let tag = |key: &str| {
            tags.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim().to_owned())
        };
        let owner_uid = tag(super::OWNER_UID_TAG);
        let owner = tag(super::OWNER_TAG);
        if owner_uid.is_none() && owner.is_none() {
            return Owner::Unclaimed;
        }
        let (owner_ns, owner_name) = match owner.as_deref().and_then(|o| o.split_once('/')) {
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() => {
                (Some(ns.to_owned()), Some(n.to_owned()))
            }
            _ => (None, None),
        };
        let this = match &owner_uid {
            Some(u) => u == uid,
            None => owner_ns.as_deref() == Some(namespace) && owner_name.as_deref() == Some(name),
        };
        if this {
            return Owner::This;
        }
        Owner::Other {
            namespace: owner_ns,
            name: owner_name,
            uid: owner_uid,
        }
    }

    fn describe(&self) -> String {
        match self {
            Owner::Other {
                namespace: Some(ns),
                name: Some(name),
                ..
            } => format!("InstanceRegistration {ns}/{name}"),
            Owner::Other { uid: Some(uid), .. } => {
                format!("the InstanceRegistration with UID {uid}")
            }
            _ => "another InstanceRegistration".to_owned(),
        }
    }
}

/// What Systems Manager says of a node, and what was looked up about it.
#[derive(Clone, Debug)]
pub(super) struct Evidence {
    /// The node, as `DescribeInstanceInformation` listed it.
    pub node: Node,
    /// Who its tags say it was registered for.
    pub owner: Owner,
    /// Whether the other object its tags name still exists (looked up in the object's own
    /// namespace only; an owner of another namespace is refused without a look).
    pub owner_exists: bool,
    /// Whether the object's namespace may use the node's IAM role (None: it reports none).
    pub role: Option<Verdict>,
}

/// What the evidence says.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Judgement {
    /// The node may be taken as the host's.
    Proven,
    /// It may not: the reason and message of the refusal.
    Refused(Observation),
    /// Not known yet (the namespace is not known to the controller yet): retried.
    Unknown(Observation),
}

/// The name of an IAM role as `DescribeInstanceInformation` reports it: a name, a name with its
/// path (`service-role/Name`), or an ARN. Role names are unique in an account whatever their
/// path, so the name decides.
pub(super) fn role_name(reported: &str) -> &str {
    let reported = reported.trim();
    let after = reported
        .split_once(":role/")
        .map_or(reported, |(_, rest)| rest);
    after.rsplit('/').next().unwrap_or(after)
}

/// Whether `a` and `b` name the same host: equal (in any case, without a final dot), or one is
/// the other's first label (the agent may report the fully qualified name, `uname -n` the
/// short one).
fn same_name(a: &str, b: &str) -> bool {
    let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
    let b = b.trim().trim_end_matches('.').to_ascii_lowercase();
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let short =
        |full: &str, other: &str| !other.contains('.') && full.split('.').next() == Some(other);
    a == b || short(&a, &b) || short(&b, &a)
}

/// Judges `evidence` for an object of `namespace` whose host the probe learned as `host`
/// (`status.host`).
pub(super) fn judge(
    evidence: &Evidence,
    namespace: &str,
    host: Option<&HostIdentity>,
) -> Judgement {
    let node = &evidence.node;
    let id = &node.id;
    match &evidence.owner {
        Owner::Unclaimed | Owner::This => {}
        other @ Owner::Other {
            namespace: owner_ns,
            ..
        } => {
            let whose = other.describe();
            if owner_ns.as_deref() != Some(namespace) {
                return Judgement::Refused(Observation::fails(
                    reasons::CONFLICT,
                    format!(
                        "node {id} carries the owner tags of {whose}, not of this namespace: it \
                         is not taken"
                    ),
                ));
            }
            if evidence.owner_exists {
                return Judgement::Refused(Observation::fails(
                    reasons::CONFLICT,
                    format!(
                        "node {id} was registered for {whose}, which exists: it is that \
                         object's, not taken by this one"
                    ),
                ));
            }
        }
    }
    match &evidence.role {
        None => {
            return Judgement::Refused(Observation::fails(
                reasons::REGISTERED_ELSEWHERE,
                format!(
                    "Systems Manager reports no IAM role for node {id}: whether this namespace \
                     may use it is not known; it is not taken"
                ),
            ));
        }
        Some(Verdict::Allowed) => {}
        Some(Verdict::Refused(why)) => {
            return Judgement::Refused(Observation::fails(
                reasons::SERVICE_ROLE_NOT_ALLOWED,
                format!(
                    "the IAM role of node {id} is not this namespace's ({why}); it is not taken"
                ),
            ));
        }
        Some(Verdict::Unknown(why)) => {
            return Judgement::Unknown(Observation::unknown(
                reasons::NAMESPACE_UNKNOWN,
                why.clone(),
            ));
        }
    }
    let Some(host) = host else {
        return Judgement::Refused(Observation::fails(
            reasons::REGISTERED_ELSEWHERE,
            format!("the host did not say who it is (status.host): node {id} is not taken"),
        ));
    };
    let name_matches = match (&node.computer_name, &host.hostname) {
        (Some(reported), Some(said)) => same_name(reported, said),
        _ => false,
    };
    let address_matches = node
        .ip_address
        .as_deref()
        .is_some_and(|ip| host.addresses.iter().any(|a| a == ip.trim()));
    if name_matches || address_matches {
        return Judgement::Proven;
    }
    Judgement::Refused(Observation::fails(
        reasons::REGISTERED_ELSEWHERE,
        format!(
            "node {id} is another host's: Systems Manager reports it as {} at {}, and the host \
             said it is {} at {}; it is not taken",
            node.computer_name.as_deref().unwrap_or("no computer name"),
            node.ip_address.as_deref().unwrap_or("no address"),
            host.hostname.as_deref().unwrap_or("no hostname"),
            if host.addresses.is_empty() {
                "no address".to_owned()
            } else {
                host.addresses.join(", ")
            }
        ),
    ))
}

/// The tags of managed node `id` (`ListTagsForResource`, resource type `ManagedInstance`).
pub(super) async fn tags(
    ctx: &Context,
    region: &str,
    id: &str,
) -> Result<Vec<(String, String)>, Outcome> {
    let out = ctx
        .aws
        .ssm(Some(region))
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(id)
        .send()
        .await;
    match out {
        Ok(out) => Ok(out
            .tag_list()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect()),
        Err(e) => Err(aws::classify(&e).outcome("ssm:ListTagsForResource")),
    }
}

/// Gathers the evidence on `node` for `obj`: its tags, whether the other object they name
/// exists, and whether `obj`'s namespace may use its IAM role.
pub(super) async fn gather(
    ctx: &Context,
    region: &str,
    obj: &InstanceRegistration,
    node: Node,
) -> Result<Evidence, Outcome> {
    let namespace = obj.namespace().unwrap_or_default();
    let tags = tags(ctx, region, &node.id).await?;
    let owner = Owner::of(
        &tags,
        &namespace,
        &obj.name_any(),
        &obj.uid().unwrap_or_default(),
    );
    let owner_exists = match &owner {
        Owner::Other {
            namespace: Some(ns),
            name: Some(name),
            uid,
        } if *ns == namespace => {
            let api: Api<InstanceRegistration> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(name).await {
                Ok(found) => found.is_some_and(|o| uid.is_none() || o.uid() == *uid),
                Err(e) => {
                    return Err(Outcome::Retry(Observation::fails(
                        reasons::KUBERNETES_API_ERROR,
                        format!(
                            "reading InstanceRegistration {ns}/{name}, whose owner tags node {} \
                             carries: {}",
                            node.id,
                            crate::kube_error_summary(&e)
                        ),
                    )));
                }
            }
        }
        _ => false,
    };
    let role = node
        .iam_role
        .as_deref()
        .map(role_name)
        .filter(|r| !r.is_empty())
        .map(|r| ctx.tenancy.verdict_for(obj, Scope::service_role(r)));
    Ok(Evidence {
        node,
        owner,
        owner_exists,
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "uid-this";
    const NODE: &str = "mi-0123456789abcdef0";

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn node(name: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            id: NODE.to_owned(),
            ping_status: "Online".to_owned(),
            activation_id: Some("act".to_owned()),
            last_ping: None,
            iam_role: Some("SSMServiceRole".to_owned()),
            computer_name: name.map(str::to_owned),
            ip_address: ip.map(str::to_owned),
        }
    }

    fn host() -> HostIdentity {
        HostIdentity {
            hostname: Some("build-7".to_owned()),
            addresses: vec!["10.0.0.5".to_owned(), "172.17.0.1".to_owned()],
            via: "10.0.0.5:22".to_owned(),
        }
    }

    fn evidence(owner: Owner, owner_exists: bool, role: Option<Verdict>, node: Node) -> Evidence {
        Evidence {
            node,
            owner,
            owner_exists,
            role,
        }
    }

    fn reason(j: &Judgement) -> &'static str {
        match j {
            Judgement::Refused(o) | Judgement::Unknown(o) => o.reason,
            Judgement::Proven => "Proven",
        }
    }

    #[test]
    fn the_owner_tags_name_this_object_another_or_none() {
        assert_eq!(
            Owner::of(&tags(&[("team", "a")]), "ns", "db", UID),
            Owner::Unclaimed
        );
        let ours = tags(&[
            (crate::steps::OWNER_UID_TAG, UID),
            (crate::steps::OWNER_TAG, "ns/db"),
        ]);
        assert_eq!(Owner::of(&ours, "ns", "db", UID), Owner::This);
        let theirs = tags(&[
            (crate::steps::OWNER_UID_TAG, "uid-other"),
            (crate::steps::OWNER_TAG, "victims/db"),
        ]);
        assert_eq!(
            Owner::of(&theirs, "ns", "db", UID),
            Owner::Other {
                namespace: Some("victims".into()),
                name: Some("db".into()),
                uid: Some("uid-other".into())
            }
        );
        // The UID decides: the same name with another UID is another (earlier) object.
        let earlier = tags(&[
            (crate::steps::OWNER_UID_TAG, "uid-earlier"),
            (crate::steps::OWNER_TAG, "ns/db"),
        ]);
        assert!(matches!(
            Owner::of(&earlier, "ns", "db", UID),
            Owner::Other { .. }
        ));
        let unreadable = tags(&[(crate::steps::OWNER_TAG, "no-slash")]);
        assert_eq!(
            Owner::of(&unreadable, "ns", "db", UID),
            Owner::Other {
                namespace: None,
                name: None,
                uid: None
            }
        );
    }

    #[test]
    fn a_node_is_taken_only_on_all_of_its_evidence() {
        let host = host();
        let ok = |n: Node| evidence(Owner::Unclaimed, false, Some(Verdict::Allowed), n);
        // By its computer name (short or fully qualified), or by its address.
        for n in [
            node(Some("build-7"), None),
            node(Some("BUILD-7.dc1.example."), None),
            node(None, Some("172.17.0.1")),
            node(Some("other"), Some("10.0.0.5")),
        ] {
            assert_eq!(
                judge(&ok(n.clone()), "ns", Some(&host)),
                Judgement::Proven,
                "{n:?}"
            );
        }
        // Another host's name and address, none at all, or nothing learned of the host.
        for n in [
            node(Some("victim-db.corp.example"), Some("10.20.30.40")),
            node(Some("build-77"), None),
            node(None, None),
        ] {
            assert_eq!(
                reason(&judge(&ok(n.clone()), "ns", Some(&host))),
                reasons::REGISTERED_ELSEWHERE,
                "{n:?}"
            );
        }
        assert_eq!(
            reason(&judge(&ok(node(Some("build-7"), None)), "ns", None)),
            reasons::REGISTERED_ELSEWHERE
        );
        let same = || node(Some("build-7"), Some("10.0.0.5"));
        // A role the namespace may not use, or none reported.
        let refused = evidence(
            Owner::Unclaimed,
            false,
            Some(Verdict::Refused(
                "namespace \"ns\" may not use VictimRole".into(),
            )),
            same(),
        );
        let j = judge(&refused, "ns", Some(&host));
        assert_eq!(reason(&j), reasons::SERVICE_ROLE_NOT_ALLOWED);
        assert!(
            matches!(&j, Judgement::Refused(o) if o.message.contains("VictimRole")),
            "{j:?}"
        );
        assert_eq!(
            reason(&judge(
                &evidence(Owner::Unclaimed, false, None, same()),
                "ns",
                Some(&host)
            )),
            reasons::REGISTERED_ELSEWHERE
        );
        let unknown = evidence(
            Owner::Unclaimed,
            false,
            Some(Verdict::Unknown("?".into())),
            same(),
        );
        assert!(matches!(
            judge(&unknown, "ns", Some(&host)),
            Judgement::Unknown(_)
        ));
        // Another namespace's object, whether or not it exists; this namespace's only while it
        // exists.
        let other = |ns: &str| Owner::Other {
            namespace: Some(ns.into()),
            name: Some("db".into()),
            uid: Some("uid-other".into()),
        };
        for (owner, exists, expected) in [
            (other("victims"), false, reasons::CONFLICT),
            (other("victims"), true, reasons::CONFLICT),
            (other("ns"), true, reasons::CONFLICT),
            (other("ns"), false, "Proven"),
            (
                Owner::Other {
                    namespace: None,
                    name: None,
                    uid: Some("u".into()),
                },
                false,
                reasons::CONFLICT,
            ),
            (Owner::This, false, "Proven"),
        ] {
            let e = evidence(owner.clone(), exists, Some(Verdict::Allowed), same());
            assert_eq!(
                reason(&judge(&e, "ns", Some(&host))),
                expected,
                "{owner:?} {exists}"
            );
        }
    }

    #[test]
    fn a_role_is_judged_by_its_name() {
        assert_eq!(role_name("SSMServiceRole"), "SSMServiceRole");
        assert_eq!(role_name("service-role/SSMServiceRole"), "SSMServiceRole");
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/service-role/SSMServiceRole"),
            "SSMServiceRole"
        );
    }
}
