//! The test SSH hosts themselves (tests/support/ssh_hosts.rs), checked with the OpenSSH client:
//! each host has its own address, host key, authorized keys and view of its host directory, its
//! login user has passwordless sudo, and it can be stopped, restarted and given a new host key.
//! Needs root and `bash tests/setup.sh`.

mod support;

use std::io::ErrorKind;
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::ssh_hosts::{HOST_DIR_MOUNT, SshHost, USER};

/// An SSH client identity: a key pair, its private key in a file the OpenSSH client accepts.
struct Client {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: String,
}

impl Client {
    fn new() -> Client {
        let (private, public) = support::ssh_keypair("ed25519", "");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        std::fs::write(&key, private).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Client { dir, key, public }
    }

    /// An `ssh` command for `remote_command` on `host`, trusting only `host_key_line` for it.
    fn command(&self, host: &SshHost, host_key_line: &str, remote_command: &str) -> Command {
        let known_hosts = format!("[{}]:{} {host_key_line}\n", host.address(), host.port());
        self.command_knowing(host, &known_hosts, None, remote_command)
    }

    /// An `ssh` command for `remote_command` on `host`, with `known_hosts` as its only
    /// known_hosts file, presenting the user certificate `certificate` (text) if given.
    fn command_knowing(
        &self,
        host: &SshHost,
        known_hosts: &str,
        certificate: Option<&str>,
        remote_command: &str,
    ) -> Command {
        // A file of its own for each command: commands may run at the same time.
        static N: AtomicU32 = AtomicU32::new(0);
        let known_hosts_text = known_hosts;
        let known_hosts = self
            .dir
            .path()
            .join(format!("known_hosts-{}", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&known_hosts, known_hosts_text).unwrap();
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-p", &host.port().to_string()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg("-i")
            .arg(&self.key);
        if let Some(text) = certificate {
            let file = known_hosts.with_extension("cert.pub");
            std::fs::write(&file, text).unwrap();
            command
                .arg("-o")
                .arg(format!("CertificateFile={}", file.display()));
        }
        command
            .arg(format!("{USER}@{}", host.address()))
            .arg(remote_command)
            .stdin(Stdio::null());
        command
    }

    /// Runs `remote_command` on `host` (trusting its current host key).
    fn run(&self, host: &SshHost, remote_command: &str) -> Output {
        self.run_with_key(host, &host.host_key_line(), remote_command)
    }

    fn run_with_key(&self, host: &SshHost, host_key_line: &str, remote_command: &str) -> Output {
        self.command(host, host_key_line, remote_command)
            .output()
            .expect("running ssh")
    }

    /// Runs `remote_command` on `host`, which must succeed; returns its trimmed stdout.
    fn ok(&self, host: &SshHost, remote_command: &str) -> String {
        let out = self.run(host, remote_command);
        assert!(
            out.status.success(),
            "ssh {} `{remote_command}` failed: {}\nsshd log:\n{}",
            host.address(),
            String::from_utf8_lossy(&out.stderr),
            host.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn each_host_has_its_own_address_keys_and_host_directory() {
    let a = SshHost::start("alpha");
    let b = SshHost::start("beta");
    assert_ne!(a.address(), b.address());
    assert!(a.address().is_loopback() && b.address().is_loopback());
    assert_ne!(a.host_key_line(), b.host_key_line());
    assert!(a.host_key_line().starts_with("ssh-ed25519 AAAA"));
    assert_eq!(a.host_key_line().split(' ').count(), 2);
    assert!(a.host_key_fingerprint().starts_with("SHA256:"));
    assert_ne!(a.host_key_fingerprint(), b.host_key_fingerprint());

    let client = Client::new();
    a.authorize(&client.public);
    assert_eq!(a.sessions(), 0);
    assert_eq!(client.ok(&a, "sudo -n id -u"), "0");
    assert_eq!(client.ok(&a, "id -un"), USER);
    assert_eq!(a.sessions(), 2);

    // Only the host that authorized the key accepts it.
    let refused = client.run(&b, "true");
    assert_eq!(refused.status.code(), Some(255), "{refused:?}");
    assert!(
        stderr(&refused).contains("Permission denied"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(b.sessions(), 0);
    let other = Client::new();
    b.authorize(&other.public);
    assert_eq!(other.run(&a, "true").status.code(), Some(255));

    // Each host sees its own host directory at the same path; the tests' namespace sees none.
    let hostname = format!("cat {HOST_DIR_MOUNT}/hostname");
    assert_eq!(client.ok(&a, &hostname), "test-alpha");
    assert_eq!(other.ok(&b, &hostname), "test-beta");
    assert_eq!(
        other.ok(&b, &format!("cat {HOST_DIR_MOUNT}/local-ipv4")),
        b.address().to_string()
    );
    assert!(
        std::fs::read_dir(HOST_DIR_MOUNT).unwrap().next().is_none(),
        "{HOST_DIR_MOUNT} must be empty outside the test hosts"
    );

    a.set_identity("i-0aaaaaaaaaaaaaaaa", "us-east-1");
    b.set_identity("i-0bbbbbbbbbbbbbbbb", "eu-west-1");
    let identity = |client: &Client, host: &SshHost| -> serde_json::Value {
        let text = client.ok(
            host,
            &format!("sudo -n cat {HOST_DIR_MOUNT}/instance-identity-document"),
        );
        serde_json::from_str(&text).unwrap()
    };
    let doc = identity(&client, &a);
    assert_eq!(doc["instanceId"], "i-0aaaaaaaaaaaaaaaa");
    assert_eq!(doc["region"], "us-east-1");
    assert_eq!(doc["availabilityZone"], "us-east-1a");
    assert_eq!(doc["privateIp"], a.address().to_string());
    assert_eq!(doc["accountId"], "123456789012");
    assert_eq!(identity(&other, &b)["instanceId"], "i-0bbbbbbbbbbbbbbbb");

    // What root writes there inside the host is what the harness reads.
    assert_eq!(a.received_preconfig(), None);
    assert_eq!(a.boot_registration_runs(), 0);
    client.ok(
        &a,
        &format!(
            "echo '{{\"StackId\":\"s\"}}' | sudo -n tee {HOST_DIR_MOUNT}/preconfig-received.json >/dev/null \
             && for i in 1 2; do echo run | sudo -n tee -a {HOST_DIR_MOUNT}/boot-registration.log >/dev/null; done"
        ),
    );
    assert_eq!(
        a.received_preconfig(),
        Some(serde_json::json!({"StackId": "s"}))
    );
    assert_eq!(a.boot_registration_runs(), 2);
    assert_eq!(b.received_preconfig(), None);
    assert_eq!(b.boot_registration_runs(), 0);

    a.set_installer_failure(Some("disk full"));
    assert_eq!(
        client.ok(
            &a,
            &format!("sudo -n cat {HOST_DIR_MOUNT}/installer-failure")
        ),
        "disk full"
    );
    a.set_installer_failure(None);
    a.set_installer_failure(None);
    assert_eq!(
        client.ok(
            &a,
            &format!("test -e {HOST_DIR_MOUNT}/installer-failure || echo none")
        ),
        "none"
    );

    // The canary is within reach of an injected command, with or without sudo.
    assert!(!a.canary().exists() && !b.canary().exists());
    assert_eq!(a.canary(), a.dir().join("canary"));
    client.ok(&a, &format!("touch {HOST_DIR_MOUNT}/canary"));
    assert!(a.canary().exists() && !b.canary().exists());
    std::fs::remove_file(a.canary()).unwrap();
    client.ok(&a, &format!("sudo -n touch {HOST_DIR_MOUNT}/canary"));
    assert!(a.canary().exists());
    std::fs::remove_file(a.canary()).unwrap();
    assert_eq!(b.sessions(), 3, "{}", b.log());
}

#[test]
fn a_host_takes_thirty_logins_at_once() {
    let host = SshHost::start("busy");
    let client = Client::new();
    host.authorize(&client.public);
    let key_line = host.host_key_line();
    let children: Vec<_> = (0..30)
        .map(|i| {
            client
                .command(&host, &key_line, &format!("echo {i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "login {i}: {}\nsshd log:\n{}",
            stderr(&out),
            host.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), i.to_string());
    }
    assert_eq!(host.sessions(), 30);
}

#[test]
fn a_new_host_key_fails_the_old_known_hosts_line() {
    let mut host = SshHost::start("rotating");
    let client = Client::new();
    host.authorize(&client.public);
    let (address, port) = (host.address(), host.port());
    let old_line = host.host_key_line();
    let old_fingerprint = host.host_key_fingerprint();
    assert_eq!(client.ok(&host, "echo hi"), "hi");

    host.rotate_host_key();
    assert_eq!((host.address(), host.port()), (address, port));
    assert_ne!(host.host_key_line(), old_line);
    assert_ne!(host.host_key_fingerprint(), old_fingerprint);
    let out = client.run_with_key(&host, &old_line, "echo hi");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        stderr(&out)
    );
    // The authorized keys and the host directory stay.
    assert_eq!(client.ok(&host, "echo hi"), "hi");
    assert_eq!(
        client.ok(&host, &format!("cat {HOST_DIR_MOUNT}/hostname")),
        "test-rotating"
    );
    assert_eq!(host.sessions(), 3);
}

#[test]
fn a_stopped_host_refuses_connections_until_restarted() {
    let mut host = SshHost::start("Flaky Host_1");
    let client = Client::new();
    host.authorize(&client.public);
    let key_line = host.host_key_line();
    let address = SocketAddrV4::new(host.address(), host.port());
    assert_eq!(
        client.ok(&host, &format!("cat {HOST_DIR_MOUNT}/hostname")),
        "test-flaky-host-1"
    );

    // A session still open when the host goes down ends with it.
    let mut open_session = client
        .command(&host, &key_line, "echo started; sleep 60")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.sessions() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second session: {}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    host.stop();
    let err = TcpStream::connect_timeout(&address.into(), Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let out = client.run(&host, "true");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = open_session.try_wait().unwrap() {
            assert!(!status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the open session outlived its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    host.restart();
    assert_eq!(host.host_key_line(), key_line);
    assert_eq!(SocketAddrV4::new(host.address(), host.port()), address);
    assert_eq!(client.ok(&host, "sudo -n id -u"), "0");
    assert_eq!(host.sessions(), 3);

    // Dropped, the host is gone.
    drop(host);
    let err = TcpStream::connect_timeout(&address.into(), Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

/// The harness's certificates, checked with the OpenSSH client: a host given a host certificate
/// by a CA is trusted through an `@cert-authority` known_hosts line (and refused when the line
/// names another CA); a host trusting a user CA (`TrustedUserCAKeys`) takes a login with a user
/// certificate for a key it has no authorized_keys entry for, and refuses the bare key and an
/// expired certificate.
#[test]
fn a_host_presents_its_host_certificate_and_takes_user_certificates_from_its_trusted_ca() {
    let mut host = SshHost::start("certified");
    let (host_ca, user_ca, other_ca) = (
        support::SshCa::new(),
        support::SshCa::new(),
        support::SshCa::new(),
    );
    let name = format!("[{}]:{}", host.address(), host.port());
    let cert = host_ca.sign_host(
        &host,
        "certified-host",
        &["-n", &host.address().to_string()],
    );
    host.set_host_certificate(Some(&cert));
    host.set_trusted_user_ca_keys(Some(&user_ca.public_line()));
    let client = Client::new();
    let trusting = |ca: &support::SshCa| format!("@cert-authority {name} {}\n", ca.public_line());
    let user_cert = user_ca.sign_user(&client.public, "robot", &["-n", USER, "-V", "-5m:+1h"]);

    let out = client
        .command_knowing(&host, &trusting(&host_ca), Some(&user_cert), "id -un")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), host.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), USER);
    assert!(
        host.log().contains("certified-host") || host.log().contains("robot"),
        "{}",
        host.log()
    );
    assert_eq!(host.sessions(), 1);

    // A known_hosts line for another CA: the host is not trusted.
    let out = client
        .command_knowing(&host, &trusting(&other_ca), Some(&user_cert), "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Host key verification failed"),
        "{}",
        stderr(&out)
    );

    // No certificate, no authorized_keys entry: refused; an expired certificate too.
    let out = client
        .command_knowing(&host, &trusting(&host_ca), None, "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let expired = user_ca.sign_user(&client.public, "robot-old", &["-n", USER, "-V", "-2h:-1h"]);
    let out = client
        .command_knowing(&host, &trusting(&host_ca), Some(&expired), "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert_eq!(host.sessions(), 1);

    // A new host key takes its certificate with it: the plain key is presented again.
    host.rotate_host_key();
    host.authorize(&client.public);
    assert_eq!(client.ok(&host, "echo plain"), "plain");
}
