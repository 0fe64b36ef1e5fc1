//! Tenancy across namespaces, against the real parts (kube-apiserver, sshd hosts, moto behind the
//! recording proxy, the OpsWorks endpoint): a namespace uses only the stacks its
//! `registrar.dev/allowed-stacks` annotation lists. An object naming another team's stack is
//! refused (`StackNotAllowed`) before any AWS call, cannot squat the other team's host by being
//! created first, and does nothing in that stack when deleted; changing the annotation takes
//! effect at once, both ways.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use instance_registrar::ALLOWED_STACKS;
use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use support::condition_message as message;
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, eventually, namespace, on_premises,
    serving_stand_in, ssh_key_secret, ssh_via, wait_gone, wait_reason,
};

/// One controller at a time: the first test's watches every namespace, the second test's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every AWS call of the controller is recorded: OpsWorks by its endpoint, IAM and EC2 by the
/// proxy in front of moto.
fn aws() -> &'static AwsEnv {
    serving_stand_in(AwsEnv::faulty(), Duration::from_secs(1))
}

/// Sets (or, with `None`, removes) the allowed-stacks annotation of `ns`, as an administrator
/// would.
async fn allow(client: &Client, ns: &str, stacks: Option<&str>) {
    let api: Api<Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {ALLOWED_STACKS: stacks}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// An on-premises object `name` in `ns` for `host` in `stack`, hostname `hostname`, key `key`.
fn object(ns: &str, name: &str, stack: &str, host: &SshHost, hostname: &str) -> String {
    on_premises(
        ns,
        name,
        stack,
        &host.address().to_string(),
        hostname,
        "key",
        "",
    ) + &ssh_via(host)
}

/// The controller watching every namespace (as the chart's default runs it), debug logs.
fn controller_for_all_namespaces(
    cp: &ControlPlane,
    aws: &AwsEnv,
    extra: &[&str],
) -> ControllerProcess {
    let mut args = vec!["run"];
    args.extend(extra);
    let mut env: Vec<(&str, String)> = vec![
        ("METRICS_ADDRESS", "127.0.0.1:0".into()),
        ("PROBE_ADDRESS", "127.0.0.1:0".into()),
        ("LOG_LEVEL", "debug".into()),
        // No orphan audit: its calls at start would count as calls for the refused objects.
        ("AUDIT_SECONDS", "0".into()),
    ];
    env.extend(aws.controller_env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ControllerProcess::start_as(cp, &cp.kubeconfig, &args, &env)
}

/// The OpsWorks instances of `stack`: (ID, hostname).
async fn instances(aws: &AwsEnv, stack: &str) -> Vec<(String, String)> {
    let out = aws
        .opsworks_client()
        .describe_instances()
        .stack_id(stack)
        .send()
        .await
        .unwrap();
    out.instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                i.hostname().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_namespace_uses_only_the_stacks_its_annotation_allows() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = aws();
    let team_a = namespace(&client, "team-a").await;
    let team_b = namespace(&client, "team-b").await;
    let stack_a = aws.create_stack(&format!("{team_a}-stack"), None).await;
    let stack_b = aws.create_stack(&format!("{team_b}-stack"), None).await;
    allow(&client, &team_a, Some(&stack_a)).await;
    allow(&client, &team_b, Some(&format!(" {stack_b} ,"))).await;
    let (_, public_a) = ssh_key_secret(&client, &team_a, "key").await;
    let (_, public_b) = ssh_key_secret(&client, &team_b, "key").await;
    let host_a = SshHost::start(&format!("{team_a}-a"));
    host_a.authorize(&public_a);
    let host_b = SshHost::start(&format!("{team_b}-b"));
    host_b.authorize(&public_b);
    let host_c = SshHost::start(&format!("{team_a}-c"));
    host_c.authorize(&public_a);
    let a: Api<InstanceRegistration> = Api::namespaced(client.clone(), &team_a);
    let b: Api<InstanceRegistration> = Api::namespaced(client.clone(), &team_b);
    let controller = controller_for_all_namespaces(cp, aws, &["--resync-seconds", "600"]);

    // Team A names team B's stack and host first: refused before any AWS call.
    aws.clear_calls();
    apply(cp, &object(&team_a, "squat", &stack_b, &host_b, "b-1"));
    let squat = wait_reason(
        &a,
        "squat",
        types::STACK_RESOLVED,
        reasons::STACK_NOT_ALLOWED,
    )
    .await;
    let said = message(&squat, types::STACK_RESOLVED);
    for part in [
        team_a.as_str(),
        stack_b.as_str(),
        stack_a.as_str(),
        ALLOWED_STACKS,
    ] {
        assert!(said.contains(part), "{part} missing in {said:?}");
    }
    assert_eq!(
        condition(&squat, types::READY).map(|c| c.1).as_deref(),
        Some(reasons::STACK_NOT_ALLOWED)
    );
    assert_eq!(
        condition(&squat, types::STALLED).map(|c| c.0).as_deref(),
        Some("True")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = aws.call_summary();
    assert_eq!(
        calls.total().calls,
        0,
        "AWS calls for a refused object:\n{calls}"
    );

    // Team B's object for its own host, created later, is not held off by the squatter.
    apply(cp, &object(&team_b, "web", &stack_b, &host_b, "b-1"));
    wait_reason(&b, "web", types::READY, reasons::SUCCEEDED).await;
    // Team A's object in its own stack registers.
    apply(cp, &object(&team_a, "web", &stack_a, &host_a, "a-1"));
    let a_web = wait_reason(&a, "web", types::READY, reasons::SUCCEEDED).await;
    assert_eq!(instances(aws, &stack_b).await.len(), 1);
    assert_eq!(instances(aws, &stack_a).await.len(), 1);
    let squat = a.get("squat").await.unwrap();
    assert_eq!(
        condition(&squat, types::STACK_RESOLVED)
            .map(|c| c.1)
            .as_deref(),
        Some(reasons::STACK_NOT_ALLOWED)
    );

    // Deleting the refused object does nothing in AWS, and B's registration stays.
    aws.clear_calls();
    a.delete("squat", &Default::default()).await.unwrap();
    wait_gone(&a, "squat").await;
    let calls = aws.call_summary();
    assert_eq!(
        calls.total().calls,
        0,
        "AWS calls deleting a refused object:\n{calls}"
    );
    assert_eq!(instances(aws, &stack_b).await.len(), 1);

    // Allowing team A stack B lets a refused object go on at once, not at its next backoff
    // (7.5 s at the soonest after the first refusal).
    apply(cp, &object(&team_a, "more", &stack_b, &host_c, "c-1"));
    wait_reason(
        &a,
        "more",
        types::STACK_RESOLVED,
        reasons::STACK_NOT_ALLOWED,
    )
    .await;
    let allowed_at = Instant::now();
    allow(&client, &team_a, Some(&format!("{stack_a}\n{stack_b}"))).await;
    eventually(
        Duration::from_secs(5),
        "more: StackResolved within 5 s of the annotation allowing stack B",
        || async {
            let obj = a.get("more").await.ok()?;
            (condition(&obj, types::STACK_RESOLVED)?.1 == reasons::SUCCEEDED).then_some(())
        },
    )
    .await;
    let resolved_after = allowed_at.elapsed();
    wait_reason(&a, "more", types::READY, reasons::SUCCEEDED).await;
    let ready_after = allowed_at.elapsed();
    assert_eq!(instances(aws, &stack_b).await.len(), 2);

    // Taking stack A away: the Ready object hears of it at once (its next resync is 10
    // minutes away), and deleting it leaves its registration in stack A: only its own IAM user
    // goes.
    allow(&client, &team_a, Some(&stack_b)).await;
    wait_reason(&a, "web", types::READY, reasons::STACK_NOT_ALLOWED).await;
    let uid = a_web.uid().unwrap();
    let owned_by_a_web = || async {
        aws.iam_users("")
            .await
            .into_iter()
            .filter(|(_, owner)| owner.as_deref() == Some(uid.as_str()))
            .count()
    };
    assert_eq!(owned_by_a_web().await, 1, "a/web's IAM user");
    aws.clear_calls();
    a.delete("web", &Default::default()).await.unwrap();
    wait_gone(&a, "web").await;
    let calls = aws.call_summary();
    assert_eq!(
        calls.service("opsworks").calls,
        0,
        "OpsWorks calls deleting an object refused its stack:\n{calls}"
    );
    assert_eq!(calls.get("iam", "DeleteGroup").calls, 0, "{calls}");
    assert_eq!(calls.get("iam", "DeleteUser").calls, 1, "{calls}");
    assert_eq!(
        instances(aws, &stack_a).await.len(),
        1,
        "the registration in stack A was left"
    );
    assert_eq!(owned_by_a_web().await, 0, "a/web's IAM user was deleted");
    println!(
        "tenancy: StackResolved {:.1} s and Ready {:.1} s after the annotation allowed the stack",
        resolved_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );

    for (api, name) in [(&b, "web"), (&a, "more")] {
        api.delete(name, &Default::default()).await.unwrap();
        wait_gone(api, name).await;
    }
    let logs = controller.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// The layers and RegisteredBy of OpsWorks instance `id`.
async fn instance_of(aws: &AwsEnv, id: &str) -> aws_sdk_opsworks::types::Instance {
    let out = aws
        .opsworks_client()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.instances()[0].clone()
}

#[tokio::test]
async fn in_a_shared_stack_a_tenant_cannot_claim_another_tenants_instance_by_naming_its_host() {
    // Issue 21 item 2: two namespaces share a stack. Team B's object, after an install attempt
    // of its own that failed, sets the hostname and address of team A's host: A's instance must
    // stay A's (no layers of B's, not deregistered when B's object goes).
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = aws();
    let team_a = namespace(&client, "share-a").await;
    let team_b = namespace(&client, "share-b").await;
    let stack = aws.create_stack(&format!("{team_a}-shared"), None).await;
    allow(&client, &team_a, Some(&stack)).await;
    allow(&client, &team_b, Some(&stack)).await;
    let layer = aws
        .opsworks_client()
        .create_layer()
        .stack_id(&stack)
        .r#type(aws_sdk_opsworks::types::LayerType::Custom)
        .name("b-layer")
        .shortname("b-layer")
        .send()
        .await
        .unwrap()
        .layer_id()
        .unwrap()
        .to_owned();
    let (_, public_a) = ssh_key_secret(&client, &team_a, "key").await;
    let (_, public_b) = ssh_key_secret(&client, &team_b, "key").await;
    let host_a = SshHost::start(&format!("{team_a}-a"));
    host_a.authorize(&public_a);
    let host_b = support::host_whose_install_fails(&format!("{team_b}-b"), &public_b);
    let a: Api<InstanceRegistration> = Api::namespaced(client.clone(), &team_a);
    let b: Api<InstanceRegistration> = Api::namespaced(client.clone(), &team_b);
    let controller = controller_for_all_namespaces(cp, aws, &["--resync-seconds", "600"]);

    apply(cp, &object(&team_a, "web", &stack, &host_a, "a-1"));
    wait_reason(&a, "web", types::READY, reasons::SUCCEEDED).await;
    let [(victim, _)] = &instances(aws, &stack).await[..] else {
        panic!("one registration in the stack");
    };
    let described = instance_of(aws, victim).await;
    let a_user = a
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap()
        .iam_user_name
        .unwrap();
    assert!(
        described
            .registered_by()
            .is_some_and(|by| by.ends_with(&format!(":user/AWS/OpsWorks/{a_user}"))),
        "RegisteredBy names A's IAM user ({a_user}): {:?}",
        described.registered_by()
    );
    let private_ip = described.private_ip().unwrap().to_owned();

    // B's own host: an install attempt that fails (installStartedAt is set).
    let b_object = |extra: &str| {
        on_premises(
            &team_b,
            "web",
            &stack,
            &host_b.address().to_string(),
            "b-1",
            "key",
            &format!("  layerIds: [\"{layer}\"]\n{extra}"),
        ) + &ssh_via(&host_b)
    };
    apply(cp, &b_object(""));
    let failed = wait_reason(&b, "web", types::AGENT_INSTALLED, reasons::INSTALLER_FAILED).await;
    assert!(failed.status.unwrap().install_started_at.is_some());
    // Then it names A's host: A's hostname and address.
    let patch = serde_json::json!({"spec": {"hostname": "a-1", "privateIp": private_ip}});
    b.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let refused = wait_reason(&b, "web", types::READY, reasons::CONFLICT).await;
    let said = message(&refused, types::READY);
    for part in [format!("{team_a}/web"), victim.clone()] {
        assert!(said.contains(&part), "{part} missing in {said:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        instance_of(aws, victim).await.layer_ids().is_empty(),
        "B's layers were assigned to A's instance"
    );
    assert_eq!(
        b.get("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .opsworks_instance_id,
        None,
        "B recorded A's instance as its own"
    );

    // Deleting B's object (default deletionPolicy Deregister) leaves A's instance registered.
    b.delete("web", &Default::default()).await.unwrap();
    wait_gone(&b, "web").await;
    let left = instances(aws, &stack).await;
    assert!(
        left.iter().any(|(id, _)| id == victim),
        "A's instance was deregistered: {left:?}"
    );
    let a_web = a.get("web").await.unwrap();
    assert_eq!(
        condition(&a_web, types::READY).map(|c| c.1).as_deref(),
        Some(reasons::SUCCEEDED)
    );
    a.delete("web", &Default::default()).await.unwrap();
    wait_gone(&a, "web").await;
    assert!(instances(aws, &stack).await.is_empty());
    let logs = controller.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// A controller confined to one namespace reads that Namespace's annotation too, and with
/// `--unannotated-namespaces none` a namespace without one may use no stack until an
/// administrator annotates it.
#[tokio::test]
async fn without_the_annotation_a_namespace_uses_no_stack_when_the_controller_says_so() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = aws();
    let ns = namespace(&client, "team-c").await;
    let stack = aws.create_stack(&format!("{ns}-stack"), None).await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let _controller = ControllerProcess::start(cp, aws, &ns, &["--unannotated-namespaces", "none"]);
    // No key Secret: once the stack is allowed, the next step stops at the missing Secret (and
    // nothing is contacted).
    apply(
        cp,
        &on_premises(&ns, "db", &stack, "127.3.0.1", "db-1", "key", ""),
    );
    let obj = wait_reason(
        &api,
        "db",
        types::STACK_RESOLVED,
        reasons::STACK_NOT_ALLOWED,
    )
    .await;
    let said = message(&obj, types::STACK_RESOLVED);
    assert!(said.contains("--unannotated-namespaces=none"), "{said}");

    // Another annotation is not the allow list.
    let other: BTreeMap<&str, &str> = BTreeMap::from([("team", "c")]);
    let ns_api: Api<Namespace> = Api::all(client.clone());
    ns_api
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"metadata": {"annotations": other}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let obj = api.get("db").await.unwrap();
    assert_eq!(
        condition(&obj, types::STACK_RESOLVED)
            .map(|c| c.1)
            .as_deref(),
        Some(reasons::STACK_NOT_ALLOWED)
    );

    allow(&client, &ns, Some("*")).await;
    wait_reason(&api, "db", types::SSH_KEY_READY, reasons::SECRET_NOT_FOUND).await;
    api.delete("db", &Default::default()).await.unwrap();
    wait_gone(&api, "db").await;
}
