//! Kubernetes nodes beside a control plane, for the tests that run the controller as the chart's
//! Pods (`tests/node.rs`): kube-controller-manager and kube-scheduler (Deployments, ReplicaSets,
//! scheduling, the `kube-root-ca.crt` ConfigMaps), and per node a containerd and a kubelet,
//! everything under the control plane's directory.
//!
//! No registry is reachable: the images (the pause image and the controller's) are made by
//! `tests/node/images.sh` and imported into each node's containerd. Pods run with `hostNetwork`,
//! which is what reaches the loopback services (API server, moto, the endpoint, the SSH test
//! hosts); containerd still needs a network configuration to call its network ready, so a bridge
//! configuration is written, and never used (no CNI plugin runs, no interface nor iptables rule is
//! made).
//!
//! What stays on this machine, and how it goes away:
//! - each node's containerd, its shims and containers, and its kubelet run in a PID and mount
//!   namespace of their own, whose first process (`run.sh`) is killed with the test process
//!   (`setpriv --pdeathsig`, `unshare --kill-child`): the kernel then kills every process in the
//!   namespace, and their mounts (container root file systems, volumes) go with it, even when the
//!   test panics or is killed; the paths kubelet uses whatever its `--root-dir`
//!   (`/var/log/containers`, `/var/lib/kubelet/device-plugins`) are a tmpfs of each node's own,
//!   mounted there, so two nodes never share them (their empty mount points stay);
//! - each node has an address of its own on `lo` (198.18.0.0/15, the benchmarking range; the
//!   kubelet refuses a loopback node address), labelled with the test's PID, and a cgroup root of
//!   its own (`/instance-registrar-test-<pid>-<node>` in each cgroup v1 hierarchy): both removed
//!   by [`Cluster`]'s drop, and those of finished test processes at the next start;
//! - kubelet sets `vm.overcommit_memory`, `kernel.panic` and `kernel.panic_on_oops` (it refuses
//!   to start with `protectKernelDefaults` when they differ from its values): the values before
//!   are put back by the drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control_plane::{ControlPlane, free_port, repo_root, spawn_logged};

/// The kernel settings kubelet changes, put back afterwards.
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// kube-controller-manager, kube-scheduler and the nodes. Dropping it stops them all and removes
/// what they left outside their directories.
pub struct Cluster {
    /// kubelet, kube-controller-manager and kube-scheduler.
    pub bin_dir: PathBuf,
    pub nodes: Vec<Node>,
    controllers: Vec<Child>,
    sysctls: Vec<(String, String)>,
}

/// One node: a containerd and a kubelet in namespaces of their own.
pub struct Node {
    /// The Node's name.
    pub name: String,
    /// Its address (on `lo`): the kubelet's, and its `hostNetwork` Pods' `status.podIP`.
    pub ip: String,
    /// Its files: configurations, logs (`containerd.log`, `kubelet.log`, `run.log`), state.
    pub dir: PathBuf,
    /// containerd's socket (for `ctr --address`).
    pub socket: PathBuf,
    /// The kubelet's cgroup root (the same path in each cgroup v1 hierarchy).
    pub cgroup_root: String,
    runner: Option<Child>,
}

/// The node binaries' directory (`tests/control-plane/build.sh --node`, cached).
pub fn binaries() -> Result<PathBuf, String> {
    let script = repo_root().join("tests/control-plane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--node")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} --node failed", script.display()));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The images a node imports: docker-archive files made by `tests/node/images.sh build`.
#[derive(Debug, Clone)]
pub struct Images {
    /// The pause image's archive and name (containerd's sandbox image).
    pub pause: (PathBuf, String),
    /// More archives to import.
    pub others: Vec<PathBuf>,
}

/// The cgroup hierarchies mounted (v1, and the v2 one of a hybrid layout): their directories.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Makes `root` in every hierarchy (cpuset's with its parent's CPUs and memory nodes).
fn make_cgroup(root: &str) -> Result<(), String> {
    for h in cgroup_hierarchies() {
        let dir = h.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(file)) {
                let _ = std::fs::write(dir.join(file), v.trim());
            }
        }
    }
    Ok(())
}

/// Kills what is left in `root` (in every hierarchy) and removes its cgroups, deepest first.
fn remove_cgroup(root: &str) {
    fn dirs(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs(&e.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for h in cgroup_hierarchies() {
        let top = h.join(root.trim_start_matches('/'));
        if !top.exists() {
            continue;
        }
        let mut all = Vec::new();
        dirs(&top, &mut all);
        for dir in all {
            loop {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) with a PID read from the cgroup, no memory involved.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The `lo` address labels (`lo:r<pid>n<i>`) and addresses this module added.
fn lo_addresses() -> Vec<(String, String)> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = f.iter().position(|w| *w == "inet")?;
            let label = f.iter().find(|w| w.starts_with("lo:r"))?;
            Some((label.to_string(), f.get(at + 1)?.to_string()))
        })
        .collect()
}

fn remove_lo_address(address: &str) {
    let _ = Command::new("ip")
        .args(["addr", "del", address, "dev", "lo"])
        .stderr(Stdio::null())
        .status();
}

/// Removes what the nodes of finished test processes left: cgroups and `lo` addresses.
fn remove_leftovers() {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
    };
    for h in cgroup_hierarchies() {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("instance-registrar-test-")
                && rest.split('-').next().is_some_and(dead)
            {
                remove_cgroup(&format!("/{name}"));
            }
        }
    }
    for (label, address) in lo_addresses() {
        let pid = label
            .trim_start_matches("lo:r")
            .split('n')
            .next()
            .unwrap_or("");
        if dead(pid) {
            remove_lo_address(&address);
        }
    }
}

fn read_sysctls() -> Vec<(String, String)> {
    KUBELET_SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = std::fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
            Some(((*k).to_owned(), v.trim().to_owned()))
        })
        .collect()
}

impl Cluster {
    /// Starts kube-controller-manager and kube-scheduler against `cp` (which must be
    /// [`ControlPlane::private_for_pods`]), and `nodes` nodes with `images` imported, and waits
    /// until every node is `Ready` (at most `timeout`).
    pub fn start(
        cp: &ControlPlane,
        nodes: usize,
        images: &Images,
        timeout: Duration,
    ) -> Result<Cluster, String> {
        remove_leftovers();
        let bin_dir = binaries()?;
        let mut cluster = Cluster {
            bin_dir: bin_dir.clone(),
            nodes: Vec::new(),
            controllers: Vec::new(),
            sysctls: read_sysctls(),
        };
        let kubeconfig = cp.kubeconfig.to_string_lossy().into_owned();
        let kcm = spawn_logged(
            Command::new(bin_dir.join("kube-controller-manager")).args([
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", cp.dir.join("kcm-certs").display()),
                format!("--root-ca-file={}", cp.dir.join("ca.crt").display()),
                format!(
                    "--service-account-private-key-file={}",
                    cp.dir.join("sa.key").display()
                ),
                "--controllers=*".into(),
                // A node whose kubelet stops is NotReady after this long.
                "--node-monitor-grace-period=20s".into(),
            ]),
            &cp.dir.join("kube-controller-manager.log"),
        )?;
        cluster.controllers.push(kcm);
        let scheduler = spawn_logged(
            Command::new(bin_dir.join("kube-scheduler")).args([
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", cp.dir.join("scheduler-certs").display()),
            ]),
            &cp.dir.join("kube-scheduler.log"),
        )?;
        cluster.controllers.push(scheduler);
        for i in 0..nodes {
            let node = Node::start(cp, &bin_dir, i, images)?;
            cluster.nodes.push(node);
        }
        let deadline = Instant::now() + timeout;
        for node in &mut cluster.nodes {
            node.wait_ready(cp, deadline)?;
        }
        Ok(cluster)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for c in &mut self.controllers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (key, value) in &self.sysctls {
            let _ = std::fs::write(format!("/proc/sys/{key}"), value);
        }
    }
}

impl Node {
    fn start(cp: &ControlPlane, bin_dir: &Path, i: usize, images: &Images) -> Result<Node, String> {
        let pid = std::process::id();
        let name = format!("node-{i}");
        let dir = cp.dir.join(&name);
        std::fs::create_dir_all(dir.join("cni")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let ip = format!("198.18.{}.{}", pid % 250, i + 2);
        let label = format!("lo:r{pid}n{i}");
        let cgroup_root = format!("/instance-registrar-test-{pid}-{name}");
        let mut node = Node {
            name: name.clone(),
            ip: ip.clone(),
            dir: dir.clone(),
            socket: socket.clone(),
            cgroup_root: cgroup_root.clone(),
            runner: None,
        };
        let added = Command::new("ip")
            .args([
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "lo",
                "label",
                &label,
            ])
            .output()
            .map_err(|e| format!("ip addr add: {e}"))?;
        if !added.status.success() {
            return Err(format!(
                "ip addr add {ip}/32 dev lo: {}",
                String::from_utf8_lossy(&added.stderr)
            ));
        }
        make_cgroup(&cgroup_root)?;

        let d = dir.display();
        let write = |file: &str, text: String| -> Result<PathBuf, String> {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        write(
            "containerd.toml",
            format!(
                r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Without CAP_SYS_RESOURCE, runc cannot lower a container's oom_score_adj below its own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni"
"#,
                socket = socket.display(),
                pause = images.pause.1,
            ),
        )?;
        // Never used (every Pod here has hostNetwork): containerd calls the network ready only
        // once it has loaded a configuration.
        write(
            "cni/10-unused.conflist",
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "unused-{name}", "plugins": [{{"type": "bridge", "bridge": "irt{pid}{i}", "ipMasq": false, "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.255.{i}.0/24"}}]]}}}}]}}
"#
            ),
        )?;
        let kubelet_port = free_port()?;
        let healthz_port = free_port()?;
        let config = write(
            "kubelet.yaml",
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here: kubelet 1.35 refuses it unless told.
failCgroupV1: false
# PID 1 is not systemd.
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{socket}
address: {ip}
port: {kubelet_port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {d}/pod-logs
failSwapOn: false
localStorageCapacityIsolation: false
kernelMemcgNotification: false
protectKernelDefaults: false
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 20
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
shutdownGracePeriod: 0s
"#,
                socket = socket.display(),
            ),
        )?;
        let kubelet = bin_dir.join("kubelet");
        let mut imports = vec![images.pause.0.clone()];
        imports.extend(images.others.iter().cloned());
        let imports: Vec<String> = imports
            .iter()
            .map(|p| shell_quote(&p.to_string_lossy()))
            .collect();
        let q = |p: &Path| shell_quote(&p.to_string_lossy());
        let run = write(
            "run.sh",
            format!(
                r#"#!/bin/sh
# PID 1 of node {name}'s PID and mount namespaces (instance-registrar tests): when it dies, the
# kernel kills containerd, its shims and containers, and kubelet, and their mounts go away.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
dir={dir}
sock={sock}
now() {{ date +%s.%N; }}
echo "$(now) starting containerd"
# kubelet links each container's log here: in this namespace only.
mkdir -p /var/log/containers && mount -t tmpfs -o mode=0755,size=4m none /var/log/containers
# kubelet's device-plugin socket and checkpoint have a fixed path, not under --root-dir: without a
# directory of its own per node, two kubelets starting together remove each other's socket and
# one fails with "bind: address already in use".
mkdir -p /var/lib/kubelet/device-plugins &&
  mount -t tmpfs -o mode=0750,size=1m none /var/lib/kubelet/device-plugins
containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
i=0
until ctr --address "$sock" version >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 600 ]; then echo "containerd did not start: see $dir/containerd.log"; exit 1; fi
  sleep 0.1
done
echo "$(now) containerd is up"
for image in {imports}; do
  ctr --address "$sock" -n k8s.io images import "$image" || exit 1
  echo "$(now) imported $image"
done
echo "$(now) starting kubelet"
{kubelet} --config={config} --kubeconfig={kubeconfig} --root-dir="$dir/kubelet" \
  --cert-dir="$dir/kubelet-certs" --hostname-override={name} --node-ip={ip} --v=2 \
  >"$dir/kubelet.log" 2>&1 &
wait
"#,
                dir = q(&dir),
                sock = q(&socket),
                imports = imports.join(" "),
                kubelet = q(&kubelet),
                config = q(&config),
                kubeconfig = q(&cp.kubeconfig),
            ),
        )?;
        let runner = spawn_logged(
            Command::new("unshare")
                .args([
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount",
                    "--propagation",
                    "private",
                    "--mount-proc",
                    "--",
                    "sh",
                ])
                .arg(&run),
            &dir.join("run.log"),
        )?;
        node.runner = Some(runner);
        Ok(node)
    }

    fn wait_ready(&mut self, cp: &ControlPlane, deadline: Instant) -> Result<(), String> {
        loop {
            let ready = cp
                .kubectl(&[
                    "get",
                    "node",
                    &self.name,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
                ])
                .stdout;
            if ready == b"True" {
                return Ok(());
            }
            if let Some(runner) = self.runner.as_mut()
                && let Ok(Some(status)) = runner.try_wait()
            {
                return Err(format!(
                    "node {}: its namespace's first process exited ({status}): {}\nsee {}",
                    self.name,
                    std::fs::read_to_string(self.dir.join("run.log")).unwrap_or_default(),
                    self.dir.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {} not Ready in time: {}\nrun.log:\n{}\nkubelet.log (end):\n{}",
                    self.name,
                    String::from_utf8_lossy(&ready),
                    std::fs::read_to_string(self.dir.join("run.log")).unwrap_or_default(),
                    tail(&self.dir.join("kubelet.log"), 40),
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs `ctr` against this node's containerd, in the `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("running ctr")
    }

    /// The kubelet's log so far.
    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default()
    }

    /// The host PIDs of the processes in this node's cgroups whose pod UID is `pod_uid`
    /// (`<root>/kubepods/<qos>/pod<uid>/<container>`, memory hierarchy), sandboxes included.
    pub fn pod_pids(&self, pod_uid: &str) -> Vec<i32> {
        fn walk(dir: &Path, want: &str, inside: bool, out: &mut Vec<i32>) {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            let inside = inside || name == format!("pod{want}");
            if inside {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                out.extend(
                    procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), want, inside, out);
                }
            }
        }
        let mut out = Vec::new();
        let top = Path::new("/sys/fs/cgroup/memory").join(self.cgroup_root.trim_start_matches('/'));
        walk(&top, pod_uid, false, &mut out);
        out
    }

    fn stop(&mut self) {
        if let Some(mut runner) = self.runner.take() {
            // setpriv execs unshare, whose --kill-child kills the namespace's first process.
            let _ = runner.kill();
            let _ = runner.wait();
        }
        remove_cgroup(&self.cgroup_root);
        remove_lo_address(&format!("{}/32", self.ip));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s` quoted for the POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
