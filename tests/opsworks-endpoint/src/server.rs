//! The HTTP server: the OpsWorks and Systems Manager APIs on `POST /`, the agent installer, the
//! SSM setup tool, and the test controls under [`CONTROL_PREFIX`].
//!
//! The control routes are listed in the crate docs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::authorize;
use crate::aws::{Aws, KeyOwner};
use crate::config::{AgentInstaller, Config};
use crate::error::ApiError;
use crate::faults::{Faults, Injector};
use crate::handlers::{self, Caller};
use crate::keys::KeyStore;
use crate::model::{self, INSTANCE_STATUSES, Service};
use crate::proxy::HangUp;
use crate::record::{Authorization, CallRecord, InjectedFault, SignatureCheck};
use crate::sigv4;
use crate::ssm::{SsmActivationView, SsmNodeView, SsmState};
use crate::ssm_standin::{self, SsmStandIn};
use crate::state::{InstanceView, State};
use crate::time::{amz_date, parse_amz_date};

/// Path the agent installer tarball is served under.
pub const AGENT_INSTALLER_PATH: &str = "/agent/opsworks-agent-installer.tgz";
/// Prefix of the test-control routes.
pub const CONTROL_PREFIX: &str = "/_endpoint/";

/// How far a request's `X-Amz-Date` may be from the endpoint's clock, as AWS allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub url: String,
    pub account_id: String,
    pub extra_parameters: BTreeMap<String, String>,
    pub reject_unknown: bool,
    /// See [`Config::enforce_iam_policies`].
    pub enforce_iam_policies: bool,
    pub max_body: usize,
    /// Reads of moto's `/moto-api/data.json` for keys' secrets (the [`Aws`] counts them).
    pub moto_state_reads: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts endpoints.
pub struct Endpoint;

impl Endpoint {
    /// Serves an endpoint with `config` on its own thread with its own tokio runtime, so that
    /// sync tests and any async runtime can use it. Returns once it accepts connections. The
    /// endpoint stops when the handle is dropped.
    pub fn start(config: Config) -> Result<EndpointHandle, String> {
        config.faults.validate()?;
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                seq: 0,
                stacks: BTreeMap::new(),
                layers: BTreeMap::new(),
                instances: BTreeMap::new(),
                calls: Vec::new(),
                next_call: 0,
                injector: Injector::new(config.faults.clone()),
                registration_delay: config.registration_delay,
                installer: config.agent_installer.clone(),
                ssm: SsmState::new(config.ssm_connection_lost_after, config.ssm_standin.clone()),
            }),
            url: url.clone(),
            account_id: config.account_id.clone(),
            extra_parameters: config.extra_provisioning_parameters.clone(),
            reject_unknown: config.reject_unknown_access_keys,
            enforce_iam_policies: config.enforce_iam_policies,
            max_body: config.max_body_bytes,
            moto_state_reads: Arc::new(AtomicU64::new(0)),
        });
        let key_store = config.key_store.clone().unwrap_or_default();
        let (secrets, reads) = (key_store.clone(), Arc::clone(&shared.moto_state_reads));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("opsworks-endpoint-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("opsworks-endpoint-worker")
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
                    let aws = Arc::new(Aws::new(&config, secrets, reads));
                    let _ = ready_tx.send(Ok(()));
                    serve(listener, serving, aws, stop_rx).await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| format!("cannot start the endpoint thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the endpoint thread ended before serving".to_owned())??;
        tracing::info!("OpsWorks-compatible endpoint on {url}");
        Ok(EndpointHandle {
            shared,
            addr,
            url,
            key_store,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running endpoint. Dropping it stops the endpoint.
pub struct EndpointHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: String,
    key_store: KeyStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("url", &self.url)
            .finish()
    }
}

impl EndpointHandle {
    /// Base URL, e.g. `http://127.0.0.1:41234` (the SDK's `endpoint_url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store the endpoint looks IAM access keys' secrets up in (see [`crate::keys`]): give
    /// it to the proxy in front of moto ([`crate::ProxyConfig::key_store`]) so that the keys
    /// made through the proxy are known without reading moto's state.
    pub fn key_store(&self) -> KeyStore {
        self.key_store.clone()
    }

    /// How many times the endpoint has read moto's whole state (`/moto-api/data.json`) for a
    /// key's secret the key store lacked; failed reads count too.
    pub fn moto_state_reads(&self) -> u64 {
        self.shared.moto_state_reads.load(Ordering::Relaxed)
    }

    /// Every API call so far, in arrival order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.shared.lock().calls.clone()
    }

    /// Forgets the call records.
    pub fn clear_calls(&self) {
        self.shared.lock().calls.clear();
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

    /// Forces an instance's status (one of [`model::INSTANCE_STATUSES`]), e.g. `setup_failed`.
    pub fn set_instance_status(&self, instance_id: &str, status: &str) -> Result<(), String> {
        set_status(&self.shared, instance_id, status)
    }

    /// How long instances stay `registering`: those registered from now on, and those still
    /// `registering` (counted from their registration), so a test can hold registrations with
    /// a long delay and release them with zero.
    pub fn set_registration_delay(&self, delay: Duration) {
        set_delay(&self.shared, delay);
    }

    /// Replaces the agent installer tarball.
    pub fn set_agent_installer(&self, installer: AgentInstaller) {
        self.shared.lock().installer = installer;
    }

    /// The agent installer tarball as it is served now (the stand-in's is built for this
    /// endpoint's URL), e.g. for its SHA-256; `None` when none is (no installer, or a file that
    /// cannot be read).
    pub fn agent_installer_bytes(&self) -> Option<Vec<u8>> {
        let installer = self.shared.lock().installer.clone();
        match installer {
            AgentInstaller::None => None,
            AgentInstaller::Bytes(b) => Some(b),
            AgentInstaller::File(path) => std::fs::read(path).ok(),
            AgentInstaller::StandIn(standin) => Some(standin.reachable().tarball(&self.url)),
        }
    }

    /// The URL the agent installer tarball is served at (what the provisioning parameters'
    /// `AgentInstallerUrl` says).
    pub fn agent_installer_url(&self) -> String {
        format!("{}{AGENT_INSTALLER_PATH}", self.url)
    }

    /// The registered instances, in registration order.
    pub fn instances(&self) -> Vec<InstanceView> {
        let st = self.shared.lock();
        let now = Instant::now();
        let mut v: Vec<_> = st.instances.values().collect();
        v.sort_by_key(|i| i.seq);
        v.iter().map(|i| i.view(now)).collect()
    }

    /// The SSM nodes (managed nodes and EC2 instances), in registration order, with their ping
    /// status now; deregistered ones are gone.
    pub fn ssm_nodes(&self) -> Vec<SsmNodeView> {
        self.shared.lock().ssm.node_views()
    }

    /// The SSM node `id`, if there is one.
    pub fn ssm_node(&self, id: &str) -> Option<SsmNodeView> {
        self.ssm_nodes().into_iter().find(|n| n.instance_id == id)
    }

    /// The SSM activations, in creation order, with their codes (which no API answer gives).
    pub fn ssm_activations(&self) -> Vec<SsmActivationView> {
        self.shared.lock().ssm.activation_views()
    }

    /// Replaces the SSM setup tool and agent stand-in (`None`: the setup URLs answer 404).
    pub fn set_ssm_standin(&self, standin: Option<SsmStandIn>) {
        self.shared.lock().ssm.standin = standin;
    }

    /// How long the SSM setup tool's runs from now on sleep before they do anything. Returns
    /// false (and changes nothing) when no stand-in is served.
    pub fn set_ssm_setup_run_time(&self, run_time: Duration) -> bool {
        set_ssm_run_time(&self.shared, run_time)
    }

    /// The URL template of the SSM setup tool, what `REGISTRAR_SSM_SETUP_URL` says:
    /// `<url>/ssm/latest/{platform}_{arch}/ssm-setup-cli`, with the literal placeholders
    /// `{platform}` and `{arch}`.
    pub fn ssm_setup_url_template(&self) -> String {
        format!(
            "{}{}{{platform}}_{{arch}}/{}",
            self.url,
            ssm_standin::SETUP_PATH_PREFIX,
            ssm_standin::SETUP_PROGRAM_NAME
        )
    }

    /// The URL of the SSM setup tool for `platform` and `arch`, if they are ones it is served
    /// for.
    pub fn ssm_setup_url(&self, platform: &str, arch: &str) -> Option<String> {
        ssm_standin::setup_path(platform, arch).map(|p| format!("{}{p}", self.url))
    }

    /// The SSM setup tool for `platform` and `arch` as it is served now (for its SHA-256);
    /// `None` when it is not served (no stand-in, or a platform or arch it is not served for).
    pub fn ssm_setup_bytes(&self, platform: &str, arch: &str) -> Option<Vec<u8>> {
        ssm_standin::setup_path(platform, arch)?;
        let mut standin = self.shared.lock().ssm.standin.clone()?;
        // The program the script runs, as when it is served.
        match standin.reachable() {
            Ok(reachable) => standin = reachable,
            Err(e) => tracing::warn!("cannot link the SSM setup tool stand-in: {e}"),
        }
        Some(standin.setup_script(&self.url, platform, arch).into_bytes())
    }

    /// Stops the endpoint and waits for its thread.
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

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn set_delay(shared: &Shared, delay: Duration) {
    let mut st = shared.lock();
    st.registration_delay = delay;
    let now = Instant::now();
    for i in st.instances.values_mut() {
        if i.forced_status.is_none() && now < i.ready_at {
            i.ready_at = crate::state::ready_time(i.registered_at, delay);
        }
    }
}

fn set_ssm_run_time(shared: &Shared, run_time: Duration) -> bool {
    let mut st = shared.lock();
    match st.ssm.standin.as_mut() {
        Some(s) => {
            s.run_time = run_time;
            true
        }
        None => false,
    }
}

fn set_status(shared: &Shared, instance_id: &str, status: &str) -> Result<(), String> {
    if !INSTANCE_STATUSES.contains(&status) {
        return Err(format!(
            "unknown status {status:?}; one of {}",
            INSTANCE_STATUSES.join(", ")
        ));
    }
    let mut st = shared.lock();
    let instance = st
        .instances
        .get_mut(instance_id)
        .ok_or_else(|| format!("no instance {instance_id}"))?;
    instance.forced_status = Some(status.to_owned());
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    aws: Arc<Aws>,
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
                let shared = Arc::clone(&shared);
                let aws = Arc::clone(&aws);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        let aws = Arc::clone(&aws);
                        async move { HangUp::check(route(&shared, &aws, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
        }
    }
}

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: u16, v: &Value) -> Response<Full<Bytes>> {
    response(status, "application/json", v.to_string())
}

async fn route(shared: &Shared, aws: &Aws, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix(CONTROL_PREFIX) {
        let rest = rest.to_owned();
        return control(shared, req, &rest).await;
    }
    if path == AGENT_INSTALLER_PATH && (req.method() == Method::GET || req.method() == Method::HEAD)
    {
        return installer(shared).await;
    }
    if path.starts_with(ssm_standin::SETUP_PATH_PREFIX)
        && (req.method() == Method::GET || req.method() == Method::HEAD)
    {
        return ssm_setup(shared, &path);
    }
    api(shared, aws, req).await
}

/// The SSM setup tool script for the path's platform and arch. The program it runs under the
/// setup tool's name is linked now, so that it is the program of the moment.
fn ssm_setup(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let Some((platform, arch)) = ssm_standin::parse_setup_path(path) else {
        return response(404, "text/plain", "no such SSM setup tool\n");
    };
    let Some(standin) = shared.lock().ssm.standin.clone() else {
        return response(404, "text/plain", "no SSM setup tool configured\n");
    };
    let standin = match standin.reachable() {
        Ok(standin) => standin,
        Err(e) => {
            tracing::warn!("cannot link the SSM setup tool stand-in: {e}");
            return response(500, "text/plain", format!("{e}\n"));
        }
    };
    let script = standin.setup_script(&shared.url, &platform, &arch);
    response(200, "application/octet-stream", script)
}

async fn installer(shared: &Shared) -> Response<Full<Bytes>> {
    let installer = shared.lock().installer.clone();
    let bytes = match installer {
        AgentInstaller::None => None,
        AgentInstaller::Bytes(b) => Some(b),
        AgentInstaller::File(path) => tokio::fs::read(&path).await.ok(),
        AgentInstaller::StandIn(standin) => Some(standin.reachable().tarball(&shared.url)),
    };
    match bytes {
        Some(b) => response(200, "application/x-gzip", b),
        None => response(404, "text/plain", "no agent installer configured\n"),
    }
}

async fn read_json(req: Request<Incoming>, limit: usize) -> Result<Value, String> {
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("the body is not JSON: {e}"))
}

async fn control(shared: &Shared, req: Request<Incoming>, rest: &str) -> Response<Full<Bytes>> {
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
        (Method::GET, ["faults"]) => {
            let f = shared.lock().injector.faults.clone();
            json_response(200, &serde_json::to_value(f).unwrap_or(Value::Null))
        }
        (Method::PUT, ["faults"]) => {
            let v = match read_json(req, shared.max_body).await {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            let faults: Faults = match serde_json::from_value(v) {
                Ok(f) => f,
                Err(e) => return bad(format!("not faults: {e}")),
            };
            if let Err(e) = faults.validate() {
                return bad(e);
            }
            shared.lock().injector = Injector::new(faults.clone());
            json_response(200, &serde_json::to_value(faults).unwrap_or(Value::Null))
        }
        (Method::PUT, ["registration-delay"]) => {
            let v = match read_json(req, shared.max_body).await {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            match v.get("seconds").and_then(Value::as_f64) {
                Some(s) if s.is_finite() && (0.0..1e9).contains(&s) => {
                    set_delay(shared, Duration::from_secs_f64(s));
                    json_response(200, &serde_json::json!({ "seconds": s }))
                }
                _ => bad("expected {\"seconds\": <non-negative number>}".into()),
            }
        }
        (Method::PUT, ["instances", id, "status"]) => {
            let id = id.to_string();
            let v = match read_json(req, shared.max_body).await {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            let Some(status) = v.get("status").and_then(Value::as_str) else {
                return bad("expected {\"status\": \"...\"}".into());
            };
            match set_status(shared, &id, status) {
                Ok(()) => json_response(200, &serde_json::json!({ "status": status })),
                Err(e) if e.starts_with("no instance") => {
                    json_response(404, &serde_json::json!({ "error": e }))
                }
                Err(e) => bad(e),
            }
        }
        (Method::GET, ["instances"]) => {
            let st = shared.lock();
            let now = Instant::now();
            let mut v: Vec<_> = st.instances.values().collect();
            v.sort_by_key(|i| i.seq);
            let views: Vec<InstanceView> = v.iter().map(|i| i.view(now)).collect();
            json_response(200, &serde_json::to_value(views).unwrap_or(Value::Null))
        }
        (Method::GET, ["ssm", "nodes"]) => {
            let nodes = shared.lock().ssm.node_views();
            json_response(200, &serde_json::to_value(nodes).unwrap_or(Value::Null))
        }
        (Method::GET, ["ssm", "activations"]) => {
            let activations = shared.lock().ssm.activation_views();
            json_response(
                200,
                &serde_json::to_value(activations).unwrap_or(Value::Null),
            )
        }
        (Method::PUT, ["ssm", "setup-run-time"]) => {
            let v = match read_json(req, shared.max_body).await {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            match v.get("seconds").and_then(Value::as_f64) {
                Some(s) if s.is_finite() && (0.0..1e9).contains(&s) => {
                    if set_ssm_run_time(shared, Duration::from_secs_f64(s)) {
                        json_response(200, &serde_json::json!({ "seconds": s }))
                    } else {
                        json_response(
                            404,
                            &serde_json::json!({ "error": "no SSM setup tool configured" }),
                        )
                    }
                }
                _ => bad("expected {\"seconds\": <non-negative number>}".into()),
            }
        }
        (Method::GET, ["moto-state-reads"]) => {
            let reads = shared.moto_state_reads.load(Ordering::Relaxed);
            json_response(200, &serde_json::json!({ "reads": reads }))
        }
        (Method::GET, ["state"]) => {
            let dump = shared.lock().dump();
            json_response(200, &dump)
        }
        _ => json_response(
            404,
            &serde_json::json!({ "error": format!("no control route {rest}") }),
        ),
    }
}

/// What is learnt of a call while it is processed, for its record.
struct Trace {
    service: Service,
    action: String,
    access_key_id: Option<String>,
    signature: SignatureCheck,
    injected: Option<InjectedFault>,
    spike: bool,
    authorization: Option<Authorization>,
    /// The IAM role the request named.
    iam_role: Option<String>,
    /// A call to hold without an answer ([`InjectedFault::Hang`]): recorded (status 0) before
    /// it is held, since its client may give up and close the connection, which ends the call.
    hold: Option<crate::faults::Decision>,
}

async fn api(shared: &Shared, aws: &Aws, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let at = SystemTime::now();
    let started = Instant::now();
    let mut trace = Trace {
        service: Service::OpsWorks,
        action: String::new(),
        access_key_id: None,
        signature: SignatureCheck::Missing,
        injected: None,
        spike: false,
        authorization: None,
        iam_role: None,
        hold: None,
    };
    let result = process(shared, aws, req, &mut trace).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let (status, body, error) = match result {
        _ if trace.hold.is_some() => (0, String::new(), None),
        Ok(v) => (200, v.to_string(), None),
        Err(e) => (e.status, e.body(), Some(e)),
    };
    {
        let mut st = shared.lock();
        let seq = st.next_call;
        st.next_call += 1;
        st.calls.push(CallRecord {
            seq,
            service: trace.service.label().to_owned(),
            action: trace.action.clone(),
            access_key_id: trace.access_key_id,
            iam_role: trace.iam_role,
            status,
            error_code: error.as_ref().map(|e| e.code.to_owned()),
            error_message: error.as_ref().map(|e| e.message.clone()),
            at,
            duration: started.elapsed(),
            signature: trace.signature,
            injected: trace.injected,
            latency_spike: trace.spike,
            authorization: trace.authorization,
        });
    }
    if let Some(mut hold) = trace.hold.take() {
        hold.held().await;
        return HangUp::response();
    }
    match &error {
        Some(e) => tracing::info!(
            "{}:{} -> {} {}: {}",
            trace.service.label(),
            trace.action,
            e.status,
            e.code,
            e.message
        ),
        None => tracing::info!("{}:{} -> 200", trace.service.label(), trace.action),
    }
    let mut r = response(status, model::CONTENT_TYPE, body);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    if let Some(e) = &error
        && let Ok(v) = HeaderValue::from_str(e.code)
    {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn process(
    shared: &Shared,
    aws: &Aws,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Value, ApiError> {
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let target = header(&headers, "x-amz-target").unwrap_or("").to_owned();
    let service = Service::of_target(&target);
    trace.action = match service {
        Some((s, action)) => {
            trace.service = s;
            action.to_owned()
        }
        None => target.clone(),
    };
    let body = match Limited::new(body, shared.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(ApiError::serialization(format!(
                "The request body is larger than {} bytes or could not be read",
                shared.max_body
            )));
        }
    };

    // Authentication, as AWS's front door does it; the SSM agent registers unsigned.
    let anonymous = service
        .is_some_and(|(s, a)| s == Service::Ssm && a == model::ssm::REGISTER_MANAGED_INSTANCE);
    let agent_heartbeat = service
        .is_some_and(|(s, a)| s == Service::Ssm && a == model::ssm::UPDATE_INSTANCE_INFORMATION);
    let caller = match header(&headers, "authorization") {
        None if anonymous => None,
        None => {
            return Err(ApiError::new(
                400,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        }
        Some(authorization) => {
            let signed = sigv4::Request {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: &headers,
                body: &body,
            };
            let check = Check {
                signing_name: trace.service.signing_name(),
                accept_unknown: !shared.reject_unknown,
                // The agent signs with credentials its registration (or its instance profile)
                // gave it, which AWS knows and this endpoint cannot: accepted unverified,
                // without asking IAM at every heartbeat.
                look_up_key: !agent_heartbeat,
            };
            Some(authenticate(aws, authorization, &signed, check, trace).await?)
        }
    };

    // The operation.
    let unknown = || {
        ApiError::new(
            400,
            "UnknownOperationException",
            format!("Unknown operation: '{target}'"),
        )
    };
    let Some((service, action)) = service else {
        return Err(unknown());
    };
    if parts.method != Method::POST {
        return Err(unknown());
    }
    let Some(op) = service.operation(action) else {
        return Err(unknown());
    };

    // Injected faults: named by the action alone or qualified by the service.
    let qualified = format!("{}:{}", service.label(), op.name);
    let decision = shared
        .lock()
        .injector
        .decide_any(&[op.name, qualified.as_str()]);
    trace.spike = decision.spike;
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    if decision.fault == Some(InjectedFault::Hang) {
        tracing::info!("{} -> injected hang: held without an answer", trace.action);
        trace.injected = decision.fault;
        trace.hold = Some(decision);
        return Err(ApiError::new(
            503,
            "ServiceUnavailable",
            "held without an answer",
        ));
    }
    if let Some(e) = decision.error() {
        trace.injected = decision.fault;
        return Err(e);
    }

    // The body.
    let mut input: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::serialization(format!("The request body is not JSON: {e}")))?
    };
    model::check_input(op, &input)?;
    trace.iam_role = input
        .get("IamRole")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // Endless pages: a token of theirs gets the first page again, and every answer another.
    let endless = decision.endless_pages && op.input.members.iter().any(|m| m.name == "NextToken");
    if endless
        && let Some(token) = input.get("NextToken").and_then(Value::as_str)
        && token.starts_with(ENDLESS_TOKEN)
        && let Some(fields) = input.as_object_mut()
    {
        fields.remove("NextToken");
    }
    let output = dispatch_service(shared, aws, caller, service, op.name, input, trace).await?;
    if !endless {
        return Ok(output);
    }
    let mut output = output;
    if let Some(fields) = output.as_object_mut() {
        let n = ENDLESS_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fields.insert(
            "NextToken".into(),
            Value::from(format!("{ENDLESS_TOKEN}{n}")),
        );
    }
    Ok(output)
}

/// The start of the `NextToken`s of endless pages ([`Faults::endless_pages`]).
const ENDLESS_TOKEN: &str = "endless-";
/// Makes each endless-page token new.
static ENDLESS_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Authorizes and carries out the call.
async fn dispatch_service(
    shared: &Shared,
    aws: &Aws,
    caller: Option<Caller>,
    service: Service,
    op_name: &'static str,
    input: Value,
    trace: &mut Trace,
) -> Result<Value, ApiError> {
    if shared.enforce_iam_policies
        && let Some(caller) = &caller
        && !(service == Service::OpsWorks && op_name == "RegisterInstance")
    {
        authorize_iam_user(shared, aws, caller, service, op_name, &input).await?;
    }
    match service {
        Service::OpsWorks => {
            let Some(caller) = caller else {
                return Err(ApiError::internal("an OpsWorks call without a caller"));
            };
            let handled = handlers::dispatch(shared, aws, &caller, op_name, input).await?;
            trace.authorization = handled.authorization;
            Ok(handled.output)
        }
        Service::Ssm => crate::ssm::dispatch(shared, aws, caller.as_ref(), op_name, input).await,
    }
}

/// With [`Config::enforce_iam_policies`]: whether the policies of the IAM user owning the
/// caller's key allow the call, on the resource and with the condition keys AWS authorizes it
/// on ([`authorize::json_checks`]); callers that are not moto IAM users (the tests' static
/// keys, agents) are not checked.
async fn authorize_iam_user(
    shared: &Shared,
    aws: &Aws,
    caller: &Caller,
    service: Service,
    operation: &str,
    input: &Value,
) -> Result<(), ApiError> {
    let KeyOwner::IamUser { user_name, .. } = &caller.owner else {
        return Ok(());
    };
    let (user_arn, policies) = aws
        .user_policies(user_name)
        .await
        .map_err(ApiError::internal)?;
    let account = authorize::account_of(&user_arn).unwrap_or("123456789012");
    // The OpsWorks stack the call names, directly or through its instance.
    let stack_arn = {
        let st = shared.lock();
        let text = |k: &str| input.get(k).and_then(Value::as_str);
        let stack_id = text("StackId")
            .map(str::to_owned)
            .or_else(|| {
                let ids = input.get("StackIds")?.as_array()?;
                (ids.len() == 1).then(|| ids[0].as_str().map(str::to_owned))?
            })
            .or_else(|| {
                text("InstanceId").and_then(|i| st.instances.get(i).map(|i| i.stack_id.clone()))
            });
        stack_id.map(|id| match st.stacks.get(&id) {
            Some(stack) => stack.arn.clone(),
            None => format!("arn:aws:opsworks:{}:{account}:stack/{id}/", caller.region),
        })
    };
    let role_arn = match (service, input.get("IamRole").and_then(Value::as_str)) {
        (Service::Ssm, Some(role)) => Some(
            aws.role(role)
                .await
                .map_err(ApiError::internal)?
                .map(|(arn, _)| arn)
                .unwrap_or_else(|| format!("arn:aws:iam::{account}:role/{role}")),
        ),
        _ => None,
    };
    let checks = authorize::json_checks(
        service,
        operation,
        input,
        &authorize::Place {
            account,
            region: &caller.region,
            stack_arn: stack_arn.as_deref(),
            role_arn: role_arn.as_deref(),
        },
    );
    for check in &checks {
        authorize::judge(&user_arn, &policies, check).map_err(|refusal| match refusal {
            authorize::Refusal::Denied(m) => ApiError::access_denied(m),
            authorize::Refusal::Failed(m) => ApiError::internal(m),
        })?;
    }
    Ok(())
}

/// How a request's signature is checked.
#[derive(Clone, Copy)]
struct Check {
    /// The service's signing name, which the credential's scope must name.
    signing_name: &'static str,
    /// Whether keys nobody knows are accepted (unverified) rather than refused.
    accept_unknown: bool,
    /// Whether to find out who owns the key (and verify the signature when its secret is
    /// known); when not, the key is accepted unverified.
    look_up_key: bool,
}

/// Checks a request's `Authorization` header as AWS's front door does: its form, its date, its
/// scope, and, for a key whose secret is known, its signature. Returns the caller.
async fn authenticate(
    aws: &Aws,
    authorization: &str,
    signed: &sigv4::Request<'_>,
    check: Check,
    trace: &mut Trace,
) -> Result<Caller, ApiError> {
    let auth = sigv4::parse_authorization(authorization)
        .map_err(|m| ApiError::new(400, "IncompleteSignatureException", m))?;
    trace.access_key_id = Some(auth.access_key_id.clone());
    trace.signature = SignatureCheck::Unverified;
    let Some(date) = header(signed.headers, "x-amz-date").map(str::to_owned) else {
        return Err(ApiError::new(
            400,
            "IncompleteSignatureException",
            format!(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
                 header. Authorization={authorization}"
            ),
        ));
    };
    let invalid_signature = |m: String| ApiError::new(400, "InvalidSignatureException", m);
    let Some(signed_at) = parse_amz_date(&date) else {
        return Err(ApiError::new(
            400,
            "IncompleteSignatureException",
            format!("Date must be in ISO-8601 'basic format'. Got '{date}'."),
        ));
    };
    if auth.service != check.signing_name {
        return Err(invalid_signature(format!(
            "Credential should be scoped to correct service: '{}'. ",
            check.signing_name
        )));
    }
    if auth.terminator != "aws4_request" {
        return Err(invalid_signature(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            auth.terminator
        )));
    }
    if !date.starts_with(&auth.date) {
        return Err(invalid_signature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '{}' != '{}', from '{date}'.",
            auth.date,
            &date[..8]
        )));
    }
    let now = SystemTime::now();
    if signed_at + MAX_SKEW < now {
        return Err(invalid_signature(format!(
            "Signature expired: {date} is now earlier than {} ({} - 15 min.)",
            amz_date(now - MAX_SKEW),
            amz_date(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(invalid_signature(format!(
            "Signature not yet current: {date} is still later than {} ({} + 15 min.)",
            amz_date(now + MAX_SKEW),
            amz_date(now)
        )));
    }
    if !check.look_up_key {
        return Ok(Caller {
            access_key_id: auth.access_key_id.clone(),
            owner: KeyOwner::Unknown,
            region: auth.region.clone(),
        });
    }
    let owner = aws
        .key_owner(&auth.access_key_id)
        .await
        .map_err(|e| ApiError::internal(format!("Cannot check the access key with IAM: {e}")))?;
    let unrecognized = || {
        ApiError::new(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let secret = match &owner {
        KeyOwner::Static { secret } => Some(secret.clone()),
        KeyOwner::IamUser { secret, .. } => secret.clone(),
        KeyOwner::Inactive => return Err(unrecognized()),
        KeyOwner::Unknown if !check.accept_unknown => return Err(unrecognized()),
        KeyOwner::Unknown => None,
    };
    if let Some(secret) = secret {
        if sigv4::verify(&secret, &date, &auth, signed) {
            trace.signature = SignatureCheck::Verified;
        } else {
            trace.signature = SignatureCheck::Mismatch;
            return Err(invalid_signature(
                "The request signature we calculated does not match the signature you \
                 provided. Check your AWS Secret Access Key and signing method. Consult the \
                 service documentation for details."
                    .into(),
            ));
        }
    }
    Ok(Caller {
        access_key_id: auth.access_key_id.clone(),
        owner,
        region: auth.region.clone(),
    })
}
