//! The controller's HTTP endpoints: `/metrics` (Prometheus text) on the metrics address, and
//! `/healthz` (liveness: the process serves) and `/readyz` (readiness: the watch is alive, or
//! this replica waits as a standby under leader election) on the probe address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

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
pub enum Leadership {
    /// Leader election is off: this replica acts.
    NotElecting,
    /// Waiting for the lease.
    Standby,
    /// Holds the lease: this replica acts.
    Leader,
}

/// What the probes report.
#[derive(Debug)]
pub struct Health {
    watch_alive: AtomicBool,
    leadership: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            watch_alive: AtomicBool::new(false),
            leadership: AtomicU8::new(0),
        }
    }
}

impl Health {
    /// Records whether the watch on InstanceRegistrations is established and answering.
    pub fn set_watch_alive(&self, alive: bool) {
        self.watch_alive.store(alive, Ordering::Relaxed);
    }

    /// Records this replica's leadership.
    pub fn set_leadership(&self, leadership: Leadership) {
        let value = match leadership {
            Leadership::NotElecting => 0,
            Leadership::Standby => 1,
            Leadership::Leader => 2,
        };
        self.leadership.store(value, Ordering::Relaxed);
    }

    /// This replica's leadership.
    pub fn leadership(&self) -> Leadership {
        match self.leadership.load(Ordering::Relaxed) {
            1 => Leadership::Standby,
            2 => Leadership::Leader,
            _ => Leadership::NotElecting,
        }
    }

    /// Readiness and what to say about it. A standby is ready (it is healthy, and a rolling
    /// update must be able to proceed while another replica leads); an acting replica is ready
    /// only while its watch is alive.
    pub fn readiness(&self) -> (bool, String) {
        let watch = self.watch_alive.load(Ordering::Relaxed);
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
pub async fn serve_metrics(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
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
pub async fn serve_probes(address: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
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

async fn accept<F>(listener: TcpListener, route: F)
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
}
