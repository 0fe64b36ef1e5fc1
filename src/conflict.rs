//! Two objects that name one host must not both act: the one that does not take
//! precedence reports `Conflict` naming the other and does nothing. Shared by every service.
//!
//! One host: the same target text, the same EC2 instance, or what the host itself said over SSH
//! (`status.host`, learned by the host step's probe): the same hostname, an address in common and
//! no host key that says otherwise. The last one catches a host named twice in ways no spec
//! comparison can see (`target: 10.0.0.5` and `target: db-1.example.internal`).
//!
//! Precedence is decided from what the objects recorded, the same way by every object and on
//! every pass: an object that holds the host's registration comes first, then one that started an
//! install on the host, then the object created first (namespace and name break a tie). Only
//! objects that may hold a host count (one whose namespace may not use the stack does not).

use std::sync::Arc;

use crate::conditions::{Observation, reasons};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};

/// The object that takes precedence for a host, and why it is the same host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// `namespace/name`.
    pub name: String,
    /// Why it is the same host, and why it comes first ("names the same target and was created
    /// first").
    pub why: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Holder {
    /// The `Conflict` observation for an object that yields to this holder; `place` says where
    /// the registration goes ("stack …", "Systems Manager in …").
    pub(crate) fn observation(&self, place: &str) -> Observation {
        Observation::fails(
            reasons::CONFLICT,
            format!(
                "InstanceRegistration {} {} ({place}); this one does nothing while that one exists",
                self.name, self.why
            ),
        )
    }
}

/// Another object that names the same host as `obj` and takes precedence over it, among the
/// `others` that compete with `obj` (`competes`: the same registry, and allowed to hold a host;
/// see `Context::competes`). `status` is `obj`'s status as this pass has it (its learned host may
/// be newer than `obj.status`'s); `ec2_instance_id` is the EC2 instance `obj`'s target resolved
/// to, if any.
pub(crate) fn holder_of_the_same_host(
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    ec2_instance_id: Option<&str>,
    others: &[Arc<InstanceRegistration>],
    competes: impl Fn(&InstanceRegistration) -> bool,
) -> Option<Holder> {
    let ours = precedence(obj, Some(status));
    others
        .iter()
        .filter(|o| o.metadata.uid != obj.metadata.uid)
        .filter(|o| o.spec.infrastructure_class == obj.spec.infrastructure_class)
        .filter(|o| competes(o))
        .filter_map(|o| {
            let same = same_host(obj, status, ec2_instance_id, o)?;
            let theirs = precedence(o, o.status.as_ref());
            (theirs < ours).then_some((theirs, o, same))
        })
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(theirs, o, same)| {
            let first = match theirs.0 {
                Stage::Registered => "and holds its registration",
                Stage::Installing => "and started an install on it first",
                Stage::Named if theirs.1 == ours.1 => "and comes first by name",
                Stage::Named => "and was created first",
            };
            Holder {
                name: format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                    o.metadata.name.as_deref().unwrap_or_default()
                ),
                why: format!("{same} {first}"),
            }
        })
}

/// How far an object got with its host, first first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// The host is registered for it.
    Registered,
    /// It started an install on the host.
    Installing,
    /// It only names the host.
    Named,
}

type Rank = (
    Stage,
    Option<k8s_openapi::jiff::Timestamp>,
    Option<String>,
    Option<String>,
);

fn precedence(o: &InstanceRegistration, status: Option<&InstanceRegistrationStatus>) -> Rank {
    let stage = match status {
        Some(s) if s.registered_at.is_some() => Stage::Registered,
        s if installed(s) => Stage::Installing,
        _ => Stage::Named,
    };
    (
        stage,
        o.metadata.creation_timestamp.clone().map(|t| t.0),
        o.metadata.namespace.clone(),
        o.metadata.name.clone(),
    )
}

fn installed(status: Option<&InstanceRegistrationStatus>) -> bool {
    status.is_some_and(|s| s.install_started_at.is_some() || s.agent_installed_at.is_some())
}

/// Why `other` names the same host as `obj` (whose status is `status`), if it does.
fn same_host(
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
    ec2_instance_id: Option<&str>,
    other: &InstanceRegistration,
) -> Option<String> {
    if same_name(&other.spec.target, &obj.spec.target) {
        return Some(format!("names the same host ({})", obj.spec.target));
    }
    let theirs = other.status.as_ref();
    if let Some(id) = ec2_instance_id
        && theirs.and_then(|s| s.ec2_instance_id.as_deref()) == Some(id)
    {
        return Some(format!("names the same EC2 instance ({id})"));
    }
    let theirs = theirs?;
    if same_learned_host(status, theirs) {
        let host = status.host.as_ref()?;
        return Some(format!(
            "reached the same host: it answered as {} ({})",
            host.hostname.as_deref().unwrap_or_default(),
            host.addresses.join(", ")
        ));
    }
    None
}

/// Whether two objects' hosts said they are the same host: the same hostname and an address in
/// common, and host keys (when both are recorded) that agree.
pub(crate) fn same_learned_host(
    a: &InstanceRegistrationStatus,
    b: &InstanceRegistrationStatus,
) -> bool {
    let (Some(ha), Some(hb)) = (&a.host, &b.host) else {
        return false;
    };
    let (Some(na), Some(nb)) = (&ha.hostname, &hb.hostname) else {
        return false;
    };
    let keys_differ = matches!(
        (&a.host_key_fingerprint, &b.host_key_fingerprint),
        (Some(x), Some(y)) if x != y
    );
    same_name(na, nb) && ha.addresses.iter().any(|x| hb.addresses.contains(x)) && !keys_differ
}

/// Whether two targets (or hostnames) name the same host: DNS names compare without case and
/// without the trailing dot of a fully qualified name (`web.example.` is `web.example`).
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::HostIdentity;

    fn object(
        name: &str,
        created: i64,
        target: &str,
        ec2_id: Option<&str>,
    ) -> InstanceRegistration {
        let mut o: InstanceRegistration = serde_yaml::from_str(&format!(
            "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata: {{name: {name}, namespace: ns, uid: uid-{name}}}
spec:
  stackId: 0b1c2d3e-0000-4000-8000-000000000000
  infrastructureClass: ec2
  target: {target}
  ssh: {{username: u, privateKeySecretRef: {{name: k}}}}
"
        ))
        .unwrap();
        o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        o.status = ec2_id.map(|id| InstanceRegistrationStatus {
            ec2_instance_id: Some(id.into()),
            ..Default::default()
        });
        o
    }

    fn holder(
        obj: &InstanceRegistration,
        ec2: Option<&str>,
        all: &[Arc<InstanceRegistration>],
        may_hold: impl Fn(&InstanceRegistration) -> bool,
    ) -> Option<String> {
        let status = obj.status.clone().unwrap_or_default();
        // Objects of one stack compete (the registry's part of `Context::competes`).
        let competes =
            |o: &InstanceRegistration| o.spec.stack_id == obj.spec.stack_id && may_hold(o);
        holder_of_the_same_host(obj, &status, ec2, all, competes).map(|h| h.name)
    }

    fn arcs(objects: &[&InstanceRegistration]) -> Vec<Arc<InstanceRegistration>> {
        objects.iter().map(|o| Arc::new((*o).clone())).collect()
    }

    #[test]
    fn a_name_with_or_without_its_trailing_dot_or_in_another_case_is_the_same_host() {
        assert!(same_name("db-1.example", "db-1.example."));
        assert!(same_name("DB-1.Example.", "db-1.example"));
        assert!(!same_name("db-1.example", "db-2.example"));
        assert!(!same_name("10.0.0.1", "10.0.0.10"));
    }

    #[test]
    fn the_later_of_two_objects_naming_one_host_is_the_one_in_conflict() {
        let ec2 = Some("i-0aaa");
        let first = object("first", 100, "web", Some("i-0aaa"));
        let by_id = object("by-id", 150, "i-0aaa", Some("i-0aaa"));
        let later = object("later", 200, "web", None);
        let elsewhere = object("elsewhere", 50, "db", Some("i-0bbb"));
        let all = arcs(&[&first, &by_id, &later, &elsewhere]);
        let any = |_: &InstanceRegistration| true;
        // The first never conflicts; the later ones name the earliest holder.
        assert_eq!(holder(&first, ec2, &all, any), None);
        assert_eq!(holder(&by_id, ec2, &all, any).as_deref(), Some("ns/first"));
        assert_eq!(holder(&later, ec2, &all, any).as_deref(), Some("ns/first"));
        // Another stack is another host.
        let mut other_stack = later.clone();
        other_stack.spec.stack_id = Some("ffffffff-0000-4000-8000-000000000000".into());
        assert_eq!(holder(&other_stack, ec2, &all, any), None);
        // An earlier object that may not hold the host (its namespace may not use the stack)
        // does not count: the next one in line holds it.
        let not_first = |o: &InstanceRegistration| o.metadata.name.as_deref() != Some("first");
        assert_eq!(
            holder(&later, ec2, &all, not_first).as_deref(),
            Some("ns/by-id")
        );
        assert_eq!(holder(&by_id, ec2, &all, not_first), None);
    }

    fn learned(o: &mut InstanceRegistration, hostname: &str, addresses: &[&str], key: &str) {
        let status = o.status.get_or_insert_with(Default::default);
        status.host = Some(HostIdentity {
            hostname: Some(hostname.into()),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            via: "127.0.0.3:22".into(),
        });
        status.host_key_fingerprint = Some(key.into());
    }

    #[test]
    fn a_host_named_twice_is_found_by_what_it_said_of_itself() {
        // `target: 127.0.0.3` and `target: twin.example.internal`, applied together: the
        // same second, so the name decides, the same way for both.
        let mut by_ip = object("by-ip", 100, "127.0.0.3", None);
        let mut by_name = object("by-name", 100, "twin.example.internal", None);
        learned(&mut by_ip, "twin", &["127.0.0.3", "10.0.0.5"], "SHA256:k");
        learned(&mut by_name, "twin", &["127.0.0.3", "10.0.0.5"], "SHA256:k");
        let all = arcs(&[&by_ip, &by_name]);
        let any = |_: &InstanceRegistration| true;
        assert_eq!(holder(&by_ip, None, &all, any), None);
        assert_eq!(
            holder(&by_name, None, &all, any).as_deref(),
            Some("ns/by-ip")
        );
        // In another namespace too: the check is across every object the controller watches
        // (here the older one comes first).
        let mut elsewhere = by_name.clone();
        elsewhere.metadata.namespace = Some("team-b".into());
        elsewhere.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(50).unwrap(),
            ));
        let across = arcs(&[&by_ip, &elsewhere]);
        assert_eq!(
            holder(&by_ip, None, &across, any).as_deref(),
            Some("team-b/by-name")
        );
        assert_eq!(holder(&elsewhere, None, &across, any), None);
        // Before the host said anything, nothing ties them.
        let mut unlearned = by_name.clone();
        unlearned.status = None;
        assert_eq!(holder(&unlearned, None, &all, any), None);
        // Once one started an install on the host, it holds it whatever its name; once one is
        // registered, it holds it over one that only started.
        let mut installing = by_name.clone();
        installing.status.as_mut().unwrap().install_started_at =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(150).unwrap(),
            ));
        let all = arcs(&[&by_ip, &installing]);
        assert_eq!(
            holder(&by_ip, None, &all, any).as_deref(),
            Some("ns/by-name")
        );
        assert_eq!(holder(&installing, None, &all, any), None);
        let mut registered = by_ip.clone();
        {
            let s = registered.status.as_mut().unwrap();
            s.install_started_at = installing
                .status
                .as_ref()
                .unwrap()
                .install_started_at
                .clone();
            s.registered_at = s.install_started_at.clone();
        }
        let all = arcs(&[&registered, &installing]);
        assert_eq!(
            holder(&installing, None, &all, any).as_deref(),
            Some("ns/by-ip")
        );
        assert_eq!(holder(&registered, None, &all, any), None);
    }

    #[test]
    fn hosts_that_differ_in_hostname_addresses_or_host_key_are_different_hosts() {
        let mut a = object("a", 100, "10.0.0.5", None);
        let mut b = object("b", 200, "10.0.0.6", None);
        let any = |_: &InstanceRegistration| true;
        for (hostname, addresses, key, same) in [
            ("db-1", &["10.0.0.5"][..], "SHA256:a", true),
            ("DB-1.", &["10.0.0.5"][..], "SHA256:a", true),
            ("db-2", &["10.0.0.5"][..], "SHA256:a", false),
            ("db-1", &["10.0.0.6"][..], "SHA256:a", false),
            ("db-1", &["10.0.0.5"][..], "SHA256:other", false),
        ] {
            learned(&mut a, "db-1", &["10.0.0.5"], "SHA256:a");
            learned(&mut b, hostname, addresses, key);
            let all = arcs(&[&a, &b]);
            assert_eq!(
                holder(&b, None, &all, any).is_some(),
                same,
                "{hostname} {addresses:?} {key}"
            );
        }
    }
}
