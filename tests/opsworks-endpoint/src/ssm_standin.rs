//! The Systems Manager stand-ins: the `ssm-setup-cli` script the endpoint serves under
//! [`SETUP_PATH_PREFIX`] when configured with an [`SsmStandIn`], and what its program (this
//! crate's `amazon-ssm-agent`, which is both the setup tool and the agent) shares with tests.
//!
//! # The setup tool
//!
//! `GET /ssm/latest/<platform>_<arch>/ssm-setup-cli` (any platform such as `linux` or `debian`;
//! arch `amd64`, `arm64` or `386`; see [`setup_path`]) answers a `#!/bin/sh` script that execs
//! this machine's stand-in program, by absolute path, in setup mode with the endpoint's URL, the
//! run time and the heartbeat interval, passing the real tool's flags through. The program runs
//! under the name [`SETUP_PROGRAM_NAME`] (a hard link to `amazon-ssm-agent` beside it, see
//! [`setup_program`]) so that, as with the real tools, only the agent daemon's executable is
//! called `amazon-ssm-agent` in `/proc/<pid>/exe`.
//!
//! Like the real `ssm-setup-cli` it takes `-register -activation-code C -activation-id I -region
//! R [-override]`, `-install -region R`, or both (Go-style flags: `-flag value`, `-flag=value`,
//! one or two dashes); anything else is a usage error (exit 1). It must run as root. A run, in
//! order: sleeps the run time; fails (without registering) when the host directory has
//! [`crate::standin::host_files::INSTALLER_FAILURE`] (its content on standard error, exit
//! status from [`crate::standin::host_files::INSTALLER_EXIT_STATUS`], else 1); "installs" the
//! agent ([`host_files::AGENT_INSTALLED`]); for `-register`: when
//! [`REGISTRATION_FILE`] names a node and `-override` is not given, skips registering (as the
//! real tool: "skipping registration because override flag is not set, just starting agent");
//! otherwise calls `RegisterManagedInstance` (unsigned) at the endpoint, writes the registration
//! file (`{"ManagedInstanceID":"mi-…","Region":"…"}`, mode 0600) and stops the running agent;
//! then starts the agent if none runs, and exits 0. An error is printed and exits 1. The
//! activation code is never printed nor written anywhere. Each run appends a line to
//! [`host_files::SETUP_LOG`].
//!
//! # The agent
//!
//! The daemon (`amazon-ssm-agent` with no `setup` argument, started by the setup tool detached
//! with `setsid`, standard output and error to [`host_files::AGENT_LOG`]) runs once per host: it
//! holds an exclusive `flock` on [`host_files::AGENT_LOCK`] (which holds its PID), and another
//! exits at once. Every heartbeat interval it calls `UpdateInstanceInformation` with the node ID
//! of the registration file (read again each time, so a new registration takes effect), or,
//! without one, with the EC2 instance ID of the host's identity document
//! ([`crate::standin::host_files::IDENTITY_DOCUMENT`]) signed with the instance-profile key
//! ([`crate::standin::INSTANCE_PROFILE_ACCESS_KEY_ID`]). Answers that refuse it (a deregistered
//! node, an instance without a profile) are logged and it goes on.
//!
//! # Use from tests
//!
//! ```no_run
//! use std::time::Duration;
//! use opsworks_endpoint::{Config, Endpoint, moto::MotoServer, ssm_standin::SsmStandIn};
//!
//! let moto = MotoServer::shared().unwrap();
//! let mut config = Config::with_moto(moto.url());
//! // Builds the program first if it is missing or older than its sources.
//! config.ssm_standin = Some(SsmStandIn::built().run_time(Duration::from_secs(2)));
//! let endpoint = Endpoint::start(config).unwrap();
//! let template = endpoint.ssm_setup_url_template(); // what REGISTRAR_SSM_SETUP_URL says
//! let script = endpoint.ssm_setup_bytes("linux", "amd64").unwrap(); // for its SHA-256
//! endpoint.set_ssm_setup_run_time(Duration::ZERO);
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::standin::shell_quote;

/// The stand-in program's name (a binary target of this crate), the real agent's.
pub const AGENT_BINARY_NAME: &str = "amazon-ssm-agent";
/// The name the setup tool runs under (a hard link to the program, beside it).
pub const SETUP_PROGRAM_NAME: &str = "ssm-setup-cli";
/// The setup tool is served under `<prefix><platform>_<arch>/ssm-setup-cli`.
pub const SETUP_PATH_PREFIX: &str = "/ssm/latest/";
/// The architectures the setup tool is served for.
pub const ARCHES: &[&str] = &["amd64", "arm64", "386"];
/// Where the real agent keeps its state (a per-host bind mount on the test SSH hosts).
pub const AMAZON_DIR: &str = "/var/lib/amazon";
/// The registration file, as the real agent writes it.
pub const REGISTRATION_FILE: &str = "/var/lib/amazon/ssm/registration";
/// Access key ID the agent signs its heartbeats with for a registered node (the real agent's
/// come from its registration; the endpoint does not verify them).
pub const AGENT_ACCESS_KEY_ID: &str = "ASIASTANDINSSMAGENT";
/// Its secret; made up.
pub const AGENT_SECRET_ACCESS_KEY: &str = "standin/ssm-agent/made-up-secret-key";
/// The agent version the stand-in reports.
pub const AGENT_VERSION: &str = "3.3.0.0";
/// Where the setup tool the endpoint serves puts the agent's init script
/// ([`host_files::INIT_SCRIPT`]), as the real package does on a host with SysV init.
pub const INIT_DIR: &str = "/etc/init.d";
/// Default heartbeat interval of the agent.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Names of the files the SSM stand-ins keep in the host directory
/// ([`crate::standin::HOST_DIR`]).
pub mod host_files {
    /// Appended: one line per setup run, `setup uid=<uid> result=<result> [node=<ID>]
    /// [reason=<reason>]`, where result is `registered`, `skipped` (already registered, no
    /// `-override`), `installed` (`-install` alone) or `failed`. Reasons: `usage`, `not-root`,
    /// `installer-failure`, `bad-endpoint`, `api-error code=<Code>`, `request-failed`,
    /// `registration-file`, `agent-start`.
    pub const SETUP_LOG: &str = "ssm-setup.log";
    /// The agent daemon's standard output and error.
    pub const AGENT_LOG: &str = "ssm-agent.log";
    /// Locked (`flock`) by the running agent daemon, and holding its PID.
    pub const AGENT_LOCK: &str = "ssm-agent.lock";
    /// Written by the setup tool: the agent is "installed".
    pub const AGENT_INSTALLED: &str = "ssm-agent-installed";
    /// Appended: one line per run of the agent's init script, `<action> uid=<uid>
    /// result=<result>` (`restart uid=0 result=running pid=<PID>`).
    pub const SERVICE_LOG: &str = "ssm-agent-service.log";
    /// The agent's init script, in the setup tool's `--init-dir` (not in the host directory):
    /// `amazon-ssm-agent {start|stop|restart|status}`, run as root.
    pub const INIT_SCRIPT: &str = "amazon-ssm-agent";
}

/// The setup tool and agent the endpoint serves: which program, how long a setup run takes
/// before it does anything, and how often the agent sends heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmStandIn {
    /// The `amazon-ssm-agent` program (made absolute in the script).
    pub binary: PathBuf,
    /// How long a setup run sleeps first (the real tool downloads and installs the agent).
    pub run_time: Duration,
    /// How often the agent calls `UpdateInstanceInformation`.
    pub heartbeat_interval: Duration,
}

impl SsmStandIn {
    /// `binary`, with no run time and the default heartbeat interval.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        SsmStandIn {
            binary: binary.into(),
            run_time: Duration::ZERO,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }

    /// The program of this workspace, built if need be ([`binary_path`]).
    pub fn built() -> Self {
        Self::new(binary_path())
    }

    /// The same with `run_time`.
    pub fn run_time(mut self, run_time: Duration) -> Self {
        self.run_time = run_time;
        self
    }

    /// The same with `interval` between heartbeats.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// The `ssm-setup-cli` script for `platform`/`arch` against the endpoint at `endpoint_url`.
    pub fn setup_script(&self, endpoint_url: &str, platform: &str, arch: &str) -> String {
        setup_script(self, endpoint_url, platform, arch)
    }
}

impl SsmStandIn {
    /// The same stand-in running the [`crate::standin::reachable_program`] copy of its program
    /// (the program itself when that cannot be made, with a warning), with the setup tool's link
    /// beside that copy: what the served script runs, so that a host's login user can run it
    /// wherever the build's target directory is.
    pub fn reachable(&self) -> Result<SsmStandIn, String> {
        let binary = match crate::standin::reachable_program(&self.binary) {
            Ok(binary) => binary,
            Err(e) => {
                tracing::warn!("the SSM stand-in program stays where it is: {e}");
                self.binary.clone()
            }
        };
        setup_program(&binary)?;
        Ok(SsmStandIn {
            binary,
            ..self.clone()
        })
    }
}

/// The path of this workspace's `amazon-ssm-agent` stand-in, built if it is missing or older
/// than this crate's sources (as [`crate::standin::binary_path`]). Panics when it cannot be.
pub fn binary_path() -> PathBuf {
    crate::standin::built_binary(AGENT_BINARY_NAME)
}

/// The served path of the setup tool for `platform` (lowercase letters, digits and dashes) and
/// `arch` (one of [`ARCHES`]); `None` for others.
pub fn setup_path(platform: &str, arch: &str) -> Option<String> {
    let platform_ok = !platform.is_empty()
        && platform.len() <= 32
        && platform
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (platform_ok && ARCHES.contains(&arch))
        .then(|| format!("{SETUP_PATH_PREFIX}{platform}_{arch}/{SETUP_PROGRAM_NAME}"))
}

/// The (platform, arch) of a served setup path, if it is one.
pub fn parse_setup_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(SETUP_PATH_PREFIX)?;
    let dir = rest.strip_suffix(&format!("/{SETUP_PROGRAM_NAME}"))?;
    let (platform, arch) = dir.rsplit_once('_')?;
    setup_path(platform, arch)?;
    Some((platform.to_owned(), arch.to_owned()))
}

/// Seconds as the program takes them (`0`, `1.5`).
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// The `ssm-setup-cli` script of `standin` for `platform`/`arch` against `endpoint_url`. The
/// same arguments always give the same bytes.
pub fn setup_script(
    standin: &SsmStandIn,
    endpoint_url: &str,
    platform: &str,
    arch: &str,
) -> String {
    let binary = std::path::absolute(&standin.binary).unwrap_or_else(|_| standin.binary.clone());
    let setup = binary.with_file_name(SETUP_PROGRAM_NAME);
    format!(
        "#!/bin/sh\n\
         # ssm-setup-cli stand-in for {platform}_{arch} (tests of instance-registrar only):\n\
         # registers this host with the SSM-compatible endpoint and runs the stand-in agent.\n\
         # Takes the real tool's flags: -register -activation-code C -activation-id I -region R\n\
         # [-override], -install -region R.\n\
         exec {} setup --endpoint {} --agent {} --run-seconds {} --heartbeat-seconds {} \
         --init-dir {} -- \"$@\"\n",
        shell_quote(&setup.to_string_lossy()),
        shell_quote(endpoint_url),
        shell_quote(&binary.to_string_lossy()),
        shell_quote(&seconds(standin.run_time)),
        shell_quote(&seconds(standin.heartbeat_interval)),
        shell_quote(INIT_DIR),
    )
}

/// Makes [`SETUP_PROGRAM_NAME`] beside `binary` a hard link to it (a copy where linking fails),
/// replacing one that is not (the program was rebuilt); returns its path.
pub fn setup_program(binary: &Path) -> Result<PathBuf, String> {
    let binary = std::path::absolute(binary).unwrap_or_else(|_| binary.to_owned());
    let target = binary.with_file_name(SETUP_PROGRAM_NAME);
    let meta =
        std::fs::metadata(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    if let Ok(linked) = std::fs::metadata(&target)
        && linked.dev() == meta.dev()
        && linked.ino() == meta.ino()
    {
        return Ok(target);
    }
    let partial = binary.with_file_name(format!(
        ".{SETUP_PROGRAM_NAME}.{}.partial",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&partial);
    if std::fs::hard_link(&binary, &partial).is_err() {
        std::fs::copy(&binary, &partial).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                binary.display(),
                partial.display()
            )
        })?;
    }
    std::fs::rename(&partial, &target)
        .map_err(|e| format!("cannot make {}: {e}", target.display()))?;
    Ok(target)
}

/// The node ID and region of a registration file's content
/// (`{"ManagedInstanceID":"mi-…","Region":"…"}`); `None` without a node ID.
pub fn parse_registration(text: &str) -> Option<(String, Option<String>)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let id = v
        .get("ManagedInstanceID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())?;
    let region = v.get("Region").and_then(Value::as_str).map(str::to_owned);
    Some((id.to_owned(), region))
}

/// The registration file's content for node `id` in `region`.
pub fn registration_json(id: &str, region: &str) -> String {
    serde_json::json!({ "ManagedInstanceID": id, "Region": region }).to_string()
}

/// Whether `url` is `http://<loopback address or localhost>[:port][/...]`.
pub fn loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why an SSM call failed: the HTTP status (0 when there was no answer), the error code
/// (`__type`) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// HTTP status; 0 when the request got no answer.
    pub status: u16,
    /// The error code, or `RequestFailed` when there was no answer.
    pub code: String,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Signing credentials of an SSM call: (access key ID, secret, region).
pub type Signing<'a> = (&'a str, &'a str, &'a str);

/// Calls SSM `action` with `body` at the (loopback, `http://`) endpoint, as the agent's SDK
/// does: AWS JSON 1.1, signed with `signing` (SigV4, signing name `ssm`) or unsigned. Returns
/// the answer's JSON, or the error.
pub fn call(
    endpoint: &str,
    action: &str,
    body: &Value,
    signing: Option<Signing<'_>>,
) -> Result<Value, CallError> {
    let failed = |message: String| CallError {
        status: 0,
        code: "RequestFailed".to_owned(),
        message,
    };
    let authority = endpoint
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or(""))
        .filter(|a| !a.is_empty())
        .ok_or_else(|| failed(format!("not an http:// endpoint: {endpoint}")))?;
    let body = body.to_string();
    let amz_date = crate::time::amz_date(SystemTime::now());
    let mut headers = vec![
        ("Host".to_owned(), authority.to_owned()),
        ("X-Amz-Date".to_owned(), amz_date.clone()),
        (
            "X-Amz-Target".to_owned(),
            format!("{}.{action}", crate::model::ssm::TARGET_PREFIX),
        ),
        (
            "Content-Type".to_owned(),
            crate::model::CONTENT_TYPE.to_owned(),
        ),
    ];
    if let Some((key, secret, region)) = signing {
        let req = crate::sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        };
        let auth = crate::sigv4::authorization(
            key,
            secret,
            region,
            crate::model::ssm::SIGNING_NAME,
            &amz_date,
            &req,
        );
        headers.push(("Authorization".to_owned(), auth));
    }
    let mut request = String::from("POST / HTTP/1.1\r\n");
    for (n, v) in &headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut stream = TcpStream::connect(authority)
        .map_err(|e| failed(format!("cannot connect to {authority}: {e}")))?;
    let timeout = Some(Duration::from_secs(30));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| failed(format!("cannot send the request: {e}")))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| failed(format!("cannot read the answer: {e}")))?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| failed("a malformed answer".to_owned()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed("an answer without a status".to_owned()))?;
    let answer = &response[split + 4..];
    let v: Value = if answer.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(answer)
            .map_err(|e| failed(format!("an answer that is not JSON ({status}): {e}")))?
    };
    if status == 200 {
        return Ok(v);
    }
    let code = v
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Err(CallError {
        status,
        code,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_paths() {
        assert_eq!(
            setup_path("linux", "amd64").as_deref(),
            Some("/ssm/latest/linux_amd64/ssm-setup-cli")
        );
        assert_eq!(
            setup_path("amazon-linux", "386").as_deref(),
            Some("/ssm/latest/amazon-linux_386/ssm-setup-cli")
        );
        assert_eq!(setup_path("linux", "sparc"), None);
        assert_eq!(setup_path("Linux", "amd64"), None);
        assert_eq!(setup_path("", "amd64"), None);
        assert_eq!(setup_path("../x", "amd64"), None);
        assert_eq!(
            parse_setup_path("/ssm/latest/debian_arm64/ssm-setup-cli"),
            Some(("debian".into(), "arm64".into()))
        );
        assert_eq!(parse_setup_path("/ssm/latest/debian_arm64/other"), None);
        assert_eq!(parse_setup_path("/ssm/latest/debian/ssm-setup-cli"), None);
    }

    #[test]
    fn script_quotes_and_differs_by_platform() {
        let s = SsmStandIn::new("/opt/it's/amazon-ssm-agent").run_time(Duration::from_millis(1500));
        let script = s.setup_script("http://127.0.0.1:4580", "linux", "amd64");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(
            script.contains(
                "exec '/opt/it'\\''s/ssm-setup-cli' setup --endpoint 'http://127.0.0.1:4580' \
                 --agent '/opt/it'\\''s/amazon-ssm-agent' --run-seconds '1.5' \
                 --heartbeat-seconds '1' --init-dir '/etc/init.d' -- \"$@\"\n"
            ),
            "{script}"
        );
        assert_eq!(
            script,
            s.setup_script("http://127.0.0.1:4580", "linux", "amd64")
        );
        assert_ne!(
            script,
            s.setup_script("http://127.0.0.1:4580", "linux", "arm64")
        );
    }

    #[test]
    fn registrations() {
        let text = registration_json("mi-0123456789abcdef0", "eu-west-1");
        assert_eq!(
            text,
            r#"{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"eu-west-1"}"#
        );
        assert_eq!(
            parse_registration(&text),
            Some(("mi-0123456789abcdef0".into(), Some("eu-west-1".into())))
        );
        assert_eq!(parse_registration(r#"{"ManagedInstanceID":""}"#), None);
        assert_eq!(parse_registration("not json"), None);
    }

    #[test]
    fn setup_program_links_and_relinks() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(AGENT_BINARY_NAME);
        std::fs::write(&bin, b"one").unwrap();
        let link = setup_program(&bin).unwrap();
        assert_eq!(link, dir.path().join(SETUP_PROGRAM_NAME));
        assert_eq!(std::fs::read(&link).unwrap(), b"one");
        // Rebuilt: a new file, so the link is made again.
        std::fs::remove_file(&bin).unwrap();
        std::fs::write(&bin, b"two").unwrap();
        setup_program(&bin).unwrap();
        assert_eq!(std::fs::read(&link).unwrap(), b"two");
        let (a, b) = (
            std::fs::metadata(&bin).unwrap(),
            std::fs::metadata(&link).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    fn loopback_only() {
        assert!(loopback_url("http://127.0.0.1:1"));
        assert!(loopback_url("http://localhost:1/x"));
        assert!(!loopback_url("http://10.0.0.1:1"));
        assert!(!loopback_url("https://127.0.0.1:1"));
        assert!(!loopback_url("http://u@127.0.0.1:1"));
    }
}
