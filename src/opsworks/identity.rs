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

use super::{Facts, OpsWorksInstance, Outcome, TargetFacts};
use crate::conditions::{Observation, reasons};
use crate::resource::{InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus};

/// OpsWorks statuses of an instance that is no longer (or never was) a working registration.
pub const GONE_STATUSES: &[&str] = &["deregistering", "terminated"];

/// What a host registers as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The EC2 instance (ec2 only): the registration's `Ec2InstanceId`.
    pub ec2_instance_id: Option<String>,
    /// The hostname the agent registers with: the override, else the host's own.
    pub hostname: Option<String>,
    /// The host's own IPv4 addresses, and any the spec names for it.
    pub addresses: Vec<String>,
}

/// Which instance of the stack is the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// The host's registration.
    Ours(&'a OpsWorksInstance),
    /// A live instance uses the hostname, and something about it says it is another host.
    Taken(&'a OpsWorksInstance),
    /// No registration of the host, and its hostname is free.
    Nothing,
    /// Not known yet: the host's own hostname must be learned first.
    Unknown,
}

/// Whether `instance` is a live registration (not deregistering or gone).
pub fn is_live(instance: &OpsWorksInstance) -> bool {
    !GONE_STATUSES.contains(&instance.status.as_str())
}

/// Whether two hostnames name the same host: without case and trailing dot, and a short name
/// is the first label of a fully qualified one (`db-1` is `db-1.example.internal`).
pub fn same_hostname(a: &str, b: &str) -> bool {
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
pub fn find<'a>(
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
        if let Some(ours) = prefer_recorded(
            live()
                .filter(|i| i.ec2_instance_id.as_ref() == Some(ec2))
                .collect(),
        ) {
            return Found::Ours(ours);
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
    let ours: Vec<&OpsWorksInstance> = if installed {
        // Ours if the addresses agree; else, as the agent may report addresses the controller
        // cannot see (a public address found from outside), any instance under the name.
        let agreeing: Vec<_> = on_premises
            .clone()
            .filter(|i| addresses_agree(i, identity))
            .collect();
        if agreeing.is_empty() {
            on_premises.collect()
        } else {
            agreeing
        }
    } else {
        on_premises
            .filter(|i| addresses_agree(i, identity))
            .collect()
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
pub(crate) fn after_probe(
    obj: &InstanceRegistration,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    target: &TargetFacts,
    said: &str,
) -> Option<Outcome> {
    let identity = identity_of(obj, target, status);
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
        && let Some(instances) = facts.instances.clone()
    {
        match find(
            &instances,
            &identity,
            crate::steps::installed(status),
            status.opsworks_instance_id.as_deref(),
        ) {
            Found::Ours(instance) => {
                let reason = record_existing(status, instance);
                facts.existing = Some(instance.clone());
                return Some(Outcome::Done(Observation::holds(
                    reason,
                    format!(
                        "{said}; registered in the stack as {} ({})",
                        instance.id, instance.status
                    ),
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
/// registered before this object installed anything) or made by this object; returns the
/// reason to report.
pub(crate) fn record_existing(
    status: &mut InstanceRegistrationStatus,
    instance: &OpsWorksInstance,
) -> &'static str {
    if status.opsworks_instance_id.as_deref() != Some(instance.id.as_str()) {
        // A newly found registration: adopted only if this object never installed the agent.
        status.adopted = !crate::steps::installed(status);
    }
    status.opsworks_instance_id = Some(instance.id.clone());
    status.hostname = instance.hostname.clone();
    if status.adopted {
        reasons::ADOPTED
    } else {
        reasons::SUCCEEDED
    }
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
        && super::target::target_kind(&spec.target) == super::target::TargetKind::IpAddress
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
        }
    }

    fn host(hostname: &str, addresses: &[&str]) -> Identity {
        Identity {
            ec2_instance_id: None,
            hostname: Some(hostname.into()),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
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
    fn an_ec2_host_is_matched_on_its_instance_id_and_its_override_checked() {
        let mut mine = instance("i-1", "web", None);
        mine.ec2_instance_id = Some("i-0aaa".into());
        let other = instance("i-2", "taken", Some("10.0.0.9"));
        let instances = [mine.clone(), other.clone()];
        let identity = Identity {
            ec2_instance_id: Some("i-0aaa".into()),
            hostname: Some("taken".into()),
            addresses: vec![],
        };
        assert_eq!(find(&instances, &identity, false, None), Found::Ours(&mine));
        assert_eq!(
            find(&instances[1..], &identity, false, None),
            Found::Taken(&other)
        );
    }
}
