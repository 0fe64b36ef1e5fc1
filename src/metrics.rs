//! Prometheus metrics (text format at `/metrics`): reconciles and their failures by reason,
//! reconcile and step durations, the time from creation to Ready, SSH sessions, AWS calls by
//! service, operation and outcome (throttling counted apart), and objects by phase.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::resource::{InstanceRegistration, Phase};

/// Labels: the result of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels: why a reconcile did not end Ready (the Ready condition's reason, or the error's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    /// A stable CamelCase reason or error label.
    pub reason: String,
}

/// Labels: a step of the pipeline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabels {
    /// The step's condition type.
    pub step: String,
}

/// Labels: an orphan found by the audit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OrphanLabels {
    /// `activation`, `managed node`, `IAM user`, or `unknown cluster` for those without a
    /// cluster tag.
    pub kind: String,
}

/// Labels: a repair of an agent out of touch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RepairLabels {
    /// The service (`opsworks`, `ssm`).
    pub service: String,
    /// `restarted` (the agent's service was restarted), `repaired` (the registration is healthy
    /// again after a restart), `failed` (the restart failed, or the agent stayed out of touch) or
    /// `unreachable` (the host did not answer).
    pub outcome: String,
}

/// Labels: an AWS service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    /// `opsworks`, `iam`, `ec2`, `ssm`.
    pub service: String,
}

/// Labels: one AWS operation of a service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OperationLabels {
    /// `opsworks`, `iam`, `ec2`, `ssm`.
    pub service: String,
    /// The API operation, e.g. `CreateAccessKey`.
    pub operation: String,
}

/// Labels: one AWS call attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AwsCallLabels {
    /// `opsworks`, `iam`, `ec2`, `ssm`.
    pub service: String,
    /// The API operation, e.g. `DescribeInstances`.
    pub operation: String,
    /// `success`, `throttled`, `client_error`, `server_error`, `network_error`, or `not_sent`
    /// (no turn in the controller's own budget, [`crate::budget`]).
    pub outcome: String,
}

/// The controller's metrics and the registry that serves them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Reconciles, by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Reconciles that did not end Ready, by reason.
    pub failures: Family<ReasonLabels, Counter>,
    /// Reconcile durations, seconds.
    pub reconcile_duration: Histogram,
    /// Step durations, seconds, by step.
    pub step_duration: Family<StepLabels, Histogram>,
    /// Seconds from an object's creation to its first Ready.
    pub time_to_ready: Histogram,
    /// SSH sessions open now.
    pub ssh_in_flight: Gauge,
    /// SSH sessions, by result (`succeeded`, `failed` for a non-zero exit, or the condition
    /// reason of a connection failure).
    pub ssh_sessions: Family<ReasonLabels, Counter>,
    /// AWS call attempts, by service, operation and outcome.
    pub aws_calls: Family<AwsCallLabels, Counter>,
    /// Orphans the last audit found, by kind.
    orphans: Family<OrphanLabels, Gauge>,
    /// Repairs of agents out of touch, by service and outcome.
    pub agent_repairs: Family<RepairLabels, Counter>,
    /// The calls per second each service's budget allows now.
    aws_budget_rate: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    aws_budget_operation_rate: Family<OperationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// AWS call attempts waiting for their turn now, by service.
    aws_budget_waiting: Family<ServiceLabels, Gauge>,
    /// AWS call attempts not made for want of a turn, by service.
    aws_budget_refused: Family<ServiceLabels, Counter>,
    objects: Arc<OnceLock<Store<InstanceRegistration>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `registrar` prefix.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("registrar");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles, by result", reconciles.clone());
        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciles that did not end Ready, by the Ready condition's (or the error's) reason",
            failures.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            reconcile_duration.clone(),
        );
        let step_duration = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        registry.register(
            "step_duration_seconds",
            "Duration of a step, by the condition it reports",
            step_duration.clone(),
        );
        let time_to_ready = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "time_to_ready_seconds",
            "Seconds from an object's creation to its first Ready",
            time_to_ready.clone(),
        );
        let ssh_in_flight = Gauge::default();
        registry.register(
            "ssh_sessions_in_flight",
            "SSH sessions open now",
            ssh_in_flight.clone(),
        );
        let ssh_sessions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ssh_sessions",
            "SSH sessions, by how they ended: succeeded, failed (non-zero exit) or the reason of the SSH failure",
            ssh_sessions.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_calls",
            "AWS call attempts, by service, operation and outcome (throttled apart)",
            aws_calls.clone(),
        );
        let orphans = Family::<OrphanLabels, Gauge>::default();
        registry.register(
            "orphans",
            "What the controller made in AWS for objects that no longer exist, at the last audit, by kind (unknown cluster: without a cluster tag, never removed)",
            orphans.clone(),
        );
        let agent_repairs = Family::<RepairLabels, Counter>::default();
        registry.register(
            "agent_repairs",
            "Repairs of agents the service reported out of touch (ConnectionLost), by service and outcome: restarted, repaired, failed, unreachable",
            agent_repairs.clone(),
        );
        let aws_budget_rate =
            Family::<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "aws_budget_rate",
            "AWS calls per second the controller allows itself, by service (--aws-calls-per-second)",
            aws_budget_rate.clone(),
        );
        let aws_budget_operation_rate =
            Family::<OperationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "aws_budget_operation_rate",
            "AWS calls per second the controller allows itself now for an operation the service throttled, by service and operation (cut at each throttling, grown back to the service's rate)",
            aws_budget_operation_rate.clone(),
        );
        let aws_budget_waiting = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "aws_budget_waiting",
            "AWS call attempts waiting for their turn in the service's budget now",
            aws_budget_waiting.clone(),
        );
        let aws_budget_refused = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "aws_budget_refused",
            "AWS call attempts not made because the service's budget had no turn for them soon enough (retried with backoff)",
            aws_budget_refused.clone(),
        );
        let objects = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(ObjectsByPhase {
            store: objects.clone(),
        }));
        Self {
            objects,
            registry,
            reconciles,
            failures,
            reconcile_duration,
            step_duration,
            time_to_ready,
            ssh_in_flight,
            ssh_sessions,
            aws_calls,
            orphans,
            agent_repairs,
            aws_budget_rate,
            aws_budget_waiting,
            aws_budget_refused,
            aws_budget_operation_rate,
        }
    }

    /// Makes the objects-by-phase gauge read `store` at each scrape (once the controller runs).
    pub(crate) fn count_objects_in(&self, store: Store<InstanceRegistration>) {
        let _ = self.objects.set(store);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// Records one step's duration.
    pub(crate) fn step(&self, step: &str, took: Duration) {
        self.step_duration
            .get_or_create(&StepLabels {
                step: step.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// An interceptor for AWS SDK clients that counts every attempt in [`Metrics::aws_calls`].
    pub(crate) fn aws_interceptor(&self) -> AwsCallCounter {
        AwsCallCounter {
            calls: self.aws_calls.clone(),
            on_throttled: None,
        }
    }

    /// Records the rate `service`'s budget allows now.
    pub(crate) fn aws_budget_rate(&self, service: &str, rate: f64) {
        self.aws_budget_rate
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .set(rate);
    }

    /// Records the rate `service`'s budget allows `operation` now (it was throttled).
    pub(crate) fn aws_budget_operation_rate(&self, service: &str, operation: &str, rate: f64) {
        self.aws_budget_operation_rate
            .get_or_create(&OperationLabels {
                service: service.to_owned(),
                operation: operation.to_owned(),
            })
            .set(rate);
    }

    /// Counts an attempt to `service` waiting for its turn until the guard is dropped.
    pub(crate) fn aws_budget_waiting(&self, service: &str) -> InFlight {
        let gauge = self
            .aws_budget_waiting
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Counts an attempt to `service` not made for want of a turn.
    pub(crate) fn aws_budget_refused(&self, service: &str) {
        self.aws_budget_refused
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }
}

/// What to tell when a service throttled an attempt (its service name, lower case, and the
/// operation).
pub(crate) type OnThrottled = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Counts AWS call attempts by service, operation and outcome; tells `on_throttled` of each
/// throttled one.
#[derive(Clone)]
pub(crate) struct AwsCallCounter {
    calls: Family<AwsCallLabels, Counter>,
    on_throttled: Option<OnThrottled>,
}

impl std::fmt::Debug for AwsCallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCallCounter").finish_non_exhaustive()
    }
}

impl AwsCallCounter {
    /// This counter, telling `on_throttled` of each throttled attempt.
    pub(crate) fn on_throttled(mut self, on_throttled: OnThrottled) -> Self {
        self.on_throttled = Some(on_throttled);
        self
    }
}

impl Intercept for AwsCallCounter {
    fn name(&self) -> &'static str {
        "registrar-aws-call-counter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = match cfg.load::<Metadata>() {
            Some(m) => (m.service().to_ascii_lowercase(), m.name().to_owned()),
            None => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let not_sent = || {
            context
                .output_or_error()
                .and_then(Result::err)
                .and_then(|e| e.as_connector_error())
                // What a connector that never sent the request says: only the budget's does.
                .is_some_and(|e| {
                    e.as_other() == Some(aws_smithy_types::retry::ErrorKind::ThrottlingError)
                })
        };
        let outcome = match context.response() {
            None if not_sent() => "not_sent",
            None => "network_error",
            Some(response) => {
                let status = response.status().as_u16();
                let code = error_code(
                    response
                        .headers()
                        .get("x-amzn-errortype")
                        .unwrap_or_default(),
                    response.body().bytes().unwrap_or_default(),
                );
                classify_attempt(status, code.as_deref())
            }
        };
        if outcome == "throttled"
            && let Some(tell) = &self.on_throttled
        {
            tell(&service, &operation);
        }
        self.calls
            .get_or_create(&AwsCallLabels {
                service,
                operation,
                outcome: outcome.to_owned(),
            })
            .inc();
        Ok(())
    }
}

/// The error code of an AWS error response: the JSON protocols' `x-amzn-ErrorType` header or
/// `__type` member, or the query protocols' `<Code>` element.
fn error_code(header: &str, body: &[u8]) -> Option<String> {
    let clean = |s: &str| {
        let s = s.split(':').next().unwrap_or(s);
        s.rsplit('#').next().unwrap_or(s).trim().to_owned()
    };
    if !header.is_empty() {
        return Some(clean(header));
    }
    let text = std::str::from_utf8(body).ok()?;
    if let Some(start) = text.find("<Code>") {
        let rest = &text[start + "<Code>".len()..];
        return rest
            .find("</Code>")
            .map(|end| rest[..end].trim().to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value
        .get("__type")
        .or_else(|| value.get("code"))
        .and_then(|v| v.as_str())
        .map(clean)
}

/// The outcome label of an attempt with HTTP `status` and error `code`.
fn classify_attempt(status: u16, code: Option<&str>) -> &'static str {
    let throttling = matches!(
        code,
        Some(
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "RequestThrottled"
                | "RequestThrottledException"
                | "TooManyRequestsException"
                | "SlowDown"
                | "PriorRequestNotComplete"
        )
    );
    match status {
        200..=299 => "success",
        _ if throttling || status == 429 => "throttled",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

/// Objects by phase, counted from the controller's cache at scrape time.
#[derive(Debug)]
struct ObjectsByPhase {
    store: Arc<OnceLock<Store<InstanceRegistration>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

impl Collector for ObjectsByPhase {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let phases = [
            Phase::Pending,
            Phase::Installing,
            Phase::Registering,
            Phase::Registered,
            Phase::Failed,
            Phase::Deleting,
        ];
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let mut counts = vec![0i64; phases.len() + 1];
        for obj in store.state() {
            let phase = obj.status.as_ref().and_then(|s| s.phase);
            let i = phase
                .and_then(|p| phases.iter().position(|q| *q == p))
                .unwrap_or(phases.len());
            counts[i] += 1;
        }
        let family = Family::<PhaseLabels, Gauge>::default();
        for (i, count) in counts.iter().enumerate() {
            let phase = phases
                .get(i)
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Unknown".to_owned());
            family.get_or_create(&PhaseLabels { phase }).set(*count);
        }
        let metric = encoder.encode_descriptor(
            "objects",
            "InstanceRegistrations the controller sees, by phase",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

impl Metrics {
    /// Sets the orphan counts to what an audit found: `kinds`, one per orphan, and `unknown`
    /// of no known cluster. Kinds not found this time go to 0.
    pub(crate) fn orphans<'a>(&self, kinds: impl Iterator<Item = &'a str>, unknown: i64) {
        self.orphans.clear();
        for kind in ["activation", "managed node", "IAM user"] {
            self.orphans
                .get_or_create(&OrphanLabels { kind: kind.into() })
                .set(0);
        }
        for kind in kinds {
            self.orphans
                .get_or_create(&OrphanLabels { kind: kind.into() })
                .inc();
        }
        self.orphans
            .get_or_create(&OrphanLabels {
                kind: "unknown cluster".into(),
            })
            .set(unknown);
    }
}

/// One SSH session counted in [`Metrics::ssh_in_flight`] while it lives: the count goes down when
/// it is dropped, however the session's pass ends (returns, is cancelled, panics).
#[must_use = "the session is counted only while this lives"]
pub(crate) struct InFlight(Gauge);

impl Metrics {
    /// Counts an SSH session in flight until the returned guard is dropped.
    pub(crate) fn ssh_session(&self) -> InFlight {
        self.ssh_in_flight.inc();
        InFlight(self.ssh_in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_told_apart_from_other_errors_in_every_protocol() {
        let iam = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
        assert_eq!(error_code("", iam).as_deref(), Some("Throttling"));
        let ec2 = b"<Response><Errors><Error><Code>RequestLimitExceeded</Code></Error></Errors></Response>";
        assert_eq!(error_code("", ec2).as_deref(), Some("RequestLimitExceeded"));
        let json = br#"{"__type":"com.amazonaws.opsworks#ThrottlingException","message":"slow"}"#;
        assert_eq!(error_code("", json).as_deref(), Some("ThrottlingException"));
        assert_eq!(
            error_code("ValidationException:http://internal", b"").as_deref(),
            Some("ValidationException")
        );
        assert_eq!(classify_attempt(400, Some("Throttling")), "throttled");
        assert_eq!(
            classify_attempt(503, Some("RequestLimitExceeded")),
            "throttled"
        );
        assert_eq!(
            classify_attempt(400, Some("ThrottlingException")),
            "throttled"
        );
        assert_eq!(
            classify_attempt(400, Some("ValidationException")),
            "client_error"
        );
        assert_eq!(
            classify_attempt(503, Some("ServiceUnavailable")),
            "server_error"
        );
        assert_eq!(classify_attempt(200, None), "success");
    }

    #[tokio::test]
    async fn a_session_cancelled_or_panicking_is_no_longer_counted_in_flight() {
        let m = Arc::new(Metrics::new());
        // Cancelled: the pass's future is dropped while its session runs.
        let session = {
            let m = m.clone();
            async move {
                let _counted = m.ssh_session();
                std::future::pending::<()>().await
            }
        };
        let cut_short = tokio::time::timeout(Duration::from_millis(20), session).await;
        assert!(cut_short.is_err());
        assert_eq!(m.ssh_in_flight.get(), 0);
        // Panicking: the task that runs the pass unwinds.
        let task = tokio::spawn({
            let m = m.clone();
            async move {
                let _counted = m.ssh_session();
                tokio::task::yield_now().await;
                panic!("a bug in a pass");
            }
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(m.ssh_in_flight.get(), 0);
        // And while one lives, it is counted.
        let counted = m.ssh_session();
        assert_eq!(m.ssh_in_flight.get(), 1);
        drop(counted);
        assert_eq!(m.ssh_in_flight.get(), 0);
    }

    #[test]
    fn the_exposition_names_every_metric() {
        let m = Metrics::new();
        m.reconciles
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
        m.step("StackResolved", Duration::from_millis(3));
        let text = m.encode();
        for name in [
            "registrar_reconciles_total{result=\"ok\"} 1",
            "registrar_step_duration_seconds_count{step=\"StackResolved\"} 1",
            "# TYPE registrar_ssh_sessions_in_flight gauge",
            "# TYPE registrar_time_to_ready_seconds histogram",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
