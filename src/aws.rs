//! AWS clients and what their failures mean for a step.
//!
//! Credentials come from the default chain (IRSA / pod identity in a cluster, the environment
//! locally); endpoints from the standard `AWS_ENDPOINT_URL_<SERVICE>` settings, so the same code
//! talks to AWS and to AWS-compatible endpoints, with no test-only paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::endpoint::{
    EndpointResolverParams, ResolveEndpoint as _, SharedEndpointResolver,
};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_types::timeout::TimeoutConfig;

use crate::conditions::{Observation, Outcome, reasons};
use aws_smithy_types::retry::ErrorKind;

use crate::budget::Budgets;
use crate::metrics::AwsCallCounter;

/// Attempts per AWS call, including the first, before a failure reaches the step (the step then
/// retries with the object's backoff).
const MAX_ATTEMPTS: u32 = 4;

/// Default time to set up a connection to an AWS endpoint.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time one attempt of an AWS call may take, from sending the request to the end of
/// the answer; an attempt that runs out is retried like a network failure.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time an AWS call may take in all, its retries included.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Time limits of every AWS call. A call that runs out of time fails as [`Kind::Unavailable`]
/// (retried with backoff), so that an endpoint that never answers costs the one reconcile that
/// asked, for a bounded while, never a stuck controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// Setting up a connection.
    pub connect: Duration,
    /// One attempt (request and answer).
    pub attempt: Duration,
    /// The whole call, retries included.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            attempt: ATTEMPT_TIMEOUT,
            operation: OPERATION_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The SDK's form of these limits.
    pub(crate) fn config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

/// A service's client configuration from `builder`, with what every client of the controller
/// has: the call counter and the service's budget.
macro_rules! configured {
    ($aws:expr, $builder:expr, $service:literal) => {{
        let mut builder = $builder;
        if let Some(counter) = &$aws.counter {
            builder = builder.interceptor(counter.clone());
        }
        if let Some(client) = $aws.budgeted($service) {
            builder = builder.http_client(client);
        }
        builder.build()
    }};
}

/// The AWS clients the controller uses.
pub(crate) struct Aws {
    config: SdkConfig,
    /// OpsWorks, at the controller's region (or the object's `spec.region`, see [`Aws::opsworks`]).
    opsworks: aws_sdk_opsworks::Client,
    /// IAM is global.
    pub iam: aws_sdk_iam::Client,
    ec2: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    opsworks_by_region: Mutex<HashMap<String, aws_sdk_opsworks::Client>>,
    ssm: Mutex<HashMap<String, aws_sdk_ssm::Client>>,
    counter: Option<AwsCallCounter>,
    budgets: Option<Arc<Budgets>>,
    /// The HTTP client the budgets wrap: the configuration's, else the SDK's default.
    http: SharedHttpClient,
    /// EC2 instance look-ups by ID, made together ([`Aws::ec2_instance`]).
    instances: Arc<crate::batch::Batches<aws_sdk_ec2::types::Instance, Failure>>,
}

impl Aws {
    /// Loads the configuration from the environment (region, credentials, endpoint overrides);
    /// every call is bounded by `timeouts` and every attempt counted by `counter`.
    pub(crate) async fn from_env(
        counter: Option<AwsCallCounter>,
        timeouts: Timeouts,
        budgets: Option<Arc<Budgets>>,
    ) -> Self {
        let config = load(aws_config::defaults(BehaviorVersion::latest()), timeouts).await;
        Self::new(config, counter, budgets)
    }

    /// Clients for `config`, counting their calls with `counter`, each service's calls spaced by
    /// its budget in `budgets` ([`crate::budget`]).
    pub(crate) fn new(
        config: SdkConfig,
        counter: Option<AwsCallCounter>,
        budgets: Option<Arc<Budgets>>,
    ) -> Self {
        let mut aws = Self {
            opsworks: aws_sdk_opsworks::Client::from_conf(
                aws_sdk_opsworks::config::Builder::from(&config).build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&config).build(),
            ),
            ec2: Mutex::default(),
            opsworks_by_region: Mutex::default(),
            ssm: Mutex::default(),
            counter,
            budgets,
            http: config.http_client().unwrap_or_else(default_http_client),
            instances: Arc::default(),
            config,
        };
        aws.opsworks = aws_sdk_opsworks::Client::from_conf(configured!(
            aws,
            aws_sdk_opsworks::config::Builder::from(&aws.config),
            "opsworks"
        ));
        aws.iam = aws_sdk_iam::Client::from_conf(configured!(
            aws,
            aws_sdk_iam::config::Builder::from(&aws.config),
            "iam"
        ));
        aws
    }

    /// The HTTP client of `service`'s clients: the configuration's, spaced by the service's
    /// budget; `None` when calls are not limited.
    fn budgeted(&self, service: &str) -> Option<crate::budget::Budgeted> {
        let budget = self.budgets.as_ref()?.of(service)?;
        Some(crate::budget::Budgeted::new(self.http.clone(), budget))
    }

    /// The region used when an object names none.
    pub(crate) fn default_region(&self) -> Option<&str> {
        self.config.region().map(|r| r.as_ref())
    }

    /// OpsWorks at `region`, or at the controller's region when `None`.
    pub(crate) fn opsworks(&self, region: Option<&str>) -> aws_sdk_opsworks::Client {
        match region {
            Some(region) if Some(region) != self.default_region() => {
                let mut clients = self
                    .opsworks_by_region
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                clients
                    .entry(region.to_owned())
                    .or_insert_with(|| {
                        aws_sdk_opsworks::Client::from_conf(configured!(
                            self,
                            aws_sdk_opsworks::config::Builder::from(&self.config)
                                .region(Region::new(region.to_owned())),
                            "opsworks"
                        ))
                    })
                    .clone()
            }
            _ => self.opsworks.clone(),
        }
    }

    /// EC2 in `region` (the stack's own region).
    pub(crate) fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut clients = self.ec2.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                aws_sdk_ec2::Client::from_conf(configured!(
                    self,
                    aws_sdk_ec2::config::Builder::from(&self.config)
                        .region(Region::new(region.to_owned())),
                    "ec2"
                ))
            })
            .clone()
    }
}

impl Aws {
    /// The EC2 instance `id` in `region` (and `vpc`, when given), `None` when there is none;
    /// looked up in one `ec2:DescribeInstances` with the other IDs wanted in the same region and
    /// VPC at the same moment ([`crate::batch`]): a wave of objects makes a few calls, not one
    /// each. The IDs go in the `instance-id` filter, so one that names no instance is not an
    /// error for the call (as the `InstanceIds` parameter would make it) but `None` for its own
    /// callers.
    pub(crate) async fn ec2_instance(
        &self,
        region: &str,
        vpc: Option<&str>,
        id: &str,
    ) -> Result<Option<aws_sdk_ec2::types::Instance>, Failure> {
        use aws_sdk_ec2::types::Filter;
        let ec2 = self.ec2(region);
        let group = format!("{region} {}", vpc.unwrap_or_default());
        let vpc = vpc.map(str::to_owned);
        let fetch = move |ids: Vec<String>| {
            let (ec2, vpc) = (ec2.clone(), vpc.clone());
            async move {
                let mut request = ec2.describe_instances().filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(ids))
                        .build(),
                );
                if let Some(vpc) = vpc {
                    request = request.filters(Filter::builder().name("vpc-id").values(vpc).build());
                }
                let reservations = request
                    .into_paginator()
                    .items()
                    .send()
                    .collect::<Result<Vec<_>, _>>()
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(reservations
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(|i| Some((i.instance_id()?.to_owned(), i.clone())))
                    .collect())
            }
        };
        self.instances
            .get(&group, id, fetch)
            .await
            .unwrap_or_else(|| {
                Err(Failure {
                    kind: Kind::Unavailable,
                    code: None,
                    message: "the look-up ended without an answer".into(),
                })
            })
    }

    /// Systems Manager in `region`, or in the controller's region when `None`.
    pub(crate) fn ssm(&self, region: Option<&str>) -> aws_sdk_ssm::Client {
        let region = region.or(self.default_region()).unwrap_or_default();
        let mut clients = self.ssm.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let mut config = aws_sdk_ssm::config::Builder::from(&self.config);
                if !region.is_empty() {
                    config = config.region(Region::new(region.to_owned()));
                }
                aws_sdk_ssm::Client::from_conf(configured!(self, config, "ssm"))
            })
            .clone()
    }
}

/// Where hosts' agents call AWS: the same endpoints as the controller's own calls.
impl Aws {
    /// The endpoint URL configured for the service whose SDK service ID is `service_id`
    /// (`AWS_ENDPOINT_URL_<SERVICE>` or the profile's `endpoint_url` for it, else
    /// `AWS_ENDPOINT_URL`), as the SDK reads it; `None` when calls go to AWS's own endpoints.
    pub(crate) fn endpoint_override(&self, service_id: &str) -> Option<String> {
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id(service_id)
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        self.config
            .service_config()
            .and_then(|c| c.load_config(key))
            .or_else(|| self.config.endpoint_url().map(str::to_owned))
    }

    /// The Systems Manager endpoint in `region` (or the controller's): the configured one, or
    /// AWS's own for the region's partition, by the SDK's endpoint rules.
    pub(crate) async fn ssm_endpoint(&self, region: Option<&str>) -> Option<String> {
        use aws_sdk_ssm::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        let region = region.or(self.default_region());
        let params = region.and_then(|r| Params::builder().region(r).build().ok());
        self.endpoint("SSM", DefaultResolver::new().into_shared_resolver(), params)
            .await
    }

    /// The OpsWorks endpoint in `region` (or the controller's), as [`Aws::ssm_endpoint`].
    pub(crate) async fn opsworks_endpoint(&self, region: Option<&str>) -> Option<String> {
        use aws_sdk_opsworks::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        let region = region.or(self.default_region());
        let params = region.and_then(|r| Params::builder().region(r).build().ok());
        self.endpoint(
            "OpsWorks",
            DefaultResolver::new().into_shared_resolver(),
            params,
        )
        .await
    }

    /// The endpoint configured for `service_id`, or the one `resolver` (the service's own
    /// rules) gives for `params`.
    async fn endpoint<P: std::fmt::Debug + Send + Sync + 'static>(
        &self,
        service_id: &str,
        resolver: SharedEndpointResolver,
        params: Option<P>,
    ) -> Option<String> {
        if let Some(url) = self.endpoint_override(service_id) {
            return Some(url);
        }
        let params = EndpointResolverParams::new(params?);
        let endpoint = resolver.resolve_endpoint(&params).await.ok()?;
        Some(endpoint.url().to_owned())
    }
}

/// The configuration `loader` gives, with the controller's retry policy and `timeouts`.
/// The HTTP client the SDK gives a client built without one (hyper 1, rustls with aws-lc,
/// proxies from `HTTPS_PROXY`/`NO_PROXY` as for `BehaviorVersion::latest()`), made here so that
/// the budgets can wrap it: a configuration loaded from the environment carries no HTTP client
/// (the SDK adds its default to each client as it is built, past any wrapper).
fn default_http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The SDK's configuration from `loader`, with the controller's retries and time limits.
///
/// The SDK's stalled-stream protection is kept for answers and turned off for requests: it
/// takes a request body not read for its grace period (5 s) as a stalled upload and fails the
/// attempt as timed out, and a body is not read while its call waits for its turn in the
/// [budget](crate::budget). A wave's calls wait longer than that whenever the budget binds, and
/// every one of them failed ("could not reach the endpoint (timed out)") without being sent, and
/// used up the SDK's retry quota. The controller's request bodies are a few hundred bytes; an
/// upload that does stall is still bounded by the attempt's time limit.
async fn load(loader: aws_config::ConfigLoader, timeouts: Timeouts) -> SdkConfig {
    loader
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(timeouts.config())
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .upload_enabled(false)
                .build(),
        )
        .load()
        .await
}

/// What kind of failure an AWS call had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Throttled: retry with backoff.
    Throttled,
    /// The controller's identity may not do this: a person must grant it.
    AccessDenied,
    /// The thing asked about does not exist.
    NotFound,
    /// It already exists (IAM `EntityAlreadyExists`).
    AlreadyExists,
    /// The request was refused as invalid.
    Invalid,
    /// Network failure, timeout or a 5xx: retry with backoff.
    Unavailable,
    /// Anything else.
    Other,
}

/// A failed AWS call, summarised: kind, error code and message (AWS error messages carry no
/// secrets; request bodies, which might, are never included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What kind of failure.
    pub kind: Kind,
    /// The service's error code, when it answered.
    pub code: Option<String>,
    /// A one-line description.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Error codes that mean "throttled", across IAM, EC2 and OpsWorks.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "AuthFailure",
];
const NOT_FOUND_CODES: &[&str] = &[
    "NoSuchEntity",
    "InvalidActivationId",
    "InvalidInstanceId",
    "ResourceNotFoundException",
    "InvalidInstanceID.NotFound",
];
const INVALID_CODES: &[&str] = &[
    "ValidationException",
    "ValidationError",
    "InvalidInput",
    "MalformedPolicyDocument",
    "InvalidParameterValue",
    "InvalidParameters",
];

/// Classifies an SDK error.
pub(crate) fn classify<E>(error: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().map(str::to_owned);
            let message = err.message().unwrap_or("no message").to_owned();
            let status = Some(service.raw().status().as_u16());
            let kind = match code.as_deref() {
                Some(c) if THROTTLING_CODES.contains(&c) => Kind::Throttled,
                Some(c) if ACCESS_DENIED_CODES.contains(&c) => Kind::AccessDenied,
                Some(c) if NOT_FOUND_CODES.contains(&c) => Kind::NotFound,
                Some("EntityAlreadyExists") => Kind::AlreadyExists,
                Some(c) if INVALID_CODES.contains(&c) => Kind::Invalid,
                _ if status.is_some_and(|s| s >= 500) => Kind::Unavailable,
                _ => Kind::Other,
            };
            Failure {
                kind,
                code,
                message,
            }
        }
        // The call's time limits ran out (an attempt's, after the last retry, or the whole
        // operation's): the endpoint may be hung or overloaded; transient.
        SdkError::TimeoutError(_) => Failure {
            kind: Kind::Unavailable,
            code: None,
            message: "timed out: the endpoint did not answer within the call's time limit".into(),
        },
        // Not sent: the controller's own budget of the service's calls had no turn for it.
        SdkError::DispatchFailure(failure)
            if failure
                .as_connector_error()
                .is_some_and(|e| e.as_other() == Some(ErrorKind::ThrottlingError)) =>
        {
            Failure {
                kind: Kind::Throttled,
                code: None,
                message: format!(
                    "not sent: the controller's own budget of the service's calls had no turn for \
                     it within {}s (the service throttled it, or many calls wait)",
                    crate::budget::MAX_WAIT.as_secs()
                ),
            }
        }
        SdkError::DispatchFailure(failure) => Failure {
            kind: Kind::Unavailable,
            code: None,
            message: format!(
                "could not reach the endpoint ({})",
                if failure.is_timeout() {
                    "timed out"
                } else if failure.is_io() {
                    "connection failed"
                } else {
                    "dispatch failure"
                }
            ),
        },
        SdkError::ResponseError(_) => Failure {
            kind: Kind::Unavailable,
            code: None,
            message: "the endpoint sent a response that could not be read".into(),
        },
        other => Failure {
            kind: Kind::Other,
            code: None,
            message: aws_sdk_iam::error::DisplayErrorContext(other).to_string(),
        },
    }
}

impl Failure {
    /// What a step reports for this failure of `operation` (e.g. `iam:CreateUser`).
    /// Throttling and unavailability are retried with backoff; a denial needs a person.
    pub(crate) fn outcome(&self, operation: &str) -> Outcome {
        match self.kind {
            Kind::Throttled => Outcome::Retry(Observation::fails(
                reasons::THROTTLED,
                format!("{operation} was throttled; retrying with backoff ({self})"),
            )),
            Kind::Unavailable | Kind::Other => Outcome::Retry(Observation::fails(
                reasons::AWS_UNAVAILABLE,
                format!("{operation} failed; retrying with backoff ({self})"),
            )),
            Kind::AccessDenied => Outcome::Blocked(Observation::fails(
                reasons::ACCESS_DENIED,
                format!("{operation} was denied to the controller's AWS identity ({self})"),
            )),
            Kind::NotFound | Kind::AlreadyExists | Kind::Invalid => {
                Outcome::Blocked(Observation::fails(
                    reasons::AWS_REQUEST_REFUSED,
                    format!("{operation} was refused ({self})"),
                ))
            }
        }
    }
}

/// A value that must never be printed (a secret access key): `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Sensitive(String);

impl Sensitive {
    /// Wraps `value`.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value itself, for the one place that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hosts' agents are taken to call: AWS's endpoint for the region's partition, or the
    /// one configured for the controller.
    #[tokio::test]
    async fn endpoints_are_the_regions_own_or_the_configured_ones() {
        let config = |endpoint: Option<&str>| {
            let mut b = SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"));
            if let Some(url) = endpoint {
                b = b.endpoint_url(url);
            }
            Aws::new(b.build(), None, None)
        };
        let aws = config(None);
        assert_eq!(
            aws.ssm_endpoint(None).await.as_deref(),
            Some("https://ssm.us-east-1.amazonaws.com")
        );
        assert_eq!(
            aws.ssm_endpoint(Some("cn-north-1")).await.as_deref(),
            Some("https://ssm.cn-north-1.amazonaws.com.cn")
        );
        assert_eq!(
            aws.opsworks_endpoint(Some("eu-west-1")).await.as_deref(),
            Some("https://opsworks.eu-west-1.amazonaws.com")
        );
        let aws = config(Some("http://127.0.0.1:4566"));
        assert_eq!(
            aws.ssm_endpoint(None).await.as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(
            aws.opsworks_endpoint(Some("eu-west-1")).await.as_deref(),
            Some("http://127.0.0.1:4566")
        );
    }

    #[test]
    fn sensitive_values_are_redacted_in_debug_output() {
        let s = Sensitive::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    }

    #[test]
    fn throttling_is_retried_and_denial_blocks() {
        let throttled = Failure {
            kind: Kind::Throttled,
            code: Some("Throttling".into()),
            message: "slow down".into(),
        };
        assert!(
            matches!(throttled.outcome("iam:CreateUser"), Outcome::Retry(o) if o.reason == reasons::THROTTLED)
        );
        let denied = Failure {
            kind: Kind::AccessDenied,
            code: Some("AccessDenied".into()),
            message: "no".into(),
        };
        match denied.outcome("iam:CreateUser") {
            Outcome::Blocked(o) => {
                assert_eq!(o.reason, reasons::ACCESS_DENIED);
                assert!(o.message.contains("iam:CreateUser"), "{}", o.message);
            }
            other => panic!("{other:?}"),
        }
    }

    /// An SDK configuration loader for an endpoint at `url` on loopback, with made-up
    /// credentials.
    fn loader_for(url: &str) -> aws_config::ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "test",
            ))
    }

    /// Calls that wait for their turn in the budget longer than the SDK's stalled-stream grace
    /// period (5 s, counted from the SDK's first look at the upload, a second in) are sent when
    /// their turn comes, not failed as timed-out uploads: at one call a second, the last of ten
    /// calls made at once waits about 8 s, and all ten reach the endpoint and get its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_wait_for_their_turn_longer_than_the_stall_grace_period_are_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Answers every request with IAM's NoSuchEntity.
        let server = tokio::spawn(crate::http::accept(listener, |_| {
            (
                hyper::StatusCode::NOT_FOUND,
                "text/xml",
                "<ErrorResponse><Error><Type>Sender</Type><Code>NoSuchEntity</Code>\
                 <Message>no such group</Message></Error><RequestId>1</RequestId></ErrorResponse>"
                    .to_owned(),
            )
        }));
        let loader = loader_for(&url);
        let budgets = Arc::new(Budgets::new(Some(1.0), None));
        let metrics = crate::metrics::Metrics::new();
        let aws = Aws::new(
            load(loader, Timeouts::default()).await,
            Some(metrics.aws_interceptor()),
            Some(budgets),
        );
        let started = std::time::Instant::now();
        let calls = (0..10).map(|_| async {
            let result = aws.iam.get_group().group_name("OpsWorks-x").send().await;
            (result, started.elapsed())
        });
        let ended = futures::future::join_all(calls).await;
        let last = ended.iter().map(|(_, took)| *took).max().unwrap();
        assert!(
            last > Duration::from_secs(7),
            "the last call waited {last:?}"
        );
        for (result, took) in &ended {
            let failure = classify(result.as_ref().expect_err("NoSuchEntity"));
            assert_eq!(failure.kind, Kind::NotFound, "after {took:?}: {failure}");
        }
        // Each was sent once and answered: no attempt failed on the way (a stalled upload,
        // retried by the SDK).
        let attempts: Vec<String> = metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("registrar_aws_calls_total{"))
            .map(str::to_owned)
            .collect();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert!(
            attempts[0].contains("outcome=\"client_error\"") && attempts[0].ends_with(" 10"),
            "{attempts:?}"
        );
        server.abort();
    }

    /// An endpoint that accepts connections and never answers: every call there ends within its
    /// operation time limit, as a transient failure that says it timed out, after more than one
    /// attempt.
    #[tokio::test]
    async fn a_call_to_an_endpoint_that_never_answers_times_out_as_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let held = {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut connections = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    connections.push(stream);
                }
            })
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            attempt: Duration::from_millis(300),
            operation: Duration::from_secs(3),
        };
        let aws = Aws::new(load(loader_for(&url), timeouts).await, None, None);
        let started = std::time::Instant::now();
        let call = aws.iam.get_group().group_name("OpsWorks-x").send();
        let result = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call did not end within 10 s");
        let took = started.elapsed();
        let error = result.expect_err("an endpoint that never answers");
        let failure = classify(&error);
        assert_eq!(failure.kind, Kind::Unavailable, "{failure}");
        assert!(failure.message.contains("timed out"), "{failure}");
        assert!(took < Duration::from_secs(4), "took {took:?}");
        assert!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the timed-out attempt was not retried"
        );
        match failure.outcome("iam:GetGroup") {
            Outcome::Retry(o) => {
                assert_eq!(o.reason, reasons::AWS_UNAVAILABLE);
                assert!(o.message.contains("iam:GetGroup"), "{}", o.message);
                assert!(o.message.contains("timed out"), "{}", o.message);
            }
            other => panic!("{other:?}"),
        }
        held.abort();
    }
}
