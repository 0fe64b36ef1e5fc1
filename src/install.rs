//! The remote side of installing the OpsWorks agent: the shell script run on the host over SSH
//! (DESIGN.md §1 step 5), the `preconfig` it writes, and reading back what the script said.
//!
//! Nothing from the spec, the stack or IAM ever reaches the shell unquoted: every value is passed
//! through [`shell_quote`], and the `preconfig` lines are written with `printf '%s\n'` and one
//! quoted argument per line. The script travels on the session's standard input (never on a
//! command line, where `ps` would show the secret access key) and runs with `/dev/null` as input,
//! so nothing the host runs can read the rest of it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

// The script's own exit statuses. `boot-registration`'s status is never passed through (an
// installer may exit with any number): its failure is [`EXIT_INSTALLER_FAILED`], with its status
// on a [`INSTALLER_STATUS_MARKER`] line of the output.

/// The script's exit status when the installer could not be downloaded.
pub const EXIT_DOWNLOAD_FAILED: u32 = 90;
/// The script's exit status when the installer's SHA-256 is not the one the spec requires.
pub const EXIT_CHECKSUM_MISMATCH: u32 = 91;
/// The script's exit status when the login user may not run `sudo` without a password.
pub const EXIT_SUDO_DENIED: u32 = 92;
/// The script's exit status when the tarball could not be unpacked or has no `boot-registration`.
pub const EXIT_UNPACK_FAILED: u32 = 93;
/// The script's exit status when the host lacks a tool the script needs (mktemp, sha256sum,
/// timeout, ...) or its install lock directory is not root's.
pub const EXIT_HOST_UNSUITABLE: u32 = 94;
/// The script's exit status when another install holds the host's install lock; nothing was
/// downloaded or run.
pub const EXIT_INSTALL_IN_PROGRESS: u32 = 95;
/// The script's exit status when `boot-registration` failed (its own status is on the output's
/// [`INSTALLER_STATUS_MARKER`] line).
pub const EXIT_INSTALLER_FAILED: u32 = 96;
/// The script's exit status when the time limit ([`Plan::time_limit`]) passed: the installer
/// was stopped (TERM, then KILL after [`KILL_AFTER`]) or not started.
pub const EXIT_TIMED_OUT: u32 = 97;
/// The script's exit status when `sudo` refuses to run without a terminal (`requiretty`).
pub const EXIT_SUDO_NEEDS_TTY: u32 = 98;

/// The start of the output line that gives `boot-registration`'s own exit status when it
/// failed; the status follows.
pub const INSTALLER_STATUS_MARKER: &str =
    "instance-registrar: boot-registration exited with status ";

/// How long an installer stopped at its time limit has to end after TERM before it is killed.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// Where the host-wide install lock goes: in `instance-registrar/`, a directory of root's made
/// (mode 0700) in the first of these that exists.
pub const LOCK_PARENTS: &[&str] = &["/run/lock", "/var/lock", "/run", "/var/run"];

/// What to run on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Where the agent installer tarball is downloaded from (http or https).
    pub installer_url: String,
    /// SHA-256 (lowercase hex) the tarball must have, when the spec sets one.
    pub installer_sha256: Option<String>,
    /// `OPSWORKS_ASSETS_DOWNLOAD_BUCKET` for `boot-registration`.
    pub assets_download_bucket: Option<String>,
    /// The `preconfig` keys and values (written sorted, one `:key: <JSON>` line each).
    pub preconfig: BTreeMap<String, Value>,
    /// How long the whole install may take on the host, counted there from the script's start
    /// (`ssh.commandTimeoutSeconds`): the download and `boot-registration` are stopped when it
    /// passes, whether or not the SSH session is still there. At least one second.
    pub time_limit: Duration,
}

/// Why a plan cannot be turned into a script.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The installer URL is not an http(s) URL.
    #[error("the agent installer URL is not an http or https URL")]
    InstallerUrl,
    /// A preconfig key is not a plain identifier.
    #[error("preconfig key {0:?} is not made of letters, digits and underscores")]
    PreconfigKey(String),
}

/// Quotes `value` for a POSIX shell: the result is one word whose value is exactly `value`,
/// whatever it holds (quotes, `$()`, backticks, newlines, `;`).
pub fn shell_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            // Close the quote, add an escaped quote, reopen.
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The `preconfig` file's lines: sorted by key, `:key: <JSON value>` (JSON never holds a raw
/// newline, so one entry is always one line).
pub fn preconfig_lines(preconfig: &BTreeMap<String, Value>) -> Result<Vec<String>, PlanError> {
    preconfig
        .iter()
        .map(|(key, value)| {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(PlanError::PreconfigKey(key.clone()));
            }
            Ok(format!(":{key}: {value}"))
        })
        .collect()
}

/// The part of the script that runs as root (through `sudo`), written to the private temp dir
/// and run with `/bin/sh`: `lock.sh probe DIR` takes the host's install lock and lets it go at
/// once (exit 0, or [`EXIT_INSTALL_IN_PROGRESS`] when another install holds it);
/// `lock.sh run DIR DEADLINE KILL_AFTER [BUCKET]` takes it and runs `boot-registration` under it,
/// stopped by `timeout` at DEADLINE (seconds since the epoch, the host's clock), then removes DIR
/// (with the `preconfig` that holds the secret access key) before it prints anything more, so
/// that nothing is left behind if the session is gone. The lock is `flock` on a file in a
/// directory of root's, released by the kernel whenever its holder ends, however it ends; where
/// `flock` is missing, a symbolic link made atomically by `ln -s` whose target is the holder's
/// PID, taken over when that process is gone.
const RUNNER: &str = r#"set -u
mode=$1 dir=$2
unsuitable() { echo "instance-registrar: $1"; exit @HOST_UNSUITABLE@; }
busy() {
  echo "instance-registrar: another install is running @NAME@ on this host ($1); nothing was run"
  exit @IN_PROGRESS@
}
command -v timeout >/dev/null 2>&1 || unsuitable "timeout (coreutils) is not installed"
base=
for parent in @LOCK_PARENTS@; do
  if [ -d "$parent" ]; then base=$parent; break; fi
done
[ -n "$base" ] || unsuitable "none of @LOCK_PARENTS@ is a directory, for the install lock"
locks=$base/instance-registrar
mkdir -m 0700 "$locks" 2>/dev/null
if [ -h "$locks" ] || [ ! -d "$locks" ] || [ ! -O "$locks" ]; then
  unsuitable "$locks is not a directory of root's; remove it"
fi
if command -v flock >/dev/null 2>&1; then
  exec 9>"$locks/agent-install.lock" || unsuitable "cannot open $locks/agent-install.lock"
  flock -n 9 || busy "it holds $locks/agent-install.lock"
else
  link=$locks/agent-install.pid
  if ! ln -s "$$" "$link" 2>/dev/null; then
    holder=$(ls -l "$link" 2>/dev/null | sed 's/.* -> //')
    case $holder in
      '' | *[!0-9]*) ;;
      *) if kill -0 "$holder" 2>/dev/null; then busy "process $holder holds $link"; fi ;;
    esac
    # The holder is gone: take the lock over. (Two installs that both find the same stale link
    # at the same moment could both get here; flock has no such gap.)
    rm -f "$link"
    ln -s "$$" "$link" 2>/dev/null || busy "another install took $link"
  fi
  trap 'rm -f "$link"' EXIT
  trap 'exit 129' HUP
  trap 'exit 143' TERM
fi
[ "$mode" = probe ] && exit 0
deadline=$3 kill_after=$4
if [ $# -ge 5 ]; then
  OPSWORKS_ASSETS_DOWNLOAD_BUCKET=$5
  export OPSWORKS_ASSETS_DOWNLOAD_BUCKET
fi
left=$((deadline - $(date +%s)))
if [ "$left" -le 0 ]; then
  rm -rf -- "$dir"
  echo "instance-registrar: the time limit passed before @NAME@ started"
  exit @TIMED_OUT@
fi
echo "instance-registrar: running @NAME@ (time limit ${left}s)"
# Its output goes through a pipe (never a terminal it could change modes of from the background
# process group timeout puts it in), and the lock's descriptor is not passed on to it: a daemon it
# starts must not hold the lock. The pipe's reader passes the output on while the session lasts
# and drops it after: when the controller stops mid-install, the session goes, and a reader that
# died with it (as `cat` does) would kill the installer with SIGPIPE at its next line, between
# registering the host and starting its agent.
(
  timeout -k "$kill_after" "$left" @RUN@ </dev/null 2>&1 9>&-
  echo $? >"$dir/installer-status"
) 9>&- | (
  trap '' PIPE
  while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line" 2>/dev/null || :; done
) 9>&-
status=$(cat "$dir/installer-status" 2>/dev/null) || status=unknown
rm -rf -- "$dir"
case $status in
  0) exit 0 ;;
  124 | 137)
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "instance-registrar: @NAME@ was stopped at the time limit"
      exit @TIMED_OUT@
    fi
    ;;
esac
echo "@MARKER@$status"
exit @INSTALLER_FAILED@
"#;

/// The script for `plan`, for `/bin/sh -s`.
pub fn render(plan: &Plan) -> Result<String, PlanError> {
    render_with(plan, LOCK_PARENTS, KILL_AFTER)
}

/// [`render`] with the lock's parent directories and the TERM-to-KILL grace given (tests use a
/// directory of their own and a short grace).
fn render_with(
    plan: &Plan,
    lock_parents: &[&str],
    kill_after: Duration,
) -> Result<String, PlanError> {
    let url = &plan.installer_url;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(PlanError::InstallerUrl);
    }
    let lines = preconfig_lines(&plan.preconfig)?;
    let preconfig_args: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
    let bucket = match &plan.assets_download_bucket {
        Some(bucket) => format!(" {}", shell_quote(bucket)),
        None => String::new(),
    };
    let payload = Payload {
        name: "boot-registration",
        what: "the agent installer",
        locate: format!("  url={}\n", shell_quote(url)),
        download_to: "installer.tgz",
        sha256: plan.installer_sha256.as_deref(),
        unpack: format!(
            r#"  tar -x -z -f "$dir/installer.tgz" -C "$dir" && [ -x "$dir/opsworks-agent-installer/boot-registration" ] || {{
    echo "instance-registrar: the installer tarball has no opsworks-agent-installer/boot-registration"
    cleanup
    return {EXIT_UNPACK_FAILED}
  }}
  printf '%s\n' {preconfig} >"$dir/opsworks-agent-installer/preconfig"
"#,
            preconfig = preconfig_args.join(" "),
        ),
        run: r#""$dir/opsworks-agent-installer/boot-registration""#.to_owned(),
        run_args: bucket,
        entry: None,
    };
    Ok(render_payload(
        &payload,
        plan.time_limit,
        lock_parents,
        kill_after,
    ))
}

/// What one service's install downloads and runs, for [`render_payload`].
struct Payload<'a> {
    /// What runs under the lock, for messages (`boot-registration`).
    name: &'a str,
    /// What is downloaded, for messages.
    what: &'a str,
    /// Shell lines that set `$url` (or return [`EXIT_HOST_UNSUITABLE`]).
    locate: String,
    /// The file in the private directory the download goes to.
    download_to: &'a str,
    /// The SHA-256 the download must have.
    sha256: Option<&'a str>,
    /// Shell lines run after the download and its check, before the runner: unpacking, the
    /// files the program reads (written with `printf`, a builtin, so no value is ever on a
    /// command line).
    unpack: String,
    /// The command the runner runs under the lock and the time limit, as root.
    run: String,
    /// Further (quoted) arguments to the runner's `run` mode.
    run_args: String,
    /// A script of the service's own, written to `$dir/entry.sh` for `run` to use.
    entry: Option<String>,
}

/// The script that downloads and runs `payload` within `time_limit`, for `/bin/sh -s`.
fn render_payload(
    payload: &Payload<'_>,
    time_limit: Duration,
    lock_parents: &[&str],
    kill_after: Duration,
) -> String {
    let Payload {
        name,
        what,
        locate,
        download_to,
        ..
    } = payload;
    let checksum = match payload.sha256 {
        Some(sum) => format!(
            r#"  expected={sum}
  actual=$(sha256sum "$dir/{download_to}" | cut -d ' ' -f 1) || {{ echo "instance-registrar: sha256sum failed"; cleanup; return {EXIT_HOST_UNSUITABLE}; }}
  if [ "$actual" != "$expected" ]; then
    echo "instance-registrar: the SHA-256 of {what} is $actual, not $expected; nothing was run"
    cleanup
    return {EXIT_CHECKSUM_MISMATCH}
  fi
  echo "instance-registrar: installer checksum verified"
"#,
            sum = shell_quote(sum),
        ),
        None => String::new(),
    };
    let parents: Vec<String> = lock_parents.iter().map(|p| shell_quote(p)).collect();
    let runner = RUNNER
        .replace("@LOCK_PARENTS@", &parents.join(" "))
        .replace("@HOST_UNSUITABLE@", &EXIT_HOST_UNSUITABLE.to_string())
        .replace("@IN_PROGRESS@", &EXIT_INSTALL_IN_PROGRESS.to_string())
        .replace("@TIMED_OUT@", &EXIT_TIMED_OUT.to_string())
        .replace("@INSTALLER_FAILED@", &EXIT_INSTALLER_FAILED.to_string())
        .replace("@MARKER@", INSTALLER_STATUS_MARKER)
        .replace("@NAME@", name)
        .replace("@RUN@", &payload.run);
    debug_assert!(!runner.contains(RUNNER_END));
    let entry = match &payload.entry {
        Some(entry) => {
            debug_assert!(!entry.contains(ENTRY_END));
            format!("  cat >\"$dir/entry.sh\" <<'{ENTRY_END}'\n{entry}{ENTRY_END}\n")
        }
        None => String::new(),
    };
    let limit = time_limit.as_secs().max(1);
    let kill_after = kill_after.as_secs().max(1);
    let run_args = &payload.run_args;
    let unpack = &payload.unpack;
    format!(
        r#"set -u
umask 077
install_agent() {{
  limit={limit}
  deadline=$(($(date +%s) + limit))
  for tool in mktemp timeout; do
    command -v "$tool" >/dev/null 2>&1 || {{ echo "instance-registrar: $tool is not installed"; return {EXIT_HOST_UNSUITABLE}; }}
  done
  dir=$(mktemp -d "${{TMPDIR:-/tmp}}/registrar-agent-install.XXXXXXXXXX") || {{ echo "instance-registrar: mktemp failed"; return {EXIT_HOST_UNSUITABLE}; }}
  cleanup() {{ sudo -n rm -rf -- "$dir" 2>/dev/null || rm -rf -- "$dir"; }}
  # Time left before the limit, in $left; says so and fails when none is left.
  in_time() {{
    left=$((deadline - $(date +%s)))
    [ "$left" -gt 0 ] && return 0
    echo "instance-registrar: the time limit of ${{limit}}s passed before $1"
    cleanup
    return 1
  }}
  if ! said=$(LC_ALL=C sudo -n true 2>&1); then
    case $said in
      *"must have a tty"* | *requiretty*)
        echo "instance-registrar: sudo on this host runs only from a terminal (requiretty): $said"
        cleanup
        return {EXIT_SUDO_NEEDS_TTY}
        ;;
    esac
    echo "instance-registrar: the login user may not run sudo without a password: $said"
    cleanup
    return {EXIT_SUDO_DENIED}
  fi
  cat >"$dir/lock.sh" <<'{RUNNER_END}'
{runner}{RUNNER_END}
{entry}  # Another install running here is found before anything is downloaded.
  sudo -n /bin/sh "$dir/lock.sh" probe "$dir"
  status=$?
  case $status in
    0) ;;
    {EXIT_HOST_UNSUITABLE} | {EXIT_INSTALL_IN_PROGRESS}) cleanup; return $status ;;
    *) echo "instance-registrar: sudo /bin/sh failed with status $status"; cleanup; return {EXIT_HOST_UNSUITABLE} ;;
  esac
{locate}  in_time "the download" || return {EXIT_TIMED_OUT}
  echo "instance-registrar: downloading {what}"
  if command -v curl >/dev/null 2>&1; then
    timeout "$left" curl --fail --silent --show-error --location --proto =http,https --retry 5 --output "$dir/{download_to}" -- "$url"
  elif command -v wget >/dev/null 2>&1; then
    timeout "$left" wget --quiet --tries=5 --output-document="$dir/{download_to}" -- "$url"
  else
    echo "instance-registrar: neither curl nor wget is installed"
    false
  fi || {{
    in_time "the download finished" || return {EXIT_TIMED_OUT}
    echo "instance-registrar: downloading {what} failed"
    cleanup
    return {EXIT_DOWNLOAD_FAILED}
  }}
{checksum}{unpack}  in_time "{name}" || return {EXIT_TIMED_OUT}
  sudo -n /bin/sh "$dir/lock.sh" run "$dir" "$deadline" {kill_after}{run_args}
  status=$?
  cleanup
  case $status in
    0 | {EXIT_HOST_UNSUITABLE} | {EXIT_INSTALL_IN_PROGRESS} | {EXIT_INSTALLER_FAILED} | {EXIT_TIMED_OUT}) return $status ;;
  esac
  echo "instance-registrar: sudo /bin/sh, to run {name}, ended with status $status"
  return {EXIT_INSTALLER_FAILED}
}}
install_agent </dev/null 2>&1
exit $?
"#
    )
}

/// Where Systems Manager keeps a host's registration (`{"ManagedInstanceID": …, "Region": …}`),
/// as the agent writes it on Linux.
pub const SSM_REGISTRATION_FILE: &str = "/var/lib/amazon/ssm/registration";
/// The start of the output line that names the managed node the host is registered as, after
/// a registration of the script's; the node ID follows.
pub const SSM_NODE_MARKER: &str = "instance-registrar: managed node ";
/// The start of the output line that says the host was registered already, as another node than
/// the one the script may replace, and nothing was run; the node ID follows.
pub const SSM_REGISTERED_ALREADY_MARKER: &str = "instance-registrar: registered already as ";
/// The entry script's exit status when the host is registered already (see
/// [`SSM_REGISTERED_ALREADY_MARKER`]); the script then exits [`EXIT_INSTALLER_FAILED`].
pub const SSM_EXIT_REGISTERED_ALREADY: i64 = 3;
/// The entry script's exit status when the node to resume is not the host's (its registration
/// file names none: the install that registered it was cut short before writing it); nothing was
/// run. The script then exits [`EXIT_INSTALLER_FAILED`].
pub const SSM_EXIT_REGISTRATION_LOST: i64 = 4;

/// What the Systems Manager install does on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum SsmMode {
    /// Register with a hybrid activation (an on-premises host).
    Register {
        /// The activation's ID.
        activation_id: String,
        /// The activation's code (a secret: written to a file of the private directory, never
        /// on a command line of the script's own).
        activation_code: crate::aws::Sensitive,
        /// The node the host may be registered as already and that may be replaced (the
        /// object's own node, deregistered since): `-override` is used then.
        replace: Option<String>,
        /// The node the host may be registered as already by this object's own install, which
        /// was cut short (the agent never came online): the setup tool runs without
        /// `-override`, which keeps the registration and starts the agent.
        resume: Option<String>,
    },
    /// Install and start the agent unless it runs already (an EC2 instance, which registers with
    /// its instance profile).
    Install,
}

/// The Systems Manager install: the agent setup tool (`ssm-setup-cli`) from `setup_url`, run as
/// AWS documents for hybrid nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct SsmPlan {
    /// Where the setup tool is downloaded from: `{platform}` (`linux`, or `debian` on hosts with
    /// dpkg) and `{arch}` (`amd64`, `arm64`, `386`) are filled in on the host.
    pub setup_url: String,
    /// SHA-256 the setup tool must have.
    pub setup_sha256: Option<String>,
    /// The Systems Manager region.
    pub region: String,
    /// Register or install.
    pub mode: SsmMode,
    /// As [`Plan::time_limit`].
    pub time_limit: Duration,
}

/// The entry script of the Systems Manager install, run as root under the install lock and the
/// time limit: `entry.sh DIR MODE REGION [ACTIVATION_ID [REPLACE [RESUME]]]`. It reads the
/// activation code from `DIR/activation-code`. A host registered already as a node other than
/// REPLACE or RESUME is reported and left as it is (the setup tool would keep that registration
/// silently).
const SSM_ENTRY: &str = r#"set -u
dir=$1 mode=$2 region=$3 activation_id=${4:-} replace=${5:-} resume=${6:-}
node_of() {
  [ -f @REGISTRATION@ ] || return 0
  sed -n 's/.*"ManagedInstanceID"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9-]*\)".*/\1/p' @REGISTRATION@ | head -n 1
}
# An agent of this host's own: a process in this mount namespace (an agent in a container is
# the container's) whose program is amazon-ssm-agent.
agent_running() {
  own=$(readlink /proc/$$/ns/mnt 2>/dev/null)
  for p in /proc/[0-9]*; do
    case $(readlink "$p/exe" 2>/dev/null) in
      */amazon-ssm-agent) [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$own" ] && return 0 ;;
    esac
  done
  return 1
}
chmod 0700 "$dir/ssm-setup-cli" || exit 1
case $mode in
  install)
    if agent_running; then
      echo "instance-registrar: the SSM agent runs already; nothing was installed"
      exit 0
    fi
    "$dir/ssm-setup-cli" -install -region "$region"
    exit $?
    ;;
esac
node=$(node_of)
override=
if [ -n "$resume" ] && [ -z "$node" ]; then
  echo "instance-registrar: the host has no registration of node $resume; nothing was run"
  exit @EXIT_LOST@
fi
if [ -n "$node" ]; then
  if [ "$node" = "$resume" ]; then
    override=
  elif [ "$node" = "$replace" ]; then
    override=-override
  else
    echo "@ALREADY@$node"
    exit @EXIT_ALREADY@
  fi
fi
code=$(cat "$dir/activation-code") || exit 1
rm -f "$dir/activation-code"
"$dir/ssm-setup-cli" -register -activation-code "$code" -activation-id "$activation_id" -region "$region" $override
status=$?
[ "$status" -eq 0 ] || exit "$status"
node=$(node_of)
if [ -z "$node" ] || [ "$node" = "$replace" ]; then
  echo "instance-registrar: ssm-setup-cli finished, and" @REGISTRATION@ "names no new node"
  exit 1
fi
echo "@NODE@$node"
"#;

/// The script for a Systems Manager install, for `/bin/sh -s`.
pub fn render_ssm(plan: &SsmPlan) -> Result<String, PlanError> {
    render_ssm_with(plan, LOCK_PARENTS, KILL_AFTER, SSM_REGISTRATION_FILE)
}

/// [`render_ssm`] with the lock's parents, the grace and the registration file given (tests use
/// their own).
fn render_ssm_with(
    plan: &SsmPlan,
    lock_parents: &[&str],
    kill_after: Duration,
    registration_file: &str,
) -> Result<String, PlanError> {
    let url = &plan.setup_url;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(PlanError::InstallerUrl);
    }
    // The placeholders are filled in on the host with words of a fixed set, so sed sees no
    // value of anyone's.
    let locate = format!(
        r#"  case $(uname -m) in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    i386 | i486 | i586 | i686) arch=386 ;;
    *) echo "instance-registrar: no SSM agent for machine type $(uname -m)"; cleanup; return {EXIT_HOST_UNSUITABLE} ;;
  esac
  if command -v dpkg >/dev/null 2>&1; then platform=debian; else platform=linux; fi
  url=$(printf '%s' {template} | sed "s/{{platform}}/$platform/g; s/{{arch}}/$arch/g")
"#,
        template = shell_quote(url),
    );
    let (unpack, args) = match &plan.mode {
        SsmMode::Register {
            activation_id,
            activation_code,
            replace,
            resume,
        } => (
            format!(
                "  printf '%s' {} >\"$dir/activation-code\"\n",
                shell_quote(activation_code.expose())
            ),
            format!(
                "register {} {} {} {}",
                shell_quote(&plan.region),
                shell_quote(activation_id),
                shell_quote(replace.as_deref().unwrap_or_default()),
                shell_quote(resume.as_deref().unwrap_or_default())
            ),
        ),
        SsmMode::Install => (
            String::new(),
            format!("install {}", shell_quote(&plan.region)),
        ),
    };
    let entry = SSM_ENTRY
        .replace("@REGISTRATION@", &shell_quote(registration_file))
        .replace("@ALREADY@", SSM_REGISTERED_ALREADY_MARKER)
        .replace("@EXIT_ALREADY@", &SSM_EXIT_REGISTERED_ALREADY.to_string())
        .replace("@EXIT_LOST@", &SSM_EXIT_REGISTRATION_LOST.to_string())
        .replace("@NODE@", SSM_NODE_MARKER);
    let payload = Payload {
        name: "ssm-setup-cli",
        what: "the SSM agent setup tool",
        locate,
        download_to: "ssm-setup-cli",
        sha256: plan.setup_sha256.as_deref(),
        unpack,
        run: format!(r#"/bin/sh "$dir/entry.sh" "$dir" {args}"#),
        run_args: String::new(),
        entry: Some(entry),
    };
    Ok(render_payload(
        &payload,
        plan.time_limit,
        lock_parents,
        kill_after,
    ))
}

/// The value of the last output line that starts with `marker` (a script's own lines come after
/// anything the programs it ran printed).
pub fn marked(output: &[u8], marker: &str) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    text.lines()
        .rev()
        .find_map(|line| line.trim_end().strip_prefix(marker))
        .map(str::to_owned)
}

/// The line that ends a service's entry script's here-document in the script.
const ENTRY_END: &str = "INSTANCE_REGISTRAR_ENTRY_END";

/// The line that ends the runner's here-document in the script.
const RUNNER_END: &str = "INSTANCE_REGISTRAR_RUNNER_END";

/// `boot-registration`'s own exit status, from the marker line the script prints when it fails
/// (the last one, should the installer have printed such a line itself).
pub fn installer_status(output: &[u8]) -> Option<i64> {
    marked(output, INSTALLER_STATUS_MARKER).and_then(|status| status.parse().ok())
}

/// The last `max_lines` lines (at most `max_bytes`) of the script's output, with every `secret`
/// replaced by `[REDACTED]`, as text for a condition message.
pub fn output_tail(output: &[u8], secrets: &[&str], max_lines: usize, max_bytes: usize) -> String {
    let mut text = String::from_utf8_lossy(output).into_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[REDACTED]");
    }
    let text = text.trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(max_lines)..].join("\n");
    if tail.len() > max_bytes {
        let mut start = tail.len() - max_bytes;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = format!("…{}", &tail[start..]);
    }
    // Control characters other than newline and tab say nothing useful in a condition.
    tail.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const HOSTILE: &[&str] = &[
        "plain",
        "it's",
        "'; touch CANARY; echo '",
        "$(touch CANARY)",
        "`touch CANARY`",
        "a\nb; touch CANARY",
        "; touch CANARY",
        "&& touch CANARY",
        "| touch CANARY",
        "${IFS}touch${IFS}CANARY",
        "\\'\"\\\"",
        "-n",
        "*",
        "",
        "ü ✓ \t tab",
    ];

    /// Runs `script` with sh in a fresh directory and returns (stdout, whether CANARY appeared).
    fn run_sh(script: &str) -> (String, bool) {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            dir.path().join("CANARY").exists(),
        )
    }

    #[test]
    fn a_quoted_value_arrives_as_the_same_data_whatever_it_holds() {
        for value in HOSTILE {
            let (out, canary) = run_sh(&format!("printf '%s' {}", shell_quote(value)));
            assert_eq!(&out, value);
            assert!(!canary, "{value:?} ran as code");
        }
    }

    #[test]
    fn preconfig_lines_are_sorted_json_one_per_key_and_survive_the_shell() {
        let mut preconfig = BTreeMap::new();
        for (i, value) in HOSTILE.iter().enumerate() {
            preconfig.insert(format!("key_{i:02}"), Value::from(*value));
        }
        preconfig.insert("import".into(), Value::Bool(true));
        preconfig.insert("stack_id".into(), Value::from("0b1c"));
        let lines = preconfig_lines(&preconfig).unwrap();
        assert_eq!(lines.len(), preconfig.len());
        assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
        assert!(lines.contains(&":import: true".to_owned()));
        assert!(lines.contains(&":stack_id: \"0b1c\"".to_owned()));
        let args: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
        let (out, canary) = run_sh(&format!("printf '%s\\n' {}", args.join(" ")));
        assert!(!canary);
        let back: Vec<&str> = out.lines().collect();
        assert_eq!(back, lines);
        for (line, (key, value)) in back.iter().zip(&preconfig) {
            let json = line.strip_prefix(&format!(":{key}: ")).unwrap();
            assert_eq!(&serde_json::from_str::<Value>(json).unwrap(), value);
        }
    }

    #[test]
    fn a_preconfig_key_that_is_not_an_identifier_is_refused() {
        let preconfig = BTreeMap::from([("a b".to_owned(), Value::from("x"))]);
        assert_eq!(
            preconfig_lines(&preconfig),
            Err(PlanError::PreconfigKey("a b".into()))
        );
    }

    fn plan(value: &str) -> Plan {
        Plan {
            installer_url: format!("http://127.0.0.1:1/agent/x.tgz?{value}"),
            installer_sha256: Some(value.to_owned()),
            assets_download_bucket: Some(value.to_owned()),
            preconfig: BTreeMap::from([("hostname".to_owned(), Value::from(value))]),
            time_limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_script_parses_and_every_hostile_value_in_it_is_quoted() {
        for value in HOSTILE {
            let script = render(&plan(value)).unwrap();
            // sh -n parses without running: the script is well formed for every value.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("script.sh");
            std::fs::write(&path, &script).unwrap();
            let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
            assert!(out.status.success(), "{value:?}: {out:?}\n{script}");
            assert!(script.contains(&shell_quote(value)), "{value:?}");
        }
    }

    #[test]
    fn the_script_refuses_a_url_that_is_not_http() {
        let mut p = plan("x");
        p.installer_url = "file:///etc/shadow".into();
        assert_eq!(render(&p), Err(PlanError::InstallerUrl));
    }

    /// A stand-in host for running the real script locally: a fake `curl` that "downloads" a
    /// tarball whose `boot-registration` is the given shell body (and records each call), a
    /// `sudo` that runs its command as the test's own user (or the given body instead), and a
    /// lock directory of the test's own, so that nothing needs network or root.
    struct FakeHost {
        dir: tempfile::TempDir,
        bin: PathBuf,
        locks: PathBuf,
        tgz: PathBuf,
        /// PATH for the script: the fakes first, then the rest (or only `tools` when set).
        path: String,
    }

    fn write_exe(path: &Path, body: &str) {
        std::fs::write(path, body).unwrap();
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(path, perm).unwrap();
    }

    impl FakeHost {
        fn new(boot_registration: &str) -> FakeHost {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            let locks = dir.path().join("lock");
            std::fs::create_dir(&locks).unwrap();
            let payload = dir.path().join("payload");
            std::fs::create_dir_all(payload.join("opsworks-agent-installer")).unwrap();
            write_exe(
                &payload.join("opsworks-agent-installer/boot-registration"),
                &format!("#!/bin/sh\n{boot_registration}\n"),
            );
            let tgz = dir.path().join("installer.tgz");
            assert!(
                Command::new("tar")
                    .args(["-c", "-z", "-f"])
                    .arg(&tgz)
                    .arg("-C")
                    .arg(&payload)
                    .arg("opsworks-agent-installer")
                    .status()
                    .unwrap()
                    .success()
            );
            write_exe(
                &bin.join("curl"),
                &format!(
                    "#!/bin/sh\necho called >>{}\nwhile [ \"$1\" != --output ]; do shift; done\ncp {} \"$2\"\n",
                    dir.path().join("curl.log").display(),
                    tgz.display()
                ),
            );
            write_exe(
                &bin.join("sudo"),
                "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n",
            );
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            FakeHost {
                dir,
                bin,
                locks,
                tgz,
                path,
            }
        }

        /// A file in the host's directory (the installer bodies write there).
        fn file(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Whether the fake curl was called.
        fn downloaded(&self) -> bool {
            self.file("curl.log").exists()
        }

        /// Leaves only these tools (and the fakes) on the script's PATH.
        fn only_tools(&mut self, tools: &[&str]) {
            for tool in tools {
                let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                    .iter()
                    .map(|d| Path::new(d).join(tool))
                    .find(|p| p.exists())
                    .unwrap_or_else(|| panic!("{tool} is not installed"));
                std::os::unix::fs::symlink(found, self.bin.join(tool)).unwrap();
            }
            self.path = self.bin.display().to_string();
        }

        fn script(&self, plan: &Plan) -> String {
            render_with(
                plan,
                &[self.locks.to_str().unwrap()],
                Duration::from_secs(1),
            )
            .unwrap()
        }

        /// Runs the script for `plan`; returns its output and how long it took.
        fn run(&self, plan: &Plan) -> (std::process::Output, Duration) {
            let started = std::time::Instant::now();
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(self.script(plan))
                .env("PATH", &self.path)
                .env("TMPDIR", self.dir.path())
                .output()
                .unwrap();
            (out, started.elapsed())
        }

        /// The private temp dirs the script left behind.
        fn leftovers(&self) -> Vec<std::ffi::OsString> {
            std::fs::read_dir(self.dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("registrar-agent-install."))
                .collect()
        }

        /// Whether someone holds the flock install lock now.
        fn lock_held(&self) -> bool {
            let path = self.locks.join("instance-registrar/agent-install.lock");
            if !path.exists() {
                return false;
            }
            let out = Command::new("flock")
                .args(["-n", "-E", "75"])
                .arg(&path)
                .arg("true")
                .output()
                .unwrap();
            assert!(matches!(out.status.code(), Some(0 | 75)), "flock: {out:?}");
            out.status.code() == Some(75)
        }
    }

    fn plan_for_tests() -> Plan {
        let mut p = plan("x");
        p.installer_sha256 = None;
        p
    }

    fn text(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether process `pid` exists and has not ended (a zombie has).
    fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) state ...": the state follows the last ')'.
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z')
    }

    #[test]
    fn a_checksum_mismatch_stops_before_anything_is_unpacked_or_run() {
        // The fake sudo keeps TMPDIR: the installer writes the canary there.
        let host = FakeHost::new("touch \"$TMPDIR/CANARY\"");
        let canary = host.file("CANARY");
        let run = |sha: Option<String>| {
            let mut p = plan("x");
            p.installer_sha256 = sha;
            host.run(&p).0
        };
        let out = run(Some("0".repeat(64)));
        assert_eq!(
            out.status.code(),
            Some(EXIT_CHECKSUM_MISMATCH as i32),
            "{out:?}"
        );
        assert!(!canary.exists(), "the installer ran despite the mismatch");
        // With the right checksum the same installer runs: the test above could have failed.
        let good = {
            let out = Command::new("sha256sum").arg(&host.tgz).output().unwrap();
            String::from_utf8(out.stdout).unwrap()[..64].to_owned()
        };
        let out = run(Some(good));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(canary.exists());
        // The private temp dir is gone afterwards, and the lock is free.
        assert!(host.leftovers().is_empty(), "temp dir left behind");
        assert!(!host.lock_held());
    }

    #[test]
    fn an_installer_that_exits_91_is_an_installer_failure_with_its_own_status() {
        let host = FakeHost::new("echo 'E: something went wrong'\nexit 91");
        let (out, _) = host.run(&plan_for_tests());
        assert_eq!(
            out.status.code(),
            Some(EXIT_INSTALLER_FAILED as i32),
            "{out:?}"
        );
        let said = text(&out);
        assert!(said.contains("E: something went wrong"), "{said}");
        assert_eq!(installer_status(&out.stdout), Some(91), "{said}");
        assert!(host.leftovers().is_empty(), "temp dir left behind");
        // Every status of the script's own is taken by the installer the same way.
        for code in [1, 90, 94, 95, 97, 98, 124, 255] {
            let host = FakeHost::new(&format!("exit {code}"));
            let (out, _) = host.run(&plan_for_tests());
            assert_eq!(out.status.code(), Some(EXIT_INSTALLER_FAILED as i32));
            assert_eq!(installer_status(&out.stdout), Some(code));
        }
    }

    #[test]
    fn a_second_install_while_one_runs_reports_the_lock_and_downloads_and_runs_nothing() {
        let host = FakeHost::new(&format!(
            "echo run >>{runs}\ntouch {started}\nsleep 3",
            runs = host_file_placeholder("runs"),
            started = host_file_placeholder("started"),
        ));
        let plan = plan_for_tests();
        let first = std::thread::scope(|scope| {
            let first = scope.spawn(|| host.run(&plan));
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !host.file("started").exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the first install did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::fs::remove_file(host.file("curl.log")).unwrap();
            assert!(host.lock_held());
            let (out, took) = host.run(&plan);
            assert_eq!(
                out.status.code(),
                Some(EXIT_INSTALL_IN_PROGRESS as i32),
                "{out:?}"
            );
            assert!(text(&out).contains("another install"), "{}", text(&out));
            assert!(took < Duration::from_secs(2), "it did not wait: {took:?}");
            assert!(!host.downloaded(), "the second install downloaded");
            first.join().unwrap()
        });
        assert_eq!(first.0.status.code(), Some(0), "{:?}", first.0);
        let runs = std::fs::read_to_string(host.file("runs")).unwrap();
        assert_eq!(runs.lines().count(), 1, "boot-registration ran once");
        // Once the first is done, the lock is free again: the next install runs.
        assert!(!host.lock_held());
        let (out, _) = host.run(&plan);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(host.leftovers().len(), 0);
    }

    /// The fake hosts' installers write in the TMPDIR the script runs with (the fake sudo keeps
    /// the environment).
    fn host_file_placeholder(name: &str) -> String {
        format!("\"$TMPDIR/{name}\"")
    }

    #[test]
    fn the_time_limit_stops_an_installer_that_sleeps_and_one_that_ignores_term() {
        for body in [
            "echo $$ >\"$TMPDIR/pid\"\nexec sleep 60",
            "trap '' TERM\necho $$ >\"$TMPDIR/pid\"\nwhile :; do sleep 1; done",
        ] {
            let host = FakeHost::new(body);
            let mut plan = plan_for_tests();
            plan.time_limit = Duration::from_secs(2);
            let (out, took) = host.run(&plan);
            assert_eq!(out.status.code(), Some(EXIT_TIMED_OUT as i32), "{out:?}");
            // The limit (2 s, counted from the script's start), the grace before KILL (1 s
            // here), and some slack.
            assert!(took < Duration::from_secs(8), "{body}: took {took:?}");
            assert!(took >= Duration::from_secs(1), "{body}: took {took:?}");
            let pid: i32 = std::fs::read_to_string(host.file("pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(!alive(pid), "{body}: the installer still runs");
            assert!(!host.lock_held());
            assert!(host.leftovers().is_empty(), "temp dir left behind");
        }
    }

    #[test]
    fn without_flock_a_live_holder_blocks_and_a_stale_link_is_taken_over() {
        let mut host = FakeHost::new("touch \"$TMPDIR/ran\"");
        host.only_tools(&[
            "cat",
            "cp",
            "cut",
            "date",
            "gzip",
            "ln",
            "ls",
            "mkdir",
            "mktemp",
            "rm",
            "sed",
            "sha256sum",
            "sleep",
            "tar",
            "timeout",
            "touch",
            "true",
        ]);
        let locks = host.locks.join("instance-registrar");
        std::fs::create_dir(&locks).unwrap();
        let link = locks.join("agent-install.pid");
        // A live process (this test) holds it.
        std::os::unix::fs::symlink(std::process::id().to_string(), &link).unwrap();
        let (out, _) = host.run(&plan_for_tests());
        assert_eq!(
            out.status.code(),
            Some(EXIT_INSTALL_IN_PROGRESS as i32),
            "{out:?}"
        );
        assert!(!host.file("ran").exists() && !host.downloaded());
        // Its holder is gone: taken over, and removed after the run.
        let gone = {
            let mut child = Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(gone.to_string(), &link).unwrap();
        let (out, _) = host.run(&plan_for_tests());
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(host.file("ran").exists());
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link was left"
        );
    }

    #[test]
    fn sudo_that_needs_a_terminal_or_a_password_gets_its_own_status_and_nothing_runs() {
        for (says, code) in [
            (
                "sudo: sorry, you must have a tty to run sudo",
                EXIT_SUDO_NEEDS_TTY,
            ),
            ("sudo: a password is required", EXIT_SUDO_DENIED),
        ] {
            let host = FakeHost::new("touch \"$TMPDIR/ran\"");
            write_exe(
                &host.bin.join("sudo"),
                &format!("#!/bin/sh\necho '{says}' >&2\nexit 1\n"),
            );
            let (out, _) = host.run(&plan_for_tests());
            assert_eq!(out.status.code(), Some(code as i32), "{out:?}");
            assert!(text(&out).contains(says), "{}", text(&out));
            assert!(!host.file("ran").exists() && !host.downloaded());
        }
    }

    /// A host for the Systems Manager script: the download is `tool` (a shell script standing
    /// in for ssm-setup-cli, run with the registration file's path in `$REG` and the host's
    /// directory in `$HOST`), the registration file lives in the host's directory.
    fn ssm_host(tool: &str) -> FakeHost {
        let host = FakeHost::new("exit 0");
        let reg = host.file("registration");
        std::fs::write(
            &host.tgz,
            format!(
                "#!/bin/sh\nREG={}\nHOST={}\n{tool}\n",
                reg.display(),
                host.dir.path().display()
            ),
        )
        .unwrap();
        write_exe(
            &host.bin.join("curl"),
            &format!(
                "#!/bin/sh\nfor a; do last=$a; done\necho \"$last\" >>{}\nwhile [ \"$1\" != --output ]; do shift; done\ncp {} \"$2\"\n",
                host.file("curl.log").display(),
                host.tgz.display()
            ),
        );
        host
    }

    /// The stand-in tool: records its arguments (the code apart, which goes to a file of its
    /// own) and, when registering, writes the registration file.
    const TOOL: &str = r#"for a; do
  case $prev in -activation-code) printf '%s' "$a" >"$HOST/code-received"; prev=; continue ;; esac
  printf '%s\n' "$a" >>"$HOST/tool-args"
  prev=$a
done
case " $* " in
  *" -register "*) printf '{"ManagedInstanceID":"mi-0123456789abcdef0","Region":"r"}' >"$REG" ;;
esac"#;

    const CODE: &str = "c0de'$(touch CANARY)`x`";

    fn ssm_plan(mode: SsmMode) -> SsmPlan {
        SsmPlan {
            setup_url: "http://127.0.0.1:1/ssm/{platform}_{arch}/ssm-setup-cli".into(),
            setup_sha256: None,
            region: "eu-west-1".into(),
            mode,
            time_limit: Duration::from_secs(60),
        }
    }

    fn register(replace: Option<&str>) -> SsmMode {
        SsmMode::Register {
            activation_id: "0b1c2d3e-aaaa-4bbb-8ccc-000000000001".into(),
            activation_code: crate::aws::Sensitive::new(CODE),
            replace: replace.map(str::to_owned),
            resume: None,
        }
    }

    fn run_ssm(host: &FakeHost, plan: &SsmPlan) -> std::process::Output {
        let script = render_ssm_with(
            plan,
            &[host.locks.to_str().unwrap()],
            Duration::from_secs(1),
            host.file("registration").to_str().unwrap(),
        )
        .unwrap();
        assert!(!script.contains(&format!("-activation-code {}", shell_quote(CODE))));
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("PATH", &host.path)
            .env("TMPDIR", host.dir.path())
            .current_dir(host.dir.path())
            .output()
            .unwrap()
    }

    #[test]
    fn an_ssm_registration_passes_the_code_intact_and_reports_the_node() {
        let host = ssm_host(TOOL);
        let out = run_ssm(&host, &ssm_plan(register(None)));
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "{said}");
        assert_eq!(
            std::fs::read_to_string(host.file("code-received")).unwrap(),
            CODE
        );
        let args = std::fs::read_to_string(host.file("tool-args")).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "-register",
                "-activation-code",
                "-activation-id",
                "0b1c2d3e-aaaa-4bbb-8ccc-000000000001",
                "-region",
                "eu-west-1"
            ]
        );
        assert_eq!(
            marked(&out.stdout, SSM_NODE_MARKER).as_deref(),
            Some("mi-0123456789abcdef0")
        );
        assert!(!said.contains("c0de"), "{said}");
        assert!(!host.file("CANARY").exists());
        assert!(host.leftovers().is_empty(), "{:?}", host.leftovers());
        // The URL's placeholders were filled in on the host, from a fixed set.
        let url = std::fs::read_to_string(host.file("curl.log")).unwrap();
        let platform = if Command::new("sh")
            .args(["-c", "command -v dpkg"])
            .output()
            .unwrap()
            .status
            .success()
        {
            "debian"
        } else {
            "linux"
        };
        assert!(
            url.trim()
                .starts_with(&format!("http://127.0.0.1:1/ssm/{platform}_")),
            "{url}"
        );
        assert!(!url.contains('{'), "{url}");
    }

    #[test]
    fn a_host_registered_already_is_reported_and_the_tool_never_runs() {
        let host = ssm_host(TOOL);
        std::fs::write(
            host.file("registration"),
            r#"{"ManagedInstanceID":"mi-00000000000000001","Region":"us-west-2"}"#,
        )
        .unwrap();
        let out = run_ssm(&host, &ssm_plan(register(Some("mi-0123456789abcdef0"))));
        assert_eq!(
            out.status.code(),
            Some(EXIT_INSTALLER_FAILED as i32),
            "{}",
            text(&out)
        );
        assert_eq!(
            installer_status(&out.stdout),
            Some(SSM_EXIT_REGISTERED_ALREADY)
        );
        assert_eq!(
            marked(&out.stdout, SSM_REGISTERED_ALREADY_MARKER).as_deref(),
            Some("mi-00000000000000001")
        );
        assert!(!host.file("tool-args").exists(), "the setup tool ran");
    }

    #[test]
    fn the_objects_own_gone_node_is_registered_again_over_it() {
        let host = ssm_host(&format!(
            "{TOOL}\nprintf '{{\"ManagedInstanceID\":\"mi-0000000000000000f\"}}' >\"$REG\""
        ));
        std::fs::write(
            host.file("registration"),
            r#"{"ManagedInstanceID":"mi-00000000000000001","Region":"eu-west-1"}"#,
        )
        .unwrap();
        let out = run_ssm(&host, &ssm_plan(register(Some("mi-00000000000000001"))));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let args = std::fs::read_to_string(host.file("tool-args")).unwrap();
        assert!(args.lines().any(|a| a == "-override"), "{args}");
        assert_eq!(
            marked(&out.stdout, SSM_NODE_MARKER).as_deref(),
            Some("mi-0000000000000000f")
        );
    }

    #[test]
    fn an_install_of_the_objects_own_cut_short_resumes_without_override() {
        let host = ssm_host(TOOL);
        std::fs::write(
            host.file("registration"),
            r#"{"ManagedInstanceID":"mi-00000000000000002","Region":"eu-west-1"}"#,
        )
        .unwrap();
        let mode = SsmMode::Register {
            activation_id: "0b1c2d3e-aaaa-4bbb-8ccc-000000000001".into(),
            activation_code: crate::aws::Sensitive::new(CODE),
            replace: None,
            resume: Some("mi-00000000000000002".into()),
        };
        // The stand-in tool registers anew whatever it is told; told nothing else, the real one
        // keeps the registration and starts the agent. Either way no -override is asked for.
        let out = run_ssm(&host, &ssm_plan(mode));
        let args = std::fs::read_to_string(host.file("tool-args")).unwrap();
        assert!(args.lines().any(|a| a == "-register"), "{args}");
        assert!(!args.lines().any(|a| a == "-override"), "{args}");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }

    #[test]
    fn a_node_to_resume_that_the_host_does_not_name_is_reported_and_nothing_runs() {
        let host = ssm_host(TOOL);
        let mode = SsmMode::Register {
            activation_id: "0b1c2d3e-aaaa-4bbb-8ccc-000000000001".into(),
            activation_code: crate::aws::Sensitive::new(CODE),
            replace: None,
            resume: Some("mi-00000000000000002".into()),
        };
        let out = run_ssm(&host, &ssm_plan(mode));
        assert_eq!(
            out.status.code(),
            Some(EXIT_INSTALLER_FAILED as i32),
            "{}",
            text(&out)
        );
        assert_eq!(
            installer_status(&out.stdout),
            Some(SSM_EXIT_REGISTRATION_LOST)
        );
        assert!(!host.file("tool-args").exists(), "the setup tool ran");
    }

    #[test]
    fn an_ssm_install_runs_the_tool_to_install_only() {
        let host = ssm_host(TOOL);
        let out = run_ssm(&host, &ssm_plan(SsmMode::Install));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let args = std::fs::read_to_string(host.file("tool-args")).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            ["-install", "-region", "eu-west-1"]
        );
        assert!(!host.file("registration").exists());
    }

    #[test]
    fn the_ssm_script_parses_and_quotes_every_hostile_value() {
        for value in HOSTILE {
            let plan = SsmPlan {
                setup_url: format!("https://x.invalid/{{platform}}/{value}"),
                setup_sha256: Some(value.to_string()),
                region: value.to_string(),
                mode: SsmMode::Register {
                    activation_id: value.to_string(),
                    activation_code: crate::aws::Sensitive::new(*value),
                    replace: Some(value.to_string()),
                    resume: Some(value.to_string()),
                },
                time_limit: Duration::from_secs(60),
            };
            let script = render_ssm(&plan).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("script.sh");
            std::fs::write(&path, &script).unwrap();
            let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
            assert!(out.status.success(), "{value:?}: {out:?}");
            assert!(script.contains(&shell_quote(value)), "{value:?}");
        }
        assert_eq!(
            render_ssm(&SsmPlan {
                setup_url: "file:///etc/passwd".into(),
                ..ssm_plan(SsmMode::Install)
            }),
            Err(PlanError::InstallerUrl)
        );
    }

    #[test]
    fn the_installer_status_is_read_from_the_last_marker_line() {
        let output =
            format!("noise\n{INSTALLER_STATUS_MARKER}7\nmore\n{INSTALLER_STATUS_MARKER}91\n");
        assert_eq!(installer_status(output.as_bytes()), Some(91));
        assert_eq!(installer_status(b"no marker"), None);
        let odd = format!("{INSTALLER_STATUS_MARKER}unknown\n");
        assert_eq!(installer_status(odd.as_bytes()), None);
    }

    #[test]
    fn the_output_tail_is_redacted_bounded_and_printable() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzz";
        let mut output = String::new();
        for i in 0..50 {
            output.push_str(&format!("line {i} {secret}\n"));
        }
        output.push_str("bell\x07 end\n");
        let tail = output_tail(output.as_bytes(), &[secret], 5, 10_000);
        assert!(!tail.contains(secret));
        assert_eq!(tail.lines().count(), 5);
        assert!(tail.ends_with("bell? end"), "{tail}");
        assert!(tail.starts_with("line 46 [REDACTED]"), "{tail}");
        let short = output_tail(output.as_bytes(), &[secret], 50, 40);
        assert!(short.len() <= 40 + "…".len(), "{short}");
        assert!(short.starts_with('…'));
    }
}
