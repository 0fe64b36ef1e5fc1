//! The controller process (`instance-registrar run`) against a real kube-apiserver: finalizers,
//! status and conditions per generation, deletion with the controller up and down, the SSH key
//! step's reasons, secrets kept out of every output, and no writes while idle.

mod support;

use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::{FINALIZER, InstanceRegistration};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use support::{
    AwsEnv, ControlPlane, ControllerProcess, condition, eventually, namespace, on_premises, secret,
    ssh_key_secret, ssh_keypair, wait_gone, wait_reason,
};

/// An on-premises host `name` (its hostname too) in `stack`, using Secret `secret`. Its address is
/// loopback, one per name (two objects naming one host would be a Conflict): nothing listens
/// there, and nothing may leave the machine.
fn host(ns: &str, stack: &str, name: &str, secret: &str) -> String {
    let h = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let address = format!("127.1.{}.{}", (h >> 8) % 250 + 1, h % 250 + 1);
    on_premises(ns, name, stack, &address, name, secret, "")
}

const SSH_AUTH: &str = "kubernetes.io/ssh-auth";

async fn get(api: &Api<InstanceRegistration>, name: &str) -> Option<InstanceRegistration> {
    api.get_opt(name).await.unwrap()
}

/// Waits until `name` has condition `type_` with `reason`, computed for its current generation.

#[tokio::test]
async fn a_created_object_gets_the_finalizer_and_conditions_that_follow_its_generation() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "lifecycle").await;
    let aws = AwsEnv::shared();
    let stack = aws.create_stack(&ns, None).await;
    ssh_key_secret(&client, &ns, "key").await;
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    cp.kubectl_stdin(&["apply", "-f", "-"], &host(&ns, &stack, "web-1", "key"));
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);

    let obj = wait_reason(&api, "web-1", types::SSH_KEY_READY, reasons::SUCCEEDED).await;
    assert!(
        obj.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .iter()
            .any(|f| f == FINALIZER)
    );
    let status = obj.status.as_ref().unwrap();
    assert_eq!(status.observed_generation, obj.metadata.generation);
    for c in &status.conditions {
        assert_eq!(
            Some(c.observed_generation),
            obj.metadata.generation,
            "{}",
            c.r#type
        );
    }
    // Nothing is reported Ready that has not happened: this build does not register hosts.
    assert_eq!(condition(&obj, types::READY).unwrap().0, "False");
    let out = cp.kubectl(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=SshKeyReady",
        "--timeout=10s",
        "ir/web-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A spec change: the conditions follow the new generation.
    let patch = serde_json::json!({"spec": {"hostname": "web-one"}});
    api.patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let obj = eventually(
        Duration::from_secs(30),
        "conditions of generation 2",
        || async {
            let obj = get(&api, "web-1").await?;
            let status = obj.status.as_ref()?;
            (obj.metadata.generation == Some(2)
                && status.observed_generation == Some(2)
                && status.conditions.iter().all(|c| c.observed_generation == 2))
            .then_some(obj)
        },
    )
    .await;
    assert_eq!(condition(&obj, types::SSH_KEY_READY).unwrap().0, "True");
    let out = cp.kubectl(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=SshKeyReady=True",
        "--timeout=10s",
        "ir/web-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp.kubectl(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready=False",
        "--timeout=10s",
        "ir/web-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Events were published for the step's outcome.
    let events = cp
        .kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"])
        .unwrap();
    assert!(
        events.contains("SshKeyReady=True"),
        "no event for SshKeyReady: {events}"
    );
}

#[tokio::test]
async fn deletion_removes_the_finalizer_and_waits_for_a_controller_that_is_down() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "deletion").await;
    let aws = AwsEnv::shared();
    let stack = aws.create_stack(&ns, None).await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let mut controller = ControllerProcess::start(cp, aws, &ns, &[]);

    // With the controller up: the object goes.
    cp.kubectl_stdin(&["apply", "-f", "-"], &host(&ns, &stack, "gone", "missing"));
    wait_reason(
        &api,
        "gone",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "gone").await;
    // The deletion's Event is published once the finalizer has gone, not before: it still comes.
    eventually(Duration::from_secs(15), "the deletion's Event", || async {
        let events = cp
            .kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"])
            .ok()?;
        let events: serde_json::Value = serde_json::from_str(&events).ok()?;
        events["items"]
            .as_array()?
            .iter()
            .any(|e| e["involvedObject"]["name"] == "gone" && e["reason"] == "Deregistered")
            .then_some(())
    })
    .await;

    // With the controller down: the object waits, terminating, until the controller is back.
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &host(&ns, &stack, "waits", "missing"),
    );
    wait_reason(
        &api,
        "waits",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;
    assert!(
        controller.terminate(),
        "the controller did not exit cleanly on SIGTERM:\n{}",
        controller.logs()
    );
    api.delete("waits", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obj = get(&api, "waits")
        .await
        .expect("deleted without the controller");
    assert!(obj.metadata.deletion_timestamp.is_some());
    let _back = ControllerProcess::start(cp, aws, &ns, &[]);
    wait_gone(&api, "waits").await;
}

#[tokio::test]
async fn bad_secrets_get_stable_reasons_and_their_bytes_appear_nowhere() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "secrets").await;
    let aws = AwsEnv::shared();
    let stack = aws.create_stack(&ns, None).await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);

    let (good, _) = ssh_keypair("ed25519", "");
    let (encrypted, _) = ssh_keypair("ed25519", "open sesame");
    let (rsa, _) = ssh_keypair("rsa", "");
    let canary = "CANARY-not-a-key-7f3a9c $(touch /tmp/pwned) `id`";
    let half_key = &good[..good.len() / 2];
    // (object and Secret name, Secret type, Secret data, expected SshKeyReady reason)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, Vec<u8>)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no-key",
            "Opaque",
            vec![("other", b"x".to_vec())],
            reasons::SECRET_KEY_MISSING,
        ),
        (
            "garbage",
            SSH_AUTH,
            vec![("ssh-privatekey", canary.as_bytes().to_vec())],
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            "truncated",
            SSH_AUTH,
            vec![("ssh-privatekey", half_key.as_bytes().to_vec())],
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            "empty",
            "Opaque",
            vec![("ssh-privatekey", Vec::new())],
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            "binary",
            "Opaque",
            vec![("ssh-privatekey", vec![0, 159, 146, 150, 255])],
            reasons::INVALID_PRIVATE_KEY,
        ),
        (
            "locked",
            SSH_AUTH,
            vec![("ssh-privatekey", encrypted.as_bytes().to_vec())],
            reasons::PASSPHRASE_REQUIRED,
        ),
        (
            "wrong-pass",
            SSH_AUTH,
            vec![
                ("ssh-privatekey", encrypted.as_bytes().to_vec()),
                ("passphrase", b"nope".to_vec()),
            ],
            reasons::WRONG_PASSPHRASE,
        ),
        (
            "right-pass",
            SSH_AUTH,
            vec![
                ("ssh-privatekey", encrypted.as_bytes().to_vec()),
                ("passphrase", b"open sesame\n".to_vec()),
            ],
            reasons::SUCCEEDED,
        ),
        (
            "tls",
            "kubernetes.io/tls",
            vec![
                ("tls.crt", b"x".to_vec()),
                ("tls.key", good.as_bytes().to_vec()),
            ],
            reasons::SECRET_TYPE_INVALID,
        ),
        (
            "rsa",
            "Opaque",
            vec![("ssh-privatekey", rsa.as_bytes().to_vec())],
            reasons::SUCCEEDED,
        ),
    ];
    for (name, type_, data, _) in &cases {
        let data: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        secret(&client, &ns, name, type_, &data).await;
    }
    let controller = ControllerProcess::start(cp, aws, &ns, &[]);
    for (name, ..) in &cases {
        cp.kubectl_stdin(&["apply", "-f", "-"], &host(&ns, &stack, name, name));
    }
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &host(&ns, &stack, "absent", "absent"),
    );
    for (name, _, _, reason) in &cases {
        let obj = wait_reason(&api, name, types::SSH_KEY_READY, reason).await;
        if *reason != reasons::SUCCEEDED {
            let (status, ready_reason, _) = condition(&obj, types::READY).unwrap();
            assert_eq!(
                (status.as_str(), ready_reason.as_str()),
                ("False", *reason),
                "{name}"
            );
            assert_eq!(condition(&obj, types::STALLED).unwrap().0, "True", "{name}");
        }
    }
    wait_reason(
        &api,
        "absent",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;

    // The Secret appears later: the object recovers without a spec change.
    secret(
        &client,
        &ns,
        "absent",
        SSH_AUTH,
        &[("ssh-privatekey", good.as_bytes())],
    )
    .await;
    wait_reason(&api, "absent", types::SSH_KEY_READY, reasons::SUCCEEDED).await;

    // No byte of any key, nor the canary, in logs, status or events.
    let mut outputs = controller.logs();
    outputs += &cp
        .kubectl_ok(&["get", "ir", "-n", &ns, "-o", "yaml"])
        .unwrap();
    outputs += &cp
        .kubectl_ok(&["get", "events", "-n", &ns, "-o", "yaml"])
        .unwrap();
    let mut secrets: Vec<String> = vec!["CANARY-not-a-key".into(), "open sesame".into()];
    for key in [&good, &encrypted, &rsa] {
        secrets.extend(support::key_material_lines(key));
    }
    let hits: Vec<_> = secrets
        .iter()
        .filter(|s| outputs.contains(s.as_str()))
        .collect();
    assert!(
        outputs.contains("SecretKeyMissing") && controller.logs().contains("DEBUG"),
        "captured the wrong thing"
    );
    assert!(hits.is_empty(), "secret material leaked: {hits:?}");
    println!(
        "scanned {} bytes of logs, status and events for {} secret strings: 0 hits",
        outputs.len(),
        secrets.len()
    );
}

#[tokio::test]
async fn suspended_objects_are_reported_but_not_acted_on() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "suspend").await;
    let aws = AwsEnv::shared();
    let stack = aws.create_stack(&ns, None).await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    let yaml =
        host(&ns, &stack, "paused", "missing").replace("  ssh:\n", "  suspend: true\n  ssh:\n");
    cp.kubectl_stdin(&["apply", "-f", "-"], &yaml);
    let obj = wait_reason(&api, "paused", types::RECONCILING, reasons::SUSPENDED).await;
    assert!(
        condition(&obj, types::SSH_KEY_READY).is_none(),
        "a suspended object was checked"
    );
    // Resumed: the step runs.
    let patch = serde_json::json!({"spec": {"suspend": false}});
    api.patch("paused", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_reason(
        &api,
        "paused",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn an_idle_controller_with_50_objects_writes_no_status() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "idle").await;
    let aws = AwsEnv::shared();
    let stack = aws.create_stack(&ns, None).await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    ssh_key_secret(&client, &ns, "key").await;
    // Half with a usable key (finished: slow resync), half blocked on a missing Secret (retried
    // with backoff all through the quiet period, re-evaluated each time, yet nothing changes).
    let mut yaml = String::new();
    for i in 0..50 {
        let secret = if i % 2 == 0 { "key" } else { "missing" };
        yaml += &host(&ns, &stack, &format!("host-{i:02}"), secret);
        yaml += "---\n";
    }
    let controller = ControllerProcess::start(cp, aws, &ns, &[]);
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(90),
        "50 objects with status for their generation",
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            let done = list.items.iter().filter(|o| {
                o.status.as_ref().and_then(|s| s.observed_generation) == o.metadata.generation
                    && condition(o, types::SSH_KEY_READY).is_some()
            });
            (done.count() == 50).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = cp.audited(
        &ns,
        "instanceregistrations",
        Some("status"),
        &["patch", "update"],
    );
    let reconciles_before = controller.logs().matches("reconciled").count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let writes_after = cp.audited(
        &ns,
        "instanceregistrations",
        Some("status"),
        &["patch", "update"],
    );
    let secret_reads = cp.audited(&ns, "secrets", None, &["get"]);
    let reconciles_after = controller.logs().matches("reconciled").count();
    println!(
        "50 objects: {writes_before} status writes to settle, {} during 30 idle seconds; {} reconciles in those seconds; {secret_reads} Secret reads in all",
        writes_after - writes_before,
        reconciles_after.saturating_sub(reconciles_before)
    );
    assert!(
        writes_before >= 50,
        "the audit log did not see the writes ({writes_before})"
    );
    assert_eq!(writes_after, writes_before, "status written while idle");
    // The quiet period was not quiet for the controller: the blocked half was re-evaluated.
    assert!(
        reconciles_after > reconciles_before,
        "no reconcile ran during the idle period"
    );
}

#[tokio::test]
async fn a_status_write_based_on_an_older_copy_is_refused_and_moves_nothing_back() {
    // What every status write of the controller does (a pass that ran on a lagging watch's copy
    // must not erase newer fields, such as the host key recorded on first use).
    use instance_registrar::testing::apply_status;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "stale").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    support::apply(
        cp,
        &host(&ns, "0b1c2d3e-0000-4000-8000-00000000abcd", "db", "key"),
    );
    let old = api.get("db").await.unwrap();
    let old_version = old.metadata.resource_version.clone().unwrap();
    let newer = instance_registrar::resource::InstanceRegistrationStatus {
        host_key_fingerprint: Some("SHA256:recorded-first".into()),
        ..Default::default()
    };
    let written = apply_status(&api, "db", &newer, Some(&old_version))
        .await
        .unwrap();
    // A pass that started from `old` writes what it knew: refused.
    let stale = instance_registrar::resource::InstanceRegistrationStatus {
        message: Some("from an older copy".into()),
        ..Default::default()
    };
    match apply_status(&api, "db", &stale, Some(&old_version)).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a write from an older copy was not refused: {other:?}"),
    }
    let now = api.get("db").await.unwrap().status.unwrap();
    assert_eq!(
        now.host_key_fingerprint.as_deref(),
        Some("SHA256:recorded-first")
    );
    assert_eq!(now.message, None);
    // From the current version the same write goes through.
    apply_status(
        &api,
        "db",
        &stale,
        written.metadata.resource_version.as_deref(),
    )
    .await
    .unwrap();
}
