//! What the endpoint knows of the AWS Systems Manager (SSM) service model: protocol constants,
//! the operations it serves with their input shapes and modelled errors, and the forms of IDs.
//!
//! Two kinds of operations are served. The public ones (creating and describing hybrid
//! activations and managed nodes) follow the official model, botocore 1.34.0's
//! `ssm/2014-11-06/service-2.json`. The agent's own, `RegisterManagedInstance` (sent unsigned,
//! with an activation's code) and `UpdateInstanceInformation` (its heartbeat), are not in that
//! model; they follow the model the SSM agent is built with (its vendored
//! `aws-sdk-go/service/ssm`), listed in [`AGENT_OPERATIONS`].

pub mod shapes;

use super::Operation;

/// API version of the SSM service model.
pub const API_VERSION: &str = "2014-11-06";
/// `X-Amz-Target` prefix: `AmazonSSM.<Action>`.
pub const TARGET_PREFIX: &str = "AmazonSSM";
/// SigV4 signing name of the service.
pub const SIGNING_NAME: &str = "ssm";

/// The agent's registration: accepted without any `Authorization` header, as the agent's
/// anonymous client sends it.
pub const REGISTER_MANAGED_INSTANCE: &str = "RegisterManagedInstance";
/// The agent's heartbeat: signed, with credentials the endpoint does not verify.
pub const UPDATE_INSTANCE_INFORMATION: &str = "UpdateInstanceInformation";

/// `PingStatus` of a node whose agent sent a heartbeat lately.
pub const PING_ONLINE: &str = "Online";
/// `PingStatus` of a node whose agent has not sent one for a while.
pub const PING_CONNECTION_LOST: &str = "ConnectionLost";
/// `ResourceType` of a node registered with an activation (`mi-…`).
pub const MANAGED_INSTANCE: &str = "ManagedInstance";
/// `ResourceType` of an EC2 instance whose agent uses its instance profile (`i-…`).
pub const EC2_INSTANCE: &str = "EC2Instance";

/// The public operations served, with the input shapes and errors of the official model.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "CreateActivation",
        input: &shapes::CREATE_ACTIVATION_REQUEST,
        errors: &["InvalidParameters", "InternalServerError"],
    },
    Operation {
        name: "DescribeActivations",
        input: &shapes::DESCRIBE_ACTIVATIONS_REQUEST,
        errors: &["InvalidFilter", "InvalidNextToken", "InternalServerError"],
    },
    Operation {
        name: "DeleteActivation",
        input: &shapes::DELETE_ACTIVATION_REQUEST,
        errors: &[
            "InvalidActivationId",
            "InvalidActivation",
            "InternalServerError",
            "TooManyUpdates",
        ],
    },
    Operation {
        name: "DescribeInstanceInformation",
        input: &shapes::DESCRIBE_INSTANCE_INFORMATION_REQUEST,
        errors: &[
            "InternalServerError",
            "InvalidInstanceId",
            "InvalidNextToken",
            "InvalidInstanceInformationFilterValue",
            "InvalidFilterKey",
        ],
    },
    Operation {
        name: "DeregisterManagedInstance",
        input: &shapes::DEREGISTER_MANAGED_INSTANCE_REQUEST,
        errors: &["InvalidInstanceId", "InternalServerError"],
    },
    Operation {
        name: "AddTagsToResource",
        input: &shapes::ADD_TAGS_TO_RESOURCE_REQUEST,
        errors: &[
            "InvalidResourceType",
            "InvalidResourceId",
            "InternalServerError",
            "TooManyTagsError",
            "TooManyUpdates",
        ],
    },
    Operation {
        name: "RemoveTagsFromResource",
        input: &shapes::REMOVE_TAGS_FROM_RESOURCE_REQUEST,
        errors: &[
            "InvalidResourceType",
            "InvalidResourceId",
            "InternalServerError",
            "TooManyUpdates",
        ],
    },
    Operation {
        name: "ListTagsForResource",
        input: &shapes::LIST_TAGS_FOR_RESOURCE_REQUEST,
        errors: &[
            "InvalidResourceType",
            "InvalidResourceId",
            "InternalServerError",
        ],
    },
];

/// The agent's private operations, with the input shapes and errors of the agent's model.
pub const AGENT_OPERATIONS: &[Operation] = &[
    Operation {
        name: REGISTER_MANAGED_INSTANCE,
        input: &shapes::REGISTER_MANAGED_INSTANCE_REQUEST,
        errors: &[
            "InvalidActivation",
            "ActivationExpired",
            "RegistrationLimitExceeded",
            "InternalServerError",
            "TooManyUpdates",
            "InvalidPublicKey",
            "InstanceAlreadyRegistered",
        ],
    },
    Operation {
        name: UPDATE_INSTANCE_INFORMATION,
        input: &shapes::UPDATE_INSTANCE_INFORMATION_REQUEST,
        errors: &[
            "InvalidInstanceId",
            "InternalServerError",
            "InvalidInstanceInformationValue",
        ],
    },
];

/// The SSM operation named `name`, public or the agent's, if the endpoint serves it.
pub fn operation(name: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .chain(AGENT_OPERATIONS)
        .find(|o| o.name == name)
}

/// Whether `id` is a managed node ID as activations give them: `mi-` and 17 lowercase hex
/// digits (the model's `ManagedInstanceId` pattern, without the EKS form).
pub fn is_managed_instance_id(id: &str) -> bool {
    id.strip_prefix("mi-").is_some_and(|h| {
        h.len() == 17
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `id` is an EC2 instance ID: `i-` and 8 or 17 word characters (the model's
/// `InstanceId` pattern).
pub fn is_ec2_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Whether `id` matches the model's `InstanceId` pattern (`i-…` or `mi-…`, 17 word characters).
pub fn is_instance_id(id: &str) -> bool {
    is_ec2_instance_id(id)
        || id.strip_prefix("mi-").is_some_and(|h| {
            h.len() == 17 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_managed_instance_id("mi-0123456789abcdef0"));
        assert!(!is_managed_instance_id("mi-0123456789ABCDEF0"));
        assert!(!is_managed_instance_id("mi-0123456789abcdef"));
        assert!(!is_managed_instance_id("i-0123456789abcdef0"));
        assert!(is_ec2_instance_id("i-0123456789abcdef0"));
        assert!(is_ec2_instance_id("i-01234567"));
        assert!(!is_ec2_instance_id("i-0123"));
        assert!(is_instance_id("mi-0123456789abcdef0"));
        assert!(!is_instance_id("x-0123456789abcdef0"));
        assert!(operation("RegisterManagedInstance").is_some());
        assert!(operation("CreateActivation").is_some());
        assert!(operation("SendCommand").is_none());
    }
}
