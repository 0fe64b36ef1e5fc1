//! The SSM setup tool and agent stand-ins, end to end: the served `ssm-setup-cli` downloaded
//! and run through sudo on real SSH test hosts (each with its own `/var/lib/amazon`), the
//! registration it makes, the agent daemon's heartbeats, and what happens when the agent dies,
//! when `-register` runs again, with and without `-override`, and on EC2 hosts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use opsworks_endpoint::EndpointHandle;
use opsworks_endpoint::ssm_standin::{self, SsmStandIn};
use registrar_local_env::ssh_hosts::{SshHost, USER, generate_key};
use serde_json::Value;

use crate::common::*;

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amazon-ssm-agent"))
}

/// An endpoint serving the stand-in, whose agents beat every 200 ms and whose nodes lose their
/// connection after 1 s without one.
fn ssm_endpoint() -> EndpointHandle {
    endpoint_with(|c| {
        c.ssm_connection_lost_after = Duration::from_secs(1);
        c.ssm_standin =
            Some(SsmStandIn::new(program()).heartbeat_interval(Duration::from_millis(200)));
    })
}

/// A key the host accepts for [`USER`].
fn login(host: &SshHost, dir: &Path) -> PathBuf {
    let key = dir.join(format!("key-{}", host.name()));
    let public = generate_key(&key, "ed25519", "", "ssm-test").unwrap();
    host.authorize(&public);
    key
}

/// Runs `command` on the host as [`USER`] with the OpenSSH client.
fn ssh(host: &SshHost, key: &Path, command: &str) -> Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &host.port().to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{USER}@{}", host.address()))
        .arg(command)
        .output()
        .expect("ssh")
}

/// Downloads the setup tool from `url` on the host and runs it with `flags`, through sudo
/// unless `as_user`.
fn setup(host: &SshHost, key: &Path, url: &str, flags: &[&str], as_user: bool) -> Output {
    let flags: Vec<String> = flags
        .iter()
        .map(|f| opsworks_endpoint::standin::shell_quote(f))
        .collect();
    let sudo = if as_user { "" } else { "sudo " };
    ssh(
        host,
        key,
        &format!(
            "f=$(mktemp) && curl -fsS -o \"$f\" '{url}' && {sudo}sh \"$f\" {}; rc=$?; \
             rm -f \"$f\"; exit $rc",
            flags.join(" ")
        ),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ping(ep: &EndpointHandle, id: &str) -> Option<String> {
    ep.ssm_node(id).map(|n| n.ping_status)
}

fn wait_ping(ep: &EndpointHandle, host: &SshHost, id: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while ping(ep, id).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{id} is {:?}, not {want}; agent log:\n{}",
            ping(ep, id),
            host.ssm_agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file of `dir`, recursively, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_text(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(
                &std::fs::read(&p).unwrap_or_default(),
            ));
        }
    }
    out
}

#[test]
fn the_setup_tool_is_served_per_platform_and_arch() {
    let ep = endpoint();
    assert_eq!(
        ep.ssm_setup_url_template(),
        format!(
            "{}/ssm/latest/{{platform}}_{{arch}}/ssm-setup-cli",
            ep.url()
        )
    );
    // None configured: 404.
    assert_eq!(ep.ssm_setup_bytes("linux", "amd64"), None);
    let (status, _) = http(
        ep.url(),
        "GET",
        "/ssm/latest/linux_amd64/ssm-setup-cli",
        &[],
        b"",
    );
    assert_eq!(status, 404);
    assert!(!ep.set_ssm_setup_run_time(Duration::from_secs(1)));

    ep.set_ssm_standin(Some(SsmStandIn::new(program())));
    for (platform, arch) in [("linux", "amd64"), ("debian", "arm64"), ("ubuntu", "386")] {
        let url = ep.ssm_setup_url(platform, arch).unwrap();
        assert_eq!(
            url,
            ep.ssm_setup_url_template()
                .replace("{platform}", platform)
                .replace("{arch}", arch)
        );
        let path = url.strip_prefix(ep.url()).unwrap();
        let (status, body) = http(ep.url(), "GET", path, &[], b"");
        assert_eq!(status, 200);
        assert_eq!(Some(body.clone()), ep.ssm_setup_bytes(platform, arch));
        let script = String::from_utf8(body).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains(&format!("{platform}_{arch}")), "{script}");
        assert!(script.contains(ep.url()), "{script}");
    }
    assert_ne!(
        ep.ssm_setup_bytes("linux", "amd64"),
        ep.ssm_setup_bytes("linux", "arm64")
    );
    // The program runs under the setup tool's name, a link to the program's copy where any
    // user can run it.
    let link = opsworks_endpoint::standin::reachable_program(&program())
        .unwrap()
        .with_file_name(ssm_standin::SETUP_PROGRAM_NAME);
    assert!(link.is_file());
    assert!(link.starts_with(opsworks_endpoint::standin::programs_dir().unwrap()));
    let script = String::from_utf8(ep.ssm_setup_bytes("linux", "amd64").unwrap()).unwrap();
    assert!(script.contains(&*link.to_string_lossy()), "{script}");
    for path in [
        "/ssm/latest/linux_sparc/ssm-setup-cli",
        "/ssm/latest/linux/ssm-setup-cli",
        "/ssm/latest/linux_amd64/amazon-ssm-agent",
    ] {
        let (status, _) = http(ep.url(), "GET", path, &[], b"");
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(ep.ssm_setup_bytes("linux", "sparc"), None);
    assert_eq!(ep.ssm_setup_url("linux", "sparc"), None);

    // The run time, by the handle and by the control route, changes the script.
    let before = ep.ssm_setup_bytes("linux", "amd64").unwrap();
    assert!(ep.set_ssm_setup_run_time(Duration::from_millis(1500)));
    let after = String::from_utf8(ep.ssm_setup_bytes("linux", "amd64").unwrap()).unwrap();
    assert!(after.contains("--run-seconds '1.5'"), "{after}");
    let (status, _) = http(
        ep.url(),
        "PUT",
        "/_endpoint/ssm/setup-run-time",
        &[("Content-Type", "application/json")],
        br#"{"seconds": 0}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(ep.ssm_setup_bytes("linux", "amd64").unwrap(), before);
}

/// A clone in a directory only root can enter (`mktemp -d`, `/root`): the served script still
/// runs for a host's login user (who is then told to run it as root), as the program it runs is
/// copied where anyone can run it.
#[test]
fn the_setup_tool_runs_for_a_login_user_wherever_the_program_was_built() {
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let built = private.path().join("target/debug");
    std::fs::create_dir_all(&built).unwrap();
    let binary = built.join(ssm_standin::AGENT_BINARY_NAME);
    std::fs::copy(program(), &binary).unwrap();
    let ep = endpoint();
    ep.set_ssm_standin(Some(SsmStandIn::new(&binary)));
    let script = private.path().join("ssm-setup-cli.sh");
    std::fs::write(&script, ep.ssm_setup_bytes("linux", "amd64").unwrap()).unwrap();
    assert!(
        !String::from_utf8_lossy(&std::fs::read(&script).unwrap())
            .contains(&*private.path().to_string_lossy()),
        "the script runs the program from the private directory"
    );
    let run = Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--clear-groups", "--"])
        .arg("sh")
        .args(["-s", "--", "-install", "-region", "us-east-1"])
        .stdin(std::fs::File::open(&script).unwrap())
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains("Please run as root"), "{}", text(&run));
}

#[tokio::test]
async fn setup_registers_a_test_host_and_its_agent_beats() {
    let ep = ssm_endpoint();
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let (a1, c1) = create_activation(&client, &role, 5).await;
    let keys = tempfile::tempdir().unwrap();
    let mut host = SshHost::start("ssm-setup");
    let key = login(&host, keys.path());
    let url = ep.ssm_setup_url("linux", "amd64").unwrap();
    let register = |id: &str, code: &str, extra: &[&str]| {
        let mut flags = vec![
            "-register",
            "-activation-code",
            code,
            "-activation-id",
            id,
            "-region",
            "us-east-1",
        ];
        flags.extend_from_slice(extra);
        setup(&host, &key, &url, &flags, false)
    };

    // Registered: the registration file, the node, its agent.
    let out = register(&a1, &c1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(&c1), "the code was printed");
    let id = host.ssm_registration().expect("a registration file");
    assert!(text(&out).contains(&id), "{}", text(&out));
    let file = host.amazon_dir().join("ssm/registration");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let registration: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(registration["Region"], "us-east-1");
    // Only this host's /var/lib/amazon has it.
    assert!(!Path::new(ssm_standin::REGISTRATION_FILE).exists());
    let node = ep.ssm_node(&id).expect("the node");
    assert_eq!(node.activation_id.as_deref(), Some(a1.as_str()));
    wait_ping(&ep, &host, &id, "Online", Duration::from_secs(5));
    let pids = host.ssm_agent_pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert_eq!(
        host.ssm_setup_runs(),
        [format!("setup uid=0 result=registered node={id}")]
    );

    // The agent dies: the connection is lost.
    assert_eq!(host.kill_ssm_agent(), 1);
    wait_ping(&ep, &host, &id, "ConnectionLost", Duration::from_secs(4));

    // -register again, without -override: no new registration, the agent started again; the
    // run takes the run time set.
    assert!(ep.set_ssm_setup_run_time(Duration::from_millis(1200)));
    let started = Instant::now();
    let out = register(&a1, &c1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_millis(1200));
    assert!(
        text(&out).contains("skipping registration"),
        "{}",
        text(&out)
    );
    ep.set_ssm_setup_run_time(Duration::ZERO);
    assert_eq!(host.ssm_registration().as_deref(), Some(id.as_str()));
    assert_eq!(ep.ssm_activations()[0].registrations_count, 1);
    assert_eq!(ep.ssm_nodes().len(), 1);
    wait_ping(&ep, &host, &id, "Online", Duration::from_secs(5));
    let agent = host.ssm_agent_pids();
    assert_eq!(agent.len(), 1);
    assert_ne!(agent, pids);

    // -override with a new activation: a new node, whose heartbeats the restarted agent sends.
    let (a2, c2) = create_activation(&client, &role, 1).await;
    let out = register(&a2, &c2, &["-override"]);
    assert!(out.status.success(), "{}", text(&out));
    let id2 = host.ssm_registration().unwrap();
    assert_ne!(id2, id);
    assert_eq!(
        ep.ssm_node(&id2).unwrap().activation_id.as_deref(),
        Some(a2.as_str())
    );
    wait_ping(&ep, &host, &id2, "Online", Duration::from_secs(5));
    wait_ping(&ep, &host, &id, "ConnectionLost", Duration::from_secs(4));
    let restarted = host.ssm_agent_pids();
    assert_eq!(restarted.len(), 1);
    assert_ne!(restarted, agent);

    // Refusals: usage, not root, a wrong code, a failing installer.
    let out = setup(
        &host,
        &key,
        &url,
        &["-register", "-region", "us-east-1"],
        false,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Activation code required"),
        "{}",
        text(&out)
    );
    let out = setup(
        &host,
        &key,
        &url,
        &["-install", "-region", "us-east-1"],
        true,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Please run as root"), "{}", text(&out));
    let wrong = "WRONGCODEWRONGCODE00";
    let out = register(&a2, wrong, &["-override"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("InvalidActivation"), "{}", text(&out));
    assert!(!text(&out).contains(wrong));
    assert_eq!(host.ssm_registration().as_deref(), Some(id2.as_str()));
    host.set_installer_failure(Some("E: Unable to fetch some archives"));
    host.set_installer_exit_status(Some(7));
    let out = register(&a1, &c1, &["-override"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("E: Unable to fetch"), "{}", text(&out));
    host.set_installer_failure(None);
    host.set_installer_exit_status(None);
    assert_eq!(host.ssm_registration().as_deref(), Some(id2.as_str()));
    assert_eq!(ep.ssm_nodes().len(), 2);
    // The run as the login user could not write root's log: it is not there.
    assert_eq!(
        host.ssm_setup_runs()[2..],
        [
            format!("setup uid=0 result=registered node={id2}"),
            "setup uid=0 result=failed reason=usage".to_owned(),
            "setup uid=0 result=failed reason=api-error code=InvalidActivation".to_owned(),
            "setup uid=0 result=failed reason=installer-failure".to_owned(),
        ]
    );

    // No code anywhere on the host.
    let everything = format!("{}{}", all_text(host.dir()), all_text(&host.amazon_dir()));
    for code in [&c1, &c2] {
        assert!(
            !everything.contains(code.as_str()),
            "a code was written on the host"
        );
    }

    // Stopping the host kills its agent.
    let agent = host.ssm_agent_pids()[0];
    host.stop();
    wait_for(
        Duration::from_secs(5),
        "the agent to die with its host",
        || !Path::new(&format!("/proc/{agent}")).exists(),
    );
    wait_ping(&ep, &host, &id2, "ConnectionLost", Duration::from_secs(4));
}

#[tokio::test]
async fn ec2_hosts_agents_beat_with_their_instance_profile() {
    let ep = ssm_endpoint();
    let role = ssm_role().await;
    let profile = unique("ssm-ec2-profile");
    let iam = iam();
    iam.create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    iam.add_role_to_instance_profile()
        .instance_profile_name(&profile)
        .role_name(&role)
        .send()
        .await
        .unwrap();
    let ec2 = ec2("us-east-1");
    let mut ids = Vec::new();
    for profile in [Some(profile), None] {
        let out = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .set_iam_instance_profile(profile.map(|p| {
                aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                    .name(p)
                    .build()
            }))
            .send()
            .await
            .expect("RunInstances");
        ids.push(out.instances()[0].instance_id().unwrap().to_owned());
    }
    let keys = tempfile::tempdir().unwrap();
    let url = ep.ssm_setup_url("amazon-linux", "arm64").unwrap();
    let with = SshHost::start("ssm-ec2-profile");
    let without = SshHost::start("ssm-ec2-no-profile");
    for (host, id) in [(&with, &ids[0]), (&without, &ids[1])] {
        host.set_identity(id, "us-east-1");
        let key = login(host, keys.path());
        let out = setup(
            host,
            &key,
            &url,
            &["-install", "-region", "us-east-1"],
            false,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(host.ssm_setup_runs(), ["setup uid=0 result=installed"]);
        assert_eq!(host.ssm_registration(), None);
        assert_eq!(host.ssm_agent_pids().len(), 1);
    }
    wait_ping(&ep, &with, &ids[0], "Online", Duration::from_secs(5));
    let node = ep.ssm_node(&ids[0]).unwrap();
    assert_eq!(node.resource_type, "EC2Instance");
    assert_eq!(node.iam_role.as_deref(), Some(role.as_str()));

    // Without a profile the agent's heartbeats are refused, and the instance never appears.
    wait_for(Duration::from_secs(5), "refused heartbeats", || {
        ep.calls()
            .iter()
            .filter(|c| {
                c.action == "UpdateInstanceInformation"
                    && c.error_code.as_deref() == Some("AccessDeniedException")
            })
            .count()
            >= 3
    });
    assert!(ep.ssm_node(&ids[1]).is_none());
    assert!(
        without.ssm_agent_log().contains("AccessDeniedException"),
        "{}",
        without.ssm_agent_log()
    );
    let listed = ssm(ep.url())
        .describe_instance_information()
        .send()
        .await
        .unwrap();
    let listed: Vec<&str> = listed
        .instance_information_list()
        .iter()
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(listed, [ids[0].as_str()]);
}
