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

use std::net::Ipv4Addr;

use super::OpsWorksInstance;

/// OpsWorks statuses of an instance that is no longer (or never was) a working registration.
pub const GONE_STATUSES: &[&str] = &["deregistering", "terminated"];

/// At most this many addresses are kept of what a host reports.
const MAX_ADDRESSES: usize = 32;

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

/// What a host said of itself in answer to [`PROBE_SCRIPT`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// `uname -n`, when it is a valid DNS name.
    pub hostname: Option<String>,
    /// The host's IPv4 addresses: the one the SSH connection reached (from `SSH_CONNECTION`)
    /// first, then its interfaces' addresses, without loopback, deduplicated, at most 32.
    pub addresses: Vec<String>,
}

/// The script that asks a host what it registers as. Read-only, no sudo, no input: it prints
/// `key=value` lines that [`parse_probe`] reads.
pub const PROBE_SCRIPT: &str = r#"set -u
echo "instance-registrar-probe=1"
echo "hostname=$(uname -n 2>/dev/null)"
set -- ${SSH_CONNECTION:-}
echo "connection=${3:-}"
addresses=$(hostname -I 2>/dev/null) || addresses=
if [ -z "$addresses" ] && command -v ip >/dev/null 2>&1; then
  addresses=$(ip -4 -o addr show 2>/dev/null | awk '{ sub("/.*", "", $4); print $4 }' | tr '\n' ' ')
fi
echo "addresses=$addresses"
exit 0
"#;

/// Reads what [`PROBE_SCRIPT`] printed. The host is not trusted: anything that is not a valid
/// hostname or IPv4 address is dropped, and sizes are bounded. `None` when the output is not the
/// probe's (no marker line).
pub fn parse_probe(output: &str) -> Option<Learned> {
    let mut marker = false;
    let mut hostname = None;
    let mut connection = None;
    let mut interfaces = Vec::new();
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "instance-registrar-probe" => marker = true,
            "hostname" if is_dns_name(value) => hostname = Some(value.to_owned()),
            "connection" => connection = value.parse::<Ipv4Addr>().ok(),
            "addresses" => interfaces.extend(
                value
                    .split_whitespace()
                    .take(256)
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
            ),
            _ => {}
        }
    }
    if !marker {
        return None;
    }
    let mut addresses: Vec<String> = Vec::new();
    for a in connection
        .into_iter()
        .chain(interfaces.into_iter().filter(|a| !a.is_loopback()))
    {
        let a = a.to_string();
        if !addresses.contains(&a) && addresses.len() < MAX_ADDRESSES {
            addresses.push(a);
        }
    }
    Some(Learned {
        hostname,
        addresses,
    })
}

/// Whether `name` is a DNS name of host labels (at most 253 characters).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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

    #[test]
    fn the_probe_output_is_read_strictly() {
        let out = "noise\ninstance-registrar-probe=1\nhostname=db-1.example.internal\n\
                   connection=127.0.0.9\naddresses=10.0.0.5 127.0.0.1 fe80::1 10.0.0.5 172.17.0.1 \n";
        let learned = parse_probe(out).unwrap();
        assert_eq!(learned.hostname.as_deref(), Some("db-1.example.internal"));
        assert_eq!(learned.addresses, ["127.0.0.9", "10.0.0.5", "172.17.0.1"]);
        // Hostile output: no code, no oversized or invalid names, bounded address lists.
        let hostile = format!(
            "instance-registrar-probe=1\nhostname=$(reboot)\nconnection=x\naddresses={}\n",
            (0..1000)
                .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let learned = parse_probe(&hostile).unwrap();
        assert_eq!(learned.hostname, None);
        assert_eq!(learned.addresses.len(), MAX_ADDRESSES);
        assert_eq!(parse_probe("hostname=x\n"), None);
        let long = format!("instance-registrar-probe=1\nhostname={}\n", "a".repeat(64));
        assert_eq!(parse_probe(&long).unwrap().hostname, None);
    }

    #[test]
    fn the_probe_script_runs_under_sh_and_reads_back() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(PROBE_SCRIPT)
            .env("SSH_CONNECTION", "127.0.0.1 50000 127.0.0.77 22")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let learned = parse_probe(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(learned.hostname.is_some(), "{out:?}");
        assert_eq!(
            learned.addresses.first().map(String::as_str),
            Some("127.0.0.77")
        );
    }
}
