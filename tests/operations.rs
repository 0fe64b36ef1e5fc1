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
