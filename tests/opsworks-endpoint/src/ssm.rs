//! The Systems Manager actions: hybrid activations, the managed nodes registered with them (and
//! EC2 instances whose agent uses its instance profile), their heartbeats and tags. Each takes
//! the request body, already checked against the operation's input shape, and returns the output
//! shape as JSON or an error of the model (see [`crate::model::ssm`]).
//!
//! A node's `PingStatus` is `Online` while its agent's heartbeats (`UpdateInstanceInformation`)
//! come, and `ConnectionLost` once none came for [`crate::Config::ssm_connection_lost_after`]
//! (or none ever did). A deregistered node is gone, and the endpoint refuses its heartbeats from
//! then on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use rand::RngExt;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::aws::Aws;
use crate::error::ApiError;
use crate::handlers::Caller;
use crate::model::ssm::{
    EC2_INSTANCE, MANAGED_INSTANCE, PING_CONNECTION_LOST, PING_ONLINE, is_ec2_instance_id,
    is_instance_id, is_managed_instance_id,
};
use crate::server::Shared;
use crate::ssm_standin::SsmStandIn;

/// Longest an activation may last, as AWS documents: 30 days.
const MAX_ACTIVATION_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// How long an activation lasts when the request gives no expiration date: 24 hours.
const DEFAULT_ACTIVATION_LIFETIME: Duration = Duration::from_secs(86_400);
/// Most tags a resource may have, as AWS allows.
const MAX_TAGS: usize = 50;
/// Characters of activation codes.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) struct Activation {
    pub seq: u64,
    pub id: String,
    pub code: String,
    pub description: Option<String>,
    pub default_instance_name: Option<String>,
    pub iam_role: String,
    pub registration_limit: i64,
    pub registrations_count: i64,
    pub expiration: SystemTime,
    pub created: SystemTime,
    pub tags: Vec<(String, String)>,
}

impl Activation {
    fn expired(&self, now: SystemTime) -> bool {
        now >= self.expiration
    }

    /// The `Activation` shape as DescribeActivations returns it (never the code).
    fn to_json(&self, now: SystemTime) -> Value {
        let mut m = Map::new();
        m.insert("ActivationId".into(), json!(self.id));
        if let Some(d) = &self.description {
            m.insert("Description".into(), json!(d));
        }
        if let Some(n) = &self.default_instance_name {
            m.insert("DefaultInstanceName".into(), json!(n));
        }
        m.insert("IamRole".into(), json!(self.iam_role));
        m.insert("RegistrationLimit".into(), json!(self.registration_limit));
        m.insert("RegistrationsCount".into(), json!(self.registrations_count));
        m.insert("ExpirationDate".into(), json!(epoch(self.expiration)));
        m.insert("Expired".into(), json!(self.expired(now)));
        m.insert("CreatedDate".into(), json!(epoch(self.created)));
        m.insert("Tags".into(), tags_json(&self.tags));
        Value::Object(m)
    }

    fn view(&self, now: SystemTime) -> SsmActivationView {
        SsmActivationView {
            activation_id: self.id.clone(),
            activation_code: self.code.clone(),
            iam_role: self.iam_role.clone(),
            default_instance_name: self.default_instance_name.clone(),
            registration_limit: self.registration_limit,
            registrations_count: self.registrations_count,
            expired: self.expired(now),
        }
    }
}

pub(crate) struct Node {
    pub seq: u64,
    pub id: String,
    /// [`MANAGED_INSTANCE`] or [`EC2_INSTANCE`].
    pub resource_type: &'static str,
    pub activation_id: Option<String>,
    pub iam_role: Option<String>,
    pub name: Option<String>,
    pub registered: SystemTime,
    /// The last heartbeat: when (for the answer), and when on the monotonic clock (for the
    /// ping status).
    pub last_ping: Option<(SystemTime, Instant)>,
    /// What the agent reported: `AgentVersion`, `PlatformType`, `PlatformName`,
    /// `PlatformVersion`, `IPAddress`, `ComputerName`.
    pub reported: Map<String, Value>,
    pub tags: Vec<(String, String)>,
}

impl Node {
    fn ping_status(&self, now: Instant, lost_after: Duration) -> &'static str {
        match self.last_ping {
            Some((_, at)) if now.saturating_duration_since(at) < lost_after => PING_ONLINE,
            _ => PING_CONNECTION_LOST,
        }
    }

    /// The `InstanceInformation` shape as DescribeInstanceInformation returns it.
    fn to_json(&self, now: Instant, lost_after: Duration) -> Value {
        let mut m = Map::new();
        m.insert("InstanceId".into(), json!(self.id));
        m.insert(
            "PingStatus".into(),
            json!(self.ping_status(now, lost_after)),
        );
        if let Some((at, _)) = self.last_ping {
            m.insert("LastPingDateTime".into(), json!(epoch(at)));
        }
        for (k, v) in &self.reported {
            m.insert(k.clone(), v.clone());
        }
        if let Some(a) = &self.activation_id {
            m.insert("ActivationId".into(), json!(a));
        }
        if let Some(r) = &self.iam_role {
            m.insert("IamRole".into(), json!(r));
        }
        if self.resource_type == MANAGED_INSTANCE {
            m.insert("RegistrationDate".into(), json!(epoch(self.registered)));
        }
        m.insert("ResourceType".into(), json!(self.resource_type));
        if let Some(n) = &self.name {
            m.insert("Name".into(), json!(n));
        }
        m.insert("SourceId".into(), json!(self.id));
        m.insert(
            "SourceType".into(),
            json!(if self.resource_type == MANAGED_INSTANCE {
                "AWS::SSM::ManagedInstance"
            } else {
                "AWS::EC2::Instance"
            }),
        );
        Value::Object(m)
    }

    fn view(&self, now: Instant, lost_after: Duration) -> SsmNodeView {
        SsmNodeView {
            instance_id: self.id.clone(),
            ping_status: self.ping_status(now, lost_after).to_owned(),
            resource_type: self.resource_type.to_owned(),
            activation_id: self.activation_id.clone(),
            iam_role: self.iam_role.clone(),
            last_ping: self.last_ping.map(|(at, _)| at),
        }
    }
}

/// An SSM node as a test sees it ([`crate::EndpointHandle::ssm_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SsmNodeView {
    /// `mi-…` (registered with an activation) or `i-…` (an EC2 instance).
    pub instance_id: String,
    /// `Online` or `ConnectionLost`, now.
    pub ping_status: String,
    /// `ManagedInstance` or `EC2Instance`.
    pub resource_type: String,
    /// The activation it registered with (`ManagedInstance` only).
    pub activation_id: Option<String>,
    /// The activation's IAM role, or the EC2 instance profile's.
    pub iam_role: Option<String>,
    /// When its last heartbeat came, if any did.
    #[serde(serialize_with = "unix_millis")]
    pub last_ping: Option<SystemTime>,
}

fn unix_millis<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_u64(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        ),
        None => s.serialize_none(),
    }
}

/// An activation as a test sees it ([`crate::EndpointHandle::ssm_activations`]), its code
/// included (which no API answer gives back), so that tests can look for leaks of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SsmActivationView {
    /// The activation ID (a UUID).
    pub activation_id: String,
    /// The activation code (20 characters).
    pub activation_code: String,
    /// The IAM role of its nodes.
    pub iam_role: String,
    /// The name of its nodes.
    pub default_instance_name: Option<String>,
    /// How many nodes may register with it.
    pub registration_limit: i64,
    /// How many did.
    pub registrations_count: i64,
    /// Whether it expired.
    pub expired: bool,
}

/// The SSM part of the endpoint's state.
pub(crate) struct SsmState {
    pub activations: BTreeMap<String, Activation>,
    pub nodes: BTreeMap<String, Node>,
    /// Deregistered nodes: their heartbeats are refused.
    pub deregistered: BTreeSet<String>,
    pub connection_lost_after: Duration,
    pub standin: Option<SsmStandIn>,
    seq: u64,
}

impl SsmState {
    pub fn new(connection_lost_after: Duration, standin: Option<SsmStandIn>) -> Self {
        SsmState {
            activations: BTreeMap::new(),
            nodes: BTreeMap::new(),
            deregistered: BTreeSet::new(),
            connection_lost_after,
            standin,
            seq: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The nodes, in registration order.
    pub fn node_views(&self) -> Vec<SsmNodeView> {
        let now = Instant::now();
        let mut v: Vec<&Node> = self.nodes.values().collect();
        v.sort_by_key(|n| n.seq);
        v.iter()
            .map(|n| n.view(now, self.connection_lost_after))
            .collect()
    }

    /// The activations, in creation order.
    pub fn activation_views(&self) -> Vec<SsmActivationView> {
        let now = SystemTime::now();
        let mut v: Vec<&Activation> = self.activations.values().collect();
        v.sort_by_key(|a| a.seq);
        v.iter().map(|a| a.view(now)).collect()
    }
}

/// Seconds since the epoch, as AWS JSON 1.1 writes timestamps.
fn epoch(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_millis() as f64) / 1000.0,
        Err(_) => 0.0,
    }
}

fn from_epoch(secs: f64) -> Option<SystemTime> {
    (secs.is_finite() && (0.0..1e11).contains(&secs))
        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect(),
    )
}

fn s(input: &Value, name: &str) -> Option<String> {
    input.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn tags_of(input: &Value) -> Vec<(String, String)> {
    input
        .get("Tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    Some((
                        t.get("Key")?.as_str()?.to_owned(),
                        t.get("Value")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, crate::state::State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// AWS's message for a value outside a member's range.
fn out_of_range(member: &str, value: i64, min: i64, max: i64) -> Option<String> {
    if value < min {
        Some(format!(
            "Value '{value}' at '{member}' failed to satisfy constraint: Member must have value \
             greater than or equal to {min}"
        ))
    } else if value > max {
        Some(format!(
            "Value '{value}' at '{member}' failed to satisfy constraint: Member must have value \
             less than or equal to {max}"
        ))
    } else {
        None
    }
}

/// AWS's message for a string longer than a member allows.
fn too_long(member: &str, value: &str, max: usize) -> Option<String> {
    (value.chars().count() > max).then(|| {
        format!(
            "Value '{value}' at '{member}' failed to satisfy constraint: Member must have \
             length less than or equal to {max}"
        )
    })
}

/// `ValidationException` listing `problems`, or nothing when there are none.
fn validate(problems: Vec<Option<String>>) -> Result<(), ApiError> {
    let problems: Vec<String> = problems.into_iter().flatten().collect();
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

fn max_results(input: &Value, min: i64, max: i64) -> Result<usize, ApiError> {
    match input.get("MaxResults").and_then(Value::as_i64) {
        None => Ok(max as usize),
        Some(n) => {
            validate(vec![out_of_range("maxResults", n, min, max)])?;
            Ok(n as usize)
        }
    }
}

/// A page of `items` (in order, each with its sequence number) from `NextToken`, at most
/// `limit` long; and the token of the next page. Tokens are the sequence number of the next
/// item, so that a page stays right while items come and go.
fn page<T>(
    items: Vec<(u64, T)>,
    input: &Value,
    limit: usize,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let from = match s(input, "NextToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .strip_prefix("ssm-page-")
            .and_then(|n| u64::from_str_radix(n, 16).ok())
            .ok_or_else(|| {
                ApiError::new(400, "InvalidNextToken", "The specified token isn't valid.")
            })?,
    };
    let mut rest = items.into_iter().filter(|(seq, _)| *seq >= from).peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        match rest.next() {
            Some((_, item)) => out.push(item),
            None => break,
        }
    }
    let next = rest.peek().map(|(seq, _)| format!("ssm-page-{seq:x}"));
    Ok((out, next))
}

/// Runs SSM `action` (already known to be served) on `input`; `caller` is `None` for an
/// unsigned `RegisterManagedInstance`.
pub(crate) async fn dispatch(
    shared: &Shared,
    aws: &Aws,
    caller: Option<&Caller>,
    action: &str,
    input: Value,
) -> Result<Value, ApiError> {
    match action {
        "CreateActivation" => create_activation(shared, aws, &input).await,
        "DescribeActivations" => describe_activations(shared, &input),
        "DeleteActivation" => delete_activation(shared, &input),
        "DescribeInstanceInformation" => describe_instance_information(shared, &input),
        "DeregisterManagedInstance" => deregister_managed_instance(shared, &input),
        "AddTagsToResource" => add_tags(shared, &input),
        "ListTagsForResource" => list_tags(shared, &input),
        "RemoveTagsFromResource" => remove_tags(shared, &input),
        "RegisterManagedInstance" => register_managed_instance(shared, &input),
        "UpdateInstanceInformation" => {
            update_instance_information(shared, aws, caller, &input).await
        }
        other => Err(ApiError::new(
            400,
            "UnknownOperationException",
            format!("Operation {other} is not served by this endpoint"),
        )),
    }
}

fn invalid_parameters(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "InvalidParameters", message)
}

async fn create_activation(shared: &Shared, aws: &Aws, input: &Value) -> Result<Value, ApiError> {
    let iam_role = s(input, "IamRole").unwrap_or_default();
    let description = s(input, "Description");
    let default_instance_name = s(input, "DefaultInstanceName");
    let limit = input
        .get("RegistrationLimit")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let tags = tags_of(input);
    validate(vec![
        too_long("iamRole", &iam_role, 64),
        description
            .as_deref()
            .and_then(|d| too_long("description", d, 256)),
        default_instance_name
            .as_deref()
            .and_then(|d| too_long("defaultInstanceName", d, 256)),
        out_of_range("registrationLimit", limit, 1, 1000),
        (tags.len() > 1000).then(|| {
            format!(
                "Value at 'tags' failed to satisfy constraint: Member must have length less \
                 than or equal to 1000 ({} given)",
                tags.len()
            )
        }),
    ])?;
    let now = SystemTime::now();
    let expiration = match input.get("ExpirationDate").and_then(Value::as_f64) {
        None => now + DEFAULT_ACTIVATION_LIFETIME,
        Some(secs) => {
            let at = from_epoch(secs).ok_or_else(|| {
                invalid_parameters(format!("ExpirationDate {secs} is not a valid date"))
            })?;
            if at <= now {
                return Err(invalid_parameters("ExpirationDate must be in the future"));
            }
            if at > now + MAX_ACTIVATION_LIFETIME {
                return Err(invalid_parameters(
                    "ExpirationDate must be at most 30 days from now",
                ));
            }
            at
        }
    };
    if aws.iam_configured() {
        // The role's name, with its path if it has one (`service-role/Name`, as the console's
        // default role is given).
        let arn = format!("arn:aws:iam::{}:role/{iam_role}", shared.account_id);
        let name = iam_role.rsplit('/').next().unwrap_or_default();
        let role = if name.is_empty() {
            None
        } else {
            aws.role(name)
                .await
                .map_err(|e| ApiError::new(500, "InternalServerError", e))?
        };
        // AWS's message when the role is missing or SSM may not assume it.
        let trusted = role.is_some_and(|(role_arn, trust)| {
            let path_matches =
                !iam_role.contains('/') || role_arn.ends_with(&format!(":role/{iam_role}"));
            path_matches && trusts_ssm(&trust)
        });
        if !trusted {
            return Err(invalid_parameters(format!(
                "Nonexistent role or missing ssm service principal in trust policy: {arn}"
            )));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let code = activation_code();
    let mut st = lock(shared);
    let seq = st.ssm.next_seq();
    st.ssm.activations.insert(
        id.clone(),
        Activation {
            seq,
            id: id.clone(),
            code: code.clone(),
            description,
            default_instance_name,
            iam_role,
            registration_limit: limit,
            registrations_count: 0,
            expiration,
            created: now,
            tags,
        },
    );
    Ok(json!({ "ActivationId": id, "ActivationCode": code }))
}

/// Whether a trust policy lets `ssm.amazonaws.com` assume the role.
fn trusts_ssm(trust: &str) -> bool {
    let Ok(doc) = serde_json::from_str::<Value>(trust) else {
        return false;
    };
    let statements = match &doc["Statement"] {
        Value::Array(a) => a.clone(),
        v @ Value::Object(_) => vec![v.clone()],
        _ => Vec::new(),
    };
    let has = |v: &Value, want: &str| match v {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|x| x == want),
        _ => false,
    };
    statements.iter().any(|st| {
        st["Effect"] == "Allow"
            && has(&st["Action"], "sts:AssumeRole")
            && has(&st["Principal"]["Service"], "ssm.amazonaws.com")
    })
}

fn activation_code() -> String {
    let mut rng = rand::rng();
    (0..20)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// The values of each filter, by key, from `filters` (a list of `{key_member, values_member}`).
fn filters(input: &Value, list: &str, key: &str, values: &str) -> Vec<(String, Vec<String>)> {
    input
        .get(list)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        s(f, key).unwrap_or_default(),
                        f.get(values)
                            .and_then(Value::as_array)
                            .map(|v| {
                                v.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn describe_activations(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let limit = max_results(input, 1, 50)?;
    let filters = filters(input, "Filters", "FilterKey", "FilterValues");
    for (key, _) in &filters {
        if key.is_empty() {
            return Err(ApiError::new(
                400,
                "InvalidFilter",
                "Each filter needs a FilterKey",
            ));
        }
    }
    let now = SystemTime::now();
    let st = lock(shared);
    let mut all: Vec<&Activation> = st
        .ssm
        .activations
        .values()
        .filter(|a| {
            filters.iter().all(|(key, values)| {
                let have = match key.as_str() {
                    "ActivationIds" => Some(a.id.as_str()),
                    "DefaultInstanceName" => a.default_instance_name.as_deref(),
                    _ => Some(a.iam_role.as_str()),
                };
                have.is_some_and(|h| values.iter().any(|v| v == h))
            })
        })
        .collect();
    all.sort_by_key(|a| a.seq);
    let items = all.iter().map(|a| (a.seq, a.to_json(now))).collect();
    let (list, next) = page(items, input, limit)?;
    let mut out = json!({ "ActivationList": list });
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

fn delete_activation(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "ActivationId").unwrap_or_default();
    let mut st = lock(shared);
    // The nodes registered with it stay registered, as on AWS.
    st.ssm.activations.remove(&id).ok_or_else(|| {
        ApiError::new(
            400,
            "InvalidActivationId",
            format!("Activation ID {id} doesn't exist"),
        )
    })?;
    Ok(json!({}))
}

/// The filter keys DescribeInstanceInformation knows, and what a node has for each.
fn node_values(node: &Node, key: &str) -> Option<Vec<String>> {
    let reported = |k: &str| {
        node.reported
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(match key {
        "InstanceIds" => vec![node.id.clone()],
        "AgentVersion" => reported("AgentVersion").into_iter().collect(),
        "PlatformTypes" => reported("PlatformType").into_iter().collect(),
        "ActivationIds" => node.activation_id.clone().into_iter().collect(),
        "IamRole" => node.iam_role.clone().into_iter().collect(),
        "ResourceType" => vec![node.resource_type.to_owned()],
        // No associations here: the status of none.
        "AssociationStatus" => Vec::new(),
        "tag-key" => node.tags.iter().map(|(k, _)| k.clone()).collect(),
        _ => {
            let tag = key.strip_prefix("tag:")?;
            node.tags
                .iter()
                .filter(|(k, _)| k == tag)
                .map(|(_, v)| v.clone())
                .collect()
        }
    })
}

/// Checks the values of an instance-information filter: `InvalidInstanceId` for malformed
/// instance IDs, `InvalidInstanceInformationFilterValue` for unknown ping statuses, resource
/// types and platform types.
fn check_filter_values(key: &str, values: &[String]) -> Result<(), ApiError> {
    let bad_value = |v: &str| {
        ApiError::new(
            400,
            "InvalidInstanceInformationFilterValue",
            format!("The filter value {v} is not valid for the filter key {key}"),
        )
    };
    for v in values {
        let ok = match key {
            "InstanceIds" => {
                if !is_instance_id(v) {
                    return Err(ApiError::new(
                        400,
                        "InvalidInstanceId",
                        format!("Instance ID {v} is not valid"),
                    ));
                }
                true
            }
            "PingStatus" => ["Online", "ConnectionLost", "Inactive"].contains(&v.as_str()),
            "ResourceType" => [MANAGED_INSTANCE, EC2_INSTANCE].contains(&v.as_str()),
            "PlatformTypes" => ["Windows", "Linux", "MacOS"].contains(&v.as_str()),
            _ => true,
        };
        if !ok {
            return Err(bad_value(v));
        }
    }
    Ok(())
}

fn describe_instance_information(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let limit = max_results(input, 5, 50)?;
    let mut all_filters = filters(input, "InstanceInformationFilterList", "key", "valueSet");
    let string_filters = filters(input, "Filters", "Key", "Values");
    for (key, _) in &string_filters {
        let known = [
            "InstanceIds",
            "AgentVersion",
            "PingStatus",
            "PlatformTypes",
            "ActivationIds",
            "IamRole",
            "ResourceType",
            "AssociationStatus",
            "tag-key",
        ]
        .contains(&key.as_str())
            || key.strip_prefix("tag:").is_some_and(|t| !t.is_empty());
        if !known {
            return Err(ApiError::new(
                400,
                "InvalidFilterKey",
                format!("The filter key {key} is not valid"),
            ));
        }
    }
    all_filters.extend(string_filters);
    for (key, values) in &all_filters {
        if values.is_empty() {
            return Err(ApiError::new(
                400,
                "InvalidInstanceInformationFilterValue",
                format!("The filter {key} has no values"),
            ));
        }
        check_filter_values(key, values)?;
    }
    let now = Instant::now();
    let st = lock(shared);
    let lost_after = st.ssm.connection_lost_after;
    let mut nodes: Vec<&Node> = st
        .ssm
        .nodes
        .values()
        .filter(|n| {
            all_filters.iter().all(|(key, values)| {
                let have = if key == "PingStatus" {
                    vec![n.ping_status(now, lost_after).to_owned()]
                } else {
                    node_values(n, key).unwrap_or_default()
                };
                have.iter().any(|h| values.contains(h))
            })
        })
        .collect();
    nodes.sort_by_key(|n| n.seq);
    let items = nodes
        .iter()
        .map(|n| (n.seq, n.to_json(now, lost_after)))
        .collect();
    let (list, next) = page(items, input, limit)?;
    let mut out = json!({ "InstanceInformationList": list });
    if let Some(t) = next {
        out["NextToken"] = json!(t);
    }
    Ok(out)
}

fn invalid_instance_id(id: &str) -> ApiError {
    ApiError::new(
        400,
        "InvalidInstanceId",
        format!("Instance ID {id} is not valid or is not a managed node of this account"),
    )
}

fn deregister_managed_instance(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let id = s(input, "InstanceId").unwrap_or_default();
    if !is_managed_instance_id(&id) {
        return Err(invalid_instance_id(&id));
    }
    let mut st = lock(shared);
    st.ssm
        .nodes
        .remove(&id)
        .ok_or_else(|| invalid_instance_id(&id))?;
    st.ssm.deregistered.insert(id);
    Ok(json!({}))
}

/// The tags of the resource an AddTagsToResource / ListTagsForResource names: only managed
/// nodes (`mi-…`) have tags here; any other resource is unknown.
fn tagged<'a>(
    st: &'a mut crate::state::State,
    input: &Value,
) -> Result<&'a mut Vec<(String, String)>, ApiError> {
    let kind = s(input, "ResourceType").unwrap_or_default();
    let id = s(input, "ResourceId").unwrap_or_default();
    let unknown = || {
        ApiError::new(
            400,
            "InvalidResourceId",
            format!("The resource ID {id} of type {kind} is not valid"),
        )
    };
    if kind != MANAGED_INSTANCE || !is_managed_instance_id(&id) {
        return Err(unknown());
    }
    match st.ssm.nodes.get_mut(&id) {
        Some(n) => Ok(&mut n.tags),
        None => Err(unknown()),
    }
}

fn add_tags(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let new = tags_of(input);
    let mut st = lock(shared);
    let tags = tagged(&mut st, input)?;
    let mut merged = tags.clone();
    for (k, v) in new {
        match merged.iter_mut().find(|(have, _)| *have == k) {
            Some(t) => t.1 = v,
            None => merged.push((k, v)),
        }
    }
    if merged.len() > MAX_TAGS {
        return Err(ApiError::new(
            400,
            "TooManyTagsError",
            format!("A resource can have at most {MAX_TAGS} tags"),
        ));
    }
    *tags = merged;
    Ok(json!({}))
}

fn remove_tags(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let keys: Vec<String> = input
        .get("TagKeys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut st = lock(shared);
    let tags = tagged(&mut st, input)?;
    tags.retain(|(k, _)| !keys.contains(k));
    Ok(json!({}))
}

fn list_tags(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let mut st = lock(shared);
    let tags = tagged(&mut st, input)?;
    Ok(json!({ "TagList": tags_json(tags) }))
}

/// `mi-` and 17 random lowercase hex digits.
fn new_node_id() -> String {
    let mut rng = rand::rng();
    let hex: String = (0..17)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect();
    format!("mi-{hex}")
}

/// Whether `key` looks like the base64 text of a public key of the size the agent's model
/// requires (at least 392 characters).
fn valid_public_key(key: &str) -> bool {
    key.len() >= 392
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn register_managed_instance(shared: &Shared, input: &Value) -> Result<Value, ApiError> {
    let invalid = || {
        ApiError::new(
            400,
            "InvalidActivation",
            "The activation isn't valid. The activation might have been deleted, or the \
             ActivationId and the ActivationCode don't match.",
        )
    };
    let id = s(input, "ActivationId").unwrap_or_default();
    let code = s(input, "ActivationCode").unwrap_or_default();
    if !valid_public_key(&s(input, "PublicKey").unwrap_or_default()) {
        return Err(ApiError::new(
            400,
            "InvalidPublicKey",
            "The public key is not a valid base64-encoded RSA public key",
        ));
    }
    let now = SystemTime::now();
    let mut st = lock(shared);
    let activation = st.ssm.activations.get_mut(&id).ok_or_else(invalid)?;
    if activation.code != code {
        return Err(invalid());
    }
    if activation.expired(now) {
        return Err(ApiError::new(
            400,
            "ActivationExpired",
            format!("Activation {id} expired"),
        ));
    }
    if activation.registrations_count >= activation.registration_limit {
        return Err(ApiError::new(
            400,
            "RegistrationLimitExceeded",
            format!(
                "Activation {id} reached its registration limit of {}",
                activation.registration_limit
            ),
        ));
    }
    activation.registrations_count += 1;
    let node = Node {
        seq: 0,
        id: new_node_id(),
        resource_type: MANAGED_INSTANCE,
        activation_id: Some(id),
        iam_role: Some(activation.iam_role.clone()),
        name: activation.default_instance_name.clone(),
        registered: now,
        last_ping: None,
        reported: Map::new(),
        // An activation's tags are its nodes', as on AWS.
        tags: activation.tags.clone(),
    };
    let seq = st.ssm.next_seq();
    let node_id = node.id.clone();
    st.ssm.nodes.insert(node_id.clone(), Node { seq, ..node });
    Ok(json!({ "InstanceId": node_id }))
}

/// The members of a heartbeat that DescribeInstanceInformation reports.
const REPORTED: &[&str] = &[
    "AgentVersion",
    "PlatformType",
    "PlatformName",
    "PlatformVersion",
    "IPAddress",
    "ComputerName",
];

async fn update_instance_information(
    shared: &Shared,
    aws: &Aws,
    caller: Option<&Caller>,
    input: &Value,
) -> Result<Value, ApiError> {
    let id = s(input, "InstanceId").unwrap_or_default();
    let known = lock(shared).ssm.nodes.contains_key(&id);
    if !known {
        if is_ec2_instance_id(&id) {
            let region = caller.map(|c| c.region.as_str()).unwrap_or("us-east-1");
            let node = ec2_node(aws, &id, region).await?;
            let mut st = lock(shared);
            if !st.ssm.nodes.contains_key(&id) {
                let seq = st.ssm.next_seq();
                st.ssm.nodes.insert(id.clone(), Node { seq, ..node });
            }
        } else {
            return Err(invalid_instance_id(&id));
        }
    }
    let mut st = lock(shared);
    // Deregistered meanwhile: refused as any unknown node.
    let node = st
        .ssm
        .nodes
        .get_mut(&id)
        .ok_or_else(|| invalid_instance_id(&id))?;
    node.last_ping = Some((SystemTime::now(), Instant::now()));
    for k in REPORTED {
        if let Some(v) = input.get(*k).filter(|v| v.is_string()) {
            node.reported.insert((*k).to_owned(), v.clone());
        }
    }
    Ok(json!({}))
}

/// The node of EC2 instance `id`, whose agent signs with its instance profile's credentials:
/// refused (`AccessDeniedException`) unless EC2 reports the instance with an IAM instance
/// profile.
async fn ec2_node(aws: &Aws, id: &str, region: &str) -> Result<Node, ApiError> {
    let denied = |why: String| {
        ApiError::access_denied(format!(
            "The agent on {id} has no credentials SSM accepts: {why}"
        ))
    };
    if !aws.ec2_configured() {
        return Err(denied(
            "this endpoint has no EC2 endpoint to check instance profiles with".into(),
        ));
    }
    let instance = aws
        .ec2_instance(region, id)
        .await
        .map_err(|e| ApiError::new(500, "InternalServerError", e))?
        .ok_or_else(|| denied(format!("EC2 instance {id} does not exist in {region}")))?;
    let profile = instance
        .instance_profile_arn
        .ok_or_else(|| denied(format!("EC2 instance {id} has no IAM instance profile")))?;
    let role = aws.instance_profile_role(&profile).await;
    Ok(Node {
        seq: 0,
        id: id.to_owned(),
        resource_type: EC2_INSTANCE,
        activation_id: None,
        iam_role: role,
        name: None,
        registered: SystemTime::now(),
        last_ping: None,
        reported: Map::new(),
        tags: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_policies() {
        let doc = |principal: Value| {
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                   "Principal": principal, "Action": "sts:AssumeRole"}]})
            .to_string()
        };
        assert!(trusts_ssm(&doc(json!({"Service": "ssm.amazonaws.com"}))));
        assert!(trusts_ssm(&doc(
            json!({"Service": ["ec2.amazonaws.com", "ssm.amazonaws.com"]})
        )));
        assert!(!trusts_ssm(&doc(json!({"Service": "ec2.amazonaws.com"}))));
        assert!(!trusts_ssm("not json"));
    }

    #[test]
    fn codes_and_ids() {
        let code = activation_code();
        assert_eq!(code.len(), 20);
        assert_ne!(code, activation_code());
        let id = new_node_id();
        assert!(is_managed_instance_id(&id), "{id}");
    }

    #[test]
    fn pages() {
        let items: Vec<(u64, u64)> = (1..=7).map(|i| (i, i * 10)).collect();
        let (first, next) = page(items.clone(), &json!({}), 3).unwrap();
        assert_eq!(first, [10, 20, 30]);
        let next = next.unwrap();
        let (second, next) = page(items.clone(), &json!({ "NextToken": next }), 3).unwrap();
        assert_eq!(second, [40, 50, 60]);
        let (third, next) = page(items.clone(), &json!({ "NextToken": next.unwrap() }), 3).unwrap();
        assert_eq!((third, next), (vec![70], None));
        let err = page(items, &json!({"NextToken": "garbage"}), 3).unwrap_err();
        assert_eq!(err.code, "InvalidNextToken");
    }
}
