//! `bench`: the performance benchmark (`bash tests/bench.sh`, which sets up the machine, installs
//! the AWS CLI v1 into a venv and builds first). Not part of `cargo test`.
//!
//! On the local environment (control plane, moto behind the recording proxy, the
//! OpsWorks-compatible endpoint serving the agent installer stand-in, SSH hosts on 127.0.0.x) it
//! measures, each over `--runs` runs and reported as medians:
//!
//! 1. throughput: `--hosts` EC2 hosts registered by the controller (`--ssh-concurrency` and
//!    `--ssh-namespace-share` the larger of 64 and `--hosts`: one tenant, all its sessions at
//!    once, as the floor's), from creating the objects (32 creates in flight, as the fleet's:
//!    `kubectl apply` makes one after another, over up to 1.7 s for 50 here) to all Ready, with
//!    the seconds each step took per registration; the floor, alternating with it: the same
//!    hosts registered
//!    with nothing of the controller's (one plain `ssh` per host, all at once, running the same
//!    installer against the same endpoint, [`Env::floor_run`]), and the controller's time as a
//!    ratio to it, run by run; and by `aws opsworks register` (AWS CLI v1) one host after
//!    another and `--cli-parallel` at a time, until every instance is registered;
//! 2. AWS calls per fresh registration by operation, controller against the CLI;
//! 3. steady state: `--steady` objects already registered, the controller restarted: time until
//!    every object is re-verified, AWS calls, SSH sessions, peak RSS and CPU seconds;
//! 4. latency: one object, apply to Ready, minus the installer's run time; directly and through
//!    one jump host (`ssh.jumpHosts`), with the endpoint's `registering` delay as it is (0.5 s),
//!    and directly with that delay at 0 (set at run time, put back after), runs alternating;
//!    and the floor on one host at delay 0 (what the install itself takes over T);
//! 5. fleet (one run, last): `--fleet` EC2 hosts (their own sshd each; beyond the process's first
//!    253 hosts, sshds share addresses, each on its own port) created at once for a controller
//!    started with `--ssh-concurrency` `--fleet` (`--concurrency` its default), the installer
//!    taking `--fleet-run-time` (the other sections keep `--run-time`): time from apply to all
//!    Ready, and the floor on the same hosts before and after the wave; three times, once a
//!    quarter, half and three quarters of the fleet have started installing, the time to delete
//!    two unrelated objects of the namespace (blocked on a missing Secret, with the finalizer;
//!    one `deletionPolicy: Retain`, which makes no AWS call, one `Deregister`), with where it
//!    went (from the API server's audit log and the controller's log) and the CPU the
//!    controller, kube-apiserver and etcd got and waited for meanwhile (`/proc/*/schedstat`);
//!    status and object writes per registration (from
//!    the API server's audit log); SSH sessions and AWS calls per registration; the controller's
//!    peak RSS and CPU seconds. The namespace's Events and objects are saved next to the
//!    controller's log, and the Events summed up on standard error;
//! 6. throttled wave (one run, after the fleet): `--throttled-hosts` EC2
//!    hosts (an sshd each), installer `--run-time`, created at once for a controller with its
//!    default `--aws-calls-per-second` (20 a second per service, not the other sections' 1000;
//!    `--throttled-calls-per-second` sets another)
//!    and `--ssh-concurrency` N, while the recording proxy in front of moto takes 5
//!    `iam:CreateAccessKey` calls a second and throttles the rest (cleared afterwards): time from
//!    apply to all Ready; objects failed, and seen with a `Throttled` condition; from the proxy's
//!    records, per second from apply, `CreateAccessKey` attempts and accepted calls and all IAM
//!    calls, and their means after the first 10 s; the controller's
//!    `registrar_aws_budget_rate{service="iam"}` sampled each second.
//!
//! Only loopback addresses are used: every endpoint is on 127.0.0.1, every `ssh.address` and
//! every `--override-ssh` target is a 127.x address (checked before anything runs).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use opsworks_endpoint::standin::StandIn;
use opsworks_endpoint::{AgentInstaller, CallSummary, Faults, ProxyHandle};
use registrar_local_env::aws::{self, ACCESS_KEY_ID, AwsEnv, REGION};
use registrar_local_env::control_plane::{ControlPlane, free_port, spawn_logged};
use registrar_local_env::ssh_hosts::{self, SshHost};

const SECRET: &str = "bench-ssh-key";
/// The secret key the tests' clients use (moto accepts any; the endpoint knows this pair).
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

type R<T = ()> = Result<T, String>;

struct Args {
    hosts: usize,
    run_time: Duration,
    runs: usize,
    steady: Vec<usize>,
    cli_parallel: usize,
    /// Hosts in a sequential CLI run (default: all); fewer gives a per-host rate scaled up.
    cli_sequential_hosts: Option<usize>,
    aws_cli: Option<PathBuf>,
    skip: Vec<String>,
    /// Hosts in the fleet run.
    fleet: usize,
    /// The installer stand-in's run time in the fleet run.
    fleet_run_time: Duration,
    /// The fleet's hosts (their sshds, and so every session's process) run with the scheduling
    /// policy `SCHED_IDLE`: they get only the CPU the controller, the control plane, moto and
    /// the endpoint leave, as hosts that are other machines would take none of theirs.
    fleet_hosts_idle: bool,
    /// Hosts in the throttled wave (0: none).
    throttled_hosts: usize,
    /// The throttled wave's controller's `--aws-calls-per-second` (`None`: its default).
    throttled_calls_per_second: Option<String>,
}

fn usage() -> &'static str {
    "usage: bench [--hosts N] [--run-time SECONDS] [--runs R] [--steady N[,N...]] \
     [--cli-parallel P] [--cli-sequential-hosts N] [--aws-cli PATH] \
     [--fleet N] [--fleet-run-time SECONDS] [--fleet-hosts-priority normal|idle] \
     [--throttled-hosts N] \
     [--throttled-calls-per-second RATE] \
     [--skip throughput,cli,steady,latency,throttled,fleet]"
}

fn parse_args() -> R<Args> {
    let mut a = Args {
        hosts: 50,
        run_time: Duration::from_secs(3),
        runs: 3,
        steady: vec![1000, 5000],
        cli_parallel: 16,
        cli_sequential_hosts: None,
        aws_cli: std::env::var_os("AWS_CLI_V1").map(PathBuf::from),
        skip: Vec::new(),
        fleet: 500,
        fleet_run_time: Duration::from_secs(30),
        fleet_hosts_idle: false,
        throttled_hosts: 200,
        throttled_calls_per_second: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        let secs = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{flag} {v}: not a number of seconds"))
        };
        match flag.as_str() {
            "--hosts" => a.hosts = num(&value)?,
            "--run-time" => a.run_time = secs(&value)?,
            "--fleet" => a.fleet = num(&value)?,
            "--fleet-run-time" => a.fleet_run_time = secs(&value)?,
            "--fleet-hosts-priority" => {
                a.fleet_hosts_idle = match value.as_str() {
                    "normal" => false,
                    "idle" => true,
                    _ => return Err(format!("--fleet-hosts-priority {value}: normal or idle")),
                }
            }
            "--throttled-hosts" => a.throttled_hosts = num(&value)?,
            "--throttled-calls-per-second" => {
                value
                    .parse::<f64>()
                    .map_err(|e| format!("--throttled-calls-per-second {value}: {e}"))?;
                a.throttled_calls_per_second = Some(value);
            }
            "--runs" => a.runs = num(&value)?.max(1),
            "--steady" => {
                a.steady = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(num)
                    .collect::<R<_>>()?
            }
            "--cli-parallel" => a.cli_parallel = num(&value)?.max(1),
            "--cli-sequential-hosts" => a.cli_sequential_hosts = Some(num(&value)?.max(1)),
            "--aws-cli" => a.aws_cli = Some(PathBuf::from(value)),
            "--skip" => a.skip = value.split(',').map(str::to_owned).collect(),
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    if a.hosts == 0 || a.hosts > 200 {
        return Err("--hosts must be 1..=200".into());
    }
    // The controller's --ssh-concurrency, which the fleet run sets to it, goes up to 1024.
    if a.fleet == 0 || a.fleet > 1024 {
        return Err("--fleet must be 1..=1024".into());
    }
    // The throttled wave's controller takes --ssh-concurrency N too.
    if a.throttled_hosts > 1024 {
        return Err("--throttled-hosts must be 0..=1024".into());
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// `controller / floor` for each pair of runs, as text.
fn runs_text(controller: &[f64], floor: &[f64]) -> String {
    controller
        .iter()
        .zip(floor)
        .map(|(c, f)| format!("{c:.1}/{f:.1} = {:.2}", c / f))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn say(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Everything the runs share.
struct Env {
    start: Instant,
    dir: PathBuf,
    cp: ControlPlane,
    client: kube::Client,
    aws: AwsEnv,
    hosts: Vec<SshHost>,
    /// A jump host in front of the hosts, for the latency runs through one.
    bastion: SshHost,
    key_path: PathBuf,
    controller_bin: PathBuf,
    run_time: Duration,
    seq: AtomicUsize,
}

/// A running controller and where it serves metrics.
struct Controller {
    child: Child,
    metrics_port: u16,
    /// Its standard output and error.
    log: PathBuf,
}

impl Controller {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

/// The sum of every sample of metric `name` (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// (peak RSS in MiB, CPU seconds) of process `pid`.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf(3) has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hwm_kib / 1024.0, (ticks(11) + ticks(12)) / hz)
}

/// Gives process `pid` the scheduling policy `SCHED_IDLE` (its children forked later inherit it).
fn set_idle(pid: u32) -> R {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on a process of ours, with a valid parameter.
    if unsafe { libc::sched_setscheduler(pid as i32, libc::SCHED_IDLE, &param) } != 0 {
        return Err(format!(
            "SCHED_IDLE for process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Seconds process `pid` has run on a CPU (`/proc/<pid>/stat`, its ended threads' included), and
/// its live threads have waited in a run queue for one (`/proc/<pid>/task/*/schedstat`: a
/// thread that ended took its wait along, so for moto, whose server ends a thread per
/// connection, this is a lower bound).
fn sched_times(pid: u32) -> (f64, f64) {
    let (_, ran) = proc_usage(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (ran, 0.0);
    };
    let waited = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|ns| ns / 1e9)
        .sum();
    (ran, waited)
}

/// Seconds during which at least one task waited for a CPU (`/proc/pressure/cpu`, `some`).
fn cpu_pressure_secs() -> f64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |us| us / 1e6)
}

/// Tasks running or ready to run on the machine now (`/proc/stat`, `procs_running`).
fn procs_running() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("procs_running "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The processes whose command name is `comm` and whose command line holds `needle`.
fn pids_named(comm: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// CPU seconds the whole machine has used (`/proc/stat`'s `cpu` line, all but idle and iowait),
/// exited processes' included.
fn machine_cpu_secs() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|i| f.get(*i)).sum();
    // SAFETY: sysconf(3) has no memory effects.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A snapshot of [`sched_times`] for the processes that serve a deletion (the controller, the
/// API server, etcd, this benchmark), and of [`machine_sched_times`].
struct CpuSnapshot {
    at: Instant,
    by_process: Vec<(String, (f64, f64))>,
    pressure: f64,
    machine: f64,
    overflows: f64,
}

impl CpuSnapshot {
    /// Of the controller (if one runs), kube-apiserver, etcd, moto, and this process (the
    /// benchmark, the OpsWorks endpoint and the recording proxy).
    fn take(controller: Option<u32>) -> Self {
        let mut named = Vec::new();
        if let Some(pid) = controller {
            named.push(("controller".to_owned(), vec![pid]));
        }
        for comm in ["kube-apiserver", "etcd"] {
            named.push((comm.to_owned(), pids_named(comm, "")));
        }
        named.push(("moto".to_owned(), pids_named("python", "moto")));
        named.push((
            "bench, endpoint, proxy".to_owned(),
            vec![std::process::id()],
        ));
        let by_process = named
            .into_iter()
            .map(|(name, pids)| {
                let times = pids
                    .iter()
                    .map(|pid| sched_times(*pid))
                    .fold((0.0, 0.0), |(r, w), (a, b)| (r + a, w + b));
                (name, times)
            })
            .collect();
        Self {
            at: Instant::now(),
            by_process,
            pressure: cpu_pressure_secs(),
            machine: machine_cpu_secs(),
            overflows: listen_overflows(),
        }
    }

    /// What was used from `self` to `later`; `running`: [`procs_running`] sampled meanwhile.
    fn until(&self, later: &CpuSnapshot, running: &[usize]) -> CpuUse {
        CpuUse {
            wall: later.at.duration_since(self.at).as_secs_f64(),
            by_process: self
                .by_process
                .iter()
                .zip(&later.by_process)
                .map(|((name, (r0, w0)), (_, (r1, w1)))| (name.clone(), r1 - r0, w1 - w0))
                .collect(),
            pressure: later.pressure - self.pressure,
            machine: later.machine - self.machine,
            listen_overflows: later.overflows - self.overflows,
            running_mean: running.iter().sum::<usize>() as f64 / running.len().max(1) as f64,
            running_max: running.iter().copied().max().unwrap_or(0),
        }
    }
}

fn calls_table(s: &CallSummary) -> BTreeMap<String, u64> {
    s.by_operation
        .iter()
        .filter(|((_, op), _)| !op.contains(' '))
        .map(|((svc, op), c)| (format!("{svc}:{op}"), c.calls))
        .collect()
}

fn is_write(op: &str) -> bool {
    let name = op.split(':').nth(1).unwrap_or(op);
    !["Describe", "Get", "List"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl Env {
    fn next(&self) -> usize {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn kubectl(&self, args: &[&str]) -> R<String> {
        self.cp.kubectl_ok(args)
    }

    fn namespace(&self, ns: &str) -> R {
        self.kubectl(&["create", "namespace", ns])?;
        self.kubectl(&[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            SECRET,
            "--type=kubernetes.io/ssh-auth",
            &format!("--from-file=ssh-privatekey={}", self.key_path.display()),
        ])?;
        Ok(())
    }

    fn start_controller(&self, ns: &str, tag: &str) -> R<Controller> {
        self.start_controller_with(ns, tag, &[])
    }

    /// A controller watching `ns`, with `flags` added to its command line; logs to
    /// `controller-<tag>.log`.
    fn start_controller_with(&self, ns: &str, tag: &str, flags: &[&str]) -> R<Controller> {
        // moto never throttles: the budget the controller keeps for a real account
        // (--aws-calls-per-second, 20 a second per service) would measure the budget, not
        // the controller. It stays on, at a rate the runs do not reach.
        self.spawn_controller(ns, tag, flags, Some("1000"))
    }

    /// [`Env::start_controller_with`] with the AWS call budget at `aws_calls_per_second`, or at
    /// the controller's default with `None` (the variable is then removed from the
    /// environment the controller inherits).
    fn spawn_controller(
        &self,
        ns: &str,
        tag: &str,
        flags: &[&str],
        aws_calls_per_second: Option<&str>,
    ) -> R<Controller> {
        let metrics_port = free_port()?;
        let probe_port = free_port()?;
        let mut command = Command::new(&self.controller_bin);
        command
            .args(["run", "--watch-namespace", ns])
            .args(flags)
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(["--probe-address", &format!("127.0.0.1:{probe_port}")])
            .env("KUBECONFIG", &self.cp.kubeconfig)
            // `BENCH_CONTROLLER_LOG` (a tracing filter, e.g. `info,aws_smithy_runtime=debug`)
            // to see inside the controller's calls; its log is `controller-<tag>.log`.
            .env(
                "LOG_LEVEL",
                std::env::var("BENCH_CONTROLLER_LOG").unwrap_or("info".into()),
            );
        match aws_calls_per_second {
            Some(rate) => command.env("AWS_CALLS_PER_SECOND", rate),
            None => command.env_remove("AWS_CALLS_PER_SECOND"),
        };
        for (k, v) in self.aws.controller_env() {
            command.env(k, v);
        }
        let log = self.dir.join(format!("controller-{tag}.log"));
        let child = spawn_logged(&mut command, &log)?;
        let c = Controller {
            child,
            metrics_port,
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(metrics_port, "/metrics").is_none() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the controller did not serve metrics; see {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    /// The InstanceRegistrations of `ns`.
    fn registrations(&self, ns: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("registrar.dev", "v1alpha1", "InstanceRegistration");
        let ar = ApiResource::from_gvk(&gvk);
        Api::namespaced_with(self.client.clone(), ns, &ar)
    }

    /// Waits until all `n` objects of `ns` are Ready (and `extra` holds); the time it took.
    /// The objects are followed by a watch ([`follow_wave`]), not listed every few milliseconds:
    /// the instrument must not load the API server the controller shares the cores with (a list
    /// of 50 objects every 50 ms cost it more than the controller's own writes), and the time is
    /// when the last object was seen Ready, not the next poll after it.
    async fn wait_ready(
        &self,
        ns: &str,
        n: usize,
        from: Instant,
        limit: Duration,
        mut extra: impl FnMut() -> bool,
    ) -> R<f64> {
        let wave = Arc::new(std::sync::Mutex::new(Wave::default()));
        let follower = tokio::spawn(follow_wave(
            self.registrations(ns),
            String::new(),
            n,
            wave.clone(),
        ));
        let mut extra_at = None;
        let result = loop {
            if extra_at.is_none() && extra() {
                extra_at = Some(Instant::now());
            }
            let (all_ready, ready) = {
                let w = lock(&wave);
                (w.all_ready, w.ready.len())
            };
            if let (Some(all), Some(extra)) = (all_ready, extra_at) {
                break Ok(all.max(extra).duration_since(from).as_secs_f64());
            }
            if from.elapsed() > limit {
                break Err(format!(
                    "{ns}: {ready} of {n} Ready after {}s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        follower.abort();
        result
    }

    /// A fresh stack and one fresh EC2 record for each of the first `hosts` hosts (their
    /// identities set to them).
    async fn fresh_stack(&self, name: &str, hosts: usize) -> (String, Vec<String>) {
        self.fresh_stack_on(name, &self.hosts[..hosts.min(self.hosts.len())])
            .await
    }

    /// A fresh stack and one fresh EC2 record per host of `hosts` (their identities set to
    /// them).
    async fn fresh_stack_on(&self, name: &str, hosts: &[SshHost]) -> (String, Vec<String>) {
        // In a VPC: the CLI looks for instances outside any VPC for a stack without one, and
        // moto puts every instance in its default VPC.
        let k = self.next() % 250;
        let (vpc, subnet) = self.aws.create_vpc(&format!("10.{k}.0.0/16")).await;
        let stack = self.aws.create_stack(name, Some(&vpc)).await;
        let mut ids = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let (id, _, _) = self
                .aws
                .run_instance(&format!("{name}-h{i}"), Some(&subnet))
                .await;
            host.set_identity(&id, REGION);
            ids.push(id);
            if hosts.len() > 100 && (i + 1).is_multiple_of(100) {
                say(
                    self.start,
                    &format!("{name}: {} of {} EC2 records made", i + 1, hosts.len()),
                );
            }
        }
        (stack, ids)
    }

    /// One controller run over `n` hosts (through the bastion when `jump`), their objects
    /// created at once ([`create_at_once`]): (seconds, calls, the seconds the controller spent in
    /// each step per registration, all passes summed).
    async fn controller_run(
        &self,
        n: usize,
        jump: bool,
    ) -> R<(f64, CallSummary, BTreeMap<String, f64>)> {
        let k = self.next();
        let name = format!("ctl{k}");
        let (stack, ids) = self.fresh_stack(&name, n).await;
        self.namespace(&name)?;
        let jump = jump.then_some(&self.bastion);
        let objects = ec2_objects(&stack, &ids, &name, &self.hosts, jump)?;
        // The floor opens all `n` sessions at once; so may the controller. By default one
        // namespace holds half the SSH slots (the rest kept for other tenants), which would run a
        // 50-host wave's installs in two rounds: a cluster with one tenant gives it all of them.
        let slots = n.max(64).to_string();
        let controller = self.start_controller_with(
            &name,
            &name,
            &["--ssh-concurrency", &slots, "--ssh-namespace-share", &slots],
        )?;
        self.aws.clear_calls();
        let t0 = Instant::now();
        create_at_once(&self.registrations(&name), objects).await?;
        let result = self
            .wait_ready(&name, n, t0, Duration::from_secs(600), || true)
            .await;
        let calls = self.aws.call_summary();
        let steps = metric_by_label(
            &controller.metrics(),
            "registrar_step_duration_seconds_sum",
            "step",
        )
        .into_iter()
        .map(|(step, secs)| (step, secs / n as f64))
        .collect();
        controller.stop();
        let secs = result?;
        Ok((secs, calls, steps))
    }

    /// One CLI run over `n` hosts, `parallel` at a time: (seconds, calls).
    async fn cli_run(&self, cli: &Path, n: usize, parallel: usize) -> R<(f64, CallSummary)> {
        let k = self.next();
        let name = format!("cli{k}");
        let (stack, ids) = self.fresh_stack(&name, n).await;
        let mut jobs = Vec::new();
        for (i, (id, host)) in ids.iter().zip(&self.hosts).enumerate() {
            check_loopback(host.address())?;
            let ssh = format!(
                "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                 -o BatchMode=yes -o LogLevel=ERROR {}@{}",
                host.port(),
                self.key_path.display(),
                ssh_hosts::USER,
                host.address()
            );
            jobs.push((id.clone(), format!("{name}-{i}"), ssh));
        }
        let env = self.cli_env();
        let jobs = Arc::new(jobs);
        let next = Arc::new(AtomicUsize::new(0));
        let log_dir = self.dir.join(&name);
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        self.aws.clear_calls();
        let t0 = Instant::now();
        let mut threads = Vec::new();
        for _ in 0..parallel.min(n) {
            let (jobs, next, env, cli, stack, log_dir) = (
                jobs.clone(),
                next.clone(),
                env.clone(),
                cli.to_owned(),
                stack.clone(),
                log_dir.clone(),
            );
            threads.push(std::thread::spawn(move || -> R {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((id, hostname, ssh)) = jobs.get(i) else {
                        return Ok(());
                    };
                    let log = std::fs::File::create(log_dir.join(format!("{hostname}.log")))
                        .map_err(|e| e.to_string())?;
                    let status = Command::new(&cli)
                        .args(["opsworks", "register", "--infrastructure-class", "ec2"])
                        .args(["--region", REGION, "--stack-id", &stack])
                        .args(["--override-hostname", hostname])
                        .args(["--override-ssh", ssh])
                        .arg(id)
                        .env_clear()
                        .envs(env.iter().map(|(k, v)| (k, v)))
                        .stdin(Stdio::null())
                        .stdout(log.try_clone().map_err(|e| e.to_string())?)
                        .stderr(log)
                        .status()
                        .map_err(|e| format!("running {}: {e}", cli.display()))?;
                    if !status.success() {
                        return Err(format!(
                            "aws opsworks register {hostname}: {status}; see {}",
                            log_dir.join(format!("{hostname}.log")).display()
                        ));
                    }
                }
            }));
        }
        for t in threads {
            t.join().map_err(|_| "a CLI thread panicked")??;
        }
        self.wait_registered(&name, &stack, n, t0).await?;
        let secs = t0.elapsed().as_secs_f64();
        Ok((secs, self.aws.call_summary()))
    }

    /// The CLI's environment: every endpoint on loopback (IAM, EC2 and STS through the recording
    /// proxy), no config files, no instance metadata.
    fn cli_env(&self) -> Vec<(String, String)> {
        let proxy = self.aws.controller_aws_url().to_owned();
        let ops = self.aws.opsworks.url().to_owned();
        vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), self.dir.display().to_string()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_ACCESS_KEY.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), proxy.clone()),
            ("AWS_ENDPOINT_URL_IAM".into(), proxy.clone()),
            ("AWS_ENDPOINT_URL_EC2".into(), proxy.clone()),
            ("AWS_ENDPOINT_URL_STS".into(), proxy),
            ("AWS_ENDPOINT_URL_OPSWORKS".into(), ops),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("NO_PROXY".into(), "*".into()),
        ]
    }

    /// Steady state with `n` registered objects: prepares them, lets a first controller adopt
    /// them, then restarts the controller `runs` times.
    async fn steady(&self, n: usize, runs: usize) -> R<Steady> {
        let k = self.next();
        let name = format!("steady{k}");
        let stack = self.aws.create_stack(&name, None).await;
        let ops = self.registering_client().await?;
        let address = |i: usize| Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (ops, stack) = (ops.clone(), stack.clone());
            let hostname = format!("{name}-{i}");
            set.spawn(async move {
                ops.register_instance()
                    .stack_id(stack)
                    .hostname(hostname)
                    .private_ip(address(i).to_string())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("RegisterInstance: {e:?}"))
            });
            if set.len() >= 16 {
                set.join_next()
                    .await
                    .expect("a task")
                    .map_err(|e| e.to_string())??;
            }
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        self.namespace(&name)?;
        let mut text = String::new();
        for i in 0..n {
            let a = address(i);
            check_loopback(a)?;
            text.push_str(&format!(
                "---\napiVersion: registrar.dev/v1alpha1\nkind: InstanceRegistration\n\
                 metadata:\n  name: {name}-{i}\nspec:\n  stackId: {stack}\n  \
                 infrastructureClass: on-premises\n  target: \"{a}\"\n  hostname: {name}-{i}\n  \
                 ssh:\n    username: {}\n    privateKeySecretRef:\n      name: {SECRET}\n    \
                 address: \"{a}\"\n    port: 9\n",
                ssh_hosts::USER
            ));
        }
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        say(self.start, &format!("steady {n}: creating {n} objects"));
        self.kubectl(&["-n", &name, "create", "-f", &path.to_string_lossy()])?;
        say(
            self.start,
            &format!("steady {n}: first controller adopting"),
        );
        let first = self.start_controller(&name, &format!("{name}-adopt"))?;
        let t0 = Instant::now();
        let adopt = self
            .wait_ready(&name, n, t0, Duration::from_secs(900), || true)
            .await;
        first.stop();
        let adopt = adopt?;
        say(self.start, &format!("steady {n}: adopted in {adopt:.1}s"));
        let mut out = Steady {
            n,
            adopt_secs: adopt,
            ..Steady::default()
        };
        for r in 0..runs {
            // Let the stop settle before counting calls.
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.aws.clear_calls();
            let writes_before = self.object_writes(&name);
            let t0 = Instant::now();
            let c = self.start_controller(&name, &format!("{name}-restart{r}"))?;
            let result = self
                .wait_ready(&name, n, t0, Duration::from_secs(900), || {
                    metric_sum(&c.metrics(), "registrar_reconciles_total") >= n as f64
                })
                .await;
            let (rss, cpu) = proc_usage(c.pid());
            let metrics = c.metrics();
            let calls = self.aws.call_summary();
            // A moment for writes in flight to reach the audit log.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let writes = self.object_writes(&name) - writes_before;
            c.stop();
            let secs = result?;
            out.secs.push(secs);
            out.object_writes.push(writes as f64);
            out.rss_mib.push(rss);
            out.cpu_secs.push(cpu);
            out.ssh_sessions
                .push(metric_sum(&metrics, "registrar_ssh_sessions_total"));
            out.reconciles
                .push(metric_sum(&metrics, "registrar_reconciles_total"));
            out.calls.push(calls_table(&calls));
            say(
                self.start,
                &format!(
                    "steady {n}: restart {r}: all re-verified in {secs:.2}s, RSS {rss:.0} MiB, CPU {cpu:.2}s"
                ),
            );
        }
        Ok(out)
    }

    /// The floor: what `hosts` take to register with nothing of the controller's. Made before
    /// the clock starts: a fresh stack with one EC2 record per host (as the controller's runs
    /// have), one IAM user's key allowed to register, the stack's provisioning parameters. Then,
    /// timed: one plain OpenSSH `ssh` per host, all at once, each running what the agent's
    /// install is (download the installer from the endpoint, unpack it, write its preconfig,
    /// `sudo boot-registration`, which takes the stand-in's T and registers), until the endpoint
    /// lists every host registered. Returns the seconds.
    async fn floor_run(&self, hosts: &[SshHost]) -> R<f64> {
        self.floor_run_with_cpu(hosts).await.map(|(secs, _)| secs)
    }

    /// [`Env::floor_run`], and the CPU used while it was timed.
    async fn floor_run_with_cpu(&self, hosts: &[SshHost]) -> R<(f64, CpuUse)> {
        let n = hosts.len();
        let name = format!("floor{}", self.next());
        let (stack, _ids) = self.fresh_stack_on(&name, hosts).await;
        let (key_id, secret) = self.agent_key().await?;
        let parameters = self
            .aws
            .opsworks_client()
            .describe_stack_provisioning_parameters()
            .stack_id(&stack)
            .send()
            .await
            .map_err(|e| format!("DescribeStackProvisioningParameters: {e:?}"))?;
        let url = parameters
            .agent_installer_url()
            .ok_or("no AgentInstallerUrl")?
            .to_owned();
        let params = parameters.parameters().cloned().unwrap_or_default();
        let bucket = params
            .get("assets_download_bucket")
            .cloned()
            .unwrap_or_default();
        let q = opsworks_endpoint::standin::shell_quote;
        let scripts: Vec<String> = (0..n)
            .map(|i| {
                let mut preconfig = opsworks_endpoint::standin::Preconfig::new();
                for (k, v) in &params {
                    preconfig.insert(k.clone(), serde_json::json!(v));
                }
                preconfig.insert("stack_id".into(), serde_json::json!(stack));
                preconfig.insert("access_key_id".into(), serde_json::json!(key_id));
                preconfig.insert("secret_access_key".into(), serde_json::json!(secret));
                preconfig.insert("hostname".into(), serde_json::json!(format!("{name}-{i}")));
                preconfig.insert("import".into(), serde_json::json!(true));
                format!(
                    "set -e
d=$(mktemp -d)
curl -fsS -o \"$d/i.tgz\" {url}
                     tar -xzf \"$d/i.tgz\" -C \"$d\"
printf '%s' {preconfig}                      >\"$d/opsworks-agent-installer/preconfig\"
sudo -n env                      OPSWORKS_ASSETS_DOWNLOAD_BUCKET={bucket}                      \"$d/opsworks-agent-installer/boot-registration\"
rm -rf \"$d\"
",
                    url = q(&url),
                    preconfig = q(&opsworks_endpoint::standin::render_preconfig(&preconfig)),
                    bucket = q(&bucket),
                )
            })
            .collect();
        let log_dir = self.dir.join(&name);
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let cpu = CpuSnapshot::take(None);
        let t0 = Instant::now();
        let mut children = Vec::new();
        for (i, (host, script)) in hosts.iter().zip(&scripts).enumerate() {
            check_loopback(host.address())?;
            let log = std::fs::File::create(log_dir.join(format!("{i}.log")))
                .map_err(|e| e.to_string())?;
            let mut child = Command::new("ssh")
                .args(["-p", &host.port().to_string(), "-i"])
                .arg(&self.key_path)
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "LogLevel=ERROR",
                ])
                .arg(format!("{}@{}", ssh_hosts::USER, host.address()))
                .arg("sh -s")
                .stdin(Stdio::piped())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("ssh: {e}"))?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing the script: {e}"))?;
            drop(stdin);
            children.push(child);
        }
        let waited = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(|mut c| c.wait().map(|s| s.success()).unwrap_or(false))
                .filter(|ok| !ok)
                .count()
        })
        .await
        .map_err(|e| e.to_string())?;
        if waited > 0 {
            return Err(format!(
                "{name}: {waited} of {n} installs over ssh failed; see {}",
                log_dir.display()
            ));
        }
        self.wait_registered(&name, &stack, n, t0).await?;
        let secs = t0.elapsed().as_secs_f64();
        Ok((secs, cpu.until(&CpuSnapshot::take(None), &[])))
    }

    /// Waits until OpsWorks lists `n` instances of `stack` registered, as the controller's Ready
    /// is (at most 30 minutes after `t0`).
    async fn wait_registered(&self, name: &str, stack: &str, n: usize, t0: Instant) -> R {
        loop {
            let registered = self
                .aws
                .opsworks
                .instances()
                .into_iter()
                .filter(|i| {
                    i.stack_id == stack && (i.status == "registered" || i.status == "online")
                })
                .count();
            if registered >= n {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(1800) {
                return Err(format!("{name}: {registered} of {n} registered"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The access key ID and secret of a fresh IAM user allowed to register (as the agent's
    /// registration is signed).
    async fn agent_key(&self) -> R<(String, String)> {
        // Through the proxy, as the controller makes its keys: the endpoint learns the secret
        // then, and checks the agents' signatures without reading all of moto's state (500
        // registrations at once, each waiting on such a read, took the floor from 40 s to 94 s).
        let iam = self.aws.iam_as(ACCESS_KEY_ID, SECRET_ACCESS_KEY);
        let user = format!("bench-registrar-{}", self.next());
        iam.create_user()
            .user_name(&user)
            .send()
            .await
            .map_err(|e| format!("CreateUser: {e:?}"))?;
        iam.put_user_policy()
            .user_name(&user)
            .policy_name("register")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"opsworks:RegisterInstance","Resource":"*"}]}"#,
            )
            .send()
            .await
            .map_err(|e| format!("PutUserPolicy: {e:?}"))?;
        let key = iam
            .create_access_key()
            .user_name(&user)
            .send()
            .await
            .map_err(|e| format!("CreateAccessKey: {e:?}"))?;
        let key = key.access_key().ok_or("CreateAccessKey returned no key")?;
        Ok((
            key.access_key_id().to_owned(),
            key.secret_access_key().to_owned(),
        ))
    }

    /// An OpsWorks client signed with the key of an IAM user allowed to register (made once),
    /// as the agent's registration is.
    async fn registering_client(&self) -> R<aws_sdk_opsworks::Client> {
        let (key_id, secret) = self.agent_key().await?;
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.aws.opsworks.url())
            .credentials_provider(aws_sdk_opsworks::config::SharedCredentialsProvider::new(
                aws_sdk_opsworks::config::Credentials::new(key_id, secret, None, None, "bench"),
            ))
            .build();
        Ok(aws_sdk_opsworks::Client::new(&config))
    }

    /// Writes (patch, update) to the objects of `ns` and their status, from the audit log.
    fn object_writes(&self, ns: &str) -> usize {
        let verbs = ["patch", "update"];
        self.cp
            .audited(ns, "instanceregistrations", Some("status"), &verbs)
            + self.cp.audited(ns, "instanceregistrations", None, &verbs)
    }

    /// One latency run: one object (through the bastion when `jump`); apply to Ready minus the
    /// installer's run time.
    async fn latency_run(&self, jump: bool) -> R<f64> {
        let (secs, _, _) = self.controller_run(1, jump).await?;
        Ok(secs - self.run_time.as_secs_f64())
    }

    /// `run` with the endpoint keeping a registered instance `registering` for `delay` (put
    /// back as it was after the run).
    async fn at_registration_delay<T>(
        &self,
        delay: Duration,
        run: impl std::future::Future<Output = R<T>>,
    ) -> R<T> {
        let before = self.registration_delay()?;
        self.aws.opsworks.set_registration_delay(delay);
        let result = run.await;
        self.aws.opsworks.set_registration_delay(before);
        result
    }

    /// How long the endpoint keeps a registered instance `registering` now (its
    /// `GET /_endpoint/state`, which names it).
    fn registration_delay(&self) -> R<Duration> {
        let url = self.aws.opsworks.url();
        let port = url
            .trim_end_matches('/')
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| format!("no port in the endpoint's URL {url}"))?;
        let body = http_get(port, "/_endpoint/state")
            .ok_or("GET /_endpoint/state of the endpoint failed")?;
        let state: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/_endpoint/state: {e}"))?;
        state["RegistrationDelayMs"]
            .as_u64()
            .map(Duration::from_millis)
            .ok_or_else(|| "/_endpoint/state names no RegistrationDelayMs".to_owned())
    }
}

/// The deletion policies of the fleet run's unrelated objects, which stay blocked (their Secret
/// does not exist). Deleting a `Deregister` one makes AWS calls (IAM: the 20 names its IAM user
/// could have, looked up, since it never recorded one; OpsWorks: its stack and instances); a
/// `Retain` one makes none, so its time is the controller's and the API server's alone.
const UNRELATED_POLICIES: [&str; 2] = ["Retain", "Deregister"];
/// When the fleet run deletes one unrelated object of each policy: once this share of the fleet
/// has started installing (three deletions spread over the wave).
const DELETE_AT: [f64; 3] = [0.25, 0.5, 0.75];
/// What the unrelated objects' names start with.
const UNRELATED_PREFIX: &str = "unrelated-";

/// The unrelated object of `policy` deleted in round `round` (from 0).
fn unrelated(policy: &str, round: usize) -> String {
    format!("{UNRELATED_PREFIX}{}-{}", policy.to_lowercase(), round + 1)
}

/// What the fleet run measured (section 5).
struct Fleet {
    n: usize,
    run_time: f64,
    /// Seconds to start the fleet's sshds.
    hosts_secs: f64,
    /// Whether the hosts ran with `SCHED_IDLE` (`--fleet-hosts-priority idle`).
    hosts_idle: bool,
    /// The floor's runs on the same hosts ([`Env::floor_run`]): before the wave and after it;
    /// and the CPU each used.
    floors: Vec<f64>,
    floor_cpu: Vec<CpuUse>,
    /// The CPU the wave used, from apply to all Ready.
    wave_cpu: CpuUse,
    /// The longest accept queues of listening ports during the wave, longest first.
    accept_queues: Vec<String>,
    /// Seconds creating the fleet's objects took (inside `ready_secs`).
    apply_secs: f64,
    /// Seconds from apply to all Ready; `None` when not all were Ready by the time limit.
    ready_secs: Option<f64>,
    /// Seconds from apply to the first, and to half the fleet, Ready.
    first_ready_secs: Option<f64>,
    half_ready_secs: Option<f64>,
    /// Seconds from apply to every object having started installing (`None`: not all did).
    all_installing_secs: Option<f64>,
    /// Ready when the run ended.
    ready: usize,
    /// Seconds the wave ran until the run ended (all Ready or the limit).
    waited_secs: f64,
    /// The unrelated objects' deletions, one round per [`DELETE_AT`].
    deletions: Vec<Deletion>,
    /// Status subresource writes (patch, update) of the fleet's objects, object writes, and
    /// writes of either kind refused with 409 Conflict, from the audit log.
    status_writes: usize,
    object_writes: usize,
    conflicts: usize,
    /// SSH sessions (all ended ones) and those that did not succeed, from the controller.
    ssh_sessions: f64,
    ssh_unsucceeded: f64,
    /// The most SSH sessions open at once, sampled every 500 ms.
    peak_in_flight: f64,
    /// Reconciles that did not end Ready, by reason (the controller's metric).
    failures: BTreeMap<String, f64>,
    /// Seconds each step took, summed over every pass (the controller's
    /// `registrar_step_duration_seconds`), by step.
    step_secs: BTreeMap<String, f64>,
    rss_mib: f64,
    cpu_secs: f64,
    calls: CallSummary,
}

/// One round of the unrelated objects' deletion during the wave ([`DELETE_AT`]).
struct Deletion {
    /// The share of the fleet installing that started the round.
    at: f64,
    /// Per object deleted, in [`UNRELATED_POLICIES`]'s order.
    gone: Vec<Gone>,
    /// Fleet objects that had started installing, and were Ready, when they were deleted.
    installing: usize,
    ready: usize,
    /// SSH sessions open when they were deleted.
    in_flight: f64,
    /// CPU use while the round's objects were being deleted ([`cpu_use`]).
    cpu: CpuUse,
}

/// One unrelated object deleted: its name, its policy, the seconds from the delete to the
/// benchmark's GET answered 404, and where those seconds went.
struct Gone {
    name: String,
    policy: &'static str,
    secs: f64,
    timeline: Timeline,
}

/// Where an unrelated object's deletion spent its time: seconds from the API server receiving
/// the DELETE (its audit log) to its answer, to another watch of the namespace (the
/// benchmark's) seeing the deletion, to the controller starting its cleanup (its log), to the
/// API server receiving the controller's request that removed the finalizer, and to that
/// request's response; and the status writes in between (a cleanup that could not finish says
/// why there).
#[derive(Default)]
struct Timeline {
    /// The DELETE answered; the benchmark's own watch of the namespace saw the deletion.
    delete_done: Option<f64>,
    watch_seen: Option<f64>,
    cleanup_started: Option<f64>,
    finalizer_sent: Option<f64>,
    finalizer_done: Option<f64>,
    status_writes: usize,
}

/// Over `wall` seconds: seconds a process ran on a CPU and waited in a run queue for one (its
/// threads', `/proc/<pid>/task/*/schedstat`), by process; seconds during which some task waited
/// for a CPU ([`cpu_pressure_secs`]); tasks running or ready to run, sampled ([`procs_running`]).
#[derive(Default)]
struct CpuUse {
    wall: f64,
    by_process: Vec<(String, f64, f64)>,
    pressure: f64,
    /// CPU seconds the whole machine used ([`machine_cpu_secs`]).
    machine: f64,
    /// Connections refused by a full accept queue ([`listen_overflows`]).
    listen_overflows: f64,
    running_mean: f64,
    running_max: usize,
}

impl CpuUse {
    /// One line: the machine's CPU seconds, each process's (ran / waited), and the rest's.
    fn text(&self) -> String {
        let mut rest = self.machine;
        let processes: Vec<String> = self
            .by_process
            .iter()
            .map(|(name, ran, waited)| {
                rest -= ran;
                format!("{name} {ran:.1}/{waited:.1}")
            })
            .collect();
        format!(
            "{:.1} CPU-s in {:.1}s: {}; the rest (the hosts' sshd and sessions, ssh, kubectl) \
             {rest:.1}; connections dropped by a full accept queue {}",
            self.machine,
            self.wall,
            processes.join(", "),
            self.listen_overflows
        )
    }
}

/// The fleet's objects as a watch sees them.
#[derive(Default)]
struct Wave {
    /// Objects that started installing (status.installStartedAt set or phase Installing), and
    /// when that was first seen.
    installing: std::collections::HashMap<String, Instant>,
    /// Objects Ready now.
    ready: std::collections::HashSet<String>,
    /// When each object was first seen Ready.
    first_ready: std::collections::HashMap<String, Instant>,
    /// When all of the fleet was Ready.
    all_ready: Option<Instant>,
    /// Objects seen with a condition of reason `Throttled`, at any time.
    throttled: std::collections::HashSet<String>,
    /// Objects seen failed (phase `Failed`, or `Stalled` true), at any time.
    ever_failed: std::collections::HashSet<String>,
    /// Objects in phase `Failed` now.
    failed: std::collections::HashSet<String>,
    /// When this watch first saw each object with a deletion timestamp (any object: the
    /// unrelated ones are deleted during the wave).
    deleting: std::collections::HashMap<String, std::time::SystemTime>,
}

impl Wave {
    /// Takes in a copy of an object: the fleet's are named `<prefix><i>`.
    fn observe(&mut self, o: &DynamicObject, prefix: &str, n: usize) {
        if let Some(name) = &o.metadata.name
            && o.metadata.deletion_timestamp.is_some()
        {
            self.deleting
                .entry(name.clone())
                .or_insert_with(std::time::SystemTime::now);
        }
        let Some(name) = o.metadata.name.as_deref().filter(|n| n.starts_with(prefix)) else {
            return;
        };
        let status = &o.data["status"];
        let now = Instant::now();
        if !status["installStartedAt"].is_null() || status["phase"] == "Installing" {
            self.installing.entry(name.to_owned()).or_insert(now);
        }
        if is_ready(o) {
            self.ready.insert(name.to_owned());
            self.first_ready.entry(name.to_owned()).or_insert(now);
        } else {
            self.ready.remove(name);
        }
        let conditions = status["conditions"].as_array();
        if conditions.is_some_and(|cs| cs.iter().any(|c| c["reason"] == "Throttled")) {
            self.throttled.insert(name.to_owned());
        }
        let stalled = conditions.is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")
        });
        if status["phase"] == "Failed" {
            self.failed.insert(name.to_owned());
        } else {
            self.failed.remove(name);
        }
        if stalled || status["phase"] == "Failed" {
            self.ever_failed.insert(name.to_owned());
        }
        if self.all_ready.is_none() && self.ready.len() >= n {
            self.all_ready = Some(now);
        }
    }

    /// Seconds from `t0` to the `k`-th (from 1) of `times`, in order; `None` when fewer.
    fn kth(
        times: &std::collections::HashMap<String, Instant>,
        k: usize,
        t0: Instant,
    ) -> Option<f64> {
        let mut v: Vec<Instant> = times.values().copied().collect();
        v.sort();
        v.get(k.checked_sub(1)?)
            .map(|at| at.saturating_duration_since(t0).as_secs_f64())
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until every object of `wave` is Ready, or `limit` after `t0`, saying `progress` every
/// 10 s.
async fn wait_all_ready(
    start: Instant,
    t0: Instant,
    limit: Duration,
    wave: &std::sync::Mutex<Wave>,
    progress: impl Fn(&Wave) -> String,
) {
    let mut said = Instant::now();
    while lock(wave).all_ready.is_none() && t0.elapsed() < limit {
        if said.elapsed() > Duration::from_secs(10) {
            said = Instant::now();
            say(start, &progress(&lock(wave)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows the objects of `api` into `wave` (a list, then a watch from its version; listed again
/// when the watch fails) until all `n` of the fleet are Ready. Exact times, at the cost of one
/// event per write, where listing 500 objects every 50 ms would cost the API server (on the
/// controller's cores) far more.
async fn follow_wave(
    api: Api<DynamicObject>,
    prefix: String,
    n: usize,
    wave: Arc<std::sync::Mutex<Wave>>,
) {
    loop {
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut w = lock(&wave);
            list.items.iter().for_each(|o| w.observe(o, &prefix, n));
            if w.all_ready.is_some() {
                return;
            }
        }
        let mut version = list.metadata.resource_version.unwrap_or_default();
        'watch: loop {
            let Ok(stream) = api
                .watch(&WatchParams::default().timeout(60), &version)
                .await
            else {
                break 'watch;
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        if let Some(v) = &o.metadata.resource_version {
                            version = v.clone();
                        }
                        let mut w = lock(&wave);
                        w.observe(&o, &prefix, n);
                        if w.all_ready.is_some() {
                            return;
                        }
                    }
                    Ok(WatchEvent::Bookmark(b)) => version = b.metadata.resource_version,
                    Ok(WatchEvent::Deleted(_)) => {}
                    // Too old a version, or a broken stream: list again.
                    Ok(WatchEvent::Error(_)) | Err(_) => break 'watch,
                }
            }
        }
    }
}

/// The objects of a run: EC2 instance `ids[i]` on `hosts[i]` (through `jump` if given), named
/// `<prefix>-<i>`.
fn ec2_objects(
    stack: &str,
    ids: &[String],
    prefix: &str,
    hosts: &[SshHost],
    jump: Option<&SshHost>,
) -> R<Vec<serde_json::Value>> {
    if let Some(jump) = jump {
        check_loopback(jump.address())?;
    }
    ids.iter()
        .zip(hosts)
        .enumerate()
        .map(|(i, (id, host))| {
            check_loopback(host.address())?;
            let mut object = serde_json::json!({
                "apiVersion": "registrar.dev/v1alpha1",
                "kind": "InstanceRegistration",
                "metadata": {"name": format!("{prefix}-{i}")},
                "spec": {
                    "stackId": stack,
                    "infrastructureClass": "ec2",
                    "target": id,
                    "hostname": format!("{prefix}-{i}"),
                    "ssh": {
                        "username": ssh_hosts::USER,
                        "privateKeySecretRef": {"name": SECRET},
                        "address": host.address().to_string(),
                        "port": host.port(),
                    },
                },
            });
            if let Some(jump) = jump {
                object["spec"]["ssh"]["jumpHosts"] = serde_json::json!([{
                    "address": jump.address().to_string(),
                    "port": jump.port(),
                    "username": ssh_hosts::USER,
                }]);
            }
            Ok(object)
        })
        .collect()
}

/// Creates `objects` with `api`, 32 creates in flight (`kubectl apply`, one object after
/// another, took 20 s for 500 on two busy cores: that would be measured, not the controller).
async fn create_at_once(api: &Api<DynamicObject>, objects: Vec<serde_json::Value>) -> R {
    let created: Vec<R> = futures::stream::iter(objects)
        .map(|o| async move {
            let o: DynamicObject = serde_json::from_value(o).map_err(|e| e.to_string())?;
            api.create(&PostParams::default(), &o)
                .await
                .map(|_| ())
                .map_err(|e| format!("creating {}: {e}", o.metadata.name.unwrap_or_default()))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<R<Vec<()>>>()?;
    Ok(())
}

/// Starts `n` SSH hosts named `<label>-<i>` that accept `public_key`, four at a time, saying
/// how far it got.
fn start_fleet_hosts(label: &str, n: usize, public_key: &str, start: Instant) -> R<Vec<SshHost>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<SshHost>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let host = SshHost::start(&format!("{label}-{i}"));
                    host.authorize(public_key);
                    *lock(&slots[i]) = Some(host);
                    let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if d.is_multiple_of(50) || d == n {
                        say(start, &format!("{label}: {d} of {n} SSH hosts up"));
                    }
                }
            });
        }
    });
    let hosts: Vec<SshHost> = slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or("a fleet host did not start")
        })
        .collect::<Result<_, _>>()?;
    for h in &hosts {
        check_loopback(h.address())?;
    }
    Ok(hosts)
}

/// Samples the controller's open SSH sessions every 500 ms until told to stop; the peak.
fn sample_in_flight(metrics_port: u16, stop: Arc<std::sync::atomic::AtomicBool>) -> f64 {
    let mut peak: f64 = 0.0;
    while !stop.load(Ordering::SeqCst) {
        if let Some(text) = http_get(metrics_port, "/metrics") {
            peak = peak.max(metric_sum(&text, "registrar_ssh_sessions_in_flight"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    peak
}

/// SYNs dropped on this machine because a listening socket's accept queue was full
/// (`/proc/net/netstat`, `TcpExt: ListenOverflows`), since boot.
fn listen_overflows() -> f64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0.0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// The longest accept queue each listening TCP port had (`/proc/net/tcp`: a listening socket's
/// `rx_queue` is its connections not accepted yet), sampled every 100 ms until `stop`.
fn sample_listen_queues(stop: Arc<std::sync::atomic::AtomicBool>) -> BTreeMap<u16, usize> {
    let mut peaks: BTreeMap<u16, usize> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st tx_queue:rx_queue; state 0A is LISTEN.
            if f.get(3) != Some(&"0A") {
                continue;
            }
            let port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let queue = f
                .get(4)
                .and_then(|q| q.rsplit(':').next())
                .and_then(|q| usize::from_str_radix(q, 16).ok());
            if let (Some(port), Some(queue)) = (port, queue) {
                let peak = peaks.entry(port).or_default();
                *peak = (*peak).max(queue);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    peaks
}

/// The port of an `http://host:port` URL.
fn url_port(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// The samples of metric `name` by the value of `label`.
fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{label}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        *out.entry(key).or_default() += value;
    }
    out
}

impl Env {
    /// Writes (patch, update) to the InstanceRegistrations of `ns` whose names do not start with
    /// `except`, from the audit log: (to the status subresource, to the object, refused with
    /// 409 Conflict).
    fn writes_except(&self, ns: &str, except: &str) -> (usize, usize, usize) {
        let text = std::fs::read_to_string(&self.cp.audit_log).unwrap_or_default();
        let (mut status, mut object, mut conflicts) = (0, 0, 0);
        for e in text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        {
            let r = &e["objectRef"];
            if e["stage"] != "ResponseComplete"
                || !(e["verb"] == "patch" || e["verb"] == "update")
                || r["namespace"] != ns
                || r["resource"] != "instanceregistrations"
                || r["name"].as_str().is_some_and(|n| n.starts_with(except))
            {
                continue;
            }
            match r["subresource"].as_str() {
                Some("status") => status += 1,
                Some(_) => continue,
                None => object += 1,
            }
            if e["responseStatus"]["code"] == 409 {
                conflicts += 1;
            }
        }
        (status, object, conflicts)
    }

    /// The fleet run: `n` hosts started for it, the installer taking `run_time`; see
    /// [`Env::fleet_wave`].
    async fn fleet(&self, n: usize, run_time: Duration, hosts_idle: bool) -> R<Fleet> {
        let public_key = std::fs::read_to_string(self.key_path.with_extension("pub"))
            .map_err(|e| format!("reading the public key: {e}"))?;
        say(
            self.start,
            &format!("fleet: starting {n} SSH hosts (sshd each)"),
        );
        let t = Instant::now();
        let hosts = start_fleet_hosts("fleet", n, public_key.trim(), self.start)?;
        let hosts_secs = t.elapsed().as_secs_f64();
        if hosts_idle {
            for host in &hosts {
                let pid = host
                    .sshd_pid()
                    .ok_or("a fleet host's sshd is not running")?;
                set_idle(pid)?;
            }
        }
        self.aws
            .opsworks
            .set_agent_installer(AgentInstaller::StandIn(StandIn::built().run_time(run_time)));
        // The floor, the controller's wave, the floor again: both see the machine alike.
        let floor = || async {
            let floor = self.floor_run_with_cpu(&hosts).await;
            if let Ok((f, _)) = &floor {
                say(
                    self.start,
                    &format!("fleet floor: {n} hosts over plain ssh in {f:.1}s"),
                );
            }
            floor
        };
        let mut floors = vec![floor().await];
        let result = self.fleet_wave(&hosts, run_time).await;
        if result.is_ok() {
            floors.push(floor().await);
        }
        // The other sections' installer again.
        self.aws
            .opsworks
            .set_agent_installer(AgentInstaller::StandIn(
                StandIn::built().run_time(self.run_time),
            ));
        say(self.start, "fleet: stopping the SSH hosts");
        drop(hosts);
        let mut fleet = result?;
        fleet.hosts_secs = hosts_secs;
        fleet.hosts_idle = hosts_idle;
        let floors = floors.into_iter().collect::<R<Vec<(f64, CpuUse)>>>()?;
        (fleet.floors, fleet.floor_cpu) = floors.into_iter().unzip();
        Ok(fleet)
    }

    /// The fleet's wave on `hosts`: a fresh stack with one EC2 record per host, a namespace
    /// holding unrelated objects blocked on a missing Secret, a controller with
    /// `--ssh-concurrency` and `--ssh-namespace-share` the fleet's size (the fleet is one
    /// namespace's); the fleet's objects created at once, and once half
    /// of them started installing, the unrelated objects deleted. What the controller said
    /// (Events, the objects) goes to files next to its log.
    async fn fleet_wave(&self, hosts: &[SshHost], run_time: Duration) -> R<Fleet> {
        let n = hosts.len();
        let name = format!("fleet{}", self.next());
        let (stack, ids) = self.fresh_stack_on(&name, hosts).await;
        self.namespace(&name)?;
        let objects = ec2_objects(&stack, &ids, &name, hosts, None)?;
        // For the record (`kubectl apply -f` takes it too).
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(
            self.dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&list).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        let api = self.registrations(&name);
        let n_text = n.to_string();
        let controller = self.start_controller_with(
            &name,
            &name,
            &[
                "--ssh-concurrency",
                &n_text,
                "--ssh-namespace-share",
                &n_text,
            ],
        )?;
        let result = self
            .fleet_measure(&name, &stack, objects, &api, &controller, run_time)
            .await;
        self.fleet_record(&name, "fleet");
        controller.stop();
        result
    }

    /// Writes the Events and objects of `ns` next to the controller's log, and says which
    /// Events (reason, count, one message) the controller published there (each line starting
    /// with `label`).
    fn fleet_record(&self, ns: &str, label: &str) {
        for (what, file) in [("events", "events"), ("instanceregistrations", "objects")] {
            if let Ok(json) = self.kubectl(&["-n", ns, "get", what, "-o", "json"]) {
                let _ = std::fs::write(self.dir.join(format!("{ns}-{file}.json")), &json);
            }
        }
        let Ok(events) = std::fs::read_to_string(self.dir.join(format!("{ns}-events.json"))) else {
            return;
        };
        let events: serde_json::Value = serde_json::from_str(&events).unwrap_or_default();
        let mut by_reason = BTreeMap::<(String, String), (u64, String)>::new();
        for e in events["items"].as_array().into_iter().flatten() {
            let key = (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            );
            let entry = by_reason.entry(key).or_default();
            entry.0 += e["count"].as_u64().unwrap_or(1);
            if entry.1.is_empty() {
                entry.1 = e["message"].as_str().unwrap_or_default().to_owned();
            }
        }
        for ((kind, reason), (count, message)) in by_reason {
            // One line; the end of a long message (an installer's output tail) says most.
            let line: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let line = line.join(" | ");
            let start = line
                .char_indices()
                .rev()
                .nth(599)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let cut = if start > 0 { "…" } else { "" };
            say(
                self.start,
                &format!(
                    "{label}: Events {kind} {reason} x{count}, e.g.: {cut}{}",
                    &line[start..]
                ),
            );
        }
    }

    /// The measurements of [`Env::fleet_wave`], `objects` the fleet's, with `controller`
    /// running.
    async fn fleet_measure(
        &self,
        ns: &str,
        stack: &str,
        objects: Vec<serde_json::Value>,
        api: &Api<DynamicObject>,
        controller: &Controller,
        run_time: Duration,
    ) -> R<Fleet> {
        let n = objects.len();
        // The unrelated objects: blocked (their Secret does not exist), with the finalizer.
        let unrelated_objects: Vec<(String, &str)> = (0..DELETE_AT.len())
            .flat_map(|round| UNRELATED_POLICIES.map(|policy| (unrelated(policy, round), policy)))
            .collect();
        let mut text = String::new();
        for (i, (name, policy)) in unrelated_objects.iter().enumerate() {
            // A host of its own each (two objects on one host: the second is a Conflict).
            let a = Ipv4Addr::new(127, 1, 0, 1 + i as u8);
            check_loopback(a)?;
            text.push_str(&format!(
                "---\napiVersion: registrar.dev/v1alpha1\nkind: InstanceRegistration\n\
                 metadata:\n  name: {name}\nspec:\n  stackId: {stack}\n  \
                 infrastructureClass: on-premises\n  target: \"{a}\"\n  \
                 hostname: {name}\n  deletionPolicy: {policy}\n  ssh:\n    username: {}\n    \
                 privateKeySecretRef:\n      name: no-such-secret\n    address: \"{a}\"\n    \
                 port: 9\n",
                ssh_hosts::USER
            ));
        }
        let path = self.dir.join(format!("{ns}-unrelated.yaml"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        self.kubectl(&["-n", ns, "apply", "-f", &path.to_string_lossy()])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        for (name, _) in &unrelated_objects {
            loop {
                let o = api.get(name).await.map_err(|e| e.to_string())?;
                let blocked = o.data["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "SshKeyReady" && c["status"] == "False")
                });
                if blocked && !o.metadata.finalizers.unwrap_or_default().is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{ns}/{name} was not blocked on its Secret with the finalizer in 60s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        say(
            self.start,
            &format!(
                "fleet: the unrelated objects are blocked on their missing Secret; applying {n} \
                 objects"
            ),
        );

        let wave = Arc::new(std::sync::Mutex::new(Wave::default()));
        let follower = tokio::spawn(follow_wave(api.clone(), format!("{ns}-"), n, wave.clone()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (port, stop) = (controller.metrics_port, stop.clone());
            std::thread::spawn(move || sample_in_flight(port, stop))
        };
        let queues = {
            let stop = stop.clone();
            std::thread::spawn(move || sample_listen_queues(stop))
        };
        self.aws.clear_calls();
        let cpu_before = CpuSnapshot::take(Some(controller.pid()));
        let t0 = Instant::now();
        create_at_once(api, objects).await?;
        let apply_secs = t0.elapsed().as_secs_f64();
        say(
            self.start,
            &format!("fleet: created {n} objects in {apply_secs:.1}s"),
        );
        let limit = run_time + Duration::from_secs(600);
        let measured = async {
            let mut deletions = Vec::new();
            for (round, at) in DELETE_AT.into_iter().enumerate() {
                let due = ((n as f64 * at).ceil() as usize).max(1);
                deletions.push(
                    self.delete_unrelated(ns, api, controller, &wave, round, at, due, (t0, limit))
                        .await?,
                );
            }
            // All Ready, or the limit.
            wait_all_ready(self.start, t0, limit, &wave, |w| {
                format!(
                    "fleet: {:.0}s: {} of {n} started installing, {} Ready",
                    t0.elapsed().as_secs_f64(),
                    w.installing.len(),
                    w.ready.len()
                )
            })
            .await;
            Ok::<_, String>((deletions, CpuSnapshot::take(Some(controller.pid()))))
        }
        .await;
        let waited_secs = t0.elapsed().as_secs_f64();
        follower.abort();
        stop.store(true, Ordering::SeqCst);
        let peak_in_flight = sampler.join().unwrap_or(f64::NAN);
        let queues = queues.join().unwrap_or_default();
        let known = [
            (
                url_port(self.aws.controller_aws_url()),
                "the proxy in front of moto",
            ),
            (url_port(self.aws.opsworks.url()), "the OpsWorks endpoint"),
            (url_port(&self.cp.server), "kube-apiserver"),
        ];
        let mut longest: Vec<(u16, usize)> = queues.into_iter().filter(|(_, q)| *q > 0).collect();
        longest.sort_by_key(|(port, q)| (std::cmp::Reverse(*q), *port));
        let accept_queues: Vec<String> = longest
            .iter()
            .take(4)
            .map(|(port, q)| {
                let who = known
                    .iter()
                    .find(|(p, _)| *p == Some(*port))
                    .map_or("an SSH host, or another", |(_, who)| who);
                format!("{q} at port {port} ({who})")
            })
            .collect();
        let (mut deletions, cpu_after) = measured?;
        let wave_cpu = cpu_before.until(&cpu_after, &[]);
        // A moment for the last writes to reach the audit log.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The unrelated objects' requests in the audit log, and the controller's log, read once.
        let audit: Vec<serde_json::Value> = std::fs::read_to_string(&self.cp.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|e| {
                let r = &e["objectRef"];
                e["stage"] == "ResponseComplete"
                    && r["namespace"] == ns
                    && r["resource"] == "instanceregistrations"
                    && r["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(UNRELATED_PREFIX))
            })
            .collect();
        let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
        let seen = lock(&wave).deleting.clone();
        for d in &mut deletions {
            for g in &mut d.gone {
                g.timeline = deletion_timeline(&audit, &log, &g.name, seen.get(&g.name).copied());
            }
        }
        let (ready_secs, ready, first_ready_secs, half_ready_secs, all_installing_secs) = {
            let w = lock(&wave);
            (
                w.all_ready.map(|at| at.duration_since(t0).as_secs_f64()),
                w.ready.len(),
                Wave::kth(&w.first_ready, 1, t0),
                Wave::kth(&w.first_ready, n.div_ceil(2), t0),
                Wave::kth(&w.installing, n, t0),
            )
        };
        let calls = self.aws.call_summary();
        let (rss_mib, cpu_secs) = proc_usage(controller.pid());
        let metrics = controller.metrics();
        let sessions = metric_by_label(&metrics, "registrar_ssh_sessions_total", "reason");
        let ssh_sessions: f64 = sessions.values().fold(0.0, |a, v| a + v);
        let ssh_unsucceeded: f64 = sessions
            .iter()
            .filter(|(reason, _)| *reason != "succeeded")
            .fold(0.0, |a, (_, v)| a + v);
        let failures = metric_by_label(&metrics, "registrar_reconcile_failures_total", "reason");
        let step_secs = metric_by_label(&metrics, "registrar_step_duration_seconds_sum", "step");
        let (status_writes, object_writes, conflicts) = self.writes_except(ns, UNRELATED_PREFIX);
        Ok(Fleet {
            n,
            run_time: run_time.as_secs_f64(),
            hosts_secs: 0.0,
            hosts_idle: false,
            floors: Vec::new(),
            floor_cpu: Vec::new(),
            wave_cpu,
            accept_queues,
            apply_secs,
            ready_secs,
            first_ready_secs,
            half_ready_secs,
            all_installing_secs,
            ready,
            waited_secs,
            deletions,
            status_writes,
            object_writes,
            conflicts,
            ssh_sessions,
            ssh_unsucceeded,
            peak_in_flight,
            failures,
            step_secs,
            rss_mib,
            cpu_secs,
            calls,
        })
    }
}

impl Env {
    /// Round `round` of the unrelated objects' deletion: once `due` of the fleet have started
    /// installing (before `t0 + limit`, the wave's own), one of each policy deleted at once, and
    /// the time to each gone.
    #[allow(clippy::too_many_arguments)]
    async fn delete_unrelated(
        &self,
        ns: &str,
        api: &Api<DynamicObject>,
        controller: &Controller,
        wave: &std::sync::Mutex<Wave>,
        round: usize,
        at: f64,
        due: usize,
        (t0, limit): (Instant, Duration),
    ) -> R<Deletion> {
        while lock(wave).installing.len() < due {
            if t0.elapsed() > limit {
                return Err(format!(
                    "{ns}: {} started installing after {}s, {due} awaited",
                    lock(wave).installing.len(),
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let in_flight = metric_sum(&controller.metrics(), "registrar_ssh_sessions_in_flight");
        let (installing, ready) = {
            let w = lock(wave);
            (w.installing.len(), w.ready.len())
        };
        let names: Vec<(String, &'static str)> = UNRELATED_POLICIES
            .iter()
            .map(|policy| (unrelated(policy, round), *policy))
            .collect();
        let before = CpuSnapshot::take(Some(controller.pid()));
        let td = Instant::now();
        for (name, _) in &names {
            api.delete(name, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting {name}: {e}"))?;
        }
        let mut gone: Vec<Option<f64>> = vec![None; names.len()];
        let mut running = Vec::new();
        while gone.iter().any(Option::is_none) {
            running.push(procs_running());
            for (i, (name, _)) in names.iter().enumerate() {
                // 404: gone. A failed GET is looked at again.
                if gone[i].is_none()
                    && let Ok(None) = api.get_opt(name).await
                {
                    gone[i] = Some(td.elapsed().as_secs_f64());
                }
            }
            if td.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "{ns}: the unrelated objects of round {} were not gone after 300s",
                    round + 1
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = before.until(&CpuSnapshot::take(Some(controller.pid())), &running);
        let gone: Vec<Gone> = names
            .into_iter()
            .zip(gone.into_iter().flatten())
            .map(|((name, policy), secs)| Gone {
                name,
                policy,
                secs,
                timeline: Timeline::default(),
            })
            .collect();
        say(
            self.start,
            &format!(
                "fleet: at {:.0}% installing ({installing} of the fleet, {ready} Ready, \
                 {in_flight} SSH sessions open), the unrelated objects deleted in {}",
                at * 100.0,
                gone.iter()
                    .map(|g| format!("{:.2}s ({})", g.secs, g.policy))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok(Deletion {
            at,
            gone,
            installing,
            ready,
            in_flight,
            cpu,
        })
    }
}

/// Where the deletion of `name` spent its time ([`Timeline`]), from the API server's audit
/// log entries of the object (`audit`, complete requests) and the controller's log `log`.
fn deletion_timeline(
    audit: &[serde_json::Value],
    log: &str,
    name: &str,
    watch_seen: Option<std::time::SystemTime>,
) -> Timeline {
    let at = |v: &serde_json::Value| v.as_str()?.parse::<k8s_openapi::jiff::Timestamp>().ok();
    let entries: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["objectRef"]["name"] == name)
        .collect();
    let delete = entries.iter().find(|e| e["verb"] == "delete");
    let Some(deleted) = delete.and_then(|e| at(&e["requestReceivedTimestamp"])) else {
        return Timeline::default();
    };
    let since = |t: k8s_openapi::jiff::Timestamp| t.duration_since(deleted).as_secs_f64();
    let after: Vec<&serde_json::Value> = entries
        .iter()
        .copied()
        .filter(|e| at(&e["requestReceivedTimestamp"]).is_some_and(|t| t > deleted))
        .collect();
    // The write to the object itself (not its status) after the delete: the finalizer's
    // removal, the controller's only one.
    let finalizer = after.iter().find(|e| {
        (e["verb"] == "patch" || e["verb"] == "update")
            && e["objectRef"]["subresource"].is_null()
            && e["responseStatus"]["code"] == 200
    });
    let status_writes = after
        .iter()
        .filter(|e| {
            (e["verb"] == "patch" || e["verb"] == "update")
                && e["objectRef"]["subresource"] == "status"
        })
        .count();
    // The controller's line starting the cleanup (see `controller::cleanup`), in the reconcile
    // span naming the object.
    let marker = format!("name={name}}}");
    let cleanup_started = log
        .lines()
        .filter(|l| l.contains(&marker) && l.contains("the object is being deleted"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .find(|t| *t > deleted)
        .map(since);
    Timeline {
        delete_done: delete.and_then(|e| at(&e["stageTimestamp"])).map(since),
        watch_seen: watch_seen
            .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
            .map(since),
        cleanup_started,
        finalizer_sent: finalizer
            .and_then(|e| at(&e["requestReceivedTimestamp"]))
            .map(since),
        finalizer_done: finalizer.and_then(|e| at(&e["stageTimestamp"])).map(since),
        status_writes,
    }
}

/// The unrelated objects' deletions of section 5: each round's times and where they went, the
/// CPU the processes serving them got, and the medians and maxima by policy.
fn deletions_table(deletions: &[Deletion]) -> String {
    let mut out = String::from(
        "   unrelated objects (blocked, finalizer) deleted during the wave; seconds from the API \
         server receiving the DELETE: its answer, the benchmark's watch seeing it, the \
         controller starting its cleanup, the finalizer's removal sent and answered; status \
         writes between; run-queue wait is time spent ready to run but waiting for a CPU\n",
    );
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.2}"));
    for d in deletions {
        out.push_str(&format!(
            "   at {:.0}% installing ({} started, {} Ready, {} SSH sessions open):\n",
            d.at * 100.0,
            d.installing,
            d.ready,
            d.in_flight
        ));
        for Gone {
            name,
            policy,
            secs,
            timeline: t,
        } in &d.gone
        {
            out.push_str(&format!(
                "     {name} ({policy}) gone in {secs:.2}s: DELETE answered {}, seen {}, cleanup \
                 started {}, finalizer removal sent {}, answered {}; {} status writes\n",
                opt(t.delete_done),
                opt(t.watch_seen),
                opt(t.cleanup_started),
                opt(t.finalizer_sent),
                opt(t.finalizer_done),
                t.status_writes
            ));
        }
        let c = &d.cpu;
        let processes: Vec<String> = c
            .by_process
            .iter()
            .map(|(name, ran, waited)| format!("{name} ran {ran:.2}s, waited {waited:.2}s"))
            .collect();
        out.push_str(&format!(
            "     in those {:.2}s: {}; some task waited for a CPU {:.2}s of them; tasks running \
             or ready to run: {:.0} on average, {} at most\n",
            c.wall,
            processes.join("; "),
            c.pressure,
            c.running_mean,
            c.running_max
        ));
    }
    // Gone when the API server removed it (the finalizer's removal answered), and when the
    // benchmark's GET saw it gone (its GETs wait on the same busy API server).
    let summary = |policy: &str, secs: &dyn Fn(&Gone) -> Option<f64>| {
        let mut v: Vec<f64> = deletions
            .iter()
            .flat_map(|d| d.gone.iter())
            .filter(|g| g.policy == policy)
            .filter_map(secs)
            .collect();
        v.sort_by(f64::total_cmp);
        match v.last() {
            Some(max) => format!(
                "median {:.2}s, max {max:.2}s of {}",
                v[v.len() / 2],
                v.len()
            ),
            None => "-".to_owned(),
        }
    };
    for policy in UNRELATED_POLICIES {
        out.push_str(&format!(
            "   {policy} deletions: removed by the API server {}; seen gone by GET {}\n",
            summary(policy, &|g| g.timeline.finalizer_done),
            summary(policy, &|g| Some(g.secs)),
        ));
    }
    out
}

/// Section 5 of the table.
fn fleet_table(f: &Fleet) -> String {
    let n = f.n as f64;
    let per = |v: f64| v / n;
    let mut out = format!(
        "\n5. Fleet: N = {} hosts applied at once, installer stand-in T = {}s; controller \
         --ssh-concurrency {} --ssh-namespace-share {} (--concurrency default)\n",
        f.n, f.run_time, f.n, f.n
    );
    out.push_str(if f.hosts_idle {
        "   the hosts' processes ran with SCHED_IDLE (the CPU the rest left; \
         --fleet-hosts-priority idle)\n"
    } else {
        "   the hosts' processes ran at normal priority, sharing the CPUs with the controller, \
         the control plane, moto and the endpoint\n"
    });
    out.push_str(&format!(
        "   {} SSH hosts started in {:.1}s; creating the objects (32 at a time) took {:.1}s (inside \
         the time to Ready)\n",
        f.n, f.hosts_secs, f.apply_secs
    ));
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{s:.1}s"));
    out.push_str(&format!(
        "   from apply: all had started installing at {}; first Ready at {}, half at {}\n",
        secs(f.all_installing_secs),
        secs(f.first_ready_secs),
        secs(f.half_ready_secs)
    ));
    match f.ready_secs {
        Some(s) => {
            out.push_str(&format!(
                "   apply to all {} Ready: {s:.1}s; minus T: {:.1}s\n",
                f.n,
                s - f.run_time
            ));
            if !f.floors.is_empty() {
                let floors: Vec<String> = f.floors.iter().map(|x| format!("{x:.1}s")).collect();
                out.push_str(&format!(
                    "   floor (plain ssh, same installer, same hosts; before and after the wave):                      {}; controller / floor {}\n",
                    floors.join(", "),
                    f.floors
                        .iter()
                        .map(|x| format!("{:.2}", s / x))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        None => out.push_str(&format!(
            "   NOT all Ready: {} of {} after {:.0}s\n",
            f.ready, f.n, f.waited_secs
        )),
    }
    out.push_str(&format!(
        "   CPU, ran/waited for a CPU (s): wave {}\n",
        f.wave_cpu.text()
    ));
    for (i, cpu) in f.floor_cpu.iter().enumerate() {
        out.push_str(&format!("     floor {}: {}\n", i + 1, cpu.text()));
    }
    out.push_str(&format!(
        "   longest accept queues (connections not yet accepted) during the wave: {}\n",
        if f.accept_queues.is_empty() {
            "none".to_owned()
        } else {
            f.accept_queues.join(", ")
        }
    ));
    out.push_str(&deletions_table(&f.deletions));
    out.push_str(&format!(
        "   per registration: status writes {:.2}, object writes {:.2} ({} of them refused \
         409 Conflict); SSH sessions {:.2} ({} not succeeded); peak SSH sessions open {}\n",
        per(f.status_writes as f64),
        per(f.object_writes as f64),
        f.conflicts,
        per(f.ssh_sessions),
        f.ssh_unsucceeded,
        f.peak_in_flight
    ));
    let failures: Vec<String> = f
        .failures
        .iter()
        .map(|(reason, v)| format!("{reason} {v}"))
        .collect();
    out.push_str(&format!(
        "   controller: peak RSS {:.0} MiB; CPU {:.1}s; reconciles not ending Ready: {}\n",
        f.rss_mib,
        f.cpu_secs,
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        }
    ));
    let steps: Vec<String> = f
        .step_secs
        .iter()
        .map(|(step, secs)| format!("{step} {:.2}", per(*secs)))
        .collect();
    out.push_str(&format!(
        "   seconds per registration in each step, all passes: {}\n",
        steps.join(", ")
    ));
    let calls = per_registration(std::slice::from_ref(&f.calls), f.n);
    let total: f64 = calls.values().fold(0.0, |a, v| a + v);
    let list: Vec<String> = calls.iter().map(|(op, v)| format!("{op} {v:.2}")).collect();
    out.push_str(&format!(
        "   AWS calls per registration (incl. the agent's own, and the unrelated objects' \
         deletion) {total:.2}: {}\n",
        list.join(", ")
    ));
    out
}

/// What the proxy in front of moto limits in the throttled wave, and to how many calls a second
/// (a token bucket of one second's worth, as AWS's own limits are; [`Faults::calls_per_second`]).
const THROTTLED_ACTION: &str = "iam:CreateAccessKey";
const THROTTLED_LIMIT: f64 = 5.0;
/// Seconds from apply the throttled wave's averages leave out: the controller's budget finding
/// the limit.
const SETTLE_SECS: usize = 10;

/// One second of the throttled wave, counted from apply.
#[derive(Default, Clone)]
struct Second {
    /// [`THROTTLED_ACTION`] attempts that reached the proxy, and those it did not throttle.
    keys: usize,
    keys_accepted: usize,
    /// Every IAM call that reached the proxy, and those it did not throttle.
    iam: usize,
    iam_accepted: usize,
    /// The controller's `registrar_aws_budget_rate{service="iam"}`,
    /// `registrar_aws_budget_operation_rate{operation="CreateAccessKey"}` (absent while the
    /// operation has no rate of its own) and `registrar_aws_budget_waiting{service="iam"}`,
    /// sampled half-way through the second.
    budget_rate: Option<f64>,
    key_rate: Option<f64>,
    waiting: Option<f64>,
}

/// What the throttled wave measured (section 6).
struct ThrottledWave {
    n: usize,
    /// The controller's `--aws-calls-per-second` (`None`: its default).
    calls_per_second: Option<String>,
    run_time: f64,
    hosts_secs: f64,
    apply_secs: f64,
    /// Seconds from apply to all Ready; `None` when not all were Ready by the time limit.
    ready_secs: Option<f64>,
    ready: usize,
    waited_secs: f64,
    /// Objects in phase `Failed` when the wave ended; ever `Failed` or `Stalled`; ever with a
    /// condition of reason `Throttled`.
    failed_at_end: usize,
    ever_failed: usize,
    ever_throttled: usize,
    /// Reconciles that did not end Ready, by reason (the controller's metric).
    failures: BTreeMap<String, f64>,
    /// IAM attempts the controller's budget did not make (no turn within its wait limit).
    budget_refused: f64,
    /// Whether the controller ever reported an IAM attempt waiting for its turn (the gauge
    /// appears with the first).
    waiting_seen: bool,
    seconds: Vec<Second>,
    /// Seconds from apply to the last [`THROTTLED_ACTION`] the proxy accepted.
    last_key_secs: Option<f64>,
    /// IAM calls by action: (attempts, throttled by the proxy).
    iam_calls: BTreeMap<String, (usize, usize)>,
}

/// One sample of the controller's IAM budget: (second, rate, [`THROTTLED_ACTION`]'s own rate,
/// attempts waiting).
type BudgetSample = (usize, Option<f64>, Option<f64>, Option<f64>);

/// Samples the controller's IAM budget (rate, [`THROTTLED_ACTION`]'s own rate, attempts
/// waiting) half-way through each second from `t0` until told to stop: (second, rate, the
/// action's rate, waiting).
fn sample_budget(
    metrics_port: u16,
    t0: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<BudgetSample> {
    let mut out = Vec::new();
    for k in 0.. {
        let at = t0 + Duration::from_millis(500 + 1000 * k as u64);
        while Instant::now() < at {
            if stop.load(Ordering::SeqCst) {
                return out;
            }
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        if let Some(text) = http_get(metrics_port, "/metrics") {
            let iam = |name: &str| metric_by_label(&text, name, "service").get("iam").copied();
            let action = THROTTLED_ACTION.trim_start_matches("iam:");
            out.push((
                k,
                iam("registrar_aws_budget_rate"),
                metric_by_label(&text, "registrar_aws_budget_operation_rate", "operation")
                    .get(action)
                    .copied(),
                iam("registrar_aws_budget_waiting"),
            ));
        }
    }
    out
}

impl Env {
    /// The throttled wave: `n` hosts started for it (an sshd each), a fresh stack with one EC2
    /// record per host, their objects created at once for a controller with its default AWS
    /// call budget and `--ssh-concurrency` (and `--ssh-namespace-share`) `n`, while the proxy in
    /// front of moto takes [`THROTTLED_LIMIT`] [`THROTTLED_ACTION`] calls a second and throttles
    /// the rest. The proxy's faults are cleared afterwards, whatever happened.
    async fn throttled_wave(&self, n: usize, calls_per_second: Option<&str>) -> R<ThrottledWave> {
        let proxy = self
            .aws
            .proxy
            .as_ref()
            .ok_or("no recording proxy in front of moto")?;
        let public_key = std::fs::read_to_string(self.key_path.with_extension("pub"))
            .map_err(|e| format!("reading the public key: {e}"))?;
        say(
            self.start,
            &format!("throttled: starting {n} SSH hosts (sshd each)"),
        );
        let t = Instant::now();
        let hosts = start_fleet_hosts("throttled", n, public_key.trim(), self.start)?;
        let hosts_secs = t.elapsed().as_secs_f64();
        let name = format!("throttled{}", self.next());
        let (stack, ids) = self.fresh_stack_on(&name, &hosts).await;
        self.namespace(&name)?;
        let objects = ec2_objects(&stack, &ids, &name, &hosts, None)?;
        let n_text = n.to_string();
        // The controller's default --aws-calls-per-second: its budget is what is measured.
        let controller = self.spawn_controller(
            &name,
            &name,
            &[
                "--ssh-concurrency",
                &n_text,
                "--ssh-namespace-share",
                &n_text,
            ],
            calls_per_second,
        )?;
        let result = self
            .throttled_measure(&name, objects, &controller, proxy)
            .await;
        // Later sections are not throttled.
        let cleared = proxy.set_faults(Faults::none());
        self.fleet_record(&name, "throttled");
        controller.stop();
        say(self.start, "throttled: stopping the SSH hosts");
        drop(hosts);
        cleared.map_err(|e| format!("clearing the proxy's faults: {e}"))?;
        let mut wave = result?;
        wave.hosts_secs = hosts_secs;
        Ok(wave)
    }

    /// The measurements of [`Env::throttled_wave`], `objects` those of `ns`.
    async fn throttled_measure(
        &self,
        ns: &str,
        objects: Vec<serde_json::Value>,
        controller: &Controller,
        proxy: &ProxyHandle,
    ) -> R<ThrottledWave> {
        let n = objects.len();
        let api = self.registrations(ns);
        let wave = Arc::new(std::sync::Mutex::new(Wave::default()));
        let follower = tokio::spawn(follow_wave(api.clone(), format!("{ns}-"), n, wave.clone()));
        proxy.set_faults(Faults {
            calls_per_second: THROTTLED_LIMIT,
            only_actions: vec![THROTTLED_ACTION.into()],
            ..Faults::default()
        })?;
        self.aws.clear_calls();
        say(
            self.start,
            &format!(
                "throttled: applying {n} objects; the proxy takes {THROTTLED_LIMIT} {THROTTLED_ACTION} a second"
            ),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t0 = Instant::now();
        let t0_wall = std::time::SystemTime::now();
        let sampler = {
            let (port, stop) = (controller.metrics_port, stop.clone());
            std::thread::spawn(move || sample_budget(port, t0, stop))
        };
        let created = create_at_once(&api, objects).await;
        let apply_secs = t0.elapsed().as_secs_f64();
        let limit = self.run_time + Duration::from_secs(600);
        if created.is_ok() {
            say(
                self.start,
                &format!("throttled: created {n} objects in {apply_secs:.1}s"),
            );
            wait_all_ready(self.start, t0, limit, &wave, |w| {
                format!(
                    "throttled: {:.0}s: {} of {n} Ready, {} seen Throttled",
                    t0.elapsed().as_secs_f64(),
                    w.ready.len(),
                    w.throttled.len()
                )
            })
            .await;
        }
        let waited_secs = t0.elapsed().as_secs_f64();
        follower.abort();
        stop.store(true, Ordering::SeqCst);
        let samples = sampler.join().unwrap_or_default();
        created?;
        let metrics = controller.metrics();
        let calls: Vec<_> = proxy
            .calls()
            .into_iter()
            .filter(|c| c.service == "iam")
            .collect();
        let from_apply = |c: &opsworks_endpoint::ProxyCall| {
            c.at.duration_since(t0_wall)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let throttled = |c: &opsworks_endpoint::ProxyCall| {
            c.injected == Some(opsworks_endpoint::InjectedFault::Throttling)
        };
        let is_key = |c: &opsworks_endpoint::ProxyCall| c.operation() == THROTTLED_ACTION;
        let len = calls
            .iter()
            .map(|c| from_apply(c) as usize + 1)
            .chain(samples.iter().map(|s| s.0 + 1))
            .max()
            .unwrap_or(0);
        // Every IAM call, for a closer look: when it reached the proxy and how long its answer
        // took (ms from apply), the action, the status, whether it was throttled.
        let mut csv = String::from("at_ms,duration_ms,action,status,throttled\n");
        for c in &calls {
            csv.push_str(&format!(
                "{:.0},{},{},{},{}\n",
                from_apply(c) * 1000.0,
                c.duration.as_millis(),
                c.action,
                c.status,
                throttled(c)
            ));
        }
        let _ = std::fs::write(self.dir.join(format!("{ns}-iam-calls.csv")), csv);
        let mut seconds = vec![Second::default(); len];
        let mut iam_calls = BTreeMap::<String, (usize, usize)>::new();
        let mut last_key_secs: Option<f64> = None;
        for c in &calls {
            let s = &mut seconds[from_apply(c) as usize];
            let accepted = !throttled(c);
            s.iam += 1;
            s.iam_accepted += accepted as usize;
            if is_key(c) {
                s.keys += 1;
                s.keys_accepted += accepted as usize;
                if accepted {
                    last_key_secs = Some(last_key_secs.unwrap_or(0.0).max(from_apply(c)));
                }
            }
            let e = iam_calls.entry(c.action.clone()).or_default();
            e.0 += 1;
            e.1 += throttled(c) as usize;
        }
        let waiting_seen = samples.iter().any(|s| s.3.is_some());
        for (k, rate, key_rate, waiting) in samples {
            seconds[k].budget_rate = rate;
            seconds[k].key_rate = key_rate;
            // The gauge appears with the first attempt that waited.
            seconds[k].waiting = waiting.or(rate.map(|_| 0.0));
        }
        let w = lock(&wave);
        Ok(ThrottledWave {
            calls_per_second: None,
            n,
            run_time: self.run_time.as_secs_f64(),
            hosts_secs: 0.0,
            apply_secs,
            ready_secs: w.all_ready.map(|at| at.duration_since(t0).as_secs_f64()),
            ready: w.ready.len(),
            waited_secs,
            failed_at_end: w.failed.len(),
            ever_failed: w.ever_failed.len(),
            ever_throttled: w.throttled.len(),
            failures: metric_by_label(&metrics, "registrar_reconcile_failures_total", "reason"),
            budget_refused: metric_by_label(
                &metrics,
                "registrar_aws_budget_refused_total",
                "service",
            )
            .get("iam")
            .copied()
            .unwrap_or(0.0),
            waiting_seen,
            seconds,
            last_key_secs,
            iam_calls,
        })
    }
}

/// Section 6 of the table.
fn throttled_table(t: &ThrottledWave) -> String {
    let mut out = format!(
        "\n6. Throttled wave: N = {} hosts (an sshd each) applied at once, installer stand-in T = \
         {}s; the proxy in front of moto takes {THROTTLED_LIMIT} {THROTTLED_ACTION} a second \
         (a token bucket of one second's worth) and throttles the rest; controller \
         --ssh-concurrency {} --ssh-namespace-share {}, --aws-calls-per-second {} (a second \
         per service: an operation the service throttles gets a rate of its own)\n",
        t.n,
        t.run_time,
        t.n,
        t.n,
        t.calls_per_second.as_deref().unwrap_or("20, its default")
    );
    out.push_str(&format!(
        "   {} SSH hosts started in {:.1}s; creating the objects (32 at a time) took {:.1}s \
         (inside the time to Ready)\n",
        t.n, t.hosts_secs, t.apply_secs
    ));
    match t.ready_secs {
        Some(s) => out.push_str(&format!(
            "   apply to all {} Ready: {s:.1}s; minus T: {:.1}s ({} keys at {THROTTLED_LIMIT} a \
             second take {:.1}s at least)\n",
            t.n,
            s - t.run_time,
            t.n,
            t.n as f64 / THROTTLED_LIMIT
        )),
        None => out.push_str(&format!(
            "   NOT all Ready: {} of {} after {:.0}s\n",
            t.ready, t.n, t.waited_secs
        )),
    }
    let failures: Vec<String> = t
        .failures
        .iter()
        .map(|(reason, v)| format!("{reason} {v}"))
        .collect();
    out.push_str(&format!(
        "   objects failed at the end (phase Failed): {}; ever Failed or Stalled: {}; with a \
         Throttled condition at some time: {}; reconciles not ending Ready: {}; IAM attempts the \
         controller's budget refused (no turn soon enough): {}\n",
        t.failed_at_end,
        t.ever_failed,
        t.ever_throttled,
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        },
        t.budget_refused
    ));
    // Whether the budget bounded the calls: a second's IAM attempts beyond its rate plus the
    // one-second burst it allows after a quiet while (so twice the rate, and one).
    let over: Vec<(usize, &Second)> = t
        .seconds
        .iter()
        .enumerate()
        .filter(|(_, s)| s.budget_rate.is_some_and(|r| s.iam as f64 > 2.0 * r + 1.0))
        .collect();
    let worst = over.iter().max_by(|a, b| {
        let ratio = |s: &Second| s.iam as f64 / s.budget_rate.unwrap_or(1.0);
        ratio(a.1).total_cmp(&ratio(b.1))
    });
    out.push_str(&format!(
        "   the IAM budget at work: attempts waiting for a turn {}; seconds with more IAM calls \
         reaching the proxy than twice the budget's rate, plus one (its rate and a \
         one-second burst): {} of {}{}\n",
        if t.waiting_seen {
            "seen"
        } else {
            "never seen (registrar_aws_budget_waiting never appeared)"
        },
        over.len(),
        t.seconds.iter().filter(|s| s.iam > 0).count(),
        worst.map_or(String::new(), |(k, s)| format!(
            "; the most: second {k}, {} calls at a rate of {:.1}/s",
            s.iam,
            s.budget_rate.unwrap_or(f64::NAN)
        ))
    ));
    let calls: Vec<String> = t
        .iam_calls
        .iter()
        .map(|(action, (calls, throttled))| format!("{action} {calls} ({throttled} throttled)"))
        .collect();
    out.push_str(&format!(
        "   IAM calls that reached the proxy, by action: {}\n",
        calls.join(", ")
    ));
    // The averages: from SETTLE_SECS to the last whole second before the last key was made
    // (after it, nothing is left to ask for).
    let end = t.last_key_secs.map_or(0, |s| s as usize);
    let mean = |from: usize, to: usize, f: &dyn Fn(&Second) -> f64| {
        let v: Vec<f64> = t.seconds[from..to].iter().map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let summary = |from: usize, to: usize| {
        let budget: Vec<f64> = t.seconds[from..to]
            .iter()
            .filter_map(|s| s.budget_rate)
            .collect();
        let (lo, hi) = budget
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let attempts = mean(from, to, &|s| s.keys as f64);
        let own: Vec<f64> = t.seconds[from..to]
            .iter()
            .filter_map(|s| s.key_rate)
            .collect();
        format!(
            "{THROTTLED_ACTION} attempted {attempts:.2}/s, accepted {:.2}/s \
             (attempts / limit {:.2}: {} 20% of the limit); all IAM calls attempted {:.2}/s, \
             accepted {:.2}/s; the IAM budget's rate {:.2}/s on average (from {lo:.1} to \
             {hi:.1}); {THROTTLED_ACTION}'s own rate in {} of these seconds, {:.2}/s on \
             average",
            mean(from, to, &|s| s.keys_accepted as f64),
            attempts / THROTTLED_LIMIT,
            if (attempts / THROTTLED_LIMIT - 1.0).abs() <= 0.2 {
                "within"
            } else {
                "NOT within"
            },
            mean(from, to, &|s| s.iam as f64),
            mean(from, to, &|s| s.iam_accepted as f64),
            budget.iter().sum::<f64>() / budget.len().max(1) as f64,
            own.len(),
            own.iter().sum::<f64>() / own.len().max(1) as f64,
        )
    };
    if end > SETTLE_SECS {
        out.push_str(&format!(
            "   after the first {SETTLE_SECS}s (seconds {SETTLE_SECS} to {end}, the last key at \
             {:.1}s): {}\n",
            t.last_key_secs.unwrap_or(f64::NAN),
            summary(SETTLE_SECS, end)
        ));
    } else {
        out.push_str(&format!(
            "   the last key was made within the first {}s (at {:.1}s): no average after \
             {SETTLE_SECS}s\n",
            SETTLE_SECS + 1,
            t.last_key_secs.unwrap_or(f64::NAN)
        ));
    }
    // The controller makes its first key only after its other steps (the host, the stack, the
    // user): the same SETTLE_SECS counted from the second of its first key attempt.
    if let Some(first) = t.seconds.iter().position(|s| s.keys > 0)
        && end > first + SETTLE_SECS
    {
        out.push_str(&format!(
            "   {SETTLE_SECS}s after the first key attempt (second {first}; seconds {} to \
             {end}): {}\n",
            first + SETTLE_SECS,
            summary(first + SETTLE_SECS, end)
        ));
    }
    if end > 0 {
        out.push_str(&format!("   seconds 0 to {end}: {}\n", summary(0, end)));
    }
    out.push_str(&format!(
        "   per second from apply: {THROTTLED_ACTION} attempted/accepted, all IAM calls \
         attempted/accepted, the controller's IAM budget rate, {THROTTLED_ACTION}'s own rate \
         (calls/s, as last reported; - while it has none: the service's alone) and attempts \
         waiting for a turn\n   {:>5} {:>9} {:>9} {:>7} {:>7} {:>5}\n",
        "s", "keys", "iam", "budget", "key", "wait"
    ));
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
    for (k, s) in t.seconds.iter().enumerate() {
        out.push_str(&format!(
            "   {k:>5} {:>9} {:>9} {:>7} {:>7} {:>5}\n",
            format!("{}/{}", s.keys, s.keys_accepted),
            format!("{}/{}", s.iam, s.iam_accepted),
            opt(s.budget_rate, 1),
            opt(s.key_rate, 1),
            opt(s.waiting, 0)
        ));
    }
    out
}

/// Whether `o` is Ready, with observedGeneration current.
fn is_ready(o: &DynamicObject) -> bool {
    let status = &o.data["status"];
    let generation = o.metadata.generation.unwrap_or(-1);
    status["observedGeneration"].as_i64() == Some(generation)
        && status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

#[derive(Default)]
struct Steady {
    n: usize,
    adopt_secs: f64,
    secs: Vec<f64>,
    rss_mib: Vec<f64>,
    cpu_secs: Vec<f64>,
    ssh_sessions: Vec<f64>,
    reconciles: Vec<f64>,
    object_writes: Vec<f64>,
    calls: Vec<BTreeMap<String, u64>>,
}

fn check_loopback(a: Ipv4Addr) -> R {
    if a.is_loopback() {
        Ok(())
    } else {
        Err(format!("{a} is not a loopback address; refusing"))
    }
}

fn controller_binary() -> R<PathBuf> {
    if let Some(p) = std::env::var_os("INSTANCE_REGISTRAR_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("instance-registrar");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: build it first", path.display()))
    }
}

/// Mean calls per registration by operation over runs of `per` registrations each.
fn per_registration(runs: &[CallSummary], per: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::<String, f64>::new();
    for s in runs {
        for (op, c) in calls_table(s) {
            *out.entry(op).or_default() += c as f64;
        }
    }
    let d = (runs.len() * per).max(1) as f64;
    out.values_mut().for_each(|v| *v /= d);
    out
}

async fn run(args: Args) -> R {
    let start = Instant::now();
    let dir = std::env::temp_dir().join("instance-registrar-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let controller_bin = controller_binary()?;
    let standin = StandIn::built().run_time(args.run_time);
    let cp_dir = dir.join("control-plane");
    let cp_thread = std::thread::spawn(move || ControlPlane::start_for_process(cp_dir));

    let mut aws = aws::start(true);
    // The proxy tells the endpoint the keys the controller and the CLI make through it.
    aws.start_proxy()?;
    aws.opsworks
        .set_agent_installer(AgentInstaller::StandIn(standin));
    say(
        start,
        "moto, the recording proxy and the OpsWorks endpoint are up",
    );

    let key_path = dir.join("ssh-key");
    let public_key = ssh_hosts::generate_key(&key_path, "ed25519", "", "instance-registrar-bench")?;
    let mut hosts = Vec::new();
    for i in 0..args.hosts {
        let host = SshHost::start(&format!("bench-{i}"));
        host.authorize(&public_key);
        check_loopback(host.address())?;
        hosts.push(host);
    }
    let bastion = SshHost::start_jump_host("bench-bastion");
    bastion.authorize(&public_key);
    say(
        start,
        &format!("{} SSH hosts and a jump host are up", hosts.len()),
    );
    let cp = cp_thread
        .join()
        .map_err(|_| "starting the control plane panicked".to_owned())??;
    let client = cp.client().await;
    say(start, &format!("control plane at {}", cp.server));

    let env = Env {
        start,
        dir,
        cp,
        client,
        aws,
        hosts,
        bastion,
        key_path,
        controller_bin,
        run_time: args.run_time,
        seq: AtomicUsize::new(0),
    };
    let skip = |s: &str| args.skip.iter().any(|x| x == s);
    let n = args.hosts;
    let t = args.run_time.as_secs_f64();
    let mut table = String::new();
    table.push_str(&format!(
        "instance-registrar benchmark: medians of {} runs; N = {n} hosts, installer stand-in T = {t}s; {} cores\n",
        args.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    table.push_str(&format!(
        "controller binary: {}\n\n",
        env.controller_bin.display()
    ));

    // 4. Latency, measured first, on an environment nothing has run on yet. The endpoint checks
    // the agent's signature with the key's secret, which the proxy told it when the controller
    // made the key (`opsworks_endpoint::keys`). It used to read it from all of moto's state
    // (`/moto-api/data.json`: 6-8 MB, 0.7-0.9 s, more as runs leave EC2 instances and IAM users
    // behind) once per new key, inside every latency run: measured last, after the steady-state
    // runs, one object then took 2.2 s over T; measured first, 1.1 s. The table's last line
    // says how many such reads are left.
    let mut latency = String::new();
    if !skip("latency") {
        // Directly, through the jump host, and directly with the endpoint's `registering` delay
        // at 0 (what is left is the controller's own, and the install's), alternating, so that
        // all three see the environment grow alike.
        let delay = env.registration_delay()?.as_secs_f64();
        let (mut direct, mut jump, mut no_delay, mut floor) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.runs {
            let l = env.latency_run(false).await?;
            say(
                start,
                &format!("latency run {r}: {l:.2}s over T (registering delay {delay}s)"),
            );
            direct.push(l);
            let l = env.latency_run(true).await?;
            say(
                start,
                &format!("latency run {r} through a jump host: {l:.2}s over T"),
            );
            jump.push(l);
            let l = env
                .at_registration_delay(Duration::ZERO, env.latency_run(false))
                .await?;
            say(
                start,
                &format!("latency run {r}: {l:.2}s over T (registering delay 0)"),
            );
            no_delay.push(l);
            // What the install itself takes over T on one host, with nothing of the
            // controller's (the floor: one plain ssh, the same installer), at delay 0.
            let l = env
                .at_registration_delay(Duration::ZERO, env.floor_run(&env.hosts[..1]))
                .await?
                - t;
            say(
                start,
                &format!("latency run {r}: floor {l:.2}s over T (registering delay 0)"),
            );
            floor.push(l);
        }
        let runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        latency = format!(
            "\n4. Latency, one object: apply to Ready minus T = {:.2}s with the endpoint's \
             registering delay {delay}s (runs: {}); {:.2}s with delay 0 (runs: {}); through one \
             jump host {:.2}s, delay {delay}s (runs: {})\n   the floor on one host (plain ssh, \
             same installer, to the endpoint listing it registered), delay 0: {:.2}s over T \
             (runs: {})\n",
            median(direct.clone()),
            runs(&direct),
            median(no_delay.clone()),
            runs(&no_delay),
            median(jump.clone()),
            runs(&jump),
            median(floor.clone()),
            runs(&floor)
        );
    }

    // 1 and 2: throughput and calls.
    let mut ctl_secs = Vec::new();
    let mut ctl_calls = Vec::new();
    let mut floor_secs = Vec::new();
    if !skip("throughput") {
        for r in 0..args.runs {
            // The floor and the controller alternate, so that both see the machine alike.
            let f = env.floor_run(&env.hosts[..n]).await?;
            say(
                start,
                &format!("floor run {r}: {n} hosts registered over plain ssh in {f:.1}s"),
            );
            floor_secs.push(f);
            let (s, c, steps) = env.controller_run(n, false).await?;
            let steps: Vec<String> = steps
                .iter()
                .map(|(step, secs)| format!("{step} {secs:.2}"))
                .collect();
            say(
                start,
                &format!(
                    "controller run {r}: {n} hosts Ready in {s:.1}s; seconds per registration in \
                     each step: {}",
                    steps.join(", ")
                ),
            );
            ctl_secs.push(s);
            ctl_calls.push(c);
        }
    }
    let mut seq = (Vec::new(), Vec::new(), 0usize);
    let mut par = (Vec::new(), Vec::new());
    if !skip("cli") {
        let cli = args
            .aws_cli
            .clone()
            .ok_or("no AWS CLI v1: give --aws-cli PATH (or AWS_CLI_V1), or --skip cli")?;
        let seq_n = args.cli_sequential_hosts.unwrap_or(n).min(n);
        seq.2 = seq_n;
        for r in 0..args.runs {
            let (s, c) = env.cli_run(&cli, seq_n, 1).await?;
            say(
                start,
                &format!("CLI sequential run {r}: {seq_n} hosts in {s:.1}s"),
            );
            seq.0.push(s);
            seq.1.push(c);
        }
        for r in 0..args.runs {
            let (s, c) = env.cli_run(&cli, n, args.cli_parallel).await?;
            say(
                start,
                &format!(
                    "CLI {}-way run {r}: {n} hosts in {s:.1}s",
                    args.cli_parallel
                ),
            );
            par.0.push(s);
            par.1.push(c);
        }
    }
    table.push_str("1. Throughput (apply/start to all registered)\n");
    table.push_str(&format!(
        "   {:<34} {:>9} {:>10} {:>12}\n",
        "", "wall (s)", "hosts/min", "controller×"
    ));
    let ctl = median(ctl_secs.clone());
    let rate = |hosts: usize, secs: f64| hosts as f64 * 60.0 / secs;
    let ctl_rate = rate(n, ctl);
    if !ctl_secs.is_empty() {
        table.push_str(&format!(
            "   {:<34} {:>9.1} {:>10.1} {:>12}\n",
            "controller (one tenant: all slots)", ctl, ctl_rate, "1.0"
        ));
        let floor = median(floor_secs.clone());
        table.push_str(&format!(
            "   {:<34} {:>9.1} {:>10.1} {:>12.2}\n",
            "floor: plain ssh, same installer",
            floor,
            rate(n, floor),
            rate(n, floor) / ctl_rate
        ));
        table.push_str(&format!(
            "   controller / floor, run by run: {} (median {:.2})\n",
            runs_text(&ctl_secs, &floor_secs),
            median(
                ctl_secs
                    .iter()
                    .zip(&floor_secs)
                    .map(|(c, f)| c / f)
                    .collect()
            )
        ));
    }
    if !seq.0.is_empty() {
        let s = median(seq.0.clone());
        let r = rate(seq.2, s);
        let label = if seq.2 == n {
            "aws opsworks register, sequential".to_owned()
        } else {
            format!("CLI sequential ({} hosts, ×{n}/{})", seq.2, seq.2)
        };
        table.push_str(&format!(
            "   {:<34} {:>9.1} {:>10.1} {:>12.1}\n",
            label,
            s * n as f64 / seq.2 as f64,
            r,
            ctl_rate / r
        ));
    }
    if !par.0.is_empty() {
        let s = median(par.0.clone());
        let r = rate(n, s);
        table.push_str(&format!(
            "   {:<34} {:>9.1} {:>10.1} {:>12.1}\n",
            format!("aws opsworks register, {}-way", args.cli_parallel),
            s,
            r,
            ctl_rate / r
        ));
    }

    table.push_str("\n2. AWS calls per fresh registration (incl. the agent's own)\n");
    let ctl_per = per_registration(&ctl_calls, n);
    let mut cli_runs = seq.1.clone();
    let cli_per = if seq.2 > 0 {
        let mut all = per_registration(&cli_runs, seq.2);
        if !par.1.is_empty() {
            // Weighted equally: both are fresh registrations of the same kind.
            let p = per_registration(&par.1, n);
            for (k, v) in p {
                let e = all.entry(k).or_default();
                *e = (*e + v) / 2.0;
            }
        }
        all
    } else {
        cli_runs.clear();
        BTreeMap::new()
    };
    let mut ops: Vec<&String> = ctl_per.keys().chain(cli_per.keys()).collect();
    ops.sort();
    ops.dedup();
    table.push_str(&format!(
        "   {:<40} {:>10} {:>8}\n",
        "service:operation", "controller", "CLI"
    ));
    let (mut ctl_total, mut cli_total) = (0.0, 0.0);
    for op in ops {
        let a = ctl_per.get(op).copied().unwrap_or(0.0);
        let b = cli_per.get(op).copied().unwrap_or(0.0);
        ctl_total += a;
        cli_total += b;
        table.push_str(&format!("   {op:<40} {a:>10.2} {b:>8.2}\n"));
    }
    table.push_str(&format!(
        "   {:<40} {ctl_total:>10.2} {cli_total:>8.2}\n",
        "total"
    ));

    // 3. Steady state.
    if !skip("steady") {
        table.push_str(
            "\n3. Steady state: controller restarted with N objects already registered\n",
        );
        for &s in &args.steady {
            let st = env.steady(s, args.runs).await?;
            let mut total = BTreeMap::<String, Vec<f64>>::new();
            for c in &st.calls {
                for (op, v) in c {
                    total.entry(op.clone()).or_default().push(*v as f64);
                }
            }
            let calls: Vec<String> = total
                .iter()
                .map(|(op, v)| {
                    let mut v = v.clone();
                    v.resize(st.calls.len(), 0.0);
                    format!("{op} {}", median(v))
                })
                .collect();
            let writes: f64 = total
                .iter()
                .filter(|(op, _)| is_write(op) && !op.starts_with("opsworks"))
                .map(|(_, v)| median(v.clone()))
                .fold(0.0, |a, b| a + b);
            table.push_str(&format!(
                "   N = {}: first restart after adoption: re-verified in {:.2}s, \
                 object/status writes {}\n",
                st.n,
                st.secs.first().copied().unwrap_or(f64::NAN),
                st.object_writes.first().copied().unwrap_or(f64::NAN),
            ));
            table.push_str(&format!(
                "   N = {}: first adoption {:.1}s; after restart all re-verified in {:.2}s; \
                 reconciles {}; object/status writes {}; SSH sessions {}; IAM/EC2 writes {}; \
                 peak RSS {:.0} MiB; CPU {:.2}s\n     AWS calls: {}\n",
                st.n,
                st.adopt_secs,
                median(st.secs.clone()),
                median(st.reconciles.clone()),
                median(st.object_writes.clone()),
                median(st.ssh_sessions.clone()),
                writes,
                median(st.rss_mib.clone()),
                median(st.cpu_secs.clone()),
                if calls.is_empty() {
                    "none".to_owned()
                } else {
                    calls.join(", ")
                }
            ));
        }
    }

    table.push_str(&latency);

    // 5. Fleet. Before the throttled wave: the 200 IAM users and EC2 records that one leaves in
    // moto slow every later look-up the controller makes there (and not the floor's), which
    // took the fleet's controller / floor from 1.45 to 2.3-2.7 in one run.
    if !skip("fleet") {
        let fleet = env
            .fleet(args.fleet, args.fleet_run_time, args.fleet_hosts_idle)
            .await?;
        table.push_str(&fleet_table(&fleet));
    }

    // 6. The throttled wave, last: it measures rates, which the fleet's leftovers do not move.
    if !skip("throttled") && args.throttled_hosts > 0 {
        let mut wave = env
            .throttled_wave(
                args.throttled_hosts,
                args.throttled_calls_per_second.as_deref(),
            )
            .await?;
        wave.calls_per_second = args.throttled_calls_per_second.clone();
        table.push_str(&throttled_table(&wave));
    }
    // Keys made through the proxy need none; a read here is inside some registration's time.
    table.push_str(&format!(
        "\nThe endpoint read moto's whole state (/moto-api/data.json) {} times for keys' secrets\n",
        env.aws.opsworks.moto_state_reads()
    ));
    println!("{table}");
    let _ = std::fs::write(env.dir.join("table.txt"), &table);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An audit entry of a complete request to `name` (`subresource` if any).
    fn entry(verb: &str, name: &str, sub: Option<&str>, at: &str, done: &str) -> serde_json::Value {
        serde_json::json!({
            "stage": "ResponseComplete",
            "verb": verb,
            "objectRef": {"name": name, "subresource": sub},
            "requestReceivedTimestamp": at,
            "stageTimestamp": done,
            "responseStatus": {"code": 200},
        })
    }

    #[test]
    fn a_deletion_s_timeline_is_read_from_the_audit_log_and_the_controller_s_log() {
        let audit = [
            // Before the delete: not part of its timeline.
            entry(
                "patch",
                "a",
                Some("status"),
                "2026-12-07T10:00:00Z",
                "2026-12-07T10:00:00.1Z",
            ),
            entry(
                "delete",
                "a",
                None,
                "2026-12-07T10:00:01Z",
                "2026-12-07T10:00:02Z",
            ),
            // Another object's removal.
            entry(
                "patch",
                "b",
                None,
                "2026-12-07T10:00:02Z",
                "2026-12-07T10:00:02Z",
            ),
            entry(
                "patch",
                "a",
                Some("status"),
                "2026-12-07T10:00:03Z",
                "2026-12-07T10:00:03Z",
            ),
            entry(
                "patch",
                "a",
                None,
                "2026-12-07T10:00:04Z",
                "2026-12-07T10:00:04.5Z",
            ),
        ];
        let log = "2026-12-07T10:00:00.5Z  INFO reconciling object{}:reconcile{namespace=n name=a}: \
                   instance_registrar::controller: the object is being deleted: cleaning up\n\
                   2026-12-07T10:00:02.5Z  INFO reconciling object{}:reconcile{namespace=n name=a}: \
                   instance_registrar::controller: the object is being deleted: cleaning up\n";
        let t = deletion_timeline(&audit, log, "a", None);
        assert_eq!(t.delete_done, Some(1.0));
        assert_eq!(t.cleanup_started, Some(1.5));
        assert_eq!(t.finalizer_sent, Some(3.0));
        assert_eq!(t.finalizer_done, Some(3.5));
        assert_eq!(t.status_writes, 1);
        assert_eq!(t.watch_seen, None);
        let none = deletion_timeline(&audit, log, "c", None);
        assert_eq!(none.finalizer_done, None);
    }
}
