//! What a host registers as, and which instance of a stack is that host's registration.
//!
//! The agent registers an on-premises host under the hostname override when one is given, else
//! under the host's own hostname, and reports the host's own addresses, which need not be the
//! address the controller connects to (NAT, a public address, a port forward, a DNS name). So an
//! on-premises registration is matched on what the host says of itself (learned over SSH before
//! anything is installed and recorded in `status.host`), never on the spec's target alone. An
//! EC2 registration is matched on its EC2 instance ID.
//!
//! Two questions, answered differently:
//! - *Is this registration ours?* after this object installed the agent: a live instance of the
//!   stack under the hostname the agent was told or found is the one it made.
//! - *May this object adopt it?* before any install: only if nothing says it is another host
//!   (an EC2 instance for an on-premises host, or addresses that are none of the host's own).
//!
//! And whose it is: OpsWorks records who registered each instance (`RegisteredBy`, the ARN of the
//! IAM user whose key the agent registered with). A registration is one this object *made* only
//! if its own IAM user registered it (or, with the instance profile, it is the EC2 instance the
//! target resolves to); one another object's IAM user registered is that object's, never this
//! one's, whatever hostname or addresses the spec gives (they can be edited to name any host).
//! Against a server that does not report `RegisteredBy` the hostname and addresses decide, as
//! above.

use super::{OpsWorksInstance, findings};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::{Facts, Probed, TargetFacts};
use crate::resource::{InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus};

/// OpsWorks statuses of an instance that is no longer (or never was) a working registration.
pub(super) const GONE_STATUSES: &[&str] = &["deregistering", "terminated"];

/// What a host registers as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Identity {
    /// The EC2 instance (ec2 only): the registration's `Ec2InstanceId`.
    pub ec2_instance_id: Option<String>,
    /// The hostname the agent registers with: the override, else the host's own.
    pub hostname: Option<String>,
    /// The host's own IPv4 addresses, and any the spec names for it.
    pub addresses: Vec<String>,
    /// The IAM user this object's agent registers with (`status.iamUserName`; none with the
    /// instance profile): `RegisteredBy` names it on a registration this object made.
    pub iam_user: Option<String>,
    /// The IAM users other objects made, each with its object's `namespace/name`: a registration
    /// one of them made is that object's.
    pub others: Vec<(String, String)>,
}

/// Which instance of the stack is the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Found<'a> {
    /// The host's registration.
    Ours(&'a OpsWorksInstance),
    /// The host's registration (or one under its hostname), made by another object's IAM user:
    /// that object's (`namespace/name`), never this one's.
    Claimed(&'a OpsWorksInstance, String),
    /// A live instance uses the hostname, and something about it says it is another host.
    Taken(&'a OpsWorksInstance),
    /// No registration of the host, and its hostname is free.
    Nothing,
    /// Not known yet: the host's own hostname must be learned first.
    Unknown,
}

/// Whether `instance` is a live registration (not deregistering or gone).
pub(super) fn is_live(instance: &OpsWorksInstance) -> bool {
    !GONE_STATUSES.contains(&instance.status.as_str())
}

/// Whether two hostnames name the same host: without case and trailing dot, and a short name
/// is the first label of a fully qualified one (`db-1` is `db-1.example.internal`).
pub(super) fn same_hostname(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('.');
    let b = b.trim_end_matches('.');
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let short = |s: &str| !s.contains('.');
    let first = |s: &str| s.split('.').next().unwrap_or_default().to_owned();
    (short(a) || short(b)) && first(a).eq_ignore_ascii_case(&first(b))
}

/// Who registered an instance, as its `RegisteredBy` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Registrant<'a> {
    /// An IAM user, by name: from its ARN (`arn:aws:iam::123456789012:user/AWS/OpsWorks/name`,
    /// whatever the path and partition), or the bare user name a server may give instead.
    User(&'a str),
    /// Another principal (an instance profile's role session, the account's root).
    Other(&'a str),
    /// Not said: a server that does not report it.
    Unknown,
}

/// Who registered `instance`.
pub(super) fn registrant(instance: &OpsWorksInstance) -> Registrant<'_> {
    let Some(by) = instance
        .registered_by
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
    else {
        return Registrant::Unknown;
    };
    let iam_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    };
    match by.strip_prefix("arn:") {
        // arn:PARTITION:iam::ACCOUNT:user/PATH/NAME (a user name has no slash).
        Some(rest) => match rest.splitn(5, ':').collect::<Vec<_>>()[..] {
            [_, "iam", _, _, resource] => match resource
                .strip_prefix("user/")
                .and_then(|p| p.rsplit('/').next())
            {
                Some(name) if iam_name(name) => Registrant::User(name),
                _ => Registrant::Other(by),
            },
            _ => Registrant::Other(by),
        },
        None if iam_name(by) => Registrant::User(by),
        None => Registrant::Other(by),
    }
}

/// Whether `instance` was registered by `identity`'s own agent, going by `RegisteredBy` alone
/// (true when the server does not say).
fn registered_by_this_object(instance: &OpsWorksInstance, identity: &Identity) -> bool {
    match registrant(instance) {
        // IAM user names are unique without case.
        Registrant::User(name) => identity
            .iam_user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(name)),
        // The instance profile's session: an EC2 host, matched on its instance ID.
        Registrant::Other(_) => identity.iam_user.is_none() && identity.ec2_instance_id.is_some(),
        Registrant::Unknown => true,
    }
}

/// The object whose IAM user registered `instance`, if another object's did.
fn claimed_by<'i>(instance: &OpsWorksInstance, identity: &'i Identity) -> Option<&'i str> {
    let Registrant::User(name) = registrant(instance) else {
        return None;
    };
    if registered_by_this_object(instance, identity) {
        return None;
    }
    identity
        .others
        .iter()
        .find(|(user, _)| user.eq_ignore_ascii_case(name))
        .map(|(_, object)| object.as_str())
}

/// Whether this object made `instance` (the host's registration, as [`find`] found it): it
/// started an install (`installed`) and its own agent registered it. Otherwise it was adopted.
pub(super) fn made(instance: &OpsWorksInstance, identity: &Identity, installed: bool) -> bool {
    installed && registered_by_this_object(instance, identity)
}

/// The addresses an instance records.
fn addresses_of(instance: &OpsWorksInstance) -> impl Iterator<Item = &str> {
    [
        instance.private_ip.as_deref(),
        instance.public_ip.as_deref(),
    ]
    .into_iter()
    .flatten()
}

/// Whether nothing in `instance`'s addresses says it is another host than `identity`'s: it
/// records none, or one of them is the host's.
fn addresses_agree(instance: &OpsWorksInstance, identity: &Identity) -> bool {
    let mut theirs = addresses_of(instance).peekable();
    theirs.peek().is_none() || theirs.any(|a| identity.addresses.iter().any(|o| o == a))
}

/// Finds the host's registration among a stack's `instances`.
///
/// `installed`: this object ran the agent installer on the host (or started to), so a live
/// instance under the host's hostname is the registration it made. `recorded`: the instance ID
/// status holds, preferred among equals (never trusted alone).
pub(super) fn find<'a>(
    instances: &'a [OpsWorksInstance],
    identity: &Identity,
    installed: bool,
    recorded: Option<&str>,
) -> Found<'a> {
    let live = || instances.iter().filter(|i| is_live(i));
    let prefer_recorded = |mut found: Vec<&'a OpsWorksInstance>| {
        found.sort_by_key(|i| Some(i.id.as_str()) != recorded);
        found.first().copied()
    };
    let named = |i: &OpsWorksInstance, name: &str| {
        i.hostname
            .as_deref()
            .is_some_and(|h| same_hostname(h, name))
    };
    if let Some(ec2) = &identity.ec2_instance_id {
        let same: Vec<&OpsWorksInstance> = live()
            .filter(|i| i.ec2_instance_id.as_ref() == Some(ec2))
            .collect();
        let (claimed, ours): (Vec<_>, Vec<_>) = same
            .into_iter()
            .partition(|i| claimed_by(i, identity).is_some());
        if let Some(ours) = prefer_recorded(ours) {
            return Found::Ours(ours);
        }
        if let Some(theirs) = claimed.first().copied() {
            let by = claimed_by(theirs, identity).unwrap_or_default().to_owned();
            return Found::Claimed(theirs, by);
        }
        // An EC2 registration's hostname is the override, if any: held by another, it is taken.
        return match &identity.hostname {
            Some(name) => live()
                .find(|i| named(i, name))
                .map_or(Found::Nothing, Found::Taken),
            None => Found::Nothing,
        };
    }
    let Some(name) = &identity.hostname else {
        return Found::Unknown;
    };
    let candidates: Vec<&OpsWorksInstance> = live().filter(|i| named(i, name)).collect();
    // An EC2 instance is never an on-premises host.
    let on_premises = candidates
        .iter()
        .copied()
        .filter(|i| i.ec2_instance_id.is_none());
    if installed {
        // Registered by this object's own agent: its registration, whatever addresses the agent
        // reported (a host behind NAT reports ones the controller cannot see).
        let made: Vec<_> = on_premises
            .clone()
            .filter(|i| {
                registrant(i) != Registrant::Unknown && registered_by_this_object(i, identity)
            })
            .collect();
        if let Some(ours) = prefer_recorded(made) {
            return Found::Ours(ours);
        }
    }
    // Registered by another object's agent: that object's, if it may be this host's at all.
    if let Some((theirs, by)) = on_premises
        .clone()
        .filter(|i| installed || addresses_agree(i, identity))
        .find_map(|i| claimed_by(i, identity).map(|by| (i, by)))
    {
        return Found::Claimed(theirs, by.to_owned());
    }
    let unclaimed = on_premises.filter(|i| claimed_by(i, identity).is_none());
    let agreeing: Vec<_> = unclaimed
        .clone()
        .filter(|i| addresses_agree(i, identity))
        .collect();
    // A server that does not say who registered: after an install, as the agent may report
    // addresses the controller cannot see, any instance under the name.
    let ours = if installed && agreeing.is_empty() {
        unclaimed
            .filter(|i| registrant(i) == Registrant::Unknown)
            .collect()
    } else {
        agreeing
    };
    if let Some(ours) = prefer_recorded(ours) {
        return Found::Ours(ours);
    }
    candidates
        .first()
        .copied()
        .map_or(Found::Nothing, Found::Taken)
}

/// After the host step's probe of an OpsWorks host: without a hostname to register under, the
/// registration could not be recognised (`HostIdentityUnknown`); an on-premises host is looked for
/// again in the stack now that it said what it registers as (adopted, or `HostnameTaken`). `None`:
/// nothing more to say, the step is done.
pub(super) fn after_probe(
    probed: Probed<'_>,
    others: &[std::sync::Arc<InstanceRegistration>],
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Option<Outcome> {
    let Probed {
        obj, target, said, ..
    } = probed;
    let mut identity = identity_of(obj, target, status);
    identity.others = others_users(obj, others);
    if identity.ec2_instance_id.is_none() && identity.hostname.is_none() {
        return Some(Outcome::Blocked(Observation::fails(
            reasons::HOST_IDENTITY_UNKNOWN,
            format!(
                "{said}: without the host's hostname (uname -n) or spec.hostname the registration \
                 could not be recognised, so nothing is installed"
            ),
        )));
    }
    // An on-premises host is looked for again now that it said what it registers as.
    if obj.spec.infrastructure_class == InfrastructureClass::OnPremises
        && let Some(instances) = findings(facts).instances.clone()
    {
        match find(
            &instances,
            &identity,
            crate::steps::installed(status),
            status.opsworks_instance_id.as_deref(),
        ) {
            Found::Ours(instance) => {
                let made = made(instance, &identity, crate::steps::installed(status));
                let reason = record_existing(status, instance, made);
                findings(facts).existing = Some(instance.clone());
                return Some(Outcome::Done(Observation::holds(
                    reason,
                    format!(
                        "{said}; registered in the stack as {} ({})",
                        instance.id, instance.status
                    ),
                )));
            }
            Found::Claimed(instance, by) => {
                return Some(Outcome::Blocked(claimed(
                    instance,
                    &by,
                    obj.spec.stack_id(),
                )));
            }
            Found::Taken(holder) => {
                return Some(Outcome::Blocked(taken(
                    &identity,
                    holder,
                    obj.spec.stack_id(),
                )));
            }
            Found::Nothing | Found::Unknown => {}
        }
    }
    None
}

/// Records `instance` as the host's registration on status, and whether it was adopted (found
/// registered, not by this object's install) or `made` by this object ([`made`]); returns the
/// reason to report.
pub(crate) fn record_existing(
    status: &mut InstanceRegistrationStatus,
    instance: &OpsWorksInstance,
    made: bool,
) -> &'static str {
    if status.opsworks_instance_id.as_deref() != Some(instance.id.as_str()) || !made {
        // A newly found registration, or one not this object's own agent made: adopted.
        status.adopted = !made;
    }
    status.opsworks_instance_id = Some(instance.id.clone());
    status.hostname = instance.hostname.clone();
    if status.adopted {
        reasons::ADOPTED
    } else {
        reasons::SUCCEEDED
    }
}

/// The Conflict observation for the host's registration `instance`, which the IAM user of
/// InstanceRegistration `by` registered.
pub(crate) fn claimed(instance: &OpsWorksInstance, by: &str, stack: &str) -> Observation {
    Observation::fails(
        reasons::CONFLICT,
        format!(
            "instance {} of stack {stack} (hostname {}) was registered by InstanceRegistration \
             {by} (RegisteredBy {}): it is that object's, and this one neither adopts, changes \
             nor deregisters it",
            instance.id,
            instance.hostname.as_deref().unwrap_or("?"),
            instance.registered_by.as_deref().unwrap_or("?")
        ),
    )
}

/// The IAM users that objects other than `obj` recorded (`status.iamUserName`), each with its
/// object's `namespace/name`.
pub(crate) fn others_users(
    obj: &InstanceRegistration,
    others: &[std::sync::Arc<InstanceRegistration>],
) -> Vec<(String, String)> {
    others
        .iter()
        .filter(|o| o.metadata.uid != obj.metadata.uid)
        .filter_map(|o| {
            let user = o.status.as_ref()?.iam_user_name.clone()?;
            Some((
                user,
                format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                    o.metadata.name.as_deref().unwrap_or_default()
                ),
            ))
        })
        .collect()
}

/// The HostnameTaken observation for a hostname held by `holder`.
pub(crate) fn taken(identity: &Identity, holder: &OpsWorksInstance, stack: &str) -> Observation {
    let name = identity.hostname.as_deref().unwrap_or_default();
    let why = match (&holder.ec2_instance_id, &identity.ec2_instance_id) {
        (Some(ec2), None) => format!("which is EC2 instance {ec2}"),
        _ => match holder.private_ip.as_deref().or(holder.public_ip.as_deref()) {
            Some(ip) => format!("at {ip}, which is not one of this host's addresses"),
            None => "another host".to_owned(),
        },
    };
    Observation::fails(
        reasons::HOSTNAME_TAKEN,
        format!(
            "hostname {name:?} is already used by instance {} of stack {stack}, {why}; \
             hostnames must be unique within a stack (set spec.hostname to register this host \
             under another name)",
            holder.id
        ),
    )
}

/// What the host registers as: the EC2 instance, the hostname override or the hostname the host
/// reported, and the host's own addresses with those the spec names.
pub(crate) fn identity_of(
    obj: &InstanceRegistration,
    target: &TargetFacts,
    status: &InstanceRegistrationStatus,
) -> Identity {
    let spec = &obj.spec;
    let learned = status.host.as_ref();
    let mut addresses: Vec<String> = learned.map(|h| h.addresses.clone()).unwrap_or_default();
    for a in [spec.private_ip.as_ref(), spec.public_ip.as_ref()]
        .into_iter()
        .flatten()
    {
        if !addresses.contains(a) {
            addresses.push(a.clone());
        }
    }
    // A target that is an address is the host's, unless the host said otherwise (NAT).
    if learned.is_none()
        && crate::steps::ec2::target_kind(&spec.target) == crate::steps::ec2::TargetKind::IpAddress
        && !addresses.contains(&spec.target)
    {
        addresses.push(spec.target.clone());
    }
    Identity {
        ec2_instance_id: target.ec2_instance_id.clone(),
        hostname: spec
            .hostname
            .clone()
            .or_else(|| learned.and_then(|h| h.hostname.clone())),
        addresses,
        iam_user: match spec.use_instance_profile {
            Some(true) => None,
            _ => status.iam_user_name.clone(),
        },
        others: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, hostname: &str, private_ip: Option<&str>) -> OpsWorksInstance {
        OpsWorksInstance {
            id: id.into(),
            status: "registered".into(),
            hostname: Some(hostname.into()),
            ec2_instance_id: None,
            layer_ids: vec![],
            private_ip: private_ip.map(Into::into),
            public_ip: None,
            registered_by: None,
        }
    }

    fn host(hostname: &str, addresses: &[&str]) -> Identity {
        Identity {
            ec2_instance_id: None,
            hostname: Some(hostname.into()),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn short_and_fully_qualified_names_of_one_host_are_the_same_hostname() {
        assert!(same_hostname("db-1", "DB-1.example.internal."));
        assert!(same_hostname("db-1.example.internal", "db-1"));
        assert!(same_hostname("db-1.example.", "db-1.example"));
        assert!(!same_hostname("db-1.a.example", "db-1.b.example"));
        assert!(!same_hostname("db-1", "db-10"));
        assert!(!same_hostname("", ""));
    }

    #[test]
    fn a_host_behind_nat_is_found_by_its_hostname_once_this_object_installed_it() {
        // The agent reported the host's private address, not the one the controller used.
        let instances = [instance("i-1", "nat-host", Some("10.1.2.3"))];
        let identity = host("nat-host", &["192.0.2.10"]);
        assert_eq!(
            find(&instances, &identity, true, None),
            Found::Ours(&instances[0])
        );
        // Before any install, the same instance is not adopted: its address says another host.
        assert_eq!(
            find(&instances, &identity, false, None),
            Found::Taken(&instances[0])
        );
    }

    #[test]
    fn a_hostname_alone_does_not_adopt_a_host_whose_addresses_or_ec2_id_say_otherwise() {
        let mut ec2 = instance("i-ec2", "web", None);
        ec2.ec2_instance_id = Some("i-0abc".into());
        let elsewhere = instance("i-far", "web", Some("10.9.9.9"));
        let identity = host("web", &["10.0.0.5"]);
        assert_eq!(
            find(std::slice::from_ref(&ec2), &identity, false, None),
            Found::Taken(&ec2)
        );
        assert_eq!(
            find(std::slice::from_ref(&elsewhere), &identity, false, None),
            Found::Taken(&elsewhere)
        );
        // Even after an install an EC2 instance is not an on-premises host's registration.
        assert_eq!(
            find(std::slice::from_ref(&ec2), &identity, true, None),
            Found::Taken(&ec2)
        );
        // Agreeing addresses, or none recorded, adopt.
        let same = instance("i-same", "web", Some("10.0.0.5"));
        let bare = instance("i-bare", "web", None);
        assert_eq!(
            find(std::slice::from_ref(&same), &identity, false, None),
            Found::Ours(&same)
        );
        assert_eq!(
            find(std::slice::from_ref(&bare), &identity, false, None),
            Found::Ours(&bare)
        );
    }

    #[test]
    fn without_a_hostname_an_on_premises_host_is_unknown_and_gone_instances_never_match() {
        let instances = [instance("i-1", "db-1", Some("10.0.0.5"))];
        let unknown = Identity {
            addresses: vec!["10.0.0.5".into()],
            ..Default::default()
        };
        assert_eq!(find(&instances, &unknown, true, None), Found::Unknown);
        let mut gone = instances.clone();
        gone[0].status = "terminated".into();
        assert_eq!(
            find(&gone, &host("db-1", &["10.0.0.5"]), true, None),
            Found::Nothing
        );
    }

    #[test]
    fn the_recorded_instance_is_preferred_among_equals_but_never_trusted_alone() {
        let instances = [
            instance("i-a", "db-1", Some("10.0.0.5")),
            instance("i-b", "db-1", Some("10.0.0.5")),
            instance("i-other", "other", Some("10.0.0.5")),
        ];
        let identity = host("db-1", &["10.0.0.5"]);
        assert_eq!(
            find(&instances, &identity, true, Some("i-b")),
            Found::Ours(&instances[1])
        );
        // A recorded ID that is another host's registration does not make it ours.
        assert_eq!(
            find(&instances[2..], &identity, true, Some("i-other")),
            Found::Nothing
        );
    }

    #[test]
    fn registered_by_names_an_iam_user_by_arn_whatever_its_path_or_by_bare_name() {
        let by = |arn: &str| {
            let mut i = instance("i-1", "db-1", None);
            i.registered_by = Some(arn.into());
            i
        };
        for (registered_by, user) in [
            (
                "arn:aws:iam::123456789102:user/AWS/OpsWorks/OpsWorks-EC2Register-i-5cd23551",
                Some("OpsWorks-EC2Register-i-5cd23551"),
            ),
            ("arn:aws:iam::123456789012:user/ops", Some("ops")),
            (
                "arn:aws-us-gov:iam::123456789012:user/a/b/c/x@y.z",
                Some("x@y.z"),
            ),
            ("OpsWorks-web-db-1", Some("OpsWorks-web-db-1")),
            (
                "arn:aws:sts::123456789012:assumed-role/opsworks-ec2/i-0abc",
                None,
            ),
            ("arn:aws:iam::123456789012:root", None),
            ("arn:aws:iam::123456789012:user/", None),
            ("not a user name", None),
        ] {
            let instance = by(registered_by);
            match (registrant(&instance), user) {
                (Registrant::User(name), Some(user)) => assert_eq!(name, user),
                (Registrant::Other(_), None) => {}
                (got, _) => panic!("{registered_by}: {got:?}"),
            }
        }
        assert_eq!(
            registrant(&instance("i-1", "db-1", None)),
            Registrant::Unknown
        );
    }

    #[test]
    fn another_objects_registration_is_never_ours_whatever_the_spec_names() {
        // A's instance, registered by A's IAM user.
        let mut a = instance("i-a", "a-1", Some("10.0.0.1"));
        a.registered_by =
            Some("arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-shared-a-1".into());
        let instances = [a.clone()];
        // B names A's hostname and address; B's own user is another.
        let mut b = host("a-1", &["10.0.0.1"]);
        b.iam_user = Some("OpsWorks-shared-b-1".into());
        b.others = vec![("opsworks-shared-a-1".into(), "team-a/web".into())];
        for installed in [true, false] {
            assert_eq!(
                find(&instances, &b, installed, Some("i-a")),
                Found::Claimed(&instances[0], "team-a/web".into()),
                "installed: {installed}"
            );
        }
        // A object the controller does not see: adopted at most, never made by B.
        b.others.clear();
        assert_eq!(find(&instances, &b, true, None), Found::Ours(&instances[0]));
        assert!(!made(&instances[0], &b, true));
        // A itself: made, even behind NAT (addresses that are none of the host's own).
        let mut own = host("a-1", &["192.0.2.9"]);
        own.iam_user = Some("OpsWorks-shared-a-1".into());
        own.others = vec![("OpsWorks-shared-b-1".into(), "team-b/web".into())];
        assert_eq!(
            find(&instances, &own, true, None),
            Found::Ours(&instances[0])
        );
        assert!(made(&instances[0], &own, true));
        assert!(!made(&instances[0], &own, false), "not installed: adopted");
        // A server that does not say who registered: as before.
        let legacy = [instance("i-l", "a-1", Some("10.9.9.9"))];
        assert_eq!(find(&legacy, &b, true, None), Found::Ours(&legacy[0]));
        assert!(made(&legacy[0], &b, true));
    }

    #[test]
    fn an_instance_profile_registration_is_matched_on_the_ec2_instance() {
        let mut mine = instance("i-1", "web", None);
        mine.ec2_instance_id = Some("i-0aaa".into());
        mine.registered_by = Some("arn:aws:sts::123456789012:assumed-role/ec2/i-0aaa".into());
        let identity = Identity {
            ec2_instance_id: Some("i-0aaa".into()),
            ..Default::default()
        };
        assert_eq!(
            find(std::slice::from_ref(&mine), &identity, true, None),
            Found::Ours(&mine)
        );
        assert!(made(&mine, &identity, true));
        // With an IAM user of its own, another principal's registration is adopted, not made.
        let with_user = Identity {
            iam_user: Some("OpsWorks-s-web".into()),
            ..identity
        };
        assert!(!made(&mine, &with_user, true));
    }

    #[test]
    fn an_ec2_host_is_matched_on_its_instance_id_and_its_override_checked() {
        let mut mine = instance("i-1", "web", None);
        mine.ec2_instance_id = Some("i-0aaa".into());
        let other = instance("i-2", "taken", Some("10.0.0.9"));
        let instances = [mine.clone(), other.clone()];
        let identity = Identity {
            ec2_instance_id: Some("i-0aaa".into()),
            hostname: Some("taken".into()),
            ..Default::default()
        };
        assert_eq!(find(&instances, &identity, false, None), Found::Ours(&mine));
        assert_eq!(
            find(&instances[1..], &identity, false, None),
            Found::Taken(&other)
        );
    }
}
