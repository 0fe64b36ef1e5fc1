//! The input shapes of the operations this endpoint serves, as the official OpsWorks service
//! model (API 2013-02-18, botocore's `opsworks/2013-02-18/service-2.json`) defines them:
//! member names, types, enums and required members. Written out from that model; the
//! model-conformance tests compare them with it member by member.

use super::{Member, Shape, Ty};

/// The `StackConfigurationManager` shape.
pub const STACK_CONFIGURATION_MANAGER: Shape = Shape {
    name: "StackConfigurationManager",
    members: &[
        Member {
            name: "Name",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Version",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `ChefConfiguration` shape.
pub const CHEF_CONFIGURATION: Shape = Shape {
    name: "ChefConfiguration",
    members: &[
        Member {
            name: "ManageBerkshelf",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "BerkshelfVersion",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `Source` shape.
pub const SOURCE: Shape = Shape {
    name: "Source",
    members: &[
        Member {
            name: "Type",
            ty: Ty::Enum(&["git", "svn", "archive", "s3"]),
            required: false,
        },
        Member {
            name: "Url",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Username",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Password",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "SshKey",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Revision",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `CreateStackRequest` shape.
pub const CREATE_STACK_REQUEST: Shape = Shape {
    name: "CreateStackRequest",
    members: &[
        Member {
            name: "Name",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Region",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "VpcId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Attributes",
            ty: Ty::Map(&Ty::String),
            required: false,
        },
        Member {
            name: "ServiceRoleArn",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "DefaultInstanceProfileArn",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "DefaultOs",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "HostnameTheme",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "DefaultAvailabilityZone",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "DefaultSubnetId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "CustomJson",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "ConfigurationManager",
            ty: Ty::Structure(&STACK_CONFIGURATION_MANAGER),
            required: false,
        },
        Member {
            name: "ChefConfiguration",
            ty: Ty::Structure(&CHEF_CONFIGURATION),
            required: false,
        },
        Member {
            name: "UseCustomCookbooks",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "UseOpsworksSecurityGroups",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "CustomCookbooksSource",
            ty: Ty::Structure(&SOURCE),
            required: false,
        },
        Member {
            name: "DefaultSshKeyName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "DefaultRootDeviceType",
            ty: Ty::Enum(&["ebs", "instance-store"]),
            required: false,
        },
        Member {
            name: "AgentVersion",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `DescribeStacksRequest` shape.
pub const DESCRIBE_STACKS_REQUEST: Shape = Shape {
    name: "DescribeStacksRequest",
    members: &[Member {
        name: "StackIds",
        ty: Ty::List(&Ty::String),
        required: false,
    }],
};

/// The `DescribeStackProvisioningParametersRequest` shape.
pub const DESCRIBE_STACK_PROVISIONING_PARAMETERS_REQUEST: Shape = Shape {
    name: "DescribeStackProvisioningParametersRequest",
    members: &[Member {
        name: "StackId",
        ty: Ty::String,
        required: true,
    }],
};

/// The `CloudWatchLogsLogStream` shape.
pub const CLOUD_WATCH_LOGS_LOG_STREAM: Shape = Shape {
    name: "CloudWatchLogsLogStream",
    members: &[
        Member {
            name: "LogGroupName",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "DatetimeFormat",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "TimeZone",
            ty: Ty::Enum(&["LOCAL", "UTC"]),
            required: false,
        },
        Member {
            name: "File",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "FileFingerprintLines",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "MultiLineStartPattern",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "InitialPosition",
            ty: Ty::Enum(&["start_of_file", "end_of_file"]),
            required: false,
        },
        Member {
            name: "Encoding",
            ty: Ty::Enum(&[
                "ascii",
                "big5",
                "big5hkscs",
                "cp037",
                "cp424",
                "cp437",
                "cp500",
                "cp720",
                "cp737",
                "cp775",
                "cp850",
                "cp852",
                "cp855",
                "cp856",
                "cp857",
                "cp858",
                "cp860",
                "cp861",
                "cp862",
                "cp863",
                "cp864",
                "cp865",
                "cp866",
                "cp869",
                "cp874",
                "cp875",
                "cp932",
                "cp949",
                "cp950",
                "cp1006",
                "cp1026",
                "cp1140",
                "cp1250",
                "cp1251",
                "cp1252",
                "cp1253",
                "cp1254",
                "cp1255",
                "cp1256",
                "cp1257",
                "cp1258",
                "euc_jp",
                "euc_jis_2004",
                "euc_jisx0213",
                "euc_kr",
                "gb2312",
                "gbk",
                "gb18030",
                "hz",
                "iso2022_jp",
                "iso2022_jp_1",
                "iso2022_jp_2",
                "iso2022_jp_2004",
                "iso2022_jp_3",
                "iso2022_jp_ext",
                "iso2022_kr",
                "latin_1",
                "iso8859_2",
                "iso8859_3",
                "iso8859_4",
                "iso8859_5",
                "iso8859_6",
                "iso8859_7",
                "iso8859_8",
                "iso8859_9",
                "iso8859_10",
                "iso8859_13",
                "iso8859_14",
                "iso8859_15",
                "iso8859_16",
                "johab",
                "koi8_r",
                "koi8_u",
                "mac_cyrillic",
                "mac_greek",
                "mac_iceland",
                "mac_latin2",
                "mac_roman",
                "mac_turkish",
                "ptcp154",
                "shift_jis",
                "shift_jis_2004",
                "shift_jisx0213",
                "utf_32",
                "utf_32_be",
                "utf_32_le",
                "utf_16",
                "utf_16_be",
                "utf_16_le",
                "utf_7",
                "utf_8",
                "utf_8_sig",
            ]),
            required: false,
        },
        Member {
            name: "BufferDuration",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "BatchCount",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "BatchSize",
            ty: Ty::Integer,
            required: false,
        },
    ],
};

/// The `CloudWatchLogsConfiguration` shape.
pub const CLOUD_WATCH_LOGS_CONFIGURATION: Shape = Shape {
    name: "CloudWatchLogsConfiguration",
    members: &[
        Member {
            name: "Enabled",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "LogStreams",
            ty: Ty::List(&Ty::Structure(&CLOUD_WATCH_LOGS_LOG_STREAM)),
            required: false,
        },
    ],
};

/// The `VolumeConfiguration` shape.
pub const VOLUME_CONFIGURATION: Shape = Shape {
    name: "VolumeConfiguration",
    members: &[
        Member {
            name: "MountPoint",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "RaidLevel",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "NumberOfDisks",
            ty: Ty::Integer,
            required: true,
        },
        Member {
            name: "Size",
            ty: Ty::Integer,
            required: true,
        },
        Member {
            name: "VolumeType",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Iops",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "Encrypted",
            ty: Ty::Boolean,
            required: false,
        },
    ],
};

/// The `Recipes` shape.
pub const RECIPES: Shape = Shape {
    name: "Recipes",
    members: &[
        Member {
            name: "Setup",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "Configure",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "Deploy",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "Undeploy",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "Shutdown",
            ty: Ty::List(&Ty::String),
            required: false,
        },
    ],
};

/// The `ShutdownEventConfiguration` shape.
pub const SHUTDOWN_EVENT_CONFIGURATION: Shape = Shape {
    name: "ShutdownEventConfiguration",
    members: &[
        Member {
            name: "ExecutionTimeout",
            ty: Ty::Integer,
            required: false,
        },
        Member {
            name: "DelayUntilElbConnectionsDrained",
            ty: Ty::Boolean,
            required: false,
        },
    ],
};

/// The `LifecycleEventConfiguration` shape.
pub const LIFECYCLE_EVENT_CONFIGURATION: Shape = Shape {
    name: "LifecycleEventConfiguration",
    members: &[Member {
        name: "Shutdown",
        ty: Ty::Structure(&SHUTDOWN_EVENT_CONFIGURATION),
        required: false,
    }],
};

/// The `CreateLayerRequest` shape.
pub const CREATE_LAYER_REQUEST: Shape = Shape {
    name: "CreateLayerRequest",
    members: &[
        Member {
            name: "StackId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Type",
            ty: Ty::Enum(&[
                "aws-flow-ruby",
                "ecs-cluster",
                "java-app",
                "lb",
                "web",
                "php-app",
                "rails-app",
                "nodejs-app",
                "memcached",
                "db-master",
                "monitoring-master",
                "custom",
            ]),
            required: true,
        },
        Member {
            name: "Name",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Shortname",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Attributes",
            ty: Ty::Map(&Ty::String),
            required: false,
        },
        Member {
            name: "CloudWatchLogsConfiguration",
            ty: Ty::Structure(&CLOUD_WATCH_LOGS_CONFIGURATION),
            required: false,
        },
        Member {
            name: "CustomInstanceProfileArn",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "CustomJson",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "CustomSecurityGroupIds",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "Packages",
            ty: Ty::List(&Ty::String),
            required: false,
        },
        Member {
            name: "VolumeConfigurations",
            ty: Ty::List(&Ty::Structure(&VOLUME_CONFIGURATION)),
            required: false,
        },
        Member {
            name: "EnableAutoHealing",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "AutoAssignElasticIps",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "AutoAssignPublicIps",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "CustomRecipes",
            ty: Ty::Structure(&RECIPES),
            required: false,
        },
        Member {
            name: "InstallUpdatesOnBoot",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "UseEbsOptimizedInstances",
            ty: Ty::Boolean,
            required: false,
        },
        Member {
            name: "LifecycleEventConfiguration",
            ty: Ty::Structure(&LIFECYCLE_EVENT_CONFIGURATION),
            required: false,
        },
    ],
};

/// The `DescribeLayersRequest` shape.
pub const DESCRIBE_LAYERS_REQUEST: Shape = Shape {
    name: "DescribeLayersRequest",
    members: &[
        Member {
            name: "StackId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "LayerIds",
            ty: Ty::List(&Ty::String),
            required: false,
        },
    ],
};

/// The `DescribeInstancesRequest` shape.
pub const DESCRIBE_INSTANCES_REQUEST: Shape = Shape {
    name: "DescribeInstancesRequest",
    members: &[
        Member {
            name: "StackId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "LayerId",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "InstanceIds",
            ty: Ty::List(&Ty::String),
            required: false,
        },
    ],
};

/// The `InstanceIdentity` shape.
pub const INSTANCE_IDENTITY: Shape = Shape {
    name: "InstanceIdentity",
    members: &[
        Member {
            name: "Document",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "Signature",
            ty: Ty::String,
            required: false,
        },
    ],
};

/// The `RegisterInstanceRequest` shape.
pub const REGISTER_INSTANCE_REQUEST: Shape = Shape {
    name: "RegisterInstanceRequest",
    members: &[
        Member {
            name: "StackId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "Hostname",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "PublicIp",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "PrivateIp",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "RsaPublicKey",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "RsaPublicKeyFingerprint",
            ty: Ty::String,
            required: false,
        },
        Member {
            name: "InstanceIdentity",
            ty: Ty::Structure(&INSTANCE_IDENTITY),
            required: false,
        },
    ],
};

/// The `DeregisterInstanceRequest` shape.
pub const DEREGISTER_INSTANCE_REQUEST: Shape = Shape {
    name: "DeregisterInstanceRequest",
    members: &[Member {
        name: "InstanceId",
        ty: Ty::String,
        required: true,
    }],
};

/// The `AssignInstanceRequest` shape.
pub const ASSIGN_INSTANCE_REQUEST: Shape = Shape {
    name: "AssignInstanceRequest",
    members: &[
        Member {
            name: "InstanceId",
            ty: Ty::String,
            required: true,
        },
        Member {
            name: "LayerIds",
            ty: Ty::List(&Ty::String),
            required: true,
        },
    ],
};

/// The `UnassignInstanceRequest` shape.
pub const UNASSIGN_INSTANCE_REQUEST: Shape = Shape {
    name: "UnassignInstanceRequest",
    members: &[Member {
        name: "InstanceId",
        ty: Ty::String,
        required: true,
    }],
};
