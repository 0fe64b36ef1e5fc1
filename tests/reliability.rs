//! The reliability suite: the controller's promises (nothing is done twice, nothing is left
//! behind, nothing secret leaks, nothing from a manifest runs as code) checked against real parts
//! while things go wrong on purpose:
//!
//! 1. crashes: many objects registering at once while the controller is killed with SIGKILL at
//!    seeded random moments and restarted;
//! 2. faults: throttling, 5xx and latency spikes on IAM, EC2 and OpsWorks, SSH hosts that refuse
//!    connections for a while, and kube-apiserver killed and started again mid-run (on a control
//!    plane of the test's own);
//! 3. hostile and broken input: a corpus of bad spec fields and Secret contents, each refused by
//!    the API server naming the field, or reported on status with a stable reason;
//! 4. secrets: every test scans everything the controller wrote (every log line of every
//!    controller process, Events, objects with status) for the secret access keys and private
//!    keys in play;
//! 5. isolation: no reading of another namespace's Secret, and the Conflict rule under concurrent
//!    creation.
//!
//! Each test prints its figures and ends with one summary row; run with
//! `cargo test --test reliability -- --nocapture`. The counts are the constants below.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use opsworks_endpoint::Faults;
use serde_json::{Value, json};
use support::ssh_hosts::{self, SshHost};
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, collect_secret_access_keys, condition,
    eventually, http_get, key_material_lines, namespace, on_premises, secret, serving_stand_in,
    ssh_keypair, ssh_via,
};

/// Objects (and SSH hosts) registering at once in the crash test (the issue asks for 30; 12 keep
/// the test within a few minutes on two busy cores).
const CRASH_OBJECTS: usize = 30;
/// Of those, on-premises hosts registered with Systems Manager (the others with OpsWorks).
const CRASH_SSM_OBJECTS: usize = 6;
/// SIGKILLs of the controller while the objects register.
const CRASH_KILLS: usize = 10;
/// The crash test's objects are applied in this many waves, one after each of the first kills.
const CRASH_WAVES: usize = 6;
/// More SIGKILLs while the objects are being deleted.
const CRASH_KILLS_DURING_DELETE: usize = 2;
/// Seed of the kill schedule.
const CRASH_SEED: u64 = 0x5eed_0001;
/// Objects (and hosts) in the faults test.
const FAULT_OBJECTS: usize = 8;
/// Of those, hosts that refuse connections at first and come back later.
const FAULT_DOWN_HOSTS: usize = 3;
/// Objects (and hosts) of the faults test applied only after its kube-apiserver is back.
const FAULT_LATE_OBJECTS: usize = 2;
/// How long the faults test keeps its kube-apiserver down (after a SIGKILL) mid-run.
const APISERVER_DOWN: Duration = Duration::from_secs(3);
/// Seed of the injected faults.
const FAULT_SEED: u64 = 2026;
/// Pairs of objects naming one host, created in one apply, in the isolation test.
const CONFLICT_PAIRS: usize = 4;
/// How long the stand-in installer takes.
const INSTALLER_RUN_TIME: Duration = Duration::from_secs(2);
/// How long a whole batch of objects may take to get where it must.
const PATIENCE: Duration = Duration::from_secs(240);

/// How long one bad input may take to be reported.
const CASE_PATIENCE: Duration = Duration::from_secs(60);

const SSH_AUTH: &str = "kubernetes.io/ssh-auth";

// ---------------------------------------------------------------------------------------------
// Environments

/// The crash test's own AWS (so its IAM users and instances are only its own).
fn crash_aws() -> &'static AwsEnv {
    let aws = serving_stand_in(AwsEnv::isolated(), INSTALLER_RUN_TIME);
    aws.opsworks.set_ssm_setup_run_time(INSTALLER_RUN_TIME);
    aws
}

/// The faults test's AWS: IAM and EC2 behind the fault-injecting proxy.
fn faulty_aws() -> &'static AwsEnv {
    serving_stand_in(AwsEnv::faulty(), INSTALLER_RUN_TIME)
}

/// The faults test's own control plane: it restarts kube-apiserver, which the tests sharing
/// [`ControlPlane::shared`] (running meanwhile) must not see.
fn faults_control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        ControlPlane::private("faults")
            .unwrap_or_else(|e| panic!("starting the faults test's control plane: {e}"))
    })
}

/// The AWS of the hostile-input and isolation tests.
fn shared_aws() -> &'static AwsEnv {
    serving_stand_in(AwsEnv::shared(), INSTALLER_RUN_TIME)
}

/// A small seeded generator (xorshift64*), so that a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A duration between `lo` and `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// One test's world: a namespace with an SSH key in Secret `key`, a stack, the controller (every
/// process it ran as, the last one current), and a watch that collects every secret access key
/// the controller stores in the namespace.
struct Env {
    cp: &'static ControlPlane,
    aws: &'static AwsEnv,
    client: kube::Client,
    ns: String,
    api: Api<InstanceRegistration>,
    stack: String,
    private_key: String,
    public_key: String,
    controller_args: Vec<String>,
    controllers: Vec<ControllerProcess>,
    seen_secrets: Arc<Mutex<BTreeSet<String>>>,
    /// The IAM service role of this world's Systems Manager activations.
    ssm_role: String,
}

impl Env {
    /// A world on the control plane the tests share.
    async fn new(aws: &'static AwsEnv, prefix: &str, controller_args: &[&str]) -> Env {
        Env::new_on(ControlPlane::shared(), aws, prefix, controller_args).await
    }

    /// A world on control plane `cp`.
    async fn new_on(
        cp: &'static ControlPlane,
        aws: &'static AwsEnv,
        prefix: &str,
        controller_args: &[&str],
    ) -> Env {
        let client = cp.client().await;
        let ns = namespace(&client, prefix).await;
        let (private_key, public_key) = ssh_keypair("ed25519", "");
        secret(
            &client,
            &ns,
            "key",
            SSH_AUTH,
            &[("ssh-privatekey", private_key.as_bytes())],
        )
        .await;
        let stack = aws.create_stack(&ns, None).await;
        let seen_secrets = collect_secret_access_keys(&client, &ns).await;
        let ssm_role = format!("{ns}-ssm");
        aws.create_ssm_service_role(&ssm_role).await;
        let mut env = Env {
            cp,
            aws,
            api: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            stack,
            private_key,
            public_key,
            controller_args: controller_args.iter().map(|a| (*a).to_owned()).collect(),
            controllers: Vec::new(),
            seen_secrets,
            ssm_role,
        };
        env.start_controller();
        env
    }

    fn start_controller(&mut self) {
        let args: Vec<&str> = self.controller_args.iter().map(String::as_str).collect();
        self.controllers
            .push(ControllerProcess::start(self.cp, self.aws, &self.ns, &args));
    }

    /// SIGKILLs the current controller process.
    fn kill_controller(&mut self) {
        if let Some(c) = self.controllers.last_mut() {
            c.kill();
        }
    }

    /// A host that accepts this world's key.
    fn host(&self, name: &str) -> SshHost {
        let host = SshHost::start(&format!("{}-{name}", self.ns));
        host.authorize(&self.public_key);
        host
    }

    fn apply(&self, yaml: &str) {
        apply(self.cp, yaml);
    }

    /// Every log line of every controller process of this world.
    fn logs(&self) -> String {
        self.controllers
            .iter()
            .map(ControllerProcess::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let all: Vec<&str> = logs.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn objects(&self) -> Vec<InstanceRegistration> {
        self.api.list(&ListParams::default()).await.unwrap().items
    }

    /// Waits until every object of `names` satisfies `done`; returns them. On timeout, panics
    /// with each object's Ready condition and the log's tail.
    async fn wait_all(
        &self,
        names: &[String],
        what: &str,
        done: impl Fn(&InstanceRegistration) -> bool,
    ) -> Vec<InstanceRegistration> {
        self.wait_all_within(PATIENCE, names, what, done).await
    }

    async fn wait_all_within(
        &self,
        patience: Duration,
        names: &[String],
        what: &str,
        done: impl Fn(&InstanceRegistration) -> bool,
    ) -> Vec<InstanceRegistration> {
        let deadline = Instant::now() + patience;
        loop {
            let objects = self.objects().await;
            let wanted: Vec<InstanceRegistration> = objects
                .into_iter()
                .filter(|o| names.contains(o.metadata.name.as_ref().unwrap()))
                .collect();
            if wanted.len() == names.len() && wanted.iter().all(&done) {
                return wanted;
            }
            if Instant::now() > deadline {
                let states: Vec<String> = wanted
                    .iter()
                    .filter(|o| !done(o))
                    .map(|o| format!("{}: {}", o.metadata.name.as_ref().unwrap(), describe(o)))
                    .collect();
                // The whole log, for the post-mortem (the control plane's files go with it).
                let kept = std::env::temp_dir().join(format!("{}-controller.log", self.ns));
                let _ = std::fs::write(&kept, support::strip_ansi(&self.logs()));
                panic!(
                    "{}: not all {what} after {patience:?}:\n{}\ncontroller log tail:\n{}\n\
                     (every controller log line of this test: {})",
                    self.ns,
                    states.join("\n"),
                    self.log_tail(60),
                    kept.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_all_gone(&self, names: &[String]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left: Vec<String> = self
                .objects()
                .await
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .filter(|n| names.contains(n))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not deleted after {PATIENCE:?}: {left:?}\ncontroller log tail:\n{}",
                self.ns,
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Counts occurrences of secret material (the secret access keys seen so far, and the key
    /// material lines of `private_keys` and this world's key) in everything the controller
    /// wrote: every log line, the namespace's Events, and the objects with their status.
    fn secret_hits(&self, private_keys: &[&str]) -> (usize, usize) {
        let events = self
            .cp
            .kubectl_ok(&["get", "events", "-n", &self.ns, "-o", "yaml"])
            .unwrap();
        let objects = self
            .cp
            .kubectl_ok(&["get", "ir", "-n", &self.ns, "-o", "yaml"])
            .unwrap();
        let logs = self.logs();
        let mut needles: Vec<String> = self.seen_secrets.lock().unwrap().iter().cloned().collect();
        let access_keys = needles.len();
        needles.extend(key_material_lines(&self.private_key));
        for key in private_keys {
            needles.extend(key_material_lines(key));
        }
        let mut hits = 0;
        for (what, text) in [("log", &logs), ("events", &events), ("objects", &objects)] {
            for needle in &needles {
                let n = text.matches(needle.as_str()).count();
                if n > 0 {
                    eprintln!("SECRET MATERIAL in the controller's {what} ({n} times)");
                }
                hits += n;
            }
        }
        (hits, access_keys)
    }

    /// Lines of any controller process of this world that report a panic.
    fn panics(&self) -> usize {
        self.logs().matches("panicked").count()
    }

    /// What the controller made that is still there for objects with `uids`: IAM users (under
    /// /AWS/OpsWorks/, tagged with one of the UIDs), instances of the stack not deregistered,
    /// and credentials Secrets of `names`.
    async fn leftovers(&self, uids: &BTreeSet<String>, names: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        for (user, owner) in self.aws.iam_users("").await {
            if owner.is_some_and(|o| uids.contains(&o)) {
                left.push(format!("IAM user {user}"));
            }
        }
        for i in self.aws.opsworks.instances() {
            if i.stack_id == self.stack && i.status != "deregistered" {
                left.push(format!(
                    "OpsWorks instance {} ({}, {})",
                    i.instance_id, i.hostname, i.status
                ));
            }
        }
        for n in self.ssm_nodes() {
            left.push(format!("Systems Manager node {}", n.instance_id));
        }
        for a in self.ssm_activations() {
            left.push(format!("activation {}", a.activation_id));
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        for name in names {
            for suffix in ["opsworks-access-key", "ssm-activation"] {
                let held = format!("{name}-{suffix}");
                if secrets.get_opt(&held).await.unwrap().is_some() {
                    left.push(format!("Secret {held}"));
                }
            }
        }
        left
    }

    /// The Systems Manager nodes registered for this world's service role.
    fn ssm_nodes(&self) -> Vec<opsworks_endpoint::SsmNodeView> {
        self.aws
            .opsworks
            .ssm_nodes()
            .into_iter()
            .filter(|n| {
                n.iam_role
                    .as_deref()
                    .is_some_and(|r| r.ends_with(&self.ssm_role))
            })
            .collect()
    }

    /// The activations for this world's service role that exist.
    fn ssm_activations(&self) -> Vec<opsworks_endpoint::SsmActivationView> {
        self.aws
            .opsworks
            .ssm_activations()
            .into_iter()
            .filter(|a| a.iam_role.ends_with(&self.ssm_role))
            .collect()
    }

    /// Deletes `names` (all at once) and waits for them to be gone.
    async fn delete_all(&self, names: &[String]) {
        for name in names {
            self.api
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
        }
        self.wait_all_gone(names).await;
    }
}

/// Whether `obj` has condition `type_` with `reason`, computed for its current generation.
fn has(obj: &InstanceRegistration, type_: &str, reason: &str) -> bool {
    matches!(condition(obj, type_), Some((_, r, g)) if r == reason && Some(g) == obj.metadata.generation)
}

/// Whether `obj` is Ready=True for its current generation.
fn ready(obj: &InstanceRegistration) -> bool {
    matches!(condition(obj, types::READY), Some((s, _, g)) if s == "True" && Some(g) == obj.metadata.generation)
}

/// Each condition as `Type=Status/Reason`, and the Ready message.
fn describe(obj: &InstanceRegistration) -> String {
    let Some(status) = &obj.status else {
        return "no status".into();
    };
    let mut parts: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={:?}/{}", c.r#type, c.status, c.reason))
        .collect();
    if let Some(c) = status.conditions.iter().find(|c| c.r#type == types::READY) {
        parts.push(format!("({})", c.message));
    }
    if obj.spec.systems_manager.is_some() {
        parts.push(format!(
            "[node {:?}, activation {:?}, adopted {}, install started {}, installed {}]",
            status.managed_node_id,
            status.activation_id,
            status.adopted,
            status.install_started_at.is_some(),
            status.agent_installed_at.is_some()
        ));
    }
    parts.join(" ")
}

fn uids(objects: &[InstanceRegistration]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| o.metadata.uid.clone())
        .collect()
}

/// The registrations of `stack` in OpsWorks that are not deregistered, by hostname.
fn live_instances(aws: &AwsEnv, stack: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in aws.opsworks.instances() {
        if i.stack_id == stack && i.status != "deregistered" {
            by_host.entry(i.hostname).or_default().push(i.instance_id);
        }
    }
    by_host
}

/// Checks the end state of a batch of Ready objects, each of which registered the host of the
/// same index under its own name as hostname: one OpsWorks instance per host (the one on its
/// status), one IAM user per object (tagged with its UID) with at most one access key, no
/// credentials Secret, no canary. Returns (users, keys) counted.
async fn assert_registered_once(
    env: &Env,
    objects: &[InstanceRegistration],
    hosts: &[SshHost],
) -> (usize, usize) {
    let live = live_instances(env.aws, &env.stack);
    assert_eq!(
        live.values().map(Vec::len).sum::<usize>(),
        objects.len(),
        "one instance per host in the stack: {live:?}"
    );
    let users = env.aws.iam_users("").await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let (mut user_count, mut key_count) = (0, 0);
    for obj in objects {
        let name = obj.metadata.name.clone().unwrap();
        let uid = obj.metadata.uid.clone().unwrap();
        let status = obj.status.clone().unwrap();
        assert_eq!(
            live.get(&name).map(Vec::as_slice),
            status
                .opsworks_instance_id
                .as_ref()
                .map(std::slice::from_ref),
            "{name}: exactly one instance, the one on its status"
        );
        let ours: Vec<&String> = users
            .iter()
            .filter(|(_, owner)| owner.as_deref() == Some(uid.as_str()))
            .map(|(user, _)| user)
            .collect();
        assert_eq!(ours.len(), 1, "{name}: one IAM user: {ours:?}");
        let keys = env.aws.access_keys(ours[0]).await;
        assert!(keys.len() <= 1, "{name}: at most one access key: {keys:?}");
        assert_eq!(status.access_key_id.as_ref(), keys.first(), "{name}");
        user_count += 1;
        key_count += keys.len();
        let credentials = format!("{name}-opsworks-access-key");
        assert!(
            secrets.get_opt(&credentials).await.unwrap().is_none(),
            "{name}: the credentials Secret outlived the install"
        );
    }
    for host in hosts {
        assert!(
            !host.canary().exists(),
            "{}: the canary exists",
            host.name()
        );
    }
    (user_count, key_count)
}

/// One row of the suite's summary table.
#[derive(Default)]
struct Summary {
    test: &'static str,
    objects: usize,
    kills: usize,
    faults: String,
    bad_inputs: String,
    secret_hits: usize,
    panics: usize,
    leftovers: usize,
    wall: Duration,
}

/// The rows of the tests finished so far in this process.
static SUMMARY_ROWS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Summary {
    /// Adds this test's row to the summary and prints the table of every test finished so far:
    /// the last one printed (at the end of `--nocapture` output) is the whole suite's.
    fn print(&self) {
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.test,
            self.objects,
            self.kills,
            if self.faults.is_empty() {
                "0"
            } else {
                self.faults.as_str()
            },
            if self.bad_inputs.is_empty() {
                "0"
            } else {
                self.bad_inputs.as_str()
            },
            self.secret_hits,
            self.panics,
            self.leftovers,
            self.wall.as_secs_f64()
        );
        let mut rows = SUMMARY_ROWS.lock().unwrap_or_else(|e| e.into_inner());
        rows.push(row);
        rows.sort();
        println!(
            "\nreliability summary ({} test(s) finished so far):\n\
             | test | objects | kills | faults injected | bad inputs tried (how refused) | secret hits | panics | leftovers | wall time |\n\
             |---|---|---|---|---|---|---|---|---|\n{}\n",
            rows.len(),
            rows.join("\n")
        );
    }
}

/// The objects' manifests (one apply) for `hosts`, object `<prefix>-<i>` with hostname the same.
fn batch(env: &Env, prefix: &str, hosts: &[SshHost]) -> (Vec<String>, String) {
    let mut names = Vec::new();
    let mut yaml = String::new();
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("{prefix}-{i}");
        yaml += "---\n";
        yaml += &(on_premises(
            &env.ns,
            &name,
            &env.stack,
            &host.address().to_string(),
            &name,
            "key",
            "",
        ) + &ssh_via(host));
        names.push(name);
    }
    (names, yaml)
}

/// The objects' manifests for `hosts` registered with Systems Manager (on-premises, with the
/// world's service role), object `<prefix>-<i>`.
fn ssm_batch(env: &Env, prefix: &str, hosts: &[SshHost]) -> (Vec<String>, String) {
    let mut names = Vec::new();
    let mut yaml = String::new();
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("{prefix}-{i}");
        yaml += &format!(
            "---
apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  systemsManager:
    serviceRole: {role}
  infrastructureClass: on-premises
  target: {address}
  ssh:
    username: {user}
    privateKeySecretRef:
      name: key
    port: {port}
",
            ns = env.ns,
            role = env.ssm_role,
            address = host.address(),
            user = ssh_hosts::USER,
            port = host.port(),
        );
        names.push(name);
    }
    (names, yaml)
}

/// Checks the end state of a batch of Ready Systems Manager objects: one node per host (the one
/// on its status and in the host's registration file, online), no activation left, no
/// activation Secret.
async fn assert_ssm_registered_once(
    env: &Env,
    objects: &[InstanceRegistration],
    hosts: &[SshHost],
) {
    let nodes = env.ssm_nodes();
    assert_eq!(nodes.len(), objects.len(), "one node per host: {nodes:?}");
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    for (obj, host) in objects.iter().zip(hosts) {
        let name = obj.metadata.name.clone().unwrap();
        let node = obj.status.clone().unwrap().managed_node_id;
        assert!(node.is_some(), "{name}: no node on its status");
        assert_eq!(
            host.ssm_registration(),
            node,
            "{name}: the host's registration"
        );
        let listed = nodes.iter().find(|n| Some(&n.instance_id) == node.as_ref());
        assert_eq!(
            listed.map(|n| n.ping_status.as_str()),
            Some("Online"),
            "{name}: {nodes:?}"
        );
        assert!(
            secrets
                .get_opt(&format!("{name}-ssm-activation"))
                .await
                .unwrap()
                .is_none(),
            "{name}: the activation Secret outlived the install"
        );
    }
    assert_eq!(env.ssm_activations(), Vec::new(), "activations left");
}

// ---------------------------------------------------------------------------------------------
// 1. Crashes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_killed_at_random_moments_many_times_register_each_host_once_and_leave_nothing() {
    let started = Instant::now();
    let mut env = Env::new(crash_aws(), "rel-crash", &[]).await;
    let hosts: Vec<SshHost> = (0..CRASH_OBJECTS - CRASH_SSM_OBJECTS)
        .map(|i| env.host(&format!("c{i}")))
        .collect();
    let ssm_hosts: Vec<SshHost> = (0..CRASH_SSM_OBJECTS)
        .map(|i| env.host(&format!("s{i}")))
        .collect();
    let (opsworks_names, _) = batch(&env, "crash", &hosts);
    let (ssm_names, ssm_yaml) = ssm_batch(&env, "crash-ssm", &ssm_hosts);
    let names: Vec<String> = opsworks_names.iter().chain(&ssm_names).cloned().collect();
    // The objects arrive in waves while the kills go on, so that the kills find objects in every
    // phase (stack and IAM calls, credentials written, installs running, waiting for OpsWorks).
    let waves: Vec<&[SshHost]> = hosts.chunks(CRASH_OBJECTS.div_ceil(CRASH_WAVES)).collect();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);

    // Kill the controller at seeded random moments while the objects register, and restart it
    // (after a random pause: sometimes at once, sometimes after a while).
    let mut rng = Rng::new(CRASH_SEED);
    let mut kills = Vec::new();
    let (mut applied, mut opsworks_applied) = (0, 0);
    for k in 0..CRASH_KILLS {
        if let Some(wave) = waves.get(k) {
            let (_, yaml) = batch(&env, "crash", &hosts[..opsworks_applied + wave.len()]);
            env.apply(&yaml);
            opsworks_applied += wave.len();
            applied += wave.len();
        }
        if k == 1 {
            // The Systems Manager objects come in with the second wave.
            env.apply(&ssm_yaml);
            applied += CRASH_SSM_OBJECTS;
        }
        tokio::time::sleep(rng.millis(1000, 3500)).await;
        let ready_then = env.objects().await.iter().filter(|o| ready(o)).count();
        let runs_then: usize = hosts.iter().map(SshHost::boot_registration_runs).sum();
        let keys_held = secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|s| {
                s.metadata
                    .name
                    .as_ref()
                    .unwrap()
                    .ends_with("-opsworks-access-key")
            })
            .count();
        env.kill_controller();
        kills.push((started.elapsed(), applied, ready_then, runs_then, keys_held));
        tokio::time::sleep(rng.millis(0, 1000)).await;
        env.start_controller();
    }
    // On the way to Ready, what the Systems Manager hosts say of themselves, should they not
    // get there (the panic of wait_all says what the objects say).
    let deadline = Instant::now() + PATIENCE - Duration::from_secs(5);
    while Instant::now() < deadline
        && !env
            .objects()
            .await
            .iter()
            .filter(|o| names.contains(o.metadata.name.as_ref().unwrap()))
            .all(|o| has(o, types::READY, reasons::SUCCEEDED))
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if Instant::now() >= deadline {
        for host in &ssm_hosts {
            eprintln!(
                "{}: registration {:?}, agents {:?}, setup runs {:?}\nagent log:\n{}",
                host.name(),
                host.ssm_registration(),
                host.ssm_agent_pids(),
                host.ssm_setup_runs(),
                host.ssm_agent_log()
            );
        }
        eprintln!("nodes: {:#?}", env.ssm_nodes());
    }
    let objects = env
        .wait_all_within(Duration::from_secs(10), &names, "Ready", |o| {
            has(o, types::READY, reasons::SUCCEEDED)
        })
        .await;
    let to_ready = started.elapsed();
    let (opsworks_objects, ssm_objects): (Vec<_>, Vec<_>) = objects
        .iter()
        .cloned()
        .partition(|o| o.spec.systems_manager.is_none());
    let mut opsworks_objects = opsworks_objects;
    opsworks_objects.sort_by_key(|o| {
        let name = o.metadata.name.clone().unwrap();
        name.rsplit('-').next().unwrap().parse::<usize>().unwrap()
    });
    let mut ssm_objects = ssm_objects;
    ssm_objects.sort_by_key(|o| {
        let name = o.metadata.name.clone().unwrap();
        name.rsplit('-').next().unwrap().parse::<usize>().unwrap()
    });
    let (users, keys) = assert_registered_once(&env, &opsworks_objects, &hosts).await;
    assert_ssm_registered_once(&env, &ssm_objects, &ssm_hosts).await;
    let runs: Vec<usize> = hosts.iter().map(SshHost::boot_registration_runs).collect();
    assert!(runs.iter().all(|r| *r >= 1), "{runs:?}");
    let (hits_before_delete, access_keys) = env.secret_hits(&[]);

    // Delete them all, killing the controller during the deletion too.
    let uids = uids(&objects);
    for name in &names {
        env.api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for _ in 0..CRASH_KILLS_DURING_DELETE {
        tokio::time::sleep(rng.millis(300, 1500)).await;
        env.kill_controller();
        kills.push((started.elapsed(), names.len(), 0, 0, 0));
        env.start_controller();
    }
    env.wait_all_gone(&names).await;
    let leftovers = env.leftovers(&uids, &names).await;
    let (hits_after, _) = env.secret_hits(&[]);

    println!(
        "crashes: {CRASH_OBJECTS} objects ({CRASH_SSM_OBJECTS} of them Systems Manager) against \
         {CRASH_OBJECTS} sshd hosts, seed {CRASH_SEED:#x}"
    );
    for (i, (at, applied, ready_then, runs_then, keys_held)) in kills.iter().enumerate() {
        if i < CRASH_KILLS {
            println!(
                "  SIGKILL {:>2} at {:>5.1} s: {applied:>2} applied, {ready_then:>2} Ready, \
                 {keys_held:>2} credentials Secrets held, {runs_then:>2} installer runs so far",
                i + 1,
                at.as_secs_f64()
            );
        } else {
            println!(
                "  SIGKILL {:>2} at {:>5.1} s, during deletion",
                i + 1,
                at.as_secs_f64()
            );
        }
    }
    println!(
        "  all Ready after {:.1} s; OpsWorks instances {}, IAM users {users}, access keys {keys}; \
         Systems Manager nodes {}, activations left 0, setup runs per host {:?}",
        to_ready.as_secs_f64(),
        opsworks_objects.len(),
        ssm_objects.len(),
        ssm_hosts
            .iter()
            .map(|h| h.ssm_setup_runs().len())
            .collect::<Vec<_>>()
    );
    println!(
        "  installer runs per host {runs:?} (a kill during an install may legitimately run it \
         again before it registered; never registered twice)"
    );
    println!(
        "  secret access keys watched: {access_keys}; controller processes: {}",
        env.controllers.len()
    );
    let summary = Summary {
        test: "1 crashes",
        objects: CRASH_OBJECTS,
        kills: kills.len(),
        secret_hits: hits_before_delete + hits_after,
        panics: env.panics(),
        leftovers: leftovers.len(),
        wall: started.elapsed(),
        ..Summary::default()
    };
    summary.print();
    assert_eq!(leftovers, Vec::<String>::new());
    assert_eq!(summary.secret_hits, 0);
    assert_eq!(summary.panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_throttling_errors_latency_and_hosts_down_end_as_without_faults() {
    let started = Instant::now();
    let mut env = Env::new_on(faults_control_plane(), faulty_aws(), "rel-faults", &[]).await;
    let mut hosts: Vec<SshHost> = (0..FAULT_OBJECTS + FAULT_LATE_OBJECTS)
        .map(|i| env.host(&format!("f{i}")))
        .collect();
    let (mut names, yaml) = batch(&env, "fault", &hosts[..FAULT_OBJECTS]);
    let (late_names, late_yaml) = batch(&env, "late", &hosts[FAULT_OBJECTS..]);
    for host in hosts.iter_mut().take(FAULT_DOWN_HOSTS) {
        host.stop();
    }
    let faults = Faults {
        throttle_rate: 0.3,
        internal_error_rate: 0.025,
        unavailable_rate: 0.025,
        spike_rate: 0.05,
        spike_latency_ms: 1500,
        seed: FAULT_SEED,
        ..Faults::default()
    };
    env.aws.set_faults(faults.clone());
    env.aws.clear_calls();
    env.apply(&yaml);

    // The hosts that are down are reported so, and then come back.
    let down: Vec<String> = names[..FAULT_DOWN_HOSTS].to_vec();
    env.wait_all(&down, "HostUnreachable", |o| {
        has(o, types::HOST_REACHABLE, reasons::HOST_UNREACHABLE)
    })
    .await;
    let down_for = started.elapsed();
    for host in hosts.iter_mut().take(FAULT_DOWN_HOSTS) {
        host.restart();
    }

    // kube-apiserver crashes while they register, and comes back (same port, certificates and
    // etcd). The controller process is not restarted: its watches must recover on their own,
    // which the objects applied only afterwards prove (nothing else would bring them to it).
    let controller_pid = env.controllers[0].pid();
    let ready_at_kill = env.objects().await.iter().filter(|o| ready(o)).count();
    let killed_at = started.elapsed();
    let cp = env.cp;
    let outage = tokio::task::spawn_blocking(move || cp.restart_apiserver(APISERVER_DOWN))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("restarting kube-apiserver: {e}"));
    println!(
        "faults: kube-apiserver SIGKILLed at {:.1} s ({ready_at_kill} of {FAULT_OBJECTS} Ready), \
         unreachable for {:.1} s",
        killed_at.as_secs_f64(),
        outage.as_secs_f64()
    );
    let late_applied = Instant::now();
    env.apply(&late_yaml);
    names.extend(late_names.iter().cloned());
    let objects = env
        .wait_all(&names, "Ready", |o| {
            has(o, types::READY, reasons::SUCCEEDED)
        })
        .await;
    let to_ready = started.elapsed();
    let late_to_ready = late_applied.elapsed();
    let same_process = env.controllers[0].running() && env.controllers[0].pid() == controller_pid;
    assert!(
        same_process,
        "the controller process did not live through the kube-apiserver restart:\n{}",
        env.log_tail(60)
    );
    let probes = env.controllers[0].http_address("/readyz");
    eventually(
        Duration::from_secs(30),
        "the controller's /readyz to answer 200 after the kube-apiserver restart",
        || async { (http_get(&format!("http://{probes}/readyz")).0 == 200).then_some(()) },
    )
    .await;
    let up = env.aws.call_summary();
    let (users, keys) = assert_registered_once(&env, &objects, &hosts).await;
    let (hits_before_delete, access_keys) = env.secret_hits(&[]);

    // Deleting under the same faults leaves nothing.
    let uids = uids(&objects);
    let deleting = Instant::now();
    env.delete_all(&names).await;
    let to_deleted = deleting.elapsed();
    let all = env.aws.call_summary();
    env.aws.set_faults(Faults::none());
    let leftovers = env.leftovers(&uids, &names).await;
    let (hits_after, _) = env.secret_hits(&[]);
    let total = all.total();
    let controller_processes = env.controllers.len();
    let still_running = env.controllers[0].running();

    println!(
        "faults: {FAULT_OBJECTS} objects + {FAULT_LATE_OBJECTS} applied after the kube-apiserver \
         restart, {FAULT_DOWN_HOSTS} hosts down at first; {faults:?}"
    );
    println!(
        "  down hosts reported HostUnreachable by {:.1} s, then restarted; all Ready after {:.1} s; \
         deleted in {:.1} s",
        down_for.as_secs_f64(),
        to_ready.as_secs_f64(),
        to_deleted.as_secs_f64()
    );
    println!(
        "  kube-apiserver SIGKILLed at {:.1} s with {ready_at_kill} of {FAULT_OBJECTS} Ready, kept \
         down {APISERVER_DOWN:?}, unreachable {:.1} s; all Ready {:.1} s after the \
         {FAULT_LATE_OBJECTS} objects applied afterwards; controller processes: \
         {controller_processes} (pid {}, running {still_running})",
        killed_at.as_secs_f64(),
        outage.as_secs_f64(),
        late_to_ready.as_secs_f64(),
        controller_pid.unwrap_or_default()
    );
    println!("  calls until all Ready:\n{up}");
    println!("  calls with deletion:\n{all}");
    println!(
        "  IAM users {users}, access keys {keys}, secret access keys watched {access_keys}, \
         installer runs {:?}",
        hosts
            .iter()
            .map(SshHost::boot_registration_runs)
            .collect::<Vec<_>>()
    );
    let summary = Summary {
        test: "2 faults",
        objects: names.len(),
        faults: format!(
            "{} of {} AWS calls ({} throttled, {} 500, {} 503), {} latency spikes, {} hosts down, \
             kube-apiserver SIGKILLed mid-run (unreachable {:.1} s; same controller process, \
             {} objects applied after it)",
            total.injected(),
            total.calls,
            total.throttling,
            total.internal_failure,
            total.service_unavailable,
            total.latency_spikes,
            FAULT_DOWN_HOSTS,
            outage.as_secs_f64(),
            FAULT_LATE_OBJECTS
        ),
        secret_hits: hits_before_delete + hits_after,
        panics: env.panics(),
        leftovers: leftovers.len(),
        wall: started.elapsed(),
        ..Summary::default()
    };
    summary.print();
    assert!(total.throttling > 0 && total.internal_failure + total.service_unavailable > 0);
    assert_eq!(
        controller_processes, 1,
        "a second controller process was started"
    );
    assert!(
        still_running,
        "the controller exited:\n{}",
        env.log_tail(60)
    );
    assert_eq!(leftovers, Vec::<String>::new());
    assert_eq!(summary.secret_hits, 0);
    assert_eq!(summary.panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile and broken input (4. secrets are scanned here too)

/// A spec change: set (Some) or remove (None) the value at a JSON pointer.
type Edit = (&'static str, Option<Value>);

/// Sets or removes the value at `pointer` in `doc` (the parent must exist).
fn edit(doc: &mut Value, (pointer, value): &Edit) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let parent = doc.pointer_mut(parent).unwrap().as_object_mut().unwrap();
    match value {
        Some(v) => {
            parent.insert(last.to_owned(), v.clone());
        }
        None => {
            parent.remove(last);
        }
    }
}

const CANARY: &str = "/run/registrar-test-host/canary";

/// Spec cases the API server must refuse: (label, edit, field path its message must name).
fn refused_cases(stack: &str) -> Vec<(&'static str, Edit, &'static str)> {
    let touch = format!("$(touch {CANARY})");
    let semi = format!("x; touch {CANARY}");
    let huge = "a".repeat(10_000);
    let s = |v: &str| Some(json!(v));
    vec![
        ("stackId empty", ("/spec/stackId", s("")), "spec.stackId"),
        (
            "stackId shell",
            ("/spec/stackId", s(&touch)),
            "spec.stackId",
        ),
        (
            "stackId newline",
            ("/spec/stackId", s(&format!("{stack}\nx"))),
            "spec.stackId",
        ),
        (
            "stackId look-alike (Cyrillic a)",
            ("/spec/stackId", s(&look_alike(stack))),
            "spec.stackId",
        ),
        ("stackId huge", ("/spec/stackId", s(&huge)), "spec.stackId"),
        (
            "stackId wrong type",
            ("/spec/stackId", Some(json!(12345))),
            "spec.stackId",
        ),
        (
            "hostname shell",
            ("/spec/hostname", s(&semi)),
            "spec.hostname",
        ),
        (
            "hostname newline",
            ("/spec/hostname", s("web\ntouch")),
            "spec.hostname",
        ),
        (
            "hostname look-alike (Cyrillic e)",
            ("/spec/hostname", s("w\u{435}b-1")),
            "spec.hostname",
        ),
        (
            "hostname huge",
            ("/spec/hostname", s(&huge)),
            "spec.hostname",
        ),
        ("hostname empty", ("/spec/hostname", s("")), "spec.hostname"),
        (
            "hostname option-like",
            ("/spec/hostname", s("-rf")),
            "spec.hostname",
        ),
        ("target shell", ("/spec/target", s(&semi)), "spec.target"),
        ("target $()", ("/spec/target", s(&touch)), "spec.target"),
        (
            "target newline",
            ("/spec/target", s("127.0.9.1\ntouch x")),
            "spec.target",
        ),
        ("target empty", ("/spec/target", s("")), "spec.target"),
        ("target huge", ("/spec/target", s(&huge)), "spec.target"),
        (
            "target look-alike (fullwidth digits)",
            ("/spec/target", s("\u{ff11}27.0.9.1")),
            "spec.target",
        ),
        (
            "username shell",
            ("/spec/ssh/username", s(&semi)),
            "spec.ssh.username",
        ),
        (
            "username newline",
            ("/spec/ssh/username", s("root\ntouch")),
            "spec.ssh.username",
        ),
        (
            "username empty",
            ("/spec/ssh/username", s("")),
            "spec.ssh.username",
        ),
        (
            "username huge",
            ("/spec/ssh/username", s(&huge)),
            "spec.ssh.username",
        ),
        (
            "username look-alike (Cyrillic o)",
            ("/spec/ssh/username", s("r\u{43e}\u{43e}t")),
            "spec.ssh.username",
        ),
        (
            "username option",
            ("/spec/ssh/username", s("-oProxyCommand=touch")),
            "spec.ssh.username",
        ),
        (
            "address option",
            ("/spec/ssh/address", s("127.0.0.1 -oProxyCommand=x")),
            "spec.ssh.address",
        ),
        (
            "address $()",
            ("/spec/ssh/address", s(&touch)),
            "spec.ssh.address",
        ),
        (
            "address newline",
            ("/spec/ssh/address", s("127.0.0.1\nx")),
            "spec.ssh.address",
        ),
        (
            "port 0",
            ("/spec/ssh/port", Some(json!(0))),
            "spec.ssh.port",
        ),
        (
            "port 70000",
            ("/spec/ssh/port", Some(json!(70000))),
            "spec.ssh.port",
        ),
        (
            "port wrong type",
            ("/spec/ssh/port", s("22; touch x")),
            "spec.ssh.port",
        ),
        (
            "layerIds shell",
            ("/spec/layerIds", Some(json!([touch]))),
            "spec.layerIds",
        ),
        (
            "layerIds wrong type",
            ("/spec/layerIds", s("not-a-list")),
            "spec.layerIds",
        ),
        (
            "privateIp shell",
            ("/spec/privateIp", s("10.0.0.1; touch x")),
            "spec.privateIp",
        ),
        (
            "region shell",
            ("/spec/region", s("us-east-1; touch x")),
            "spec.region",
        ),
        (
            "infrastructureClass unknown",
            ("/spec/infrastructureClass", s("bare-metal")),
            "spec.infrastructureClass",
        ),
        (
            "deletionPolicy unknown",
            ("/spec/deletionPolicy", s("Destroy")),
            "spec.deletionPolicy",
        ),
        (
            "agentInstallerSha256 shell",
            ("/spec/agentInstallerSha256", s(&touch)),
            "spec.agentInstallerSha256",
        ),
        (
            "unknown field",
            ("/spec/preInstallCommand", s(&touch)),
            "spec.preInstallCommand",
        ),
        (
            "unknown ssh field",
            ("/spec/ssh/proxyCommand", s(&touch)),
            "spec.ssh.proxyCommand",
        ),
        (
            "secret in another namespace",
            ("/spec/ssh/privateKeySecretRef/namespace", s("kube-system")),
            "spec.ssh.privateKeySecretRef.namespace",
        ),
        (
            "secret name path",
            ("/spec/ssh/privateKeySecretRef/name", s("../kube-system/x")),
            "spec.ssh.privateKeySecretRef.name",
        ),
        (
            "secret name look-alike (Cyrillic e)",
            ("/spec/ssh/privateKeySecretRef/name", s("k\u{435}y")),
            "spec.ssh.privateKeySecretRef.name",
        ),
        (
            "secret key shell",
            ("/spec/ssh/privateKeySecretRef/key", s(&touch)),
            "spec.ssh.privateKeySecretRef.key",
        ),
        (
            "hostKeys newline",
            (
                "/spec/ssh/hostKeys",
                Some(json!(["ssh-ed25519 AAAA\nssh-ed25519 BBBB"])),
            ),
            "spec.ssh.hostKeys",
        ),
        (
            "Pinned without hostKeys",
            ("/spec/ssh/hostKeyPolicy", s("Pinned")),
            "spec.ssh.hostKeys",
        ),
        (
            "timeoutSeconds negative",
            ("/spec/ssh/timeoutSeconds", Some(json!(-1))),
            "spec.ssh.timeoutSeconds",
        ),
        ("ssh missing", ("/spec/ssh", None), "spec.ssh"),
        (
            "jump host address shell",
            ("/spec/ssh/jumpHosts", jump(json!({"address": touch}))),
            "spec.ssh.jumpHosts[0].address",
        ),
        (
            "jump host address option-like",
            (
                "/spec/ssh/jumpHosts",
                jump(json!({"address": format!("-oProxyCommand=touch {CANARY}")})),
            ),
            "spec.ssh.jumpHosts[0].address",
        ),
        (
            "jump host address newline",
            (
                "/spec/ssh/jumpHosts",
                jump(json!({"address": "bastion\n127.0.0.1"})),
            ),
            "spec.ssh.jumpHosts[0].address",
        ),
        (
            "jump host address huge",
            ("/spec/ssh/jumpHosts", jump(json!({"address": huge}))),
            "spec.ssh.jumpHosts[0].address",
        ),
        (
            "jump host username shell",
            ("/spec/ssh/jumpHosts", jump(json!({"username": semi}))),
            "spec.ssh.jumpHosts[0].username",
        ),
        (
            "jump host port out of range",
            ("/spec/ssh/jumpHosts", jump(json!({"port": 70000}))),
            "spec.ssh.jumpHosts[0].port",
        ),
        (
            "jump host key Secret name traversal",
            (
                "/spec/ssh/jumpHosts",
                jump(json!({"privateKeySecretRef": {"name": "../kube-system/key"}})),
            ),
            "spec.ssh.jumpHosts[0].privateKeySecretRef.name",
        ),
        (
            "jump host hostKeys newline",
            (
                "/spec/ssh/jumpHosts",
                jump(json!({"hostKeys": ["ssh-ed25519 AAAA\nssh-ed25519 BBBB"]})),
            ),
            "spec.ssh.jumpHosts[0].hostKeys[0]",
        ),
        (
            "jump host Pinned without hostKeys",
            (
                "/spec/ssh/jumpHosts",
                jump(json!({"hostKeyPolicy": "Pinned"})),
            ),
            "spec.ssh.jumpHosts[0].hostKeys",
        ),
        (
            "jump host unknown field",
            ("/spec/ssh/jumpHosts", jump(json!({"proxyCommand": touch}))),
            "spec.ssh.jumpHosts[0].proxyCommand",
        ),
        (
            "five jump hosts",
            (
                "/spec/ssh/jumpHosts",
                Some(json!(vec![
                    json!({"address": "bastion", "username": "j"});
                    5
                ])),
            ),
            "spec.ssh.jumpHosts",
        ),
    ]
}

/// A `jumpHosts` list of one well-formed jump host with `fields` set over its own.
fn jump(fields: Value) -> Option<Value> {
    let mut hop = json!({"address": "bastion.example", "username": "jump"});
    for (key, value) in fields.as_object().expect("an object") {
        hop[key] = value.clone();
    }
    Some(json!([hop]))
}

/// `id` with its first a, c, e or 0 replaced by the Cyrillic letter that looks the same.
fn look_alike(id: &str) -> String {
    let at = id.find(['a', 'c', 'e', '0']).expect("a look-alike letter");
    let twin = match &id[at..=at] {
        "a" => '\u{430}',
        "c" => '\u{441}',
        "e" => '\u{435}',
        _ => '\u{41e}',
    };
    format!("{}{twin}{}", &id[..at], &id[at + 1..])
}

/// A Secret content case: (label, type, data).
type SecretCase = (&'static str, &'static str, Vec<(&'static str, Vec<u8>)>);

/// The Secret content cases with the reason each must get, and the private keys among them
/// (what must never appear anywhere).
fn secret_cases(cp: &ControlPlane) -> (Vec<(SecretCase, &'static str)>, Vec<String>) {
    let (encrypted, _) = ssh_keypair("ed25519", "correct horse");
    let (dsa, _) = ssh_keypair("dsa", "");
    let (good, good_public) = ssh_keypair("ed25519", "");
    let x25519 = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "X25519"])
        .output()
        .expect("openssl genpkey")
        .stdout;
    let k = |v: &str| vec![("ssh-privatekey", v.as_bytes().to_vec())];
    let half = good[..good.len() / 2].to_owned();
    let mut huge = b"-----BEGIN OPENSSH PRIVATE KEY-----\n".to_vec();
    huge.extend(std::iter::repeat_n(b'A', 200_000));
    let private_keys = vec![
        encrypted.clone(),
        dsa.clone(),
        good.clone(),
        String::from_utf8_lossy(&x25519).into_owned(),
    ];
    let cases = vec![
        (
            ("secret empty value", "Opaque", k("")),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            (
                "secret huge value",
                "Opaque",
                vec![("ssh-privatekey", huge)],
            ),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            (
                "secret malformed PEM",
                SSH_AUTH,
                k(&format!(
                    "-----BEGIN OPENSSH PRIVATE KEY-----\n$(touch {CANARY})\n!!!\n-----END OPENSSH PRIVATE KEY-----\n"
                )),
            ),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            ("secret truncated key", SSH_AUTH, k(&half)),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            ("secret X.509 certificate", SSH_AUTH, k(&cp.ca_pem)),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            ("secret public key", SSH_AUTH, k(&good_public)),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            (
                "secret binary",
                "Opaque",
                vec![("ssh-privatekey", vec![0xff, 0xfe, 0x00, 0x9c, 0x80])],
            ),
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            ("secret encrypted, no passphrase", SSH_AUTH, k(&encrypted)),
            reasons::PASSPHRASE_REQUIRED,
        ),
        (
            (
                "secret encrypted, wrong passphrase",
                SSH_AUTH,
                vec![
                    ("ssh-privatekey", encrypted.as_bytes().to_vec()),
                    ("passphrase", b"wrong horse".to_vec()),
                ],
            ),
            reasons::WRONG_PASSPHRASE,
        ),
        (
            ("secret DSA key (wrong key type)", SSH_AUTH, k(&dsa)),
            reasons::UNSUPPORTED_KEY_TYPE,
        ),
        (
            (
                "secret X25519 key (wrong key type)",
                "Opaque",
                vec![("ssh-privatekey", x25519)],
            ),
            reasons::UNSUPPORTED_KEY_TYPE,
        ),
        (
            (
                "secret key under another name",
                "Opaque",
                vec![("id_ed25519", good.as_bytes().to_vec())],
            ),
            reasons::SECRET_KEY_MISSING,
        ),
        (
            (
                "secret of type kubernetes.io/tls",
                "kubernetes.io/tls",
                vec![
                    ("tls.crt", cp.ca_pem.as_bytes().to_vec()),
                    ("tls.key", good.as_bytes().to_vec()),
                    ("ssh-privatekey", good.as_bytes().to_vec()),
                ],
            ),
            reasons::SECRET_TYPE_INVALID,
        ),
    ];
    (cases, private_keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_input_is_refused_naming_the_field_or_reported_and_nothing_runs() {
    let started = Instant::now();
    let env = Env::new(shared_aws(), "rel-hostile", &[]).await;
    let victim = env.host("victim");
    let base = |name: &str, n: usize| -> Value {
        json!({
            "apiVersion": "registrar.dev/v1alpha1",
            "kind": "InstanceRegistration",
            "metadata": {"name": name, "namespace": env.ns},
            "spec": {
                "stackId": env.stack,
                "infrastructureClass": "on-premises",
                "target": format!("127.0.9.{n}"),
                "hostname": format!("h-{n}"),
                "ssh": {
                    "username": ssh_hosts::USER,
                    "privateKeySecretRef": {"name": "key"},
                    "address": victim.address().to_string(),
                    "port": victim.port(),
                }
            }
        })
    };
    let apply_strict = |doc: &Value| {
        env.cp.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--validate=strict",
                "--field-manager=reliability",
                "-f",
                "-",
            ],
            &doc.to_string(),
        )
    };
    let mut outcomes: Vec<(String, String)> = Vec::new();

    // Refused by the API server, naming the field.
    let refused = refused_cases(&env.stack);
    for (i, (label, change, field)) in refused.iter().enumerate() {
        let name = format!("bad-{i}");
        let mut doc = base(&name, i + 1);
        edit(&mut doc, change);
        let out = apply_strict(&doc);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{label}: accepted");
        assert!(
            stderr.contains(field),
            "{label}: the refusal does not name {field}: {stderr}"
        );
        assert!(env.api.get_opt(&name).await.unwrap().is_none(), "{label}");
        outcomes.push((label.to_string(), format!("API server: {field}")));
    }

    // The same for Systems Manager objects: the service block and its fields.
    let touch = format!("$(touch {CANARY})");
    let semi = format!("x; touch {CANARY}");
    let to_ssm = |doc: &mut Value, block: Value| {
        for change in [
            ("/spec/stackId", None),
            ("/spec/hostname", None),
            ("/spec/systemsManager", Some(block)),
        ] {
            edit(doc, &change);
        }
    };
    let ssm_refused: Vec<(&str, Value, &str)> = vec![
        (
            "SSM serviceRole shell",
            json!({"serviceRole": touch}),
            "spec.systemsManager.serviceRole",
        ),
        (
            "SSM serviceRole newline",
            json!({"serviceRole": "Role\nx"}),
            "spec.systemsManager.serviceRole",
        ),
        (
            "SSM serviceRole missing for on-premises",
            json!({"region": "us-east-1"}),
            "spec.systemsManager.serviceRole",
        ),
        (
            "SSM region shell",
            json!({"serviceRole": "R", "region": touch}),
            "spec.systemsManager.region",
        ),
        (
            "SSM defaultInstanceName shell",
            json!({"serviceRole": "R", "defaultInstanceName": semi}),
            "spec.systemsManager.defaultInstanceName",
        ),
        (
            "SSM tag value shell",
            json!({"serviceRole": "R", "tags": [{"key": "k", "value": touch}]}),
            "spec.systemsManager.tags[0].value",
        ),
        (
            "SSM tag key reserved",
            json!({"serviceRole": "R", "tags": [{"key": "registrar.dev/owner-uid", "value": "x"}]}),
            "spec.systemsManager.tags[0].key",
        ),
        (
            "SSM setup checksum shell",
            json!({"serviceRole": "R", "agentSetupSha256": touch}),
            "spec.systemsManager.agentSetupSha256",
        ),
        (
            "SSM activation lifetime huge",
            json!({"serviceRole": "R", "activationLifetimeMinutes": 10_000_000}),
            "spec.systemsManager.activationLifetimeMinutes",
        ),
    ];
    for (i, (label, block, field)) in ssm_refused.iter().enumerate() {
        let name = format!("bad-ssm-{i}");
        let mut doc = base(&name, 60 + i);
        to_ssm(&mut doc, block.clone());
        let out = apply_strict(&doc);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{label}: accepted");
        assert!(
            stderr.contains(field),
            "{label}: the refusal does not name {field}: {stderr}"
        );
        outcomes.push((label.to_string(), format!("API server: {field}")));
    }

    // Reported by the controller with a stable reason. (object name, reason's condition type,
    // reason, label)
    let mut reported: Vec<(String, &str, &str, String)> = Vec::new();
    let (cases, private_keys) = secret_cases(env.cp);
    let mut n = 100;
    for ((label, type_, data), reason) in cases {
        n += 1;
        let name = format!("secret-{n}");
        let data_refs: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        secret(&env.client, &env.ns, &name, type_, &data_refs).await;
        let mut doc = base(&name, n);
        edit(
            &mut doc,
            &("/spec/ssh/privateKeySecretRef/name", Some(json!(name))),
        );
        let out = apply_strict(&doc);
        assert!(out.status.success(), "{label}: {out:?}");
        reported.push((name, types::SSH_KEY_READY, reason, label.to_owned()));
    }
    let touch = format!("$(touch {CANARY})");
    let spec_reported: Vec<(&str, Vec<Edit>, &str, &str)> = vec![
        (
            "secret missing",
            vec![(
                "/spec/ssh/privateKeySecretRef/name",
                Some(json!("no-such-secret")),
            )],
            types::SSH_KEY_READY,
            reasons::SECRET_NOT_FOUND,
        ),
        (
            "stackId of no stack",
            vec![(
                "/spec/stackId",
                Some(json!("00000000-0000-4000-8000-000000000000")),
            )],
            types::STACK_RESOLVED,
            reasons::STACK_NOT_FOUND,
        ),
        (
            "ec2 target $() (a Name tag)",
            vec![
                ("/spec/infrastructureClass", Some(json!("ec2"))),
                ("/spec/target", Some(json!(touch))),
            ],
            types::TARGET_RESOLVED,
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "ec2 target look-alike (Cyrillic i)",
            vec![
                ("/spec/infrastructureClass", Some(json!("ec2"))),
                ("/spec/target", Some(json!("\u{456}-0123456789abcdef0"))),
            ],
            types::TARGET_RESOLVED,
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "username of nobody on the host",
            vec![("/spec/ssh/username", Some(json!("nobody_here")))],
            types::HOST_REACHABLE,
            reasons::SSH_AUTH_FAILED,
        ),
        (
            "port nobody listens on",
            vec![("/spec/ssh/port", Some(json!(1)))],
            types::HOST_REACHABLE,
            reasons::HOST_UNREACHABLE,
        ),
        (
            "jump host key Secret missing",
            vec![(
                "/spec/ssh/jumpHosts",
                jump(json!({"privateKeySecretRef": {"name": "no-such-secret"}})),
            )],
            types::SSH_KEY_READY,
            reasons::SECRET_NOT_FOUND,
        ),
        (
            "jump host nobody listens on",
            vec![(
                "/spec/ssh/jumpHosts",
                jump(json!({"address": "127.0.0.1", "port": 1})),
            )],
            types::HOST_REACHABLE,
            reasons::HOST_UNREACHABLE,
        ),
        (
            // The victim itself as the jump host: its sshd forwards nothing.
            "jump host that refuses forwarding",
            vec![(
                "/spec/ssh/jumpHosts",
                jump(json!({
                    "address": victim.address().to_string(),
                    "port": victim.port(),
                    "username": ssh_hosts::USER,
                })),
            )],
            types::HOST_REACHABLE,
            reasons::FORWARDING_REFUSED,
        ),
    ];
    // Systems Manager objects whose inputs are well formed and wrong.
    for (label, block, class, target, type_, reason) in [
        (
            "SSM service role of no role",
            json!({"serviceRole": "no-such-role"}),
            "on-premises",
            None,
            types::CREDENTIALS_READY,
            reasons::ROLE_NOT_FOUND,
        ),
        (
            "SSM ec2 target $() (a Name tag)",
            json!({}),
            "ec2",
            Some(touch.clone()),
            types::TARGET_RESOLVED,
            reasons::TARGET_NOT_FOUND,
        ),
    ] {
        n += 1;
        let name = format!("ssm-{n}");
        let mut doc = base(&name, n);
        to_ssm(&mut doc, block);
        edit(&mut doc, &("/spec/infrastructureClass", Some(json!(class))));
        if let Some(target) = target {
            edit(&mut doc, &("/spec/target", Some(json!(target))));
        }
        let out = apply_strict(&doc);
        assert!(out.status.success(), "{label}: {out:?}");
        reported.push((name, type_, reason, label.to_owned()));
    }
    for (label, changes, type_, reason) in spec_reported {
        n += 1;
        let name = format!("spec-{n}");
        let mut doc = base(&name, n);
        for change in &changes {
            edit(&mut doc, change);
        }
        let out = apply_strict(&doc);
        assert!(out.status.success(), "{label}: {out:?}");
        reported.push((name, type_, reason, label.to_owned()));
    }
    // Duplicate targets across objects: the same host written the same, in another case, with
    // a trailing dot. The first object was created earlier; every later one reports Conflict.
    let mut first = base("dup-first", 250);
    edit(
        &mut first,
        &("/spec/target", Some(json!("dup-host.example"))),
    );
    edit(
        &mut first,
        &(
            "/spec/ssh/privateKeySecretRef/name",
            Some(json!("no-such-secret")),
        ),
    );
    assert!(apply_strict(&first).status.success());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (i, (label, target)) in [
        ("duplicate target", "dup-host.example"),
        ("duplicate target, other case", "DUP-HOST.example"),
        ("duplicate target, trailing dot", "dup-host.example."),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("dup-later-{i}");
        let mut doc = base(&name, 251 + i);
        edit(&mut doc, &("/spec/target", Some(json!(target))));
        assert!(apply_strict(&doc).status.success(), "{label}");
        reported.push((
            name,
            types::TARGET_RESOLVED,
            reasons::CONFLICT,
            label.to_owned(),
        ));
    }

    for (name, type_, reason, label) in &reported {
        let names = [name.clone()];
        env.wait_all_within(
            CASE_PATIENCE,
            &names,
            &format!("{type_}={reason} ({label})"),
            |o| has(o, type_, reason),
        )
        .await;
        outcomes.push((label.clone(), format!("{type_}={reason}")));
    }

    // An EC2 instance whose Name tag is shell code resolves and installs as data, never code.
    let ec2_host = env.host("tagged");
    let tag = format!("{}-$(touch {CANARY});`touch {CANARY}`", env.ns);
    let (instance, _, _) = env.aws.run_instance(&tag, None).await;
    ec2_host.set_identity(&instance, support::aws::REGION);
    let mut doc = base("ec2-tagged", 240);
    edit(&mut doc, &("/spec/infrastructureClass", Some(json!("ec2"))));
    edit(&mut doc, &("/spec/target", Some(json!(tag))));
    edit(&mut doc, &("/spec/hostname", None));
    edit(
        &mut doc,
        &(
            "/spec/ssh/address",
            Some(json!(ec2_host.address().to_string())),
        ),
    );
    edit(&mut doc, &("/spec/ssh/port", Some(json!(ec2_host.port()))));
    assert!(apply_strict(&doc).status.success());
    // And a good object in the same namespace, after all of that, is served.
    let good_host = env.host("good");
    env.apply(
        &(on_premises(
            &env.ns,
            "good",
            &env.stack,
            &good_host.address().to_string(),
            "good-1",
            "key",
            "",
        ) + &ssh_via(&good_host)),
    );
    let good_names = ["ec2-tagged".to_owned(), "good".to_owned()];
    let served = env
        .wait_all(&good_names, "Ready", |o| {
            has(o, types::READY, reasons::SUCCEEDED)
        })
        .await;
    outcomes.push((
        "ec2 Name tag holding shell code".into(),
        "resolved and installed as data: Ready, no canary".into(),
    ));
    for host in [&victim, &ec2_host, &good_host] {
        assert!(
            !host.canary().exists(),
            "{}: the canary exists",
            host.name()
        );
    }
    let key_refs: Vec<&str> = private_keys.iter().map(String::as_str).collect();
    let (hits_before_delete, _) = env.secret_hits(&key_refs);

    // Everything goes away cleanly, hostile objects included.
    let all: Vec<InstanceRegistration> = env.objects().await;
    let all_names: Vec<String> = all.iter().filter_map(|o| o.metadata.name.clone()).collect();
    let uids = uids(&all);
    env.delete_all(&all_names).await;
    let leftovers = env.leftovers(&uids, &all_names).await;
    let (hits_after, _) = env.secret_hits(&key_refs);

    let by_api = refused.len();
    let by_reason = outcomes.len() - by_api;
    println!(
        "hostile input: {} cases ({by_api} refused by the API server naming the field, \
         {by_reason} reported with a stable reason or handled as data)",
        outcomes.len()
    );
    for (label, how) in &outcomes {
        println!("  {label:<40} -> {how}");
    }
    println!(
        "  the good objects served after them: {:?}",
        served
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect::<Vec<_>>()
    );
    let summary = Summary {
        test: "3 hostile input",
        objects: all_names.len(),
        bad_inputs: format!(
            "{} ({by_api} refused by the API server naming the field, {by_reason} stable reason or inert); canary never created",
            outcomes.len()
        ),
        secret_hits: hits_before_delete + hits_after,
        panics: env.panics(),
        leftovers: leftovers.len(),
        wall: started.elapsed(),
        ..Summary::default()
    };
    summary.print();
    assert!(outcomes.len() >= 40);
    assert_eq!(leftovers, Vec::<String>::new());
    assert_eq!(summary.secret_hits, 0);
    assert_eq!(summary.panics, 0);
}

// ---------------------------------------------------------------------------------------------
// 5. Isolation

/// Reads (get, list, watch) of Secrets in `namespace`, or across all namespaces, in the audit
/// log.
fn secret_reads(cp: &ControlPlane, namespace: &str) -> usize {
    let text = std::fs::read_to_string(&cp.audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| ["get", "list", "watch"].iter().any(|v| e["verb"] == *v))
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .filter(|e| {
            let ns = &e["objectRef"]["namespace"];
            ns == namespace || ns.is_null()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_no_secret_of_another_namespace_is_read_and_conflict_holds_under_concurrency() {
    let started = Instant::now();
    let env = Env::new(shared_aws(), "rel-iso", &[]).await;
    let other = namespace(&env.client, "rel-iso-other").await;
    let host = env.host("iso");
    // A usable key, authorized on the host, but in the other namespace only.
    let (elsewhere_key, elsewhere_public) = ssh_keypair("ed25519", "");
    host.authorize(&elsewhere_public);
    secret(
        &env.client,
        &other,
        "elsewhere",
        SSH_AUTH,
        &[("ssh-privatekey", elsewhere_key.as_bytes())],
    )
    .await;
    let reads_before = secret_reads(env.cp, &other);
    env.apply(
        &(on_premises(
            &env.ns,
            "borrower",
            &env.stack,
            &host.address().to_string(),
            "borrower-1",
            "elsewhere",
            "",
        ) + &ssh_via(&host)),
    );
    let borrower = env
        .wait_all(&["borrower".to_owned()], "SecretNotFound", |o| {
            has(o, types::SSH_KEY_READY, reasons::SECRET_NOT_FOUND)
        })
        .await;
    // Let the audit log catch up, then: reads of the name in the object's own namespace, none in
    // the other (nor across namespaces).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let own_reads = env
        .cp
        .audited(&env.ns, "secrets", None, &["get", "list", "watch"]);
    let other_reads = secret_reads(env.cp, &other) - reads_before;
    assert!(own_reads > 0, "the audit log shows no read at all");
    assert_eq!(other_reads, 0, "the other namespace's Secret was read");
    assert_eq!(
        host.sessions(),
        0,
        "no login with the other namespace's key"
    );
    assert_eq!(borrower[0].status.as_ref().unwrap().iam_user_name, None);

    // Conflict under concurrent creation: pairs naming one host, all in one apply.
    let hosts: Vec<SshHost> = (0..CONFLICT_PAIRS)
        .map(|i| env.host(&format!("pair{i}")))
        .collect();
    let mut yaml = String::new();
    let mut pairs = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let names = [format!("pair-{i}-a"), format!("pair-{i}-b")];
        for name in &names {
            yaml += "---\n";
            yaml += &(on_premises(
                &env.ns,
                name,
                &env.stack,
                &host.address().to_string(),
                &format!("pair-{i}"),
                "key",
                "",
            ) + &ssh_via(host));
        }
        pairs.push(names);
    }
    env.apply(&yaml);
    let all: Vec<String> = pairs.iter().flatten().cloned().collect();
    let settled = env
        .wait_all(&all, "Ready or Conflict", |o| {
            has(o, types::READY, reasons::SUCCEEDED)
                || has(o, types::TARGET_RESOLVED, reasons::CONFLICT)
        })
        .await;
    // Settled for a moment more: the loser must not go on, and the winner stays Ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled_again = env.objects().await;
    let mut winners = 0;
    let mut conflicts = 0;
    for (names, host) in pairs.iter().zip(&hosts) {
        let pair: Vec<&InstanceRegistration> = settled_again
            .iter()
            .filter(|o| names.contains(o.metadata.name.as_ref().unwrap()))
            .collect();
        let ready_ones: Vec<_> = pair.iter().filter(|o| ready(o)).collect();
        let conflicted: Vec<_> = pair
            .iter()
            .filter(|o| has(o, types::TARGET_RESOLVED, reasons::CONFLICT))
            .collect();
        assert_eq!(
            (ready_ones.len(), conflicted.len()),
            (1, 1),
            "{names:?}: {:?}",
            pair.iter().map(|o| describe(o)).collect::<Vec<_>>()
        );
        let loser = conflicted[0].status.as_ref().unwrap();
        assert!(
            loser.iam_user_name.is_none(),
            "{names:?}: the loser made an IAM user"
        );
        assert!(loser.opsworks_instance_id.is_none(), "{names:?}");
        assert_eq!(host.boot_registration_runs(), 1, "{names:?}");
        winners += 1;
        conflicts += 1;
    }
    let live = live_instances(env.aws, &env.stack);
    for i in 0..CONFLICT_PAIRS {
        assert_eq!(
            live.get(&format!("pair-{i}")).map(Vec::len),
            Some(1),
            "{live:?}"
        );
    }
    assert_eq!(settled.len(), 2 * CONFLICT_PAIRS);
    let (hits_before_delete, _) = env.secret_hits(&[&elsewhere_key]);

    let objects = env.objects().await;
    let names: Vec<String> = objects
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    let uids = uids(&objects);
    env.delete_all(&names).await;
    let leftovers = env.leftovers(&uids, &names).await;
    let (hits_after, _) = env.secret_hits(&[&elsewhere_key]);
    println!(
        "isolation: Secret only in namespace {other}: SecretNotFound; audited Secret reads: \
         {own_reads} in the object's namespace, {other_reads} in the other or cluster-wide"
    );
    println!(
        "  {CONFLICT_PAIRS} pairs naming one host each, in one apply: {winners} Ready, \
         {conflicts} Conflict, one registration and one installer run per host"
    );
    let summary = Summary {
        test: "5 isolation",
        objects: names.len(),
        bad_inputs: format!(
            "1 foreign Secret (SecretNotFound, 0 reads) + {CONFLICT_PAIRS} concurrent duplicate pairs (Conflict)"
        ),
        secret_hits: hits_before_delete + hits_after,
        panics: env.panics(),
        leftovers: leftovers.len(),
        wall: started.elapsed(),
        ..Summary::default()
    };
    summary.print();
    assert_eq!(leftovers, Vec::<String>::new());
    assert_eq!(summary.secret_hits, 0);
    assert_eq!(summary.panics, 0);
}
