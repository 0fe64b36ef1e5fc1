//! Test support shared by the integration tests: controller processes, namespaces, Secrets, SSH
//! keys and manifests. Not product code.
//!
//! The real parts (the control plane, moto and the OpsWorks-compatible endpoint, the SSH test
//! hosts) live in the `registrar-local-env` crate (`tests/local-env`), which the local demo uses
//! too; they are re-exported here under their old names.
#![allow(dead_code)]

pub use registrar_local_env::{aws, control_plane, ssh_hosts};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use opsworks_endpoint::AgentInstaller;
use opsworks_endpoint::standin::StandIn;

pub use aws::AwsEnv;
pub use control_plane::ControlPlane;
use instance_registrar::resource::InstanceRegistration;

/// Creates a namespace with a unique name starting with `prefix`, for one test.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns).await.unwrap();
    name
}

/// Creates a Secret of `type_` in `namespace` with `data`.
pub async fn secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
    data: &[(&str, &[u8])],
) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let data: BTreeMap<String, ByteString> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(data),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret).await.unwrap();
}

/// Makes a fresh ed25519 key pair and stores the private key in a Secret `name` of type
/// `kubernetes.io/ssh-auth` in `namespace`; returns (private key, public key line).
pub async fn ssh_key_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> (String, String) {
    let (private, public) = ssh_keypair("ed25519", "");
    secret(
        client,
        namespace,
        name,
        "kubernetes.io/ssh-auth",
        &[("ssh-privatekey", private.as_bytes())],
    )
    .await;
    (private, public)
}

/// `aws`, with its OpsWorks endpoint serving the agent installer stand-in that takes `run_time`
/// (the real installer takes minutes).
pub fn serving_stand_in(aws: &'static AwsEnv, run_time: Duration) -> &'static AwsEnv {
    aws.opsworks
        .set_agent_installer(AgentInstaller::StandIn(StandIn::built().run_time(run_time)));
    aws
}

/// Watches the Secrets of `ns` and collects every `secret_access_key` (OpsWorks) and
/// `activation_code` (Systems Manager) stored in one (the controller deletes its Secret once the
/// agent has what it holds, so only a watch started before anything is applied sees them all).
/// Returns once the watch is established.
pub async fn collect_secret_access_keys(
    client: &kube::Client,
    ns: &str,
) -> Arc<Mutex<BTreeSet<String>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        // With backoff: while the API server is away, it retries at a calm pace, not in a loop.
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    for key in ["secret_access_key", "activation_code"] {
                        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
                            sink.lock()
                                .unwrap()
                                .insert(String::from_utf8_lossy(&v.0).into_owned());
                        }
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await.expect("the Secret watch started");
    seen
}

/// Applies `yaml` with kubectl; panics with kubectl's error if it is refused.
pub fn apply(cp: &ControlPlane, yaml: &str) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh SSH key pair made by ssh-keygen: (private key in OpenSSH form, public key line).
pub fn ssh_keypair(kind: &str, passphrase: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let public = ssh_hosts::generate_key(&path, kind, passphrase, "instance-registrar-test")
        .unwrap_or_else(|e| panic!("{e}"));
    (std::fs::read_to_string(&path).unwrap(), public)
}

/// The lines of a PEM/OpenSSH private key that carry key material (not the BEGIN/END lines): what
/// must never appear in logs, events or status.
pub fn key_material_lines(private_key: &str) -> Vec<String> {
    private_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// A controller process (`instance-registrar run`) watching one namespace, its logs in a file.
pub struct ControllerProcess {
    child: Option<Child>,
    /// Where its stderr and stdout go.
    pub log: PathBuf,
}

impl ControllerProcess {
    /// Starts the controller for `namespace`, against `aws`, logging at debug level.
    pub fn start(cp: &ControlPlane, aws: &AwsEnv, namespace: &str, extra_args: &[&str]) -> Self {
        Self::start_with_env(cp, aws, namespace, extra_args, &[])
    }

    /// Starts the controller with extra environment variables (e.g. a crash point).
    pub fn start_with_env(
        cp: &ControlPlane,
        aws: &AwsEnv,
        namespace: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = cp.dir.join(format!(
            "controller-{namespace}-{}.log",
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_instance-registrar"));
        command
            .args(["run", "--watch-namespace", namespace])
            .args(extra_args)
            // Many controllers run at once: each serves metrics and probes on a port of its own
            // (the log says which; see `ControllerProcess::http_address`).
            .env("METRICS_ADDRESS", "127.0.0.1:0")
            .env("PROBE_ADDRESS", "127.0.0.1:0")
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("LOG_LEVEL", "debug")
            .env("RUST_BACKTRACE", "1")
            // No orphan audit unless a test asks for one (`--audit-seconds`): one at each start
            // would add its calls to every test's AWS call counts.
            .env("AUDIT_SECONDS", "0");
        for (k, v) in aws.controller_env() {
            command.env(k, v);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = control_plane::spawn_logged(&mut command, &log).unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    /// Starts `instance-registrar` with `args` and `env` as the user of `kubeconfig` (e.g. a
    /// ServiceAccount's token), the way a Pod runs it: nothing else is added but a backtrace.
    pub fn start_as(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = cp.dir.join(format!(
            "controller-as-{}-{}.log",
            kubeconfig.file_stem().unwrap_or_default().to_string_lossy(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_instance-registrar"));
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied());
        let child = control_plane::spawn_logged(&mut command, &log).unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up, as a node failure or the OOM
    /// killer leaves it) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // setpriv execs the controller, so the child is the controller itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // setpriv execs the controller, so the child's PID is the controller's.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address it serves `path` (`/metrics` or `/readyz`) on, from its log; waits for it.
    pub fn http_address(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for line in strip_ansi(&self.logs()).lines() {
                if line.contains("serving")
                    && line.contains(path)
                    && let Some(at) = line.split("address=").nth(1)
                {
                    return at.split_whitespace().next().unwrap_or_default().to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no address for {path} in the log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its process ID, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (has not exited, nor been killed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GETs `url` with curl; returns (status code, body), or code 0 when nothing answered.
pub fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until object `name` has condition `type_` with `reason`, computed for its current
/// generation, and returns the object.
pub async fn wait_reason(
    api: &kube::Api<InstanceRegistration>,
    name: &str,
    type_: &str,
    reason: &str,
) -> InstanceRegistration {
    eventually(
        Duration::from_secs(60),
        &format!("{name}: {type_} reason {reason}"),
        || async {
            let obj = api.get_opt(name).await.ok()??;
            let (_, r, generation) = condition(&obj, type_)?;
            (r == reason && Some(generation) == obj.metadata.generation).then_some(obj)
        },
    )
    .await
}

/// Waits until object `name` is gone.
pub async fn wait_gone(api: &kube::Api<InstanceRegistration>, name: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{name} deleted"),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await
}

/// The message of `obj`'s condition `type_` (empty when it has none).
pub fn condition_message(obj: &InstanceRegistration, type_: &str) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The object's condition of `type_`, if any: (status, reason, observedGeneration).
pub fn condition(obj: &InstanceRegistration, type_: &str) -> Option<(String, String, i64)> {
    let status = obj.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.r#type == type_)?;
    Some((
        format!("{:?}", c.status),
        c.reason.clone(),
        c.observed_generation,
    ))
}

/// A manifest for an on-premises host at `target` in `stack`, with `hostname`, using Secret
/// `secret`; `extra` is more `spec` lines (indented two spaces). The `ssh` block comes last, so
/// lines indented four spaces appended to the manifest add to it (see [`ssh_via`]).
pub fn on_premises(
    ns: &str,
    name: &str,
    stack: &str,
    target: &str,
    hostname: &str,
    secret: &str,
    extra: &str,
) -> String {
    on_premises_named_by(ns, name, stack, target, Some(hostname), secret, extra)
}

/// As [`on_premises`], with no hostname override when `hostname` is `None`: the host registers
/// under its own hostname.
pub fn on_premises_named_by(
    ns: &str,
    name: &str,
    stack: &str,
    target: &str,
    hostname: Option<&str>,
    secret: &str,
    extra: &str,
) -> String {
    let hostname = hostname
        .map(|h| format!("  hostname: {h}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  stackId: {stack}
  infrastructureClass: on-premises
  target: \"{target}\"
{hostname}{extra}  ssh:
    username: {user}
    privateKeySecretRef:
      name: {secret}
",
        user = ssh_hosts::USER
    )
}

/// A manifest for an EC2 host named by `target` in `stack`; `extra` as for [`on_premises`].
pub fn ec2(ns: &str, name: &str, stack: &str, target: &str, secret: &str, extra: &str) -> String {
    format!(
        "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  stackId: {stack}
  infrastructureClass: ec2
  target: \"{target}\"
{extra}  ssh:
    username: {user}
    privateKeySecretRef:
      name: {secret}
",
        user = ssh_hosts::USER
    )
}

/// `ssh` lines (to append to a manifest) that reach `host`, the way a bastion's port forward
/// would: an address override on loopback, so no test ever connects anywhere else.
pub fn ssh_via(host: &ssh_hosts::SshHost) -> String {
    format!(
        "    address: \"{}\"\n    port: {}\n",
        host.address(),
        host.port()
    )
}

/// `ssh` lines (to append to a manifest after [`ssh_via`]) that reach the host through
/// `jump_hosts`, in order, each logged in to as the test user, with `extra` lines of its own
/// (indented six spaces: `hostKeyPolicy`, `privateKeySecretRef`...).
pub fn jump_hosts_via(jump_hosts: &[(&ssh_hosts::SshHost, &str)]) -> String {
    let mut lines = "    jumpHosts:\n".to_owned();
    for (host, extra) in jump_hosts {
        lines.push_str(&format!(
            "    - address: \"{}\"\n      port: {}\n      username: {}\n{extra}",
            host.address(),
            host.port(),
            ssh_hosts::USER
        ));
    }
    lines
}

/// A minimal valid manifest (YAML) for namespace `ns`, object `name`, using Secret `secret`.
pub fn manifest(ns: &str, name: &str, secret: &str) -> String {
    format!(
        "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  stackId: 2f1ad2a4-6e7f-4c1b-9a55-0c7b1d3e4f50
  infrastructureClass: ec2
  target: i-0123456789abcdef0
  ssh:
    username: ec2-user
    privateKeySecretRef:
      name: {secret}
"
    )
}

/// Registers a host in `stack` the way the agent does: with an IAM user of its own that may
/// register, signing with that user's key, under `hostname` at `private_ip` (as `aws opsworks
/// register` run elsewhere would). Returns the OpsWorks instance ID.
pub async fn register_directly(
    aws: &AwsEnv,
    stack: &str,
    hostname: &str,
    private_ip: &str,
    ec2_instance: Option<&str>,
) -> String {
    let iam = aws.iam();
    let user = format!("agent-{hostname}-{}", std::process::id());
    iam.create_user().user_name(&user).send().await.unwrap();
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn("arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration")
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(&user)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    let config = aws_sdk_opsworks::Config::builder()
        .behavior_version(aws_sdk_opsworks::config::BehaviorVersion::latest())
        .region(aws_sdk_opsworks::config::Region::new(aws::REGION))
        .endpoint_url(aws.opsworks.url())
        .credentials_provider(aws_sdk_opsworks::config::Credentials::new(
            key.access_key_id(),
            key.secret_access_key(),
            None,
            None,
            "agent",
        ))
        .build();
    let client = aws_sdk_opsworks::Client::from_conf(config);
    let mut request = client
        .register_instance()
        .stack_id(stack)
        .hostname(hostname)
        .private_ip(private_ip);
    if let Some(id) = ec2_instance {
        let document = serde_json::json!({"instanceId": id, "region": aws::REGION}).to_string();
        request = request.instance_identity(
            aws_sdk_opsworks::types::InstanceIdentity::builder()
                .document(document)
                .signature("test")
                .build(),
        );
    }
    let out = request.send().await.expect("RegisterInstance");
    out.instance_id().unwrap().to_owned()
}

/// A test SSH host `name` that accepts `public_key` and whose agent installer always fails: an
/// object naming it gets past the host step (the controller makes IAM credentials only for a
/// host that answered) and never registers, so the credentials and their Secret stay in place
/// for a test to look at.
pub fn host_whose_install_fails(name: &str, public_key: &str) -> ssh_hosts::SshHost {
    let host = ssh_hosts::SshHost::start(name);
    host.authorize(public_key);
    host.set_installer_failure(Some(
        "this test host's installer fails on purpose: the test looks at the credentials",
    ));
    host
}

/// An on-premises manifest for `host` (reached through [`ssh_via`]) under `hostname`.
pub fn on_premises_at(
    ns: &str,
    name: &str,
    stack: &str,
    host: &ssh_hosts::SshHost,
    hostname: &str,
    secret: &str,
) -> String {
    on_premises(
        ns,
        name,
        stack,
        &host.address().to_string(),
        hostname,
        secret,
        "",
    ) + &ssh_via(host)
}

/// An SSH certificate authority made by `ssh-keygen` for one test: it signs host keys and user
/// keys with `ssh-keygen -s`, as a fleet's CA does.
pub struct SshCa {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl SshCa {
    /// A new ed25519 CA key.
    pub fn new() -> SshCa {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca");
        ssh_hosts::generate_key(&key, "ed25519", "", "test-ca").unwrap_or_else(|e| panic!("{e}"));
        SshCa { dir, key }
    }

    /// The CA's public key line (`ssh-ed25519 AAAA... test-ca`).
    pub fn public_line(&self) -> String {
        std::fs::read_to_string(self.key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The CA's SHA256 fingerprint, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.key.with_extension("pub"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }

    /// `ssh-keygen -s <ca> -I <key_id> <args> <public key file>`: the certificate's text.
    pub fn sign_file(&self, public: &std::path::Path, key_id: &str, args: &[&str]) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let copy = self
            .dir
            .path()
            .join(format!("subject-{}.pub", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::copy(public, &copy).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-q")
            .arg("-s")
            .arg(&self.key)
            .args(["-I", key_id])
            .args(args)
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh-keygen -s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert = copy.with_file_name(format!(
            "{}-cert.pub",
            copy.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::read_to_string(cert).unwrap()
    }

    /// A host certificate for `host`'s current host key (`-h`), with `args` (`-n`, `-V`, `-z`).
    pub fn sign_host(&self, host: &ssh_hosts::SshHost, key_id: &str, args: &[&str]) -> String {
        let mut all = vec!["-h"];
        all.extend_from_slice(args);
        self.sign_file(&host.host_public_key_path(), key_id, &all)
    }

    /// A user certificate for the public key line `public`, with `args` (`-n`, `-V`, `-O`).
    pub fn sign_user(&self, public: &str, key_id: &str, args: &[&str]) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{}\n", public.trim())).unwrap();
        self.sign_file(file.path(), key_id, args)
    }
}
