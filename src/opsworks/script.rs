//! The OpsWorks agent's install, for the shared script of [`crate::steps::script`]: the agent
//! installer tarball is downloaded and unpacked, the `preconfig` it reads is written one quoted
//! `printf` argument per line, and `boot-registration` runs under the host's install lock.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::steps::script::{
    Download, EXIT_UNPACK_FAILED, KILL_AFTER, LOCK_PARENTS, Payload, PlanError, download_url,
    render_payload, shell_quote,
};

/// What to run on the host.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
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

/// The `preconfig` file's lines: sorted by key, `:key: <JSON value>` (JSON never holds a raw
/// newline, so one entry is always one line).
pub(super) fn preconfig_lines(
    preconfig: &BTreeMap<String, Value>,
) -> Result<Vec<String>, PlanError> {
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
pub(super) fn render(plan: &Plan) -> Result<String, PlanError> {
    render_with(plan, LOCK_PARENTS, KILL_AFTER)
}

/// [`render`] with the lock's parent directories and the TERM-to-KILL grace given (tests use a
/// directory of their own and a short grace).
fn render_with(
    plan: &Plan,
    lock_parents: &[&str],
    kill_after: Duration,
) -> Result<String, PlanError> {
    let url = download_url(&plan.installer_url)?;
    let lines = preconfig_lines(&plan.preconfig)?;
    let preconfig_args: Vec<String> = lines.iter().map(|l| shell_quote(l)).collect();
    let bucket = match &plan.assets_download_bucket {
        Some(bucket) => format!(" {}", shell_quote(bucket)),
        None => String::new(),
    };
    let payload = Payload {
        name: "boot-registration",
        download: Some(Download {
            what: "the agent installer",
            locate: format!("  url={}\n", shell_quote(url)),
            to: "installer.tgz",
            sha256: plan.installer_sha256.as_deref(),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::script::testing::*;
    use crate::steps::script::*;
    use std::process::Command;

    /// Runs the OpsWorks script on the stand-in host.
    trait RunPlan {
        fn script(&self, plan: &Plan) -> String;
        fn run(&self, plan: &Plan) -> (std::process::Output, Duration);
    }

    impl RunPlan for FakeHost {
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
            self.run_script(&self.script(plan))
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

    fn plan_for_tests() -> Plan {
        let mut p = plan("x");
        p.installer_sha256 = None;
        p
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
}
