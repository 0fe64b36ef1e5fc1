//! Test SSH hosts: real OpenSSH `sshd` servers on loopback addresses `127.0.0.x`, each with its
//! own host key, its own authorized keys and its own view of a "host directory" (the host's
//! stand-in for the EC2 instance metadata service), logged in to as [`USER`], who has
//! passwordless sudo. `tests/setup.sh` (run as root) installs sshd and sudo and makes the user.
//!
//! Each sshd runs in a mount namespace of its own, where its host directory is bind-mounted at
//! [`HOST_DIR_MOUNT`]: the sessions of that host, and whatever they run through sudo, see that
//! host's files there, and no other host's (in the tests' own namespace the path is an empty
//! directory). A directory of the host's own is bind-mounted at [`LOCK_DIR`] the same way, so
//! that the install lock the controller's script takes there is one host's, as on real hosts;
//! and another at [`AMAZON_DIR`], where the SSM agent keeps its registration
//! (`/var/lib/amazon/ssm/registration`), so that each host has its own, where the real agent
//! keeps it; and another, empty at start, at [`INIT_SCRIPTS`], where an agent's setup puts its
//! init script (the host's init system is SysV's: no systemd runs there). Its `/etc/hosts` is its own too: the machine's, and a line naming the host's own
//! hostname at its address, as a Debian host has one. sudo (built `--with-fqdn` on Debian)
//! looks the hostname up on every run: without that line each sudo of a session asked the
//! machine's DNS server, off loopback, and a fleet's sudos waited seconds on it.
//!
//! [`TTY_USER`] may log in too: the same keys, but sudo runs for it only from a terminal
//! (`requiretty`).
//!
//! The host directory holds, by name (the agent installer stand-in reads and writes them):
//! - `hostname`, `local-ipv4`: written at start, the host's label and its 127.0.0.x address (each
//!   sshd also runs in a UTS namespace of its own whose hostname is that label, so `uname -n` on
//!   the host says it too);
//! - `instance-identity-document`: the EC2 identity document, see [`SshHost::set_identity`];
//! - `installer-failure`: present when the installer must fail, with the message to fail with;
//! - `installer-exit-status`: the exit status it then fails with (1 when missing);
//! - `preconfig-received.json`: the preconfig the installer was given, written by the stand-in;
//! - `boot-registration.log`: one line per run of `boot-registration`, appended by the stand-in;
//! - `ssm-setup.log`, `ssm-agent.log`, `ssm-agent.lock`, `ssm-agent-installed`: the SSM setup
//!   tool's runs, the SSM agent daemon's output, its lock and PID, its installation (see
//!   [`opsworks_endpoint::ssm_standin`]);
//! - `bin/`: commands that come before the system's in the host's sessions (`PATH`), see
//!   [`SshHost::set_command`] (a clock set off, a route refused);
//! - `canary`: must never exist; a shell injection that worked would create it.
//!
//! The host directory belongs to [`USER`] (mode 0755), so that the user's sessions, and root
//! through sudo, can create files there (such as the canary); the files the harness writes are
//! root's, mode 0644.
//!
//! The sshd processes die with the process that started them, the test binary or the demo
//! (`setpriv --pdeathsig KILL`, started from a thread that lives as long as the process), and
//! with the [`SshHost`] value: dropping it, or
//! [`SshHost::stop`], kills every process of the host (its sshd, all its sessions, and what they
//! left running, such as the SSM agent daemon).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opsworks_endpoint::ssm_standin;

use crate::control_plane::spawn_logged;

/// The login user of every test host (made by `tests/setup.sh`, with passwordless sudo).
pub const USER: &str = "opsworks-test";

/// A second login user (made by `tests/setup.sh`), with passwordless sudo that runs only from a
/// terminal (`Defaults:opsworks-tty requiretty`).
pub const TTY_USER: &str = "opsworks-tty";

/// Where a host's own host directory appears inside that host (its sessions and their children).
pub const HOST_DIR_MOUNT: &str = "/run/registrar-test-host";

/// The system's lock directory; each host has its own (the install lock goes there).
pub const LOCK_DIR: &str = "/run/lock";

/// Where init scripts are (SysV init); each host has its own, empty at start.
pub const INIT_SCRIPTS: &str = "/etc/init.d";

/// Where the SSM agent keeps its state; each host has its own.
pub const AMAZON_DIR: &str = ssm_standin::AMAZON_DIR;

const SSHD: &str = "/usr/sbin/sshd";

/// A running (or stopped) test SSH host.
pub struct SshHost {
    name: String,
    address: Ipv4Addr,
    port: u16,
    /// Per-host files: sshd_config, host keys, authorized_keys, logs, and the host directory.
    files: tempfile::TempDir,
    dir: PathBuf,
    host_key: PathBuf,
    key_generation: u32,
    /// The logs of every sshd this host has run, oldest first.
    logs: Vec<PathBuf>,
    /// Whether sshd gives sessions a pseudo-terminal when asked (`PermitTTY`).
    permit_tty: bool,
    /// Whether sshd forwards TCP connections for its users (`AllowTcpForwarding`): a jump host.
    tcp_forwarding: bool,
    /// The host certificate sshd presents (`HostCertificate`), if any.
    host_certificate: Option<PathBuf>,
    /// The user CA keys sshd trusts (`TrustedUserCAKeys`), if any.
    trusted_user_ca_keys: Option<PathBuf>,
    sshd: Option<Running>,
}

/// A running sshd: the process, and its mount namespace (which all its sessions share).
struct Running {
    child: Child,
    mount_ns: PathBuf,
    /// Holds the namespace open: while it is, its inode number cannot be given to a new
    /// namespace (another host's), so "in this namespace" keeps meaning this host.
    _mount_ns_handle: std::fs::File,
}

impl SshHost {
    /// Starts a host on a 127.0.0.x address and a port free on it, with a new ed25519 host key,
    /// no authorized keys, and a host directory holding `hostname` ("test-<name>", sanitised)
    /// and `local-ipv4`. Returns once sshd accepts connections. The process's first 253 hosts
    /// each have an address of their own; later ones share one with an earlier host (on another
    /// port), so address and port together tell hosts apart.
    pub fn start(name: &str) -> SshHost {
        SshHost::start_with(name, false)
    }

    /// Starts a jump host (a bastion): a host as [`SshHost::start`] makes, whose sshd also
    /// forwards TCP connections for its users (`AllowTcpForwarding yes`, as OpenSSH's
    /// ProxyJump needs) and logs each one it is asked for (see [`SshHost::forwarded_to`]).
    pub fn start_jump_host(name: &str) -> SshHost {
        SshHost::start_with(name, true)
    }

    fn start_with(name: &str, tcp_forwarding: bool) -> SshHost {
        check_prerequisites();
        let address = next_address();
        let label = host_label(name);
        let files = tempfile::Builder::new()
            .prefix(&format!("registrar-{label}-"))
            .tempdir()
            .expect("creating the test host's temporary directory");
        // sshd reads authorized_keys with the login user's identity: the user may pass through
        // (not list) the per-host directory, and read that one file. The private host keys stay
        // readable by root only.
        set_mode(files.path(), 0o711);
        let authorized_keys = files.path().join("authorized_keys");
        std::fs::write(&authorized_keys, "").unwrap();
        set_mode(&authorized_keys, 0o644);
        // The host directory belongs to the login user, so that a shell injection would create
        // the canary whether it ran as the user or through sudo; root writes there all the same.
        let dir = files.path().join("host");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let (uid, gid) = user_ids();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
        // The host's /run/lock: root's, world-writable with the sticky bit, as Debian has it.
        let locks = files.path().join("lock");
        std::fs::create_dir(&locks).unwrap();
        set_mode(&locks, 0o1777);
        // The host's /var/lib/amazon: root's, as the agent's package makes it.
        let amazon = files.path().join("amazon");
        std::fs::create_dir(&amazon).unwrap();
        set_mode(&amazon, 0o755);
        // The host's /etc/init.d: root's, empty until an agent's setup puts its init script
        // there (the controller restarts an agent out of touch with it).
        let init_scripts = files.path().join("init.d");
        std::fs::create_dir(&init_scripts).unwrap();
        set_mode(&init_scripts, 0o755);
        let mut host = SshHost {
            name: name.to_owned(),
            address,
            port: 0,
            files,
            dir,
            host_key: PathBuf::new(),
            key_generation: 0,
            logs: Vec::new(),
            permit_tty: true,
            tcp_forwarding,
            host_certificate: None,
            trusted_user_ca_keys: None,
            sshd: None,
        };
        host.new_host_key();
        host.write_file("hostname", &format!("{label}\n"));
        host.write_file("local-ipv4", &format!("{address}\n"));
        // The host's /etc/hosts: the machine's, and the host's own name.
        let machine_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let hosts_file = host.files.path().join("etc-hosts");
        std::fs::write(
            &hosts_file,
            format!(
                "{machine_hosts}{}{address}\t{label}\n",
                if machine_hosts.is_empty() || machine_hosts.ends_with('\n') {
                    ""
                } else {
                    "\n"
                }
            ),
        )
        .unwrap();
        set_mode(&hosts_file, 0o644);

        // Another test binary may take the port between probing and sshd binding it: try again
        // with another port then.
        let mut last_error = String::new();
        for _ in 0..5 {
            host.port = free_port(address);
            match host.launch() {
                Ok(()) => return host,
                Err(e) => last_error = e,
            }
        }
        panic!("test SSH host {name} on {address} did not start: {last_error}");
    }

    /// The host's own hostname (what `uname -n` says in its sessions).
    pub fn hostname(&self) -> String {
        host_label(&self.name)
    }

    /// Sets the private address the agent stand-in reports for the host (its `local-ipv4`), as
    /// for a host reached through NAT or a port forward at another address than its own.
    pub fn set_local_ipv4(&self, address: &str) {
        self.write_file("local-ipv4", &format!("{address}\n"));
    }

    /// The host's loopback address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name the host was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `public_key_line` ("ssh-ed25519 AAAA... comment") to this host's authorized keys;
    /// no other host accepts it.
    pub fn authorize(&self, public_key_line: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.files.path().join("authorized_keys"))
            .unwrap();
        writeln!(file, "{}", public_key_line.trim()).unwrap();
    }

    /// The public host key in known_hosts form without the host pattern: "ssh-ed25519 AAAA...".
    pub fn host_key_line(&self) -> String {
        let public = std::fs::read_to_string(self.host_key.with_extension("pub")).unwrap();
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The process ID of the host's sshd, while it runs: its sessions are its descendants.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(|running| running.child.id())
    }

    /// The host key's fingerprint as `ssh-keygen -lf` prints it: "SHA256:...".
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.host_key.with_extension("pub"))
            .output()
            .expect("running ssh-keygen");
        assert!(out.status.success(), "ssh-keygen -lf failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("ssh-keygen -lf output")
            .to_owned()
    }

    /// The file holding the public host key (what `ssh-keygen -s CA -h` signs).
    pub fn host_public_key_path(&self) -> PathBuf {
        self.host_key.with_extension("pub")
    }

    /// Makes sshd present `certificate` (the text of a `-cert.pub` file, for the current host
    /// key) as its host certificate (`HostCertificate`), or none; sshd is restarted on the same
    /// address and port. OpenSSH presents it only to a client that asks for a certificate
    /// algorithm, and the plain key to others.
    pub fn set_host_certificate(&mut self, certificate: Option<&str>) {
        self.host_certificate = certificate.map(|text| {
            let path = self
                .files
                .path()
                .join(format!("host_key_{}-cert.pub", self.key_generation));
            std::fs::write(&path, text).unwrap();
            set_mode(&path, 0o644);
            path
        });
        self.restart();
    }

    /// Makes sshd trust user certificates signed by the CA keys `ca_lines` (public key lines)
    /// for logins (`TrustedUserCAKeys`: a certificate naming the login user among its
    /// principals is accepted with no authorized_keys entry), or none; sshd is restarted.
    pub fn set_trusted_user_ca_keys(&mut self, ca_lines: Option<&str>) {
        self.trusted_user_ca_keys = ca_lines.map(|text| {
            let path = self.files.path().join("trusted_user_ca_keys");
            std::fs::write(&path, format!("{}\n", text.trim())).unwrap();
            set_mode(&path, 0o644);
            path
        });
        self.restart();
    }

    /// Gives the host a new host key; sshd is restarted on the same address and port.
    pub fn rotate_host_key(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.host_key);
        let _ = std::fs::remove_file(self.host_key.with_extension("pub"));
        // A certificate names the old key: it goes with it.
        self.host_certificate = None;
        self.new_host_key();
        self.restart();
    }

    /// Takes the host down: sshd and every session on it are killed, and connections to its
    /// address and port are refused until [`SshHost::restart`].
    pub fn stop(&mut self) {
        if let Some(running) = self.sshd.take() {
            running.kill();
        }
    }

    /// Makes sshd refuse (or give again) pseudo-terminals (`PermitTTY no`); sshd is restarted on
    /// the same address and port.
    pub fn set_permit_tty(&mut self, permit: bool) {
        self.permit_tty = permit;
        self.restart();
    }

    /// Makes sshd forward TCP connections (a jump host) or refuse to (`AllowTcpForwarding`); sshd
    /// is restarted on the same address and port.
    pub fn set_tcp_forwarding(&mut self, allow: bool) {
        self.tcp_forwarding = allow;
        self.restart();
    }

    /// The `address:port` of each TCP connection this host was asked to forward (a
    /// `direct-tcpip` channel, as ProxyJump opens), over all its restarts, in order; whether it
    /// forwarded it or refused. Only a jump host logs them.
    pub fn forwarded_to(&self) -> Vec<String> {
        // sshd at LogLevel DEBUG1: "server_request_direct_tcpip: originator 127.0.0.1 port
        // 65535, target 127.0.0.9 port 40001".
        self.log()
            .lines()
            .filter_map(|line| line.split("server_request_direct_tcpip: ").nth(1))
            .filter_map(|rest| {
                let target = rest.split(", target ").nth(1)?;
                let (host, port) = target.trim().split_once(" port ")?;
                Some(format!("{host}:{port}"))
            })
            .collect()
    }

    /// Brings the host back (after [`SshHost::stop`], or restarts it if running) on the same
    /// address and port, with the same host key.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; another process may still briefly hold it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "test SSH host {} did not come back on {}:{}: {e}",
                    self.name, self.address, self.port
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The host directory, seen inside the host at [`HOST_DIR_MOUNT`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the host's EC2 instance identity document (as the instance metadata service serves
    /// it), for instance `ec2_instance_id` in `region`.
    pub fn set_identity(&self, ec2_instance_id: &str, region: &str) {
        let document = serde_json::json!({
            "accountId": "123456789012",
            "architecture": "x86_64",
            "availabilityZone": format!("{region}a"),
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": "ami-12c6146b",
            "instanceId": ec2_instance_id,
            "instanceType": "t3.micro",
            "kernelId": null,
            "pendingTime": "2024-01-01T00:00:00Z",
            "privateIp": self.address.to_string(),
            "ramdiskId": null,
            "region": region,
            "version": "2017-09-30",
        });
        self.write_file(
            "instance-identity-document",
            &serde_json::to_string_pretty(&document).unwrap(),
        );
    }

    /// Puts a command `name` ahead of the system's in this host's sessions (`bin/` in its host
    /// directory leads their `PATH`): a `/bin/sh` script with `body`, or (`None`) takes it away.
    /// sudo's `secure_path` does not include it, so only what the login user runs sees it.
    pub fn set_command(&self, name: &str, body: Option<&str>) {
        let bin = self.dir.join("bin");
        let path = bin.join(name);
        match body {
            Some(body) => {
                std::fs::create_dir_all(&bin).unwrap();
                std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing {}: {e}", path.display()),
            },
        }
    }

    /// Makes the agent installer on this host fail with `message`, or (`None`) succeed again.
    pub fn set_installer_failure(&self, message: Option<&str>) {
        match message {
            Some(message) => self.write_file("installer-failure", message),
            None => match std::fs::remove_file(self.dir.join("installer-failure")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing installer-failure: {e}"),
            },
        }
    }

    /// The exit status the agent installer on this host fails with (see
    /// [`SshHost::set_installer_failure`]), or (`None`) 1.
    pub fn set_installer_exit_status(&self, status: Option<u8>) {
        match status {
            Some(status) => self.write_file("installer-exit-status", &format!("{status}\n")),
            None => {
                let _ = std::fs::remove_file(self.dir.join("installer-exit-status"));
            }
        }
    }

    /// The preconfig the installer on this host received (`preconfig-received.json`), if it
    /// has received one (and the file is complete JSON).
    pub fn received_preconfig(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("preconfig-received.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The SSM node ID in this host's registration file (`/var/lib/amazon/ssm/registration`
    /// inside the host), if it has one.
    pub fn ssm_registration(&self) -> Option<String> {
        let text =
            std::fs::read_to_string(self.files.path().join("amazon/ssm/registration")).ok()?;
        ssm_standin::parse_registration(&text).map(|(id, _)| id)
    }

    /// The host's `/var/lib/amazon`, as seen from outside the host.
    pub fn amazon_dir(&self) -> PathBuf {
        self.files.path().join("amazon")
    }

    /// The processes of this host whose executable is called `amazon-ssm-agent` (the SSM agent
    /// daemons; the setup tool runs under another name). Empty when the host is down.
    pub fn ssm_agent_pids(&self) -> Vec<i32> {
        let Some(running) = &self.sshd else {
            return Vec::new();
        };
        processes_in(&running.mount_ns)
            .into_iter()
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    exe.file_name().and_then(|n| n.to_str()) == Some(ssm_standin::AGENT_BINARY_NAME)
                })
            })
            .collect()
    }

    /// Kills this host's SSM agent daemons (as a crash would: no heartbeats from then on) and
    /// waits until they are gone. Returns how many there were.
    pub fn kill_ssm_agent(&self) -> usize {
        let pids = self.ssm_agent_pids();
        for &pid in &pids {
            // SAFETY: kill(2) with a PID read from /proc; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.ssm_agent_pids().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the SSM agent of {} did not die",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pids.len()
    }

    /// The SSM setup tool's runs on this host, one line each (`setup uid=0 result=registered
    /// node=mi-…`, see [`ssm_standin::host_files::SETUP_LOG`]).
    pub fn ssm_setup_runs(&self) -> Vec<String> {
        self.service_runs(ssm_standin::host_files::SETUP_LOG)
    }

    /// The lines of `log`, a log of a stand-in's runs in the host directory, one line a run: the
    /// runs of an agent's init script (`restart uid=0 …`,
    /// [`ssm_standin::host_files::SERVICE_LOG`],
    /// [`opsworks_endpoint::standin::host_files::SERVICE_LOG`]), of the SSM setup tool.
    pub fn service_runs(&self, log: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(log))
            .map(|text| {
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the SSM agent daemons of this host printed (for test failure messages).
    pub fn ssm_agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join(ssm_standin::host_files::AGENT_LOG))
            .unwrap_or_default()
    }

    /// How many times `boot-registration` ran on this host (lines of `boot-registration.log`).
    pub fn boot_registration_runs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("boot-registration.log"))
            .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
            .unwrap_or(0)
    }

    /// SSH logins this host accepted so far, over all its restarts.
    pub fn sessions(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Accepted publickey for "))
            .count()
    }

    /// The PIDs of the processes running on this host (in its mount namespace) whose command line
    /// holds `needle`, such as the agent installer stand-in's program name.
    pub fn processes(&self, needle: &str) -> Vec<i32> {
        let Some(running) = &self.sshd else {
            return Vec::new();
        };
        processes_in(&running.mount_ns)
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(needle)
            })
            .collect()
    }

    /// The file a successful shell injection would create on this host: tests assert it never
    /// exists.
    pub fn canary(&self) -> PathBuf {
        self.dir.join("canary")
    }

    /// Everything this host's sshd logged, over all its restarts (for test failure messages).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for (i, log) in self.logs.iter().enumerate() {
            if i > 0 {
                text.push_str("--- sshd restarted ---\n");
            }
            text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        text
    }

    fn new_host_key(&mut self) {
        self.key_generation += 1;
        self.host_key = self
            .files
            .path()
            .join(format!("host_key_{}", self.key_generation));
        generate_key(&self.host_key, "ed25519", "", "")
            .unwrap_or_else(|e| panic!("making a host key: {e}"));
    }

    /// Writes `name` in the host directory, whole (readers never see half a file).
    fn write_file(&self, name: &str, content: &str) {
        let path = self.dir.join(name);
        let partial = self.files.path().join(format!("{name}.partial"));
        std::fs::write(&partial, content).unwrap();
        set_mode(&partial, 0o644);
        std::fs::rename(&partial, &path).unwrap();
    }

    /// Writes the config and starts sshd on `self.port`; returns once it listens.
    fn launch(&mut self) -> Result<(), String> {
        let config = self.files.path().join("sshd_config");
        std::fs::write(&config, self.sshd_config()).unwrap();
        let log = self
            .files
            .path()
            .join(format!("sshd-{}.log", self.logs.len()));
        self.logs.push(log.clone());
        // A UTS namespace of its own too: the host's sessions see its own hostname (`uname -n`,
        // what an agent registers with when no hostname is given), as on a real host.
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!(
                "mount --bind \"$1\" {HOST_DIR_MOUNT} && mount --bind \"$3\" {LOCK_DIR} && \
                 mount --bind \"$5\" {AMAZON_DIR} && mount --bind \"$6\" /etc/hosts && \
                 mount --bind \"$7\" {INIT_SCRIPTS} && \
                 printf '%s' \"$4\" >/proc/sys/kernel/hostname && exec {SSHD} -D -e -f \"$2\""
            ))
            .arg("sh")
            .arg(&self.dir)
            .arg(&config)
            .arg(self.files.path().join("lock"))
            .arg(host_label(&self.name))
            .arg(self.files.path().join("amazon"))
            .arg(self.files.path().join("etc-hosts"))
            .arg(self.files.path().join("init.d"));
        let mut child = spawn_kept(command, &log)?;
        let listening = format!("Server listening on {} port {}.", self.address, self.port);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "sshd exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&listening)
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "sshd did not listen within 15s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // sshd has logged, so it runs in its own namespace now: remember which, to find its
        // sessions when the host goes down.
        let mount_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", child.id()))
            .map_err(|e| format!("reading sshd's mount namespace: {e}"))?;
        let mount_ns_handle = std::fs::File::open(format!("/proc/{}/ns/mnt", child.id()))
            .map_err(|e| format!("opening sshd's mount namespace: {e}"))?;
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        if mount_ns == own {
            let _ = child.kill();
            let _ = child.wait();
            return Err("sshd runs in the test binary's own mount namespace".into());
        }
        self.sshd = Some(Running {
            child,
            mount_ns,
            _mount_ns_handle: mount_ns_handle,
        });
        Ok(())
    }

    fn sshd_config(&self) -> String {
        let mut config = format!(
            "# Test SSH host {name}: listens on {address}:{port} only.\n\
             ListenAddress {address}:{port}\n\
             AddressFamily inet\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             AuthorizedKeysCommand none\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             HostbasedAuthentication no\n\
             PermitRootLogin no\n\
             AllowUsers {USER} {TTY_USER}\n\
             StrictModes no\n\
             UsePAM no\n\
             PidFile none\n\
             LogLevel {log_level}\n\
             MaxStartups 100:30:200\n\
             MaxSessions 20\n\
             LoginGraceTime 30\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             AllowTcpForwarding {forwarding}\n\
             AllowStreamLocalForwarding no\n\
             AllowAgentForwarding no\n\
             X11Forwarding no\n\
             PermitTunnel no\n\
             GatewayPorts no\n\
             Subsystem sftp internal-sftp\n\
             SetEnv PATH={HOST_DIR_MOUNT}/bin:/usr/local/bin:/usr/bin:/bin\n",
            name = self.name,
            address = self.address,
            port = self.port,
            host_key = self.host_key.display(),
            authorized_keys = self.files.path().join("authorized_keys").display(),
            // A jump host logs the connections it is asked to forward (at DEBUG1 only).
            log_level = if self.tcp_forwarding {
                "DEBUG1"
            } else {
                "VERBOSE"
            },
            forwarding = if self.tcp_forwarding { "yes" } else { "no" },
        );
        // OpenSSH 9.8 and later refuse a source address for a while after failed logins; the
        // tests make many from 127.0.0.1 on purpose.
        if sshd_version() >= (9, 8) {
            config.push_str("PerSourcePenalties no\n");
        }
        if !self.permit_tty {
            config.push_str("PermitTTY no\n");
        }
        if let Some(path) = &self.host_certificate {
            config.push_str(&format!("HostCertificate {}\n", path.display()));
        }
        if let Some(path) = &self.trusted_user_ca_keys {
            config.push_str(&format!("TrustedUserCAKeys {}\n", path.display()));
        }
        config
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Running {
    /// Kills sshd, then every process left in its mount namespace (its sessions).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let own = std::fs::read_link("/proc/self/ns/mnt").ok();
        if own.as_ref() == Some(&self.mount_ns) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_in(&self.mount_ns);
            for &pid in &left {
                // SAFETY: kill(2) with a PID read from /proc; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let found = !left.is_empty();
            if !found || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The PIDs of the processes in mount namespace `mount_ns` (as `/proc/<pid>/ns/mnt` reads).
fn processes_in(mount_ns: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let ns = std::fs::read_link(entry.path().join("ns/mnt")).ok()?;
            (ns == mount_ns).then_some(pid)
        })
        .collect()
}

/// Panics with what to do when the machine cannot run test hosts.
fn check_prerequisites() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let fix = "run `bash tests/setup.sh` as root, and the tests as root";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!("the test SSH hosts need root (mount namespaces, sshd): {fix}");
        }
        if !Path::new(SSHD).exists() {
            panic!("{SSHD} is missing (Debian package openssh-server): {fix}");
        }
        if user_ids_from_passwd().is_none() {
            panic!("the test login user {USER} is missing: {fix}");
        }
        // Without PAM, sshd refuses every login to an account whose password is locked ("!").
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
        if shadow.lines().any(|l| l.starts_with(&format!("{USER}:!"))) {
            panic!("the test login user {USER} is locked (sshd would refuse it): {fix}");
        }
        if !Path::new(&format!("/etc/sudoers.d/{USER}")).exists() {
            panic!("/etc/sudoers.d/{USER} is missing: {fix}");
        }
        std::fs::create_dir_all(HOST_DIR_MOUNT)
            .unwrap_or_else(|e| panic!("creating {HOST_DIR_MOUNT}: {e}"));
        // The mount point of each host's own /etc/init.d.
        std::fs::create_dir_all(INIT_SCRIPTS)
            .unwrap_or_else(|e| panic!("creating {INIT_SCRIPTS}: {e}"));
        // The mount point of each host's own /var/lib/amazon.
        std::fs::create_dir_all(AMAZON_DIR)
            .unwrap_or_else(|e| panic!("creating {AMAZON_DIR}: {e}"));
        if !Path::new(LOCK_DIR).is_dir() {
            std::fs::create_dir_all(LOCK_DIR)
                .unwrap_or_else(|e| panic!("creating {LOCK_DIR}: {e}"));
            set_mode(Path::new(LOCK_DIR), 0o1777);
        }
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("creating /run/sshd: {e}"));
        set_mode(Path::new("/run/sshd"), 0o755);
    });
}

/// Panics with what to do when [`TTY_USER`] is missing or its sudo is not the `requiretty` one.
pub fn check_tty_user() {
    let fix = "run `bash tests/setup.sh` as root";
    if user_ids_of(TTY_USER).is_none() {
        panic!("the test login user {TTY_USER} is missing: {fix}");
    }
    let sudoers = std::fs::read_to_string(format!("/etc/sudoers.d/{TTY_USER}")).unwrap_or_default();
    if !sudoers.contains(&format!("Defaults:{TTY_USER} requiretty")) {
        panic!("/etc/sudoers.d/{TTY_USER} is missing or lacks requiretty: {fix}");
    }
}

/// A 127.0.0.x address (x in 2..=254) for the process's next host: each of its first 253 hosts
/// gets one no earlier host of the process had; later hosts (a benchmark's fleet) take them
/// again in the same order, so an address is then shared with earlier hosts, each sshd on its
/// own port (test binaries running at the same time may share an address the same way).
fn next_address() -> Ipv4Addr {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id() % 253));
    let n = next.fetch_add(1, Ordering::SeqCst);
    Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8)
}

/// A port free on `address` a moment ago.
fn free_port(address: Ipv4Addr) -> u16 {
    TcpListener::bind(SocketAddrV4::new(address, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("binding {address}: {e}"))
        .port()
}

/// "test-<name>" made a host label: letters, digits and single dashes, at most 63 characters.
fn host_label(name: &str) -> String {
    let mut label = String::new();
    for c in format!("test-{name}").chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && label.ends_with('-')) {
            label.push(c);
        }
    }
    label.truncate(63);
    label.trim_end_matches('-').to_owned()
}

/// The login user's (uid, gid).
fn user_ids() -> (u32, u32) {
    user_ids_from_passwd().unwrap_or_else(|| panic!("no user {USER} in /etc/passwd"))
}

fn user_ids_from_passwd() -> Option<(u32, u32)> {
    user_ids_of(USER)
}

fn user_ids_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The installed sshd's (major, minor) version.
fn sshd_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        // `sshd -V` prints "OpenSSH_9.2p1 ..., OpenSSL ..." on stderr.
        let out = Command::new(SSHD)
            .arg("-V")
            .output()
            .expect("running sshd -V");
        let text = String::from_utf8_lossy(&out.stderr);
        let version = text
            .split("OpenSSH_")
            .nth(1)
            .unwrap_or_else(|| panic!("no version in `sshd -V`: {text}"));
        let mut parts = version.split(|c: char| !c.is_ascii_digit());
        let major = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (major, minor)
    })
}

type SpawnRequest = (Command, PathBuf, mpsc::Sender<Result<Child, String>>);

/// Starts `command` with [`spawn_logged`] from one thread that lives as long as the test binary,
/// so that the process dies with the binary (its parent-death signal follows the thread that
/// started it) and not with the test thread that asked for it.
fn spawn_kept(command: Command, log: &Path) -> Result<Child, String> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ssh-hosts".into())
            .spawn(move || {
                // The sender is in a static, never dropped: this loop ends with the process.
                for (mut command, log, reply) in rx {
                    let _ = reply.send(spawn_logged(&mut command, &log));
                }
            })
            .expect("starting the ssh-hosts thread");
        tx
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send((command, log.to_owned(), reply))
        .map_err(|_| "the ssh-hosts thread ended".to_owned())?;
    answer
        .recv()
        .map_err(|_| "the ssh-hosts thread ended".to_owned())?
}

/// Makes an OpenSSH key pair of `kind` (`ed25519`, `rsa`, ...) at `path` and `path.pub`,
/// protected by `passphrase` (none when empty), with `comment`; returns the public key line.
pub fn generate_key(
    path: &Path,
    kind: &str,
    passphrase: &str,
    comment: &str,
) -> Result<String, String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("running ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::read_to_string(path.with_extension("pub"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("reading the public key: {e}"))
}
