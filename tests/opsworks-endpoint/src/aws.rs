//! What the endpoint asks of IAM and EC2 (moto): who owns an access key and its secret, which
//! policies apply to a user, and what EC2 knows of an instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::error::ProvideErrorMetadata;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::keys::KeyStore;
use crate::policy::{Policy, Source};

/// Who an access key belongs to.
#[derive(Debug, Clone)]
pub(crate) enum KeyOwner {
    /// Nobody the endpoint knows of.
    Unknown,
    /// One of [`Config::known_credentials`].
    Static { secret: String },
    /// An IAM user's active key (the secret when moto tells it).
    IamUser {
        user_name: String,
        secret: Option<String>,
    },
    /// An IAM user's key that is not active.
    Inactive,
}

/// What EC2 reports of an instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ec2Instance {
    pub vpc_id: Option<String>,
    pub instance_profile_arn: Option<String>,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
    pub image_id: Option<String>,
    pub private_dns: Option<String>,
    pub public_dns: Option<String>,
    pub architecture: Option<String>,
}

pub(crate) struct Aws {
    iam: Option<aws_sdk_iam::Client>,
    iam_url: Option<String>,
    ec2_base: Option<aws_sdk_ec2::Config>,
    ec2_clients: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    known: HashMap<String, String>,
    /// IAM keys' secrets: told by the proxy, or read from moto's state.
    secrets: KeyStore,
    /// Reads of moto's `/moto-api/data.json` (attempts, failed ones too).
    moto_state_reads: Arc<AtomicU64>,
}

fn credentials(config: &Config) -> Credentials {
    Credentials::new(
        config.moto_credentials.0.clone(),
        config.moto_credentials.1.clone(),
        None,
        None,
        "opsworks-endpoint",
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sdk_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    e: &aws_sdk_iam::error::SdkError<E>,
) -> String {
    match e.as_service_error() {
        Some(s) => format!(
            "{what}: {}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("")
        ),
        None => format!("{what}: {e:?}"),
    }
}

impl Aws {
    /// Builds the clients; call inside a tokio runtime. IAM keys' secrets are looked up in
    /// `secrets` first; `moto_state_reads` counts the reads of moto's state for the others.
    pub fn new(config: &Config, secrets: KeyStore, moto_state_reads: Arc<AtomicU64>) -> Self {
        let retry = aws_sdk_iam::config::retry::RetryConfig::standard().with_max_attempts(3);
        let timeouts = aws_sdk_iam::config::timeout::TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(20))
            .build();
        let iam = config.iam_endpoint_url.as_ref().map(|url| {
            let c = aws_sdk_iam::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(credentials(config))
                .endpoint_url(url)
                .retry_config(retry.clone())
                .timeout_config(timeouts.clone())
                .build();
            aws_sdk_iam::Client::from_conf(c)
        });
        let ec2_base = config.ec2_endpoint_url.as_ref().map(|url| {
            aws_sdk_ec2::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(credentials(config))
                .endpoint_url(url)
                .retry_config(retry.clone())
                .timeout_config(timeouts.clone())
                .build()
        });
        Aws {
            iam,
            iam_url: config
                .iam_endpoint_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            ec2_base,
            ec2_clients: Mutex::new(HashMap::new()),
            known: config.known_credentials.iter().cloned().collect(),
            secrets,
            moto_state_reads,
        }
    }

    pub fn iam_configured(&self) -> bool {
        self.iam.is_some()
    }

    pub fn ec2_configured(&self) -> bool {
        self.ec2_base.is_some()
    }

    /// Who owns `access_key_id`. Errors are failures to ask IAM.
    pub async fn key_owner(&self, access_key_id: &str) -> Result<KeyOwner, String> {
        if let Some(secret) = self.known.get(access_key_id) {
            return Ok(KeyOwner::Static {
                secret: secret.clone(),
            });
        }
        let Some(iam) = &self.iam else {
            return Ok(KeyOwner::Unknown);
        };
        let out = match iam
            .get_access_key_last_used()
            .access_key_id(access_key_id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchEntity") => {
                return Ok(KeyOwner::Unknown);
            }
            Err(e) => return Err(sdk_error("IAM GetAccessKeyLastUsed", &e)),
        };
        let Some(user_name) = out.user_name().map(str::to_owned) else {
            return Ok(KeyOwner::Unknown);
        };
        let keys = iam
            .list_access_keys()
            .user_name(&user_name)
            .send()
            .await
            .map_err(|e| sdk_error("IAM ListAccessKeys", &e))?;
        let active = keys.access_key_metadata().iter().any(|k| {
            k.access_key_id() == Some(access_key_id)
                && k.status() == Some(&aws_sdk_iam::types::StatusType::Active)
        });
        if !active {
            return Ok(KeyOwner::Inactive);
        }
        let secret = self.secret(access_key_id).await;
        Ok(KeyOwner::IamUser { user_name, secret })
    }

    /// The secret of an IAM access key: from the key store (keys the proxy saw made, and those
    /// read before), else from moto's `/moto-api/data.json`, all of moto's state, whose secrets
    /// are all kept in the store (a key's secret never changes).
    async fn secret(&self, access_key_id: &str) -> Option<String> {
        if let Some(s) = self.secrets.secret(access_key_id) {
            return Some(s);
        }
        let url = format!("{}/moto-api/data.json", self.iam_url.as_ref()?);
        self.moto_state_reads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("access key {access_key_id} not in the key store: reading {url}");
        let body = match http_get(&url).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read secrets from {url}: {e}");
                return None;
            }
        };
        let data: Value = serde_json::from_slice(&body).ok()?;
        if let Some(keys) = data.pointer("/iam/AccessKey").and_then(Value::as_array) {
            for k in keys {
                if let (Some(id), Some(secret)) = (
                    k.get("access_key_id").and_then(Value::as_str),
                    k.get("secret_access_key").and_then(Value::as_str),
                ) {
                    self.secrets.insert(id, secret);
                }
            }
        }
        self.secrets.secret(access_key_id)
    }

    /// The user's ARN and every policy that applies to it: inline and attached managed
    /// policies of the user and of its groups.
    pub async fn user_policies(&self, user: &str) -> Result<(String, Vec<Policy>), String> {
        let Some(iam) = &self.iam else {
            return Err("no IAM endpoint configured".into());
        };
        let arn = iam
            .get_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| sdk_error("IAM GetUser", &e))?
            .user()
            .map(|u| u.arn().to_owned())
            .unwrap_or_default();
        let mut policies = Vec::new();
        let names = iam
            .list_user_policies()
            .user_name(user)
            .send()
            .await
            .map_err(|e| sdk_error("IAM ListUserPolicies", &e))?;
        for name in names.policy_names() {
            let p = iam
                .get_user_policy()
                .user_name(user)
                .policy_name(name)
                .send()
                .await
                .map_err(|e| sdk_error("IAM GetUserPolicy", &e))?;
            policies.push(Policy {
                source: Source::Inline {
                    name: name.clone(),
                    group: None,
                },
                document: p.policy_document().to_owned(),
            });
        }
        let attached = iam
            .list_attached_user_policies()
            .user_name(user)
            .send()
            .await
            .map_err(|e| sdk_error("IAM ListAttachedUserPolicies", &e))?;
        for a in attached.attached_policies() {
            if let Some(arn) = a.policy_arn() {
                policies.push(self.managed(iam, arn, None).await?);
            }
        }
        let groups = iam
            .list_groups_for_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| sdk_error("IAM ListGroupsForUser", &e))?;
        for g in groups.groups() {
            let group = g.group_name();
            let names = iam
                .list_group_policies()
                .group_name(group)
                .send()
                .await
                .map_err(|e| sdk_error("IAM ListGroupPolicies", &e))?;
            for name in names.policy_names() {
                let p = iam
                    .get_group_policy()
                    .group_name(group)
                    .policy_name(name)
                    .send()
                    .await
                    .map_err(|e| sdk_error("IAM GetGroupPolicy", &e))?;
                policies.push(Policy {
                    source: Source::Inline {
                        name: name.clone(),
                        group: Some(group.to_owned()),
                    },
                    document: p.policy_document().to_owned(),
                });
            }
            let attached = iam
                .list_attached_group_policies()
                .group_name(group)
                .send()
                .await
                .map_err(|e| sdk_error("IAM ListAttachedGroupPolicies", &e))?;
            for a in attached.attached_policies() {
                if let Some(arn) = a.policy_arn() {
                    policies.push(self.managed(iam, arn, Some(group.to_owned())).await?);
                }
            }
        }
        Ok((arn, policies))
    }

    async fn managed(
        &self,
        iam: &aws_sdk_iam::Client,
        arn: &str,
        group: Option<String>,
    ) -> Result<Policy, String> {
        let policy = iam
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| sdk_error("IAM GetPolicy", &e))?;
        let version = policy
            .policy()
            .and_then(|p| p.default_version_id())
            .unwrap_or("v1")
            .to_owned();
        let v = iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await
            .map_err(|e| sdk_error("IAM GetPolicyVersion", &e))?;
        Ok(Policy {
            source: Source::Managed {
                arn: arn.to_owned(),
                group,
            },
            document: v
                .policy_version()
                .and_then(|v| v.document())
                .unwrap_or("{}")
                .to_owned(),
        })
    }

    /// The ARN of IAM user, group or role `name`, with its path; `Ok(None)` when IAM has none
    /// of that name. Errors are failures to ask IAM.
    pub async fn entity_arn(
        &self,
        entity: crate::authorize::Entity,
        name: &str,
    ) -> Result<Option<String>, String> {
        use crate::authorize::Entity;
        let Some(iam) = &self.iam else {
            return Err("no IAM endpoint configured".into());
        };
        let missing = |code: Option<&str>| code == Some("NoSuchEntity");
        match entity {
            Entity::User => match iam.get_user().user_name(name).send().await {
                Ok(out) => Ok(out.user().map(|u| u.arn().to_owned())),
                Err(e) if missing(e.as_service_error().and_then(|s| s.code())) => Ok(None),
                Err(e) => Err(sdk_error("IAM GetUser", &e)),
            },
            Entity::Group => match iam.get_group().group_name(name).max_items(1).send().await {
                Ok(out) => Ok(out.group().map(|g| g.arn().to_owned())),
                Err(e) if missing(e.as_service_error().and_then(|s| s.code())) => Ok(None),
                Err(e) => Err(sdk_error("IAM GetGroup", &e)),
            },
            Entity::Role => Ok(self.role(name).await?.map(|(arn, _)| arn)),
        }
    }

    /// The ARN and trust policy (decoded JSON text) of IAM role `name`; `Ok(None)` when IAM
    /// has no such role. Errors are failures to ask IAM.
    pub async fn role(&self, name: &str) -> Result<Option<(String, String)>, String> {
        let Some(iam) = &self.iam else {
            return Err("no IAM endpoint configured".into());
        };
        match iam.get_role().role_name(name).send().await {
            Ok(out) => Ok(out.role().map(|r| {
                let trust = r.assume_role_policy_document().unwrap_or("");
                // IAM's query protocol gives the document URL-encoded.
                let decoded = percent_encoding::percent_decode_str(trust)
                    .decode_utf8_lossy()
                    .into_owned();
                (r.arn().to_owned(), decoded)
            })),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchEntity") => {
                Ok(None)
            }
            Err(e) => Err(sdk_error("IAM GetRole", &e)),
        }
    }

    /// The name of the (first) role of the instance profile with ARN `arn`, if IAM tells.
    pub async fn instance_profile_role(&self, arn: &str) -> Option<String> {
        let iam = self.iam.as_ref()?;
        let name = arn.rsplit('/').next()?;
        let out = iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .ok()?;
        out.instance_profile()?
            .roles()
            .first()
            .map(|r| r.role_name().to_owned())
    }

    /// What EC2 in `region` reports of instance `id`; `Ok(None)` when it has no such instance.
    pub async fn ec2_instance(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Option<Ec2Instance>, String> {
        let Some(base) = &self.ec2_base else {
            return Err("no EC2 endpoint configured".into());
        };
        let client = lock(&self.ec2_clients)
            .entry(region.to_owned())
            .or_insert_with(|| {
                aws_sdk_ec2::Client::from_conf(
                    base.to_builder()
                        .region(Region::new(region.to_owned()))
                        .build(),
                )
            })
            .clone();
        let out = match client.describe_instances().instance_ids(id).send().await {
            Ok(out) => out,
            Err(e) => {
                let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                if code.starts_with("InvalidInstanceID") {
                    return Ok(None);
                }
                return Err(match e.as_service_error() {
                    Some(s) => format!(
                        "EC2 DescribeInstances: {}: {}",
                        s.code().unwrap_or("error"),
                        s.message().unwrap_or("")
                    ),
                    None => format!("EC2 DescribeInstances: {e:?}"),
                });
            }
        };
        let found = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id));
        Ok(found.map(|i| Ec2Instance {
            vpc_id: i.vpc_id().map(str::to_owned),
            instance_profile_arn: i
                .iam_instance_profile()
                .and_then(|p| p.arn())
                .map(str::to_owned),
            availability_zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            instance_type: i.instance_type().map(|t| t.as_str().to_owned()),
            subnet_id: i.subnet_id().map(str::to_owned),
            image_id: i.image_id().map(str::to_owned),
            private_dns: i.private_dns_name().map(str::to_owned),
            public_dns: i.public_dns_name().map(str::to_owned),
            architecture: i.architecture().map(|a| a.as_str().to_owned()),
        }))
    }
}

/// A plain HTTP/1.0 GET of an `http://host:port/path` URL; the body of a 200 answer.
pub(crate) async fn http_get(url: &str) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, not {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .map_err(|_| format!("GET {url} timed out"))??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {url}: malformed response"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = &response[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {url}: status {status}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunk")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "malformed chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
    Ok(out)
}
