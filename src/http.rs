//! The controller's HTTP endpoints: `/metrics` (Prometheus text) on the metrics address, and
//! `/healthz` (liveness: the process serves) and `/readyz` (readiness: the watch is alive, or
//! this replica waits as a standby under leader election) on the probe address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::metrics::Metrics;

/// Where this replica stands with leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leadership {
    /// Leader election is off: this replica acts.
    NotElecting,
    /// Waiting for the lease.
    Standby,
    /// Holds the lease: this replica acts.
    Leader,
}

/// How long after the last watch error an established watch counts as alive again even though
/// no event came (a watch resumed on an idle set of objects says nothing). Longer than the
/// watcher's longest retry cycle (30 s connect timeout, then at most 30 s of backoff), so a watch
/// that still fails keeps reporting errors within it. (A request that hangs without failing is
/// not caught here; the watcher's own idle timeout ends it.)
const WATCH_QUIET_AFTER_ERROR: Duration = Duration::from_secs(90);

/// What the probes report.
#[derive(Debug, Default)]
pub(crate) struct Health {
    watch: Mutex<WatchState>,
    leadership: AtomicU8,
}

/// What the watch on InstanceRegistrations last said.
#[derive(Debug, Default)]
struct WatchState {
    /// It delivered everything at least once (the cache is filled).
    synced: bool,
    /// Its last item was an event, not an error.
    alive: bool,
    /// When it last failed.
    last_error: Option<Instant>,
}

impl WatchState {
    fn alive_at(&self, now: Instant) -> bool {
        self.alive
            || (self.synced
                && self
                    .last_error
                    .is_some_and(|at| now.saturating_duration_since(at) > WATCH_QUIET_AFTER_ERROR))
    }
}

impl Health {
    /// Records what the watch on InstanceRegistrations delivered: an event (`true`) or an
    /// error (`false`).
    pub(crate) fn set_watch_alive(&self, alive: bool) {
        self.set_watch_alive_at(alive, Instant::now());
    }

    fn set_watch_alive_at(&self, alive: bool, now: Instant) {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        watch.alive = alive;
        if alive {
            watch.synced = true;
        } else {
            watch.last_error = Some(now);
        }
    }

    /// Records this replica's leadership.
    pub(crate) fn set_leadership(&self, leadership: Leadership) {
        let value = match leadership {
            Leadership::NotElecting => 0,
            Leadership::Standby => 1,
            Leadership::Leader => 2,
        };
        self.leadership.store(value, Ordering::Relaxed);
    }

    /// This replica's leadership.
    pub(crate) fn leadership(&self) -> Leadership {
        match self.leadership.load(Ordering::Relaxed) {
            1 => Leadership::Standby,
            2 => Leadership::Leader,
            _ => Leadership::NotElecting,
        }
    }

    /// Readiness and what to say about it. A standby is ready (it is healthy, and a rolling
    /// update must be able to proceed while another replica leads); an acting replica is ready
    /// only while its watch is alive: its last item was an event, or, once it has synced, its
    /// last error is [`WATCH_QUIET_AFTER_ERROR`] old.
    pub(crate) fn readiness(&self) -> (bool, String) {
        self.readiness_at(Instant::now())
    }

    fn readiness_at(&self, now: Instant) -> (bool, String) {
        let watch = self
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alive_at(now);
        match self.leadership() {
            Leadership::Standby => (
                true,
                "ok: standby (another replica holds the lease)\n".into(),
            ),
            role => {
                let role = if role == Leadership::Leader {
                    "leader"
                } else {
                    "acting (no leader election)"
                };
                if watch {
                    (true, format!("ok: {role}, watch alive\n"))
                } else {
                    (false, format!("not ready: {role}, watch not established\n"))
                }
            }
        }
    }
}

/// Binds `address` (so a bad address fails the start) and serves `/metrics` from `metrics`.
pub(crate) async fn serve_metrics(
    address: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    info!(address = %listener.local_addr()?, "serving /metrics");
    tokio::spawn(accept(listener, move |path| match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => not_found(),
    }));
    Ok(())
}

/// Binds `address` and serves `/healthz` and `/readyz` from `health`.
pub(crate) async fn serve_probes(address: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    info!(address = %listener.local_addr()?, "serving /healthz and /readyz");
    tokio::spawn(accept(listener, move |path| match path {
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (ready, text) = health.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", text)
        }
        _ => not_found(),
    }));
    Ok(())
}

fn not_found() -> (StatusCode, &'static str, String) {
    (
        StatusCode::NOT_FOUND,
        "text/plain",
        "not found\n".to_owned(),
    )
}

/// Serves HTTP/1 on `listener`, answering each request with what `route` gives for its path.
pub(crate) async fn accept<F>(listener: TcpListener, route: F)
where
    F: Fn(&str) -> (StatusCode, &'static str, String) + Send + Sync + 'static,
{
    let route = Arc::new(route);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let route = route.clone();
                async move {
                    let (status, content_type, body) = route(request.uri().path());
                    Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acting_replica_is_ready_only_while_its_watch_is_alive_and_a_standby_is_ready() {
        let h = Health::default();
        assert!(!h.readiness().0);
        h.set_watch_alive(true);
        assert!(h.readiness().0);
        h.set_leadership(Leadership::Standby);
        h.set_watch_alive(false);
        let (ready, text) = h.readiness();
        assert!(ready && text.contains("standby"));
        h.set_leadership(Leadership::Leader);
        assert!(!h.readiness().0);
        h.set_watch_alive(true);
        assert!(h.readiness().1.contains("leader"));
    }

    #[test]
    fn a_watch_that_stops_failing_counts_as_alive_again_even_without_events() {
        let h = Health::default();
        let t0 = Instant::now();
        // Never synced: failing for a long time is never ready.
        h.set_watch_alive_at(false, t0);
        assert!(!h.readiness_at(t0 + WATCH_QUIET_AFTER_ERROR * 2).0);
        // Synced, then an outage: not ready while errors keep coming.
        h.set_watch_alive_at(true, t0);
        let outage = t0 + Duration::from_secs(10);
        h.set_watch_alive_at(false, outage);
        assert!(!h.readiness_at(outage + Duration::from_secs(1)).0);
        let retried = outage + Duration::from_secs(60);
        h.set_watch_alive_at(false, retried);
        assert!(!h.readiness_at(retried + Duration::from_secs(80)).0);
        // The resumed watch says nothing: ready once no error came for the quiet time.
        assert!(
            h.readiness_at(retried + WATCH_QUIET_AFTER_ERROR + Duration::from_secs(1))
                .0
        );
        // An event makes it ready at once.
        h.set_watch_alive_at(false, retried);
        h.set_watch_alive_at(true, retried + Duration::from_secs(1));
        assert!(h.readiness_at(retried + Duration::from_secs(2)).0);
    }
}
