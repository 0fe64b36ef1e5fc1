//! A recording, fault-injecting HTTP proxy in front of moto's server.
//!
//! moto serves IAM, EC2 and STS but neither fails on purpose nor says what it was asked. The
//! proxy sits between a client (the controller) and moto and:
//!
//! - forwards every request as it came (method, path, query, headers, `Host` and
//!   `Authorization` included, so a SigV4 signature stays what the client signed, and body) and
//!   streams the answer back; moto does not verify signatures (unless told to with
//!   `INITIAL_NO_AUTH_ACTION_COUNT`), and picks the service from the credential scope;
//! - recognises each AWS call: the service from the SigV4 credential scope
//!   (`Credential=AKID/20260101/us-east-1/iam/aws4_request`, or `X-Amz-Credential` of a presigned
//!   URL), which also gives the caller's access key ID; the action from the query protocol's
//!   `Action` parameter (form-encoded body or query string), or from `X-Amz-Target` for the JSON
//!   protocols;
//! - records every request as a [`ProxyCall`] ([`CallSummary`] counts them by service and
//!   action): what was called, by which key, and how it was answered; never a body, so never a
//!   secret;
//! - given a [`KeyStore`] ([`ProxyConfig::key_store`], the OpsWorks endpoint's), puts there the
//!   access key ID and secret of every successful IAM `CreateAccessKey` answer before passing the
//!   answer on, so that the endpoint can verify signatures made with the key without reading all
//!   of moto's state (see [`crate::keys`]);
//! - injects [`Faults`], drawn exactly as the OpsWorks endpoint draws them (one generator seeded
//!   with [`Faults::seed`], four numbers per recognised call in arrival order, five with hangs; see
//!   [`crate::faults`]), and answers them in the service's own wire format, so that an AWS SDK
//!   classifies them as it does AWS's own:
//!
//! | fault | IAM, STS (`awsQuery`) | EC2 (`ec2Query`) | JSON protocols |
//! | --- | --- | --- | --- |
//! | throttling | 400 `Throttling` | 503 `RequestLimitExceeded` | 400 `ThrottlingException` |
//! | 500 | 500 `InternalFailure` | 500 `InternalError` | 500 `InternalFailure` |
//! | 503 | 503 `ServiceUnavailable` | 503 `ServiceUnavailable` | 503 `ServiceUnavailable` |
//! | hang | no answer: held until the faults are set again, then the connection is closed | same | same |
//!
//! `awsQuery` errors are `<ErrorResponse><Error><Type>Sender|Receiver</Type><Code>…</Code>
//! <Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`; `ec2Query` errors are
//! `<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors>
//! <RequestID>…</RequestID></Response>`. [`Faults::only_actions`] names actions plainly
//! (`CreateUser`) or qualified by service (`iam:CreateUser`, `ec2:DescribeInstances`).
//! Requests that name no action (moto's own `/moto-api/...`) are forwarded and recorded, never
//! fault-injected.
//!
//! Test controls, on the proxy's own address, never forwarded nor fault-injected, mirror the
//! endpoint's `/_endpoint/` ones:
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_proxy/health` | `ok` |
//! | `GET /_proxy/calls` | the call records, a JSON array of [`ProxyCall`] |
//! | `DELETE /_proxy/calls` | forgets the call records |
//! | `GET /_proxy/faults`, `PUT /_proxy/faults` | reads / sets [`Faults`] (JSON; absent fields take their defaults) |
//! | `GET /_proxy/summary` | the calls counted by service and action, as a text table ([`CallSummary`]) |
//!
//! ```no_run
//! use opsworks_endpoint::moto::MotoServer;
//! use opsworks_endpoint::proxy::{Proxy, ProxyConfig};
//! use opsworks_endpoint::Faults;
//!
//! let moto = MotoServer::shared().unwrap();
//! let mut config = ProxyConfig::new(moto.url());
//! config.faults = Faults { throttle_rate: 0.3, seed: 7, ..Faults::default() };
//! let proxy = Proxy::start(config).unwrap();
//! // point AWS_ENDPOINT_URL_IAM / _EC2 / _STS at proxy.url() ...
//! print!("{}", proxy.summary());
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::authorize;
use crate::aws::Aws;
use crate::error::ApiError;
use crate::faults::{Decision, Faults, Injector};
use crate::keys::{self, KeyStore};
use crate::record::{CallRecord, InjectedFault};

/// Prefix of the proxy's test-control routes.
pub const PROXY_CONTROL_PREFIX: &str = "/_proxy/";

/// Largest upstream body read before it is passed on: an error's (to learn its code) or a
/// `CreateAccessKey` answer's (to learn the key).
const MAX_READ_BODY: usize = 1 << 20;

/// Headers that belong to one connection, not to the request or answer: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How to run a proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to listen on; it must be a loopback address. Port 0 picks a free port. Default
    /// `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// moto's base URL, e.g. `http://127.0.0.1:5000` (plain HTTP, no path).
    pub upstream: String,
    /// Fault injection; changeable later through the handle or `PUT /_proxy/faults`.
    pub faults: Faults,
    /// Largest request body accepted, in bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Where to put the access key ID and secret of every successful IAM `CreateAccessKey`
    /// answer: the OpsWorks endpoint's store ([`crate::EndpointHandle::key_store`], or the
    /// one given in [`crate::Config::key_store`]), so that it knows the keys made through the
    /// proxy at once. Default `None`: keys are not learnt.
    pub key_store: Option<KeyStore>,
    /// Pass IAM's error answers on in the shape IAM gives them (`<ErrorResponse><Error>`):
    /// moto's errors of its own access control (`AccessDenied` once its
    /// `INITIAL_NO_AUTH_ACTION_COUNT` is spent) come as `<ErrorResponse><Errors><Error>`, which
    /// the AWS SDK's IAM client does not read a code from. Default false: passed on as they are.
    pub fix_iam_error_shape: bool,
    /// Authorize every IAM and EC2 call signed with a moto IAM user's key against that user's
    /// policies, with the resource ARN and condition keys AWS authorizes it on (see
    /// [`crate::authorize`]), before moto sees it; refused calls are answered as AWS answers
    /// them (IAM: 403 `AccessDenied`; EC2: 403 `UnauthorizedOperation`) and not forwarded. The
    /// value is the credentials (access key ID, secret) the proxy looks users and policies up
    /// in moto with. Signatures are not verified here. Default `None`: nothing is authorized
    /// (moto may still, on actions only).
    pub enforce_iam_policies: Option<(String, String)>,
}

impl ProxyConfig {
    /// A proxy on a free loopback port in front of `upstream`, without faults.
    pub fn new(upstream: &str) -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: upstream.to_owned(),
            faults: Faults::default(),
            max_body_bytes: 16 << 20,
            key_store: None,
            fix_iam_error_shape: false,
            enforce_iam_policies: None,
        }
    }
}

/// One request through the proxy, as it saw and answered it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyCall {
    /// Sequence number, from 0, in the order answers started.
    pub seq: u64,
    /// The service, as the SigV4 credential scope names it (`iam`, `ec2`, `sts`); empty when the
    /// request carried no credential.
    pub service: String,
    /// The action (`CreateUser`); empty when the request named none.
    pub action: String,
    /// Access key ID from the credential scope, when there was one.
    pub access_key_id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path (without the query).
    pub path: String,
    /// HTTP status of the answer (502 when moto could not be reached).
    pub status: u16,
    /// Error code of an error answer, injected or moto's (`NoSuchEntity`), when it had one.
    pub error_code: Option<String>,
    /// The fault injected into this call, if any (the call was then not forwarded).
    pub injected: Option<InjectedFault>,
    /// Whether a latency spike was injected.
    pub latency_spike: bool,
    /// When the call arrived.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    /// How long until the answer's status and headers were sent, injected latency included.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
}

impl ProxyCall {
    /// `service:Action`, e.g. `iam:CreateUser`.
    pub fn operation(&self) -> String {
        format!("{}:{}", self.service, self.action)
    }
}

fn unix_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Counts of calls to one operation (or to all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    /// Calls.
    pub calls: u64,
    /// Answers with an HTTP status of 400 or more, injected or not.
    pub errors: u64,
    /// Injected throttling.
    pub throttling: u64,
    /// Injected 500s.
    pub internal_failure: u64,
    /// Injected 503s.
    pub service_unavailable: u64,
    /// Injected latency spikes.
    pub latency_spikes: u64,
    /// Injected hangs (calls held without an answer).
    pub hung: u64,
}

impl CallCounts {
    /// Injected faults of every kind (latency spikes not counted).
    pub fn injected(&self) -> u64 {
        self.throttling + self.internal_failure + self.service_unavailable + self.hung
    }

    fn add(&mut self, other: &CallCounts) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.throttling += other.throttling;
        self.internal_failure += other.internal_failure;
        self.service_unavailable += other.service_unavailable;
        self.latency_spikes += other.latency_spikes;
        self.hung += other.hung;
    }
}

/// Calls counted by (service, action), for tests and benchmarks to print (`Display` is a text
/// table) and check. Built from the proxy's records, the endpoint's (service `opsworks`), or
/// both merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallSummary {
    /// Counts by (service, action). Requests with no action are counted under their method and
    /// path, e.g. `GET /moto-api/data.json`.
    pub by_operation: BTreeMap<(String, String), CallCounts>,
}

impl CallSummary {
    /// Counts one call.
    pub fn add(
        &mut self,
        service: &str,
        action: &str,
        status: u16,
        injected: Option<InjectedFault>,
        latency_spike: bool,
    ) {
        let c = self
            .by_operation
            .entry((service.to_owned(), action.to_owned()))
            .or_default();
        c.calls += 1;
        if status >= 400 {
            c.errors += 1;
        }
        match injected {
            Some(InjectedFault::Throttling) => c.throttling += 1,
            Some(InjectedFault::InternalFailure) => c.internal_failure += 1,
            Some(InjectedFault::ServiceUnavailable) => c.service_unavailable += 1,
            Some(InjectedFault::Hang) => c.hung += 1,
            None => {}
        }
        if latency_spike {
            c.latency_spikes += 1;
        }
    }

    /// The proxy's calls.
    pub fn of_proxy(calls: &[ProxyCall]) -> Self {
        let mut s = Self::default();
        for c in calls {
            let action = if c.action.is_empty() {
                format!("{} {}", c.method, c.path)
            } else {
                c.action.clone()
            };
            s.add(&c.service, &action, c.status, c.injected, c.latency_spike);
        }
        s
    }

    /// The endpoint's calls, under their service: `opsworks` or `ssm`.
    pub fn of_endpoint(calls: &[CallRecord]) -> Self {
        let mut s = Self::default();
        for c in calls {
            s.add(&c.service, &c.action, c.status, c.injected, c.latency_spike);
        }
        s
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &CallSummary) {
        for (k, v) in &other.by_operation {
            self.by_operation.entry(k.clone()).or_default().add(v);
        }
    }

    /// The counts of one operation (zero when never called).
    pub fn get(&self, service: &str, action: &str) -> CallCounts {
        self.by_operation
            .get(&(service.to_owned(), action.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// The counts of every operation of `service`.
    pub fn service(&self, service: &str) -> CallCounts {
        let mut t = CallCounts::default();
        for ((s, _), c) in &self.by_operation {
            if s == service {
                t.add(c);
            }
        }
        t
    }

    /// The counts of every call.
    pub fn total(&self) -> CallCounts {
        let mut t = CallCounts::default();
        for c in self.by_operation.values() {
            t.add(c);
        }
        t
    }
}

impl std::fmt::Display for CallSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sw = self
            .by_operation
            .keys()
            .map(|(s, _)| s.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let aw = self
            .by_operation
            .keys()
            .map(|(_, a)| a.len())
            .chain([9])
            .max()
            .unwrap_or(9);
        let row = |f: &mut std::fmt::Formatter<'_>, s: &str, a: &str, c: &CallCounts| {
            writeln!(
                f,
                "{s:<sw$}  {a:<aw$}  {:>6}  {:>6}  {:>9}  {:>5}  {:>5}  {:>6}  {:>4}",
                c.calls,
                c.errors,
                c.throttling,
                c.internal_failure,
                c.service_unavailable,
                c.latency_spikes,
                c.hung
            )
        };
        writeln!(
            f,
            "{:<sw$}  {:<aw$}  {:>6}  {:>6}  {:>9}  {:>5}  {:>5}  {:>6}  {:>4}",
            "service", "operation", "calls", "errors", "throttled", "500", "503", "spikes", "hung"
        )?;
        for ((s, a), c) in &self.by_operation {
            row(f, s, a, c)?;
        }
        row(f, "total", "", &self.total())
    }
}

/// Starts proxies.
pub struct Proxy;

struct ProxyState {
    calls: Vec<ProxyCall>,
    next_call: u64,
    injector: Injector,
}

struct Shared {
    state: Mutex<ProxyState>,
    /// moto's `host:port`.
    upstream: String,
    max_body: usize,
    key_store: Option<KeyStore>,
    fix_iam_error_shape: bool,
    /// With [`ProxyConfig::enforce_iam_policies`]: moto's IAM, to learn callers' policies.
    authorizer: Option<Aws>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, mut call: ProxyCall) {
        let mut st = self.lock();
        call.seq = st.next_call;
        st.next_call += 1;
        st.calls.push(call);
    }
}

/// `host:port` of a plain-HTTP base URL.
fn upstream_authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("the upstream must be a plain http:// URL, not {url:?}"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "the upstream must be a base URL without a path, not {url:?}"
        ));
    }
    Ok(if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:80")
    })
}

impl Proxy {
    /// Serves a proxy with `config` on its own thread with its own tokio runtime, so that sync
    /// tests and any async runtime can use it. Returns once it accepts connections. The proxy
    /// stops when the handle is dropped.
    pub fn start(config: ProxyConfig) -> Result<ProxyHandle, String> {
        config.faults.validate()?;
        if !config.listen.ip().is_loopback() {
            return Err(format!(
                "the proxy listens on loopback only, not on {}",
                config.listen
            ));
        }
        let upstream = upstream_authority(&config.upstream)?;
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            state: Mutex::new(ProxyState {
                calls: Vec::new(),
                next_call: 0,
                injector: Injector::new(config.faults.clone()),
            }),
            upstream,
            max_body: config.max_body_bytes,
            key_store: config.key_store.clone(),
            fix_iam_error_shape: config.fix_iam_error_shape,
            authorizer: config.enforce_iam_policies.as_ref().map(|credentials| {
                let mut c = crate::Config::with_moto(&config.upstream);
                c.moto_credentials = credentials.clone();
                Aws::new(
                    &c,
                    config.key_store.clone().unwrap_or_default(),
                    Default::default(),
                )
            }),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("moto-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("moto-proxy-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot listen: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    serve(listener, serving, stop_rx).await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("cannot start the proxy thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the proxy thread ended before serving".to_owned())??;
        tracing::info!("moto proxy on {url} for {}", config.upstream);
        Ok(ProxyHandle {
            shared,
            addr,
            url,
            upstream: config.upstream.trim_end_matches('/').to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running proxy. Dropping it stops the proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: String,
    upstream: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("url", &self.url)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl ProxyHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234` (the SDK's `endpoint_url` for IAM, EC2, STS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream (moto) base URL.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Every call so far, in the order answers started.
    pub fn calls(&self) -> Vec<ProxyCall> {
        self.shared.lock().calls.clone()
    }

    /// Forgets the call records.
    pub fn clear_calls(&self) {
        self.shared.lock().calls.clear();
    }

    /// The calls so far, counted by service and action.
    pub fn summary(&self) -> CallSummary {
        CallSummary::of_proxy(&self.shared.lock().calls)
    }

    /// The fault settings in force.
    pub fn faults(&self) -> Faults {
        self.shared.lock().injector.faults.clone()
    }

    /// Sets the fault settings (re-seeding the generator with `faults.seed`).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.shared.lock().injector = Injector::new(faults);
        Ok(())
    }

    /// Stops the proxy and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { HangUp::check(route(&shared, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!("proxy connection ended: {e}");
                    }
                });
            }
        }
    }
}

/// The end of a hung call: the connection is closed without an answer. [`HangUp::response`]
/// marks the response that [`HangUp::check`] turns into this error, which makes hyper close the
/// connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hung call released: closing the connection without an answer")
    }
}

impl std::error::Error for HangUp {}

impl HangUp {
    pub(crate) fn response<B: Default>() -> Response<B> {
        let mut r = Response::new(B::default());
        r.extensions_mut().insert(HangUp);
        r
    }

    pub(crate) fn check<B>(r: Response<B>) -> Result<Response<B>, HangUp> {
        match r.extensions().get::<HangUp>() {
            Some(_) => Err(HangUp),
            None => Ok(r),
        }
    }
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: u16, v: &Value) -> Response<ProxyBody> {
    response(status, "application/json", v.to_string())
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    if let Some(rest) = req.uri().path().strip_prefix(PROXY_CONTROL_PREFIX) {
        let rest = rest.to_owned();
        return control(shared, req, &rest).await;
    }
    proxy(shared, req).await
}

async fn control(shared: &Shared, req: Request<Incoming>, rest: &str) -> Response<ProxyBody> {
    let bad = |msg: String| json_response(400, &serde_json::json!({ "error": msg }));
    let method = req.method().clone();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["health"]) => response(200, "text/plain", "ok\n"),
        (Method::GET, ["calls"]) => {
            let calls = shared.lock().calls.clone();
            json_response(200, &serde_json::to_value(calls).unwrap_or(Value::Null))
        }
        (Method::DELETE, ["calls"]) => {
            shared.lock().calls.clear();
            response(204, "text/plain", "")
        }
        (Method::GET, ["summary"]) => {
            let summary = CallSummary::of_proxy(&shared.lock().calls);
            response(200, "text/plain", summary.to_string())
        }
        (Method::GET, ["faults"]) => {
            let f = shared.lock().injector.faults.clone();
            json_response(200, &serde_json::to_value(f).unwrap_or(Value::Null))
        }
        (Method::PUT, ["faults"]) => {
            let body = match Limited::new(req.into_body(), shared.max_body)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return bad(format!("cannot read the body: {e}")),
            };
            let faults: Faults = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return bad(format!("not faults: {e}")),
            };
            if let Err(e) = faults.validate() {
                return bad(e);
            }
            shared.lock().injector = Injector::new(faults.clone());
            json_response(200, &serde_json::to_value(faults).unwrap_or(Value::Null))
        }
        _ => json_response(
            404,
            &serde_json::json!({ "error": format!("no control route {rest}") }),
        ),
    }
}

/// The wire format of a service's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `awsQuery` (IAM, STS, ...): `<ErrorResponse>`.
    Query,
    /// `ec2Query`: `<Response><Errors>`.
    Ec2Query,
    /// `awsJson1_0` / `awsJson1_1`: `{"__type": ...}`.
    Json,
}

/// What the proxy learns of a request before forwarding it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Recognised {
    service: String,
    action: String,
    access_key_id: Option<String>,
}

pub(crate) fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The value of `name` in a form-encoded string.
fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v))
    })
}

fn recognise(headers: &HeaderMap, query: &str, body: &[u8]) -> Recognised {
    let mut r = Recognised::default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // `Credential=AKID/date/region/service/aws4_request`, from the header or, for a presigned
    // URL, `X-Amz-Credential`. Read leniently: the proxy recognises calls, it does not judge
    // them (moto answers what it answers).
    let scope = header("authorization")
        .and_then(|a| {
            let start = a.find("Credential=")? + "Credential=".len();
            let rest = &a[start..];
            let end = rest
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            Some(rest[..end].to_owned())
        })
        .or_else(|| form_value(query, "X-Amz-Credential"))
        .and_then(|credential| {
            let parts: Vec<&str> = credential.split('/').collect();
            (parts.len() == 5 && !parts[0].is_empty())
                .then(|| (parts[0].to_owned(), parts[3].to_owned()))
        });
    if let Some((key, service)) = scope {
        r.access_key_id = Some(key);
        r.service = service;
    }
    if let Some(target) = header("x-amz-target") {
        r.action = target.rsplit('.').next().unwrap_or(target).to_owned();
        return r;
    }
    let form_body =
        header("content-type").is_none_or(|t| t.starts_with("application/x-www-form-urlencoded"));
    let from_body = if form_body {
        std::str::from_utf8(body)
            .ok()
            .and_then(|b| form_value(b, "Action"))
    } else {
        None
    };
    r.action = from_body
        .or_else(|| form_value(query, "Action"))
        .unwrap_or_default();
    r
}

fn protocol(service: &str, headers: &HeaderMap) -> Protocol {
    if service == "ec2" {
        Protocol::Ec2Query
    } else if headers.contains_key("x-amz-target") {
        Protocol::Json
    } else {
        Protocol::Query
    }
}

/// The answer to an injected fault, in the service's wire format: (status, code, content type,
/// body).
fn fault_answer(
    fault: InjectedFault,
    decision: &Decision,
    protocol: Protocol,
    request_id: &str,
) -> (u16, String, &'static str, String) {
    match protocol {
        Protocol::Json => {
            let e = decision.error().unwrap_or_else(|| {
                ApiError::new(500, "InternalFailure", "no error for the injected fault")
            });
            (
                e.status,
                e.code.to_owned(),
                "application/x-amz-json-1.1",
                e.body(),
            )
        }
        Protocol::Query => {
            let (status, kind, code, message) = match fault {
                InjectedFault::Throttling => (400, "Sender", "Throttling", "Rate exceeded"),
                InjectedFault::InternalFailure => (
                    500,
                    "Receiver",
                    "InternalFailure",
                    "The request processing has failed because of an unknown error, exception \
                     or failure.",
                ),
                InjectedFault::ServiceUnavailable | InjectedFault::Hang => (
                    503,
                    "Receiver",
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                ),
            };
            let body = format!(
                "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code>\
                 <Message>{message}</Message></Error><RequestId>{request_id}</RequestId>\
                 </ErrorResponse>"
            );
            (status, code.to_owned(), "text/xml", body)
        }
        Protocol::Ec2Query => {
            let (status, code, message) = match fault {
                InjectedFault::Throttling => {
                    (503, "RequestLimitExceeded", "Request limit exceeded.")
                }
                InjectedFault::InternalFailure => {
                    (500, "InternalError", "An internal error has occurred.")
                }
                InjectedFault::ServiceUnavailable | InjectedFault::Hang => (
                    503,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                ),
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                 <Code>{code}</Code><Message>{message}</Message></Error></Errors>\
                 <RequestID>{request_id}</RequestID></Response>"
            );
            (status, code.to_owned(), "text/xml;charset=UTF-8", body)
        }
    }
}

/// `<ErrorResponse><Errors><Error>…</Error></Errors>…` as IAM answers it:
/// `<ErrorResponse><Error>…</Error>…`; `None` when `body` is not of that shape.
fn iam_error_shape(body: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<ErrorResponse>") || !text.contains("<Errors>") {
        return None;
    }
    Some(Bytes::from(text.replacen("<Errors>", "", 1).replacen(
        "</Errors>",
        "",
        1,
    )))
}

/// The error code of an error body: the first `<Code>` of an XML one, `__type` of a JSON one.
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if let Some(start) = text.find("<Code>") {
        let rest = &text[start + "<Code>".len()..];
        let end = rest.find("</Code>")?;
        return Some(rest[..end].trim().to_owned()).filter(|c| !c.is_empty());
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let t = v.get("__type")?.as_str()?;
    Some(t.rsplit('#').next().unwrap_or(t).to_owned())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

async fn proxy(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let at = SystemTime::now();
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut call = ProxyCall {
        seq: 0,
        service: String::new(),
        action: String::new(),
        access_key_id: None,
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        status: 0,
        error_code: None,
        injected: None,
        latency_spike: false,
        at,
        duration: Duration::ZERO,
    };
    let body = match Limited::new(body, shared.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            call.status = 413;
            call.duration = started.elapsed();
            shared.record(call);
            return response(
                413,
                "text/plain",
                format!("the proxy could not read the request body: {e}\n"),
            );
        }
    };
    let recognised = recognise(&parts.headers, parts.uri.query().unwrap_or(""), &body);
    call.service = recognised.service;
    call.action = recognised.action;
    call.access_key_id = recognised.access_key_id;

    // Injected faults.
    if !call.action.is_empty() {
        let qualified = format!("{}:{}", call.service, call.action);
        let mut decision = shared
            .lock()
            .injector
            .decide_any(&[call.action.as_str(), qualified.as_str()]);
        call.latency_spike = decision.spike;
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        if decision.fault == Some(InjectedFault::Hang) {
            tracing::info!(
                "{} -> injected hang: held without an answer",
                call.operation()
            );
            call.injected = Some(InjectedFault::Hang);
            shared.record(call);
            decision.held().await;
            return HangUp::response();
        }
        if let Some(fault) = decision.fault {
            let request_id = uuid::Uuid::new_v4().to_string();
            let protocol = protocol(&call.service, &parts.headers);
            let (status, code, content_type, body) =
                fault_answer(fault, &decision, protocol, &request_id);
            tracing::info!("{} -> injected {status} {code}", call.operation());
            call.status = status;
            call.error_code = Some(code.clone());
            call.injected = Some(fault);
            call.duration = started.elapsed();
            shared.record(call);
            let mut r = response(status, content_type, body);
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut().insert("x-amzn-requestid", v);
            }
            if protocol == Protocol::Json
                && let Ok(v) = HeaderValue::from_str(&code)
            {
                r.headers_mut().insert("x-amzn-errortype", v);
            }
            return r;
        }
    }

    // Authorizing.
    if let Some(aws) = &shared.authorizer
        && matches!(call.service.as_str(), "iam" | "ec2")
        && !call.action.is_empty()
        && let Some(key) = &call.access_key_id
    {
        let form_body = parts.headers.get(CONTENT_TYPE).is_none_or(|t| {
            t.as_bytes()
                .starts_with(b"application/x-www-form-urlencoded")
        });
        let mut params = authorize::form_params(parts.uri.query().unwrap_or(""));
        if form_body && let Ok(text) = std::str::from_utf8(&body) {
            params.extend(authorize::form_params(text));
        }
        let refusal =
            authorize::authorize_query_call(aws, key, &call.service, &call.action, &params)
                .await
                .err();
        if let Some(refusal) = refusal {
            let request_id = uuid::Uuid::new_v4().to_string();
            let (status, code, message) = match refusal {
                authorize::Refusal::Denied(m) => (
                    403,
                    match call.service.as_str() {
                        "ec2" => "UnauthorizedOperation",
                        _ => "AccessDenied",
                    },
                    m,
                ),
                authorize::Refusal::Failed(m) => (500, "InternalFailure", m),
            };
            let message = xml_escape(&message);
            let (content_type, body) = match call.service.as_str() {
                "ec2" => (
                    "text/xml;charset=UTF-8",
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                         <Code>{code}</Code><Message>{message}</Message></Error></Errors>\
                         <RequestID>{request_id}</RequestID></Response>"
                    ),
                ),
                _ => (
                    "text/xml",
                    format!(
                        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
                         <Message>{message}</Message></Error><RequestId>{request_id}</RequestId>\
                         </ErrorResponse>"
                    ),
                ),
            };
            tracing::info!(
                "{} -> {status} {code} (the caller's policies)",
                call.operation()
            );
            call.status = status;
            call.error_code = Some(code.to_owned());
            call.duration = started.elapsed();
            shared.record(call);
            return response(status, content_type, body);
        }
    }

    // Forwarding.
    let upstream = match forward(shared, &parts, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{} -> moto unreachable: {e}", call.operation());
            call.status = 502;
            call.duration = started.elapsed();
            shared.record(call);
            return response(
                502,
                "text/plain",
                format!("the proxy could not reach moto: {e}\n"),
            );
        }
    };
    let (mut head, upstream_body) = upstream.into_parts();
    for name in HOP_BY_HOP {
        head.headers.remove(*name);
    }
    call.status = head.status.as_u16();
    let learn_key = shared.key_store.as_ref().filter(|_| {
        head.status.is_success()
            && call.service == "iam"
            && call.action == "CreateAccessKey"
            && head
                .headers
                .get("content-encoding")
                .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"))
    });
    let body = if call.status >= 400 || learn_key.is_some() {
        // Small: read it to learn the error code, or the key made, then pass it on as it was.
        match Limited::new(upstream_body, MAX_READ_BODY).collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                if call.status >= 400 {
                    call.error_code = error_code(&b);
                }
                let b = match shared.fix_iam_error_shape && call.service == "iam" {
                    true => match iam_error_shape(&b) {
                        Some(fixed) => {
                            head.headers.remove(CONTENT_LENGTH);
                            fixed
                        }
                        None => b,
                    },
                    false => b,
                };
                if let Some(store) = learn_key {
                    // Before the answer goes out: by the time the caller signs anything with
                    // the key, the endpoint knows it. The secret is neither logged nor recorded.
                    match keys::created_access_key(&b) {
                        Some((id, secret)) => {
                            tracing::debug!("{} -> learnt access key {id}", call.operation());
                            store.insert(id, secret);
                        }
                        None => tracing::warn!(
                            "{} -> {}: no access key found in the answer",
                            call.operation(),
                            call.status
                        ),
                    }
                }
                full(b)
            }
            Err(e) => {
                call.status = 502;
                call.duration = started.elapsed();
                shared.record(call);
                return response(
                    502,
                    "text/plain",
                    format!("the proxy could not read moto's answer: {e}\n"),
                );
            }
        }
    } else {
        upstream_body.boxed()
    };
    match &call.error_code {
        Some(code) => tracing::info!("{} -> {} {code}", call.operation(), call.status),
        None => tracing::debug!("{} -> {}", call.operation(), call.status),
    }
    call.duration = started.elapsed();
    shared.record(call);
    Response::from_parts(head, body)
}

/// Sends the request to moto on a connection of its own and returns the answer (its body still
/// to be read).
async fn forward(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Incoming>, String> {
    let stream = tokio::net::TcpStream::connect(&shared.upstream)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", shared.upstream))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", shared.upstream))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let length = body.len();
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(path)
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let had_body_framing = parts.headers.contains_key(CONTENT_LENGTH)
        || parts.headers.contains_key("transfer-encoding");
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != CONTENT_LENGTH {
            req.headers_mut().append(name.clone(), value.clone());
        }
    }
    if had_body_framing || length > 0 {
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length as u64));
    }
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("{} did not answer: {e}", shared.upstream))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_sdk_iam::config::interceptors::FinalizerInterceptorContextRef;
    use aws_sdk_iam::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
    use aws_sdk_iam::config::{ConfigBag, Intercept, RuntimeComponents};
    use aws_sdk_iam::error::{BoxError, ProvideErrorMetadata};
    use aws_sdk_iam::operation::RequestId;

    #[test]
    fn moto_access_control_errors_are_passed_on_in_iam_shape() {
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>no</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
        let fixed = super::iam_error_shape(moto).unwrap();
        let fixed = std::str::from_utf8(&fixed).unwrap();
        assert!(
            fixed.contains("<ErrorResponse><Error><Code>AccessDenied</Code>"),
            "{fixed}"
        );
        assert!(!fixed.contains("Errors"), "{fixed}");
        let iam = b"<ErrorResponse><Error><Code>NoSuchEntity</Code></Error></ErrorResponse>";
        assert!(super::iam_error_shape(iam).is_none());
    }

    use super::*;
    use crate::moto::MotoServer;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn moto() -> &'static MotoServer {
        MotoServer::shared().unwrap_or_else(|e| panic!("cannot start moto: {e}"))
    }

    fn start(faults: Faults) -> ProxyHandle {
        let mut config = ProxyConfig::new(moto().url());
        config.faults = faults;
        Proxy::start(config).unwrap_or_else(|e| panic!("cannot start the proxy: {e}"))
    }

    fn unique(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Records how the SDK's own retry classifiers (those of the operation, in their order, as
    /// the retry strategy runs them) judge each attempt.
    #[derive(Debug, Clone, Default)]
    struct Classified(Arc<Mutex<Vec<RetryAction>>>);

    impl Classified {
        fn take(&self) -> Vec<RetryAction> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl Intercept for Classified {
        fn name(&self) -> &'static str {
            "Classified"
        }

        fn read_after_attempt(
            &self,
            context: &FinalizerInterceptorContextRef<'_>,
            runtime_components: &RuntimeComponents,
            _cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let mut action = RetryAction::NoActionIndicated;
            for classifier in runtime_components.retry_classifiers() {
                match classifier.classify_retry(context.inner()) {
                    RetryAction::NoActionIndicated => {}
                    RetryAction::RetryForbidden => {
                        action = RetryAction::RetryForbidden;
                        break;
                    }
                    other => action = other,
                }
            }
            self.0.lock().unwrap().push(action);
            Ok(())
        }
    }

    fn iam(url: &str, key: &str, retry: RetryConfig, seen: &Classified) -> aws_sdk_iam::Client {
        let conf = aws_sdk_iam::Config::builder()
            .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
            .region(aws_sdk_iam::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                key,
                SECRET,
                None,
                None,
                "proxy-tests",
            ))
            .endpoint_url(url)
            .retry_config(retry)
            .interceptor(seen.clone())
            .build();
        aws_sdk_iam::Client::from_conf(conf)
    }

    fn ec2(url: &str, key: &str, retry: RetryConfig, seen: &Classified) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                key,
                SECRET,
                None,
                None,
                "proxy-tests",
            ))
            .endpoint_url(url)
            .retry_config(retry)
            .interceptor(seen.clone())
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    /// Standard retries, 5 attempts, with short backoffs.
    fn standard() -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(5)
            .with_initial_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(50))
    }

    /// One HTTP/1.1 request on a connection of its own: (status, body).
    fn raw(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    }

    /// An `Authorization` header moto (which does not verify it) and the proxy read.
    fn authorization(key: &str, service: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00"
        )
    }

    const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

    fn ops(calls: &[ProxyCall]) -> Vec<(String, String, Option<String>, u16)> {
        calls
            .iter()
            .map(|c| {
                (
                    c.service.clone(),
                    c.action.clone(),
                    c.access_key_id.clone(),
                    c.status,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn forwards_to_moto_and_recognises_service_action_and_caller() {
        let proxy = start(Faults::none());
        let seen = Classified::default();
        let (iam_key, ec2_key) = ("AKIAPROXYPASS0000001", "AKIAPROXYPASS0000002");
        let client = iam(proxy.url(), iam_key, RetryConfig::disabled(), &seen);
        let name = unique("proxied");
        client
            .create_user()
            .user_name(&name)
            .path("/proxy/")
            .send()
            .await
            .expect("CreateUser through the proxy");
        // The user is in moto itself.
        let direct = iam(moto().url(), iam_key, RetryConfig::disabled(), &seen);
        let user = direct
            .get_user()
            .user_name(&name)
            .send()
            .await
            .expect("the user, straight from moto");
        assert_eq!(user.user().unwrap().path(), "/proxy/");
        // moto's own errors pass through intact.
        let err = client
            .get_user()
            .user_name(unique("nobody"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("NoSuchEntity"), "{err:?}");

        let ec2c = ec2(proxy.url(), ec2_key, RetryConfig::disabled(), &seen);
        let vpc = ec2c
            .create_vpc()
            .cidr_block("10.93.0.0/16")
            .send()
            .await
            .expect("CreateVpc through the proxy");
        let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
        let found = ec2c
            .describe_vpcs()
            .vpc_ids(&vpc_id)
            .send()
            .await
            .expect("DescribeVpcs");
        assert_eq!(found.vpcs().len(), 1);

        // STS, in the query protocol too, recognised from the credential scope.
        let (status, body) = raw(
            proxy.addr(),
            "POST",
            "/",
            &[
                (
                    "Authorization",
                    &authorization("AKIAPROXYSTS00000003", "sts"),
                ),
                ("X-Amz-Date", "20260101T000000Z"),
                FORM,
            ],
            "Action=GetCallerIdentity&Version=2011-06-15",
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("GetCallerIdentityResponse"), "{body}");

        let calls = proxy.calls();
        let key = |k: &str| Some(k.to_owned());
        let s = |x: &str| x.to_owned();
        let got = ops(&calls);
        assert_eq!(got[0], (s("iam"), s("CreateUser"), key(iam_key), 200));
        assert_eq!(got[1].0, "iam");
        assert_eq!(got[1].1, "GetUser");
        assert!(got[1].3 >= 400, "{:?}", calls[1]);
        assert_eq!(calls[1].error_code.as_deref(), Some("NoSuchEntity"));
        assert_eq!(
            &got[2..],
            &[
                (s("ec2"), s("CreateVpc"), key(ec2_key), 200),
                (s("ec2"), s("DescribeVpcs"), key(ec2_key), 200),
                (
                    s("sts"),
                    s("GetCallerIdentity"),
                    key("AKIAPROXYSTS00000003"),
                    200
                ),
            ]
        );
        assert!(calls.iter().all(|c| c.injected.is_none()));
        assert_eq!(
            calls.iter().map(|c| c.seq).collect::<Vec<_>>(),
            (0..5).collect::<Vec<_>>()
        );
        let summary = proxy.summary();
        assert_eq!(summary.get("iam", "CreateUser").calls, 1);
        assert_eq!(summary.service("ec2").calls, 2);
        assert_eq!(summary.total().calls, 5);
        assert_eq!(summary.total().errors, 1);
        assert_eq!(summary.total().injected(), 0);
    }

    #[tokio::test]
    async fn injected_throttling_is_throttling_to_the_iam_and_ec2_sdks() {
        let proxy = start(Faults::throttling(1.0));
        let seen = Classified::default();

        let err = iam(
            proxy.url(),
            "AKIAPROXYTHRO0000001",
            RetryConfig::disabled(),
            &seen,
        )
        .list_users()
        .send()
        .await
        .unwrap_err();
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
        let err = err.into_service_error();
        assert_eq!(err.code(), Some("Throttling"), "{err:?}");
        assert_eq!(err.message(), Some("Rate exceeded"));
        assert!(err.request_id().is_some(), "{err:?}");
        assert_eq!(seen.take(), vec![RetryAction::throttling_error()]);

        let err = ec2(
            proxy.url(),
            "AKIAPROXYTHRO0000002",
            RetryConfig::disabled(),
            &seen,
        )
        .describe_vpcs()
        .send()
        .await
        .unwrap_err();
        assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
        let err = err.into_service_error();
        assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
        assert_eq!(err.message(), Some("Request limit exceeded."));
        assert!(err.request_id().is_some(), "{err:?}");
        // A 503 alone is transient; the error code makes it throttling, as on AWS.
        assert_eq!(seen.take(), vec![RetryAction::throttling_error()]);

        // The bodies, as the services write them.
        let (status, body) = raw(
            proxy.addr(),
            "POST",
            "/",
            &[("Authorization", &authorization("AKIARAW", "iam")), FORM],
            "Action=ListUsers&Version=2010-05-08",
        );
        assert_eq!(status, 400);
        assert!(
            body.starts_with(
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
                 <Message>Rate exceeded</Message></Error><RequestId>"
            ),
            "{body}"
        );
        let (status, body) = raw(
            proxy.addr(),
            "POST",
            "/",
            &[("Authorization", &authorization("AKIARAW", "ec2")), FORM],
            "Action=DescribeVpcs&Version=2016-11-15",
        );
        assert_eq!(status, 503);
        assert!(
            body.contains(
                "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
                 <Message>Request limit exceeded.</Message></Error></Errors><RequestID>"
            ),
            "{body}"
        );
        let calls = proxy.calls();
        assert_eq!(calls.len(), 4);
        assert!(
            calls
                .iter()
                .all(|c| c.injected == Some(InjectedFault::Throttling))
        );
        assert_eq!(
            calls
                .iter()
                .map(|c| c.error_code.clone().unwrap())
                .collect::<Vec<_>>(),
            ["Throttling", "RequestLimitExceeded"].repeat(2)
        );
    }

    #[tokio::test]
    async fn injected_server_errors_are_transient_to_the_sdks() {
        let proxy = start(Faults {
            internal_error_rate: 1.0,
            ..Faults::default()
        });
        let seen = Classified::default();
        let iam = iam(
            proxy.url(),
            "AKIAPROXY5XX00000001",
            RetryConfig::disabled(),
            &seen,
        );
        let ec2 = ec2(
            proxy.url(),
            "AKIAPROXY5XX00000002",
            RetryConfig::disabled(),
            &seen,
        );
        let mut got = Vec::new();
        for faults in [
            Faults {
                internal_error_rate: 1.0,
                ..Faults::default()
            },
            Faults {
                unavailable_rate: 1.0,
                ..Faults::default()
            },
        ] {
            proxy.set_faults(faults).unwrap();
            let e = iam.list_users().send().await.unwrap_err();
            let status = e.raw_response().map(|r| r.status().as_u16());
            got.push((status, e.into_service_error().code().map(str::to_owned)));
            let e = ec2.describe_vpcs().send().await.unwrap_err();
            let status = e.raw_response().map(|r| r.status().as_u16());
            got.push((status, e.into_service_error().code().map(str::to_owned)));
        }
        let expect = |status: u16, code: &str| (Some(status), Some(code.to_owned()));
        assert_eq!(
            got,
            vec![
                expect(500, "InternalFailure"),
                expect(500, "InternalError"),
                expect(503, "ServiceUnavailable"),
                expect(503, "ServiceUnavailable"),
            ]
        );
        assert_eq!(seen.take(), vec![RetryAction::transient_error(); 4]);
        let injected: Vec<_> = proxy.calls().iter().map(|c| c.injected).collect();
        assert_eq!(
            injected,
            [
                Some(InjectedFault::InternalFailure),
                Some(InjectedFault::InternalFailure),
                Some(InjectedFault::ServiceUnavailable),
                Some(InjectedFault::ServiceUnavailable),
            ]
        );
    }

    #[tokio::test]
    async fn with_standard_retries_calls_get_through_half_failing_answers() {
        let faults = Faults {
            throttle_rate: 0.3,
            internal_error_rate: 0.15,
            unavailable_rate: 0.15,
            // Never more than 3 faults in a row in the draws these calls take.
            seed: 2,
            ..Faults::default()
        };
        let proxy = start(faults);
        let seen = Classified::default();
        let iam = iam(proxy.url(), "AKIAPROXYRTRY0000001", standard(), &seen);
        let ec2 = ec2(proxy.url(), "AKIAPROXYRTRY0000002", standard(), &seen);
        let rounds = 10;
        for n in 0..rounds {
            iam.list_users()
                .send()
                .await
                .unwrap_or_else(|e| panic!("ListUsers {n}: {e:?}"));
            ec2.describe_vpcs()
                .send()
                .await
                .unwrap_or_else(|e| panic!("DescribeVpcs {n}: {e:?}"));
        }
        let summary = proxy.summary();
        print!("{summary}");
        let total = summary.total();
        // Every failed attempt was retried: each call is one success plus its faults.
        assert_eq!(total.calls, 2 * rounds + total.injected());
        assert_eq!(total.errors, total.injected());
        assert!(total.throttling > 0, "{summary}");
        assert!(
            total.internal_failure + total.service_unavailable > 0,
            "{summary}"
        );
        // The SDK judged each failure as AWS's own: throttling or transient.
        let seen = seen.take();
        assert_eq!(seen.len() as u64, total.calls);
        let throttled = seen
            .iter()
            .filter(|a| **a == RetryAction::throttling_error())
            .count() as u64;
        let transient = seen
            .iter()
            .filter(|a| **a == RetryAction::transient_error())
            .count() as u64;
        assert_eq!(throttled, total.throttling);
        assert_eq!(
            transient,
            total.internal_failure + total.service_unavailable
        );
    }

    #[tokio::test]
    async fn faults_are_drawn_as_the_endpoint_draws_them_and_repeat_with_the_seed() {
        let faults = Faults {
            throttle_rate: 0.3,
            internal_error_rate: 0.1,
            unavailable_rate: 0.1,
            seed: 99,
            ..Faults::default()
        };
        let proxy = start(faults.clone());
        let seen = Classified::default();
        let client = iam(
            proxy.url(),
            "AKIAPROXYSEED0000001",
            RetryConfig::disabled(),
            &seen,
        );
        let n = 30;
        let mut runs = Vec::new();
        for _ in 0..2 {
            proxy.set_faults(faults.clone()).unwrap();
            proxy.clear_calls();
            for _ in 0..n {
                let _ = client.list_users().send().await;
            }
            runs.push(proxy.calls().iter().map(|c| c.injected).collect::<Vec<_>>());
        }
        assert_eq!(runs[0], runs[1]);
        let mut injector = Injector::new(faults);
        let expected: Vec<_> = (0..n).map(|_| injector.decide("ListUsers").fault).collect();
        assert_eq!(runs[0], expected, "the same draws as the endpoint's");
        assert!(runs[0].iter().any(Option::is_some));
        assert!(runs[0].iter().any(Option::is_none));
    }

    #[tokio::test]
    async fn only_actions_names_actions_plainly_or_by_service() {
        let proxy = start(Faults {
            throttle_rate: 1.0,
            only_actions: vec!["CreateUser".into(), "ec2:DescribeVpcs".into()],
            ..Faults::default()
        });
        let seen = Classified::default();
        let iam = iam(
            proxy.url(),
            "AKIAPROXYONLY0000001",
            RetryConfig::disabled(),
            &seen,
        );
        let ec2 = ec2(
            proxy.url(),
            "AKIAPROXYONLY0000002",
            RetryConfig::disabled(),
            &seen,
        );
        iam.list_users()
            .send()
            .await
            .expect("ListUsers is not named");
        let e = iam
            .create_user()
            .user_name(unique("only"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("Throttling"));
        let e = ec2.describe_vpcs().send().await.unwrap_err();
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
        ec2.describe_subnets()
            .send()
            .await
            .expect("DescribeSubnets is not named");
        // Qualified by another service, the name does not match.
        proxy
            .set_faults(Faults {
                throttle_rate: 1.0,
                only_actions: vec!["ec2:ListUsers".into(), "iam:DescribeSubnets".into()],
                ..Faults::default()
            })
            .unwrap();
        iam.list_users().send().await.expect("not IAM's ListUsers");
        ec2.describe_subnets().send().await.expect("not EC2's");
        let injected: Vec<_> = proxy
            .calls()
            .iter()
            .map(|c| (c.operation(), c.injected.is_some()))
            .collect();
        let op = |o: &str, i| (o.to_owned(), i);
        assert_eq!(
            injected,
            vec![
                op("iam:ListUsers", false),
                op("iam:CreateUser", true),
                op("ec2:DescribeVpcs", true),
                op("ec2:DescribeSubnets", false),
                op("iam:ListUsers", false),
                op("ec2:DescribeSubnets", false),
            ]
        );
    }

    #[tokio::test]
    async fn control_routes_mirror_the_handle() {
        let proxy = start(Faults::none());
        let addr = proxy.addr();
        assert_eq!(
            raw(addr, "GET", "/_proxy/health", &[], ""),
            (200, "ok\n".into())
        );
        let json = ("Content-Type", "application/json");
        let (status, body) = raw(
            addr,
            "PUT",
            "/_proxy/faults",
            &[json],
            r#"{"throttle_rate": 1.0, "only_actions": ["GetUser"], "seed": 5}"#,
        );
        assert_eq!(status, 200, "{body}");
        let expected = Faults {
            throttle_rate: 1.0,
            only_actions: vec!["GetUser".into()],
            seed: 5,
            ..Faults::default()
        };
        assert_eq!(proxy.faults(), expected);
        let (status, body) = raw(addr, "GET", "/_proxy/faults", &[], "");
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Faults>(&body).unwrap(), expected);
        for bad in [r#"{"throttle_rate": 2}"#, r#"{"throttle": 1}"#, "no"] {
            let (status, body) = raw(addr, "PUT", "/_proxy/faults", &[json], bad);
            assert_eq!(status, 400, "{bad}: {body}");
        }
        assert_eq!(proxy.faults(), expected, "a refused PUT changes nothing");

        let seen = Classified::default();
        let client = iam(
            proxy.url(),
            "AKIAPROXYCTRL0000001",
            RetryConfig::disabled(),
            &seen,
        );
        let e = client.get_user().user_name("x").send().await.unwrap_err();
        assert_eq!(e.code(), Some("Throttling"));
        let (status, body) = raw(addr, "GET", "/_proxy/calls", &[], "");
        assert_eq!(status, 200);
        let calls: Value = serde_json::from_str(&body).unwrap();
        let calls = calls.as_array().unwrap();
        assert_eq!(calls.len(), 1, "{body}");
        assert_eq!(calls[0]["service"], "iam");
        assert_eq!(calls[0]["action"], "GetUser");
        assert_eq!(calls[0]["access_key_id"], "AKIAPROXYCTRL0000001");
        assert_eq!(calls[0]["status"], 400);
        assert_eq!(calls[0]["injected"], "throttling");
        assert_eq!(calls[0]["error_code"], "Throttling");
        let (status, body) = raw(addr, "GET", "/_proxy/summary", &[], "");
        assert_eq!(status, 200);
        assert!(
            body.lines()
                .any(|l| l.starts_with("iam") && l.contains("GetUser")),
            "{body}"
        );
        assert_eq!(raw(addr, "DELETE", "/_proxy/calls", &[], "").0, 204);
        assert_eq!(
            raw(addr, "GET", "/_proxy/calls", &[], ""),
            (200, "[]".into())
        );
        assert!(proxy.calls().is_empty());
        assert_eq!(raw(addr, "GET", "/_proxy/nothing", &[], "").0, 404);
    }

    #[tokio::test]
    async fn latency_spikes_loopback_only_and_an_unreachable_moto() {
        let proxy = start(Faults {
            latency_ms: 150,
            spike_rate: 1.0,
            spike_latency_ms: 100,
            ..Faults::default()
        });
        let seen = Classified::default();
        let client = iam(
            proxy.url(),
            "AKIAPROXYSLOW0000001",
            RetryConfig::disabled(),
            &seen,
        );
        let started = Instant::now();
        client.list_users().send().await.expect("slow, not failed");
        assert!(started.elapsed() >= Duration::from_millis(250));
        let call = &proxy.calls()[0];
        assert!(call.latency_spike);
        assert!(call.duration >= Duration::from_millis(250), "{call:?}");
        assert_eq!(proxy.summary().total().latency_spikes, 1);

        let mut config = ProxyConfig::new(moto().url());
        config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        assert!(Proxy::start(config).is_err(), "listening beyond loopback");
        assert!(Proxy::start(ProxyConfig::new("https://127.0.0.1:1")).is_err());

        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let lost = Proxy::start(ProxyConfig::new(&format!("http://127.0.0.1:{port}"))).unwrap();
        let (status, _) = raw(
            lost.addr(),
            "POST",
            "/",
            &[("Authorization", &authorization("AKIARAW", "iam")), FORM],
            "Action=ListUsers",
        );
        assert_eq!(status, 502);
        assert_eq!(lost.calls()[0].status, 502);
        assert_eq!(lost.calls()[0].action, "ListUsers");
    }

    #[test]
    fn recognition_and_error_codes() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&authorization("AKIDX", "iam")).unwrap(),
        );
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let r = recognise(
            &h,
            "",
            b"Version=2010-05-08&Action=Create%55ser&UserName=a+b",
        );
        assert_eq!(
            r,
            Recognised {
                service: "iam".into(),
                action: "CreateUser".into(),
                access_key_id: Some("AKIDX".into()),
            }
        );
        let r = recognise(
            &HeaderMap::new(),
            "Action=GetCallerIdentity&X-Amz-Credential=AKIDQ%2F20260101%2Fus-east-1%2Fsts%2Faws4_request",
            b"",
        );
        assert_eq!(r.service, "sts");
        assert_eq!(r.action, "GetCallerIdentity");
        assert_eq!(r.access_key_id.as_deref(), Some("AKIDQ"));
        let mut j = HeaderMap::new();
        j.insert(
            "x-amz-target",
            HeaderValue::from_static("OpsWorks_20130218.DescribeStacks"),
        );
        assert_eq!(recognise(&j, "", b"{}").action, "DescribeStacks");
        assert_eq!(protocol("opsworks", &j), Protocol::Json);
        assert_eq!(recognise(&HeaderMap::new(), "", b"").action, "");

        assert_eq!(
            error_code(b"<Response><Errors><Error><Code>InvalidVpcID.NotFound</Code>"),
            Some("InvalidVpcID.NotFound".into())
        );
        assert_eq!(
            error_code(br#"{"__type":"com.amazon#ResourceNotFoundException","message":"x"}"#),
            Some("ResourceNotFoundException".into())
        );
        assert_eq!(error_code(b"oops"), None);
        assert_eq!(
            upstream_authority("http://127.0.0.1:5000/").as_deref(),
            Ok("127.0.0.1:5000")
        );
        assert!(upstream_authority("http://127.0.0.1:5000/x").is_err());

        let mut s = CallSummary::default();
        s.add(
            "iam",
            "CreateUser",
            400,
            Some(InjectedFault::Throttling),
            false,
        );
        s.add("iam", "CreateUser", 200, None, true);
        let mut t = CallSummary::default();
        t.add(
            "opsworks",
            "DescribeStacks",
            503,
            Some(InjectedFault::ServiceUnavailable),
            false,
        );
        s.merge(&t);
        let total = s.total();
        assert_eq!((total.calls, total.errors, total.injected()), (3, 2, 2));
        assert_eq!(s.get("iam", "CreateUser").latency_spikes, 1);
        let table = s.to_string();
        assert!(table.starts_with("service"), "{table}");
        assert!(
            table.lines().last().unwrap().starts_with("total"),
            "{table}"
        );
    }
}
