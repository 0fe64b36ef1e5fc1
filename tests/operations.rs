//! Running the controller as a platform team does: its metrics and probes, and several replicas
//! with leader election (only the lease holder acts; a standby takes over when it dies; a leader
//! that loses its lease stops; a leader keeps its lease through a kube-apiserver restart).

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, eventually, http_get as get,
    namespace, on_premises, serving_stand_in, ssh_key_secret, ssh_via, wait_reason,
};

fn aws() -> &'static AwsEnv {
    serving_stand_in(AwsEnv::shared(), Duration::from_secs(1))
}

#[tokio::test]
async fn metrics_and_probes_report_what_the_controller_does() {
    let cp = ControlPlane::shared();
    let aws = aws();
    let client = cp.client().await;
    let ns = namespace(&client, "metrics").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let controller = ControllerProcess::start(cp, aws, &ns, &[]);
    let probes = controller.http_address("/readyz");
    let metrics = controller.http_address("/metrics");

    assert_eq!(get(&format!("http://{probes}/healthz")).0, 200);
    eventually(
        Duration::from_secs(20),
        "ready once the watch runs",
        || async { (get(&format!("http://{probes}/readyz")).0 == 200).then_some(()) },
    )
    .await;

    // An object that stops at a missing Secret: counted as a failure with that reason.
    let stack = aws.create_stack(&ns, None).await;
    apply(
        cp,
        &on_premises(&ns, "m", &stack, "127.0.0.1", "m-1", "absent", ""),
    );
    wait_reason(&api, "m", types::SSH_KEY_READY, reasons::SECRET_NOT_FOUND).await;
    // Its output is a file, not a terminal: plain text, no colour codes in the human lines.
    let log = controller.logs();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file");
    let text = eventually(Duration::from_secs(10), "the metrics", || async {
        let (code, text) = get(&format!("http://{metrics}/metrics"));
        (code == 200 && text.contains("SecretNotFound")).then_some(text)
    })
    .await;
    for expected in [
        "registrar_reconciles_total{result=\"ok\"}",
        "registrar_reconcile_failures_total{reason=\"SecretNotFound\"}",
        "registrar_aws_calls_total{service=\"opsworks\",operation=\"DescribeStacks\",outcome=\"success\"}",
        "registrar_aws_calls_total{service=\"opsworks\",operation=\"DescribeInstances\",outcome=\"success\"}",
        "registrar_step_duration_seconds_count{step=\"StackResolved\"}",
        "registrar_objects{phase=\"Failed\"} 1",
        "registrar_ssh_sessions_in_flight 0",
        "# TYPE registrar_time_to_ready_seconds histogram",
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
}

/// Starts a host that accepts `public`, applies on-premises object `name` in `api`'s namespace
/// for it (hostname `<name>-1`, key Secret `key`) and waits until the object is Ready.
async fn register_host(
    cp: &ControlPlane,
    api: &Api<InstanceRegistration>,
    stack: &str,
    public: &str,
    name: &str,
) -> SshHost {
    let ns = api.namespace().expect("a namespaced Api");
    let host = SshHost::start(&format!("{ns}-{name}"));
    host.authorize(public);
    apply(
        cp,
        &(on_premises(
            ns,
            name,
            stack,
            &host.address().to_string(),
            &format!("{name}-1"),
            "key",
            "",
        ) + &ssh_via(&host)),
    );
    wait_reason(api, name, types::READY, reasons::SUCCEEDED).await;
    host
}

/// The Lease's holder, if any.
async fn holder(client: &kube::Client, ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases
        .get_opt("instance-registrar")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let cp = ControlPlane::shared();
    let aws = aws();
    let client = cp.client().await;
    let ns = namespace(&client, "leader").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&ns, None).await;
    let lease_seconds = "4";
    let args = |name: &'static str| {
        [
            "--leader-election",
            "--leader-election-namespace",
            ns.as_str(),
            "--leader-election-lease-seconds",
            lease_seconds,
            "--instance",
            name,
        ]
    };
    let mut one = Some(ControllerProcess::start(cp, aws, &ns, &args("one")));
    let mut two = Some(ControllerProcess::start(cp, aws, &ns, &args("two")));
    let leader = eventually(Duration::from_secs(20), "a leader", || async {
        holder(&client, &ns).await
    })
    .await;

    let first = register_host(cp, &api, &stack, &public, "a").await;
    let (leading, standby) = if leader == "one" {
        (&mut one, &mut two)
    } else {
        (&mut two, &mut one)
    };
    let standby_log = standby.as_ref().unwrap().logs();
    assert!(
        standby_log.contains("waiting as a standby") && !standby_log.contains("reconciled"),
        "the standby acted:\n{standby_log}"
    );
    let probes = standby.as_ref().unwrap().http_address("/readyz");
    assert!(
        get(&format!("http://{probes}/readyz"))
            .1
            .contains("standby")
    );

    // The leader dies without releasing the lease: the standby takes over once it expires.
    let killed = Instant::now();
    drop(leading.take());
    let new_leader = eventually(Duration::from_secs(30), "a new leader", || async {
        holder(&client, &ns).await.filter(|h| *h != leader)
    })
    .await;
    let handover = killed.elapsed();
    println!("handover to {new_leader} after {handover:?} (lease {lease_seconds}s)");
    assert!(handover < Duration::from_secs(4 + 6), "{handover:?}");

    let second = register_host(cp, &api, &stack, &public, "b").await;
    let obj = api.get("a").await.unwrap();
    assert_eq!(condition(&obj, types::READY).unwrap().0, "True");
    // The new leader installed b: its metrics say so.
    let metrics = standby.as_ref().unwrap().http_address("/metrics");
    let text = get(&format!("http://{metrics}/metrics")).1;
    for expected in [
        // Two sessions for b: the host step's probe, then the install.
        "registrar_ssh_sessions_total{reason=\"succeeded\"} 2",
        "registrar_ssh_sessions_in_flight 0",
        "registrar_time_to_ready_seconds_count 1",
        "registrar_objects{phase=\"Registered\"} 2",
    ] {
        assert!(text.contains(expected), "{expected} missing in:\n{text}");
    }
    // Nothing was registered twice.
    assert_eq!(first.boot_registration_runs(), 1);
    assert_eq!(second.boot_registration_runs(), 1);
    let in_stack = aws
        .opsworks
        .instances()
        .into_iter()
        .filter(|i| i.stack_id == stack)
        .count();
    assert_eq!(in_stack, 2);

    // A leader that finds the lease taken by someone else stops at once (fail-stop).
    let survivor = standby.as_mut().unwrap();
    let patched = cp.kubectl_ok(&[
        "patch",
        "lease",
        "instance-registrar",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        &format!(
            "{{\"spec\":{{\"holderIdentity\":\"intruder\",\"leaseDurationSeconds\":3600,\"renewTime\":\"{}\"}}}}",
            k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        ),
    ]);
    assert!(patched.is_ok(), "{patched:?}");
    let code = survivor.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{}", survivor.logs());
    assert!(survivor.logs().contains("lost the leader lease"));
}

/// The Lease's holder, its transitions and when it was last renewed.
async fn lease_state(
    client: &kube::Client,
    ns: &str,
) -> Option<(String, i32, k8s_openapi::jiff::Timestamp)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let spec = leases.get_opt("instance-registrar").await.ok()??.spec?;
    Some((
        spec.holder_identity?,
        spec.lease_transitions.unwrap_or(0),
        spec.renew_time?.0,
    ))
}

/// The outage test's own control plane: it restarts kube-apiserver, which the tests sharing
/// [`ControlPlane::shared`] (running meanwhile) must not see.
fn outage_control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        ControlPlane::private("leader-outage")
            .unwrap_or_else(|e| panic!("starting the outage test's control plane: {e}"))
    })
}

#[tokio::test]
async fn a_leader_keeps_its_lease_through_a_kube_apiserver_restart() {
    let cp = outage_control_plane();
    let aws = aws();
    let client = cp.client().await;
    let ns = namespace(&client, "outage").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&ns, None).await;
    // The default lease (15 s): renewed every 3 s, given up 10 s after the last renewal.
    let mut leader = ControllerProcess::start(
        cp,
        aws,
        &ns,
        &[
            "--leader-election",
            "--leader-election-namespace",
            ns.as_str(),
            "--instance",
            "one",
        ],
    );
    let (_, transitions, _) = eventually(Duration::from_secs(20), "the lease", || async {
        lease_state(&client, &ns)
            .await
            .filter(|(holder, _, _)| holder == "one")
    })
    .await;

    let outage = tokio::task::spawn_blocking(|| cp.restart_apiserver(Duration::from_secs(3)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("restarting kube-apiserver: {e}"));
    let back = k8s_openapi::jiff::Timestamp::now();
    let (holder, transitions_after, _) = eventually(
        Duration::from_secs(20),
        "a renewal after the restart",
        || async {
            lease_state(&client, &ns)
                .await
                .filter(|(_, _, renewed)| *renewed > back)
        },
    )
    .await;
    println!(
        "kube-apiserver unreachable for {:.1}s; the leader renewed afterwards",
        outage.as_secs_f64()
    );
    assert!(
        leader.running(),
        "the leader exited during a {outage:?} outage:\n{}",
        leader.logs()
    );
    assert_eq!((holder.as_str(), transitions_after), ("one", transitions));
    // A renewal fell into the outage (one every 3 s) and was retried, not given up on.
    assert!(
        leader
            .logs()
            .contains("could not renew the leader lease; retrying"),
        "{}",
        leader.logs()
    );

    // And it still acts.
    register_host(cp, &api, &stack, &public, "a").await;
    assert!(leader.running());
}

/// A TCP proxy in front of kube-apiserver for one controller: what the server sends reaches the
/// client `delay` late, and once `block` is called, nothing more the client sends reaches the
/// server (its requests hang). It runs on a thread of its own, so a test that blocks its own
/// thread does not hold it up.
struct SlowApiServer {
    address: std::net::SocketAddr,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowApiServer {
    fn start(upstream: &str, delay: Duration) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let gate = blocked.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if gate.load(Ordering::SeqCst) {
                                // Blocked: the request never reaches the server.
                                std::future::pending::<()>().await;
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    // Server to client, each chunk `delay` after it arrived, in order.
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let due = tokio::time::Instant::now() + delay;
                            if tx.send((due, buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    });
                    tokio::spawn(async move {
                        while let Some((due, chunk)) = rx.recv().await {
                            tokio::time::sleep_until(due).await;
                            if client_write.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        });
        Self { address, blocked }
    }

    /// From now on, nothing the client sends reaches kube-apiserver.
    fn block(&self) {
        self.blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A copy of `cp`'s kubeconfig that reaches kube-apiserver through this proxy.
    fn kubeconfig(&self, cp: &ControlPlane) -> std::path::PathBuf {
        let text = std::fs::read_to_string(&cp.kubeconfig).unwrap();
        let direct = cp.server.trim_end_matches('/');
        assert!(text.contains(direct), "{direct} not in the kubeconfig");
        let path = cp
            .dir
            .join(format!("kubeconfig-slow-{}", self.address.port()));
        std::fs::write(
            &path,
            text.replace(direct, &format!("https://{}", self.address)),
        )
        .unwrap();
        path
    }
}

/// The leader election arguments for replica `name` with a lease of `seconds`.
fn election_args<'a>(ns: &'a str, seconds: &'a str, name: &'a str) -> [&'a str; 7] {
    [
        "--leader-election",
        "--leader-election-namespace",
        ns,
        "--leader-election-lease-seconds",
        seconds,
        "--instance",
        name,
    ]
}

/// Where Debian's libfaketime is (`tests/setup.sh` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test]
async fn a_standby_whose_clock_runs_ahead_does_not_take_a_healthy_lease() {
    let cp = ControlPlane::shared();
    let aws = aws();
    let client = cp.client().await;
    let ns = namespace(&client, "skew").await;
    let lease_seconds = "6";
    let mut leader =
        ControllerProcess::start(cp, aws, &ns, &election_args(&ns, lease_seconds, "one"));
    eventually(Duration::from_secs(20), "a leader", || async {
        holder(&client, &ns).await.filter(|h| h == "one")
    })
    .await;
    // A standby whose clock runs a minute ahead: to it, every renewTime the leader writes looks
    // a minute old.
    let standby = ControllerProcess::start_with_env(
        cp,
        aws,
        &ns,
        &election_args(&ns, lease_seconds, "two"),
        &[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", "+60s")],
    );
    let started = k8s_openapi::jiff::Timestamp::now();
    let standby_log = eventually(
        Duration::from_secs(20),
        "the standby's election",
        || async {
            Some(standby.logs())
                .filter(|l| l.contains("waiting as a standby") || l.contains("acquired the leader"))
        },
    )
    .await;
    // The skew is real: the standby's own log lines are stamped a minute ahead.
    let stamped: k8s_openapi::jiff::Timestamp = standby_log
        .lines()
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .expect("a timestamped log line");
    assert!(
        stamped.as_second() >= started.as_second() + 50,
        "libfaketime did not skew the standby's clock ({stamped} vs {started})"
    );

    // Three lease durations: the leader renews throughout, and keeps the lease.
    let until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < until {
        assert_eq!(
            holder(&client, &ns).await.as_deref(),
            Some("one"),
            "the skewed standby took a healthy lease:\n{}",
            standby.logs()
        );
        assert!(leader.running(), "the leader stopped:\n{}", leader.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!standby.logs().contains("acquired the leader lease"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_hears_back_late_never_acts_while_a_standby_may_hold_the_lease() {
    let cp = ControlPlane::shared();
    let aws = aws();
    let client = cp.client().await;
    let ns = namespace(&client, "slowleader").await;
    // A 9 s lease: the leader may act until 6 s after it sent its last write.
    let lease_seconds = "9";
    // Everything kube-apiserver sends reaches "slow" 2.5 s late: its TLS handshake and first
    // read take 5 s, its write of the lease is committed then, and the answer comes 2.5 s later,
    // 7.5 s after it started: too late to act on a lease counted from its write.
    let proxy = SlowApiServer::start(&cp.server, Duration::from_millis(2500));
    let slow_kubeconfig = proxy.kubeconfig(cp);
    let mut slow = ControllerProcess::start_with_env(
        cp,
        aws,
        &ns,
        &election_args(&ns, lease_seconds, "slow"),
        &[("KUBECONFIG", slow_kubeconfig.to_str().unwrap())],
    );
    eventually(
        Duration::from_secs(20),
        "the slow replica's write",
        || async { holder(&client, &ns).await.filter(|h| h == "slow") },
    )
    .await;
    // From now on slow's requests never arrive: it cannot renew.
    proxy.block();
    let mut fast =
        ControllerProcess::start(cp, aws, &ns, &election_args(&ns, lease_seconds, "fast"));

    // Watch both: once fast holds the lease, slow must have stopped acting (or never acted).
    let acted = |p: &ControllerProcess| p.logs().contains("acquired the leader lease");
    let mut fast_took: Option<Instant> = None;
    let mut slow_exited: Option<Instant> = None;
    let mut slow_acted: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if slow_exited.is_none() && !slow.running() {
            slow_exited = Some(Instant::now());
        }
        if slow_acted.is_none() && acted(&slow) {
            slow_acted = Some(Instant::now());
        }
        if fast_took.is_none() && holder(&client, &ns).await.as_deref() == Some("fast") {
            fast_took = Some(Instant::now());
        }
        if let Some(took) = fast_took
            && took.elapsed() > Duration::from_secs(8)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = fast_took.unwrap_or_else(|| {
        panic!(
            "the standby never took the lease:\n{}\n---\n{}",
            fast.logs(),
            slow.logs()
        )
    });
    if slow_acted.is_some() {
        let stopped = slow_exited.unwrap_or_else(|| {
            panic!(
                "slow acted and never stopped while fast held the lease:\n{}",
                slow.logs()
            )
        });
        assert!(
            stopped < took,
            "slow stopped acting {:?} after fast took the lease:\n{}",
            stopped - took,
            slow.logs()
        );
    }
    assert!(acted(&fast));
    fast.kill();
    slow.kill();
}

#[tokio::test]
async fn deleting_an_object_whose_install_was_cut_leaves_no_registration_behind() {
    let cp = ControlPlane::shared();
    // An installer that runs 6 s, in an environment of this test's own.
    let aws = serving_stand_in(AwsEnv::isolated(), Duration::from_secs(6));
    let client = cp.client().await;
    let ns = namespace(&client, "cut").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&ns, None).await;
    // An EC2 host that registers with its instance profile: there is no key whose deletion
    // would stop a registration the install makes after the controller looked.
    let profile = format!("{ns}-profile");
    aws.iam()
        .create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    let host = SshHost::start(&format!("{ns}-web"));
    host.authorize(&public);
    let (instance, _, _) = aws
        .try_run_instance(host.name(), None, Some(&profile))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    host.set_identity(&instance, support::aws::REGION);
    let mut controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(
        cp,
        &(support::ec2(
            &ns,
            "web",
            &stack,
            &instance,
            "key",
            "  useInstanceProfile: true\n",
        ) + &ssh_via(&host)
            + "    timeoutSeconds: 5\n    commandTimeoutSeconds: 10\n"),
    );
    // The installer runs on the host: the controller dies (as on a node failure), and the
    // object is deleted before any controller saw a registration.
    eventually(
        Duration::from_secs(60),
        "the install on the host",
        || async { host.received_preconfig() },
    )
    .await;
    controller.kill();
    api.delete("web", &Default::default()).await.unwrap();
    assert!(
        !aws.opsworks
            .instances()
            .iter()
            .any(|i| i.ec2_instance_id.as_deref() == Some(instance.as_str())),
        "registered before the controller died: the test is too slow for its installer"
    );
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    // The install goes on without its session and registers the host; the object must stay
    // until that registration is seen and undone.
    support::wait_gone(&api, "web").await;
    let log = eventually(Duration::from_secs(30), "the installer's end", || async {
        std::fs::read_to_string(host.dir().join("boot-registration.log"))
            .ok()
            .filter(|l| !l.trim().is_empty())
    })
    .await;
    assert!(log.contains("result=registered"), "{log}");
    let left: Vec<_> = aws
        .opsworks
        .instances()
        .into_iter()
        .filter(|i| {
            i.ec2_instance_id.as_deref() == Some(instance.as_str()) && i.status != "deregistered"
        })
        .collect();
    assert!(left.is_empty(), "a registration with no object: {left:?}");
}
