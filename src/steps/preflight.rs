//! Preflight: what the agent will need of a host, checked on the host by the host probe before
//! anything is made in AWS (no IAM user, no activation for a host that could not use them).
//!
//! - **The clock.** The agent signs every AWS request (SigV4), and AWS refuses a request whose
//!   time is more than 5 minutes off: a host whose clock is further than [`MAX_CLOCK_SKEW`] from
//!   the controller's is `ClockSkew`, with both times.
//! - **The endpoints** the agent and its installer will call ([`Needs::endpoints`], each
//!   service's own list): each reached over TCP from the host, with what the host has (`curl`,
//!   `wget`, bash's `/dev/tcp`, in that order), each bounded by [`CONNECT_SECONDS`] and all at
//!   once. One refused, unresolvable or timed out is `EndpointUnreachable`, naming it.
//! - **Free space** where the agent installs ([`Needs::install_dir`], its nearest existing
//!   parent): less than [`Needs::free_mib`] is `DiskFull`, with the figure.
//! - **An init system** to start the agent (systemd running, upstart, OpenRC or SysV init
//!   scripts): none is `HostUnsuitable`.
//!
//! A check the host has no tool for (no `date`, `df`, nor any of `curl`, `wget`, `bash`) is not a
//! failure by itself: the step's message says it was not checked. The host is not trusted: its
//! answers are read strictly (numbers, fixed words, the controller's own endpoint indexes) and
//! never shown as they came.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;

use super::script::shell_quote;
use crate::conditions::{Observation, reasons};
use crate::context::{Endpoint, Needs};

/// How far the host's clock may be from the controller's. AWS refuses a signed request more than
/// 5 minutes off; the time between asking and reading the answer is allowed on top.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// How long the host waits for each endpoint's TCP connection. All endpoints are tried at once,
/// and each try ends within 9 s (curl: the connection, then 2 s for the answer; wget: 3 s for
/// each of name, connection and answer), inside the shortest `ssh.commandTimeoutSeconds` (10).
pub(crate) const CONNECT_SECONDS: u32 = 5;

/// The reasons a preflight failure gives on `HostReachable`: a host step whose last pass ended
/// with one of them asks the host again (what was fixed on the host is seen at the next pass).
pub(crate) const REASONS: [&str; 4] = [
    reasons::CLOCK_SKEW,
    reasons::ENDPOINT_UNREACHABLE,
    reasons::DISK_FULL,
    reasons::HOST_UNSUITABLE,
];

/// A host and port to reach, from an `http(s)` URL; `None` for any other URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    valid.then(|| (host.to_owned(), port))
}

/// The shell lines the probe runs for `needs`: they print `preflight-…=` lines that [`parse`]
/// reads. Read-only, no sudo; every value from the spec or the controller is quoted.
pub(crate) fn script(needs: &Needs) -> String {
    let mut s = String::from(
        r#"echo "preflight-clock=$(date -u +%s 2>/dev/null)"
if [ -d /run/systemd/system ]; then echo preflight-init=systemd
elif command -v initctl >/dev/null 2>&1 && initctl version 2>/dev/null | grep -q upstart; then echo preflight-init=upstart
elif command -v openrc >/dev/null 2>&1 || command -v rc-service >/dev/null 2>&1; then echo preflight-init=openrc
elif [ -d /etc/init.d ]; then echo preflight-init=sysv
else echo preflight-init=none
fi
"#,
    );
    if let Some(dir) = needs.install_dir {
        s += &format!(
            r#"d={dir}
while [ ! -d "$d" ] && [ "$d" != / ]; do d=$(dirname "$d"); done
echo "preflight-free-kib=$(df -Pk "$d" 2>/dev/null | awk 'NR == 2 {{ print $4 }}')"
"#,
            dir = shell_quote(dir)
        );
    }
    let reachable: Vec<(usize, &Endpoint, (String, u16))> = needs
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| host_port(&e.url).map(|hp| (i, e, hp)))
        .collect();
    if reachable.is_empty() {
        return s;
    }
    // A HEAD request (nothing is downloaded). curl's 6 (no address), 7 (refused, unreachable)
    // and 28 before a connection (time_connect 0) say the host cannot reach it; wget's 4 is a
    // network failure. Anything else (an HTTP error, a TLS failure, a slow answer) came over a
    // TCP connection.
    s += &format!(
        r#"preflight_reach() {{
  if command -v curl >/dev/null 2>&1; then
    t=$(curl -s -I -o /dev/null -w '%{{time_connect}}' --connect-timeout {c} -m {m} "$2" 2>/dev/null); rc=$?
    case "$rc:$t" in
      6:*|7:*|28:0|28:0.000000|28:) echo "preflight-endpoint=$1 unreachable curl $rc" ;;
      *) echo "preflight-endpoint=$1 reachable curl $rc" ;;
    esac
  elif command -v wget >/dev/null 2>&1; then
    wget -q --spider -T {w} -t 1 "$2" >/dev/null 2>&1; rc=$?
    case "$rc" in
      4) echo "preflight-endpoint=$1 unreachable wget $rc" ;;
      *) echo "preflight-endpoint=$1 reachable wget $rc" ;;
    esac
  elif command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then
    if timeout {c} bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$3" "$4" >/dev/null 2>&1; then
      echo "preflight-endpoint=$1 reachable dev-tcp 0"
    else
      echo "preflight-endpoint=$1 unreachable dev-tcp 1"
    fi
  else
    echo "preflight-endpoint=$1 untested none 0"
  fi
}}
"#,
        c = CONNECT_SECONDS,
        m = CONNECT_SECONDS + 2,
        w = CONNECT_SECONDS / 2 + 1,
    );
    for (i, endpoint, (host, port)) in &reachable {
        s += &format!(
            "preflight_reach {i} {} {} {port} &\n",
            shell_quote(&endpoint.url),
            shell_quote(host)
        );
    }
    s += "wait\n";
    s
}

/// How an endpoint was found from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    Reachable,
    Unreachable,
    Untested,
}

/// The tools the script names (anything else the host printed is not taken).
const TOOLS: [&str; 4] = ["curl", "wget", "dev-tcp", "none"];

/// What the host answered to [`script`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// The host's clock, in seconds since the epoch.
    clock: Option<i64>,
    /// Free KiB where the agent installs.
    free_kib: Option<u64>,
    /// The init system found (`systemd`, `upstart`, `openrc`, `sysv`, `none`).
    init: Option<&'static str>,
    /// By index into [`Needs::endpoints`]: how it was found, the tool and its exit status.
    endpoints: Vec<(usize, Reach, &'static str, u16)>,
}

/// Reads what [`script`] printed, strictly.
pub(crate) fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "preflight-clock" => report.clock = value.parse().ok(),
            "preflight-free-kib" => report.free_kib = value.parse().ok(),
            "preflight-init" => {
                report.init = ["systemd", "upstart", "openrc", "sysv", "none"]
                    .into_iter()
                    .find(|i| *i == value);
            }
            "preflight-endpoint" if report.endpoints.len() < 64 => {
                let words: Vec<&str> = value.split(' ').collect();
                let [index, reach, tool, status] = words[..] else {
                    continue;
                };
                let reach = match reach {
                    "reachable" => Reach::Reachable,
                    "unreachable" => Reach::Unreachable,
                    "untested" => Reach::Untested,
                    _ => continue,
                };
                let (Ok(index), Some(tool), Ok(status)) = (
                    index.parse::<usize>(),
                    TOOLS.into_iter().find(|t| *t == tool),
                    status.parse::<u16>(),
                ) else {
                    continue;
                };
                if !report.endpoints.iter().any(|(i, ..)| *i == index) {
                    report.endpoints.push((index, reach, tool, status));
                }
            }
            _ => {}
        }
    }
    report
}

/// `url` as messages show it: without user information or query (a mirror's password, a
/// presigned URL's signature), which status and Events must not carry.
fn shown(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// What a tool's exit status says of a connection that was not made.
fn why(tool: &str, status: u16) -> &'static str {
    match (tool, status) {
        ("curl", 6) => "the name did not resolve",
        ("curl", 7) => "the connection was refused or the network is unreachable",
        ("curl", 28) => "the connection timed out",
        ("wget", _) => "network failure",
        _ => "no connection",
    }
}

/// Judges `report` against `needs`: the first failure, as the observation to record, or what
/// was checked (and what could not be) for the step's message. `asked` and `answered` bound when
/// the host read its clock.
pub(crate) fn judge(
    needs: &Needs,
    report: &Report,
    asked: SystemTime,
    answered: SystemTime,
) -> Result<String, Observation> {
    let mut checked = Vec::new();
    let mut unchecked = Vec::new();
    match report.clock {
        Some(host) => {
            let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
            let (low, high) = (since(asked), since(answered));
            let (low, high) = (low.as_secs(), high.as_secs());
            let skew = match u64::try_from(host) {
                Ok(h) if h + MAX_CLOCK_SKEW.as_secs() < low => Some((low - h, "behind")),
                Ok(h) if h > high + MAX_CLOCK_SKEW.as_secs() => Some((h - high, "ahead")),
                Ok(_) => None,
                Err(_) => Some((u64::MAX, "behind")),
            };
            if let Some((skew, direction)) = skew {
                let at = |s: i64| {
                    Timestamp::from_second(s).map_or_else(|_| format!("{s} s"), |t| t.to_string())
                };
                return Err(Observation::fails(
                    reasons::CLOCK_SKEW,
                    format!(
                        "the host's clock reads {} and the controller's {}: {} {direction}, more \
                         than the {} s AWS allows a signed request; the agent's calls would be \
                         refused. Set the host's clock (NTP)",
                        at(host),
                        at(high as i64),
                        if skew == u64::MAX {
                            "far".to_owned()
                        } else {
                            format!("{skew} s")
                        },
                        MAX_CLOCK_SKEW.as_secs()
                    ),
                ));
            }
            checked.push("clock".to_owned());
        }
        None => unchecked.push("clock (no date)".to_owned()),
    }
    for (index, endpoint) in needs.endpoints.iter().enumerate() {
        match report.endpoints.iter().find(|(i, ..)| *i == index) {
            Some((_, Reach::Unreachable, tool, status)) => {
                return Err(Observation::fails(
                    reasons::ENDPOINT_UNREACHABLE,
                    format!(
                        "the host cannot reach {} ({}) over TCP: {} ({tool}, exit status \
                         {status}); the agent could not register. Open the host's route to it \
                         (firewall, proxy, VPC endpoint)",
                        endpoint.name,
                        shown(&endpoint.url),
                        why(tool, *status)
                    ),
                ));
            }
            Some((_, Reach::Reachable, ..)) => checked.push(endpoint.name.clone()),
            Some((_, Reach::Untested, ..)) => {
                unchecked.push(format!("{} (no curl, wget or bash)", endpoint.name));
            }
            None => unchecked.push(format!("{} (no answer)", endpoint.name)),
        }
    }
    if let Some(dir) = needs.install_dir {
        match report.free_kib {
            Some(kib) if kib / 1024 < needs.free_mib => {
                return Err(Observation::fails(
                    reasons::DISK_FULL,
                    format!(
                        "{} MiB free on the filesystem of {dir}; the agent needs {} MiB there",
                        kib / 1024,
                        needs.free_mib
                    ),
                ));
            }
            Some(_) => checked.push(format!("free space in {dir}")),
            None => unchecked.push(format!("free space in {dir} (no df)")),
        }
    }
    match report.init {
        Some("none") => {
            return Err(Observation::fails(
                reasons::HOST_UNSUITABLE,
                "the host has no init system the agent can be started with (systemd, upstart, \
                 OpenRC or SysV init scripts in /etc/init.d)",
            ));
        }
        Some(init) => checked.push(format!("init ({init})")),
        None => unchecked.push("init system (no answer)".to_owned()),
    }
    let mut said = format!("preflight: {}", checked.join(", "));
    if !unchecked.is_empty() {
        said += &format!("; not checked: {}", unchecked.join(", "));
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(urls: &[&str]) -> Needs {
        Needs {
            endpoints: urls
                .iter()
                .enumerate()
                .map(|(i, u)| Endpoint {
                    name: format!("e{i}"),
                    url: (*u).to_owned(),
                })
                .collect(),
            install_dir: Some("/opt/aws/none/here"),
            free_mib: 100,
        }
    }

    #[test]
    fn messages_show_urls_without_credentials_or_queries() {
        assert_eq!(
            shown("https://u:secret@mirror.example:8443/ssm/setup?X-Amz-Signature=abc#x"),
            "https://mirror.example:8443/ssm/setup"
        );
        assert_eq!(
            shown("https://ssm.us-east-1.amazonaws.com"),
            "https://ssm.us-east-1.amazonaws.com"
        );
        let n = needs(&["https://u:secret@mirror.example/x?token=t0ken"]);
        let now = SystemTime::now();
        let failed = judge(
            &n,
            &parse("preflight-endpoint=0 unreachable curl 7\n"),
            now,
            now,
        )
        .unwrap_err();
        assert!(
            !failed.message.contains("secret") && !failed.message.contains("t0ken"),
            "{}",
            failed.message
        );
    }

    #[test]
    fn urls_give_hosts_and_ports() {
        assert_eq!(
            host_port("https://ssm.us-east-1.amazonaws.com"),
            Some(("ssm.us-east-1.amazonaws.com".into(), 443))
        );
        assert_eq!(
            host_port("http://u:p@127.0.0.1:8080/x?y"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(host_port("http://[::1]:9/"), Some(("::1".into(), 9)));
        assert_eq!(host_port("file:///etc/passwd"), None);
        assert_eq!(host_port("http://a b/"), None);
        assert_eq!(host_port("http://h:99999/"), None);
    }

    /// The script runs under sh on this machine: a listening port is reachable, a closed one is
    /// not, and the rest is read back.
    #[test]
    fn the_script_runs_under_sh_and_reads_back() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();
        // Accepts and hangs up: curl gets an empty reply over a connection that was made.
        std::thread::spawn(move || {
            for stream in open.incoming() {
                drop(stream);
            }
        });
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let n = needs(&[
            &format!("http://127.0.0.1:{open_port}/"),
            &format!("http://127.0.0.1:{closed_port}/"),
        ]);
        let asked = SystemTime::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script(&n))
            .output()
            .unwrap();
        let answered = SystemTime::now();
        let report = parse(&String::from_utf8_lossy(&out.stdout));
        assert!(
            report.clock.is_some() && report.free_kib.is_some(),
            "{out:?}"
        );
        assert_eq!(report.endpoints.len(), 2, "{out:?}");
        let failed = judge(&n, &report, asked, answered).unwrap_err();
        assert_eq!(failed.reason, reasons::ENDPOINT_UNREACHABLE);
        assert!(
            failed
                .message
                .contains(&format!("e1 (http://127.0.0.1:{closed_port}/)")),
            "{}",
            failed.message
        );
        let only_open = Needs {
            endpoints: n.endpoints[..1].to_vec(),
            ..n
        };
        let said = judge(&only_open, &report, asked, answered).unwrap();
        assert!(
            said.starts_with("preflight: clock, e0, free space"),
            "{said}"
        );
    }

    #[test]
    fn each_failure_has_its_reason_and_what_is_missing_is_said() {
        let n = needs(&["https://a.example"]);
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let report = |extra: &str| {
            parse(&format!(
                "preflight-clock={secs}\npreflight-init=sysv\npreflight-free-kib=1048576\n\
                 preflight-endpoint=0 reachable curl 0\n{extra}"
            ))
        };
        assert!(judge(&n, &report(""), now, now).is_ok());
        // Ten minutes ahead, and ten behind.
        for skewed in [secs + 600, secs - 600] {
            let r = Report {
                clock: Some(skewed),
                ..report("")
            };
            let failed = judge(&n, &r, now, now).unwrap_err();
            assert_eq!(failed.reason, reasons::CLOCK_SKEW);
            assert!(failed.message.contains("600 s"), "{}", failed.message);
        }
        // Four minutes off is within what AWS allows.
        let r = Report {
            clock: Some(secs + 240),
            ..report("")
        };
        assert!(judge(&n, &r, now, now).is_ok());
        let r = Report {
            free_kib: Some(50 * 1024),
            ..report("")
        };
        let failed = judge(&n, &r, now, now).unwrap_err();
        assert_eq!(failed.reason, reasons::DISK_FULL);
        assert!(failed.message.contains("50 MiB"), "{}", failed.message);
        let r = Report {
            init: Some("none"),
            ..report("")
        };
        assert_eq!(
            judge(&n, &r, now, now).unwrap_err().reason,
            reasons::HOST_UNSUITABLE
        );
        // No tool for a check: said, not failed.
        let said = judge(
            &n,
            &parse("preflight-endpoint=0 untested none 0\n"),
            now,
            now,
        )
        .unwrap();
        assert!(
            said.contains("not checked: clock (no date), e0 (no curl"),
            "{said}"
        );
    }

    #[test]
    fn hostile_answers_are_not_taken() {
        let r = parse(
            "preflight-clock=$(reboot)\npreflight-init=evil\npreflight-free-kib=-1\n\
             preflight-endpoint=0 reachable rm 0\npreflight-endpoint=x reachable curl 0\n\
             preflight-endpoint=1 unreachable curl 7 extra\n",
        );
        assert_eq!(r, Report::default());
    }
}
