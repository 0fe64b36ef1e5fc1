//! The agent installer stand-in, end to end on loopback: the tarball downloaded from the
//! endpoint, unpacked, given a `preconfig` and a host directory, and its `boot-registration`
//! run as the controller's script runs it; the registration it makes, what it records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use opsworks_endpoint::standin::{self, Preconfig, StandIn, host_files};
use opsworks_endpoint::{AGENT_INSTALLER_PATH, AgentInstaller, Authorization, EndpointHandle};
use serde_json::{Value, json};

use crate::common::*;

const MANAGED: &str = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opsworks-agent-standin"))
}

fn standin_endpoint(run_time: Duration) -> EndpointHandle {
    endpoint_with(|c| {
        c.agent_installer = AgentInstaller::StandIn(StandIn::new(program()).run_time(run_time));
    })
}

/// Downloads the tarball with a plain GET, checks it is what the handle says, and unpacks it
/// into a new temporary directory (as the controller's script does).
fn download_and_unpack(ep: &EndpointHandle, installer_url: &str) -> tempfile::TempDir {
    assert_eq!(installer_url, ep.agent_installer_url());
    assert!(installer_url.ends_with(AGENT_INSTALLER_PATH));
    let (status, tarball) = http(ep.url(), "GET", AGENT_INSTALLER_PATH, &[], b"");
    assert_eq!(status, 200);
    assert_eq!(Some(tarball.clone()), ep.agent_installer_bytes());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("installer.tgz"), &tarball).unwrap();
    let out = Command::new("tar")
        .args(["xzf", "installer.tgz"])
        .current_dir(dir.path())
        .output()
        .expect("tar");
    assert!(out.status.success(), "{out:?}");
    dir
}

/// The provisioning parameters of `stack`, as preconfig entries, and the installer URL.
async fn provisioning(client: &aws_sdk_opsworks::Client, stack: &str) -> (Preconfig, String) {
    let out = client
        .describe_stack_provisioning_parameters()
        .stack_id(stack)
        .send()
        .await
        .expect("DescribeStackProvisioningParameters");
    let mut p = Preconfig::new();
    for (k, v) in out.parameters().expect("Parameters") {
        p.insert(k.clone(), json!(v));
    }
    p.insert("stack_id".into(), json!(stack));
    (
        p,
        out.agent_installer_url().expect("AgentInstallerUrl").into(),
    )
}

/// Runs `boot-registration` in `installer` as the controller's script does (environment reset,
/// only the bucket set), against host directory `host`, with `extra` arguments.
fn boot_registration(installer: &Path, host: &Path, bucket: &str, extra: &[&str]) -> Output {
    let script = installer
        .join(standin::INSTALLER_DIR)
        .join(standin::BOOT_REGISTRATION);
    let mut cmd = Command::new(&script);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(standin::BUCKET_ENV, bucket)
        .arg("--host-dir")
        .arg(host)
        // Not the machine's /etc/init.d (this runs outside any test host): none.
        .arg("--init-dir")
        .arg(host.join("no-init.d"))
        .args(extra);
    // As root (as here) the uid-0 check runs as boot-registration has it; another user runs
    // it against itself.
    let uid = uid();
    if uid != 0 {
        cmd.arg("--expect-uid").arg(uid.to_string());
    }
    cmd.output().expect("boot-registration")
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn write_preconfig(installer: &Path, p: &Preconfig) {
    std::fs::write(
        installer
            .join(standin::INSTALLER_DIR)
            .join(standin::PRECONFIG),
        standin::render_preconfig(p),
    )
    .unwrap();
}

fn log_lines(host: &Path) -> Vec<String> {
    std::fs::read_to_string(host.join(host_files::LOG))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn binary_path_finds_the_built_program() {
    assert_eq!(
        standin::binary_path().canonicalize().unwrap(),
        program().canonicalize().unwrap()
    );
}

#[tokio::test]
async fn boot_registration_registers_with_the_given_key() {
    let ep = standin_endpoint(Duration::ZERO);
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn(MANAGED)
        .send()
        .await
        .expect("attach the managed policy");
    let (mut preconfig, installer_url) = provisioning(&admin, &stack).await;
    let bucket = preconfig["assets_download_bucket"]
        .as_str()
        .unwrap()
        .to_owned();
    preconfig.insert("access_key_id".into(), json!(key));
    preconfig.insert("secret_access_key".into(), json!(secret));
    preconfig.insert("private_ip".into(), json!("10.9.9.9"));
    preconfig.insert("import".into(), json!(false));

    let installer = download_and_unpack(&ep, &installer_url);
    write_preconfig(installer.path(), &preconfig);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join(host_files::HOSTNAME), "standin-web-1\n").unwrap();
    std::fs::write(host.path().join(host_files::LOCAL_IPV4), "10.1.2.3\n").unwrap();
    std::fs::write(host.path().join(host_files::PUBLIC_IPV4), "198.51.100.7\n").unwrap();
    // Not an EC2 import: the identity document is not sent even though it exists.
    std::fs::write(
        host.path().join(host_files::IDENTITY_DOCUMENT),
        json!({"instanceId": "i-0000000000000000f", "region": "us-east-1"}).to_string(),
    )
    .unwrap();

    let out = boot_registration(installer.path(), host.path(), &bucket, &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(&secret), "the secret was printed: {all}");
    let instances = ep.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let i = &instances[0];
    assert!(
        all.contains(&format!("Instance ID: {}\n", i.instance_id)),
        "{all}"
    );
    assert_eq!(i.stack_id, stack);
    assert_eq!(i.hostname, "standin-web-1");
    assert!(
        ["registering", "registered"].contains(&i.status.as_str()),
        "{i:?}"
    );
    assert_eq!(i.infrastructure_class, "on-premises");
    assert_eq!(
        i.authorization,
        Some(Authorization::ManagedPolicy {
            user,
            policy_arn: MANAGED.into(),
            group: None
        })
    );
    let described = admin
        .describe_instances()
        .instance_ids(&i.instance_id)
        .send()
        .await
        .unwrap();
    let d = &described.instances()[0];
    assert_eq!(d.private_ip(), Some("10.9.9.9"));
    assert_eq!(d.public_ip(), Some("198.51.100.7"));
    // Signed with the user's key, and verified.
    let call = ep
        .calls()
        .into_iter()
        .find(|c| c.action == "RegisterInstance")
        .unwrap();
    assert_eq!(call.access_key_id.as_deref(), Some(key.as_str()));
    assert_eq!(call.signature, opsworks_endpoint::SignatureCheck::Verified);

    // What it recorded: the preconfig with the secret hashed, one run.
    let received_text =
        std::fs::read_to_string(host.path().join(host_files::PRECONFIG_RECEIVED)).unwrap();
    assert!(!received_text.contains(&secret));
    let received: Value = serde_json::from_str(&received_text).unwrap();
    let mut want = standin::redacted(&preconfig);
    assert_eq!(received, want);
    assert_eq!(
        received["secret_access_key"],
        json!(standin::hash_secret(&secret))
    );
    let uid = uid();
    assert_eq!(
        log_lines(host.path()),
        [format!(
            "run uid={uid} result=registered instance={}",
            i.instance_id
        )]
    );

    // The installer fails: nothing registered, the failure printed, the run recorded.
    std::fs::write(
        host.path().join(host_files::INSTALLER_FAILURE),
        "E: Unable to fetch some archives\n",
    )
    .unwrap();
    preconfig.insert("hostname".into(), json!("standin-web-2"));
    write_preconfig(installer.path(), &preconfig);
    let out = boot_registration(installer.path(), host.path(), &bucket, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E: Unable to fetch some archives"),
        "{}",
        text(&out)
    );
    assert_eq!(ep.instances().len(), 1);
    std::fs::remove_file(host.path().join(host_files::INSTALLER_FAILURE)).unwrap();
    // The preconfig of the latest run is recorded.
    let received: Value = serde_json::from_str(
        &std::fs::read_to_string(host.path().join(host_files::PRECONFIG_RECEIVED)).unwrap(),
    )
    .unwrap();
    want = standin::redacted(&preconfig);
    assert_eq!(received, want);

    // The wrong bucket in the environment, and the wrong user.
    let out = boot_registration(installer.path(), host.path(), "some-other-bucket", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains(standin::BUCKET_ENV), "{}", text(&out));
    let out = boot_registration(
        installer.path(),
        host.path(),
        &bucket,
        &["--expect-uid", "4242"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("must run as root"), "{}", text(&out));

    // The same host again: the endpoint refuses the hostname, and the code is reported.
    preconfig.remove("hostname");
    write_preconfig(installer.path(), &preconfig);
    let out = boot_registration(installer.path(), host.path(), &bucket, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("ValidationException"), "{}", text(&out));
    assert_eq!(ep.instances().len(), 1);

    let log = log_lines(host.path());
    assert_eq!(
        log[1..],
        [
            format!("run uid={uid} result=failed reason=installer-failure"),
            format!("run uid={uid} result=failed reason=bucket-mismatch"),
            format!("run uid={uid} result=failed reason=not-root"),
            format!("run uid={uid} result=failed reason=api-error code=ValidationException"),
        ]
    );
    // It wrote nothing else in the host directory.
    assert_eq!(
        files(host.path()),
        [
            host_files::HOSTNAME,
            host_files::LOCAL_IPV4,
            host_files::PUBLIC_IPV4,
            host_files::IDENTITY_DOCUMENT,
            host_files::PRECONFIG_RECEIVED,
            host_files::LOG,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    );
}

#[tokio::test]
async fn boot_registration_of_an_ec2_instance_with_its_instance_profile() {
    let ep = standin_endpoint(Duration::ZERO);
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, None).await;
    let profile = unique("standin-profile");
    iam()
        .create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    let ec2_id = ec2("us-east-1")
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .name(&profile)
                .build(),
        )
        .send()
        .await
        .expect("RunInstances")
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_owned();

    // A run time: the tarball is rebuilt with it.
    let before = ep.agent_installer_bytes().unwrap();
    ep.set_agent_installer(AgentInstaller::StandIn(
        StandIn::new(program()).run_time(Duration::from_millis(1200)),
    ));
    assert_ne!(ep.agent_installer_bytes().unwrap(), before);

    let (mut preconfig, installer_url) = provisioning(&admin, &stack).await;
    let bucket = preconfig["assets_download_bucket"]
        .as_str()
        .unwrap()
        .to_owned();
    preconfig.insert("import".into(), json!(true));
    preconfig.insert("hostname".into(), json!("standin-ec2"));
    let installer = download_and_unpack(&ep, &installer_url);
    write_preconfig(installer.path(), &preconfig);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join(host_files::LOCAL_IPV4), "172.31.5.6\n").unwrap();

    // No identity document: a clear failure.
    let out = boot_registration(installer.path(), host.path(), &bucket, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("instance identity document"),
        "{}",
        text(&out)
    );

    std::fs::write(
        host.path().join(host_files::IDENTITY_DOCUMENT),
        json!({
            "instanceId": ec2_id, "region": "us-east-1", "accountId": "123456789012",
            "privateIp": "172.31.5.6", "availabilityZone": "us-east-1a",
            "instanceType": "t2.micro", "imageId": "ami-12c6146b",
        })
        .to_string(),
    )
    .unwrap();
    let started = Instant::now();
    let out = boot_registration(installer.path(), host.path(), &bucket, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(started.elapsed() >= Duration::from_millis(1200));
    let instances = ep.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let i = &instances[0];
    assert_eq!(i.hostname, "standin-ec2");
    assert_eq!(i.ec2_instance_id.as_deref(), Some(ec2_id.as_str()));
    assert_eq!(i.infrastructure_class, "ec2");
    match &i.authorization {
        Some(Authorization::InstanceProfile {
            ec2_instance_id, ..
        }) => assert_eq!(ec2_instance_id, &ec2_id),
        other => panic!("{other:?}"),
    }
    let call = ep
        .calls()
        .into_iter()
        .find(|c| c.action == "RegisterInstance")
        .unwrap();
    assert_eq!(
        call.access_key_id.as_deref(),
        Some(standin::INSTANCE_PROFILE_ACCESS_KEY_ID)
    );
    let described = admin
        .describe_instances()
        .instance_ids(&i.instance_id)
        .send()
        .await
        .unwrap();
    assert_eq!(described.instances()[0].private_ip(), Some("172.31.5.6"));
    let uid = uid();
    assert_eq!(
        log_lines(host.path()),
        [
            format!("run uid={uid} result=failed reason=no-identity-document"),
            format!("run uid={uid} result=registered instance={}", i.instance_id),
        ]
    );
}
