//! `bench`: the performance benchmark (`bash tests/bench.sh`, which sets up the machine, installs
//! the AWS CLI v1 into a venv and builds first). Not part of `cargo test`.
//!
//! On the local environment (control plane, moto behind the recording proxy, the
//! OpsWorks-compatible endpoint serving the agent installer stand-in, SSH hosts on 127.0.0.x) it
//! measures, each over `--runs` runs and reported as medians:
//!
//! 1. throughput: `--hosts` EC2 hosts registered by the controller (default concurrency), from
//!    `kubectl apply` to all Ready; and by `aws opsworks register` (AWS CLI v1) one host after
//!    another and `--cli-parallel` at a time, until every instance is registered;
//! 2. AWS calls per fresh registration by operation, controller against the CLI;
//! 3. steady state: `--steady` objects already registered, the controller restarted: time until
//!    every object is re-verified, AWS calls, SSH sessions, peak RSS and CPU seconds;
//! 4. latency: one object, apply to Ready, minus the installer's run time; directly and through
//!    one jump host (`ssh.jumpHosts`), runs alternating.
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

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use opsworks_endpoint::standin::StandIn;
use opsworks_endpoint::{AgentInstaller, CallSummary};
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
}

fn usage() -> &'static str {
    "usage: bench [--hosts N] [--run-time SECONDS] [--runs R] [--steady N[,N...]] \
     [--cli-parallel P] [--cli-sequential-hosts N] [--aws-cli PATH] \
     [--skip throughput,cli,steady,latency]"
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
        match flag.as_str() {
            "--hosts" => a.hosts = num(&value)?,
            "--run-time" => {
                a.run_time = Duration::from_secs_f64(
                    value.parse::<f64>().map_err(|e| format!("{flag}: {e}"))?,
                )
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
        let metrics_port = free_port()?;
        let probe_port = free_port()?;
        let mut command = Command::new(&self.controller_bin);
        command
            .args(["run", "--watch-namespace", ns])
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(["--probe-address", &format!("127.0.0.1:{probe_port}")])
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .env("LOG_LEVEL", "info");
        for (k, v) in self.aws.controller_env() {
            command.env(k, v);
        }
        let log = self.dir.join(format!("controller-{tag}.log"));
        let child = spawn_logged(&mut command, &log)?;
        let c = Controller {
            child,
            metrics_port,
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

    /// (objects, Ready with observedGeneration current) in `ns`.
    async fn ready_count(&self, ns: &str) -> R<(usize, usize)> {
        let gvk = GroupVersionKind::gvk("registrar.dev", "v1alpha1", "InstanceRegistration");
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing: {e}"))?;
        let total = list.items.len();
        let ready = list
            .items
            .iter()
            .filter(|o| {
                let status = &o.data["status"];
                let generation = o.metadata.generation.unwrap_or(-1);
                status["observedGeneration"].as_i64() == Some(generation)
                    && status["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count();
        Ok((total, ready))
    }

    /// Waits until all `n` objects of `ns` are Ready (and `extra` holds); the time it took.
    async fn wait_ready(
        &self,
        ns: &str,
        n: usize,
        from: Instant,
        limit: Duration,
        mut extra: impl FnMut() -> bool,
    ) -> R<f64> {
        // Listing thousands of objects costs the API server (and so the controller, on the
        // same cores) CPU: large sets are looked at less often, and only once `extra` holds.
        let poll = if n > 500 {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(50)
        };
        let mut ready = 0;
        loop {
            if extra() {
                let (total, r) = self.ready_count(ns).await?;
                ready = r;
                if total == n && ready == n {
                    return Ok(from.elapsed().as_secs_f64());
                }
            }
            if from.elapsed() > limit {
                return Err(format!(
                    "{ns}: {ready} of {n} Ready after {}s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// A fresh stack and one fresh EC2 record per host (the hosts' identities set to them).
    async fn fresh_stack(&self, name: &str, hosts: usize) -> (String, Vec<String>) {
        // In a VPC: the CLI looks for instances outside any VPC for a stack without one, and
        // moto puts every instance in its default VPC.
        let k = self.next() % 250;
        let (vpc, subnet) = self.aws.create_vpc(&format!("10.{k}.0.0/16")).await;
        let stack = self.aws.create_stack(name, Some(&vpc)).await;
        let mut ids = Vec::new();
        for (i, host) in self.hosts.iter().take(hosts).enumerate() {
            let (id, _, _) = self
                .aws
                .run_instance(&format!("{name}-h{i}"), Some(&subnet))
                .await;
            host.set_identity(&id, REGION);
            ids.push(id);
        }
        (stack, ids)
    }

    /// The manifests of `ids` on the hosts, reached through the bastion when `jump`.
    fn ec2_manifest(&self, stack: &str, ids: &[String], prefix: &str, jump: bool) -> R<PathBuf> {
        check_loopback(self.bastion.address())?;
        let jump_host = match jump {
            true => format!(
                "    jumpHosts:\n    - address: \"{}\"\n      port: {}\n      username: {}\n",
                self.bastion.address(),
                self.bastion.port(),
                ssh_hosts::USER
            ),
            false => String::new(),
        };
        let mut text = String::new();
        for (i, (id, host)) in ids.iter().zip(&self.hosts).enumerate() {
            check_loopback(host.address())?;
            text.push_str(&format!(
                "---\napiVersion: registrar.dev/v1alpha1\nkind: InstanceRegistration\n\
                 metadata:\n  name: {prefix}-{i}\nspec:\n  stackId: {stack}\n  \
                 infrastructureClass: ec2\n  target: {id}\n  hostname: {prefix}-{i}\n  ssh:\n    \
                 username: {}\n    privateKeySecretRef:\n      name: {SECRET}\n    \
                 address: \"{}\"\n    port: {}\n{jump_host}",
                ssh_hosts::USER,
                host.address(),
                host.port()
            ));
        }
        let path = self.dir.join(format!("{prefix}.yaml"));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// One controller throughput run over `n` hosts (through the bastion when `jump`): (seconds,
    /// calls).
    async fn controller_run(&self, n: usize, jump: bool) -> R<(f64, CallSummary)> {
        let k = self.next();
        let name = format!("ctl{k}");
        let (stack, ids) = self.fresh_stack(&name, n).await;
        self.namespace(&name)?;
        let manifest = self.ec2_manifest(&stack, &ids, &name, jump)?;
        let controller = self.start_controller(&name, &name)?;
        self.aws.clear_calls();
        let t0 = Instant::now();
        self.kubectl(&["-n", &name, "apply", "-f", &manifest.to_string_lossy()])?;
        let result = self
            .wait_ready(&name, n, t0, Duration::from_secs(600), || true)
            .await;
        let calls = self.aws.call_summary();
        controller.stop();
        let secs = result?;
        Ok((secs, calls))
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
        // Done when OpsWorks lists every instance as registered, as the controller's Ready is.
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
                break;
            }
            if t0.elapsed() > Duration::from_secs(1800) {
                return Err(format!("{name}: {registered} of {n} registered"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// An OpsWorks client signed with the key of an IAM user allowed to register (made once),
    /// as the agent's registration is.
    async fn registering_client(&self) -> R<aws_sdk_opsworks::Client> {
        let iam = self.aws.iam();
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
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.aws.opsworks.url())
            .credentials_provider(aws_sdk_opsworks::config::SharedCredentialsProvider::new(
                aws_sdk_opsworks::config::Credentials::new(
                    key.access_key_id(),
                    key.secret_access_key(),
                    None,
                    None,
                    "bench",
                ),
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
        let (secs, _) = self.controller_run(1, jump).await?;
        Ok(secs - self.run_time.as_secs_f64())
    }
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
        // Directly and through the jump host, alternating, so that both see the environment
        // grow alike.
        let (mut direct, mut jump) = (Vec::new(), Vec::new());
        for r in 0..args.runs {
            let l = env.latency_run(false).await?;
            say(start, &format!("latency run {r}: {l:.2}s over T"));
            direct.push(l);
            let l = env.latency_run(true).await?;
            say(
                start,
                &format!("latency run {r} through a jump host: {l:.2}s over T"),
            );
            jump.push(l);
        }
        let runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        latency = format!(
            "\n4. Latency, one object: apply to Ready minus T = {:.2}s (runs: {}); through one \
             jump host {:.2}s (runs: {})\n",
            median(direct.clone()),
            runs(&direct),
            median(jump.clone()),
            runs(&jump)
        );
    }

    // 1 and 2: throughput and calls.
    let mut ctl_secs = Vec::new();
    let mut ctl_calls = Vec::new();
    if !skip("throughput") {
        for r in 0..args.runs {
            let (s, c) = env.controller_run(n, false).await?;
            say(
                start,
                &format!("controller run {r}: {n} hosts Ready in {s:.1}s"),
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
            "controller (default concurrency)", ctl, ctl_rate, "1.0"
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
    // Keys made through the proxy need none; a read here is inside some registration's time.
    table.push_str(&format!(
        "\nThe endpoint read moto's whole state (/moto-api/data.json) {} times for keys' secrets\n",
        env.aws.opsworks.moto_state_reads()
    ));
    println!("{table}");
    let _ = std::fs::write(env.dir.join("table.txt"), &table);
    Ok(())
}
