//! The controller as the chart's Pods on real nodes: the image built from the project's
//! Dockerfile (tests/node/images.sh: a Debian base made with mmdebstrap, buildah, the debug binary
//! cargo built for the tests), imported into each node's containerd; `helm install` of the chart
//! with two replicas and leader election, on three nodes (kubelet and containerd, see
//! `registrar_local_env::node`), with kube-controller-manager and kube-scheduler beside the
//! control plane. Then, in order, on that one release: both Pods Running and Ready, one leader; an
//! OpsWorks and a Systems Manager registration Ready; the leader's container killed and its Pod
//! deleted, another replica (the standby or the replacement Pod) leading within the lease's duration plus 5 s, a new registration
//! Ready; `helm upgrade` rolling the Pods without two leaders writing at once (the audit log); the
//! container's root file system read-only and its user the chart's (from `/proc`); `helm
//! uninstall` ending the Pods within their grace period after SIGTERM, the registrations left
//! with their finalizers.
//!
//! What the chart is given beyond its defaults, and why: `hostNetwork: true` (the post-renderer
//! tests/node/host-network.sh: the chart has no such value) so that the Pods reach the loopback
//! services, with the controller's listen addresses on the Pod's IP (each node has its own, so
//! two replicas do not share a port);
//! `KUBERNETES_SERVICE_HOST`/`PORT` pointing at the API server (no kube-proxy serves the
//! `kubernetes` Service's ClusterIP here); the test AWS endpoints and credentials (IRSA's part in
//! a cluster).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use registrar_local_env::node::{Cluster, Images, tail};
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, apply, eventually, namespace, on_premises_at, serving_stand_in,
    ssh_key_secret,
};

/// The release's lease duration (the chart's default).
const LEASE_SECONDS: u64 = 15;
/// The chart's terminationGracePeriodSeconds default.
const GRACE_SECONDS: u64 = 60;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helm binary (tests/helm/build.sh, cached).
fn helm_binary() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("tests/helm/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running tests/helm/build.sh");
    assert!(out.status.success(), "tests/helm/build.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `command`, panicking with its output unless it succeeds; returns its stdout.
fn run_ok(what: &str, command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds the images (the debug binary of this test build) into `dir`; prints what
/// images.sh says of the controller's image.
fn build_images(dir: &Path) -> Images {
    let started = Instant::now();
    let report = run_ok(
        "tests/node/images.sh build",
        Command::new("bash")
            .arg(repo().join("tests/node/images.sh"))
            .arg("build")
            .arg(env!("CARGO_BIN_EXE_instance-registrar"))
            .arg(dir)
            .stderr(Stdio::inherit()),
    );
    eprintln!(
        "images built in {:.1}s:\n{report}",
        started.elapsed().as_secs_f64()
    );
    let env = std::fs::read_to_string(dir.join("images.env")).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in images.env"))
            .to_owned()
    };
    Images {
        pause: (dir.join("pause.tar"), var("PAUSE_IMAGE")),
        others: vec![dir.join("instance-registrar.tar")],
    }
}

/// The release: helm with its own home, the values file, the post-renderer.
struct Release {
    helm: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
    namespace: String,
    name: String,
    values: PathBuf,
    post_renderer: PathBuf,
}

impl Release {
    fn helm(&self, args: &[&str]) -> Output {
        Command::new(&self.helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace])
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .output()
            .expect("running helm")
    }

    /// `helm install` or `helm upgrade` with the values file and `sets`, waiting up to 5 minutes
    /// for the rollout.
    fn install_or_upgrade(&self, verb: &str, sets: &[&str]) -> Output {
        let chart = repo().join("charts/instance-registrar");
        let mut args = vec![
            verb,
            &self.name,
            chart.to_str().unwrap(),
            "--values",
            self.values.to_str().unwrap(),
            "--post-renderer",
            self.post_renderer.to_str().unwrap(),
            "--wait",
            "--timeout",
            "5m",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        self.helm(&args)
    }
}

fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until exactly `n` Pods of the release are Running and Ready, none other left; returns
/// them.
async fn wait_pods_ready(api: &Api<Pod>, n: usize, within: Duration, what: &str) -> Vec<Pod> {
    eventually(within, what, || async {
        let all = api
            .list(&ListParams::default().labels("app.kubernetes.io/name=instance-registrar"))
            .await
            .ok()?
            .items;
        (all.len() == n && all.iter().all(running_and_ready)).then_some(all)
    })
    .await
}

async fn lease_holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("instance-registrar")
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

/// The controller's log in `pod` (the kubelet's file of its container, on the node).
fn container_log(cluster: &Cluster, pod: &Pod) -> String {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let dir = cluster
        .node(&node)
        .unwrap()
        .dir
        .join("pod-logs")
        .join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap(),
            name(pod),
            pod.metadata.uid.as_deref().unwrap()
        ));
    let mut all = String::new();
    for e in std::fs::read_dir(dir.join("controller"))
        .into_iter()
        .flatten()
        .flatten()
    {
        all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    all
}

/// The controller's process in `pod`, from the node's cgroups: (host PID).
fn controller_pid(cluster: &Cluster, pod: &Pod) -> i32 {
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let node = cluster.node(&node).unwrap();
    let pids = node.pod_pids(pod.metadata.uid.as_deref().unwrap());
    let found: Vec<i32> = pids
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe.to_string_lossy().ends_with("/instance-registrar"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the controller's processes in {}: {found:?}",
        name(pod)
    );
    found[0]
}

/// The line of /proc/<pid>/status starting with `key:`, its value.
fn proc_status(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The audit log's writes (create, update, patch, delete) to InstanceRegistrations and their
/// status in `ns`, as (time, the Pod the ServiceAccount token was bound to).
fn writes_by_pod(cp: &ControlPlane, ns: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(&cp.audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            ["create", "update", "patch", "delete"]
                .iter()
                .any(|v| e["verb"] == *v)
        })
        .filter(|e| {
            e["objectRef"]["namespace"] == ns
                && e["objectRef"]["resource"] == "instanceregistrations"
        })
        .filter_map(|e| {
            let pod = e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()?
                .to_owned();
            Some((e["requestReceivedTimestamp"].as_str()?.to_owned(), pod))
        })
        .collect()
}

/// Asserts that the Pods' writes do not interleave: each Pod's writes, from its first to its last,
/// come before the next Pod's first. Returns the Pods in the order they wrote.
fn assert_no_overlapping_writers(writes: &[(String, String)]) -> Vec<String> {
    let mut writes = writes.to_vec();
    writes.sort();
    let mut order: Vec<String> = Vec::new();
    for (_, pod) in &writes {
        if order.last() != Some(pod) {
            assert!(
                !order.contains(pod),
                "{pod} wrote again after another Pod had written: two controllers acted at once: \
                 {writes:#?}"
            );
            order.push(pod.clone());
        }
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_nodes_elects_one_leader_fails_over_rolls_and_uninstalls() {
    let t0 = Instant::now();
    let cp = ControlPlane::private_for_pods("node").unwrap_or_else(|e| panic!("{e}"));
    let images = build_images(&cp.dir.join("images"));
    let t_images = t0.elapsed();
    let cluster = Cluster::start(&cp, 3, &images, Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("starting the nodes: {e}"));
    let t_nodes = t0.elapsed() - t_images;
    eprintln!(
        "nodes {:?} Ready after {:.1}s (images {:.1}s)",
        cluster.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        t_nodes.as_secs_f64(),
        t_images.as_secs_f64()
    );

    let aws = serving_stand_in(AwsEnv::shared(), Duration::from_secs(1));
    let client = cp.client().await;
    let ns = namespace(&client, "node").await;
    let (_, public_key) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&format!("{ns}-stack"), None).await;
    let role = format!("{ns}-ssm");
    aws.create_ssm_service_role(&role).await;

    // The release's values.
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<&str, String> = aws.controller_env().into_iter().collect();
    let api_port = cp.server.rsplit(':').next().unwrap().to_owned();
    let values = dir.path().join("values.yaml");
    let extra_env: Vec<serde_json::Value> = [
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("KUBERNETES_SERVICE_PORT", api_port),
        ("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"].clone()),
        (
            "AWS_SECRET_ACCESS_KEY",
            env["AWS_SECRET_ACCESS_KEY"].clone(),
        ),
        ("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL"].clone()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
    .collect();
    let values_json = serde_json::json!({
        "image": {"repository": "localhost/instance-registrar", "tag": "test", "pullPolicy": "Never"},
        "replicaCount": 2,
        "watchNamespace": ns,
        "leaderElection": {"enabled": true, "leaseDurationSeconds": LEASE_SECONDS},
        "log": {"level": "info,instance_registrar=debug"},
        "aws": {
            "region": env["AWS_REGION"],
            "endpoints": {
                "opsworks": env["AWS_ENDPOINT_URL_OPSWORKS"],
                "ssm": env["AWS_ENDPOINT_URL_SSM"],
                "iam": env["AWS_ENDPOINT_URL_IAM"],
                "ec2": env["AWS_ENDPOINT_URL_EC2"],
                "sts": env["AWS_ENDPOINT_URL_STS"],
            },
            "ssmSetupUrl": env[support::aws::SSM_SETUP_URL_ENV],
        },
        "extraEnv": extra_env,
    });
    // JSON is YAML.
    std::fs::write(&values, values_json.to_string()).unwrap();
    let post_renderer = repo().join("tests/node/host-network.sh");
    let release = Release {
        helm: helm_binary(),
        home: tempfile::tempdir().unwrap(),
        kubeconfig: cp.kubeconfig.clone(),
        namespace: ns.clone(),
        name: "registrar".into(),
        values,
        post_renderer,
    };
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let objects: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);

    // 1. helm install: both Pods Running and Ready, on two nodes; one leader.
    let started = Instant::now();
    let out = release.install_or_upgrade("install", &[]);
    assert!(
        out.status.success(),
        "helm install: {}\nkubelet logs:\n{}",
        text(&out),
        cluster
            .nodes
            .iter()
            .map(|n| tail(&n.dir.join("kubelet.log"), 20))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    let first = wait_pods_ready(&pods_api, 2, Duration::from_secs(120), "two Pods Ready").await;
    let t_install = started.elapsed();
    eprintln!(
        "helm install: 2 Pods Ready after {:.1}s",
        t_install.as_secs_f64()
    );
    let spec = first[0].spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let env = spec.containers[0].env.clone().unwrap_or_default();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("PROBE_ADDRESS").as_deref(), Some("$(POD_IP):8081"));
    let nodes: std::collections::BTreeSet<_> = first
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "both replicas on one node");
    let names: Vec<String> = first.iter().map(name).collect();
    let leader = eventually(Duration::from_secs(30), "a leader", || async {
        lease_holder(&leases).await.filter(|h| names.contains(h))
    })
    .await;
    let leader_pod = first.iter().find(|p| name(p) == leader).unwrap().clone();
    let standby_pod = first.iter().find(|p| name(p) != leader).unwrap().clone();
    eventually(
        Duration::from_secs(30),
        "the standby's log saying so",
        || async {
            container_log(&cluster, &standby_pod)
                .contains("another replica leads; waiting as a standby")
                .then_some(())
        },
    )
    .await;
    let standby_log = container_log(&cluster, &standby_pod);
    assert!(
        !standby_log.contains("acquired the leader lease"),
        "both replicas lead: {standby_log}"
    );
    assert!(container_log(&cluster, &leader_pod).contains("acquired the leader lease"));

    // 2. An OpsWorks and a Systems Manager registration go Ready.
    let opsworks_host = SshHost::start(&format!("{ns}-ow"));
    opsworks_host.authorize(&public_key);
    apply(
        &cp,
        &on_premises_at(
            &ns,
            "opsworks-1",
            &stack,
            &opsworks_host,
            "node-ow-1",
            "key",
        ),
    );
    let ssm_host = SshHost::start(&format!("{ns}-ssm"));
    ssm_host.authorize(&public_key);
    apply(&cp, &ssm_manifest(&ns, "ssm-1", &role, &ssm_host));
    for object in ["opsworks-1", "ssm-1"] {
        wait_ready(&objects, object, &cluster, &leader_pod).await;
    }

    // 3. The leader's container killed (SIGKILL, from the node) and its Pod deleted at once, so
    //    that it cannot come back under the same name: another replica leads within the lease's
    //    duration plus 5 s, and a new object goes Ready.
    let pid = controller_pid(&cluster, &leader_pod);
    let killed = Instant::now();
    // SAFETY: kill(2) on the PID just read from the Pod's cgroup.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    cp.kubectl_ok(&[
        "delete",
        "pod",
        &name(&leader_pod),
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])
    .unwrap();
    // The standby, or the ReplicaSet's replacement for the deleted Pod, whichever asks first
    // once the lease has expired: either is a replica that did not lead.
    let killed_name = name(&leader_pod);
    let successor = eventually(
        Duration::from_secs(LEASE_SECONDS + 5),
        "another replica leading",
        || async {
            let holder = lease_holder(&leases).await?;
            (holder != killed_name).then_some(holder)
        },
    )
    .await;
    eprintln!(
        "{successor} ({}) leads {:.1}s after the leader was killed (lease {LEASE_SECONDS}s)",
        if successor == name(&standby_pod) {
            "the standby"
        } else {
            "the replacement Pod"
        },
        killed.elapsed().as_secs_f64()
    );
    let successor_pod = pods_api.get(&successor).await.unwrap();
    let opsworks_host2 = SshHost::start(&format!("{ns}-ow2"));
    opsworks_host2.authorize(&public_key);
    apply(
        &cp,
        &on_premises_at(
            &ns,
            "opsworks-2",
            &stack,
            &opsworks_host2,
            "node-ow-2",
            "key",
        ),
    );
    wait_ready(&objects, "opsworks-2", &cluster, &successor_pod).await;
    let after_kill =
        wait_pods_ready(&pods_api, 2, Duration::from_secs(120), "a new second Pod").await;

    // 4. helm upgrade with a changed value: the Pods roll (new ones, one at a time), and the
    //    audit log shows no two Pods writing at once, a registration applied during the roll
    //    going Ready.
    let before_upgrade: Vec<String> = after_kill.iter().map(name).collect();
    let ssm_host2 = SshHost::start(&format!("{ns}-ssm2"));
    ssm_host2.authorize(&public_key);
    let upgrading = {
        let release_args = (
            release.helm.clone(),
            release.home.path().to_owned(),
            release.kubeconfig.clone(),
            ns.clone(),
            release.values.clone(),
            release.post_renderer.clone(),
        );
        std::thread::spawn(move || {
            let (helm, home, kubeconfig, ns, values, post_renderer) = release_args;
            let started = Instant::now();
            let out = Command::new(helm)
                .args(["upgrade", "registrar"])
                .arg(repo().join("charts/instance-registrar"))
                .arg("--values")
                .arg(values)
                .arg("--post-renderer")
                .arg(post_renderer)
                .args(["--set", "resyncSeconds=300", "--wait", "--timeout", "5m"])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--namespace", &ns])
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_DATA_HOME", home.join("data"))
                .output()
                .unwrap();
            (out, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    apply(&cp, &ssm_manifest(&ns, "ssm-2", &role, &ssm_host2));
    let (out, t_upgrade) = tokio::task::spawn_blocking(move || upgrading.join().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "helm upgrade: {}", text(&out));
    let rolled = wait_pods_ready(&pods_api, 2, Duration::from_secs(60), "two new Pods").await;
    eprintln!("helm upgrade: rolled in {:.1}s", t_upgrade.as_secs_f64());
    for pod in &rolled {
        assert!(
            !before_upgrade.contains(&name(pod)),
            "{} was not replaced",
            name(pod)
        );
        let env = &pod.spec.as_ref().unwrap().containers[0].env;
        assert!(
            env.iter()
                .flatten()
                .any(|e| e.name == "RESYNC_SECONDS" && e.value.as_deref() == Some("300")),
            "the new value did not reach {}",
            name(pod)
        );
    }
    let new_leader = eventually(
        Duration::from_secs(LEASE_SECONDS + 5),
        "a new leader",
        || async {
            let holder = lease_holder(&leases).await?;
            rolled.iter().any(|p| name(p) == holder).then_some(holder)
        },
    )
    .await;
    let new_leader_pod = rolled
        .iter()
        .find(|p| name(p) == new_leader)
        .unwrap()
        .clone();
    wait_ready(&objects, "ssm-2", &cluster, &new_leader_pod).await;
    // And one after the roll, which only the new leader can handle.
    let opsworks_host3 = SshHost::start(&format!("{ns}-ow3"));
    opsworks_host3.authorize(&public_key);
    apply(
        &cp,
        &on_premises_at(
            &ns,
            "opsworks-3",
            &stack,
            &opsworks_host3,
            "node-ow-3",
            "key",
        ),
    );
    wait_ready(&objects, "opsworks-3", &cluster, &new_leader_pod).await;
    let writers = assert_no_overlapping_writers(&writes_by_pod(&cp, &ns));
    eprintln!("the Pods that wrote, in turn: {writers:?}");
    assert!(writers.len() >= 3, "fewer Pods wrote than led: {writers:?}");
    assert_eq!(writers.first(), Some(&name(&leader_pod)));
    assert_eq!(writers.last(), Some(&new_leader));

    // 5. The container as the chart says: its root file system read-only, its user 65532, no
    //    capabilities, no new privileges (from /proc of its process on the node).
    for pod in &rolled {
        let pid = controller_pid(&cluster, pod);
        assert_eq!(proc_status(pid, "Uid"), "65532 65532 65532 65532");
        assert_eq!(proc_status(pid, "Gid"), "65532 65532 65532 65532");
        assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("no / in {mountinfo}"));
        let options = root.split_whitespace().nth(5).unwrap();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "the root file system is not read-only: {root}"
        );
        let log = container_log(&cluster, pod);
        assert!(
            !log.to_lowercase().contains("read-only file system"),
            "the controller tried to write to its root file system: {log}"
        );
    }

    // 6. helm uninstall: kubelet stops the containers with SIGTERM and the chart's grace period,
    //    they end well within it; the registrations stay, with their finalizers.
    let pids: Vec<i32> = rolled.iter().map(|p| controller_pid(&cluster, p)).collect();
    let started = Instant::now();
    let out = release.helm(&["uninstall", &release.name, "--wait", "--timeout", "3m"]);
    assert!(out.status.success(), "helm uninstall: {}", text(&out));
    eventually(
        Duration::from_secs(GRACE_SECONDS),
        "the controllers' processes gone",
        || async {
            pids.iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
                .then_some(())
        },
    )
    .await;
    let t_uninstall = started.elapsed();
    eprintln!(
        "helm uninstall: processes gone after {:.1}s",
        t_uninstall.as_secs_f64()
    );
    assert!(t_uninstall < Duration::from_secs(GRACE_SECONDS));
    for pod in &rolled {
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        // The controller exited by itself on SIGTERM (0), not killed at the end of the grace
        // period (137): kubelet's PLEG reports it within a relist or two.
        let container = pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .clone()
            .unwrap();
        let container = container.trim_start_matches("containerd://").to_owned();
        let finished = eventually(
            Duration::from_secs(10),
            "kubelet seeing the container end",
            || async {
                cluster
                    .node(&node)
                    .unwrap()
                    .kubelet_log()
                    .lines()
                    .find(|l| l.contains("container finished") && l.contains(&container))
                    .map(str::to_owned)
            },
        )
        .await;
        assert!(finished.contains("exitCode=0"), "{finished}");
        let kubelet = cluster.node(&node).unwrap().kubelet_log();
        assert!(
            kubelet
                .lines()
                .any(|l| l.contains("Killing container with a grace period")
                    && l.contains(&name(pod))
                    && l.contains(&format!("gracePeriod={GRACE_SECONDS}"))),
            "kubelet did not stop {} with the chart's grace period:\n{}",
            name(pod),
            tail(&cluster.node(&node).unwrap().dir.join("kubelet.log"), 30)
        );
    }
    for object in ["opsworks-1", "ssm-1", "opsworks-2", "ssm-2", "opsworks-3"] {
        let obj = objects.get(object).await.unwrap();
        assert!(
            !obj.metadata.finalizers.unwrap_or_default().is_empty(),
            "{object} lost its finalizer"
        );
        assert!(obj.metadata.deletion_timestamp.is_none());
    }
    eprintln!(
        "timings: images {:.1}s, nodes {:.1}s, install {:.1}s, upgrade {:.1}s, uninstall {:.1}s, all {:.1}s",
        t_images.as_secs_f64(),
        t_nodes.as_secs_f64(),
        t_install.as_secs_f64(),
        t_upgrade.as_secs_f64(),
        t_uninstall.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    drop(cluster);
}

fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits up to 90 s for `name` to be Ready (Succeeded); on timeout, the panic holds the
/// controller's log in `pod`.
async fn wait_ready(
    api: &Api<InstanceRegistration>,
    name_: &str,
    cluster: &Cluster,
    pod: &Pod,
) -> InstanceRegistration {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(obj) = api.get(name_).await
            && let Some((_, reason, generation)) = support::condition(&obj, types::READY)
            && reason == reasons::SUCCEEDED
            && Some(generation) == obj.metadata.generation
        {
            return obj;
        }
        if Instant::now() > deadline {
            let obj = api.get(name_).await.ok();
            panic!(
                "{name_} not Ready: {:#?}\ncontroller log ({}):\n{}",
                obj.and_then(|o| o.status),
                name(pod),
                tail_text(&container_log(cluster, pod), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A Systems Manager registration of `host` (on premises) with service role `role`.
fn ssm_manifest(ns: &str, name: &str, role: &str, host: &SshHost) -> String {
    format!(
        "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  systemsManager:
    serviceRole: {role}
    defaultInstanceName: {name}-node
  infrastructureClass: on-premises
  target: {address}
  ssh:
    username: {user}
    privateKeySecretRef:
      name: key
    port: {port}
",
        address = host.address(),
        user = support::ssh_hosts::USER,
        port = host.port(),
    )
}
