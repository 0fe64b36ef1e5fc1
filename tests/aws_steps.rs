//! The AWS side of a registration against real SDK traffic to moto (IAM, EC2) and the project's
//! OpsWorks-compatible endpoint, with the controller as a process and a real kube-apiserver:
//! stack and target rules, adoption, IAM entities named as the CLI names them and owned by the
//! object, crash safety after every write, and deletion that removes exactly what was made.

mod support;

use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use opsworks_endpoint::Faults;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, ec2, eventually,
    host_whose_install_fails, namespace, on_premises, on_premises_at, register_directly,
    ssh_key_secret, wait_gone, wait_reason,
};

#[tokio::test]
async fn ec2_targets_resolve_by_id_address_and_name_tag_within_the_stack_vpc() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "targets").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (vpc_a, subnet_a) = aws.create_vpc("10.61.0.0/16").await;
    let (_vpc_b, subnet_b) = aws.create_vpc("10.62.0.0/16").await;
    let vpc_stack = aws.create_stack(&format!("{ns}-vpc"), Some(&vpc_a)).await;
    let classic_stack = aws.create_stack(&format!("{ns}-classic"), None).await;
    // One object per host and stack (the Conflict rule): the cases that name instance a1 in
    // three ways get a stack each, in the same VPC.
    let vpc_stack_ip = aws
        .create_stack(&format!("{ns}-vpc-ip"), Some(&vpc_a))
        .await;
    let vpc_stack_name = aws
        .create_stack(&format!("{ns}-vpc-name"), Some(&vpc_a))
        .await;
    let tag = |s: &str| format!("{ns}-{s}");
    let (a1, a1_private, a1_public) = aws.run_instance(&tag("web-a"), Some(&subnet_a)).await;
    let (b1, _, _) = aws.run_instance(&tag("web-b"), Some(&subnet_b)).await;
    let (twin1, _, _) = aws.run_instance(&tag("twin"), Some(&subnet_a)).await;
    let (twin2, _, _) = aws.run_instance(&tag("twin"), Some(&subnet_a)).await;
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);

    // (object, stack, target, expected TargetResolved reason)
    let cases = [
        ("by-id", &vpc_stack, a1.clone(), reasons::SUCCEEDED),
        (
            "by-private-ip",
            &vpc_stack_ip,
            a1_private.clone(),
            reasons::SUCCEEDED,
        ),
        ("by-name", &vpc_stack_name, tag("web-a"), reasons::SUCCEEDED),
        (
            "other-vpc-by-name",
            &vpc_stack,
            tag("web-b"),
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "other-vpc-by-id",
            &vpc_stack,
            b1.clone(),
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "unknown-id",
            &vpc_stack,
            "i-0000000000000dead".to_owned(),
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "no-such-name",
            &vpc_stack,
            tag("nobody"),
            reasons::TARGET_NOT_FOUND,
        ),
        (
            "ambiguous",
            &vpc_stack,
            tag("twin"),
            reasons::TARGET_AMBIGUOUS,
        ),
        (
            "classic-any-vpc",
            &classic_stack,
            tag("web-b"),
            reasons::SUCCEEDED,
        ),
    ];
    for (name, stack, target, _) in &cases {
        apply(
            cp,
            &ec2(&ns, name, stack, target, "no-secret-needed-here", ""),
        );
    }
    for (name, _, _, reason) in &cases {
        let obj = wait_reason(&api, name, types::TARGET_RESOLVED, reason).await;
        let status = obj.status.clone().unwrap();
        let message = &status
            .conditions
            .iter()
            .find(|c| c.r#type == types::TARGET_RESOLVED)
            .unwrap()
            .message;
        match *name {
            "by-id" | "by-name" => {
                assert_eq!(
                    status.ec2_instance_id.as_deref(),
                    Some(a1.as_str()),
                    "{name}"
                );
                let expected = a1_public.clone().unwrap_or(a1_private.clone());
                assert_eq!(
                    status.address.as_deref(),
                    Some(expected.as_str()),
                    "{name}: public IP, else private"
                );
            }
            "by-private-ip" => {
                assert_eq!(status.ec2_instance_id.as_deref(), Some(a1.as_str()));
                assert_eq!(
                    status.address.as_deref(),
                    Some(a1_private.as_str()),
                    "an IP target is the address used"
                );
            }
            "classic-any-vpc" => assert_eq!(status.ec2_instance_id.as_deref(), Some(b1.as_str())),
            "ambiguous" => {
                assert!(
                    message.contains(&twin1) && message.contains(&twin2),
                    "lists both: {message}"
                );
                assert_eq!(
                    condition(&obj, types::READY).unwrap().1,
                    reasons::TARGET_AMBIGUOUS
                );
                assert_eq!(condition(&obj, types::STALLED).unwrap().0, "True");
            }
            _ => {}
        }
        // Nothing after a failed target step was attempted.
        if *reason != reasons::SUCCEEDED {
            assert_eq!(
                condition(&obj, types::CREDENTIALS_READY).unwrap().1,
                reasons::WAITING,
                "{name}"
            );
        }
    }
    assert!(
        aws.iam_users(&ns).await.is_empty(),
        "no IAM user may be made while the target is unresolved or the key is missing"
    );
}

#[tokio::test]
async fn a_wave_of_instance_ids_is_looked_up_in_fewer_calls_than_objects_each_getting_its_own() {
    const WAVE: usize = 16;
    let cp = ControlPlane::shared();
    // Its own moto, behind the recording proxy (no other test of this binary uses it): the
    // calls counted are this test's.
    let aws = AwsEnv::faulty();
    let client = cp.client().await;
    let ns = namespace(&client, "lookups").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let mut ids = Vec::new();
    for n in 0..WAVE {
        ids.push(aws.run_instance(&format!("{ns}-w{n}"), None).await.0);
    }
    // All at once, and one ID that names no instance: only its own object is not found.
    let mut manifest = String::new();
    for (n, id) in ids.iter().enumerate() {
        manifest += "---\n";
        manifest += &ec2(
            &ns,
            &format!("w{n}"),
            &stack,
            id,
            "no-secret-needed-here",
            "",
        );
    }
    manifest += "---\n";
    manifest += &ec2(
        &ns,
        "nowhere",
        &stack,
        "i-0000000000000beef",
        "no-secret-needed-here",
        "",
    );
    // EC2 takes half a second a call, as a busy API may: look-ups that come meanwhile wait for
    // a call to end, and share the next.
    aws.set_faults(Faults {
        latency_ms: 500,
        only_actions: vec!["ec2:DescribeInstances".into()],
        ..Faults::none()
    });
    aws.clear_calls();
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(cp, &manifest);
    for (n, id) in ids.iter().enumerate() {
        let name = format!("w{n}");
        let obj = wait_reason(&api, &name, types::TARGET_RESOLVED, reasons::SUCCEEDED).await;
        assert_eq!(
            obj.status.unwrap().ec2_instance_id.as_deref(),
            Some(id.as_str()),
            "{name} got another object's instance"
        );
    }
    wait_reason(
        &api,
        "nowhere",
        types::TARGET_RESOLVED,
        reasons::TARGET_NOT_FOUND,
    )
    .await;
    let summary = aws.call_summary();
    let calls = summary
        .by_operation
        .get(&("ec2".to_owned(), "DescribeInstances".to_owned()))
        .map_or(0, |c| c.calls);
    aws.set_faults(Faults::none());
    println!("{} objects, {calls} ec2:DescribeInstances", WAVE + 1);
    assert!(
        (1..=WAVE / 2).contains(&(calls as usize)),
        "{calls} ec2:DescribeInstances for {} objects applied at once",
        WAVE + 1
    );
}

#[tokio::test]
async fn stack_not_found_and_hostname_taken_are_reported() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "hostnames").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    // An EC2 instance holds the name: it is never an on-premises host, so the name is taken
    // before any host is asked anything.
    let (instance, _, _) = aws.run_instance(&format!("{ns}-taken"), None).await;
    register_directly(aws, &stack, "taken", "127.0.0.1", Some(&instance)).await;
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(
        cp,
        &on_premises(
            &ns,
            "no-stack",
            "0b0b0b0b-1111-2222-3333-444444444444",
            "127.0.0.1",
            "fresh",
            "k",
            "",
        ),
    );
    apply(
        cp,
        &on_premises(&ns, "same-name", &stack, "127.0.0.2", "taken", "k", ""),
    );
    apply(
        cp,
        &on_premises(&ns, "other-case", &stack, "127.0.0.3", "TAKEN", "k", ""),
    );
    apply(
        cp,
        &on_premises(&ns, "free-name", &stack, "127.0.0.4", "free", "k", ""),
    );
    let obj = wait_reason(
        &api,
        "no-stack",
        types::STACK_RESOLVED,
        reasons::STACK_NOT_FOUND,
    )
    .await;
    assert_eq!(
        condition(&obj, types::READY).unwrap().1,
        reasons::STACK_NOT_FOUND
    );
    let obj = wait_reason(
        &api,
        "same-name",
        types::TARGET_RESOLVED,
        reasons::HOSTNAME_TAKEN,
    )
    .await;
    assert_eq!(
        obj.status.unwrap().phase,
        Some(instance_registrar::resource::Phase::Failed)
    );
    wait_reason(
        &api,
        "other-case",
        types::TARGET_RESOLVED,
        reasons::HOSTNAME_TAKEN,
    )
    .await;
    wait_reason(
        &api,
        "free-name",
        types::TARGET_RESOLVED,
        reasons::SUCCEEDED,
    )
    .await;
}

#[tokio::test]
async fn a_registered_host_is_adopted_without_iam_or_ssh_work_and_left_registered_on_delete() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "adopt").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (instance, _, _) = aws.run_instance(&format!("{ns}-old"), None).await;
    let opsworks_id =
        register_directly(aws, &stack, "old-host", "127.0.0.1", Some(&instance)).await;
    eventually(Duration::from_secs(30), "registered", || async {
        aws.opsworks
            .instances()
            .iter()
            .any(|i| i.instance_id == opsworks_id && i.status == "registered")
            .then_some(())
    })
    .await;
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    // No Secret exists: an adopted host needs no SSH key.
    apply(cp, &ec2(&ns, "old", &stack, &instance, "absent", ""));
    let out = cp.kubectl(&[
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready",
        "--timeout=60s",
        "ir/old",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let obj = api.get("old").await.unwrap();
    let status = obj.status.clone().unwrap();
    assert_eq!(
        status.opsworks_instance_id.as_deref(),
        Some(opsworks_id.as_str())
    );
    assert_eq!(
        condition(&obj, types::TARGET_RESOLVED).unwrap().1,
        reasons::ADOPTED
    );
    assert_eq!(
        condition(&obj, types::SSH_KEY_READY).unwrap().1,
        reasons::NOT_NEEDED
    );
    assert_eq!(
        condition(&obj, types::CREDENTIALS_READY).unwrap().1,
        reasons::NOT_NEEDED
    );
    assert_eq!(
        status.phase,
        Some(instance_registrar::resource::Phase::Registered)
    );
    assert!(status.registered_at.is_some());
    assert!(
        aws.iam_users(&ns).await.is_empty(),
        "adoption made an IAM user"
    );
    // Another pass finds nothing new: the status stays exactly as it is (a reason that changed
    // on the second pass would rewrite every adopted object's status once).
    cp.kubectl_ok(&["annotate", "-n", &ns, "ir/old", "touched=1"])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.get("old").await.unwrap().status, Some(status.clone()));

    api.delete("old", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "old").await;
    // Adopted, not made: deleting the object leaves it registered (DeregisterAdopted would not).
    assert!(
        aws.opsworks
            .instances()
            .iter()
            .any(|i| i.instance_id == opsworks_id),
        "the adopted instance was deregistered"
    );
}

#[tokio::test]
async fn credentials_are_named_as_the_cli_names_them_owned_by_the_object_and_removed_with_it() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "creds").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let host = host_whose_install_fails(&format!("{ns}-db"), &public);

    // A user that already holds the name, made by someone else, in the stack's group.
    let iam = aws.iam();
    let base = format!("OpsWorks-{ns}-db-1");
    let group = format!("OpsWorks-{stack}");
    iam.create_user()
        .user_name(&base)
        .path("/AWS/OpsWorks/")
        .send()
        .await
        .unwrap();
    iam.create_group()
        .group_name(&group)
        .path("/AWS/OpsWorks/")
        .send()
        .await
        .unwrap();
    iam.add_user_to_group()
        .group_name(&group)
        .user_name(&base)
        .send()
        .await
        .unwrap();

    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(cp, &on_premises_at(&ns, "db", &stack, &host, "db-1", "key"));
    let obj = wait_reason(&api, "db", types::CREDENTIALS_READY, reasons::SUCCEEDED).await;
    let uid = obj.metadata.uid.clone().unwrap();
    let status = obj.status.clone().unwrap();
    let ours = format!("{base}+1");
    assert_eq!(status.iam_user_name.as_deref(), Some(ours.as_str()));
    let users = aws.iam_users(&base).await;
    assert_eq!(
        users,
        vec![(base.clone(), None), (ours.clone(), Some(uid.clone()))]
    );
    let in_group = iam.get_group().group_name(&group).send().await.unwrap();
    let mut members: Vec<_> = in_group
        .users()
        .iter()
        .map(|u| u.user_name().to_owned())
        .collect();
    members.sort();
    assert_eq!(members, vec![base.clone(), ours.clone()]);
    let attached = iam
        .list_attached_user_policies()
        .user_name(&ours)
        .send()
        .await
        .unwrap();
    assert!(
        attached
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn()
                == Some("arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration"))
    );
    let keys = aws.access_keys(&ours).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(status.access_key_id.as_deref(), Some(keys[0].as_str()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let stored = secrets.get("db-opsworks-access-key").await.unwrap();
    let data = stored.data.unwrap();
    assert_eq!(data["access_key_id"].0, keys[0].as_bytes());
    assert!(!data["secret_access_key"].0.is_empty());
    assert_eq!(stored.metadata.owner_references.unwrap()[0].uid, uid);

    // A second pass changes nothing in IAM.
    let before = (aws.iam_users(&base).await, aws.access_keys(&ours).await);
    cp.kubectl_ok(&["annotate", "-n", &ns, "ir/db", "touched=1"])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (aws.iam_users(&base).await, aws.access_keys(&ours).await),
        before
    );

    api.delete("db", &DeleteParams::default()).await.unwrap();
    wait_gone(&api, "db").await;
    assert_eq!(
        aws.iam_users(&base).await,
        vec![(base.clone(), None)],
        "our user must go, the foreign one stay"
    );
    let in_group = iam
        .get_group()
        .group_name(&group)
        .send()
        .await
        .expect("the group with a foreign member stays");
    assert_eq!(in_group.users().len(), 1);
    assert!(
        secrets
            .get_opt("db-opsworks-access-key")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn where_the_managed_policy_is_missing_an_inline_policy_allows_only_registration_for_15_minutes()
 {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::without_managed_policy();
    let client = cp.client().await;
    let ns = namespace(&client, "inline").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    let host = host_whose_install_fails(&format!("{ns}-app"), &public);
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(
        cp,
        &on_premises_at(&ns, "app", &stack, &host, "app-1", "key"),
    );
    let obj = wait_reason(&api, "app", types::CREDENTIALS_READY, reasons::SUCCEEDED).await;
    let user = obj.status.unwrap().iam_user_name.unwrap();
    let iam = aws.iam();
    assert!(
        iam.list_attached_user_policies()
            .user_name(&user)
            .send()
            .await
            .unwrap()
            .attached_policies()
            .is_empty()
    );
    let policy = iam
        .get_user_policy()
        .user_name(&user)
        .policy_name("OpsWorks-Instance")
        .send()
        .await
        .unwrap();
    let document = policy.policy_document();
    let expiry = instance_registrar::testing::inline_policy_expiry(document)
        .expect("a DateLessThan condition");
    let left = expiry.duration_since(k8s_openapi::jiff::Timestamp::now());
    assert!(
        left.as_secs() > 13 * 60 && left.as_secs() <= 15 * 60,
        "expires in {left:?}"
    );
    let stack_arn = aws
        .opsworks_client()
        .describe_stacks()
        .stack_ids(&stack)
        .send()
        .await
        .unwrap()
        .stacks()[0]
        .arn()
        .unwrap()
        .to_owned();
    let json =
        instance_registrar::testing::policy_document_json(document).expect("a readable policy");
    assert_eq!(json["Statement"][0]["Action"], "opsworks:RegisterInstance");
    assert_eq!(json["Statement"][0]["Resource"], stack_arn.as_str());
}

#[tokio::test]
async fn a_crash_after_any_aws_write_leaves_one_user_at_most_one_key_and_the_secret_matching_it() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::shared();
    let client = cp.client().await;
    let ns = namespace(&client, "crash").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (_, public) = ssh_key_secret(&client, &ns, "key").await;
    // One host for every case (each in a stack of its own): it answers, so credentials are made,
    // and its installer fails, so they stay.
    let host = host_whose_install_fails(&format!("{ns}-host"), &public);
    // Each case: the crash points of successive controller runs, then a clean run.
    let cases: &[&[&str]] = &[
        &["iam:CreateGroup"],
        &["iam:CreateUser"],
        &["iam:AddUserToGroup"],
        &["iam:AttachUserPolicy"],
        &["iam:CreateAccessKey", "iam:DeleteAccessKey"],
        &["kube:WriteCredentialsSecret"],
        &["kube:PatchStatus"],
    ];
    let mut lines = Vec::new();
    for (n, crash_points) in cases.iter().enumerate() {
        // A stack per case, so that the group is made (and the crash point reached) every time.
        let stack = aws.create_stack(&format!("{ns}-{n}"), None).await;
        let name = format!("h{n}");
        apply(cp, &on_premises_at(&ns, &name, &stack, &host, &name, "key"));
        for point in *crash_points {
            let mut controller = ControllerProcess::start_with_env(
                cp,
                aws,
                &ns,
                &[],
                &[("REGISTRAR_CRASH_AFTER", point)],
            );
            let code = controller.wait_exit(Duration::from_secs(60));
            assert_eq!(
                code,
                Some(137),
                "no crash after {point}:\n{}",
                controller.logs()
            );
        }
        let mut controller = ControllerProcess::start(cp, aws, &ns, &[]);
        let obj = wait_reason(&api, &name, types::CREDENTIALS_READY, reasons::SUCCEEDED).await;
        controller.terminate();
        let uid = obj.metadata.uid.clone().unwrap();
        let users = aws.iam_users(&format!("OpsWorks-{ns}-{n}-")).await;
        let ours: Vec<_> = users
            .iter()
            .filter(|(_, owner)| owner.as_deref() == Some(uid.as_str()))
            .collect();
        assert_eq!(ours.len(), 1, "after {crash_points:?}: {users:?}");
        assert_eq!(
            users.len(),
            1,
            "after {crash_points:?}: a user not tagged as ours: {users:?}"
        );
        let keys = aws.access_keys(&ours[0].0).await;
        assert_eq!(keys.len(), 1, "after {crash_points:?}: keys {keys:?}");
        let stored = secrets
            .get(&format!("{name}-opsworks-access-key"))
            .await
            .unwrap();
        assert_eq!(
            stored.data.unwrap()["access_key_id"].0,
            keys[0].as_bytes(),
            "after {crash_points:?}"
        );
        assert_eq!(
            obj.status.unwrap().access_key_id.as_deref(),
            Some(keys[0].as_str())
        );
        lines.push(format!(
            "crash after {:<45} -> 1 user, 1 key, Secret matches",
            crash_points.join(" then ")
        ));
    }
    println!("{}", lines.join("\n"));
}

#[tokio::test]
async fn a_deletion_that_cannot_deregister_keeps_the_finalizer_says_why_and_finishes_later() {
    let cp = ControlPlane::shared();
    let aws = AwsEnv::isolated();
    let client = cp.client().await;
    let ns = namespace(&client, "undo").await;
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let stack = aws.create_stack(&ns, None).await;
    let (instance, _, _) = aws.run_instance(&format!("{ns}-host"), None).await;
    let opsworks_id =
        register_directly(aws, &stack, "undo-host", "127.0.0.1", Some(&instance)).await;
    let _controller = ControllerProcess::start(cp, aws, &ns, &[]);
    apply(
        cp,
        &ec2(
            &ns,
            "host",
            &stack,
            &instance,
            "absent",
            "  deletionPolicy: DeregisterAdopted\n",
        ),
    );
    wait_reason(&api, "host", types::READY, reasons::SUCCEEDED).await;

    aws.opsworks
        .set_faults(opsworks_endpoint::Faults {
            unavailable_rate: 1.0,
            only_actions: vec!["DeregisterInstance".into()],
            ..Default::default()
        })
        .unwrap();
    api.delete("host", &DeleteParams::default()).await.unwrap();
    let obj = eventually(Duration::from_secs(60), "Deleting phase", || async {
        let obj = api.get_opt("host").await.ok()??;
        (obj.status.as_ref()?.phase == Some(instance_registrar::resource::Phase::Deleting))
            .then_some(obj)
    })
    .await;
    let ready = obj
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == types::READY)
        .unwrap();
    assert_eq!(ready.reason, reasons::DELETING);
    assert!(
        ready.message.contains("DeregisterInstance"),
        "{}",
        ready.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        api.get_opt("host").await.unwrap().is_some(),
        "the finalizer was dropped with the instance still registered"
    );
    assert!(
        aws.opsworks
            .instances()
            .iter()
            .any(|i| i.instance_id == opsworks_id)
    );

    aws.opsworks
        .set_faults(opsworks_endpoint::Faults::none())
        .unwrap();
    eventually(
        Duration::from_secs(90),
        "deleted once the endpoint recovers",
        || async { api.get_opt("host").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(
        !aws.opsworks
            .instances()
            .iter()
            .any(|i| i.instance_id == opsworks_id)
    );
}
