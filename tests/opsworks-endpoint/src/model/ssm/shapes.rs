//! The input shapes of the Systems Manager operations this endpoint serves. Those of the public
//! operations are the official SSM service model's (API 2014-11-06, botocore 1.34.0's
//! `ssm/2014-11-06/service-2.json`): member names, types, enums and required members, written out
//! from that model; the model-conformance tests compare them with it member by member. The
//! agent's private operations are not in that model: theirs are written out from the model the
//! SSM agent is built with (its vendored `aws-sdk-go/service/ssm/api.go`).

use crate::model::{Member, Shape, Ty};

/// The `Tag` shape.
pub const TAG: Shape = Shape {
    name: "Tag",
    members: &[
        Member {
            name: "Key",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Value",
            ty: Ty::String,
            required: true,
        },
    ],
};

/// The `RegistrationMetadataItem` shape.
pub const REGISTRATION_METADATA_ITEM: Shape = Shape {
    name: "RegistrationMetadataItem",
    members: &[
        Member {
            name: "Key",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Value",
            ty: Ty::String,
            required: true,
        },
    ],
};

/// The `CreateActivationRequest` shape.
pub const CREATE_ACTIVATION_REQUEST: Shape = Shape {
    name: "CreateActivationRequest",
    members: &[
        Member {
            name: "Description",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "DefaultInstanceName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "IamRole",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "RegistrationLimit",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "ExpirationDate",
            ty: Ty::Timestamp,
            required: false,
        },
        Member {
            name: "Tags",
            ty: Ty::List(&Ty::Structure(&TAG)),
            required: false,
        },
        Member {
            name: "RegistrationMetadata",
            ty: Ty::List(&Ty::Structure(&REGISTRATION_METADATA_ITEM)),
            required: false,
        },
    ],
};

/// The `DescribeActivationsFilter` shape.
pub const DESCRIBE_ACTIVATIONS_FILTER: Shape = Shape {
    name: "DescribeActivationsFilter",
    members: &[
        Member {
            name: "FilterKey",
            ty: Ty::Enum(&["ActivationIds", "DefaultInstanceName", "IamRole"]),
            required: false,
        },
        Member {
            name: "FilterValues",
            ty: Ty::List(&Ty::String),
            required: false,
        },
    ],
};

/// The `DescribeActivationsRequest` shape.
pub const DESCRIBE_ACTIVATIONS_REQUEST: Shape = Shape {
    name: "DescribeActivationsRequest",
    members: &[
        Member {
            name: "Filters",
            ty: Ty::List(&Ty::Structure(&DESCRIBE_ACTIVATIONS_FILTER)),
            required: false,
        },
        Member {
            name: "MaxResults",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "NextToken",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `DeleteActivationRequest` shape.
pub const DELETE_ACTIVATION_REQUEST: Shape = Shape {
    name: "DeleteActivationRequest",
    members: &[Member {
        name: "ActivationId",
        ty: Ty::String,
        required: true,
    }],
};

/// The `InstanceInformationFilter` shape.
pub const INSTANCE_INFORMATION_FILTER: Shape = Shape {
    name: "InstanceInformationFilter",
    members: &[
        Member {
            name: "key",
            ty: Ty::Enum(&[
                "InstanceIds",
                "AgentVersion",
                "PingStatus",
                "PlatformTypes",
                "ActivationIds",
                "IamRole",
                "ResourceType",
                "AssociationStatus",
            ]),
            required: true,
        },
        Member {
            name: "valueSet",
            ty: Ty::List(&Ty::String),
            required: true,
        },
    ],
};

/// The `InstanceInformationStringFilter` shape.
pub const INSTANCE_INFORMATION_STRING_FILTER: Shape = Shape {
    name: "InstanceInformationStringFilter",
    members: &[
        Member {
            name: "Key",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Values",
            ty: Ty::List(&Ty::String),
            required: true,
        },
    ],
};

/// The `DescribeInstanceInformationRequest` shape.
pub const DESCRIBE_INSTANCE_INFORMATION_REQUEST: Shape = Shape {
    name: "DescribeInstanceInformationRequest",
    members: &[
        Member {
            name: "InstanceInformationFilterList",
            ty: Ty::List(&Ty::Structure(&INSTANCE_INFORMATION_FILTER)),
            required: false,
        },
        Member {
            name: "Filters",
            ty: Ty::List(&Ty::Structure(&INSTANCE_INFORMATION_STRING_FILTER)),
            required: false,
        },
        Member {
            name: "MaxResults",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "NextToken",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `DeregisterManagedInstanceRequest` shape.
pub const DEREGISTER_MANAGED_INSTANCE_REQUEST: Shape = Shape {
    name: "DeregisterManagedInstanceRequest",
    members: &[Member {
        name: "InstanceId",
        ty: Ty::String,
        required: true,
    }],
};

/// The `AddTagsToResourceRequest` shape.
pub const ADD_TAGS_TO_RESOURCE_REQUEST: Shape = Shape {
    name: "AddTagsToResourceRequest",
    members: &[
        Member {
            name: "ResourceType",
            ty: Ty::Enum(&[
                "Document",
                "ManagedInstance",
                "MaintenanceWindow",
                "Parameter",
                "PatchBaseline",
                "OpsItem",
                "OpsMetadata",
                "Automation",
                "Association",
            ]),
            required: true,
        },
        Member {
            name: "ResourceId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Tags",
            ty: Ty::List(&Ty::Structure(&TAG)),
            required: true,
        },
    ],
};

/// The `RemoveTagsFromResourceRequest` shape.
pub const REMOVE_TAGS_FROM_RESOURCE_REQUEST: Shape = Shape {
    name: "RemoveTagsFromResourceRequest",
    members: &[
        Member {
            name: "ResourceType",
            ty: Ty::Enum(&[
                "Document",
                "ManagedInstance",
                "MaintenanceWindow",
                "Parameter",
                "PatchBaseline",
                "OpsItem",
                "OpsMetadata",
                "Automation",
                "Association",
            ]),
            required: true,
        },
        Member {
            name: "ResourceId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "TagKeys",
            ty: Ty::List(&Ty::String),
            required: true,
        },
    ],
};

/// The `ListTagsForResourceRequest` shape.
pub const LIST_TAGS_FOR_RESOURCE_REQUEST: Shape = Shape {
    name: "ListTagsForResourceRequest",
    members: &[
        Member {
            name: "ResourceType",
            ty: Ty::Enum(&[
                "Document",
                "ManagedInstance",
                "MaintenanceWindow",
                "Parameter",
                "PatchBaseline",
                "OpsItem",
                "OpsMetadata",
                "Automation",
                "Association",
            ]),
            required: true,
        },
        Member {
            name: "ResourceId",
            ty: Ty::String,
            required: true,
        },
    ],
};

/// The `RegisterManagedInstanceRequest` shape (the agent's model: `RegisterManagedInstanceInput`).
pub const REGISTER_MANAGED_INSTANCE_REQUEST: Shape = Shape {
    name: "RegisterManagedInstanceRequest",
    members: &[
        Member {
            name: "ActivationCode",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "ActivationId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Fingerprint",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "IamRole",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "PublicKey",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "PublicKeyType",
            ty: Ty::Enum(&["Rsa"]),
            required: false,
        },
        Member {
            name: "Tags",
            ty: Ty::List(&Ty::Structure(&TAG)),
            required: false,
        },
    ],
};

/// The `UpdateInstanceInformationRequest` shape (the agent's model:
/// `UpdateInstanceInformationInput`), the agent's heartbeat.
pub const UPDATE_INSTANCE_INFORMATION_REQUEST: Shape = Shape {
    name: "UpdateInstanceInformationRequest",
    members: &[
        Member {
            name: "AgentName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "AgentStatus",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "AgentVersion",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "AvailabilityZone",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "AvailabilityZoneId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "ComputerName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "IPAddress",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "InstanceId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "PlatformName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "PlatformType",
            ty: Ty::Enum(&["Windows", "Linux", "MacOS"]),
            required: false,
        },
        Member {
            name: "PlatformVersion",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "SSMConnectionChannel",
            ty: Ty::String,
            required: false,
        },
    ],
};
