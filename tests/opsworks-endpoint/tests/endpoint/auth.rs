//! Authentication (SigV4 header, signature) and the authorization of RegisterInstance against
//! moto's IAM and EC2.

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::error::ProvideErrorMetadata;
use aws_sdk_opsworks::types::InstanceIdentity;
use opsworks_endpoint::moto::MotoServer;
use opsworks_endpoint::{Authorization, SignatureCheck};

use crate::common::*;

const MANAGED: &str = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";

/// Registers an on-premises host signing with `key`/`secret`; the error code on failure.
async fn register(
    url: &str,
    key: &str,
    secret: &str,
    stack: &str,
    hostname: &str,
) -> Result<String, (String, String)> {
    let client = opsworks_with(url, key, secret, RetryConfig::disabled());
    client
        .register_instance()
        .stack_id(stack)
        .hostname(hostname)
        .private_ip("10.0.0.5")
        .send()
        .await
        .map(|o| o.instance_id.unwrap_or_default())
        .map_err(|e| {
            let e = e.into_service_error();
            (
                e.code().unwrap_or("").to_owned(),
                e.message().unwrap_or("").to_owned(),
            )
        })
}

fn last_authorization(ep: &opsworks_endpoint::EndpointHandle) -> Option<Authorization> {
    ep.calls()
        .into_iter()
        .rev()
        .find(|c| c.action == "RegisterInstance")
        .and_then(|c| c.authorization)
}

#[tokio::test]
async fn managed_policy_user_may_register() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    // The shared moto has the policy (see MotoOptions::opsworks_managed_policy).
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn(MANAGED)
        .send()
        .await
        .expect("attach AWSOpsWorksInstanceRegistration");
    register(ep.url(), &key, &secret, &stack, "managed")
        .await
        .expect("registered");
    assert_eq!(
        last_authorization(&ep),
        Some(Authorization::ManagedPolicy {
            user,
            policy_arn: MANAGED.into(),
            group: None
        })
    );
}

#[tokio::test]
async fn plain_moto_lacks_the_managed_policy() {
    // What the product meets on moto: attaching the policy fails with NoSuchEntity.
    let moto = MotoServer::start().expect("moto");
    let conf = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            ADMIN_KEY,
            ADMIN_SECRET,
            None,
            None,
            "test",
        ))
        .endpoint_url(moto.url())
        .build();
    let iam = aws_sdk_iam::Client::from_conf(conf);
    iam.create_user().user_name("u").send().await.unwrap();
    let err = iam
        .attach_user_policy()
        .user_name("u")
        .policy_arn(MANAGED)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("NoSuchEntity"));
}

#[tokio::test]
async fn inline_policy_user_may_register_until_the_condition_passes() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, arn) = create_stack(&admin, None).await;
    let (other_stack, other_arn) = create_stack(&admin, None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    let put = |doc: String| {
        let iam = iam.clone();
        let user = user.clone();
        async move {
            iam.put_user_policy()
                .user_name(user)
                .policy_name("OpsWorks-Instance")
                .policy_document(doc)
                .send()
                .await
                .unwrap();
        }
    };
    put(inline_policy(&arn, &iso_in(900))).await;
    register(ep.url(), &key, &secret, &stack, "inline")
        .await
        .expect("registered");
    assert_eq!(
        last_authorization(&ep),
        Some(Authorization::InlinePolicy {
            user: user.clone(),
            policy_name: "OpsWorks-Instance".into(),
            group: None
        })
    );
    // Only that stack.
    let (code, message) = register(ep.url(), &key, &secret, &other_stack, "inline")
        .await
        .unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains(&other_arn), "{message}");
    // Once the time has passed, no more.
    put(inline_policy(&arn, &iso_in(-60))).await;
    let (code, message) = register(ep.url(), &key, &secret, &stack, "inline-2")
        .await
        .unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("condition does not hold"), "{message}");
    // A status of 400, recorded with the key.
    let call = ep.calls().into_iter().last().unwrap();
    assert_eq!(
        (call.status, call.access_key_id.as_deref()),
        (400, Some(key.as_str()))
    );
    assert_eq!(call.authorization, None);
}

#[tokio::test]
async fn group_policy_counts() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, arn) = create_stack(&admin, None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    let group = unique("OpsWorks-group");
    iam.create_group()
        .group_name(&group)
        .path("/AWS/OpsWorks/")
        .send()
        .await
        .unwrap();
    iam.add_user_to_group()
        .group_name(&group)
        .user_name(&user)
        .send()
        .await
        .unwrap();
    iam.put_group_policy()
        .group_name(&group)
        .policy_name("register")
        .policy_document(inline_policy(&arn, &iso_in(900)))
        .send()
        .await
        .unwrap();
    register(ep.url(), &key, &secret, &stack, "grouped")
        .await
        .expect("registered");
    assert_eq!(
        last_authorization(&ep),
        Some(Authorization::InlinePolicy {
            user,
            policy_name: "register".into(),
            group: Some(group)
        })
    );
}

#[tokio::test]
async fn unknown_key_and_user_without_policy_are_denied() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, None).await;
    // (c) A key IAM does not know.
    let (code, message) = register(
        ep.url(),
        "AKIAUNKNOWNUNKNOWN01",
        "whatever",
        &stack,
        "unknown",
    )
    .await
    .unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains("does not belong to an IAM user"),
        "{message}"
    );
    // The admin's static key is no IAM user's either.
    let (code, _) = register(ep.url(), ADMIN_KEY, ADMIN_SECRET, &stack, "admin")
        .await
        .unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    // (d) A user with no policy.
    let (_, key, secret) = user_with_key(&iam()).await;
    let (code, message) = register(ep.url(), &key, &secret, &stack, "nopolicy")
        .await
        .unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains("no identity-based policy allows"),
        "{message}"
    );
    let denied: Vec<_> = ep
        .calls()
        .into_iter()
        .filter(|c| c.error_code.as_deref() == Some("AccessDeniedException"))
        .collect();
    assert_eq!(denied.len(), 3);
    assert!(denied.iter().all(|c| c.status == 400));
    assert!(
        admin
            .describe_instances()
            .stack_id(&stack)
            .send()
            .await
            .unwrap()
            .instances()
            .is_empty()
    );
}

/// Runs an EC2 instance in moto, with `profile` as its instance profile; returns its ID.
async fn ec2_instance(profile: Option<&str>) -> String {
    let ec2 = ec2("us-east-1");
    let mut run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1);
    if let Some(p) = profile {
        run = run.iam_instance_profile(
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .name(p)
                .build(),
        );
    }
    run.send().await.expect("RunInstances").instances()[0]
        .instance_id()
        .expect("InstanceId")
        .to_owned()
}

fn identity(ec2_id: &str) -> InstanceIdentity {
    let doc = serde_json::json!({
        "instanceId": ec2_id, "region": "us-east-1", "accountId": "123456789012",
        "availabilityZone": "us-east-1a", "instanceType": "t2.micro",
    });
    InstanceIdentity::builder()
        .document(doc.to_string())
        .signature("c2lnbmF0dXJl")
        .build()
}

#[tokio::test]
async fn instance_profile_path() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, None).await;
    let profile = unique("profile");
    let iam = iam();
    iam.create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    let with_profile = ec2_instance(Some(&profile)).await;
    let without_profile = ec2_instance(None).await;
    // Instance credentials are not IAM users' keys: an unknown key signs.
    let agent = opsworks_with(
        ep.url(),
        "ASIAINSTANCEROLE0001",
        "role-secret",
        RetryConfig::disabled(),
    );
    let register = |ec2_id: String, host: &'static str| {
        let agent = agent.clone();
        let stack = stack.clone();
        async move {
            agent
                .register_instance()
                .stack_id(stack)
                .hostname(host)
                .private_ip("172.31.0.10")
                .instance_identity(identity(&ec2_id))
                .send()
                .await
        }
    };
    let id = register(with_profile.clone(), "ec2-a")
        .await
        .expect("registered")
        .instance_id
        .unwrap();
    match last_authorization(&ep) {
        Some(Authorization::InstanceProfile {
            ec2_instance_id,
            instance_profile_arn,
        }) => {
            assert_eq!(ec2_instance_id, with_profile);
            assert!(instance_profile_arn.ends_with(&format!("instance-profile/{profile}")));
        }
        other => panic!("{other:?}"),
    }
    let i = admin
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .clone();
    assert_eq!(i.ec2_instance_id(), Some(with_profile.as_str()));
    assert_eq!(i.infrastructure_class(), Some("ec2"));
    assert!(i.availability_zone().is_some());
    // The same EC2 instance again: ValidationException.
    let err = register(with_profile.clone(), "ec2-b").await.unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("ValidationException"));
    // No profile: denied.
    let err = register(without_profile.clone(), "ec2-c")
        .await
        .unwrap_err();
    let e = err.into_service_error();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert!(
        e.message()
            .unwrap_or("")
            .contains("no IAM instance profile")
    );
    // No such instance: denied.
    let err = register("i-0123456789abcdef0".into(), "ec2-d")
        .await
        .unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("AccessDeniedException")
    );
}

#[tokio::test]
async fn ec2_instance_must_be_in_the_stack_vpc() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let (stack, _) = create_stack(&admin, Some("vpc-00000000")).await;
    let profile = unique("profile");
    iam()
        .create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    let ec2_id = ec2_instance(Some(&profile)).await;
    let agent = opsworks_with(
        ep.url(),
        "ASIAINSTANCEROLE0002",
        "x",
        RetryConfig::disabled(),
    );
    let err = agent
        .register_instance()
        .stack_id(&stack)
        .hostname("vpc")
        .instance_identity(identity(&ec2_id))
        .send()
        .await
        .unwrap_err();
    let e = err.into_service_error();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(e.message().unwrap_or("").contains("VPC"), "{e:?}");
}

#[tokio::test]
async fn signatures_are_verified_when_the_secret_is_known() {
    let ep = endpoint();
    // Static known credentials with a wrong secret.
    let bad = opsworks_with(
        ep.url(),
        ADMIN_KEY,
        "not-the-secret",
        RetryConfig::disabled(),
    );
    let err = bad.describe_stacks().send().await.unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidSignatureException")
    );
    // An IAM user's key (secret from moto) with a wrong secret, and with the right one.
    let (_, key, secret) = user_with_key(&iam()).await;
    let bad = opsworks_with(ep.url(), &key, "wrong", RetryConfig::disabled());
    let err = bad.describe_stacks().send().await.unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidSignatureException")
    );
    let good = opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled());
    good.describe_stacks().send().await.unwrap();
    // Unknown keys pass unverified (except for RegisterInstance's authorization).
    let unknown = opsworks_with(
        ep.url(),
        "AKIANOBODYKNOWSTHIS",
        "x",
        RetryConfig::disabled(),
    );
    unknown.describe_stacks().send().await.unwrap();
    let checks: Vec<SignatureCheck> = ep.calls().iter().map(|c| c.signature).collect();
    assert_eq!(
        checks,
        [
            SignatureCheck::Mismatch,
            SignatureCheck::Mismatch,
            SignatureCheck::Verified,
            SignatureCheck::Unverified
        ]
    );
    // Deleted keys are unknown; inactive ones refused.
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.update_access_key()
        .user_name(&user)
        .access_key_id(&key)
        .status(aws_sdk_iam::types::StatusType::Inactive)
        .send()
        .await
        .unwrap();
    let inactive = opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled());
    let err = inactive.describe_stacks().send().await.unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("UnrecognizedClientException")
    );
}

#[tokio::test]
async fn unknown_keys_can_be_refused() {
    let ep = endpoint_with(|c| c.reject_unknown_access_keys = true);
    let unknown = opsworks_with(
        ep.url(),
        "AKIANOBODYKNOWSTHIS",
        "x",
        RetryConfig::disabled(),
    );
    let err = unknown.describe_stacks().send().await.unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("UnrecognizedClientException")
    );
    opsworks(ep.url()).describe_stacks().send().await.unwrap();
}

#[test]
fn missing_and_malformed_authorization() {
    let ep = endpoint();
    let target = ("X-Amz-Target", "OpsWorks_20130218.DescribeStacks");
    let ct = ("Content-Type", "application/x-amz-json-1.1");
    let code = |body: &[u8]| -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["__type"].as_str().unwrap_or("").to_owned()
    };
    let (status, body) = http(ep.url(), "POST", "/", &[ct, target], b"{}");
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "MissingAuthenticationTokenException")
    );
    for auth in [
        "Bearer token",
        "AWS4-HMAC-SHA256 Credential=AKIAX/20240101/us-east-1/opsworks/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIAX, SignedHeaders=host, Signature=00",
    ] {
        let (status, body) = http(
            ep.url(),
            "POST",
            "/",
            &[
                ct,
                target,
                ("Authorization", auth),
                ("X-Amz-Date", "20240101T000000Z"),
            ],
            b"{}",
        );
        assert_eq!(
            (status, code(&body).as_str()),
            (400, "IncompleteSignatureException"),
            "{auth}"
        );
    }
    // Well-formed, but without X-Amz-Date.
    let (auth, _) = unknown_key_auth("AKIAX");
    let (status, body) = http(
        ep.url(),
        "POST",
        "/",
        &[ct, target, ("Authorization", &auth)],
        b"{}",
    );
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "IncompleteSignatureException")
    );
    // Scoped to another service.
    let (auth, date) = unknown_key_auth("AKIAX");
    let auth = auth.replace("/opsworks/", "/ec2/");
    let (status, body) = http(
        ep.url(),
        "POST",
        "/",
        &[ct, target, ("Authorization", &auth), ("X-Amz-Date", &date)],
        b"{}",
    );
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "InvalidSignatureException")
    );
    // Signed long ago.
    let (auth, _) = unknown_key_auth("AKIAX");
    let old = "20200101T000000Z";
    let auth = auth.replace(
        &format!("/{}/", &iso_in(0).replace('-', "")[..8]),
        "/20200101/",
    );
    let (status, body) = http(
        ep.url(),
        "POST",
        "/",
        &[ct, target, ("Authorization", &auth), ("X-Amz-Date", old)],
        b"{}",
    );
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "InvalidSignatureException")
    );
    assert!(String::from_utf8_lossy(&body).contains("Signature expired"));
    for c in ep.calls() {
        assert_eq!(c.status, 400);
    }
}
