//! The remote side of installing the OpsWorks agent: the shell script run on the host over SSH
//! (DESIGN.md §1 step 5), the `preconfig` it writes, and reading back what the script said.
//!
//! Nothing from the spec, the stack or IAM ever reaches the shell unquoted: every value is passed
//! through [`shell_quote`], and the `preconfig` lines are written with `printf '%s\n'` and one
//! quoted argument per line. The script travels on the session's standard input (never on a
//! command line, where `ps` would show the secret access key) and runs with `/dev/null` as input,
//! so nothing the host runs can read the rest of it.

use std::collections::BTreeMap;

use serde_json::Value;

/// The script's exit status when the installer could not be downloaded.
pub const EXIT_DOWNLOAD_FAILED: u32 = 90;
/// The script's exit status when the installer's SHA-256 is not the one the spec requires.
pub const EXIT_CHECKSUM_MISMATCH: u32 = 91;
/// The script's exit status when the login user may not run `sudo` without a password.
pub const EXIT_SUDO_DENIED: u32 = 92;
/// The script's exit status when the tarball could not be unpacked or has no `boot-registration`.
pub const EXIT_UNPACK_FAILED: u32 = 93;
/// The script's exit status when the host lacks a tool the script needs (mktemp, sha256sum, ...).
pub const EXIT_HOST_UNSUITABLE: u32 = 94;

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

/// The script for `plan`, for `/bin/sh -s`.
pub fn render(plan: &Plan) -> Result<String, PlanError> {
    let url = &plan.installer_url;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(PlanError::InstallerUrl);
    }
    let url = shell_quote(url);
    let lines = preconfig_lines(&plan.preconfig)?;
    let preconfig_args: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
    let checksum = match &plan.installer_sha256 {
        Some(sum) => format!(
            r#"  expected={sum}
  actual=$(sha256sum "$dir/installer.tgz" | cut -d ' ' -f 1) || {{ echo "instance-registrar: sha256sum failed"; cleanup; return {EXIT_HOST_UNSUITABLE}; }}
  if [ "$actual" != "$expected" ]; then
    echo "instance-registrar: the installer's SHA-256 is $actual, not $expected; nothing was run"
    cleanup
    return {EXIT_CHECKSUM_MISMATCH}
  fi
  echo "instance-registrar: installer checksum verified"
"#,
            sum = shell_quote(sum),
        ),
        None => String::new(),
    };
    let bucket = match &plan.assets_download_bucket {
        Some(bucket) => format!("OPSWORKS_ASSETS_DOWNLOAD_BUCKET={}", shell_quote(bucket)),
        None => String::new(),
    };
    Ok(format!(
        r#"set -u
umask 077
install_agent() {{
  dir=$(mktemp -d "${{TMPDIR:-/tmp}}/opsworks-agent-installer.XXXXXXXXXX") || {{ echo "instance-registrar: mktemp failed"; return {EXIT_HOST_UNSUITABLE}; }}
  cleanup() {{ sudo -n rm -rf -- "$dir" 2>/dev/null || rm -rf -- "$dir"; }}
  if ! sudo -n true; then
    echo "instance-registrar: the login user may not run sudo without a password"
    cleanup
    return {EXIT_SUDO_DENIED}
  fi
  echo "instance-registrar: downloading the agent installer"
  if command -v curl >/dev/null 2>&1; then
    curl --fail --silent --show-error --location --proto =http,https --retry 5 --output "$dir/installer.tgz" -- {url}
  elif command -v wget >/dev/null 2>&1; then
    wget --quiet --tries=5 --output-document="$dir/installer.tgz" -- {url}
  else
    echo "instance-registrar: neither curl nor wget is installed"
    false
  fi || {{ echo "instance-registrar: downloading the agent installer failed"; cleanup; return {EXIT_DOWNLOAD_FAILED}; }}
{checksum}  tar -x -z -f "$dir/installer.tgz" -C "$dir" && [ -x "$dir/opsworks-agent-installer/boot-registration" ] || {{
    echo "instance-registrar: the installer tarball has no opsworks-agent-installer/boot-registration"
    cleanup
    return {EXIT_UNPACK_FAILED}
  }}
  printf '%s\n' {preconfig} >"$dir/opsworks-agent-installer/preconfig"
  echo "instance-registrar: running boot-registration"
  sudo -n env {bucket} "$dir/opsworks-agent-installer/boot-registration"
  status=$?
  cleanup
  return $status
}}
install_agent </dev/null 2>&1
exit $?
"#,
        preconfig = preconfig_args.join(" "),
    ))
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

    #[test]
    fn a_checksum_mismatch_stops_before_anything_is_unpacked_or_run() {
        // Run the real script against a local "installer" served by file:// through a fake curl,
        // with sudo replaced by a pass-through, so the test needs neither network nor root.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let write_exe = |name: &str, body: &str| {
            let path = bin.join(name);
            std::fs::write(&path, body).unwrap();
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&path, perm).unwrap();
        };
        // curl: writes a tarball whose boot-registration would create the canary.
        let canary = dir.path().join("CANARY");
        let payload = dir.path().join("payload");
        std::fs::create_dir_all(payload.join("opsworks-agent-installer")).unwrap();
        let boot = payload.join("opsworks-agent-installer/boot-registration");
        std::fs::write(&boot, format!("#!/bin/sh\ntouch {}\n", canary.display())).unwrap();
        let mut perm = std::fs::metadata(&boot).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&boot, perm).unwrap();
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
            "curl",
            &format!(
                "#!/bin/sh\nwhile [ \"$1\" != --output ]; do shift; done\ncp {} \"$2\"\n",
                tgz.display()
            ),
        );
        write_exe("sudo", "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
        let run = |sha: Option<String>| {
            let mut p = plan("x");
            p.installer_sha256 = sha;
            let script = render(&p).unwrap();
            let path = std::env::var("PATH").unwrap();
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("PATH", format!("{}:{path}", bin.display()))
                .env("TMPDIR", dir.path())
                .output()
                .unwrap()
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
            let out = Command::new("sha256sum").arg(&tgz).output().unwrap();
            String::from_utf8(out.stdout).unwrap()[..64].to_owned()
        };
        let out = run(Some(good));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(canary.exists());
        // The private temp dir is gone afterwards.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("opsworks-agent-installer.")
            })
            .collect();
        assert!(left.is_empty(), "temp dir left behind");
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
