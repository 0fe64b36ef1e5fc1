//! The Systems Manager agent's install, for the shared script of [`crate::steps::script`]: the
//! setup tool for the host's platform and architecture is downloaded, and an entry script of its
//! own registers the host with the activation (its code written to a private file, never on a
//! command line) or only installs and starts the agent, and reports the node the host's
//! registration file names.

use std::time::Duration;

use crate::steps::script::{
    Download, EXIT_HOST_UNSUITABLE, KILL_AFTER, LOCK_PARENTS, Payload, PlanError, download_url,
    render_payload, shell_quote,
};

/// Where Systems Manager keeps a host's registration (`{"ManagedInstanceID": …, "Region": …}`),
/// as the agent writes it on Linux.
pub(super) const SSM_REGISTRATION_FILE: &str = "/var/lib/amazon/ssm/registration";
/// The start of the output line that names the managed node the host is registered as, after
/// a registration of the script's; the node ID follows.
pub(super) const SSM_NODE_MARKER: &str = "instance-registrar: managed node ";
/// The start of the output line that says the host was registered already, as another node than
/// the one the script may replace, and nothing was run; the node ID follows.
pub(super) const SSM_REGISTERED_ALREADY_MARKER: &str = "instance-registrar: registered already as ";
/// The entry script's exit status when the host is registered already (see
/// [`SSM_REGISTERED_ALREADY_MARKER`]); the script then exits [`crate::steps::script::EXIT_INSTALLER_FAILED`].
pub(super) const SSM_EXIT_REGISTERED_ALREADY: i64 = 3;
/// The entry script's exit status when the node to resume is not the host's (its registration
/// file names none: the install that registered it was cut short before writing it); nothing was
/// run. The script then exits [`crate::steps::script::EXIT_INSTALLER_FAILED`].
pub(super) const SSM_EXIT_REGISTRATION_LOST: i64 = 4;

/// What the Systems Manager install does on the host.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum SsmMode {
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
pub(super) struct SsmPlan {
    /// Where the setup tool is downloaded from: `{platform}` (`linux`, or `debian` on hosts with
    /// dpkg) and `{arch}` (`amd64`, `arm64`, `386`) are filled in on the host.
    pub setup_url: String,
    /// SHA-256 the setup tool must have.
    pub setup_sha256: Option<String>,
    /// The Systems Manager region.
    pub region: String,
    /// Register or install.
    pub mode: SsmMode,
    /// How long the setup tool may run on the host before it is stopped.
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
pub(super) fn render_ssm(plan: &SsmPlan) -> Result<String, PlanError> {
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
    let url = download_url(&plan.setup_url)?;
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
        download: Some(Download {
            what: "the SSM agent setup tool",
            locate,
            to: "ssm-setup-cli",
            sha256: plan.setup_sha256.as_deref(),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::script::testing::*;
    use crate::steps::script::*;
    use std::process::Command;

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
}
