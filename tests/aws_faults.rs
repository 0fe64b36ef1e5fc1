//! The controller against an AWS that throttles and fails, as AWS does under load: IAM and EC2
//! (moto, behind the recording, fault-injecting proxy) and OpsWorks (the project's endpoint)
//! answer a seeded share of calls with throttling and 5xx errors in each service's own wire
//! format. Every object must still end as it does without faults (one IAM user tagged with its
//! UID, one access key, the Secret holding it), and deleting them must leave nothing in IAM.
//!
//! Run with `--nocapture` to see the calls by service and operation and the faults injected.

mod support;

use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use opsworks_endpoint::Faults;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, condition, ec2, eventually, host_whose_install_fails,
    namespace, on_premises, ssh_key_secret, ssh_via,
};

const MANAGED_POLICY: &str = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";
/// How long any one object may take to get through the faults.
const PATIENCE: Duration = Duration::from_secs(240);

/// Whether `obj` has condition `type_` True for its current generation.
fn holds(obj: &InstanceRegistration, type_: &str) -> bool {
    matches!(condition(obj, type_), Some((status, _, generation))
        if status == "True" && Some(generation) == obj.metadata.generation)
}

/// Whether any condition of `obj` has `reason`.
fn has_reason(obj: &InstanceRegistration, reason: &str) -> bool {
    obj.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.reason == reason))
}

#[tokio::test]
async fn under_throttling_and_server_errors_every_object_gets_one_user_and_key_and_loses_them_on_delete()
 {
    let started = Instant::now();
    let cp = ControlPlane::shared();
    let aws = AwsEnv::faulty();
    let client = cp.client().await;
    let ns = namespace(&client, "faults").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    // Every object reaches a host of its own (the controller makes credentials only for a host
    // that answered; two objects reaching one host would be a Conflict) whose installer fails,
    // so the credentials Secret stays.
    let hosts: Vec<_> = (0..5)
        .map(|n| host_whose_install_fails(&format!("{ns}-host-{n}"), &public))
        .collect();
    let web1 = format!("{ns}-web-1");
    let web2 = format!("{ns}-web-2");
    let (web1_id, _, _) = aws.run_instance(&web1, None).await;
    aws.run_instance(&web2, None).await;

    // Three on-premises hosts and two EC2 instances (one by ID, one by Name tag).
    let mut objects = Vec::new();
    for n in 0..3 {
        let name = format!("db-{n}");
        let target = format!("127.0.0.{}", 21 + n);
        objects.push((
            name.clone(),
            on_premises(&ns, &name, &stack, &target, &name, "key", ""),
        ));
    }
    objects.push((
        "web-1".into(),
        ec2(&ns, "web-1", &stack, &web1_id, "key", ""),
    ));
    objects.push(("web-2".into(), ec2(&ns, "web-2", &stack, &web2, "key", "")));

    // First a burst in which every call is throttled, until each object has said so on its
    // status (what a user sees when AWS throttles longer than the SDK retries); then the steady
    // faults: 30% throttling, 2.5% 500 and 2.5% 503, seeded, on IAM, EC2 and OpsWorks alike.
    aws.set_faults(Faults::throttling(1.0));
    aws.clear_calls();
    let mut controller = ControllerProcess::start(cp, aws, &ns, &[]);
    for ((name, yaml), host) in objects.iter().zip(&hosts) {
        let via_host = ssh_via(host);
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &format!("{yaml}{via_host}"));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, _) in &objects {
        eventually(PATIENCE, &format!("{name}: Throttled"), || async {
            let obj = api.get_opt(name).await.ok()??;
            has_reason(&obj, reasons::THROTTLED).then_some(())
        })
        .await;
    }
    let burst = aws.call_summary();
    let steady = Faults {
        throttle_rate: 0.3,
        internal_error_rate: 0.025,
        unavailable_rate: 0.025,
        seed: 2026,
        ..Faults::default()
    };
    aws.set_faults(steady.clone());
    aws.clear_calls();
    let steady_started = Instant::now();

    let mut done = Vec::new();
    for (name, _) in &objects {
        let obj = eventually(PATIENCE, &format!("{name}: CredentialsReady"), || async {
            let obj = api.get_opt(name).await.ok()??;
            holds(&obj, types::CREDENTIALS_READY).then_some(obj)
        })
        .await;
        done.push(obj);
    }
    let to_credentials = steady_started.elapsed();
    let up = aws.call_summary();

    // The end state without faults: per object exactly one IAM user, tagged with its UID, with
    // the registration policy and one access key, which the object's Secret holds.
    let iam = aws.iam();
    let users = aws.iam_users(&ns).await;
    assert_eq!(users.len(), objects.len(), "one user per object: {users:?}");
    for obj in &done {
        let name = obj.metadata.name.clone().unwrap();
        let uid = obj.metadata.uid.clone().unwrap();
        let ours: Vec<_> = users
            .iter()
            .filter(|(_, owner)| owner.as_deref() == Some(uid.as_str()))
            .collect();
        assert_eq!(ours.len(), 1, "{name}: {users:?}");
        let user = &ours[0].0;
        let status = obj.status.clone().unwrap();
        assert_eq!(status.iam_user_name.as_ref(), Some(user), "{name}");
        let keys = aws.access_keys(user).await;
        assert_eq!(keys.len(), 1, "{name}: keys {keys:?}");
        assert_eq!(status.access_key_id.as_ref(), Some(&keys[0]), "{name}");
        let stored = secrets
            .get(&format!("{name}-opsworks-access-key"))
            .await
            .unwrap_or_else(|e| panic!("{name}: the credentials Secret: {e}"));
        assert_eq!(stored.metadata.owner_references.unwrap()[0].uid, uid);
        let data = stored.data.unwrap();
        assert_eq!(data["access_key_id"].0, keys[0].as_bytes(), "{name}");
        assert!(!data["secret_access_key"].0.is_empty(), "{name}");
        let attached = iam
            .list_attached_user_policies()
            .user_name(user)
            .send()
            .await
            .unwrap();
        assert!(
            attached
                .attached_policies()
                .iter()
                .any(|p| p.policy_arn() == Some(MANAGED_POLICY)),
            "{name}: {attached:?}"
        );
    }

    // Deleting them removes everything made for them from IAM, faults or not.
    let deleting = Instant::now();
    for (name, _) in &objects {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for (name, _) in &objects {
        eventually(PATIENCE, &format!("{name} deleted"), || async {
            api.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    let to_deleted = deleting.elapsed();
    let all = aws.call_summary();
    aws.set_faults(Faults::none());
    assert!(
        aws.iam_users(&ns).await.is_empty(),
        "IAM users left after deletion: {:?}",
        aws.iam_users(&ns).await
    );
    let group = iam
        .get_group()
        .group_name(format!("OpsWorks-{stack}"))
        .send()
        .await;
    assert!(
        group.is_err(),
        "the stack's group outlived its last user: {group:?}"
    );

    // Faults were injected (EC2 sees only a few calls, so it may have been spared), and the
    // controller said so.
    for service in ["iam", "opsworks"] {
        let c = all.service(service);
        assert!(
            c.throttling > 0,
            "no throttling injected on {service}:\n{all}"
        );
    }
    assert!(
        all.service("ec2").calls > 0,
        "no EC2 call went through the proxy"
    );
    let server_errors = all.total().internal_failure + all.total().service_unavailable;
    assert!(server_errors > 0, "no 5xx injected:\n{all}");
    let throttled_events = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reasons::THROTTLED))
        .count();
    assert!(throttled_events > 0, "no Throttled event");
    let log = controller.logs();
    controller.terminate();
    // The SDK in the controller classified the proxy's and the endpoint's answers as it does
    // AWS's: throttling, or transient (5xx), and retried them (its debug log says so).
    let sdk_throttling = log.matches("kind: ThrottlingError").count();
    let sdk_transient = log.matches("kind: TransientError").count();

    println!(
        "faults test: {} objects; steady faults {steady:?}",
        objects.len()
    );
    println!(
        "burst (every call throttled until each object reported Throttled): {} calls, {} throttled",
        burst.total().calls,
        burst.total().throttling
    );
    println!(
        "calls until every object had CredentialsReady=True ({:.1} s):\n{up}",
        to_credentials.as_secs_f64()
    );
    println!(
        "calls with deletion too (deleted in {:.1} s):\n{all}",
        to_deleted.as_secs_f64()
    );
    let total = all.total();
    println!(
        "injected: {} throttling, {} InternalFailure/InternalError (500), {} ServiceUnavailable \
         (503), of {} calls",
        total.throttling, total.internal_failure, total.service_unavailable, total.calls
    );
    println!(
        "controller: {throttled_events} Throttled event(s); SDK retries logged: \
         {sdk_throttling} as ThrottlingError, {sdk_transient} as TransientError"
    );
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
}

/// The condition `type_` of `obj`, computed for its current generation: (status, reason,
/// message).
fn current(obj: &InstanceRegistration, type_: &str) -> Option<(String, String, String)> {
    let c = obj
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == type_)?;
    (Some(c.observed_generation) == obj.metadata.generation).then(|| {
        (
            format!("{:?}", c.status),
            c.reason.clone(),
            c.message.clone(),
        )
    })
}

/// Whether `obj` reports `type_` False with AwsUnavailable, saying the call timed out.
fn timed_out(obj: &InstanceRegistration, type_: &str) -> bool {
    matches!(current(obj, type_), Some((status, reason, message))
        if status == "False" && reason == reasons::AWS_UNAVAILABLE && message.contains("timed out"))
}

/// An AWS call that never answers: the OpsWorks endpoint, then the proxy in front of moto's IAM,
/// hold the controller's calls without answering. With one-second attempts and three-second
/// calls, each object says so (AwsUnavailable, "timed out") within seconds instead of waiting
/// for an answer that never comes, and goes on as soon as the endpoint answers again.
#[tokio::test]
async fn a_call_that_never_answers_ends_within_its_time_limit_and_the_object_recovers() {
    const LIMITS: &[&str] = &[
        "--aws-attempt-timeout-seconds",
        "1",
        "--aws-operation-timeout-seconds",
        "3",
    ];
    /// The call's 3 s, the bounded wait behind the stack's shared look-up, and a reconcile's
    /// queueing, with room to spare.
    const BOUND: Duration = Duration::from_secs(20);
    let cp = ControlPlane::shared();
    let aws = AwsEnv::hanging();
    let client = cp.client().await;
    let ns = namespace(&client, "hang").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    // Hosts that answer (one each: two objects reaching one host would be a Conflict), so the
    // pipeline gets as far as the credentials.
    let names = ["db-0", "db-1"];
    let hosts: Vec<_> = names
        .iter()
        .map(|name| host_whose_install_fails(&format!("{ns}-{name}"), &public))
        .collect();

    // OpsWorks DescribeStacks, the first call of every object, is held without an answer.
    aws.set_faults(Faults::hang(&["DescribeStacks"]));
    aws.clear_calls();
    let mut controller = ControllerProcess::start(cp, aws, &ns, LIMITS);
    let applied = Instant::now();
    for (n, name) in names.iter().enumerate() {
        let target = format!("127.0.0.{}", 41 + n);
        let yaml = on_premises(&ns, name, &stack, &target, name, "key", "");
        let via_host = ssh_via(&hosts[n]);
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &format!("{yaml}{via_host}"));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut stack_timed_out = Vec::new();
    for name in names {
        eventually(
            Duration::from_secs(90),
            &format!("{name}: StackResolved AwsUnavailable, timed out"),
            || async {
                let obj = api.get_opt(name).await.ok()??;
                timed_out(&obj, types::STACK_RESOLVED).then_some(())
            },
        )
        .await;
        stack_timed_out.push(applied.elapsed());
    }

    // DescribeStacks answers again (setting the faults releases the held calls); now IAM
    // GetGroup, behind the stack's shared group look-up, is held.
    aws.set_faults(Faults::hang(&["iam:GetGroup"]));
    let switched = Instant::now();
    let mut group_timed_out = Vec::new();
    for name in names {
        eventually(
            Duration::from_secs(90),
            &format!("{name}: StackResolved True, CredentialsReady AwsUnavailable, timed out"),
            || async {
                let obj = api.get_opt(name).await.ok()??;
                (holds(&obj, types::STACK_RESOLVED) && timed_out(&obj, types::CREDENTIALS_READY))
                    .then_some(())
            },
        )
        .await;
        group_timed_out.push(switched.elapsed());
    }

    // The endpoints answer again: every object gets its credentials.
    aws.set_faults(Faults::none());
    let cleared = Instant::now();
    for name in names {
        eventually(
            Duration::from_secs(120),
            &format!("{name}: CredentialsReady"),
            || async {
                let obj = api.get_opt(name).await.ok()??;
                holds(&obj, types::CREDENTIALS_READY).then_some(())
            },
        )
        .await;
    }
    let recovered = cleared.elapsed();
    // The endpoint records a held call when it is released.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = aws.call_summary();
    controller.terminate();

    let stacks_hung = calls.get("opsworks", "DescribeStacks").hung;
    let groups_hung = calls.get("iam", "GetGroup").hung;
    println!("hang test: calls\n{calls}");
    println!(
        "StackResolved timed out after {stack_timed_out:.1?}; CredentialsReady timed out \
         {group_timed_out:.1?} after the switch; recovered in {:.1} s; held calls: \
         {stacks_hung} DescribeStacks, {groups_hung} GetGroup",
        recovered.as_secs_f64()
    );
    assert!(stacks_hung >= 2, "DescribeStacks was not held:\n{calls}");
    assert!(groups_hung >= 1, "GetGroup was not held:\n{calls}");
    for (name, took) in names.iter().zip(&stack_timed_out) {
        assert!(
            *took < BOUND,
            "{name}: StackResolved took {took:?} to time out"
        );
    }
    for (name, took) in names.iter().zip(&group_timed_out) {
        assert!(
            *took < BOUND,
            "{name}: CredentialsReady took {took:?} to time out"
        );
    }
}
