//! The OpsWorks actions. Each takes the request body, already checked against the operation's
//! input shape (so member types are right and required members present), and returns the
//! output shape as JSON or an error of the model.

use std::time::{Instant, SystemTime};

use serde_json::{Map, Value, json};

use crate::aws::{Aws, Ec2Instance, KeyOwner};
use crate::error::ApiError;
use crate::model::{Shape, shapes};
use crate::policy::{self, Outcome, Source};
use crate::record::Authorization;
use crate::server::{AGENT_INSTALLER_PATH, Shared};
use crate::state::{Instance, Layer, Stack};
use crate::time::iso8601;

/// Who is calling.
pub(crate) struct Caller {
    pub access_key_id: String,
    pub owner: KeyOwner,
    /// The region of the signature's scope.
    pub region: String,
}

/// An action's answer.
pub(crate) struct Handled {
    pub output: Value,
    pub authorization: Option<Authorization>,
}

impl From<Value> for Handled {
    fn from(output: Value) -> Self {
        Handled {
            output,
            authorization: None,
        }
    }
}

fn s(input: &Value, name: &str) -> Option<String> {
    input.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn list(input: &Value, name: &str) -> Option<Vec<String>> {
    input.get(name).and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

fn stack_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Unable to find stack with ID {id}"))
}

fn layer_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Unable to find layer with ID {id}"))
}

fn instance_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Unable to find instance with ID {id}"))
}

/// Copies the members of `shape` present (and not null) in `input`.
fn copy_members(input: &Value, shape: &Shape) -> Map<String, Value> {
    let mut m = Map::new();
    for member in shape.members {
        if let Some(v) = input.get(member.name).filter(|v| !v.is_null()) {
            m.insert(member.name.to_owned(), v.clone());
        }
    }
    m
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, crate::state::State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `action` (already known to be served) on `input`.
pub(crate) async fn dispatch(
    shared: &Shared,
    aws: &Aws,
    caller: &Caller,
    action: &str,
    input: Value,
) -> Result<Handled, ApiError> {
    match action {
        "CreateStack" => create_stack(shared, &input).map(Into::into),
        "DescribeStacks" => describe_stacks(shared, &input).map(Into::into),
        "DescribeStackProvisioningParameters" => {
            describe_provisioning_parameters(shared, &input).map(Into::into)
        }
        "CreateLayer" => create_layer(shared, &input).map(Into::into),
        "DescribeLayers" => describe_layers(shared, &input).map(Into::into),
        "DescribeInstances" => describe_instances(shared, &input).map(Into::into),
        "RegisterInstance" => register_instance(shared, aws, caller, &input).await,
        "DeregisterInstance" => deregister_instance(shared, &input).map(Into::into),
        "AssignInstance" => assign_instance(shared, &input).map(Into::into),
        "UnassignInstance" => unassign_instance(shared, &input).map(Into::into),
        other => Err(ApiError::new(
            400,
            "UnknownOperationException",
            format!("Operation {other} is not served by this endpoint"),
        )),
    }
}

/// `us-east-1`, `eu-west-2`, `us-gov-west-1`, `cn-north-1`.
fn valid_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// A host label: letters, digits and dashes, not starting or ending with a dash, 1 to 63
/// characters.
pub(crate) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn create_stack(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let region = s(input, "Region").unwrap_or_default();
    if !valid_region(&region) {
        return Err(ApiError::validation(format!("Invalid region: {region}")));
    }
    let vpc_id = s(input, "VpcId");
    if let Some(v) = &vpc_id
        && !v.starts_with("vpc-")
    {
        return Err(ApiError::validation(format!("Invalid VPC ID: {v}")));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let arn = format!(
        "arn:aws:opsworks:{region}:{}:stack/{id}/",
        shared.account_id
    );
    let mut fields = copy_members(input, &shapes::CREATE_STACK_REQUEST);
    // What OpsWorks filled in when a request left it out.
    let defaults = [
        ("DefaultOs", json!("Amazon Linux 2")),
        ("HostnameTheme", json!("Layer_Dependent")),
        (
            "ConfigurationManager",
            json!({"Name": "Chef", "Version": "12"}),
        ),
        ("UseCustomCookbooks", json!(false)),
        ("UseOpsworksSecurityGroups", json!(true)),
        ("DefaultRootDeviceType", json!("ebs")),
        ("AgentVersion", json!("LATEST")),
    ];
    for (k, v) in defaults {
        fields.entry(k).or_insert(v);
    }
    // OpsWorks never gave secrets back.
    if let Some(Value::Object(src)) = fields.get_mut("CustomCookbooksSource") {
        for secret in ["Password", "SshKey"] {
            if src.contains_key(secret) {
                src.insert(secret.into(), json!("*****FILTERED*****"));
            }
        }
    }
    fields.insert("StackId".into(), json!(id));
    fields.insert("Arn".into(), json!(arn));
    fields.insert("CreatedAt".into(), json!(iso8601(SystemTime::now())));
    let mut st = lock(shared);
    let seq = st.next_seq();
    st.stacks.insert(
        id.clone(),
        Stack {
            seq,
            region,
            arn,
            vpc_id,
            fields,
        },
    );
    Ok(json!({ "StackId": id }))
}

fn describe_stacks(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let st = lock(shared);
    let stacks: Vec<&Stack> = match list(input, "StackIds") {
        Some(ids) if !ids.is_empty() => ids
            .iter()
            .map(|id| st.stacks.get(id).ok_or_else(|| stack_not_found(id)))
            .collect::<Result<_, _>>()?,
        _ => {
            let mut all: Vec<&Stack> = st.stacks.values().collect();
            all.sort_by_key(|s| s.seq);
            all
        }
    };
    let out: Vec<Value> = stacks
        .iter()
        .map(|s| Value::Object(s.fields.clone()))
        .collect();
    Ok(json!({ "Stacks": out }))
}

fn describe_provisioning_parameters(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "StackId").unwrap_or_default();
    let st = lock(shared);
    let stack = st.stacks.get(&id).ok_or_else(|| stack_not_found(&id))?;
    let url = &shared.url;
    let authority = url.trim_start_matches("http://");
    let port = authority.rsplit(':').next().unwrap_or("80");
    let region = &stack.region;
    let mut params = serde_json::Map::new();
    for (k, v) in [
        ("agent_installer_base_url", format!("{url}/agent")),
        (
            "agent_installer_tgz",
            "opsworks-agent-installer.tgz".to_owned(),
        ),
        (
            "assets_download_bucket",
            format!("opsworks-instance-assets-{region}"),
        ),
        ("instance_service_endpoint", authority.to_owned()),
        ("instance_service_port", port.to_owned()),
        ("instance_service_region", region.clone()),
        ("instance_service_ssl_verify_peer", "false".to_owned()),
        ("verbose", "false".to_owned()),
    ] {
        params.insert(k.to_owned(), json!(v));
    }
    for (k, v) in &shared.extra_parameters {
        params.insert(k.clone(), json!(v));
    }
    Ok(json!({
        "AgentInstallerUrl": format!("{url}{AGENT_INSTALLER_PATH}"),
        "Parameters": params,
    }))
}

fn create_layer(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let stack_id = s(input, "StackId").unwrap_or_default();
    let name = s(input, "Name").unwrap_or_default();
    let shortname = s(input, "Shortname").unwrap_or_default();
    let layer_type = s(input, "Type").unwrap_or_default();
    if shortname.is_empty()
        || shortname.len() > 200
        || !shortname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ApiError::validation(format!(
            "Invalid shortname '{shortname}': use 1 to 200 letters, digits, '-', '_' or '.'"
        )));
    }
    if name.trim().is_empty() {
        return Err(ApiError::validation("The layer name must not be empty"));
    }
    let mut st = lock(shared);
    let stack = st
        .stacks
        .get(&stack_id)
        .ok_or_else(|| stack_not_found(&stack_id))?;
    let region = stack.region.clone();
    if let Some(other) = st
        .layers
        .values()
        .find(|l| l.stack_id == stack_id && (l.shortname == shortname || l.name == name))
    {
        return Err(ApiError::validation(format!(
            "Layer {} of this stack already uses the name '{}' or shortname '{}'",
            other.id, other.name, other.shortname
        )));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut fields = copy_members(input, &shapes::CREATE_LAYER_REQUEST);
    let no_recipes = json!({"Setup": [], "Configure": [], "Deploy": [], "Undeploy": [],
                            "Shutdown": []});
    for (k, v) in [
        ("EnableAutoHealing", json!(true)),
        ("AutoAssignElasticIps", json!(false)),
        ("AutoAssignPublicIps", json!(false)),
        ("InstallUpdatesOnBoot", json!(true)),
        ("UseEbsOptimizedInstances", json!(false)),
        ("Packages", json!([])),
        ("CustomSecurityGroupIds", json!([])),
        ("CustomRecipes", no_recipes.clone()),
    ] {
        fields.entry(k).or_insert(v);
    }
    fields.insert("DefaultRecipes".into(), no_recipes);
    fields.insert(
        "DefaultSecurityGroupNames".into(),
        json!([format!(
            "AWS-OpsWorks-{}",
            if layer_type == "custom" {
                "Custom-Server".to_owned()
            } else {
                layer_type.clone()
            }
        )]),
    );
    fields.insert("LayerId".into(), json!(id));
    fields.insert(
        "Arn".into(),
        json!(format!(
            "arn:aws:opsworks:{region}:{}:layer/{id}",
            shared.account_id
        )),
    );
    fields.insert("CreatedAt".into(), json!(iso8601(SystemTime::now())));
    let seq = st.next_seq();
    st.layers.insert(
        id.clone(),
        Layer {
            seq,
            id: id.clone(),
            stack_id,
            layer_type,
            name,
            shortname,
            fields,
        },
    );
    Ok(json!({ "LayerId": id }))
}

fn describe_layers(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let stack_id = s(input, "StackId");
    let layer_ids = list(input, "LayerIds").filter(|l| !l.is_empty());
    let st = lock(shared);
    if let Some(id) = &stack_id
        && !st.stacks.contains_key(id)
    {
        return Err(stack_not_found(id));
    }
    let layers: Vec<&Layer> = match (&stack_id, &layer_ids) {
        (_, Some(ids)) => ids
            .iter()
            .map(|id| {
                st.layers
                    .get(id)
                    .filter(|l| stack_id.as_ref().is_none_or(|s| *s == l.stack_id))
                    .ok_or_else(|| layer_not_found(id))
            })
            .collect::<Result<_, _>>()?,
        (Some(stack), None) => {
            let mut v: Vec<&Layer> = st
                .layers
                .values()
                .filter(|l| l.stack_id == *stack)
                .collect();
            v.sort_by_key(|l| l.seq);
            v
        }
        (None, None) => {
            return Err(ApiError::validation(
                "Please provide either one or more layer IDs or a stack ID",
            ));
        }
    };
    let out: Vec<Value> = layers
        .iter()
        .map(|l| Value::Object(l.fields.clone()))
        .collect();
    Ok(json!({ "Layers": out }))
}

fn describe_instances(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let stack_id = s(input, "StackId");
    let layer_id = s(input, "LayerId");
    let instance_ids = list(input, "InstanceIds").filter(|l| !l.is_empty());
    let given = [
        stack_id.is_some(),
        layer_id.is_some(),
        instance_ids.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(ApiError::validation(
            "Please provide either one or more instance IDs or one stack ID or one layer ID",
        ));
    }
    let now = Instant::now();
    let st = lock(shared);
    let instances: Vec<&Instance> = if let Some(id) = stack_id {
        if !st.stacks.contains_key(&id) {
            return Err(stack_not_found(&id));
        }
        st.stack_instances(&id)
    } else if let Some(id) = layer_id {
        if !st.layers.contains_key(&id) {
            return Err(layer_not_found(&id));
        }
        let mut v: Vec<&Instance> = st
            .instances
            .values()
            .filter(|i| i.layer_ids.contains(&id))
            .collect();
        v.sort_by_key(|i| i.seq);
        v
    } else {
        instance_ids
            .unwrap_or_default()
            .iter()
            .map(|id| st.instances.get(id).ok_or_else(|| instance_not_found(id)))
            .collect::<Result<_, _>>()?
    };
    let out: Vec<Value> = instances.iter().map(|i| i.to_json(now)).collect();
    Ok(json!({ "Instances": out }))
}

/// The EC2 instance named by an instance identity document, and the region it names.
struct Identity {
    ec2_instance_id: String,
    region: Option<String>,
}

fn parse_identity(input: &Value) -> Result<Option<Identity>, ApiError> {
    let Some(doc) = input
        .pointer("/InstanceIdentity/Document")
        .and_then(Value::as_str)
        .filter(|d| !d.trim().is_empty())
    else {
        return Ok(None);
    };
    let doc: Value = serde_json::from_str(doc).map_err(|e| {
        ApiError::validation(format!(
            "The instance identity document is not valid JSON: {e}"
        ))
    })?;
    let Some(id) = doc.get("instanceId").and_then(Value::as_str) else {
        return Err(ApiError::validation(
            "The instance identity document has no instanceId",
        ));
    };
    if !id.starts_with("i-") {
        return Err(ApiError::validation(format!(
            "Invalid EC2 instance ID in the instance identity document: {id}"
        )));
    }
    Ok(Some(Identity {
        ec2_instance_id: id.to_owned(),
        region: doc.get("region").and_then(Value::as_str).map(str::to_owned),
    }))
}

/// Whether the caller may register on the stack; see the crate docs. Returns how, who
/// registered (for `RegisteredBy`) and the EC2 instance when it was looked up.
async fn authorize(
    aws: &Aws,
    caller: &Caller,
    stack_arn: &str,
    identity: Option<&Identity>,
    ec2_region: &str,
) -> Result<(Authorization, Option<String>, Option<Ec2Instance>), ApiError> {
    const ACTION: &str = "opsworks:RegisterInstance";
    if !aws.iam_configured() {
        return Ok((Authorization::Unchecked, None, None));
    }
    match &caller.owner {
        KeyOwner::IamUser { user_name, .. } => {
            let (user_arn, policies) = aws
                .user_policies(user_name)
                .await
                .map_err(ApiError::internal)?;
            let prefix = format!(
                "User: {user_arn} is not authorized to perform: {ACTION} on resource: {stack_arn}"
            );
            match policy::evaluate(&policies, ACTION, stack_arn, SystemTime::now()) {
                Outcome::Allowed(source) => {
                    let authorization = match source {
                        Source::Managed { arn, group } => Authorization::ManagedPolicy {
                            user: user_name.clone(),
                            policy_arn: arn,
                            group,
                        },
                        Source::Inline { name, group } => Authorization::InlinePolicy {
                            user: user_name.clone(),
                            policy_name: name,
                            group,
                        },
                    };
                    Ok((authorization, Some(user_arn), None))
                }
                Outcome::Denied(source) => Err(ApiError::access_denied(format!(
                    "{prefix} with an explicit deny in {source}"
                ))),
                Outcome::NotAllowed(notes) => {
                    let mut msg = format!(
                        "{prefix} because no identity-based policy allows the {ACTION} action"
                    );
                    if policies.is_empty() {
                        msg.push_str(" (the user has no policies)");
                    }
                    for n in notes {
                        msg.push_str(&format!("; {n}"));
                    }
                    Err(ApiError::access_denied(msg))
                }
            }
        }
        KeyOwner::Unknown | KeyOwner::Static { .. } | KeyOwner::Inactive => {
            let unknown = format!(
                "The access key ID {} does not belong to an IAM user",
                caller.access_key_id
            );
            let Some(identity) = identity else {
                return Err(ApiError::access_denied(format!(
                    "{unknown}, and the request has no instance identity document naming an \
                     EC2 instance with an instance profile"
                )));
            };
            if !aws.ec2_configured() {
                return Err(ApiError::access_denied(format!(
                    "{unknown}, and this endpoint has no EC2 endpoint to check instance \
                     profiles with"
                )));
            }
            let id = &identity.ec2_instance_id;
            let ec2 = aws
                .ec2_instance(ec2_region, id)
                .await
                .map_err(ApiError::internal)?;
            match ec2 {
                None => Err(ApiError::access_denied(format!(
                    "{unknown}, and EC2 instance {id} does not exist in {ec2_region}"
                ))),
                Some(i) => match i.instance_profile_arn.clone() {
                    Some(profile) => Ok((
                        Authorization::InstanceProfile {
                            ec2_instance_id: id.clone(),
                            instance_profile_arn: profile.clone(),
                        },
                        Some(profile),
                        Some(i),
                    )),
                    None => Err(ApiError::access_denied(format!(
                        "{unknown}, and EC2 instance {id} has no IAM instance profile"
                    ))),
                },
            }
        }
    }
}

/// The ValidationExceptions of a registration against the current state.
fn registration_conflicts(
    st: &crate::state::State,
    stack_id: &str,
    hostname: &str,
    identity: Option<&Identity>,
) -> Result<(), ApiError> {
    if let Some(identity) = identity
        && let Some(other) = st
            .instances
            .values()
            .find(|i| i.ec2_instance_id.as_deref() == Some(identity.ec2_instance_id.as_str()))
    {
        return Err(ApiError::validation(format!(
            "EC2 instance {} is already registered as instance {} of stack {}",
            identity.ec2_instance_id, other.id, other.stack_id
        )));
    }
    if let Some(other) = st
        .stack_instances(stack_id)
        .into_iter()
        .find(|i| i.hostname.eq_ignore_ascii_case(hostname))
    {
        return Err(ApiError::validation(format!(
            "Hostname {hostname} is already used by instance {} of this stack",
            other.id
        )));
    }
    Ok(())
}

async fn register_instance(
    shared: &Shared,
    aws: &Aws,
    caller: &Caller,
    input: &Value,
) -> Result<Handled, ApiError> {
    let stack_id = s(input, "StackId").unwrap_or_default();
    let (stack_arn, stack_region, stack_vpc) = {
        let st = lock(shared);
        let stack = st
            .stacks
            .get(&stack_id)
            .ok_or_else(|| stack_not_found(&stack_id))?;
        (
            stack.arn.clone(),
            stack.region.clone(),
            stack.vpc_id.clone(),
        )
    };
    let identity = parse_identity(input)?;
    let ec2_region = identity
        .as_ref()
        .and_then(|i| i.region.clone())
        .unwrap_or_else(|| stack_region.clone());
    let (authorization, registered_by, mut ec2) =
        authorize(aws, caller, &stack_arn, identity.as_ref(), &ec2_region).await?;

    let id = uuid::Uuid::new_v4().to_string();
    let hostname = s(input, "Hostname").unwrap_or_else(|| format!("instance-{}", &id[..8]));
    if !valid_hostname(&hostname) {
        return Err(ApiError::validation(format!(
            "Invalid hostname '{hostname}': use 1 to 63 letters, digits or dashes, not starting \
             or ending with a dash"
        )));
    }
    {
        let st = lock(shared);
        registration_conflicts(&st, &stack_id, &hostname, identity.as_ref())?;
    }
    if let Some(identity) = &identity
        && ec2.is_none()
        && aws.ec2_configured()
    {
        ec2 = Some(
            aws.ec2_instance(&ec2_region, &identity.ec2_instance_id)
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "EC2 instance {} does not exist in {ec2_region}",
                        identity.ec2_instance_id
                    ))
                })?,
        );
    }
    if let (Some(want), Some(i)) = (&stack_vpc, &ec2)
        && i.vpc_id.as_ref() != Some(want)
    {
        return Err(ApiError::validation(format!(
            "EC2 instance {} is in {}, not in the stack's VPC {want}",
            identity
                .as_ref()
                .map(|i| i.ec2_instance_id.as_str())
                .unwrap_or(""),
            i.vpc_id.as_deref().unwrap_or("no VPC"),
        )));
    }

    let mut fields = Map::new();
    fields.insert("InstanceId".into(), json!(id));
    fields.insert(
        "Arn".into(),
        json!(format!(
            "arn:aws:opsworks:{stack_region}:{}:instance/{id}",
            shared.account_id
        )),
    );
    fields.insert("StackId".into(), json!(stack_id));
    fields.insert("Hostname".into(), json!(hostname));
    fields.insert("CreatedAt".into(), json!(iso8601(SystemTime::now())));
    fields.insert("AgentVersion".into(), json!("LATEST"));
    for k in ["PublicIp", "PrivateIp"] {
        if let Some(v) = s(input, k) {
            fields.insert(k.into(), json!(v));
        }
    }
    if let Some(by) = &registered_by {
        fields.insert("RegisteredBy".into(), json!(by));
    }
    let infrastructure_class = if identity.is_some() {
        "ec2"
    } else {
        "on-premises"
    };
    fields.insert("InfrastructureClass".into(), json!(infrastructure_class));
    if let Some(identity) = &identity {
        fields.insert("Ec2InstanceId".into(), json!(identity.ec2_instance_id));
    }
    if let Some(i) = &ec2 {
        for (k, v) in [
            ("AvailabilityZone", &i.availability_zone),
            ("InstanceType", &i.instance_type),
            ("SubnetId", &i.subnet_id),
            ("AmiId", &i.image_id),
            ("PrivateDns", &i.private_dns),
            ("PublicDns", &i.public_dns),
            ("InstanceProfileArn", &i.instance_profile_arn),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                fields.insert(k.into(), json!(v));
            }
        }
        if let Some(a) = i
            .architecture
            .as_deref()
            .filter(|a| ["x86_64", "i386"].contains(a))
        {
            fields.insert("Architecture".into(), json!(a));
        }
    }

    let mut st = lock(shared);
    if !st.stacks.contains_key(&stack_id) {
        return Err(stack_not_found(&stack_id));
    }
    // Again, under the lock: another registration may have raced this one.
    registration_conflicts(&st, &stack_id, &hostname, identity.as_ref())?;
    let seq = st.next_seq();
    let registered_at = Instant::now();
    let ready_at = crate::state::ready_time(registered_at, st.registration_delay);
    st.instances.insert(
        id.clone(),
        Instance {
            seq,
            id: id.clone(),
            stack_id,
            hostname,
            ec2_instance_id: identity.map(|i| i.ec2_instance_id),
            infrastructure_class: infrastructure_class.to_owned(),
            layer_ids: Vec::new(),
            registered_at,
            ready_at,
            forced_status: None,
            authorization: Some(authorization.clone()),
            fields,
        },
    );
    Ok(Handled {
        output: json!({ "InstanceId": id }),
        authorization: Some(authorization),
    })
}

fn deregister_instance(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "InstanceId").unwrap_or_default();
    let mut st = lock(shared);
    st.instances
        .remove(&id)
        .ok_or_else(|| instance_not_found(&id))?;
    Ok(json!({}))
}

fn assign_instance(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "InstanceId").unwrap_or_default();
    let layer_ids = list(input, "LayerIds").unwrap_or_default();
    let mut st = lock(shared);
    let instance = st
        .instances
        .get(&id)
        .ok_or_else(|| instance_not_found(&id))?;
    for layer_id in &layer_ids {
        let layer = st
            .layers
            .get(layer_id)
            .ok_or_else(|| layer_not_found(layer_id))?;
        if layer.stack_id != instance.stack_id {
            return Err(ApiError::validation(format!(
                "Layer {layer_id} belongs to stack {}, not to the instance's stack {}",
                layer.stack_id, instance.stack_id
            )));
        }
        if instance.infrastructure_class == "ec2" && layer.layer_type != "custom" {
            return Err(ApiError::validation(format!(
                "Registered EC2 instances can be assigned only to custom layers; layer \
                 {layer_id} is of type {}",
                layer.layer_type
            )));
        }
    }
    if let Some(instance) = st.instances.get_mut(&id) {
        for l in layer_ids {
            if !instance.layer_ids.contains(&l) {
                instance.layer_ids.push(l);
            }
        }
    }
    Ok(json!({}))
}

fn unassign_instance(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "InstanceId").unwrap_or_default();
    let mut st = lock(shared);
    let instance = st
        .instances
        .get_mut(&id)
        .ok_or_else(|| instance_not_found(&id))?;
    instance.layer_ids.clear();
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_region("us-east-1"));
        assert!(valid_region("us-gov-west-1"));
        assert!(!valid_region("moon"));
        assert!(!valid_region("us-east-x"));
        assert!(valid_hostname("web-1"));
        assert!(!valid_hostname("-web"));
        assert!(!valid_hostname("web_1"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }
}
