//! A real Kubernetes control plane: etcd and kube-apiserver on loopback ports, with TLS, token
//! authentication, RBAC and an audit log (so tests can count the writes the controller makes),
//! and the CRD installed. The tests start one per test binary ([`ControlPlane::shared`]); the
//! demo starts its own ([`ControlPlane::start_in`]).
//!
//! The binaries come from `KUBEBUILDER_ASSETS` when it is set, else from
//! `tests/control-plane/build.sh`, which builds them from their Go modules once and caches them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// Removes the files (etcd data, audit log, controller logs) of earlier test binaries whose
/// process is gone: a test run keeps its own for inspection, but they must not pile up run
/// after run until the disk is full.
fn remove_dirs_of_finished_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("instance-registrar-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use, with the CRD installed.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            remove_dirs_of_finished_runs();
            let dir = std::env::temp_dir()
                .join(format!("instance-registrar-test-{}", std::process::id()));
            ControlPlane::start_for_process(dir)
                .unwrap_or_else(|e| panic!("starting the control plane: {e}"))
        })
    }

    /// [`ControlPlane::start_in`] from a thread that lives as long as the process, so that the
    /// processes' parent-death signal fires only when the process exits (they die with it).
    pub fn start_for_process(dir: PathBuf) -> Result<ControlPlane, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let children = match ControlPlane::start_in(dir) {
                    Ok((cp, children)) => {
                        let _ = tx.send(Ok(cp));
                        children
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _keep = children;
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| format!("starting a thread: {e}"))?;
        rx.recv()
            .map_err(|_| "the control-plane thread ended".to_owned())?
    }

    /// Starts etcd and kube-apiserver with their files (certificates, data, logs, kubeconfig)
    /// in `dir`, installs the CRD, and returns once kubectl knows the kind. The processes die
    /// when the thread that called this ends (`setpriv --pdeathsig`); the caller keeps the
    /// children.
    pub fn start_in(dir: PathBuf) -> Result<(ControlPlane, Vec<Child>), String> {
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
        let etcd = spawn_logged(
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
        let apiserver = spawn_logged(
            Command::new(bin_dir.join("kube-apiserver")).args([
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
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", audit_log.display()),
                "--audit-log-format=json".into(),
                "--audit-log-mode=blocking".into(),
                format!("--cert-dir={}", dir.join("certs").display()),
            ]),
            &dir.join("kube-apiserver.log"),
        )?;

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
        };
        cp.wait_ready(Duration::from_secs(90))?;
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
        Ok((cp, vec![etcd, apiserver]))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready after {timeout:?}: {}\nsee {}",
                    String::from_utf8_lossy(&out.stderr),
                    self.dir.join("kube-apiserver.log").display()
                ));
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
    let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
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
