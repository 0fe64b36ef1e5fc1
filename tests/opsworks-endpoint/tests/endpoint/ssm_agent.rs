//! The SSM agent's own calls as the agent makes them: `RegisterManagedInstance` unsigned, with
//! an activation's ID and code, and `UpdateInstanceInformation` (its heartbeat), signed with
//! keys the endpoint does not know; the ping status they drive; EC2 instances' agents; and SSM
//! calls in the call records and under fault injection.

use std::time::{Duration, SystemTime};

use opsworks_endpoint::{CallSummary, Faults, SignatureCheck};
use serde_json::{Value, json};

use crate::common::*;

fn register(url: &str, activation: &str, code: &str, key: &str) -> (u16, Value) {
    let body = json!({
        "ActivationId": activation, "ActivationCode": code, "PublicKey": key,
        "PublicKeyType": "Rsa", "Fingerprint": "f1",
    });
    ssm_call(url, "RegisterManagedInstance", &body.to_string(), false)
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn registration_is_unsigned_and_checked() {
    let ep = endpoint();
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let (activation, code) = create_activation(&client, &role, 1).await;

    // Public calls need a signature; the agent's registration does not.
    let (status, v) = ssm_call(ep.url(), "DescribeActivations", "{}", false);
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("MissingAuthenticationTokenException"))
    );
    let (status, v) = ssm_call(
        ep.url(),
        "UpdateInstanceInformation",
        r#"{"InstanceId": "mi-0123456789abcdef0"}"#,
        false,
    );
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("MissingAuthenticationTokenException"))
    );

    // Refusals, none of which counts or quotes the code.
    let wrong_code = "WRONGWRONGWRONGWRONG";
    for (a, c, key, want) in [
        (
            activation.as_str(),
            wrong_code,
            public_key(),
            "InvalidActivation",
        ),
        (
            "00000000-0000-4000-8000-000000000000",
            code.as_str(),
            public_key(),
            "InvalidActivation",
        ),
        (
            activation.as_str(),
            code.as_str(),
            "c2hvcnQ=".to_owned(),
            "InvalidPublicKey",
        ),
    ] {
        let (status, v) = register(ep.url(), a, c, &key);
        assert_eq!((status, v["__type"].as_str()), (400, Some(want)), "{v}");
        assert!(!v.to_string().contains(&code), "{v}");
    }
    assert_eq!(ep.ssm_activations()[0].registrations_count, 0);
    assert!(ep.ssm_nodes().is_empty());

    let (status, v) = register(ep.url(), &activation, &code, &public_key());
    assert_eq!(status, 200, "{v}");
    let id = v["InstanceId"].as_str().unwrap().to_owned();
    assert!(
        opsworks_endpoint::model::ssm::is_managed_instance_id(&id),
        "{id}"
    );
    let call = ep
        .calls()
        .into_iter()
        .find(|c| c.action == "RegisterManagedInstance" && c.status == 200)
        .unwrap();
    assert_eq!(call.service, "ssm");
    assert_eq!(call.access_key_id, None);
    assert_eq!(call.signature, SignatureCheck::Missing);
    let node = ep.ssm_node(&id).expect("the node");
    assert_eq!(node.activation_id.as_deref(), Some(activation.as_str()));
    assert_eq!(node.iam_role.as_deref(), Some(role.as_str()));
    assert_eq!(node.resource_type, "ManagedInstance");
    assert_eq!(ep.ssm_activations()[0].registrations_count, 1);

    // The limit is reached.
    let (status, v) = register(ep.url(), &activation, &code, &public_key());
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("RegistrationLimitExceeded")),
        "{v}"
    );
    assert_eq!(ep.ssm_nodes().len(), 1);

    // An activation expires.
    let (status, v) = ssm_call(
        ep.url(),
        "CreateActivation",
        &json!({"IamRole": role, "RegistrationLimit": 5, "ExpirationDate": epoch_now() + 1.0})
            .to_string(),
        true,
    );
    assert_eq!(status, 200, "{v}");
    let (short, short_code) = (
        v["ActivationId"].as_str().unwrap().to_owned(),
        v["ActivationCode"].as_str().unwrap().to_owned(),
    );
    let (status, _) = register(ep.url(), &short, &short_code, &public_key());
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1300));
    let (status, v) = register(ep.url(), &short, &short_code, &public_key());
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("ActivationExpired")),
        "{v}"
    );
    let (_, v) = ssm_call(
        ep.url(),
        "DescribeActivations",
        &json!({"Filters": [{"FilterKey": "ActivationIds", "FilterValues": [short]}]}).to_string(),
        true,
    );
    assert_eq!(v["ActivationList"][0]["Expired"], true, "{v}");
    assert_eq!(v["ActivationList"][0]["RegistrationsCount"], 1, "{v}");

    // Heartbeats: signed, for a node that exists.
    assert_eq!(
        heartbeat(ep.url(), "mi-0123456789abcdef0")
            .unwrap_err()
            .code,
        "InvalidInstanceId"
    );
    heartbeat(ep.url(), &id).unwrap();
    let beat = ep
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.action == "UpdateInstanceInformation")
        .unwrap();
    assert_eq!(beat.signature, SignatureCheck::Unverified);
    assert_eq!(
        beat.access_key_id.as_deref(),
        Some(opsworks_endpoint::ssm_standin::AGENT_ACCESS_KEY_ID)
    );
    // An SSM call signed for another service is refused.
    let (auth, date) = unknown_key_auth("AKIAWRONGSCOPE");
    let (status, body) = http(
        ep.url(),
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "AmazonSSM.DescribeActivations"),
            ("X-Amz-Date", &date),
            ("Authorization", &auth),
        ],
        b"{}",
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("InvalidSignatureException")),
        "{v}"
    );
}

#[tokio::test]
async fn ping_status_follows_heartbeats() {
    let ep = endpoint_with(|c| c.ssm_connection_lost_after = Duration::from_secs(2));
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let (activation, code) = create_activation(&client, &role, 1).await;
    let id = register_node(ep.url(), &activation, &code);
    let status = |ep: &opsworks_endpoint::EndpointHandle| ep.ssm_node(&id).unwrap().ping_status;
    // Registered, but its agent never called.
    assert_eq!(status(&ep), "ConnectionLost");
    assert_eq!(ep.ssm_node(&id).unwrap().last_ping, None);
    heartbeat(ep.url(), &id).unwrap();
    assert_eq!(status(&ep), "Online");
    let first_ping = ep.ssm_node(&id).unwrap().last_ping.unwrap();
    let online = |want: &str| {
        let body = json!({"Filters": [{"Key": "PingStatus", "Values": [want]}]});
        let (_, v) = ssm_call(
            ep.url(),
            "DescribeInstanceInformation",
            &body.to_string(),
            true,
        );
        v["InstanceInformationList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["InstanceId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(online("Online"), std::slice::from_ref(&id));
    // Heartbeats stop.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(status(&ep), "ConnectionLost");
    assert_eq!(online("ConnectionLost"), std::slice::from_ref(&id));
    assert!(online("Online").is_empty());
    // And come back.
    std::thread::sleep(Duration::from_millis(20));
    heartbeat(ep.url(), &id).unwrap();
    assert_eq!(status(&ep), "Online");
    assert!(ep.ssm_node(&id).unwrap().last_ping.unwrap() > first_ping);
}

#[tokio::test]
async fn ec2_instances_heartbeat_with_their_instance_profile() {
    let ep = endpoint();
    let role = ssm_role().await;
    let profile = unique("ssm-profile");
    let iam = iam();
    iam.create_instance_profile()
        .instance_profile_name(&profile)
        .send()
        .await
        .unwrap();
    iam.add_role_to_instance_profile()
        .instance_profile_name(&profile)
        .role_name(&role)
        .send()
        .await
        .unwrap();
    let ec2 = ec2("us-east-1");
    let launch = |profile: Option<String>| {
        let ec2 = ec2.clone();
        async move {
            ec2.run_instances()
                .image_id("ami-12c6146b")
                .min_count(1)
                .max_count(1)
                .set_iam_instance_profile(profile.map(|p| {
                    aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                        .name(p)
                        .build()
                }))
                .send()
                .await
                .expect("RunInstances")
                .instances()[0]
                .instance_id()
                .unwrap()
                .to_owned()
        }
    };
    let with_profile = launch(Some(profile)).await;
    let without = launch(None).await;

    heartbeat(ep.url(), &with_profile).unwrap();
    let node = ep.ssm_node(&with_profile).expect("the EC2 node");
    assert_eq!(node.resource_type, "EC2Instance");
    assert_eq!(node.ping_status, "Online");
    assert_eq!(node.iam_role.as_deref(), Some(role.as_str()));
    assert_eq!(node.activation_id, None);
    heartbeat(ep.url(), &with_profile).unwrap();
    assert_eq!(ep.ssm_nodes().len(), 1);

    for id in [without.as_str(), "i-0000000000000dead"] {
        let e = heartbeat(ep.url(), id).unwrap_err();
        assert_eq!(e.code, "AccessDeniedException", "{id}: {e}");
        assert!(ep.ssm_node(id).is_none());
    }
    let (_, v) = ssm_call(
        ep.url(),
        "DescribeInstanceInformation",
        &json!({"Filters": [{"Key": "ResourceType", "Values": ["EC2Instance"]}]}).to_string(),
        true,
    );
    let list = v["InstanceInformationList"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["InstanceId"], with_profile.as_str());
    assert_eq!(list[0]["SourceType"], "AWS::EC2::Instance");
    assert!(list[0].get("ActivationId").is_none(), "{v}");
}

#[tokio::test]
async fn ssm_calls_are_recorded_and_fault_injected() {
    let ep = endpoint_with(|c| c.reject_unknown_access_keys = true);
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let (activation, code) = create_activation(&client, &role, 1).await;
    let id = register_node(ep.url(), &activation, &code);
    // Unknown keys are refused for public calls, but the agent's heartbeat is accepted: its
    // key comes from its registration.
    let (status, v) = ssm_call(ep.url(), "DescribeActivations", "{}", true);
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("UnrecognizedClientException"))
    );
    heartbeat(ep.url(), &id).unwrap();

    ep.set_faults(Faults {
        throttle_rate: 1.0,
        only_actions: vec!["ssm:DescribeActivations".into()],
        ..Faults::default()
    })
    .unwrap();
    let e = client.describe_activations().send().await.unwrap_err();
    assert_eq!(
        aws_sdk_ssm::error::ProvideErrorMetadata::code(&e),
        Some("ThrottlingException")
    );
    client
        .describe_instance_information()
        .send()
        .await
        .expect("not faulted");
    opsworks(ep.url())
        .describe_stacks()
        .send()
        .await
        .expect("OpsWorks is not faulted");
    ep.set_faults(Faults {
        unavailable_rate: 1.0,
        only_actions: vec!["UpdateInstanceInformation".into()],
        ..Faults::default()
    })
    .unwrap();
    assert_eq!(heartbeat(ep.url(), &id).unwrap_err().status, 503);

    let summary = CallSummary::of_endpoint(&ep.calls());
    assert_eq!(summary.get("opsworks", "DescribeStacks").calls, 1);
    assert_eq!(summary.get("ssm", "DescribeActivations").throttling, 1);
    assert_eq!(summary.get("ssm", "DescribeActivations").calls, 2);
    assert_eq!(
        summary
            .get("ssm", "UpdateInstanceInformation")
            .service_unavailable,
        1
    );
    assert_eq!(summary.service("ssm").injected(), 2);
    assert_eq!(summary.service("opsworks").calls, 1);
    assert!(format!("{summary}").contains("ssm"));
}
