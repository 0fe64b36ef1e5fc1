//! A real Kubernetes control plane: etcd and kube-apiserver on loopback ports, with TLS, token
//! authentication, RBAC and an audit log (so tests can count the writes the controller makes),
//! and the CRD installed. The tests start one per test binary ([`ControlPlane::shared`]), and a
//! test that disturbs it starts its own ([`ControlPlane::private`]); the demo starts its own
//! ([`ControlPlane::start_for_process`]). One started by `start_for_process` can have its
//! kube-apiserver crash and come back ([`ControlPlane::restart_apiserver`]).
//!
//! The binaries come from `KUBEBUILDER_ASSETS` when it is set, else from
//! `tests/control-plane/build.sh`, which builds them from their Go modules once and caches them.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The bearer token of the test administrator (group system:masters). Test-only.
const ADMIN_TOKEN: &str = "instance-registrar-test-admin-token";

/// A running etcd + kube-apiserver.
pub struct ControlPlane {
    /// Where certificates, data, logs and the kubeconfig live.
    pub dir: PathBuf,
    /// Directory with kube-apiserver, etcd and kubectl.
    pub bin_dir: PathBuf,
    /// kubeconfig for the administrator.
    pub kubeconfig: PathBuf,
    /// The API server's audit log (JSON lines).
    pub audit_log: PathBuf,
    /// https://127.0.0.1:port
    pub server: String,
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
    /// Asks the thread that keeps the processes to restart kube-apiserver (only when started by
    /// [`ControlPlane::start_for_process`]).
    restarts: Option<mpsc::Sender<Restart>>,
}

/// A request to the control-plane thread: SIGKILL kube-apiserver, keep it down for `down`, start
/// it again; the reply is when it was killed.
struct Restart {
    down: Duration,
    reply: mpsc::Sender<Result<Instant, String>>,
}

/// The processes of a control plane, kept by the thread that started them (their parent-death
/// signal is tied to it).
struct Processes {
    etcd: Child,
    apiserver: Child,
    /// kube-apiserver's command line, kept to start it again exactly the same way.
    apiserver_command: Command,
    apiserver_log: PathBuf,
}

impl Processes {
    /// Kills kube-apiserver with SIGKILL, waits `down`, and starts it again with the same
    /// command line (its log goes on in the same file). Returns when it was killed.
    fn restart_apiserver(&mut self, down: Duration) -> Result<Instant, String> {
        // setpriv execs kube-apiserver, so the child is kube-apiserver itself.
        self.apiserver
            .kill()
            .map_err(|e| format!("killing kube-apiserver: {e}"))?;
        let _ = self.apiserver.wait();
        let killed = Instant::now();
        std::thread::sleep(down);
        let mut log = File::options()
            .append(true)
            .open(&self.apiserver_log)
            .map_err(|e| format!("{}: {e}", self.apiserver_log.display()))?;
        let _ = writeln!(
            log,
            "--- killed with SIGKILL and started again {down:?} later ---"
        );
        self.apiserver = spawn_into(&mut self.apiserver_command, log)?;
        Ok(killed)
    }
}

/// Why a control plane did not start: etcd or kube-apiserver exited at once (worth another try
/// on other ports), or anything else.
enum StartError {
    Exited(String),
    Failed(String),
}

impl From<String> for StartError {
    fn from(why: String) -> Self {
        StartError::Failed(why)
    }
}

impl From<&str> for StartError {
    fn from(why: &str) -> Self {
        StartError::Failed(why.to_owned())
    }
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// Removes the files (etcd data, audit log, controller logs) of earlier test binaries whose
/// process is gone (`instance-registrar-test-<pid>` and `instance-registrar-test-<pid>-<name>`):
/// a test run keeps its own for inspection, but they must not pile up run after run until the
/// disk is full.
fn remove_dirs_of_finished_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("instance-registrar-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The directory of a test binary's control plane: `instance-registrar-test-<pid>` in the
/// temporary directory, or `instance-registrar-test-<pid>-<name>`; a later test binary removes it
/// once this process is gone. Removes those of finished runs first.
fn test_dir(name: Option<&str>) -> PathBuf {
    remove_dirs_of_finished_runs();
    let dir = match name {
        None => format!("instance-registrar-test-{}", std::process::id()),
        Some(name) => format!("instance-registrar-test-{}-{name}", std::process::id()),
    };
    std::env::temp_dir().join(dir)
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use, with the CRD installed.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            ControlPlane::start_for_process(test_dir(None))
                .unwrap_or_else(|e| panic!("starting the control plane: {e}"))
        })
    }

    /// Another control plane of this test binary, for a test that disturbs it (restarts its
    /// kube-apiserver, say) while the other tests go on with the shared one; its files are in
    /// `instance-registrar-test-<pid>-<name>`.
    pub fn private(name: &str) -> Result<ControlPlane, String> {
        ControlPlane::start_for_process(test_dir(Some(name)))
    }

    /// A private control plane (as [`ControlPlane::private`]) whose API server gives Pods their
    /// ServiceAccount's token (the `ServiceAccount` admission plugin, which the others leave
    /// out: they run no Pods), for the tests that run Pods on a node ([`crate::node`]).
    pub fn private_for_pods(name: &str) -> Result<ControlPlane, String> {
        ControlPlane::start_for_process_with(test_dir(Some(name)), true)
    }

    /// [`ControlPlane::start_in`] from a thread that lives as long as the process, so that the
    /// processes' parent-death signal fires only when the process exits (they die with it).
    /// That thread also serves [`ControlPlane::restart_apiserver`], so that a restarted
    /// kube-apiserver is its child too.
    pub fn start_for_process(dir: PathBuf) -> Result<ControlPlane, String> {
        ControlPlane::start_for_process_with(dir, false)
    }

    fn start_for_process_with(dir: PathBuf, pods: bool) -> Result<ControlPlane, String> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let (restarts, requests) = mpsc::channel::<Restart>();
                let mut processes = match ControlPlane::launch(dir, pods) {
                    Ok((mut cp, processes)) => {
                        cp.restarts = Some(restarts);
                        let _ = tx.send(Ok(cp));
                        processes
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // Until the ControlPlane is dropped (never, for the tests' statics).
                for Restart { down, reply } in requests {
                    let _ = reply.send(processes.restart_apiserver(down));
                }
                // The processes stay until the process exits, as they always did.
                let _keep = processes;
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| format!("starting a thread: {e}"))?;
        rx.recv()
            .map_err(|_| "the control-plane thread ended".to_owned())?
    }

    /// Kills kube-apiserver with SIGKILL (as a crash would), keeps it down for `down`, starts it
    /// again with the same command line (same port, certificates and etcd, so resourceVersions
    /// stay valid) and waits until `/readyz` answers. Returns how long it was unreachable (from
    /// the kill to the first good `/readyz`). Only for a control plane started by
    /// [`ControlPlane::start_for_process`]; blocks the calling thread.
    pub fn restart_apiserver(&self, down: Duration) -> Result<Duration, String> {
        let restarts = self.restarts.as_ref().ok_or(
            "this control plane was not started by start_for_process: nothing can restart it",
        )?;
        let (reply, replied) = mpsc::channel();
        restarts
            .send(Restart { down, reply })
            .map_err(|_| "the control-plane thread ended".to_owned())?;
        let killed = replied
            .recv()
            .map_err(|_| "the control-plane thread ended".to_owned())??;
        self.wait_ready(Duration::from_secs(90))?;
        Ok(killed.elapsed())
    }

    /// Starts etcd and kube-apiserver with their files (certificates, data, logs, kubeconfig)
    /// in `dir`, installs the CRD, and returns once kubectl knows the kind. The processes die
    /// when the thread that called this ends (`setpriv --pdeathsig`); the caller keeps the
    /// children.
    pub fn start_in(dir: PathBuf) -> Result<(ControlPlane, Vec<Child>), String> {
        let (cp, processes) = ControlPlane::launch(dir, false)?;
        Ok((cp, vec![processes.etcd, processes.apiserver]))
    }

    /// [`ControlPlane::start_in`], keeping kube-apiserver's command line to restart it. The
    /// ports [`free_port`] chooses are not reserved: when etcd or kube-apiserver exits at once
    /// (another server of the tests bound one of them meanwhile), it starts afresh on others.
    fn launch(dir: PathBuf, pods: bool) -> Result<(ControlPlane, Processes), String> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match ControlPlane::launch_once(dir.clone(), pods) {
                Ok(started) => return Ok(started),
                Err(StartError::Exited(why)) if attempt < ATTEMPTS => {
                    eprintln!(
                        "control plane in {}: {why}; starting it again on other ports",
                        dir.display()
                    );
                    let _ = std::fs::remove_dir_all(dir.join("etcd"));
                    attempt += 1;
                }
                Err(StartError::Exited(why) | StartError::Failed(why)) => return Err(why),
            }
        }
    }

    fn launch_once(dir: PathBuf, pods: bool) -> Result<(ControlPlane, Processes), StartError> {
        let t0 = Instant::now();
        let bin_dir = binaries()?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

        // Certificates: a CA, the serving certificate for 127.0.0.1, the service account key.
        let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "instance-registrar test CA");
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let issuer = Issuer::new(ca_params, ca_key);
        let serving_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut serving_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(|e| e.to_string())?;
        serving_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .map_err(|e| e.to_string())?;
        let sa_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let write = |name: &str, content: &str| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let ca_pem = ca_cert.pem();
        let ca_file = write("ca.crt", &ca_pem)?;
        let cert_file = write("apiserver.crt", &serving_cert.pem())?;
        let key_file = write("apiserver.key", &serving_key.serialize_pem())?;
        let sa_pub = write("sa.pub", &sa_key.public_key_pem())?;
        let sa_priv = write("sa.key", &sa_key.serialize_pem())?;
        let tokens = write(
            "tokens.csv",
            &format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"),
        )?;
        let audit_policy = write(
            "audit-policy.yaml",
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  resources:\n  - group: registrar.dev\n    resources: [\"instanceregistrations\", \"instanceregistrations/status\"]\n\
             - level: Metadata\n  resources:\n  - group: \"\"\n    resources: [\"secrets\"]\n\
             - level: None\n",
        )?;
        let audit_log = dir.join("audit.log");

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = spawn_logged(
            Command::new(bin_dir.join("etcd")).args([
                "--data-dir",
                &dir.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                "4294967296",
                "--log-level",
                "warn",
            ]),
            &dir.join("etcd.log"),
        )?;
        let mut apiserver_command = Command::new(bin_dir.join("kube-apiserver"));
        apiserver_command.args([
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", cert_file.display()),
            format!("--tls-private-key-file={}", key_file.display()),
            format!("--client-ca-file={}", ca_file.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_priv.display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            if pods {
                "--enable-admission-plugins=ServiceAccount".into()
            } else {
                "--disable-admission-plugins=ServiceAccount".into()
            },
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            format!("--cert-dir={}", dir.join("certs").display()),
        ]);
        let apiserver_log = dir.join("kube-apiserver.log");
        let mut apiserver = spawn_logged(&mut apiserver_command, &apiserver_log)?;

        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n",
                ca = ca_file.display()
            ),
        )?;
        let cp = ControlPlane {
            dir,
            bin_dir,
            kubeconfig,
            audit_log,
            server,
            ca_pem,
            restarts: None,
        };
        let gone = [("etcd", &mut etcd), ("kube-apiserver", &mut apiserver)];
        if let Err(e) = cp.wait_ready_while_running(Duration::from_secs(90), gone) {
            let _ = etcd.kill();
            let _ = apiserver.kill();
            let _ = etcd.wait();
            let _ = apiserver.wait();
            return Err(e);
        }
        let crd = repo_root().join("crds/instanceregistration.yaml");
        cp.kubectl_ok(&["apply", "--server-side", "-f", &crd.to_string_lossy()])?;
        cp.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/instanceregistrations.registrar.dev",
        ])?;
        // kubectl caches API discovery (taken before the CRD existed, by `apply`), and the API
        // server publishes the CRD's OpenAPI schema a moment after it is Established: drop the
        // cache and wait until `kubectl explain` knows the kind, so no test sees either gap.
        let _ = std::fs::remove_dir_all(cp.dir.join("kube-cache"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cp
            .kubectl(&["explain", "instanceregistration.spec"])
            .status
            .success()
        {
            if Instant::now() > deadline {
                return Err("kubectl explain does not know InstanceRegistration after 60s".into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "control plane up at {} in {:.1}s (binaries {}, files {})",
            cp.server,
            t0.elapsed().as_secs_f64(),
            cp.bin_dir.display(),
            cp.dir.display()
        );
        let processes = Processes {
            etcd,
            apiserver,
            apiserver_command,
            apiserver_log,
        };
        Ok((cp, processes))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        match self.wait_ready_while_running(timeout, []) {
            Ok(()) => Ok(()),
            Err(StartError::Exited(why) | StartError::Failed(why)) => Err(why),
        }
    }

    /// Waits until kube-apiserver answers `/readyz`; fails at once when one of `processes`
    /// (named) exits.
    fn wait_ready_while_running<const N: usize>(
        &self,
        timeout: Duration,
        mut processes: [(&str, &mut Child); N],
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, process) in &mut processes {
                if let Ok(Some(status)) = process.try_wait() {
                    return Err(StartError::Exited(format!(
                        "{name} exited ({status}): see {}",
                        self.dir.join(format!("{name}.log")).display()
                    )));
                }
            }
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "kube-apiserver not ready after {timeout:?}: {}\nsee {}",
                    String::from_utf8_lossy(&out.stderr),
                    self.dir.join("kube-apiserver.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs kubectl against this control plane.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin_dir.join("kubectl"))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kube-cache").display()
            ))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(self.bin_dir.join("kubectl"))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kube-cache").display()
            ))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.kubectl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A client for the administrator.
    pub async fn client(&self) -> kube::Client {
        // The controller's TLS provider (rustls with aws-lc-rs), as its binary installs it.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Audit log entries (complete requests) for `resource` (optionally a subresource) in
    /// `namespace` with one of `verbs`.
    pub fn audited(
        &self,
        namespace: &str,
        resource: &str,
        subresource: Option<&str>,
        verbs: &[&str],
    ) -> usize {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .filter(|e| verbs.iter().any(|v| e["verb"] == *v))
            .filter(|e| {
                let r = &e["objectRef"];
                r["namespace"] == namespace
                    && r["resource"] == resource
                    && r["subresource"].as_str() == subresource
            })
            .count()
    }
}

/// The repository's root directory (this crate is `tests/local-env` in it).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("tests/local-env is two levels below the repository root")
        .to_owned()
}

/// The directory holding kube-apiserver, etcd and kubectl.
fn binaries() -> Result<PathBuf, String> {
    let script = repo_root().join("tests/control-plane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts `command` with its output in `log`, killed when the thread that started it ends.
pub fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child, String> {
    let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    spawn_into(command, file)
}

/// Starts `command` with its output in `file`, killed when the thread that started it ends.
fn spawn_into(command: &mut Command, file: File) -> Result<Child, String> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = command
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut wrapped = Command::new("setpriv");
    wrapped
        .arg("--pdeathsig")
        .arg("KILL")
        .arg("--")
        .arg(&program)
        .args(&args);
    for (k, v) in envs {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.to_string_lossy()))
}
