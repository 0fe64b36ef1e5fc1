//! What the endpoint knows of the official OpsWorks service model: protocol constants, the
//! operations it serves with their input shapes and modelled errors, the errors common to every
//! AWS JSON operation, instance statuses, and checking a request body against an input shape
//! (type errors are `SerializationException`, missing required members and values outside an
//! enum are `ValidationException`, with the messages AWS's JSON services give). The Systems
//! Manager service, served beside OpsWorks, is in [`ssm`]; [`Service`] tells them apart.

pub mod shapes;
pub mod ssm;

use serde_json::Value;

use crate::error::ApiError;

/// API version of the OpsWorks service model.
pub const API_VERSION: &str = "2013-02-18";
/// `X-Amz-Target` prefix: `OpsWorks_20130218.<Action>`.
pub const TARGET_PREFIX: &str = "OpsWorks_20130218";
/// Content type of requests and responses (AWS JSON 1.1).
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// SigV4 signing name of the service.
pub const SIGNING_NAME: &str = "opsworks";

/// The type of a member, as the service model gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ty {
    /// `string`.
    String,
    /// `string` with an `enum` list.
    Enum(&'static [&'static str]),
    /// `boolean`.
    Boolean,
    /// `integer`.
    Integer,
    /// `long`.
    Long,
    /// `double`.
    Double,
    /// `timestamp`: in AWS JSON 1.1, a number of seconds since the epoch (fractions allowed).
    Timestamp,
    /// `list` of the given member type.
    List(&'static Ty),
    /// `map` from string keys to the given value type.
    Map(&'static Ty),
    /// `structure`.
    Structure(&'static Shape),
}

/// A structure shape.
#[derive(Debug, PartialEq)]
pub struct Shape {
    /// Shape name in the model.
    pub name: &'static str,
    /// Its members.
    pub members: &'static [Member],
}

/// A member of a structure.
#[derive(Debug, PartialEq)]
pub struct Member {
    /// Member name (the JSON key).
    pub name: &'static str,
    /// Member type.
    pub ty: Ty,
    /// Whether the model lists it under `required`.
    pub required: bool,
}

/// An operation the endpoint serves.
#[derive(Debug)]
pub struct Operation {
    /// Operation name, the `X-Amz-Target` suffix.
    pub name: &'static str,
    /// Input shape.
    pub input: &'static Shape,
    /// Error shapes the model lists for the operation.
    pub errors: &'static [&'static str],
}

const VALIDATION_AND_NOT_FOUND: &[&str] = &["ValidationException", "ResourceNotFoundException"];

/// The operations served, with the input shapes and errors of the service model.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "CreateStack",
        input: &shapes::CREATE_STACK_REQUEST,
        errors: &["ValidationException"],
    },
    Operation {
        name: "DescribeStacks",
        input: &shapes::DESCRIBE_STACKS_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "DescribeStackProvisioningParameters",
        input: &shapes::DESCRIBE_STACK_PROVISIONING_PARAMETERS_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "CreateLayer",
        input: &shapes::CREATE_LAYER_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "DescribeLayers",
        input: &shapes::DESCRIBE_LAYERS_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "DescribeInstances",
        input: &shapes::DESCRIBE_INSTANCES_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "RegisterInstance",
        input: &shapes::REGISTER_INSTANCE_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "DeregisterInstance",
        input: &shapes::DEREGISTER_INSTANCE_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "AssignInstance",
        input: &shapes::ASSIGN_INSTANCE_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
    Operation {
        name: "UnassignInstance",
        input: &shapes::UNASSIGN_INSTANCE_REQUEST,
        errors: VALIDATION_AND_NOT_FOUND,
    },
];

/// The OpsWorks operation named `name`, if the endpoint serves it.
pub fn operation(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|o| o.name == name)
}

/// A service the endpoint serves on `POST /`, told apart by the `X-Amz-Target` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// OpsWorks Stacks, `OpsWorks_20130218.<Action>`.
    OpsWorks,
    /// Systems Manager, `AmazonSSM.<Action>`.
    Ssm,
}

impl Service {
    /// The service a request's `X-Amz-Target` names, and the action: `None` for a target of
    /// neither service.
    pub fn of_target(target: &str) -> Option<(Service, &str)> {
        let (prefix, action) = target.split_once('.')?;
        match prefix {
            TARGET_PREFIX => Some((Service::OpsWorks, action)),
            ssm::TARGET_PREFIX => Some((Service::Ssm, action)),
            _ => None,
        }
    }

    /// The label of its calls in the call records and [`crate::CallSummary`]: `opsworks` or
    /// `ssm`.
    pub fn label(self) -> &'static str {
        match self {
            Service::OpsWorks => "opsworks",
            Service::Ssm => "ssm",
        }
    }

    /// Its SigV4 signing name.
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::OpsWorks => SIGNING_NAME,
            Service::Ssm => ssm::SIGNING_NAME,
        }
    }

    /// Its operation `name`, if served.
    pub fn operation(self, name: &str) -> Option<&'static Operation> {
        match self {
            Service::OpsWorks => operation(name),
            Service::Ssm => ssm::operation(name),
        }
    }
}

/// Errors any AWS JSON operation may answer besides the ones its model lists (AWS's "common
/// errors"), with their HTTP status, as this endpoint uses them.
pub const COMMON_ERRORS: &[(&str, u16)] = &[
    ("AccessDeniedException", 400),
    ("IncompleteSignatureException", 400),
    ("InternalFailure", 500),
    ("InvalidSignatureException", 400),
    ("MissingAuthenticationTokenException", 400),
    ("SerializationException", 400),
    ("ServiceUnavailable", 503),
    ("ThrottlingException", 400),
    ("UnknownOperationException", 400),
    ("UnrecognizedClientException", 400),
    ("ValidationException", 400),
];

/// Status of a registered instance that the agent has not yet finished registering.
pub const STATUS_REGISTERING: &str = "registering";
/// Status of a registered instance once registration is done (the `InstanceRegistered`
/// waiter's success state).
pub const STATUS_REGISTERED: &str = "registered";

/// Statuses a test may force an instance into ([`crate::EndpointHandle::set_instance_status`]):
/// the two the endpoint itself sets, the failure states of the model's `InstanceRegistered`
/// waiter, and the other statuses the model documents for `Instance.Status`.
pub const INSTANCE_STATUSES: &[&str] = &[
    STATUS_REGISTERING,
    STATUS_REGISTERED,
    // InstanceRegistered waiter failure states.
    "setup_failed",
    "shutting_down",
    "stopped",
    "stopping",
    "terminating",
    "terminated",
    "stop_failed",
    // Other documented statuses.
    "booting",
    "connection_lost",
    "online",
    "pending",
    "rebooting",
    "requested",
    "running_setup",
    "start_failed",
];

/// `StackId` → `stackId`: how AWS's validation messages name members.
fn lower_camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "structure or map",
    }
}

fn mismatch(path: &str, expected: &str, v: &Value) -> ApiError {
    ApiError::serialization(format!(
        "Unexpected {} at '{path}': expected {expected}",
        kind(v)
    ))
}

fn check_value(path: &str, ty: &Ty, v: &Value, problems: &mut Vec<String>) -> Result<(), ApiError> {
    match (ty, v) {
        // A null member is an absent one.
        (_, Value::Null) => Ok(()),
        (Ty::String, Value::String(_)) => Ok(()),
        (Ty::Enum(values), Value::String(s)) => {
            if !values.contains(&s.as_str()) {
                problems.push(format!(
                    "Value '{s}' at '{path}' failed to satisfy constraint: Member must satisfy \
                     enum value set: [{}]",
                    values.join(", ")
                ));
            }
            Ok(())
        }
        (Ty::Boolean, Value::Bool(_)) => Ok(()),
        (Ty::Integer | Ty::Long, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        (Ty::Double | Ty::Timestamp, Value::Number(_)) => Ok(()),
        (Ty::List(member), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(&format!("{path}.{}.member", i + 1), member, item, problems)?;
            }
            Ok(())
        }
        (Ty::Map(value), Value::Object(entries)) => {
            for (k, item) in entries {
                check_value(&format!("{path}.{k}"), value, item, problems)?;
            }
            Ok(())
        }
        (Ty::Structure(shape), Value::Object(_)) => check_shape(path, shape, v, problems),
        (Ty::String | Ty::Enum(_), _) => Err(mismatch(path, "a string", v)),
        (Ty::Boolean, _) => Err(mismatch(path, "a boolean", v)),
        (Ty::Integer | Ty::Long, _) => Err(mismatch(path, "an integer", v)),
        (Ty::Double, _) => Err(mismatch(path, "a number", v)),
        (Ty::Timestamp, _) => Err(mismatch(path, "a timestamp (seconds since the epoch)", v)),
        (Ty::List(_), _) => Err(mismatch(path, "a list", v)),
        (Ty::Map(_), _) => Err(mismatch(path, "a map", v)),
        (Ty::Structure(_), _) => Err(mismatch(path, "a structure", v)),
    }
}

fn check_shape(
    path: &str,
    shape: &Shape,
    v: &Value,
    problems: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Value::Object(obj) = v else {
        return Err(mismatch(path, "a structure", v));
    };
    for m in shape.members {
        let p = if path.is_empty() {
            lower_camel(m.name)
        } else {
            format!("{path}.{}", lower_camel(m.name))
        };
        match obj.get(m.name) {
            None | Some(Value::Null) if m.required => problems.push(format!(
                "Value null at '{p}' failed to satisfy constraint: Member must not be null"
            )),
            None => {}
            Some(value) => check_value(&p, &m.ty, value, problems)?,
        }
    }
    // Members the model does not have are ignored, as AWS's JSON services do.
    Ok(())
}

/// Checks a request body against an operation's input shape: `SerializationException` for a
/// body that is not a JSON object or a member of the wrong type, `ValidationException` listing
/// every missing required member and value outside its enum.
pub fn check_input(op: &Operation, body: &Value) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if !body.is_object() {
        return Err(ApiError::serialization(format!(
            "Unexpected {} at the top level: expected a structure",
            kind(body)
        )));
    }
    check_shape("", op.input, body, &mut problems)?;
    match problems.len() {
        0 => Ok(()),
        1 => Err(ApiError::validation(format!(
            "1 validation error detected: {}",
            problems[0]
        ))),
        n => Err(ApiError::validation(format!(
            "{n} validation errors detected: {}",
            problems.join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn required_types_and_enums() {
        let op = operation("CreateLayer").unwrap();
        let err = check_input(op, &json!({"StackId": "s", "Type": "custom"})).unwrap_err();
        assert_eq!(err.code, "ValidationException");
        assert!(
            err.message
                .starts_with("2 validation errors detected: Value null at 'name'"),
            "{}",
            err.message
        );
        let err = check_input(
            op,
            &json!({"StackId": "s", "Type": "nope", "Name": "n", "Shortname": "n"}),
        )
        .unwrap_err();
        assert!(err.message.contains("enum value set"), "{}", err.message);
        let err = check_input(op, &json!({"StackId": 5})).unwrap_err();
        assert_eq!(err.code, "SerializationException");
        let err = check_input(op, &json!([])).unwrap_err();
        assert_eq!(err.code, "SerializationException");
        check_input(
            op,
            &json!({"StackId": "s", "Type": "custom", "Name": "n", "Shortname": "n",
                    "Packages": ["a"], "Attributes": {"Color": "x"}, "Extra": 1}),
        )
        .unwrap();
        let reg = operation("RegisterInstance").unwrap();
        let err =
            check_input(reg, &json!({"StackId": "s", "InstanceIdentity": "doc"})).unwrap_err();
        assert_eq!(err.code, "SerializationException");
    }
}
