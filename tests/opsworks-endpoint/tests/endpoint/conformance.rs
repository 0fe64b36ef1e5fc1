//! Conformance with the official OpsWorks service model, read from botocore 1.34.0's
//! `opsworks/2013-02-18/service-2.json` and `waiters-2.json` (put in the cache by
//! tests/setup.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_opsworks::config::retry::RetryConfig;
use opsworks_endpoint::model::{self, COMMON_ERRORS, INSTANCE_STATUSES, OPERATIONS, Shape, Ty};
use opsworks_endpoint::moto::opsworks_model_dir;
use serde_json::{Value, json};

use crate::common::*;

/// The errors AWS documents as common to all actions
/// (<https://docs.aws.amazon.com/opsworks/latest/APIReference/CommonErrors.html>), with the
/// names the AWS JSON services use for them, plus the protocol-level ones of the JSON 1.1
/// protocol (an unknown `X-Amz-Target`, a body that does not deserialize).
const AWS_COMMON_ERRORS: &[&str] = &[
    "AccessDeniedException",
    "IncompleteSignatureException",
    "InternalFailure",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "ServiceUnavailable",
    "ThrottlingException",
    "UnrecognizedClientException",
    "ValidationException",
    "UnknownOperationException",
    "SerializationException",
];

fn load(name: &str) -> Value {
    let path = opsworks_model_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the OpsWorks service model at {}: {e}. Run tests/setup.sh (it extracts \
             it from the botocore 1.34.0 wheel).",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn service() -> Value {
    load("service-2.json")
}

/// Compares one of the endpoint's types with the model's shape `name`.
pub(crate) fn same_type(model: &Value, name: &str, ty: &Ty, path: &str) {
    let shape = &model["shapes"][name];
    let kind = shape["type"].as_str().unwrap_or("?");
    match ty {
        Ty::String => {
            assert_eq!(kind, "string", "{path}");
            assert!(shape.get("enum").is_none(), "{path}: the model has an enum");
        }
        Ty::Enum(values) => {
            assert_eq!(kind, "string", "{path}");
            let want: Vec<&str> = shape["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: the model has no enum"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(*values, want.as_slice(), "{path}");
        }
        Ty::Boolean => assert_eq!(kind, "boolean", "{path}"),
        Ty::Integer => assert_eq!(kind, "integer", "{path}"),
        Ty::Long => assert_eq!(kind, "long", "{path}"),
        Ty::Double => assert_eq!(kind, "double", "{path}"),
        Ty::Timestamp => assert_eq!(kind, "timestamp", "{path}"),
        Ty::List(member) => {
            assert_eq!(kind, "list", "{path}");
            let m = shape["member"]["shape"].as_str().unwrap();
            same_type(model, m, member, &format!("{path}[]"));
        }
        Ty::Map(value) => {
            assert_eq!(kind, "map", "{path}");
            let v = shape["value"]["shape"].as_str().unwrap();
            same_type(model, v, value, &format!("{path}{{}}"));
        }
        Ty::Structure(s) => {
            assert_eq!(kind, "structure", "{path}");
            same_shape(model, name, s);
        }
    }
}

pub(crate) fn same_shape(model: &Value, name: &str, shape: &Shape) {
    assert_eq!(shape.name, name);
    let m = &model["shapes"][name];
    let members = m["members"].as_object().unwrap();
    let want: BTreeSet<&str> = members.keys().map(String::as_str).collect();
    let have: BTreeSet<&str> = shape.members.iter().map(|x| x.name).collect();
    assert_eq!(have, want, "members of {name}");
    let required: BTreeSet<&str> = m["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for member in shape.members {
        assert_eq!(
            member.required,
            required.contains(member.name),
            "{name}.{} required",
            member.name
        );
        let target = members[member.name]["shape"].as_str().unwrap();
        same_type(
            model,
            target,
            &member.ty,
            &format!("{name}.{}", member.name),
        );
    }
}

#[test]
fn input_shapes_and_errors_are_the_model_s() {
    let model = service();
    assert_eq!(model["metadata"]["apiVersion"], model::API_VERSION);
    assert_eq!(model["metadata"]["targetPrefix"], model::TARGET_PREFIX);
    assert_eq!(model["metadata"]["jsonVersion"], "1.1");
    assert_eq!(model["metadata"]["protocol"], "json");
    assert_eq!(
        model["metadata"]["signingName"]
            .as_str()
            .unwrap_or("opsworks"),
        model::SIGNING_NAME
    );
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
    }
    for (code, _) in COMMON_ERRORS {
        assert!(
            AWS_COMMON_ERRORS.contains(code),
            "{code} is no common AWS error"
        );
    }
}

/// A value of the right type for `ty`, to fill required members.
pub(crate) fn sample(ty: &Ty) -> Value {
    match ty {
        Ty::String => json!("00000000-0000-0000-0000-000000000000"),
        Ty::Enum(values) => json!(values[0]),
        Ty::Boolean => json!(true),
        Ty::Integer | Ty::Long => json!(1),
        Ty::Double => json!(1.5),
        Ty::Timestamp => json!(1_900_000_000),
        Ty::List(m) => json!([sample(m)]),
        Ty::Map(v) => json!({ "k": sample(v) }),
        Ty::Structure(s) => {
            let mut o = serde_json::Map::new();
            for m in s.members.iter().filter(|m| m.required) {
                o.insert(m.name.to_owned(), sample(&m.ty));
            }
            Value::Object(o)
        }
    }
}

#[test]
fn required_members_are_enforced() {
    let model = service();
    let ep = endpoint();
    for op in OPERATIONS {
        let required: Vec<&str> = model["shapes"][op.input.name]["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
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
            let (status, v) = raw_call(ep.url(), op.name, &Value::Object(body).to_string());
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
        // Null is absent, too.
        if let Some(first) = required.first() {
            let (_, v) = raw_call(ep.url(), op.name, &json!({ *first: null }).to_string());
            assert_eq!(v["__type"], "ValidationException", "{}", op.name);
        }
    }
}

#[test]
fn malformed_requests_get_the_protocol_s_errors() {
    let ep = endpoint();
    let cases: &[(&str, &str, &str)] = &[
        ("DescribeStacks", "{not json", "SerializationException"),
        (
            "DescribeStacks",
            r#"{"StackIds": "one"}"#,
            "SerializationException",
        ),
        (
            "DescribeStacks",
            r#"["StackIds"]"#,
            "SerializationException",
        ),
        (
            "CreateLayer",
            r#"{"StackId": "s", "Type": "custom", "Name": "n", "Shortname": "n", "EnableAutoHealing": "yes"}"#,
            "SerializationException",
        ),
        (
            "RegisterInstance",
            r#"{"StackId": "s", "InstanceIdentity": {"Document": 5}}"#,
            "SerializationException",
        ),
        (
            "CreateLayer",
            r#"{"StackId": "s", "Type": "nonsense", "Name": "n", "Shortname": "n"}"#,
            "ValidationException",
        ),
        ("CreateApp", "{}", "UnknownOperationException"),
        ("NoSuchThing", "{}", "UnknownOperationException"),
    ];
    for (action, body, want) in cases {
        let (status, v) = raw_call(ep.url(), action, body);
        assert_eq!(
            (status, v["__type"].as_str().unwrap_or("")),
            (400, *want),
            "{action} {body}: {v}"
        );
        assert!(v["message"].is_string(), "{v}");
    }
    // No target at all.
    let (auth, date) = unknown_key_auth("AKIAX");
    let (status, body) = http(
        ep.url(),
        "POST",
        "/",
        &[("Authorization", &auth), ("X-Amz-Date", &date)],
        b"{}",
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["__type"].as_str().unwrap()),
        (400, "UnknownOperationException")
    );
    // Too large a body.
    let ep_small = endpoint_with(|c| c.max_body_bytes = 64);
    let (status, v) = raw_call(
        ep_small.url(),
        "DescribeStacks",
        &format!("{{\"StackIds\": [\"{}\"]}}", "x".repeat(100)),
    );
    assert_eq!(
        (status, v["__type"].as_str().unwrap()),
        (400, "SerializationException")
    );
}

/// Checks a JSON value against the model's shape `name`: every key a member, every type right.
pub(crate) fn conforms(model: &Value, name: &str, v: &Value, path: &str) {
    let shape = &model["shapes"][name];
    match (shape["type"].as_str().unwrap(), v) {
        ("structure", Value::Object(o)) => {
            let members = shape["members"].as_object().unwrap();
            for (k, x) in o {
                let m = members
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is not a member of {name}"));
                conforms(
                    model,
                    m["shape"].as_str().unwrap(),
                    x,
                    &format!("{path}.{k}"),
                );
            }
        }
        ("list", Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                conforms(
                    model,
                    shape["member"]["shape"].as_str().unwrap(),
                    x,
                    &format!("{path}[{i}]"),
                );
            }
        }
        ("map", Value::Object(o)) => {
            for (k, x) in o {
                conforms(
                    model,
                    shape["value"]["shape"].as_str().unwrap(),
                    x,
                    &format!("{path}.{k}"),
                );
            }
        }
        ("string", Value::String(s)) => {
            if let Some(values) = shape["enum"].as_array() {
                assert!(
                    values.iter().any(|e| e == s),
                    "{path}: {s} is not in the enum of {name}"
                );
            }
        }
        ("boolean", Value::Bool(_)) => {}
        ("integer" | "long", Value::Number(n)) => assert!(n.is_i64(), "{path}"),
        ("double" | "timestamp", Value::Number(_)) => {}
        (t, v) => panic!("{path}: {v} is not a {t} ({name})"),
    }
}

#[tokio::test]
async fn outputs_and_error_codes_follow_the_model() {
    let model = service();
    let ep = endpoint_with(|c| c.registration_delay = Duration::ZERO);
    let admin = opsworks(ep.url());
    let (stack, arn) = create_stack(&admin, Some("vpc-11112222")).await;
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
        .hostname("conform")
        .private_ip("10.9.9.9")
        .send()
        .await
        .unwrap()
        .instance_id
        .unwrap();
    // Raw calls, to see the JSON itself.
    let full_stack = json!({
        "Name": "full", "Region": "eu-west-1", "VpcId": "vpc-1",
        "ServiceRoleArn": "arn:aws:iam::123456789012:role/r",
        "DefaultInstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/p",
        "Attributes": {"Color": "rgb(45, 114, 184)"},
        "ConfigurationManager": {"Name": "Chef", "Version": "11.10"},
        "ChefConfiguration": {"ManageBerkshelf": false},
        "CustomCookbooksSource": {"Type": "git", "Url": "https://example.invalid/c.git", "Password": "p"},
        "UseCustomCookbooks": true, "DefaultRootDeviceType": "instance-store",
    });
    let (status, created) = raw_call(ep.url(), "CreateStack", &full_stack.to_string());
    assert_eq!(status, 200, "{created}");
    let full = created["StackId"].as_str().unwrap().to_owned();
    let (status, layer) = raw_call(
        ep.url(),
        "CreateLayer",
        &json!({"StackId": stack, "Type": "custom", "Name": "L", "Shortname": "l",
                "Packages": ["git"], "VolumeConfigurations": [{"MountPoint": "/d", "NumberOfDisks": 1, "Size": 8}],
                "CustomRecipes": {"Setup": ["a::b"]}})
        .to_string(),
    );
    assert_eq!(status, 200, "{layer}");
    let layer_id = layer["LayerId"].as_str().unwrap().to_owned();
    let calls: Vec<(&str, Value)> = vec![
        ("DescribeStacks", json!({})),
        ("DescribeStacks", json!({"StackIds": [full]})),
        (
            "DescribeStackProvisioningParameters",
            json!({"StackId": stack}),
        ),
        ("DescribeLayers", json!({"StackId": stack})),
        ("DescribeInstances", json!({"StackId": stack})),
        (
            "AssignInstance",
            json!({"InstanceId": instance, "LayerIds": [layer_id]}),
        ),
        ("DescribeInstances", json!({"LayerId": layer_id})),
        ("UnassignInstance", json!({"InstanceId": instance})),
        ("DeregisterInstance", json!({"InstanceId": instance})),
    ];
    for (action, body) in calls {
        let (status, v) = raw_call(ep.url(), action, &body.to_string());
        assert_eq!(status, 200, "{action}: {v}");
        match model["operations"][action]["output"]["shape"].as_str() {
            Some(out) => conforms(&model, out, &v, action),
            None => assert_eq!(v, json!({}), "{action}"),
        }
    }
    let (_, v) = raw_call(
        ep.url(),
        "DescribeStacks",
        &json!({"StackIds": [full]}).to_string(),
    );
    assert_eq!(
        v["Stacks"][0]["CustomCookbooksSource"]["Password"],
        "*****FILTERED*****"
    );
    assert_eq!(v["Stacks"][0]["Region"], "eu-west-1");
    assert_eq!(v["Stacks"][0]["VpcId"], "vpc-1");

    // Errors of every kind this test file provokes.
    let missing = "00000000-0000-0000-0000-000000000000";
    for (action, body) in [
        ("DescribeStacks", json!({"StackIds": [missing]})),
        ("DescribeInstances", json!({})),
        ("DescribeInstances", json!({"InstanceIds": [missing]})),
        ("DescribeLayers", json!({"LayerIds": [missing]})),
        (
            "AssignInstance",
            json!({"InstanceId": missing, "LayerIds": []}),
        ),
        (
            "RegisterInstance",
            json!({"StackId": stack, "Hostname": "x"}),
        ),
        (
            "RegisterInstance",
            json!({"StackId": stack, "Hostname": "bad_host!"}),
        ),
        (
            "CreateStack",
            json!({"Name": "n", "Region": "nowhere", "ServiceRoleArn": "a", "DefaultInstanceProfileArn": "b"}),
        ),
    ] {
        let (status, v) = raw_call(ep.url(), action, &body.to_string());
        assert_eq!(status, 400, "{action}: {v}");
    }
    ep.set_faults(opsworks_endpoint::Faults {
        throttle_rate: 0.3,
        internal_error_rate: 0.2,
        unavailable_rate: 0.2,
        seed: 3,
        ..Default::default()
    })
    .unwrap();
    for _ in 0..30 {
        raw_call(ep.url(), "DescribeStacks", "{}");
    }
    let statuses: BTreeMap<&str, u16> = COMMON_ERRORS.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for call in ep.calls() {
        let Some(code) = call.error_code.as_deref() else {
            assert_eq!(call.status, 200);
            continue;
        };
        seen.insert(code.to_owned());
        let modelled = model["operations"][call.action.as_str()]["errors"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["shape"] == code));
        assert!(
            modelled || statuses.contains_key(code),
            "{} answered {code}, which neither its model nor the common errors list",
            call.action
        );
        let want = statuses.get(code).copied().unwrap_or(400);
        assert_eq!(call.status, want, "{code}");
    }
    for code in [
        "ResourceNotFoundException",
        "ValidationException",
        "ThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
    ] {
        assert!(seen.contains(code), "{code} not provoked: {seen:?}");
    }
}

#[tokio::test]
async fn instance_statuses_are_the_waiter_s() {
    let model = service();
    let waiters = load("waiters-2.json");
    let waiter = &waiters["waiters"]["InstanceRegistered"];
    assert_eq!(waiter["operation"], "DescribeInstances");
    let mut success = BTreeSet::new();
    let mut failure = BTreeSet::new();
    for a in waiter["acceptors"].as_array().unwrap() {
        assert_eq!(a["argument"], "Instances[].Status");
        let s = a["expected"].as_str().unwrap().to_owned();
        match a["state"].as_str().unwrap() {
            "success" => success.insert(s),
            "failure" => failure.insert(s),
            other => panic!("{other}"),
        };
    }
    assert_eq!(
        success.iter().map(String::as_str).collect::<Vec<_>>(),
        [model::STATUS_REGISTERED]
    );
    // "registering" matches no acceptor, so the waiter keeps polling.
    assert!(!success.contains(model::STATUS_REGISTERING));
    assert!(!failure.contains(model::STATUS_REGISTERING));
    // Every failure state can be forced; every forceable status is one the model knows.
    for f in &failure {
        assert!(
            INSTANCE_STATUSES.contains(&f.as_str()),
            "{f} cannot be forced"
        );
    }
    let doc = model["shapes"]["Instance"]["members"]["Status"]["documentation"]
        .as_str()
        .unwrap();
    let documented: BTreeSet<String> = doc
        .split("<code>")
        .skip(1)
        .filter_map(|s| s.split("</code>").next())
        .map(|s| s.trim().to_owned())
        .collect();
    for s in INSTANCE_STATUSES {
        assert!(
            *s == model::STATUS_REGISTERING
                || success.contains(*s)
                || failure.contains(*s)
                || documented.contains(*s),
            "{s} is neither a waiter state nor a documented status"
        );
    }

    // What a registration goes through: registering, then registered.
    let ep = endpoint_with(|c| c.registration_delay = Duration::from_millis(1500));
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
    agent
        .register_instance()
        .stack_id(&stack)
        .hostname("waited")
        .send()
        .await
        .unwrap();
    let mut observed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = admin
            .describe_instances()
            .stack_id(&stack)
            .send()
            .await
            .unwrap();
        let s = out.instances()[0].status().unwrap().to_owned();
        if observed.last() != Some(&s) {
            observed.push(s.clone());
        }
        if success.contains(&s) || failure.contains(&s) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{observed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(observed, ["registering", "registered"]);
}
