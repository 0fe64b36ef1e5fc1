//! The agent installer stand-in: the tarball the endpoint serves under
//! [`crate::AGENT_INSTALLER_PATH`] when configured with [`crate::AgentInstaller::StandIn`], and
//! what its program (`opsworks-agent-standin`) shares with tests.
//!
//! The tarball holds `opsworks-agent-installer/boot-registration`, a shell script that runs the
//! stand-in program (by absolute path, on this machine) with this endpoint's URL. As the real
//! installer's `boot-registration` did, the program reads `preconfig` next to the script and
//! registers the host with OpsWorks `RegisterInstance`, signed (SigV4) with the access key
//! `preconfig` gives, through the official `aws-sdk-opsworks` client, and talks to nothing but
//! that endpoint (a loopback URL).
//!
//! # The host directory
//!
//! What a host knows about itself comes from its host directory, [`HOST_DIR`]
//! (`/run/registrar-test-host`, a per-host bind mount in the test SSH hosts' mount namespaces;
//! `--host-dir` overrides it). The program reads:
//!
//! - [`host_files::HOSTNAME`]: the host's hostname, used when `preconfig` has no `hostname`.
//! - [`host_files::LOCAL_IPV4`]: its private address, used when `preconfig` has no `private_ip`;
//!   [`host_files::PUBLIC_IPV4`] (optional): its public address, used when `preconfig` has no
//!   `public_ip`.
//! - [`host_files::IDENTITY_DOCUMENT`]: EC2 hosts only, the EC2 instance identity document
//!   (JSON), sent as `InstanceIdentity.Document` (with the fixed signature
//!   [`IDENTITY_SIGNATURE`]) when `preconfig`'s `import` is true. Missing then: the run fails.
//! - [`host_files::INSTALLER_FAILURE`] (optional): when present, the run fails after its run
//!   time with the file's content on standard error, without registering;
//!   [`host_files::INSTALLER_EXIT_STATUS`] (optional) is then its exit status (1 otherwise).
//!
//! and writes only:
//!
//! - [`host_files::PRECONFIG_RECEIVED`]: the `preconfig` it parsed, a JSON object, the value of
//!   `secret_access_key` replaced by [`hash_secret`]'s `sha256:<hex>` (rewritten by each run whose
//!   `preconfig` parses);
//! - [`host_files::LOG`]: one line appended per run, `run uid=<uid> result=registered
//!   instance=<OpsWorks instance ID>` or `run uid=<uid> result=failed reason=<reason>` (reasons
//!   are listed at [`host_files::LOG`]).
//!
//! # A run
//!
//! In order: parse `preconfig` (sorted `:key: <JSON>` lines, see [`parse_preconfig`]) and write
//! [`host_files::PRECONFIG_RECEIVED`]; check that it runs as uid 0 and that the environment's
//! `OPSWORKS_ASSETS_DOWNLOAD_BUCKET` equals `preconfig`'s `assets_download_bucket`; work out the
//! host's identity; print progress and sleep the run time; fail if
//! [`host_files::INSTALLER_FAILURE`] exists; call `RegisterInstance` with `StackId`, `Hostname`,
//! `PrivateIp`, `PublicIp` (when known) and `InstanceIdentity` (when `import` is true); print
//! `Instance ID: <id>` and exit 0, or print the error and exit 1. Without `access_key_id` in
//! `preconfig` (the instance profile path) it signs with [`INSTANCE_PROFILE_ACCESS_KEY_ID`] and
//! [`INSTANCE_PROFILE_SECRET_ACCESS_KEY`], which the endpoint accepts, unverified, when the
//! identity document names an EC2 instance with an instance profile.
//!
//! # Use from tests
//!
//! ```no_run
//! use std::time::Duration;
//! use opsworks_endpoint::{AgentInstaller, Config, Endpoint, moto::MotoServer, standin::StandIn};
//!
//! let moto = MotoServer::shared().unwrap();
//! let mut config = Config::with_moto(moto.url());
//! // Builds the program first if it is missing or older than its sources.
//! config.agent_installer = AgentInstaller::StandIn(StandIn::built().run_time(Duration::from_secs(2)));
//! let endpoint = Endpoint::start(config).unwrap();
//! let tarball = endpoint.agent_installer_bytes().unwrap(); // what agentInstallerSha256 checks
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The host directory's fixed path on the test hosts.
pub const HOST_DIR: &str = "/run/registrar-test-host";
/// The stand-in program's name (a binary target of this crate).
pub const BINARY_NAME: &str = "opsworks-agent-standin";
/// The directory the tarball unpacks into.
pub const INSTALLER_DIR: &str = "opsworks-agent-installer";
/// The script in [`INSTALLER_DIR`] the controller runs.
pub const BOOT_REGISTRATION: &str = "boot-registration";
/// The file in [`INSTALLER_DIR`] the controller writes.
pub const PRECONFIG: &str = "preconfig";
/// The environment variable the controller sets for `boot-registration`.
pub const BUCKET_ENV: &str = "OPSWORKS_ASSETS_DOWNLOAD_BUCKET";
/// Access key ID signed with on the instance profile path (no key in `preconfig`).
pub const INSTANCE_PROFILE_ACCESS_KEY_ID: &str = "ASIASTANDININSTANCEPROFILE";
/// Its secret; made up, as the endpoint does not verify keys IAM does not know.
pub const INSTANCE_PROFILE_SECRET_ACCESS_KEY: &str = "standin/instance-profile/made-up-secret-key";
/// `InstanceIdentity.Signature` sent with the identity document.
pub const IDENTITY_SIGNATURE: &str = "c3RhbmQtaW4gc2lnbmF0dXJl";
/// Modification time of the tarball's entries: fixed, so the tarball's bytes (and SHA-256) do
/// not change between downloads. 2024-05-26, when OpsWorks Stacks closed.
const TARBALL_MTIME: u64 = 1_716_681_600;

/// Names of the files in the host directory.
pub mod host_files {
    /// The host's hostname (one line).
    pub const HOSTNAME: &str = "hostname";
    /// The host's private IPv4 address (one line).
    pub const LOCAL_IPV4: &str = "local-ipv4";
    /// The host's public IPv4 address (one line; optional).
    pub const PUBLIC_IPV4: &str = "public-ipv4";
    /// The EC2 instance identity document (JSON); EC2 hosts only.
    pub const IDENTITY_DOCUMENT: &str = "instance-identity-document";
    /// When present, the installer fails with this content as its error output.
    pub const INSTALLER_FAILURE: &str = "installer-failure";
    /// The exit status of a run that fails (a number, 1 to 255; 1 when missing).
    pub const INSTALLER_EXIT_STATUS: &str = "installer-exit-status";
    /// Written: the parsed `preconfig` with the secret hashed.
    pub const PRECONFIG_RECEIVED: &str = "preconfig-received.json";
    /// Appended: one line per run. The `reason` of a failed run is one of `bad-preconfig`,
    /// `not-root`, `bucket-mismatch`, `no-hostname`, `no-identity-document`,
    /// `bad-identity-document`, `bad-endpoint`, `installer-failure`, `api-error code=<Code>`,
    /// `request-failed`, `host-dir` (cannot write [`PRECONFIG_RECEIVED`]), `init-script`.
    pub const LOG: &str = "boot-registration.log";
    /// Appended: one line per run of the agent's init script, `<action> uid=<uid>`.
    pub const SERVICE_LOG: &str = "opsworks-agent-service.log";
    /// The agent's init script, written in `--init-dir` (not in the host directory) by a run
    /// that registered: `opsworks-agent {start|stop|restart|status}`, which only logs
    /// ([`SERVICE_LOG`]): the stand-in's agent runs no process.
    pub const INIT_SCRIPT: &str = "opsworks-agent";
}

/// Where `boot-registration` (as the endpoint serves it) puts the agent's init script.
pub const INIT_DIR: &str = "/etc/init.d";

/// The stand-in the endpoint serves: which program `boot-registration` runs, and how long a
/// run takes before it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    /// The `opsworks-agent-standin` program (made absolute in the script).
    pub binary: PathBuf,
    /// How long a run sleeps before registering (the real installer took minutes).
    pub run_time: Duration,
}

impl StandIn {
    /// `binary`, with no run time.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        StandIn {
            binary: binary.into(),
            run_time: Duration::ZERO,
        }
    }

    /// The program of this workspace, built if need be ([`binary_path`]), with no run time.
    /// Panics when it cannot be built.
    pub fn built() -> Self {
        Self::new(binary_path())
    }

    /// The same with `run_time`.
    pub fn run_time(mut self, run_time: Duration) -> Self {
        self.run_time = run_time;
        self
    }

    /// The tarball that runs this stand-in against the endpoint at `endpoint_url`.
    pub fn tarball(&self, endpoint_url: &str) -> Vec<u8> {
        installer_tarball(self, endpoint_url)
    }
}

/// A parsed `preconfig`: key (without the colons) to value.
pub type Preconfig = BTreeMap<String, Value>;

/// Parses `preconfig`: one line per key, keys sorted and unique, each line `:key: <JSON value>`
/// with `key` made of ASCII letters, digits and `_`, and the value one JSON value. The last line
/// may end with a newline; anything else (blank lines, carriage returns, other forms) is refused
/// with the line's number, but never with the line's content (it may hold a secret).
pub fn parse_preconfig(text: &str) -> Result<Preconfig, String> {
    let mut out = Preconfig::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Ok(out);
    }
    let mut last: Option<String> = None;
    for (i, line) in body.split('\n').enumerate() {
        let n = i + 1;
        let bad = |why: &str| format!("preconfig line {n} is not `:key: <JSON value>`: {why}");
        if line.contains('\r') {
            return Err(bad("it has a carriage return"));
        }
        let Some(rest) = line.strip_prefix(':') else {
            return Err(bad("it does not start with ':'"));
        };
        let Some((key, value)) = rest.split_once(": ") else {
            return Err(bad("no ': ' after the key"));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("the key is not letters, digits and '_'"));
        }
        let value: Value = serde_json::from_str(value).map_err(|e| {
            bad(&format!(
                "the value is not one JSON value ({})",
                json_error_kind(&e)
            ))
        })?;
        if let Some(prev) = &last
            && prev.as_str() >= key
        {
            return Err(format!(
                "preconfig line {n}: key {key:?} {} (keys are sorted and unique)",
                if prev == key {
                    "appears twice".to_owned()
                } else {
                    format!("comes after {prev:?}")
                }
            ));
        }
        last = Some(key.to_owned());
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// What kind of JSON error `e` is, without the text it may quote.
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

/// Writes `preconfig` as the controller does: one `:key: <JSON value>` line per key, sorted.
pub fn render_preconfig(preconfig: &Preconfig) -> String {
    let mut s = String::new();
    for (k, v) in preconfig {
        s.push(':');
        s.push_str(k);
        s.push_str(": ");
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}

/// `sha256:<lowercase hex of SHA-256 of secret>`, what [`host_files::PRECONFIG_RECEIVED`] holds
/// instead of the secret access key.
pub fn hash_secret(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// `preconfig` as a JSON object, with `secret_access_key`'s value replaced by [`hash_secret`] of
/// it (of its JSON text when it is not a string).
pub fn redacted(preconfig: &Preconfig) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in preconfig {
        let v = if k == "secret_access_key" {
            Value::String(match v {
                Value::String(s) => hash_secret(s),
                other => hash_secret(&other.to_string()),
            })
        } else {
            v.clone()
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m)
}

/// Where the programs a test host runs are copied for this process: a directory any user can
/// enter and read (`instance-registrar-test-<pid>-programs` in the temporary directory, mode
/// 0755), as the build's own target directory may sit in one only its owner can enter (a clone
/// under `/root` or a `mktemp -d` directory), and a test host's login user runs them too (a
/// setup run without sudo). Those of finished processes are removed the first time.
pub fn programs_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut made = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = made.as_ref() {
        return Ok(dir.clone());
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("instance-registrar-test-"))
                .and_then(|n| n.strip_suffix("-programs"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!(
        "instance-registrar-test-{}-programs",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot open {} to all: {e}", dir.display()))?;
    *made = Some(dir.clone());
    Ok(dir)
}

/// `binary` where any user can run it: the same file, hard-linked into a directory of
/// [`programs_dir`] for its path (copied where linking fails), replaced when `binary` was rebuilt
/// since; returns its path. A test
/// host's login user (not root) runs the stand-ins, and cannot when the target directory is in
/// a directory only root can enter.
pub fn reachable_program(binary: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let binary = std::path::absolute(binary).unwrap_or_else(|_| binary.to_owned());
    let name = binary
        .file_name()
        .ok_or_else(|| format!("{} names no file", binary.display()))?;
    // A directory per program path: two programs of the same name (another build's) do not
    // replace each other's copy while one runs.
    let dir = {
        use std::hash::{Hash, Hasher};
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        binary.hash(&mut hash);
        programs_dir()?.join(format!("{:016x}", hash.finish()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot open {} to all: {e}", dir.display()))?;
    let target = dir.join(name);
    let meta =
        std::fs::metadata(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    if let Ok(there) = std::fs::metadata(&target) {
        let same_file = there.dev() == meta.dev() && there.ino() == meta.ino();
        let same_copy = there.len() == meta.len()
            && matches!((there.modified(), meta.modified()), (Ok(t), Ok(m)) if t >= m);
        if same_file || same_copy {
            return Ok(target);
        }
    }
    let partial = target.with_file_name(format!(
        ".{}.{}.partial",
        name.to_string_lossy(),
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
    // Anyone may read and run it (a hard link shares the mode of cargo's output, 0755 already).
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot set the mode of {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &target)
        .map_err(|e| format!("cannot make {}: {e}", target.display()))?;
    Ok(target)
}

impl StandIn {
    /// The same stand-in running the [`reachable_program`] copy of its program (the program
    /// itself when that cannot be made, with a warning).
    pub fn reachable(&self) -> StandIn {
        match reachable_program(&self.binary) {
            Ok(binary) => StandIn {
                binary,
                ..self.clone()
            },
            Err(e) => {
                tracing::warn!("the stand-in program stays where it is: {e}");
                self.clone()
            }
        }
    }
}

/// `s` quoted for the POSIX shell: in single quotes, each `'` written `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Seconds as the program's `--run-seconds` takes them (`0`, `1.5`).
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// The `boot-registration` script of `standin` against `endpoint_url`.
pub fn boot_registration_script(standin: &StandIn, endpoint_url: &str) -> String {
    let binary = std::path::absolute(&standin.binary).unwrap_or_else(|_| standin.binary.clone());
    format!(
        "#!/bin/sh\n\
         # OpsWorks agent installer stand-in (tests only): registers this host with the\n\
         # OpsWorks-compatible endpoint, reading preconfig next to this script.\n\
         case \"$0\" in */*) dir=\"${{0%/*}}\" ;; *) dir=. ;; esac\n\
         exec {} --endpoint {} --installer-dir \"$dir\" --run-seconds {} --init-dir {} \"$@\"\n",
        shell_quote(&binary.to_string_lossy()),
        shell_quote(endpoint_url),
        shell_quote(&seconds(standin.run_time)),
        shell_quote(INIT_DIR),
    )
}

const README: &str = "\
OpsWorks agent installer stand-in, for tests of instance-registrar.

boot-registration reads preconfig (one `:key: <JSON value>` line per key) from this directory
and registers the host with the OpsWorks-compatible endpoint (RegisterInstance), as the real
installer's boot-registration did. It installs nothing. See the opsworks-endpoint crate's
`standin` module.
";

/// The agent installer tarball (gzip'd tar) for `standin` against `endpoint_url`:
/// `opsworks-agent-installer/` holding `boot-registration` (mode 0755) and `README`. The same
/// arguments always give the same bytes.
pub fn installer_tarball(standin: &StandIn, endpoint_url: &str) -> Vec<u8> {
    let script = boot_registration_script(standin, endpoint_url);
    let mut tar = Vec::new();
    tar_entry(&mut tar, &format!("{INSTALLER_DIR}/"), 0o755, b'5', b"");
    tar_entry(
        &mut tar,
        &format!("{INSTALLER_DIR}/{BOOT_REGISTRATION}"),
        0o755,
        b'0',
        script.as_bytes(),
    );
    tar_entry(
        &mut tar,
        &format!("{INSTALLER_DIR}/README"),
        0o644,
        b'0',
        README.as_bytes(),
    );
    // The end of the archive: two zero blocks.
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::GzBuilder::new()
        .mtime(TARBALL_MTIME as u32)
        .write(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    gz.write_all(&tar).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

/// Appends one ustar entry (header and data, padded to 512 bytes). Names are short here.
fn tar_entry(out: &mut Vec<u8>, name: &str, mode: u32, kind: u8, data: &[u8]) {
    fn octal(field: &mut [u8], value: u64) {
        // Zero-padded octal digits, then NUL.
        let digits = field.len() - 1;
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    }
    assert!(name.len() < 100, "tar entry name too long: {name}");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], TARBALL_MTIME);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // The checksum: the sum of the header's bytes with the checksum field as spaces, written
    // as six octal digits, NUL, space.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// The path of this workspace's `opsworks-agent-standin` program, for tests of any package of
/// the workspace: next to the running executable's profile directory (`target/debug/`, the
/// parent of a test's `target/debug/deps/`). When it is missing or older than this crate's
/// sources, it is built first with `$CARGO build -p opsworks-endpoint --bin
/// opsworks-agent-standin` (once per process). Panics with the reason when that fails.
pub fn binary_path() -> PathBuf {
    built_binary(BINARY_NAME)
}

/// The path of this crate's program `name` (a binary target), built as [`binary_path`] says.
/// Panics with the reason when it cannot be built.
pub(crate) fn built_binary(name: &'static str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<&'static str, Result<PathBuf, String>>> =
        Mutex::new(BTreeMap::new());
    // Held while building: two programs are not built at once (cargo would wait anyway).
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let result = built.entry(name).or_insert_with(|| find_or_build(name));
    match result {
        Ok(p) => p.clone(),
        Err(e) => panic!("the stand-in program {name} is not available: {e}"),
    }
}

/// The profile directory (`target/debug`) of the running executable.
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let in_subdir = matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    );
    Ok(match (in_subdir, dir.parent()) {
        (true, Some(p)) => p.to_owned(),
        _ => dir.to_owned(),
    })
}

/// The newest modification time of this crate's manifest and sources, if they are here.
fn sources_mtime() -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, newest);
            } else if let Ok(m) = meta.modified() {
                *newest = (*newest).max(Some(m));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = std::fs::metadata(root.join("Cargo.toml"))
        .and_then(|m| m.modified())
        .ok();
    newest?;
    walk(&root.join("src"), &mut newest);
    newest
}

fn find_or_build(name: &str) -> Result<PathBuf, String> {
    let profile = profile_dir()?;
    let path = profile.join(name);
    // An empty file is a link that was cut off (a build killed mid-way); sh would run it as an
    // empty script and "succeed" without registering anything.
    let built_at = std::fs::metadata(&path)
        .ok()
        .filter(|m| m.len() > 0)
        .and_then(|m| m.modified().ok());
    let fresh = match (built_at, sources_mtime()) {
        (Some(b), Some(s)) => b >= s,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "-p", "opsworks-endpoint", "--bin", name]);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    // The target directory, when the profile directory sits right in it (not cross-compiled).
    if let Some(target) = profile.parent()
        && target.join("CACHEDIR.TAG").exists()
    {
        cmd.arg("--target-dir").arg(target);
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    // What `cargo test` set for this test process (CARGO_MANIFEST_DIR, CARGO_PKG_*, OUT_DIR, …)
    // is not for this build: some build scripts (ring's) watch such variables, and building
    // with them would rebuild the whole TLS and AWS SDK stack now, and again at the next
    // ordinary build. Cargo's own settings (CARGO_HOME, CARGO_TARGET_DIR, CARGO_BUILD_*, …)
    // stay.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if inherited_from_cargo(name) {
            cmd.env_remove(name);
        }
    }
    eprintln!(
        "building the stand-in program {name}: {} {}",
        Path::new(&cargo).display(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "`cargo build -p opsworks-endpoint --bin {name}` failed ({status})"
        ));
    }
    if !path.is_file() {
        return Err(format!(
            "the build succeeded but {} does not exist",
            path.display()
        ));
    }
    Ok(path)
}

/// Whether `name` is one of the variables cargo sets for the programs it runs (rather than one
/// of its settings).
fn inherited_from_cargo(name: &str) -> bool {
    const SETTINGS: &[&str] = &[
        "CARGO_HOME",
        "CARGO_TARGET_",
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_INCREMENTAL",
        "CARGO_UNSTABLE_",
        "CARGO_CACHE_",
        "CARGO_ALIAS_",
        "CARGO_LOG",
        "CARGO_ENCODED_RUSTFLAGS",
    ];
    name == "OUT_DIR"
        || name == "CARGO_TARGET_TMPDIR"
        || (name.starts_with("CARGO_") && !SETTINGS.iter().any(|s| name.starts_with(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn preconfig_round_trip() {
        let mut p = Preconfig::new();
        p.insert("stack_id".into(), json!("0b1c-stack"));
        p.insert("access_key_id".into(), json!("AKIAEXAMPLE"));
        p.insert(
            "secret_access_key".into(),
            json!("se\"cr'et\n\\with: colons\u{1}"),
        );
        p.insert("hostname".into(), json!("web-1"));
        p.insert("import".into(), json!(false));
        p.insert("verbose".into(), json!("false"));
        p.insert("weird".into(), json!({"a": [1, null, "x\ny"]}));
        let text = render_preconfig(&p);
        assert_eq!(text.lines().count(), p.len());
        assert!(text.starts_with(":access_key_id: \"AKIAEXAMPLE\"\n"));
        assert!(text.contains(":import: false\n"));
        assert_eq!(parse_preconfig(&text).unwrap(), p);
        // No final newline is fine too; an empty file is an empty preconfig.
        assert_eq!(parse_preconfig(text.trim_end()).unwrap(), p);
        assert_eq!(parse_preconfig("").unwrap(), Preconfig::new());
    }

    #[test]
    fn malformed_preconfig_is_refused() {
        let cases = [
            ("stack_id: \"x\"\n", "line 1"),
            (":stack_id \"x\"\n", "line 1"),
            (":stack_id:\"x\"\n", "line 1"),
            (":: \"x\"\n", "line 1"),
            (":stack id: \"x\"\n", "line 1"),
            (":a: 1\n:stack_id: x\n", "line 2"),
            (":a: 1\n:stack_id: \"x\" trailing\n", "line 2"),
            (":a: \"unterminated\n", "line 1"),
            (":a: 1\n\n:b: 2\n", "line 2"),
            (":a: 1\r\n", "line 1"),
            (":a: 1\n\n", "line 2"),
            (":b: 1\n:a: 2\n", "comes after"),
            (":a: 1\n:a: 2\n", "appears twice"),
        ];
        for (text, want) in cases {
            let err = parse_preconfig(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Errors never quote the line (it may be the secret's).
        let err = parse_preconfig(":secret_access_key: TOPSECRET\n").unwrap_err();
        assert!(!err.contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn secrets_are_hashed() {
        let mut p = Preconfig::new();
        p.insert("secret_access_key".into(), json!("abc"));
        p.insert("stack_id".into(), json!("s"));
        let r = redacted(&p);
        assert_eq!(
            r,
            json!({
                "secret_access_key":
                    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "stack_id": "s",
            })
        );
    }

    #[test]
    fn script_quotes_everything() {
        let s = StandIn::new("/opt/it's here/opsworks-agent-standin")
            .run_time(Duration::from_millis(1500));
        let script = boot_registration_script(&s, "http://127.0.0.1:4580");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(
            "exec '/opt/it'\\''s here/opsworks-agent-standin' --endpoint \
             'http://127.0.0.1:4580' --installer-dir \"$dir\" --run-seconds '1.5' \
             --init-dir '/etc/init.d' \"$@\"\n"
        ));
        // The directory of the script, without any program (sudo's PATH may lack them).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot-registration");
        std::fs::write(&path, script.replace("exec ", "echo ")).unwrap();
        for (arg0, want) in [
            (
                path.to_str().unwrap().to_owned(),
                dir.path().to_str().unwrap(),
            ),
            ("./boot-registration".to_owned(), "."),
            ("boot-registration".to_owned(), "."),
        ] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(". {}", shell_quote(path.to_str().unwrap())))
                .arg(&arg0)
                .arg("--extra")
                .env_clear()
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!(
                    "--installer-dir {want} --run-seconds 1.5 --init-dir /etc/init.d --extra\n"
                )),
                "{arg0}: {stdout} {out:?}"
            );
        }
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn nested_builds_drop_what_cargo_set_for_the_test() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ] {
            assert!(inherited_from_cargo(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
            "PATH",
            "RUSTUP_TOOLCHAIN",
        ] {
            assert!(!inherited_from_cargo(name), "{name}");
        }
    }

    #[test]
    fn tarball_is_stable_and_unpacks_with_tar() {
        let s = StandIn::new("/bin/true").run_time(Duration::from_secs(3));
        let a = installer_tarball(&s, "http://127.0.0.1:1");
        assert_eq!(a, installer_tarball(&s, "http://127.0.0.1:1"));
        assert_ne!(a, installer_tarball(&s, "http://127.0.0.1:2"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("i.tgz"), &a).unwrap();
        let out = std::process::Command::new("tar")
            .arg("xzf")
            .arg("i.tgz")
            .current_dir(dir.path())
            .output()
            .expect("tar");
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "{out:?}");
        let script = dir.path().join(INSTALLER_DIR).join(BOOT_REGISTRATION);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(&script).unwrap(),
            boot_registration_script(&s, "http://127.0.0.1:1")
        );
        let listing = std::process::Command::new("tar")
            .args(["tzvf", "i.tgz"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            listing.contains("rwxr-xr-x root/root") && listing.contains("2024-05-26"),
            "{listing}"
        );
    }
}
