//! What a host says of itself over SSH, asked before anything is installed (the host step):
//! its hostname and its own addresses, recorded in `status.host`. The host is not trusted: its
//! answer is parsed strictly and bounded, and only ever used as data.

use std::net::Ipv4Addr;

/// At most this many addresses are kept from what a host says.
const MAX_ADDRESSES: usize = 32;

/// What a host said of itself in answer to [`PROBE_SCRIPT`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Learned {
    /// `uname -n`, when it is a valid DNS name.
    pub hostname: Option<String>,
    /// The host's IPv4 addresses: the one the SSH connection reached (from `SSH_CONNECTION`)
    /// first, then its interfaces' addresses, without loopback, deduplicated, at most 32.
    pub addresses: Vec<String>,
    /// The host's answer to the service's own question (`Service::probe_question`), a
    /// `registration=` line: what the host claims to be registered as, a token of at most 64
    /// letters, digits and `-`, for the service to check and prove before it is taken.
    pub answer: Option<String>,
}

/// The script that asks a host what it registers as. Read-only, no sudo, no input: it prints
/// `key=value` lines that [`parse_probe`] reads.
pub(crate) const PROBE_SCRIPT: &str = r#"set -u
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

/// The probe for a host: [`PROBE_SCRIPT`], then the service's own `question` if it has one,
/// then the `preflight` checks (`super::preflight::script`).
pub(crate) fn script(question: Option<&str>, preflight: &str) -> String {
    let mut script = PROBE_SCRIPT.to_owned();
    if let Some(question) = question {
        script += question;
    }
    script += preflight;
    script += "exit 0\n";
    script
}

/// Reads what [`PROBE_SCRIPT`] printed. The host is not trusted: anything that is not a valid
/// hostname or IPv4 address is dropped, and sizes are bounded. `None` when the output is not the
/// probe's (no marker line).
pub(crate) fn parse_probe(output: &str) -> Option<Learned> {
    let mut marker = false;
    let mut hostname = None;
    let mut connection = None;
    let mut answer = None;
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
            // Checked by the service before it is used.
            "registration"
                if !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                answer = Some(value.to_owned());
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
        answer,
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
            .arg(script(None, ""))
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
        assert_eq!(learned.answer, None, "{out:?}");
    }
}
