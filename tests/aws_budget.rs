//! The controller and AWS calls that wait: its own budget of calls (`--aws-calls-per-second`)
//! against a service that takes only so many calls a second, as AWS does (IAM, moto behind the
//! fault-injecting proxy, answers `CreateAccessKey` beyond one call a second with
//! `ThrottlingException`): every object must still get its key, and the controller cut its rate
//! and say so in its metrics. And passes whose AWS calls get no answer for a long while must not
//! hold the reconcile workers that deletions and new objects need.

mod support;

use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use kube::api::Api;
use opsworks_endpoint::Faults;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, ec2, eventually,
    host_whose_install_fails, http_get, namespace, on_premises, on_premises_at, ssh_key_secret,
};

/// The budget's rate for `service`, from the controller's metrics text.
fn budget_rate(metrics: &str, service: &str) -> Option<f64> {
    let prefix = format!("registrar_aws_budget_rate{{service=\"{service}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The budget's own rate for `operation` of `service` (one the service throttled).
fn operation_rate(metrics: &str, service: &str, operation: &str) -> Option<f64> {
    let prefix = format!(
        "registrar_aws_budget_operation_rate{{service=\"{service}\",operation=\"{operation}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_wave_against_a_rate_limited_service_slows_down_and_every_object_gets_its_key() {
    const OBJECTS: usize = 10;
    let cp = ControlPlane::shared();
    let aws = AwsEnv::faulty();
    let client = cp.client().await;
    let ns = namespace(&client, "budget").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    // Hosts whose installer fails: the keys stay in place to be counted.
    let hosts: Vec<_> = (0..OBJECTS)
        .map(|n| host_whose_install_fails(&format!("{ns}-h{n}"), &public))
        .collect();
    aws.set_faults(Faults::rate_limit(1.0, &["iam:CreateAccessKey"]));
    aws.clear_calls();
    let controller = ControllerProcess::start(cp, aws, &ns, &["--aws-calls-per-second", "20"]);
    let metrics = format!("http://{}/metrics", controller.http_address("/metrics"));
    let (_, text) = http_get(&metrics);
    assert!(
        !text.contains("registrar_aws_budget_rate{service=\"iam\"}")
            || budget_rate(&text, "iam") == Some(20.0),
        "{text}"
    );
    for (n, host) in hosts.iter().enumerate() {
        let name = format!("h{n}");
        apply(cp, &on_premises_at(&ns, &name, &stack, host, &name, "key"));
    }
    // IAM throttles CreateAccessKey; the controller gives it a rate of its own, below the rate
    // it was given for IAM, which the other IAM calls keep.
    let cut = eventually(
        Duration::from_secs(120),
        "CreateAccessKey's own rate",
        || async {
            let (_, text) = http_get(&metrics);
            operation_rate(&text, "iam", "CreateAccessKey").filter(|r| *r < 20.0)
        },
    )
    .await;
    assert!(cut >= instance_registrar::testing::AWS_MIN_RATE, "{cut}");
    let (_, text) = http_get(&metrics);
    assert_eq!(budget_rate(&text, "iam"), Some(20.0), "{text}");
    assert_eq!(operation_rate(&text, "iam", "CreateUser"), None, "{text}");
    // Every object gets its key all the same, and none is left failed.
    for n in 0..OBJECTS {
        let name = format!("h{n}");
        eventually(
            Duration::from_secs(180),
            &format!("{name}: CredentialsReady"),
            || async {
                let obj = api.get_opt(&name).await.ok()??;
                condition(&obj, types::CREDENTIALS_READY)
                    .filter(|(status, reason, _)| status == "True" && reason == reasons::SUCCEEDED)
                    .map(|_| ())
            },
        )
        .await;
    }
    let summary = aws.call_summary();
    println!("{summary}");
    let keys = &summary.by_operation[&("iam".to_owned(), "CreateAccessKey".to_owned())];
    assert!(keys.throttling >= 1, "the limit never bit: {keys:?}");
    assert_eq!(
        aws.iam_users(&format!("OpsWorks-{}", &ns[..8])).await.len(),
        OBJECTS
    );
    let (_, text) = http_get(&metrics);
    assert!(
        text.lines().any(|l| l.starts_with(
            "registrar_aws_calls_total{service=\"iam\",operation=\"CreateAccessKey\",outcome=\"throttled\"}"
        )),
        "{text}"
    );
    aws.set_faults(Faults::none());
}

#[tokio::test]
async fn passes_waiting_on_aws_leave_the_reconcile_workers_to_deletions_and_new_objects() {
    const WAVE: usize = 4;
    let cp = ControlPlane::shared();
    // An environment of its own: its EC2 look-ups are held without an answer.
    let aws = AwsEnv::hanging();
    let client = cp.client().await;
    let ns = namespace(&client, "held").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    ssh_key_secret(&client, &ns, "key").await;
    let mut instances = Vec::new();
    for n in 0..WAVE {
        instances.push(aws.run_instance(&format!("{ns}-w{n}"), None).await.0);
    }
    // Two reconcile workers; an AWS call may wait two minutes for its answer.
    let _controller = ControllerProcess::start(
        cp,
        aws,
        &ns,
        &[
            "--concurrency",
            "2",
            "--aws-attempt-timeout-seconds",
            "120",
            "--aws-operation-timeout-seconds",
            "240",
        ],
    );
    let says = |name: &'static str, type_: &'static str, reason: &'static str| {
        let api = api.clone();
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("{name}: {type_} {reason}"),
                || async {
                    let obj = api.get_opt(name).await.ok()??;
                    condition(&obj, type_)
                        .filter(|(_, r, _)| r == reason)
                        .map(|_| ())
                },
            )
            .await
        }
    };
    // An object that never gets past its Secret, to delete during the wave.
    apply(
        cp,
        &on_premises(
            &ns,
            "idle",
            &stack,
            "127.0.9.9",
            "idle",
            "no-such-secret",
            "",
        ),
    );
    says("idle", types::SSH_KEY_READY, reasons::SECRET_NOT_FOUND).await;

    // The wave: EC2 objects whose instance look-up gets no answer.
    aws.set_faults(Faults::hang(&["ec2:DescribeInstances"]));
    for (n, id) in instances.iter().enumerate() {
        apply(cp, &ec2(&ns, &format!("w{n}"), &stack, id, "key", ""));
    }
    eventually(
        Duration::from_secs(30),
        "the wave's look-ups held",
        || async {
            let summary = aws.call_summary();
            let held = summary
                .by_operation
                .get(&("ec2".to_owned(), "DescribeInstances".to_owned()))
                .map_or(0, |c| c.hung);
            (held >= 2).then_some(())
        },
    )
    .await;

    // Meanwhile a new object is looked at, and a deletion done: the workers are not held.
    apply(
        cp,
        &on_premises(
            &ns,
            "late",
            &stack,
            "127.0.9.10",
            "late",
            "no-such-secret",
            "",
        ),
    );
    says("late", types::SSH_KEY_READY, reasons::SECRET_NOT_FOUND).await;
    api.delete("idle", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(30), "idle deleted", || async {
        api.get_opt("idle").await.ok()?.is_none().then_some(())
    })
    .await;
    // ... while the wave still waits on EC2.
    for n in 0..WAVE {
        let obj = api.get(&format!("w{n}")).await.unwrap();
        assert!(
            condition(&obj, types::TARGET_RESOLVED).is_none_or(|(status, _, _)| status != "True"),
            "w{n} got past its look-up: {:#?}",
            obj.status
        );
    }
    // Answered again: the wave goes on.
    aws.set_faults(Faults::none());
    for n in 0..WAVE {
        let name = format!("w{n}");
        eventually(
            Duration::from_secs(120),
            &format!("{name}: TargetResolved"),
            || async {
                let obj = api.get_opt(&name).await.ok()??;
                condition(&obj, types::TARGET_RESOLVED)
                    .filter(|(status, _, _)| status == "True")
                    .map(|_| ())
            },
        )
        .await;
    }
}

/// A gauge or counter of the controller's metrics text, by its full name and labels.
fn metric(metrics: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_deletion_s_aws_calls_go_before_those_a_wave_has_waiting() {
    const WAVE: usize = 12;
    let cp = ControlPlane::shared();
    let aws = AwsEnv::isolated();
    let client = cp.client().await;
    let ns = namespace(&client, "urgent").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    // Hosts whose installer fails: each object makes its IAM user and key, then stops.
    let hosts: Vec<_> = (0..=WAVE)
        .map(|n| host_whose_install_fails(&format!("{ns}-u{n}"), &public))
        .collect();
    // Three IAM calls a second: the wave's ~60 queue for their turns far longer than the
    // deletion's dozen take.
    let controller = ControllerProcess::start(cp, aws, &ns, &["--aws-calls-per-second", "3"]);
    let metrics = format!("http://{}/metrics", controller.http_address("/metrics"));
    let credentials_ready = |name: String| {
        let api = api.clone();
        async move {
            eventually(
                Duration::from_secs(120),
                &format!("{name}: CredentialsReady"),
                || async {
                    let obj = api.get_opt(&name).await.ok()??;
                    condition(&obj, types::CREDENTIALS_READY)
                        .filter(|(status, _, _)| status == "True")
                        .map(|_| ())
                },
            )
            .await
        }
    };
    // The object to delete has its IAM user and key (deletionPolicy Deregister, the default).
    apply(
        cp,
        &on_premises_at(&ns, "old", &stack, &hosts[WAVE], "old", "key"),
    );
    credentials_ready("old".into()).await;

    for (n, host) in hosts[..WAVE].iter().enumerate() {
        let name = format!("w{n}");
        apply(cp, &on_premises_at(&ns, &name, &stack, host, &name, "key"));
    }
    let waiting = "registrar_aws_budget_waiting{service=\"iam\"}";
    eventually(
        Duration::from_secs(60),
        "the wave's IAM calls waiting",
        || async { (metric(&http_get(&metrics).1, waiting) >= 8.0).then_some(()) },
    )
    .await;

    let user = api
        .get("old")
        .await
        .unwrap()
        .status
        .and_then(|s| s.iam_user_name)
        .expect("old's IAM user on status");
    let deleting = std::time::Instant::now();
    api.delete("old", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(60), "old deleted", || async {
        api.get_opt("old").await.ok()?.is_none().then_some(())
    })
    .await;
    let took = deleting.elapsed();
    let still_waiting = metric(&http_get(&metrics).1, waiting);
    println!("deletion took {took:?}; IAM calls still waiting then: {still_waiting}");
    assert!(
        aws.iam_users(&user).await.is_empty(),
        "the deleted object's IAM user {user} is gone"
    );
    // The deletion was measured with the wave queued (not after it had drained).
    assert!(
        still_waiting >= 1.0,
        "the wave's IAM calls were all made before the deletion was done ({took:?})"
    );
    // About a dozen calls at three a second; behind the wave's, over 40 s.
    assert!(took < Duration::from_secs(15), "{took:?}");
    // And the wave goes on to get its keys.
    for n in 0..WAVE {
        credentials_ready(format!("w{n}")).await;
    }
}
