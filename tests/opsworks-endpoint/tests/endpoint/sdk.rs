//! The aws-sdk-opsworks client drives every action, and gets the model's typed errors.

use std::time::{Duration, Instant};

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::error::ProvideErrorMetadata;
use aws_sdk_opsworks::operation::assign_instance::AssignInstanceError;
use aws_sdk_opsworks::operation::create_layer::CreateLayerError;
use aws_sdk_opsworks::operation::deregister_instance::DeregisterInstanceError;
use aws_sdk_opsworks::operation::describe_instances::DescribeInstancesError;
use aws_sdk_opsworks::operation::describe_layers::DescribeLayersError;
use aws_sdk_opsworks::operation::describe_stack_provisioning_parameters::DescribeStackProvisioningParametersError;
use aws_sdk_opsworks::operation::describe_stacks::DescribeStacksError;
use aws_sdk_opsworks::operation::register_instance::RegisterInstanceError;
use aws_sdk_opsworks::operation::unassign_instance::UnassignInstanceError;
use aws_sdk_opsworks::types::LayerType;
use opsworks_endpoint::SignatureCheck;

use crate::common::*;

async fn statuses(client: &aws_sdk_opsworks::Client, stack: &str) -> Vec<String> {
    client
        .describe_instances()
        .stack_id(stack)
        .send()
        .await
        .expect("DescribeInstances")
        .instances()
        .iter()
        .map(|i| i.status().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn every_action_through_the_sdk() {
    // Registrations are held `registering` until the test releases them.
    let ep = endpoint_with(|c| c.registration_delay = Duration::from_secs(3600));
    let admin = opsworks(ep.url());

    // Stacks.
    let (stack, arn) = create_stack(&admin, None).await;
    assert_eq!(stack, stack.to_lowercase());
    assert!(uuid::Uuid::parse_str(&stack).is_ok(), "{stack}");
    assert_eq!(
        arn,
        format!("arn:aws:opsworks:us-east-1:123456789012:stack/{stack}/")
    );
    let all = admin.describe_stacks().send().await.unwrap();
    assert!(
        all.stacks()
            .iter()
            .any(|s| s.stack_id() == Some(stack.as_str()))
    );
    let one = admin
        .describe_stacks()
        .stack_ids(&stack)
        .send()
        .await
        .unwrap();
    assert_eq!(one.stacks()[0].region(), Some("us-east-1"));
    assert_eq!(one.stacks()[0].vpc_id(), None);
    let (vpc_stack, _) = create_stack(&admin, Some("vpc-0123abcd")).await;
    let vs = admin
        .describe_stacks()
        .stack_ids(&vpc_stack)
        .send()
        .await
        .unwrap();
    assert_eq!(vs.stacks()[0].vpc_id(), Some("vpc-0123abcd"));

    // Provisioning parameters and the installer they point at.
    let params = admin
        .describe_stack_provisioning_parameters()
        .stack_id(&stack)
        .send()
        .await
        .unwrap();
    let installer_url = params.agent_installer_url().expect("AgentInstallerUrl");
    assert_eq!(
        installer_url,
        format!("{}/agent/opsworks-agent-installer.tgz", ep.url())
    );
    let p = params.parameters().expect("Parameters");
    assert!(p.contains_key("assets_download_bucket"), "{p:?}");
    assert_eq!(
        p.get("agent_installer_tgz").map(String::as_str),
        Some("opsworks-agent-installer.tgz")
    );
    let (status, bytes) = http(
        ep.url(),
        "GET",
        "/agent/opsworks-agent-installer.tgz",
        &[],
        b"",
    );
    assert_eq!(
        (status, bytes.as_slice()),
        (200, b"installer bytes".as_slice())
    );

    // Layers.
    let layer = admin
        .create_layer()
        .stack_id(&stack)
        .r#type(LayerType::Custom)
        .name("Web")
        .shortname("web")
        .send()
        .await
        .unwrap()
        .layer_id
        .expect("LayerId");
    let layers = admin
        .describe_layers()
        .stack_id(&stack)
        .send()
        .await
        .unwrap();
    assert_eq!(layers.layers().len(), 1);
    assert_eq!(layers.layers()[0].r#type(), Some(&LayerType::Custom));
    let by_id = admin
        .describe_layers()
        .layer_ids(&layer)
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.layers()[0].shortname(), Some("web"));

    // Registration, by a user allowed by the CLI's inline policy, signing with its own key.
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.put_user_policy()
        .user_name(&user)
        .policy_name("OpsWorks-Instance")
        .policy_document(inline_policy(&arn, &iso_in(900)))
        .send()
        .await
        .unwrap();
    let agent = opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled());
    let instance = agent
        .register_instance()
        .stack_id(&stack)
        .hostname("web-1")
        .private_ip("10.1.2.3")
        .public_ip("192.0.2.10")
        .rsa_public_key("ssh-rsa AAAA")
        .rsa_public_key_fingerprint("aa:bb")
        .send()
        .await
        .unwrap()
        .instance_id
        .expect("InstanceId");
    let described = admin
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let i = &described.instances()[0];
    assert_eq!(i.status(), Some("registering"));
    assert_eq!(i.hostname(), Some("web-1"));
    assert_eq!(i.infrastructure_class(), Some("on-premises"));
    assert_eq!(i.private_ip(), Some("10.1.2.3"));
    assert_eq!(i.ec2_instance_id(), None);
    assert_eq!(
        i.registered_by(),
        Some(format!("arn:aws:iam::123456789012:user/AWS/OpsWorks/{user}").as_str())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(statuses(&admin, &stack).await, ["registering"]);
    ep.set_registration_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses(&admin, &stack).await != ["registered"] {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same hostname again is refused.
    let err = agent
        .register_instance()
        .stack_id(&stack)
        .hostname("web-1")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(RegisterInstanceError::ValidationException(_))
        ),
        "{err:?}"
    );

    // Layers of the instance.
    admin
        .assign_instance()
        .instance_id(&instance)
        .layer_ids(&layer)
        .send()
        .await
        .unwrap();
    let in_layer = admin
        .describe_instances()
        .layer_id(&layer)
        .send()
        .await
        .unwrap();
    assert_eq!(in_layer.instances().len(), 1);
    assert_eq!(
        in_layer.instances()[0].layer_ids(),
        std::slice::from_ref(&layer)
    );
    admin
        .unassign_instance()
        .instance_id(&instance)
        .send()
        .await
        .unwrap();
    let in_layer = admin
        .describe_instances()
        .layer_id(&layer)
        .send()
        .await
        .unwrap();
    assert!(in_layer.instances().is_empty());

    // Deregistration.
    admin
        .deregister_instance()
        .instance_id(&instance)
        .send()
        .await
        .unwrap();
    assert!(statuses(&admin, &stack).await.is_empty());
    let err = admin
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.as_service_error(),
        Some(DescribeInstancesError::ResourceNotFoundException(_))
    ));

    // Every call was signed with a key whose secret the endpoint knew, and verified.
    let calls = ep.calls();
    assert!(calls.len() > 15);
    for c in &calls {
        assert_eq!(c.signature, SignatureCheck::Verified, "{c:?}");
    }
    assert!(
        calls
            .iter()
            .any(|c| c.access_key_id.as_deref() == Some(key.as_str()))
    );
}

#[tokio::test]
async fn typed_errors() {
    let ep = endpoint();
    let admin = opsworks(ep.url());
    let missing = "00000000-0000-0000-0000-000000000000";

    let err = admin
        .describe_stacks()
        .stack_ids(missing)
        .send()
        .await
        .unwrap_err();
    match err.into_service_error() {
        DescribeStacksError::ResourceNotFoundException(e) => {
            assert!(e.message().unwrap_or("").contains(missing))
        }
        other => panic!("{other:?}"),
    }
    let err = admin
        .describe_stack_provisioning_parameters()
        .stack_id(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DescribeStackProvisioningParametersError::ResourceNotFoundException(_)
    ));
    let err = admin
        .create_layer()
        .stack_id(missing)
        .r#type(LayerType::Custom)
        .name("x")
        .shortname("x")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        CreateLayerError::ResourceNotFoundException(_)
    ));
    let err = admin.describe_layers().send().await.unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DescribeLayersError::ValidationException(_)
    ));
    // DescribeInstances takes exactly one of StackId, LayerId, InstanceIds.
    let err = admin.describe_instances().send().await.unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DescribeInstancesError::ValidationException(_)
    ));
    let (stack, _) = create_stack(&admin, None).await;
    let err = admin
        .describe_instances()
        .stack_id(&stack)
        .layer_id(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DescribeInstancesError::ValidationException(_)
    ));
    let err = admin
        .describe_instances()
        .layer_id(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DescribeInstancesError::ResourceNotFoundException(_)
    ));
    let err = admin
        .register_instance()
        .stack_id(missing)
        .hostname("h")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        RegisterInstanceError::ResourceNotFoundException(_)
    ));
    let err = admin
        .deregister_instance()
        .instance_id(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        DeregisterInstanceError::ResourceNotFoundException(_)
    ));
    let err = admin
        .assign_instance()
        .instance_id(missing)
        .layer_ids(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        AssignInstanceError::ResourceNotFoundException(_)
    ));
    let err = admin
        .unassign_instance()
        .instance_id(missing)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        UnassignInstanceError::ResourceNotFoundException(_)
    ));
    // A required member left out (the SDK does not check it): ValidationException.
    let err = admin
        .create_stack()
        .name("no-role")
        .region("us-east-1")
        .send()
        .await
        .unwrap_err();
    let e = err.into_service_error();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message()
            .unwrap_or("")
            .contains("Value null at 'serviceRoleArn'"),
        "{e:?}"
    );
}

#[tokio::test]
async fn assign_checks_layers() {
    let ep = endpoint_with(|c| c.registration_delay = Duration::ZERO);
    let admin = opsworks(ep.url());
    let (stack, arn) = create_stack(&admin, None).await;
    let (other_stack, _) = create_stack(&admin, None).await;
    let layer_of = |stack: String, t: LayerType, name: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .create_layer()
                .stack_id(stack)
                .r#type(t)
                .name(name)
                .shortname(name)
                .send()
                .await
                .unwrap()
                .layer_id
                .unwrap()
        }
    };
    let elsewhere = layer_of(other_stack, LayerType::Custom, "other").await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.put_user_policy()
        .user_name(&user)
        .policy_name("OpsWorks-Instance")
        .policy_document(inline_policy(&arn, &iso_in(900)))
        .send()
        .await
        .unwrap();
    let agent = opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled());
    let instance = agent
        .register_instance()
        .stack_id(&stack)
        .hostname("db-1")
        .send()
        .await
        .unwrap()
        .instance_id
        .unwrap();
    let err = admin
        .assign_instance()
        .instance_id(&instance)
        .layer_ids(&elsewhere)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        AssignInstanceError::ValidationException(_)
    ));
    let err = admin
        .assign_instance()
        .instance_id(&instance)
        .layer_ids("00000000-0000-0000-0000-000000000000")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        AssignInstanceError::ResourceNotFoundException(_)
    ));
    // Duplicate layer shortname in a stack.
    let _ = layer_of(stack.clone(), LayerType::Custom, "db").await;
    let err = admin
        .create_layer()
        .stack_id(&stack)
        .r#type(LayerType::Custom)
        .name("db")
        .shortname("db")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        CreateLayerError::ValidationException(_)
    ));
}

#[tokio::test]
async fn forced_status_and_registration_delay() {
    let ep = endpoint_with(|c| c.registration_delay = Duration::from_secs(3600));
    let admin = opsworks(ep.url());
    let (stack, arn) = create_stack(&admin, None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.put_user_policy()
        .user_name(&user)
        .policy_name("OpsWorks-Instance")
        .policy_document(inline_policy(&arn, &iso_in(900)))
        .send()
        .await
        .unwrap();
    let agent = opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled());
    let register = |host: &'static str| {
        let agent = agent.clone();
        let stack = stack.clone();
        async move {
            agent
                .register_instance()
                .stack_id(stack)
                .hostname(host)
                .send()
                .await
                .unwrap()
                .instance_id
                .unwrap()
        }
    };
    let slow = register("slow").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(statuses(&admin, &stack).await, ["registering"]);
    ep.set_instance_status(&slow, "setup_failed").unwrap();
    assert_eq!(statuses(&admin, &stack).await, ["setup_failed"]);
    assert!(ep.set_instance_status(&slow, "exploded").is_err());
    assert!(ep.set_instance_status("nope", "stopped").is_err());
    ep.set_registration_delay(Duration::ZERO);
    let fast = register("fast").await;
    assert_eq!(
        statuses(&admin, &stack).await,
        ["setup_failed", "registered"]
    );

    // The same controls over HTTP.
    let path = format!("/_endpoint/instances/{fast}/status");
    let (status, _) = http(ep.url(), "PUT", &path, &[], br#"{"status":"terminated"}"#);
    assert_eq!(status, 200);
    assert_eq!(
        statuses(&admin, &stack).await,
        ["setup_failed", "terminated"]
    );
    let (status, _) = http(ep.url(), "PUT", &path, &[], br#"{"status":"bogus"}"#);
    assert_eq!(status, 400);
    let (status, _) = http(
        ep.url(),
        "PUT",
        "/_endpoint/instances/nope/status",
        &[],
        br#"{"status":"stopped"}"#,
    );
    assert_eq!(status, 404);
    let delay = |seconds: &'static [u8]| {
        http(
            ep.url(),
            "PUT",
            "/_endpoint/registration-delay",
            &[],
            seconds,
        )
        .0
    };
    assert_eq!(delay(br#"{"seconds": 3600}"#), 200);
    assert_eq!(delay(br#"{"seconds": -1}"#), 400);
    register("third").await;
    assert_eq!(
        statuses(&admin, &stack).await,
        ["setup_failed", "terminated", "registering"]
    );
    // Releasing the delay releases the instance still registering.
    assert_eq!(delay(br#"{"seconds": 0}"#), 200);
    assert_eq!(
        statuses(&admin, &stack).await,
        ["setup_failed", "terminated", "registered"]
    );
    let (status, body) = http(ep.url(), "GET", "/_endpoint/instances", &[], b"");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(3));
    assert_eq!(v[0]["authorization"]["path"], "inline_policy");
    let (status, body) = http(ep.url(), "GET", "/_endpoint/state", &[], b"");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Stacks"][0]["StackId"], stack.as_str());
    assert_eq!(ep.instances().len(), 3);
}
