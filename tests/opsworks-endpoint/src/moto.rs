//! Starting moto's server (`moto_server`, the AWS mock the endpoint checks IAM and EC2 against)
//! on a free loopback port.
//!
//! `tests/setup.sh` installs `moto[server]` (pinned) into a venv at
//! `${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}/python`;
//! the environment variable `MOTO_SERVER` may name another `moto_server` executable.
//!
//! The server runs as `setpriv --pdeathsig KILL -- moto_server ...`, so it dies with the thread
//! that started it. That thread is one [`MotoServer`] starts for the purpose and keeps until the
//! server is dropped, so a `MotoServer` may be started from any thread (a test's thread ends
//! with the test) and lives exactly as long as the value. [`MotoServer::shared`] gives one server
//! for the whole process, never dropped: it dies with the process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name and document of the AWS managed policy `AWSOpsWorksInstanceRegistration` as AWS
/// published it. moto's list of AWS managed policies lacks it (the service closed);
/// [`MotoOptions::opsworks_managed_policy`] adds it.
pub const OPSWORKS_REGISTRATION_POLICY: (&str, &str) = (
    "AWSOpsWorksInstanceRegistration",
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["opsworks:DescribeStackProvisioningParameters","opsworks:DescribeStacks","opsworks:RegisterInstance"],"Resource":["*"]}]}"#,
);

/// How to start moto.
#[derive(Debug, Clone, Default)]
pub struct MotoOptions {
    /// Make `arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration` exist (moto then loads
    /// that AWS managed policy, and only that one), so that attaching it succeeds as it did on
    /// AWS. Without it, attaching it fails with `NoSuchEntity`, as it does on moto.
    pub opsworks_managed_policy: bool,
    /// Extra environment for the server, e.g. `("MOTO_EC2_LOAD_DEFAULT_AMIS", "true")`
    /// (which is `false` unless set here or in the test's environment, to keep moto light).
    pub env: Vec<(String, String)>,
}

/// A running moto server. Dropping it kills the server.
pub struct MotoServer {
    url: String,
    port: u16,
    log: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("url", &self.url)
            .finish()
    }
}

/// The cache directory of the test setup:
/// `${INSTANCE_REGISTRAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/instance-registrar}`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INSTANCE_REGISTRAR_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("instance-registrar")
}

/// Where `tests/setup.sh` puts the OpsWorks service model of botocore 1.34.0
/// (`service-2.json`, `waiters-2.json`, `paginators-1.json`).
pub fn opsworks_model_dir() -> PathBuf {
    cache_dir().join("botocore-1.34.0/opsworks/2013-02-18")
}

fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Whether an HTTP server answers on `addr`.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /moto-api/config HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/"
}

impl MotoServer {
    /// The `moto_server` executable: `$MOTO_SERVER`, else the test setup's venv.
    pub fn executable() -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let p = cache_dir().join("python/bin/moto_server");
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "moto_server not found at {}: run tests/setup.sh (or set MOTO_SERVER)",
                p.display()
            ))
        }
    }

    /// Starts moto with default options and waits until it answers.
    pub fn start() -> Result<MotoServer, String> {
        Self::start_with(MotoOptions::default())
    }

    /// One moto server for the whole process, started on first use with
    /// [`MotoOptions::opsworks_managed_policy`] set; it dies with the process.
    pub fn shared() -> Result<&'static MotoServer, String> {
        static SHARED: OnceLock<Result<MotoServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                MotoServer::start_with(MotoOptions {
                    opsworks_managed_policy: true,
                    ..MotoOptions::default()
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts moto with `options` and waits (up to 60 s) until it answers.
    pub fn start_with(options: MotoOptions) -> Result<MotoServer, String> {
        let exe = Self::executable()?;
        let port = free_port()?;
        let log =
            std::env::temp_dir().join(format!("moto-server-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;

        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]);
        if options.opsworks_managed_policy {
            // Run moto's server from its interpreter, with the policy added to the AWS managed
            // policies moto loads (and only it, which keeps start-up fast).
            let python = interpreter(&exe)?;
            let (name, document) = OPSWORKS_REGISTRATION_POLICY;
            let script = format!(
                "import json, sys\n\
                 import moto.iam.models as m\n\
                 m.aws_managed_policies_data = json.dumps({{{name:?}: {{\n\
                 \"CreateDate\": \"2016-11-28T19:58:37+00:00\", \"DefaultVersionId\": \"v1\",\n\
                 \"Path\": \"/\", \"UpdateDate\": \"2016-11-28T19:58:37+00:00\",\n\
                 \"Document\": json.loads({document:?})}}}})\n\
                 from moto.server import main\n\
                 sys.argv[0] = 'moto_server'\n\
                 sys.exit(main())\n"
            );
            cmd.arg(python).arg("-c").arg(script);
            cmd.env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true");
        } else {
            cmd.arg(&exe);
        }
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if std::env::var_os("MOTO_EC2_LOAD_DEFAULT_AMIS").is_none() {
            cmd.env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false");
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err));

        // The keeper thread spawns the child (so that pdeathsig follows that thread) and kills
        // it when told, or when the server is dropped.
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (spawned_tx, spawned_rx) = mpsc::channel::<Result<(), String>>();
        let exited: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let exited_in = Arc::clone(&exited);
        let keeper = std::thread::Builder::new()
            .name(format!("moto-server-{port}"))
            .spawn(move || {
                let mut child: Child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ =
                            spawned_tx.send(Err(format!("cannot run setpriv/moto_server: {e}")));
                        return;
                    }
                };
                let _ = spawned_tx.send(Ok(()));
                loop {
                    match stop_rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Ok(Some(status)) = child.try_wait() {
                                *exited_in.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(status.to_string());
                                // Stay alive until told to stop, like a running server would.
                                let _ = stop_rx.recv();
                                return;
                            }
                        }
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        spawned_rx
            .recv()
            .map_err(|_| "the moto keeper thread ended".to_owned())??;

        let mut server = MotoServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            stop: Some(stop_tx),
            keeper: Some(keeper),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if answers(addr) {
                // The output was for start-up failures; the open file lives on unlinked.
                let _ = std::fs::remove_file(&server.log);
                return Ok(server);
            }
            let exit = exited.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(status) = exit {
                let tail = server.log_tail();
                server.shutdown();
                return Err(format!("moto_server exited ({status}):\n{tail}"));
            }
            if Instant::now() > deadline {
                let tail = server.log_tail();
                server.shutdown();
                return Err(format!("moto_server did not answer within 60 s:\n{tail}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`: the endpoint URL for IAM, EC2 and STS.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of the server's output (while starting).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The Python interpreter of a pip-installed `moto_server` script (its `#!` line).
fn interpreter(exe: &std::path::Path) -> Result<PathBuf, String> {
    let text =
        std::fs::read_to_string(exe).map_err(|e| format!("cannot read {}: {e}", exe.display()))?;
    let first = text.lines().next().unwrap_or("");
    let python = first
        .strip_prefix("#!")
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.contains(' '))
        .ok_or_else(|| {
            format!(
                "{} does not start with a #!python line; cannot add managed policies",
                exe.display()
            )
        })?;
    Ok(PathBuf::from(python))
}
