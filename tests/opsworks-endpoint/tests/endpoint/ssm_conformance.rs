//! Conformance of the Systems Manager operations with the official SSM service model, read from
//! botocore 1.34.0's `ssm/2014-11-06/service-2.json` (put in the cache by tests/setup.sh): input
//! shapes, required members, enums, output shapes and the errors each operation answers.

use std::collections::{BTreeMap, BTreeSet};

use opsworks_endpoint::model::ssm::{self, AGENT_OPERATIONS, OPERATIONS};
use opsworks_endpoint::model::{COMMON_ERRORS, Ty};
use opsworks_endpoint::moto::cache_dir;
use serde_json::{Value, json};

use crate::common::*;
use crate::conformance::{conforms, same_shape, sample};

fn service() -> Value {
    let path = cache_dir().join("botocore-1.34.0/ssm/2014-11-06/service-2.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the SSM service model at {}: {e}. Run tests/setup.sh (it extracts it \
             from the botocore 1.34.0 wheel).",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn input_shapes_and_errors_are_the_model_s() {
    let model = service();
    assert_eq!(model["metadata"]["apiVersion"], ssm::API_VERSION);
    assert_eq!(model["metadata"]["targetPrefix"], ssm::TARGET_PREFIX);
    assert_eq!(model["metadata"]["jsonVersion"], "1.1");
    assert_eq!(model["metadata"]["protocol"], "json");
    assert_eq!(model["metadata"]["endpointPrefix"], ssm::SIGNING_NAME);
    for op in OPERATIONS {
        let m = &model["operations"][op.name];
        assert!(m.is_object(), "{} is not in the model", op.name);
        assert_eq!(m["input"]["shape"], op.input.name, "{}", op.name);
        same_shape(&model, op.input.name, op.input);
        let errors: Vec<&str> = m["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["shape"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(op.errors, errors.as_slice(), "errors of {}", op.name);
        for e in errors {
            assert_eq!(model["shapes"][e]["exception"], true, "{e}");
        }
    }
    // The agent's operations are not public: not in the model, but their tags and enums are
    // the model's shapes.
    for op in AGENT_OPERATIONS {
        assert!(model["operations"][op.name].is_null(), "{}", op.name);
        for m in op.input.members {
            match (m.name, &m.ty) {
                ("Tags", Ty::List(Ty::Structure(tag))) => same_shape(&model, "Tag", tag),
                ("PlatformType", Ty::Enum(values)) => assert_eq!(
                    *values,
                    model["shapes"]["PlatformType"]["enum"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .as_slice()
                ),
                _ => {}
            }
        }
    }
}

#[test]
fn required_members_are_enforced() {
    let model = service();
    let ep = endpoint();
    for op in OPERATIONS.iter().chain(AGENT_OPERATIONS) {
        let required: Vec<&str> = op
            .input
            .members
            .iter()
            .filter(|m| m.required)
            .map(|m| m.name)
            .collect();
        if let Some(shape) = model["shapes"][op.input.name]["required"].as_array() {
            let want: Vec<&str> = shape.iter().filter_map(Value::as_str).collect();
            assert_eq!(required, want, "{}", op.name);
        }
        for left_out in &required {
            let mut body = serde_json::Map::new();
            for m in op
                .input
                .members
                .iter()
                .filter(|m| m.required && m.name != *left_out)
            {
                body.insert(m.name.to_owned(), sample(&m.ty));
            }
            let (status, v) = ssm_call(ep.url(), op.name, &Value::Object(body).to_string(), true);
            assert_eq!(status, 400, "{} without {left_out}: {v}", op.name);
            assert_eq!(
                v["__type"], "ValidationException",
                "{} without {left_out}",
                op.name
            );
            let camel = format!("{}{}", left_out[..1].to_lowercase(), &left_out[1..]);
            assert!(
                v["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("Value null at '{camel}'")),
                "{}: {v}",
                op.name
            );
        }
    }
}

#[test]
fn malformed_requests_get_the_protocol_s_errors() {
    let ep = endpoint();
    let cases: &[(&str, &str, &str)] = &[
        ("DescribeActivations", "{not json", "SerializationException"),
        (
            "DescribeActivations",
            r#"{"Filters": {"FilterKey": "IamRole"}}"#,
            "SerializationException",
        ),
        (
            "DescribeActivations",
            r#"{"Filters": [{"FilterKey": "Nope", "FilterValues": ["x"]}]}"#,
            "ValidationException",
        ),
        (
            "CreateActivation",
            r#"{"IamRole": "r", "ExpirationDate": "tomorrow"}"#,
            "SerializationException",
        ),
        (
            "CreateActivation",
            r#"{"IamRole": "r", "RegistrationLimit": 1001}"#,
            "ValidationException",
        ),
        (
            "DescribeInstanceInformation",
            r#"{"MaxResults": 4}"#,
            "ValidationException",
        ),
        (
            "DescribeInstanceInformation",
            r#"{"InstanceInformationFilterList": [{"key": "Colour", "valueSet": ["x"]}]}"#,
            "ValidationException",
        ),
        (
            "ListTagsForResource",
            r#"{"ResourceType": "Activation", "ResourceId": "x"}"#,
            "ValidationException",
        ),
        ("SendCommand", "{}", "UnknownOperationException"),
    ];
    for (action, body, want) in cases {
        let (status, v) = ssm_call(ep.url(), action, body, true);
        assert_eq!(
            (status, v["__type"].as_str().unwrap_or("")),
            (400, *want),
            "{action} {body}: {v}"
        );
        assert!(v["message"].is_string(), "{v}");
    }
    // An OpsWorks action under the SSM prefix, and the reverse, are unknown.
    let (_, v) = ssm_call(ep.url(), "DescribeStacks", "{}", true);
    assert_eq!(v["__type"], "UnknownOperationException");
    let (_, v) = raw_call(ep.url(), "DescribeActivations", "{}");
    assert_eq!(v["__type"], "UnknownOperationException");
}

#[tokio::test]
async fn outputs_and_error_codes_follow_the_model() {
    let model = service();
    let ep = endpoint();
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let (activation, code) = create_activation(&client, &role, 2).await;
    let node = register_node(ep.url(), &activation, &code);
    heartbeat(ep.url(), &node).unwrap();

    let calls: Vec<(&str, Value)> = vec![
        (
            "CreateActivation",
            json!({"IamRole": role, "Description": "d", "DefaultInstanceName": "web",
                   "RegistrationLimit": 3, "ExpirationDate": now() + 86_400,
                   "Tags": [{"Key": "team", "Value": "a"}],
                   "RegistrationMetadata": [{"Key": "k", "Value": "v"}]}),
        ),
        ("DescribeActivations", json!({})),
        (
            "DescribeActivations",
            json!({"Filters": [{"FilterKey": "IamRole", "FilterValues": [role]}], "MaxResults": 1}),
        ),
        ("DescribeInstanceInformation", json!({})),
        (
            "DescribeInstanceInformation",
            json!({"Filters": [{"Key": "InstanceIds", "Values": [node]}]}),
        ),
        (
            "AddTagsToResource",
            json!({"ResourceType": "ManagedInstance", "ResourceId": node,
                   "Tags": [{"Key": "env", "Value": "test"}]}),
        ),
        (
            "ListTagsForResource",
            json!({"ResourceType": "ManagedInstance", "ResourceId": node}),
        ),
        ("DeregisterManagedInstance", json!({"InstanceId": node})),
        ("DeleteActivation", json!({"ActivationId": activation})),
    ];
    for (action, body) in calls {
        let (status, v) = ssm_call(ep.url(), action, &body.to_string(), true);
        assert_eq!(status, 200, "{action}: {v}");
        match model["operations"][action]["output"]["shape"].as_str() {
            Some(out) => conforms(&model, out, &v, action),
            None => assert_eq!(v, json!({}), "{action}"),
        }
        if action == "DescribeInstanceInformation" {
            let info = &v["InstanceInformationList"][0];
            for member in [
                "InstanceId",
                "PingStatus",
                "LastPingDateTime",
                "AgentVersion",
                "PlatformType",
                "PlatformName",
                "PlatformVersion",
                "ActivationId",
                "IamRole",
                "RegistrationDate",
                "ResourceType",
                "Name",
                "IPAddress",
                "ComputerName",
            ] {
                assert!(!info[member].is_null(), "{member} missing: {info}");
            }
        }
    }

    // Errors the model lists, provoked.
    let missing = "00000000-0000-4000-8000-000000000000";
    for (action, body, want) in [
        (
            "CreateActivation",
            json!({"IamRole": "no-such-role-anywhere"}),
            "InvalidParameters",
        ),
        (
            "DescribeActivations",
            json!({"Filters": [{"FilterValues": ["x"]}]}),
            "InvalidFilter",
        ),
        (
            "DescribeActivations",
            json!({"NextToken": "nope"}),
            "InvalidNextToken",
        ),
        (
            "DeleteActivation",
            json!({"ActivationId": missing}),
            "InvalidActivationId",
        ),
        (
            "DescribeInstanceInformation",
            json!({"Filters": [{"Key": "Colour", "Values": ["x"]}]}),
            "InvalidFilterKey",
        ),
        (
            "DescribeInstanceInformation",
            json!({"Filters": [{"Key": "PingStatus", "Values": ["Asleep"]}]}),
            "InvalidInstanceInformationFilterValue",
        ),
        (
            "DescribeInstanceInformation",
            json!({"InstanceInformationFilterList": [{"key": "InstanceIds", "valueSet": ["nope"]}]}),
            "InvalidInstanceId",
        ),
        (
            "DescribeInstanceInformation",
            json!({"NextToken": "nope"}),
            "InvalidNextToken",
        ),
        (
            "DeregisterManagedInstance",
            json!({"InstanceId": node}),
            "InvalidInstanceId",
        ),
        (
            "AddTagsToResource",
            json!({"ResourceType": "Document", "ResourceId": "doc", "Tags": []}),
            "InvalidResourceId",
        ),
        (
            "ListTagsForResource",
            json!({"ResourceType": "ManagedInstance", "ResourceId": node}),
            "InvalidResourceId",
        ),
    ] {
        let (status, v) = ssm_call(ep.url(), action, &body.to_string(), true);
        assert_eq!(
            (status, v["__type"].as_str().unwrap_or("")),
            (400, want),
            "{action} {body}: {v}"
        );
    }
    ep.set_faults(opsworks_endpoint::Faults {
        throttle_rate: 0.3,
        internal_error_rate: 0.2,
        unavailable_rate: 0.2,
        seed: 5,
        ..Default::default()
    })
    .unwrap();
    for _ in 0..30 {
        ssm_call(ep.url(), "DescribeActivations", "{}", true);
    }
    let statuses: BTreeMap<&str, u16> = COMMON_ERRORS.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for call in ep.calls().into_iter().filter(|c| c.service == "ssm") {
        let Some(code) = call.error_code.as_deref() else {
            assert_eq!(call.status, 200);
            continue;
        };
        seen.insert(code.to_owned());
        let modelled = model["operations"][call.action.as_str()]["errors"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["shape"] == code))
            || ssm::operation(&call.action).is_some_and(|o| o.errors.contains(&code));
        assert!(
            modelled || statuses.contains_key(code),
            "{} answered {code}, which neither its model nor the common errors list",
            call.action
        );
        let want = statuses.get(code).copied().unwrap_or(400);
        assert_eq!(call.status, want, "{code}");
    }
    for code in [
        "InvalidParameters",
        "InvalidActivationId",
        "InvalidInstanceId",
        "ThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
    ] {
        assert!(seen.contains(code), "{code} not provoked: {seen:?}");
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
