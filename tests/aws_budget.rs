//! The controller's own budget of AWS calls ([`--aws-calls-per-second`]) against a service that
//! takes only so many calls a second, as AWS does: IAM (moto behind the fault-injecting proxy)
//! answers `CreateAccessKey` beyond one call a second with `ThrottlingException`. Every object
//! must still get its key, the controller must cut its rate when throttled, and say so in its
//! metrics.

mod support;

use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use kube::api::Api;
use opsworks_endpoint::Faults;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, eventually,
    host_whose_install_fails, http_get, namespace, on_premises_at, ssh_key_secret,
};

/// The budget's rate for `service`, from the controller's metrics text.
fn budget_rate(metrics: &str, service: &str) -> Option<f64> {
    let prefix = format!("registrar_aws_budget_rate{{service=\"{service}\"}} ");
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
    // IAM throttles; the controller cuts its IAM budget below the rate it was given.
    let cut = eventually(Duration::from_secs(120), "the IAM budget cut", || async {
        let (_, text) = http_get(&metrics);
        budget_rate(&text, "iam").filter(|r| *r < 20.0)
    })
    .await;
    assert!(cut >= instance_registrar::testing::AWS_MIN_RATE, "{cut}");
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
