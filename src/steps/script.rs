//! The script around every service's installer, run on the host over SSH: it makes a private
//! directory, downloads the service's program and checks its SHA-256, takes the host's install
//! lock, runs the program as root under a time limit, and says how it ended in its exit status
//! and marker lines ([`render_payload`]; each service fills a [`Payload`]: `opsworks::script`,
//! `ssm::script`). Also reading back what the script said ([`marked`], [`installer_status`],
//! [`output_tail`]).
//!
//! Nothing from the spec, the service or AWS ever reaches the shell unquoted: every value is
//! passed through [`shell_quote`], and files the program reads are written with `printf`. The
//! script travels on the session's standard input (never on a command line, where `ps` would
//! show a secret) and runs with `/dev/null` as input, so nothing the host runs can read the rest
//! of it.

use std::time::Duration;

/// The script's exit status when the installer could not be downloaded.
pub(crate) const EXIT_DOWNLOAD_FAILED: u32 = 90;
/// The script's exit status when the installer's SHA-256 is not the one the spec requires.
pub(crate) const EXIT_CHECKSUM_MISMATCH: u32 = 91;
/// The script's exit status when the login user may not run `sudo` without a password.
pub(crate) const EXIT_SUDO_DENIED: u32 = 92;
/// The script's exit status when the tarball could not be unpacked or has no `boot-registration`.
pub(crate) const EXIT_UNPACK_FAILED: u32 = 93;
/// The script's exit status when the host lacks a tool the script needs (mktemp, sha256sum,
/// timeout, ...) or its install lock directory is not root's.
pub(crate) const EXIT_HOST_UNSUITABLE: u32 = 94;
/// The script's exit status when another install holds the host's install lock; nothing was
/// downloaded or run.
pub(crate) const EXIT_INSTALL_IN_PROGRESS: u32 = 95;
/// The script's exit status when `boot-registration` failed (its own status is on the output's
/// [`INSTALLER_STATUS_MARKER`] line).
pub(crate) const EXIT_INSTALLER_FAILED: u32 = 96;
/// The script's exit status when the time limit of the service's plan passed: the installer
/// was stopped (TERM, then KILL after [`KILL_AFTER`]) or not started.
pub(crate) const EXIT_TIMED_OUT: u32 = 97;
/// The script's exit status when `sudo` refuses to run without a terminal (`requiretty`).
pub(crate) const EXIT_SUDO_NEEDS_TTY: u32 = 98;

/// The start of the output line that gives `boot-registration`'s own exit status when it
/// failed; the status follows.
pub(crate) const INSTALLER_STATUS_MARKER: &str =
    "instance-registrar: boot-registration exited with status ";

/// How long an installer stopped at its time limit has to end after TERM before it is killed.
pub(crate) const KILL_AFTER: Duration = Duration::from_secs(10);

/// Where the host-wide install lock goes: in `instance-registrar/`, a directory of root's made
/// (mode 0700) in the first of these that exists.
pub(crate) const LOCK_PARENTS: &[&str] = &["/run/lock", "/var/lock", "/run", "/var/run"];

/// Why a plan cannot be turned into a script.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlanError {
    /// The installer URL is not an http(s) URL.
    #[error("the agent installer URL is not an http or https URL")]
    InstallerUrl,
    /// A preconfig key is not a plain identifier.
    #[error("preconfig key {0:?} is not made of letters, digits and underscores")]
    PreconfigKey(String),
}

/// The URL a script downloads from, if it is one the script may use (`http` or `https`: never
/// `file:` or another scheme curl would follow on the host).
pub(crate) fn download_url(url: &str) -> Result<&str, PlanError> {
    match url.starts_with("https://") || url.starts_with("http://") {
        true => Ok(url),
        false => Err(PlanError::InstallerUrl),
    }
}

/// Quotes `value` for a POSIX shell: the result is one word whose value is exactly `value`,
/// whatever it holds (quotes, `$()`, backticks, newlines, `;`).
pub(crate) fn shell_quote(value: &str) -> String {
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

/// What one service's install downloads and runs, for [`render_payload`]; or what a repair runs
/// (nothing downloaded).
pub(crate) struct Payload<'a> {
    /// What runs under the lock, for messages (`boot-registration`).
    pub name: &'a str,
    /// What is downloaded first, if anything.
    pub download: Option<Download<'a>>,
    /// Shell lines run after the download and its check, before the runner: unpacking, the
    /// files the program reads (written with `printf`, a builtin, so no value is ever on a
    /// command line).
    pub unpack: String,
    /// The command the runner runs under the lock and the time limit, as root.
    pub run: String,
    /// Further (quoted) arguments to the runner's `run` mode.
    pub run_args: String,
    /// A script of the service's own, written to `$dir/entry.sh` for `run` to use.
    pub entry: Option<String>,
}

/// A download of a [`Payload`].
pub(crate) struct Download<'a> {
    /// What is downloaded, for messages.
    pub what: &'a str,
    /// Shell lines that set `$url` (or return [`EXIT_HOST_UNSUITABLE`]).
    pub locate: String,
    /// The file in the private directory the download goes to.
    pub to: &'a str,
    /// The SHA-256 the download must have.
    pub sha256: Option<&'a str>,
}

/// The script that downloads and runs `payload` within `time_limit`, for `/bin/sh -s`.
pub(crate) fn render_payload(
    payload: &Payload<'_>,
    time_limit: Duration,
    lock_parents: &[&str],
    kill_after: Duration,
) -> String {
    let name = payload.name;
    let download = payload
        .download
        .as_ref()
        .map(|d| render_download(d))
        .unwrap_or_default();
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
{entry}{download}{unpack}  in_time "{name}" || return {EXIT_TIMED_OUT}
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

/// The part of the script that downloads `download` (after making sure no other install holds
/// the host's lock: nothing is downloaded then) and checks it.
fn render_download(download: &Download<'_>) -> String {
    let Download {
        what,
        locate,
        to,
        sha256,
    } = download;
    let checksum = match sha256 {
        Some(sum) => format!(
            r#"  expected={sum}
  actual=$(sha256sum "$dir/{to}" | cut -d ' ' -f 1) || {{ echo "instance-registrar: sha256sum failed"; cleanup; return {EXIT_HOST_UNSUITABLE}; }}
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
    format!(
        r#"  # Another install running here is found before anything is downloaded.
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
    timeout "$left" curl --fail --silent --show-error --location --proto =http,https --retry 5 --output "$dir/{to}" -- "$url"
  elif command -v wget >/dev/null 2>&1; then
    timeout "$left" wget --quiet --tries=5 --output-document="$dir/{to}" -- "$url"
  else
    echo "instance-registrar: neither curl nor wget is installed"
    false
  fi || {{
    in_time "the download finished" || return {EXIT_TIMED_OUT}
    echo "instance-registrar: downloading {what} failed"
    cleanup
    return {EXIT_DOWNLOAD_FAILED}
  }}
{checksum}"#
    )
}

/// The value of the last output line that starts with `marker` (a script's own lines come after
/// anything the programs it ran printed).
pub(crate) fn marked(output: &[u8], marker: &str) -> Option<String> {
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
pub(crate) fn installer_status(output: &[u8]) -> Option<i64> {
    marked(output, INSTALLER_STATUS_MARKER).and_then(|status| status.parse().ok())
}

/// The last `max_lines` lines (at most `max_bytes`) of the script's output, with every `secret`
/// replaced by `[REDACTED]`, as text for a condition message.
pub(crate) fn output_tail(
    output: &[u8],
    secrets: &[&str],
    max_lines: usize,
    max_bytes: usize,
) -> String {
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
pub(crate) mod testing {
    //! A stand-in host for the scripts' tests (each service's script module runs its own).
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;
    pub(crate) const HOSTILE: &[&str] = &[
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
    pub(crate) fn run_sh(script: &str) -> (String, bool) {
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

    /// A stand-in host for running the real script locally: a fake `curl` that "downloads" a
    /// tarball whose `boot-registration` is the given shell body (and records each call), a
    /// `sudo` that runs its command as the test's own user (or the given body instead), and a
    /// lock directory of the test's own, so that nothing needs network or root.
    pub(crate) struct FakeHost {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) bin: PathBuf,
        pub(crate) locks: PathBuf,
        pub(crate) tgz: PathBuf,
        /// PATH for the script: the fakes first, then the rest (or only `tools` when set).
        pub(crate) path: String,
    }

    pub(crate) fn write_exe(path: &Path, body: &str) {
        std::fs::write(path, body).unwrap();
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(path, perm).unwrap();
    }

    impl FakeHost {
        pub(crate) fn new(boot_registration: &str) -> FakeHost {
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
        pub(crate) fn file(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Whether the fake curl was called.
        pub(crate) fn downloaded(&self) -> bool {
            self.file("curl.log").exists()
        }

        /// Leaves only these tools (and the fakes) on the script's PATH.
        pub(crate) fn only_tools(&mut self, tools: &[&str]) {
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

        /// Runs `script` as the host would; returns its output and how long it took.
        pub(crate) fn run_script(&self, script: &str) -> (std::process::Output, Duration) {
            let started = std::time::Instant::now();
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .env("PATH", &self.path)
                .env("TMPDIR", self.dir.path())
                .output()
                .unwrap();
            (out, started.elapsed())
        }

        /// The private temp dirs the script left behind.
        pub(crate) fn leftovers(&self) -> Vec<std::ffi::OsString> {
            std::fs::read_dir(self.dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with("registrar-agent-install."))
                .collect()
        }

        /// Whether someone holds the flock install lock now.
        pub(crate) fn lock_held(&self) -> bool {
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

    pub(crate) fn text(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether process `pid` exists and has not ended (a zombie has).
    pub(crate) fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) state ...": the state follows the last ')'.
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z')
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_quoted_value_arrives_as_the_same_data_whatever_it_holds() {
        for value in HOSTILE {
            let (out, canary) = run_sh(&format!("printf '%s' {}", shell_quote(value)));
            assert_eq!(&out, value);
            assert!(!canary, "{value:?} ran as code");
        }
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
