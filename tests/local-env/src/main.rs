//! `local-env`: the local demo (`bash tests/demo.sh`, which runs `tests/setup.sh` and builds
//! first).
//!
//! It starts the local environment — the control plane, moto, the OpsWorks- and Systems
//! Manager-compatible endpoint (serving the agent installer and setup tool stand-ins) and four SSH
//! hosts on `127.0.0.x` — makes an OpsWorks stack `EC2Register`, two EC2 instance records in moto
//! for the hosts (one with an instance profile) and the Systems Manager service role, starts the
//! controller, applies `examples/local/*.yaml` with their placeholders
//! filled in, and shows `kubectl get ir -o wide` until every object is Ready. Then it says how to
//! look around and keeps everything running until it gets SIGINT (Ctrl-C) or SIGTERM
//! (`bash tests/demo.sh stop`); everything it started dies with it.
//!
//! Its files live in `$TMPDIR/instance-registrar-demo` (`/tmp/...`); a run starts by emptying
//! it. While one demo runs, another only says so (a lock in that directory).
//!
//! Only loopback addresses are used: every AWS endpoint the controller is given is on
//! 127.0.0.1, and every manifest's `ssh.address` is its host's 127.0.0.x address (checked before
//! anything is applied).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opsworks_endpoint::AgentInstaller;
use opsworks_endpoint::standin::StandIn;
use registrar_local_env::aws::{self, AwsEnv, REGION};
use registrar_local_env::control_plane::{ControlPlane, free_port, repo_root, spawn_logged};
use registrar_local_env::ssh_hosts::{self, SshHost};
use tokio::signal::unix::{SignalKind, signal};

/// The namespace the demo's objects live in (and the kubeconfig's default namespace).
const NAMESPACE: &str = "registrar-demo";
/// The Secret holding the demo's SSH private key.
const SECRET: &str = "demo-ssh-key";
/// The OpsWorks stack's name.
const STACK_NAME: &str = "EC2Register";
/// The IAM instance profile of the EC2 instance registered with it.
const INSTANCE_PROFILE: &str = "aws-opsworks-ec2-role";
/// The IAM service role of the Systems Manager activations.
const SSM_SERVICE_ROLE: &str = "SSMServiceRole";
/// How long the agent installer stand-in takes on a host (the real one took minutes).
const INSTALLER_RUN_TIME: Duration = Duration::from_secs(3);
/// The port the controller's metrics are served on, on 127.0.0.1, when it is free.
const METRICS_PORT: u16 = 8080;
/// The port of its health probes, likewise.
const PROBE_PORT: u16 = 8081;
/// After this long without every object Ready, the demo says so (and keeps running).
const READY_WITHIN: Duration = Duration::from_secs(180);
/// What the demo runs: `bash tests/demo.sh`, relative to the repository.
const DEMO_COMMAND: &str = "bash tests/demo.sh";

/// A sample host: its name (also its object's name and its OpsWorks hostname) and what it is.
struct Sample {
    name: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An EC2 instance registered with an IAM user.
    Ec2,
    /// An EC2 instance registered with its instance profile.
    Ec2InstanceProfile,
    /// An on-premises host.
    OnPremises,
    /// An on-premises host registered with Systems Manager.
    SsmOnPremises,
}

const SAMPLES: [Sample; 4] = [
    Sample {
        name: "web-1",
        kind: Kind::Ec2,
    },
    Sample {
        name: "worker-1",
        kind: Kind::Ec2InstanceProfile,
    },
    Sample {
        name: "db-1",
        kind: Kind::OnPremises,
    },
    Sample {
        name: "build-1",
        kind: Kind::SsmOnPremises,
    },
];

/// Set by the first SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

/// Why the demo ends early.
enum Halt {
    /// Asked to stop.
    Stopped,
    /// Something failed.
    Failed(String),
}

impl From<String> for Halt {
    fn from(e: String) -> Self {
        Halt::Failed(e)
    }
}

type Step<T = ()> = Result<T, Halt>;

fn check_stop() -> Step {
    if STOP.load(Ordering::SeqCst) {
        Err(Halt::Stopped)
    } else {
        Ok(())
    }
}

/// Sleeps `d`, or less if asked to stop.
async fn pause(d: Duration) -> Step {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        check_stop()?;
        tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
    }
    check_stop()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["run"] => {}
        ["-h" | "--help" | "help"] => {
            println!(
                "local-env: the instance-registrar demo. Run it as `{DEMO_COMMAND}`, which sets \
                 up the machine and builds first;\n`{DEMO_COMMAND} stop` (or Ctrl-C) stops it. \
                 Its files are in {}.",
                state_dir().display()
            );
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!(
                "usage: local-env [run]   (as `{DEMO_COMMAND}`; `{DEMO_COMMAND} stop` stops it)"
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("local-env: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `block_on` runs the demo on this, the main, thread: the processes it starts itself die
    // with it, that is with the process (their parent-death signal follows the thread that
    // started them).
    let code = runtime.block_on(run());
    // Dropping the runtime would wait for nothing useful; the processes die with us.
    std::process::exit(code)
}

/// The demo's directory: `$TMPDIR/instance-registrar-demo`.
fn state_dir() -> PathBuf {
    std::env::temp_dir().join("instance-registrar-demo")
}

async fn run() -> i32 {
    let dir = state_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("local-env: cannot create {}: {e}", dir.display());
        return 1;
    }
    // One demo at a time: the lock is held as long as this process lives (the descriptor is
    // close-on-exec, so no child holds it after we are gone).
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("local-env: cannot open {}: {e}", dir.join("lock").display());
            return 1;
        }
    };
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
        println!(
            "The demo is already running (pid {}); `{DEMO_COMMAND} stop` stops it.",
            pid.trim()
        );
        match std::fs::read_to_string(dir.join("look-around.txt")) {
            Ok(text) => print!("\n{text}"),
            Err(_) => println!("It is still starting: its files are in {}.", dir.display()),
        }
        return 0;
    }
    // A fresh start: whatever an earlier run left is removed.
    if let Err(e) = empty_dir_but(&dir, "lock") {
        eprintln!("local-env: cannot empty {}: {e}", dir.display());
        return 1;
    }
    let _ = std::fs::write(dir.join("pid"), format!("{}\n", std::process::id()));

    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            eprintln!("local-env: cannot handle signals");
            return 1;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if STOP.swap(true, Ordering::SeqCst) {
                eprintln!("local-env: stopping at once");
                std::process::exit(130);
            }
            eprintln!("\nlocal-env: stopping (Ctrl-C again to stop at once)...");
        }
    });

    let mut demo = Demo::default();
    let outcome = demo.run(&dir).await;
    let code = match outcome {
        Ok(()) | Err(Halt::Stopped) => 0,
        // Ctrl-C reaches the whole process group, so what we started may fail as it goes down.
        Err(Halt::Failed(_)) if STOP.load(Ordering::SeqCst) => 0,
        Err(Halt::Failed(e)) => {
            eprintln!("\nlocal-env: {e}");
            1
        }
    };
    demo.shut_down();
    let _ = std::fs::remove_file(dir.join("pid"));
    let _ = std::fs::remove_file(dir.join("look-around.txt"));
    println!(
        "local-env: stopped; its files stay in {} until the next run.",
        dir.display()
    );
    code
}

/// Removes everything in `dir` except the entry named `keep`.
fn empty_dir_but(dir: &Path, keep: &str) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == keep {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What the demo started, stopped in order by [`Demo::shut_down`].
#[derive(Default)]
struct Demo {
    started: Option<Instant>,
    controller: Option<Child>,
    hosts: Vec<SshHost>,
    /// The jump host in front of build-1 (see examples/local/ssm-on-premises.yaml).
    bastion: Option<SshHost>,
    aws: Option<AwsEnv>,
}

/// The host the demo reaches only through its jump host.
const BEHIND_BASTION: &str = "build-1";

/// What the hosts and their records are called, for the manifests and the summary.
struct HostFacts {
    name: &'static str,
    kind: Kind,
    address: Ipv4Addr,
    port: u16,
    host_key: String,
    instance_id: Option<String>,
}

impl Demo {
    /// Prints `what`, prefixed with the time since the start.
    fn say(&self, what: &str) {
        let t = self.started.map(|s| s.elapsed()).unwrap_or_default();
        println!("[{:>5.1}s] {what}", t.as_secs_f64());
        let _ = std::io::stdout().flush();
    }

    async fn run(&mut self, dir: &Path) -> Step {
        self.started = Some(Instant::now());
        println!(
            "instance-registrar demo: a Kubernetes API server, moto (IAM, EC2, STS), an \
             OpsWorks- and Systems Manager-compatible endpoint and four SSH hosts (one behind an SSH \
             jump host), all on loopback; files in {}",
            dir.display()
        );
        let controller_bin = controller_binary()?;
        // Found now, so that a missing build fails before anything starts.
        let standin = StandIn::built().run_time(INSTALLER_RUN_TIME);

        // The control plane takes longest: it starts on its own thread meanwhile.
        let cp_dir = dir.join("control-plane");
        let control_plane = std::thread::spawn(move || ControlPlane::start_for_process(cp_dir));

        let aws = aws::start(true);
        aws.opsworks
            .set_agent_installer(AgentInstaller::StandIn(standin));
        aws.opsworks.set_ssm_setup_run_time(INSTALLER_RUN_TIME);
        self.say(&format!(
            "moto (IAM, EC2, STS) at {}; OpsWorks- and Systems Manager-compatible endpoint at {}, \
             serving the agent installer and setup tool stand-ins ({}s per install)",
            aws.moto.url(),
            aws.opsworks.url(),
            INSTALLER_RUN_TIME.as_secs()
        ));
        self.aws = Some(aws);
        let aws = self.aws.as_ref().expect("just set");
        check_stop()?;

        // The demo's SSH key: its public half is authorized on every host, its private half
        // goes into the Secret the manifests name.
        let key_path = dir.join("ssh-key");
        let public_key =
            ssh_hosts::generate_key(&key_path, "ed25519", "", "instance-registrar-demo")?;
        for sample in &SAMPLES {
            let host = SshHost::start(sample.name);
            host.authorize(&public_key);
            self.hosts.push(host);
        }
        // A bastion: an sshd that forwards TCP connections (AllowTcpForwarding yes); the
        // controller reaches build-1 only through it.
        let bastion = SshHost::start_jump_host("bastion");
        bastion.authorize(&public_key);
        let bastion_facts = (bastion.address(), bastion.port(), bastion.host_key_line());
        self.bastion = Some(bastion);
        self.say(&format!(
            "SSH hosts (OpenSSH sshd, user {}): {}; jump host bastion at {}:{} in front of \
             {BEHIND_BASTION}",
            ssh_hosts::USER,
            self.hosts
                .iter()
                .map(|h| format!("{} at {}:{}", h.name(), h.address(), h.port()))
                .collect::<Vec<_>>()
                .join(", "),
            bastion_facts.0,
            bastion_facts.1,
        ));
        check_stop()?;

        let stack_id = aws.create_stack(STACK_NAME, None).await;
        self.say(&format!("OpsWorks stack {STACK_NAME}: {stack_id}"));
        aws.iam()
            .create_instance_profile()
            .instance_profile_name(INSTANCE_PROFILE)
            .send()
            .await
            .map_err(|e| format!("creating the instance profile: {e:?}"))?;
        aws.create_ssm_service_role(SSM_SERVICE_ROLE).await;
        self.say(&format!(
            "IAM role {SSM_SERVICE_ROLE} for Systems Manager activations (trusting ssm.amazonaws.com)"
        ));
        let mut facts = Vec::new();
        for (sample, host) in SAMPLES.iter().zip(&self.hosts) {
            let instance_id = match sample.kind {
                Kind::OnPremises | Kind::SsmOnPremises => None,
                Kind::Ec2 | Kind::Ec2InstanceProfile => {
                    let profile =
                        (sample.kind == Kind::Ec2InstanceProfile).then_some(INSTANCE_PROFILE);
                    let (id, _, _) = aws.try_run_instance(sample.name, None, profile).await?;
                    // The host's identity document names the record: that is what makes the
                    // sshd on loopback "be" this instance to the agent and to OpsWorks.
                    host.set_identity(&id, REGION);
                    Some(id)
                }
            };
            facts.push(HostFacts {
                name: sample.name,
                kind: sample.kind,
                address: host.address(),
                port: host.port(),
                host_key: host.host_key_line(),
                instance_id,
            });
        }
        self.say(&format!(
            "EC2 instance records in moto: {}",
            facts
                .iter()
                .filter_map(|f| {
                    let id = f.instance_id.as_ref()?;
                    Some(match f.kind {
                        Kind::Ec2InstanceProfile => {
                            format!("{} {id} (instance profile {INSTANCE_PROFILE})", f.name)
                        }
                        _ => format!("{} {id} (tag Name={})", f.name, f.name),
                    })
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        check_stop()?;

        while !control_plane.is_finished() {
            pause(Duration::from_millis(100)).await?;
        }
        let cp = control_plane
            .join()
            .map_err(|_| "starting the control plane panicked".to_owned())?
            .map_err(|e| format!("starting the control plane: {e}"))?;
        self.say(&format!(
            "Kubernetes API server at {}; CRD instanceregistrations.registrar.dev installed",
            cp.server
        ));
        check_stop()?;

        kubectl(&cp, &["create", "namespace", NAMESPACE])?;
        kubectl(
            &cp,
            &[
                "config",
                "set-context",
                "--current",
                "--namespace",
                NAMESPACE,
            ],
        )?;
        kubectl(
            &cp,
            &[
                "create",
                "secret",
                "generic",
                SECRET,
                "--type=kubernetes.io/ssh-auth",
                &format!("--from-file=ssh-privatekey={}", key_path.display()),
            ],
        )?;
        self.say(&format!(
            "namespace {NAMESPACE}, Secret {SECRET} (kubernetes.io/ssh-auth) with the SSH key"
        ));

        let log = dir.join("controller.log");
        let endpoints = self.start_controller(&cp, &controller_bin, &log)?;
        self.say(&format!(
            "controller started: instance-registrar run --watch-namespace {NAMESPACE} (log: {})",
            log.display()
        ));
        check_stop()?;

        let manifests = fill_manifests(dir, &stack_id, &facts, &bastion_facts)?;
        let manifest_dir = dir.join("manifests");
        let out = kubectl(&cp, &["apply", "-f", &manifest_dir.to_string_lossy()])?;
        let applied = Instant::now();
        self.say(&format!(
            "kubectl apply -f {} (examples/local/ filled in):\n{}",
            manifest_dir.display(),
            indent(out.trim_end())
        ));

        let mut last = String::new();
        let mut ready_at = None;
        let mut warned = false;
        loop {
            check_stop()?;
            self.check_controller(&log)?;
            let summary = kubectl(
                &cp,
                &[
                    "get",
                    "ir",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.status.phase} \
                     {.status.conditions[?(@.type==\"Ready\")].status} \
                     {.status.conditions[?(@.type==\"Ready\")].reason}{\"\\n\"}{end}",
                ],
            )
            .unwrap_or_default();
            if summary != last {
                last = summary.clone();
                let table = kubectl(&cp, &["get", "ir", "-o", "wide"]).unwrap_or_default();
                self.say(&format!(
                    "kubectl get ir -o wide\n{}",
                    indent(table.trim_end())
                ));
            }
            let ready = summary
                .lines()
                .filter(|l| l.split_whitespace().nth(2) == Some("True"))
                .count();
            if ready_at.is_none() && ready == manifests.len() && summary.lines().count() == ready {
                ready_at = Some(Instant::now());
                let text = self.look_around(&cp, &stack_id, &endpoints, &log, &manifest_dir);
                let started = self.started.unwrap_or(applied);
                println!(
                    "\nAll {} registrations are Ready: {:.0}s after apply, {:.0}s after the start.",
                    manifests.len(),
                    applied.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64()
                );
                println!("{}", self.world_summary(&stack_id).await);
                print!("\n{text}");
                let _ = std::io::stdout().flush();
                let _ = std::fs::write(dir.join("look-around.txt"), &text);
                println!("\nWatching for changes (Ctrl-C to stop)...");
            }
            if ready_at.is_none() && !warned && applied.elapsed() > READY_WITHIN {
                warned = true;
                let text = self.look_around(&cp, &stack_id, &endpoints, &log, &manifest_dir);
                println!(
                    "\nNot every registration is Ready after {}s: `kubectl describe ir` says why.\n\n{text}",
                    READY_WITHIN.as_secs()
                );
                let _ = std::fs::write(dir.join("look-around.txt"), &text);
            }
            // Once all is Ready, look less often: it only shows what changes from outside.
            pause(if ready_at.is_some() {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(1)
            })
            .await?;
        }
    }

    /// Starts `instance-registrar run` for the demo's namespace, its metrics and probes on
    /// loopback (8080 and 8081 when free); returns where it serves them.
    fn start_controller(
        &mut self,
        cp: &ControlPlane,
        binary: &Path,
        log: &Path,
    ) -> Step<Endpoints> {
        let metrics_port = port_or_free(METRICS_PORT)?;
        let probe_port = port_or_free(PROBE_PORT)?;
        let mut command = Command::new(binary);
        command
            .args(["run", "--watch-namespace", NAMESPACE])
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(["--probe-address", &format!("127.0.0.1:{probe_port}")])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("LOG_LEVEL", "info");
        let aws = self.aws.as_ref().expect("started before the controller");
        for (k, v) in aws.controller_env() {
            command.env(k, v);
        }
        self.controller = Some(spawn_logged(&mut command, log)?);
        Ok(Endpoints {
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            probes: format!("http://127.0.0.1:{probe_port}"),
        })
    }

    /// Fails if the controller has exited.
    fn check_controller(&mut self, log: &Path) -> Step {
        if let Some(child) = self.controller.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.controller = None;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            return Err(Halt::Failed(format!(
                "the controller exited ({status}); the end of {}:\n{}",
                log.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            )));
        }
        Ok(())
    }

    /// What happened on the AWS side, from the endpoint and moto.
    async fn world_summary(&self, stack_id: &str) -> String {
        let Some(aws) = &self.aws else {
            return String::new();
        };
        let mut text = format!("OpsWorks stack {STACK_NAME} ({stack_id}) now lists:\n");
        for i in aws
            .opsworks
            .instances()
            .into_iter()
            .filter(|i| i.stack_id == stack_id)
        {
            let _ = writeln!(
                text,
                "  {} {} {} ({}{})",
                i.instance_id,
                i.hostname,
                i.status,
                i.infrastructure_class,
                i.ec2_instance_id
                    .map(|e| format!(", EC2 {e}"))
                    .unwrap_or_default()
            );
        }
        let nodes = aws.opsworks.ssm_nodes();
        let _ = writeln!(
            text,
            "Systems Manager lists: {}",
            if nodes.is_empty() {
                "no node".to_owned()
            } else {
                nodes
                    .iter()
                    .map(|n| format!("{} {} ({})", n.instance_id, n.ping_status, n.resource_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        if let Some(bastion) = &self.bastion {
            let forwarded = bastion.forwarded_to();
            let _ = writeln!(
                text,
                "Jump host bastion forwarded {} connection{} (to {}), the controller's sessions \
                 with {BEHIND_BASTION}",
                forwarded.len(),
                if forwarded.len() == 1 { "" } else { "s" },
                forwarded.first().map(String::as_str).unwrap_or("nothing")
            );
        }
        let users = aws.iam_users("OpsWorks-").await;
        let _ = write!(
            text,
            "IAM users the controller made (path /AWS/OpsWorks/): {}",
            if users.is_empty() {
                "none".to_owned()
            } else {
                users
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        text
    }

    /// How to look around and how to stop, ready to paste.
    fn look_around(
        &self,
        cp: &ControlPlane,
        stack_id: &str,
        endpoints: &Endpoints,
        log: &Path,
        manifests: &Path,
    ) -> String {
        let aws = self.aws.as_ref().expect("started");
        let mut t = String::new();
        let _ = writeln!(t, "Look around, in another terminal:");
        let _ = writeln!(
            t,
            "  export KUBECONFIG={} PATH={}:$PATH",
            cp.kubeconfig.display(),
            cp.bin_dir.display()
        );
        let _ = writeln!(
            t,
            "  kubectl get ir -o wide                 # namespace {NAMESPACE} is the default"
        );
        let _ = writeln!(
            t,
            "  kubectl describe ir web-1              # conditions, status, events"
        );
        let _ = writeln!(t, "  kubectl get events --sort-by=.lastTimestamp");
        let _ = writeln!(t, "  kubectl explain instanceregistration.spec.ssh");
        let _ = writeln!(
            t,
            "  kubectl delete ir web-1                # deregisters it and deletes its IAM user"
        );
        let _ = writeln!(
            t,
            "  kubectl get ir build-1 -o jsonpath='{{.status.managedNodeId}}'   # its Systems Manager node"
        );
        let _ = writeln!(t, "  less {}", log.display());
        let _ = writeln!(t, "  curl -s {}", endpoints.metrics);
        let _ = writeln!(t, "  curl -s {}/readyz", endpoints.probes);
        let _ = writeln!(
            t,
            "The manifests applied: {}/ (from examples/local/)",
            manifests.display()
        );
        let _ = writeln!(
            t,
            "OpsWorks-compatible endpoint {} (stack {STACK_NAME} {stack_id}); moto {}",
            aws.opsworks.url(),
            aws.moto.url()
        );
        let _ = writeln!(
            t,
            "Stop: Ctrl-C where the demo runs, or `{DEMO_COMMAND} stop`."
        );
        t
    }

    /// Stops what the demo started: the controller (SIGTERM, so it shuts down as in a Pod), the
    /// SSH hosts with their sessions, moto and the endpoint. The control plane dies with the
    /// process.
    fn shut_down(&mut self) {
        if let Some(mut child) = self.controller.take() {
            // SAFETY: kill(2) on our own child's PID (setpriv execs the controller).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.hosts.clear();
        self.bastion = None;
        self.aws = None;
    }
}

/// Where the controller serves metrics (its URL) and probes (the base URL).
struct Endpoints {
    metrics: String,
    probes: String,
}

/// `port` on 127.0.0.1 if it is free, else a free one.
fn port_or_free(port: u16) -> Step<u16> {
    if TcpListener::bind(("127.0.0.1", port)).is_ok() {
        Ok(port)
    } else {
        Ok(free_port()?)
    }
}

/// The controller binary: `$INSTANCE_REGISTRAR_BIN`, else `instance-registrar` next to this
/// program (cargo builds them into the same directory).
fn controller_binary() -> Step<PathBuf> {
    if let Some(p) = std::env::var_os("INSTANCE_REGISTRAR_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let path = exe.with_file_name("instance-registrar");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Halt::Failed(format!(
            "{} is missing: run the demo as `{DEMO_COMMAND}`, which builds it",
            path.display()
        )))
    }
}

/// Runs kubectl against the demo's control plane; its stdout, or an error.
fn kubectl(cp: &ControlPlane, args: &[&str]) -> Step<String> {
    Ok(cp.kubectl_ok(args)?)
}

/// Fills in `examples/local/*.yaml` and writes them to `dir/manifests/`; returns their paths.
/// Refuses a manifest with a placeholder left, or whose `ssh.address` is not loopback.
/// Fills in examples/local/ into `dir`/manifests: the stack, the hosts' `facts`, and the jump
/// host's address, port and host key.
fn fill_manifests(
    dir: &Path,
    stack_id: &str,
    facts: &[HostFacts],
    bastion: &(Ipv4Addr, u16, String),
) -> Step<Vec<PathBuf>> {
    let mut values = BTreeMap::from([
        ("STACK_ID".to_owned(), stack_id.to_owned()),
        ("SSH_USER".to_owned(), ssh_hosts::USER.to_owned()),
        ("SSH_KEY_SECRET".to_owned(), SECRET.to_owned()),
        ("SSM_SERVICE_ROLE".to_owned(), SSM_SERVICE_ROLE.to_owned()),
        ("BASTION_ADDRESS".to_owned(), bastion.0.to_string()),
        ("BASTION_PORT".to_owned(), bastion.1.to_string()),
        ("BASTION_HOST_KEY".to_owned(), bastion.2.clone()),
    ]);
    for f in facts {
        let key = f.name.to_ascii_uppercase().replace('-', "_");
        values.insert(format!("{key}_ADDRESS"), f.address.to_string());
        values.insert(format!("{key}_PORT"), f.port.to_string());
        values.insert(format!("{key}_HOST_KEY"), f.host_key.clone());
        if let Some(id) = &f.instance_id {
            values.insert(format!("{key}_INSTANCE_ID"), id.clone());
        }
    }
    let source = repo_root().join("examples/local");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&source)
        .map_err(|e| format!("reading {}: {e}", source.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Halt::Failed(format!(
            "no manifests in {}",
            source.display()
        )));
    }
    let out_dir = dir.join("manifests");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    for path in names {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let filled = fill(&text, &values).map_err(|e| format!("{}: {e}", path.display()))?;
        check_loopback(&filled).map_err(|e| format!("{}: {e}", path.display()))?;
        let target = out_dir.join(path.file_name().expect("a file"));
        std::fs::write(&target, filled).map_err(|e| format!("{}: {e}", target.display()))?;
        written.push(target);
    }
    Ok(written)
}

/// `text` with every `${NAME}` replaced by its value; an unknown name is an error.
fn fill(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "a `${` without its `}`".to_owned())?;
        let name = &after[..end];
        let value = values
            .get(name)
            .ok_or_else(|| format!("unknown placeholder ${{{name}}}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks that every `address:` in a manifest (the host's, and each jump host's) is a loopback
/// IPv4 address, and that there is one: the demo never connects anywhere else.
fn check_loopback(manifest: &str) -> Result<(), String> {
    let mut seen = false;
    for line in manifest.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
        let Some(value) = line.strip_prefix("address:") else {
            continue;
        };
        let value = value
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        match value.parse::<Ipv4Addr>() {
            Ok(a) if a.is_loopback() => seen = true,
            _ => return Err(format!("ssh.address {value:?} is not a loopback address")),
        }
    }
    if seen {
        Ok(())
    } else {
        Err(
            "no ssh.address: the demo's manifests must connect to their host's loopback address"
                .into(),
        )
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Vec<HostFacts> {
        SAMPLES
            .iter()
            .enumerate()
            .map(|(i, s)| HostFacts {
                name: s.name,
                kind: s.kind,
                address: Ipv4Addr::new(127, 0, 0, 10 + i as u8),
                port: 2200 + i as u16,
                host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample".into(),
                instance_id: matches!(s.kind, Kind::Ec2 | Kind::Ec2InstanceProfile)
                    .then(|| format!("i-{i:017}")),
            })
            .collect()
    }

    #[test]
    fn every_example_fills_in_and_connects_to_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let written = fill_manifests(
            dir.path(),
            "stack-id",
            &facts(),
            &(
                Ipv4Addr::new(127, 0, 0, 9),
                2299,
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBastion".into(),
            ),
        )
        .unwrap_or_else(|e| match e {
            Halt::Failed(e) => panic!("{e}"),
            Halt::Stopped => unreachable!(),
        });
        assert_eq!(written.len(), SAMPLES.len());
        for path in written {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains("${"), "{}", path.display());
            assert!(
                text.contains("stackId: stack-id") || text.contains("systemsManager:"),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn an_unknown_placeholder_is_refused() {
        let values = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(fill("x: ${A} ${A}", &values).unwrap(), "x: 1 1");
        assert!(fill("x: ${B}", &values).is_err());
        assert!(fill("x: ${A", &values).is_err());
    }

    #[test]
    fn only_loopback_ssh_addresses_pass() {
        assert!(check_loopback("  ssh:\n    address: \"127.0.0.5\"\n").is_ok());
        assert!(check_loopback("  ssh:\n    address: 10.0.0.1\n").is_err());
        assert!(check_loopback("  ssh:\n    address: bastion.example.com\n").is_err());
        assert!(check_loopback("  ssh:\n    port: 22\n").is_err());
        // A jump host's address counts as much as the host's.
        let jump = "    address: \"127.0.0.5\"\n    jumpHosts:\n    - address: ";
        assert!(check_loopback(&format!("{jump}\"127.0.0.6\"\n")).is_ok());
        assert!(check_loopback(&format!("{jump}bastion.example.com\n")).is_err());
        assert!(check_loopback(&format!("{jump}10.0.0.1\n")).is_err());
    }
}
