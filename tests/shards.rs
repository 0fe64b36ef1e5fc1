//! Splitting the objects between controllers, against a real kube-apiserver: one controller for
//! a list of namespaces (one watch each) and nothing outside them; and shards, controllers that
//! each take the objects a label selector picks, side by side in one namespace, each object
//! reconciled by exactly one of them, and handed over when its label changes.
//!
//! The objects name a stack that does not exist: the first step a controller takes for an
//! object is then visible on its status (`StackResolved=StackNotFound`) without any host.

mod support;

use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use kube::api::{Api, Patch, PatchParams};
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, eventually, namespace, on_premises,
    serving_stand_in, ssh_key_secret, ssh_via, wait_reason,
};

/// An object in `ns` that stops at its missing stack, with `labels` (YAML flow mapping).
fn object(ns: &str, name: &str, labels: &str) -> String {
    on_premises(
        ns,
        name,
        "0b1c2d3e-0000-4000-8000-000000000000",
        "127.0.9.1",
        name,
        "no-such-secret",
        "",
    )
    .replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  labels: {labels}\n"),
    )
}

/// Waits until `name` in `api` has been looked at (its stack reported missing).
async fn looked_at(api: &Api<InstanceRegistration>, name: &str) {
    wait_reason(api, name, types::STACK_RESOLVED, reasons::STACK_NOT_FOUND).await;
}

/// Whether `name` has no status at all (no controller looked at it).
async fn untouched(api: &Api<InstanceRegistration>, name: &str) -> bool {
    let obj = api.get(name).await.unwrap();
    obj.status.is_none() && condition(&obj, types::STACK_RESOLVED).is_none()
}

/// Whether the controller's log shows a pass over object `name`.
fn reconciled(controller: &ControllerProcess, name: &str) -> bool {
    support::strip_ansi(&controller.logs()).contains(&format!("name={name}}}"))
}

#[tokio::test]
async fn a_controller_watches_each_namespace_it_is_given_and_no_other() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let (a, b, c) = (
        namespace(&client, "multi-a").await,
        namespace(&client, "multi-b").await,
        namespace(&client, "multi-c").await,
    );
    for ns in [&a, &b, &c] {
        apply(cp, &object(ns, "obj", "{}"));
    }
    let controller = ControllerProcess::start(cp, AwsEnv::shared(), &format!("{a},{b}"), &[]);
    for ns in [&a, &b] {
        looked_at(&Api::namespaced(client.clone(), ns), "obj").await;
    }
    // One created after the start is seen too: the watches run, not only the first lists.
    apply(cp, &object(&b, "later", "{}"));
    looked_at(&Api::namespaced(client.clone(), &b), "later").await;
    // The third namespace is not the controller's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other: Api<InstanceRegistration> = Api::namespaced(client.clone(), &c);
    assert!(untouched(&other, "obj").await, "{}", controller.logs());
    assert!(
        controller.logs().contains(&format!("namespaces {a}, {b}")),
        "the log does not say what is watched"
    );
}

#[tokio::test]
async fn shards_split_the_objects_by_label_each_to_exactly_one_and_hand_over_on_relabel() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "shards").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let names = |shard: &str| -> Vec<String> { (0..3).map(|i| format!("{shard}-{i}")).collect() };
    for shard in ["a", "b"] {
        for name in names(shard) {
            apply(cp, &object(&ns, &name, &format!("{{shard: {shard}}}")));
        }
    }
    apply(cp, &object(&ns, "nobodys", "{shard: c}"));
    let shard = |s: &str| {
        ControllerProcess::start(
            cp,
            AwsEnv::shared(),
            &ns,
            &[
                "--label-selector",
                &format!("shard={s}"),
                "--instance",
                &format!("shard-{s}"),
            ],
        )
    };
    let (shard_a, shard_b) = (shard("a"), shard("b"));
    for name in names("a").iter().chain(&names("b")) {
        looked_at(&api, name).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in names("a") {
        assert!(reconciled(&shard_a, &name), "{name} not in shard a's log");
        assert!(
            !reconciled(&shard_b, &name),
            "{name} reconciled by shard b too"
        );
    }
    for name in names("b") {
        assert!(reconciled(&shard_b, &name), "{name} not in shard b's log");
        assert!(
            !reconciled(&shard_a, &name),
            "{name} reconciled by shard a too"
        );
    }
    assert!(
        untouched(&api, "nobodys").await,
        "an object of no shard was reconciled"
    );

    // Relabelled from a to b: shard b takes it (and shard a lets it be: it did not delete it).
    let moved = "a-0";
    let patch = serde_json::json!({"metadata": {"labels": {"shard": "b"}}});
    api.patch(moved, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "shard b to take a-0", || async {
        reconciled(&shard_b, moved).then_some(())
    })
    .await;
    let obj = api.get(moved).await.unwrap();
    assert!(obj.metadata.deletion_timestamp.is_none());
    assert_eq!(
        condition(&obj, types::STACK_RESOLVED).unwrap().1,
        reasons::STACK_NOT_FOUND
    );
}

#[tokio::test]
async fn an_object_relabelled_during_its_install_is_left_alone_until_that_install_has_ended() {
    let cp = ControlPlane::shared();
    // An installer that runs 6 s, in an environment of this test's own.
    let aws = serving_stand_in(AwsEnv::isolated(), Duration::from_secs(6));
    let client = cp.client().await;
    let ns = namespace(&client, "reshard").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&ns, None).await;
    let host = SshHost::start(&format!("{ns}-db"));
    host.authorize(&public);
    let shard = |s: &str| {
        ControllerProcess::start(
            cp,
            aws,
            &ns,
            &[
                "--label-selector",
                &format!("shard={s}"),
                "--instance",
                &format!("shard-{s}"),
            ],
        )
    };
    let (shard_a, shard_b) = (shard("a"), shard("b"));
    let manifest = on_premises(
        &ns,
        "db",
        &stack,
        &host.address().to_string(),
        "db-host",
        "key",
        "",
    ) + &ssh_via(&host)
        + "    timeoutSeconds: 5\n    commandTimeoutSeconds: 10\n";
    apply(
        cp,
        &manifest.replace("  name: db\n", "  name: db\n  labels: {shard: a}\n"),
    );
    // Shard a's install runs on the host; the object moves to shard b meanwhile.
    eventually(Duration::from_secs(60), "shard a's install", || async {
        host.received_preconfig()
    })
    .await;
    let started = api.get("db").await.unwrap().status.unwrap();
    let started_at = started
        .install_started_at
        .clone()
        .expect("installStartedAt");
    assert_eq!(started.install_shard.as_deref(), Some("shard=a"));
    let patch = serde_json::json!({"metadata": {"labels": {"shard": "b"}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // Shard b says why it waits, and starts nothing while shard a's install may run.
    let waiting = wait_reason(&api, "db", types::READY, reasons::INSTALL_IN_PROGRESS).await;
    let message = support::condition_message(&waiting, types::READY);
    assert!(message.contains("shard=a"), "{message}");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let status = api.get("db").await.unwrap().status.unwrap();
        assert_eq!(
            status.install_started_at.as_ref(),
            Some(&started_at),
            "shard b started an install while shard a's ran:\n{}",
            shard_b.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Shard a's pass saw, when its install ended, that the object was no longer its own.
    assert!(
        shard_a.logs().contains("left this controller's shard"),
        "{}",
        shard_a.logs()
    );
    // Then shard b takes over: the registration shard a's install made is the object's own,
    // and nothing is installed again.
    let obj = eventually(Duration::from_secs(90), "Ready from shard b", || async {
        let obj = api.get("db").await.ok()?;
        (condition(&obj, types::READY)?.0 == "True").then_some(obj)
    })
    .await;
    assert_eq!(host.boot_registration_runs(), 1, "{}", shard_b.logs());
    assert!(obj.status.unwrap().opsworks_instance_id.is_some());
}
