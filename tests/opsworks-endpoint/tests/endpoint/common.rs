//! Shared test support: one moto server for the test binary, endpoints, SDK clients, IAM users
//! and a raw HTTP client for what the SDK would not send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime};

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::config::{BehaviorVersion, Credentials, Region};
use opsworks_endpoint::moto::MotoServer;
use opsworks_endpoint::{Config, Endpoint, EndpointHandle};

/// The static credentials tests' admin clients sign with (moto accepts any).
pub const ADMIN_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const ADMIN_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// The process-wide moto server (with the AWSOpsWorksInstanceRegistration policy).
pub fn moto() -> &'static MotoServer {
    MotoServer::shared().unwrap_or_else(|e| panic!("cannot start moto: {e}"))
}

/// An endpoint against the shared moto, verifying the admin credentials too, with a short
/// registration delay.
pub fn endpoint() -> EndpointHandle {
    endpoint_with(|_| {})
}

pub fn endpoint_with(change: impl FnOnce(&mut Config)) -> EndpointHandle {
    let mut config = Config::with_moto(moto().url());
    config.known_credentials = vec![(ADMIN_KEY.into(), ADMIN_SECRET.into())];
    config.registration_delay = Duration::from_millis(300);
    config.agent_installer = opsworks_endpoint::AgentInstaller::Bytes(b"installer bytes".to_vec());
    change(&mut config);
    Endpoint::start(config).unwrap_or_else(|e| panic!("cannot start the endpoint: {e}"))
}

/// An OpsWorks client for `url` signing with `key`/`secret`, with `retry`.
pub fn opsworks_with(
    url: &str,
    key: &str,
    secret: &str,
    retry: RetryConfig,
) -> aws_sdk_opsworks::Client {
    let conf = aws_sdk_opsworks::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .endpoint_url(url)
        .retry_config(retry)
        .build();
    aws_sdk_opsworks::Client::from_conf(conf)
}

/// An OpsWorks client with the admin credentials and no retries.
pub fn opsworks(url: &str) -> aws_sdk_opsworks::Client {
    opsworks_with(url, ADMIN_KEY, ADMIN_SECRET, RetryConfig::disabled())
}

/// An IAM client (admin credentials) for moto.
pub fn iam() -> aws_sdk_iam::Client {
    iam_at(moto().url())
}

/// An IAM client (admin credentials) for `url`: moto, or a proxy in front of it.
pub fn iam_at(url: &str) -> aws_sdk_iam::Client {
    let conf = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            ADMIN_KEY,
            ADMIN_SECRET,
            None,
            None,
            "test",
        ))
        .endpoint_url(url)
        .build();
    aws_sdk_iam::Client::from_conf(conf)
}

pub fn ec2(region: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            ADMIN_KEY,
            ADMIN_SECRET,
            None,
            None,
            "test",
        ))
        .endpoint_url(moto().url())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// A name unique in this process run (moto is shared by every test).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Creates a stack; returns (id, ARN).
pub async fn create_stack(
    client: &aws_sdk_opsworks::Client,
    vpc: Option<&str>,
) -> (String, String) {
    let id = client
        .create_stack()
        .name(unique("stack"))
        .region("us-east-1")
        .set_vpc_id(vpc.map(str::to_owned))
        .service_role_arn("arn:aws:iam::123456789012:role/aws-opsworks-service-role")
        .default_instance_profile_arn(
            "arn:aws:iam::123456789012:instance-profile/aws-opsworks-ec2-role",
        )
        .send()
        .await
        .expect("CreateStack")
        .stack_id
        .expect("StackId");
    let stacks = client
        .describe_stacks()
        .stack_ids(&id)
        .send()
        .await
        .expect("DescribeStacks");
    let arn = stacks.stacks()[0].arn().expect("Arn").to_owned();
    (id, arn)
}

/// Creates an IAM user under /AWS/OpsWorks/ with one access key; returns (name, key, secret).
pub async fn user_with_key(iam: &aws_sdk_iam::Client) -> (String, String, String) {
    let name = unique("OpsWorks-user");
    iam.create_user()
        .user_name(&name)
        .path("/AWS/OpsWorks/")
        .send()
        .await
        .expect("CreateUser");
    let key = iam
        .create_access_key()
        .user_name(&name)
        .send()
        .await
        .expect("CreateAccessKey")
        .access_key
        .expect("AccessKey");
    (name, key.access_key_id, key.secret_access_key)
}

/// The inline policy the CLI writes: RegisterInstance on the stack until `until`.
pub fn inline_policy(stack_arn: &str, until: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Action": "opsworks:RegisterInstance",
            "Effect": "Allow",
            "Resource": stack_arn,
            "Condition": {"DateLessThan": {"aws:CurrentTime": until}},
        }],
    })
    .to_string()
}

/// `2024-05-01T12:00:00Z` for now plus `secs` (may be negative).
pub fn iso_in(secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + secs;
    let days = now.div_euclid(86_400);
    let rem = now.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A raw HTTP/1.1 exchange with the endpoint: (status, body).
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let authority = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(authority).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, resp[split + 4..].to_vec())
}

/// An `Authorization` header for an access key the endpoint does not know (so the signature is
/// not verified), and its `X-Amz-Date`.
pub fn unknown_key_auth(key: &str) -> (String, String) {
    let amz_date = iso_in(0).replace(['-', ':'], "");
    let day = &amz_date[..8];
    (
        format!(
            "AWS4-HMAC-SHA256 Credential={key}/{day}/us-east-1/opsworks/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={}",
            "0".repeat(64)
        ),
        amz_date.clone(),
    )
}

/// A raw API call signed with an unknown key: (status, JSON body).
pub fn raw_call(url: &str, action: &str, body: &str) -> (u16, serde_json::Value) {
    let (auth, date) = unknown_key_auth("AKIAUNKNOWNRAWCALLER");
    let target = format!("OpsWorks_20130218.{action}");
    let (status, body) = http(
        url,
        "POST",
        "/",
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", &target),
            ("X-Amz-Date", &date),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
    );
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// A Systems Manager client for `url` with the admin credentials and no retries.
pub fn ssm(url: &str) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            ADMIN_KEY,
            ADMIN_SECRET,
            None,
            None,
            "test",
        ))
        .endpoint_url(url)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// A raw SSM call: signed with an unknown key (not verified) when `signed`, else without any
/// `Authorization` header, as the agent registers. Returns (status, JSON body).
pub fn ssm_call(url: &str, action: &str, body: &str, signed: bool) -> (u16, serde_json::Value) {
    let (auth, date) = unknown_key_auth("AKIAUNKNOWNRAWCALLER");
    let auth = auth.replace("/opsworks/", "/ssm/");
    let target = format!("AmazonSSM.{action}");
    let mut headers = vec![
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Target", target.as_str()),
        ("X-Amz-Date", date.as_str()),
    ];
    if signed {
        headers.push(("Authorization", auth.as_str()));
    }
    let (status, body) = http(url, "POST", "/", &headers, body.as_bytes());
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// Creates an IAM role in moto that Systems Manager may assume; returns its name.
pub async fn ssm_role() -> String {
    let name = unique("SSMServiceRole");
    iam()
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(
            serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ssm.amazonaws.com"},
                               "Action": "sts:AssumeRole"}],
            })
            .to_string(),
        )
        .send()
        .await
        .expect("CreateRole");
    name
}

/// Creates an activation for `role` with `limit` registrations; returns (ID, code).
pub async fn create_activation(
    client: &aws_sdk_ssm::Client,
    role: &str,
    limit: i32,
) -> (String, String) {
    let out = client
        .create_activation()
        .iam_role(role)
        .registration_limit(limit)
        .default_instance_name("test-node")
        .send()
        .await
        .expect("CreateActivation");
    (
        out.activation_id().expect("ActivationId").to_owned(),
        out.activation_code().expect("ActivationCode").to_owned(),
    )
}

/// A public key as the agent sends it (only its form is checked).
pub fn public_key() -> String {
    "A".repeat(392)
}

/// Registers a node as the agent does (unsigned `RegisterManagedInstance`); returns its ID.
pub fn register_node(url: &str, activation_id: &str, code: &str) -> String {
    let body = serde_json::json!({
        "ActivationId": activation_id, "ActivationCode": code, "PublicKey": public_key(),
        "PublicKeyType": "Rsa", "Fingerprint": unique("fingerprint"),
    });
    let (status, v) = ssm_call(url, "RegisterManagedInstance", &body.to_string(), false);
    assert_eq!(status, 200, "{v}");
    v["InstanceId"].as_str().expect("InstanceId").to_owned()
}

/// A heartbeat of node `id` as the agent sends it (signed with a key the endpoint does not
/// know), with the agent's key or the instance profile's.
pub fn heartbeat(
    url: &str,
    id: &str,
) -> Result<serde_json::Value, opsworks_endpoint::ssm_standin::CallError> {
    use opsworks_endpoint::ssm_standin;
    let body = serde_json::json!({
        "InstanceId": id, "AgentName": "amazon-ssm-agent", "AgentVersion": "3.3.0.0",
        "PlatformType": "Linux", "PlatformName": "Debian GNU/Linux", "PlatformVersion": "12",
        "IPAddress": "10.1.2.3", "ComputerName": "node-1",
    });
    let (key, secret) = if id.starts_with("i-") {
        (
            opsworks_endpoint::standin::INSTANCE_PROFILE_ACCESS_KEY_ID,
            opsworks_endpoint::standin::INSTANCE_PROFILE_SECRET_ACCESS_KEY,
        )
    } else {
        (
            ssm_standin::AGENT_ACCESS_KEY_ID,
            ssm_standin::AGENT_SECRET_ACCESS_KEY,
        )
    };
    ssm_standin::call(
        url,
        "UpdateInstanceInformation",
        &body,
        Some((key, secret, "us-east-1")),
    )
}

/// Waits (up to `within`) until `check` holds; panics with `what` otherwise.
pub fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
