//! What a host says of itself over SSH, asked before anything is installed (the host step):
//! its hostname and its own addresses, recorded in `status.host`. The host is not trusted: its
//! answer is parsed strictly and bounded, and only ever used as data.

use std::net::Ipv4Addr;

/// At most this many addresses are kept from what a host says.
const MAX_ADDRESSES: usize = 32;

/// What a host said of itself in answer to [`PROBE_SCRIPT`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// `uname -n`, when it is a valid DNS name.
    pub hostname: Option<String>,
    /// The host's IPv4 addresses: the one the SSH connection reached (from `SSH_CONNECTION`)
    /// first, then its interfaces' addresses, without loopback, deduplicated, at most 32.
    pub addresses: Vec<String>,
    /// The managed node the host's Systems Manager registration file names
    /// ([`crate::install::SSM_REGISTRATION_FILE`]), when the login user may read it and it names
    /// a managed node ID: what the host claims to be registered as, to be proven by Systems
    /// Manager's own record before it is taken.
    pub ssm_node: Option<String>,
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
"#;

/// What the probe also asks a host that is to be registered with Systems Manager: the node its
/// registration file ([`crate::install::SSM_REGISTRATION_FILE`]) names, so that a host
/// registered already is known before anything is made for it in AWS. The agent writes that
/// file root's, mode 0600: when the login user may not read it, it is read through `sudo -n`
/// (one fixed, read-only command and no value of anyone's; a host where sudo wants a password
/// or a terminal just does not say, and the install finds the registration as before). Only the
/// first 4 KiB are read.
pub const SSM_REGISTRATION_PROBE: &str = r#"dir=/var/lib/amazon/ssm
registration=$dir/registration
text=
if [ -r "$registration" ]; then
  text=$(head -c 4096 "$registration" 2>/dev/null)
elif [ -e "$registration" ] || { [ -d "$dir" ] && [ ! -x "$dir" ]; }; then
  text=$(sudo -n /bin/sh -c 'head -c 4096 /var/lib/amazon/ssm/registration 2>/dev/null' </dev/null 2>/dev/null)
fi
echo "ssm-registration=$(printf '%s\n' "$text" | sed -n 's/.*"ManagedInstanceID"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9-]*\)".*/\1/p' | head -n 1)"
"#;

/// The probe for a host: [`PROBE_SCRIPT`], with [`SSM_REGISTRATION_PROBE`] when `ssm_registration`.
pub fn script(ssm_registration: bool) -> String {
    let mut script = PROBE_SCRIPT.to_owned();
    if ssm_registration {
        script += SSM_REGISTRATION_PROBE;
    }
    script += "exit 0\n";
    script
}

/// Reads what [`PROBE_SCRIPT`] printed. The host is not trusted: anything that is not a valid
/// hostname or IPv4 address is dropped, and sizes are bounded. `None` when the output is not the
/// probe's (no marker line).
pub fn parse_probe(output: &str) -> Option<Learned> {
    let mut marker = false;
    let mut hostname = None;
    let mut connection = None;
    let mut ssm_node = None;
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
            // Checked as a managed node ID by the service before it is used.
            "ssm-registration"
                if !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                ssm_node = Some(value.to_owned());
            }
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
        ssm_node,
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
            .arg(script(false))
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
        assert_eq!(learned.ssm_node, None, "{out:?}");
    }

    #[test]
    fn the_probe_reads_the_systems_manager_registration_when_it_may() {
        let full = script(true);
        assert!(full.contains(crate::install::SSM_REGISTRATION_FILE));
        assert!(
            !script(false).contains("sudo"),
            "the probe runs no sudo for OpsWorks"
        );
        // The file in a directory of the test's own (readable: no sudo is run).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registration");
        let script = full.replace("/var/lib/amazon/ssm", &dir.path().to_string_lossy());
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            parse_probe(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        assert_eq!(run().ssm_node, None);
        std::fs::write(
            &file,
            r#"{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"eu-west-1"}"#,
        )
        .unwrap();
        assert_eq!(run().ssm_node.as_deref(), Some("mi-0123456789abcdef0"));
        // What the host writes is data: anything but an ID's characters is dropped.
        let hostile = "instance-registrar-probe=1\nssm-registration=mi-1; reboot\n";
        assert_eq!(parse_probe(hostile).unwrap().ssm_node, None);
    }
}
