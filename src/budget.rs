//! One budget of AWS calls per service (IAM, OpsWorks, EC2, Systems Manager), shared by every
//! pass, deletion and audit of the controller: a client-side rate limit that every attempt of
//! every call goes through (the SDK clients' HTTP connector waits its turn, [`Budgeted`]), and
//! that adapts to the service's throttling. AWS publishes no call rate for most of the calls the
//! controller makes (`ssm:CreateActivation`, `iam:CreateAccessKey`, ...) and throttles with
//! `ThrottlingException: Rate exceeded`, expecting clients to slow down: a throttled attempt
//! (any of the codes [`crate::metrics`] counts as `throttled`) cuts the service's rate by
//! [`DECREASE`] (at most once per [`COOL_DOWN`]), and each second without one lets it grow back
//! by [`INCREASE`] of the configured rate, never above it.
//!
//! An attempt waits for its turn inside the SDK's attempt time limit, so a turn further away than
//! [`MAX_WAIT`] is not waited for: the attempt fails at once as throttled by the controller's own
//! budget (retried by the SDK with backoff, then by the step with the object's backoff, reason
//! `Throttled`), and the calls that do wait are not held past their time limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::retry::ErrorKind;

use crate::metrics::Metrics;

/// The factor a throttled attempt cuts the rate by.
pub(crate) const DECREASE: f64 = 0.7;
/// How much of the configured rate each second without throttling adds back.
pub(crate) const INCREASE: f64 = 0.05;
/// Least time between two cuts: the throttled answers of calls sent at the old rate come back
/// together, and count as one.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);
/// The lowest rate a service is cut to, calls per second.
pub(crate) const MIN_RATE: f64 = 0.5;
/// The longest an attempt waits for its turn.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);
/// Calls a service may make at once after a quiet while (one second's worth at the rate, at
/// least one).
const BURST: Duration = Duration::from_secs(1);

/// The budgets of every service, made on first use; `None` rate: no limit.
#[derive(Debug)]
pub(crate) struct Budgets {
    rate: Option<f64>,
    metrics: Option<Arc<Metrics>>,
    by_service: Mutex<HashMap<String, Arc<Budget>>>,
}

impl Budgets {
    /// Budgets of `rate` calls per second per service (none with `None`), reported in `metrics`.
    pub(crate) fn new(rate: Option<f64>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            rate: rate.filter(|r| r.is_finite() && *r > 0.0),
            metrics,
            by_service: Mutex::default(),
        }
    }

    /// The budget of `service` (`iam`, `opsworks`, `ec2`, `ssm`); `None` when calls are not
    /// limited.
    pub(crate) fn of(&self, service: &str) -> Option<Arc<Budget>> {
        let rate = self.rate?;
        let mut all = self.by_service.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            all.entry(service.to_owned())
                .or_insert_with(|| {
                    Arc::new(Budget::new(
                        service,
                        rate,
                        self.metrics.clone(),
                        Instant::now(),
                    ))
                })
                .clone(),
        )
    }

    /// Says that an attempt to `service` was throttled.
    pub(crate) fn throttled(&self, service: &str) {
        if let Some(budget) = self.of(service) {
            budget.throttled(Instant::now());
        }
    }
}

/// One service's budget.
#[derive(Debug)]
pub(crate) struct Budget {
    service: String,
    /// The configured rate, calls per second: where the rate starts and the most it grows to.
    max: f64,
    state: Mutex<State>,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct State {
    /// The rate now, calls per second.
    rate: f64,
    /// When the next call may go (calls are spaced `1 / rate` apart).
    next: Instant,
    /// When the rate was last cut.
    cut_at: Option<Instant>,
    /// When the rate last grew (or was cut).
    grown_at: Instant,
}

impl Budget {
    fn new(service: &str, max: f64, metrics: Option<Arc<Metrics>>, now: Instant) -> Self {
        let budget = Self {
            service: service.to_owned(),
            max,
            state: Mutex::new(State {
                rate: max,
                next: now,
                cut_at: None,
                grown_at: now,
            }),
            metrics,
        };
        budget.report(max);
        budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next turn: how long to wait for it, or `None` when it is further away than
    /// [`MAX_WAIT`] (no turn is taken then).
    pub(crate) fn reserve(&self, now: Instant) -> Option<Duration> {
        let mut state = self.lock();
        self.grow(&mut state, now);
        let spacing = Duration::from_secs_f64(1.0 / state.rate);
        // After a quiet while, a burst of up to BURST's worth goes at once.
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let turn = state.next.max(earliest);
        let wait = turn.saturating_duration_since(now);
        if wait > MAX_WAIT {
            return None;
        }
        state.next = turn + spacing;
        Some(wait)
    }

    /// A throttled answer came: the rate is cut, unless it was cut within [`COOL_DOWN`].
    pub(crate) fn throttled(&self, now: Instant) {
        let mut state = self.lock();
        if state
            .cut_at
            .is_some_and(|at| now.saturating_duration_since(at) < COOL_DOWN)
        {
            return;
        }
        state.rate = (state.rate * DECREASE).max(MIN_RATE);
        state.cut_at = Some(now);
        state.grown_at = now;
        let rate = state.rate;
        drop(state);
        tracing::info!(service = %self.service, rate, "AWS throttled a call: the controller slows its calls to the service");
        self.report(rate);
    }

    /// The rate now, calls per second.
    #[cfg(test)]
    fn rate(&self, now: Instant) -> f64 {
        let mut state = self.lock();
        self.grow(&mut state, now);
        state.rate
    }

    /// Grows the rate back for the whole seconds since it last grew.
    fn grow(&self, state: &mut State, now: Instant) {
        let seconds = now.saturating_duration_since(state.grown_at).as_secs();
        if seconds == 0 || state.rate >= self.max {
            return;
        }
        state.rate = (state.rate + self.max * INCREASE * seconds as f64).min(self.max);
        state.grown_at += Duration::from_secs(seconds);
        self.report(state.rate);
    }

    fn report(&self, rate: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.aws_budget_rate(&self.service, rate);
        }
    }

    /// Waits for a turn; an error to fail the attempt with when none comes within [`MAX_WAIT`].
    async fn turn(&self) -> Result<(), ConnectorError> {
        let Some(wait) = self.reserve(Instant::now()) else {
            if let Some(metrics) = &self.metrics {
                metrics.aws_budget_refused(&self.service);
            }
            return Err(ConnectorError::other(
                Box::new(OverBudget {
                    service: self.service.clone(),
                }),
                Some(ErrorKind::ThrottlingError),
            ));
        };
        if !wait.is_zero() {
            let _waiting = self
                .metrics
                .as_ref()
                .map(|m| m.aws_budget_waiting(&self.service));
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// Why an attempt was not made: its service's budget has no turn for it within [`MAX_WAIT`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the controller's own budget of {service} calls has no turn within {}s (the service throttled \
     it, or too many calls are waiting); retried with backoff",
    MAX_WAIT.as_secs()
)]
pub(crate) struct OverBudget {
    service: String,
}

/// An SDK HTTP client whose every attempt waits for its turn in a service's [`Budget`].
#[derive(Debug, Clone)]
pub(crate) struct Budgeted {
    inner: SharedHttpClient,
    budget: Arc<Budget>,
}

impl Budgeted {
    /// `inner`, its attempts spaced by `budget`.
    pub(crate) fn new(inner: SharedHttpClient, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl HttpClient for Budgeted {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(BudgetedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: self.budget.clone(),
        })
    }
}

#[derive(Debug)]
struct BudgetedConnector {
    inner: SharedHttpConnector,
    budget: Arc<Budget>,
}

impl HttpConnector for BudgetedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (inner, budget) = (self.inner.clone(), self.budget.clone());
        HttpConnectorFuture::new(async move {
            budget.turn().await?;
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_spaced_at_the_rate_after_a_burst_and_refused_beyond_the_longest_wait() {
        let start = Instant::now();
        let budget = Budget::new("iam", 10.0, None, start);
        let later = start + Duration::from_secs(5);
        // A second's worth at once after a quiet while, then 100 ms apart.
        let waits: Vec<Duration> = (0..14).map(|_| budget.reserve(later).unwrap()).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        assert_eq!(waits[10], Duration::ZERO);
        assert_eq!(waits[11], Duration::from_millis(100));
        assert_eq!(waits[13], Duration::from_millis(300));
        // Turns further away than MAX_WAIT are not taken.
        let mut taken = 0;
        while budget.reserve(later).is_some() {
            taken += 1;
        }
        assert_eq!(taken, 100 - 3, "10 s at 10/s, less the three past now");
        assert!(budget.reserve(later).is_none());
        assert!(budget.reserve(later + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn throttling_cuts_the_rate_once_per_cool_down_and_quiet_seconds_grow_it_back() {
        let start = Instant::now();
        let budget = Budget::new("ssm", 20.0, None, start);
        budget.throttled(start);
        budget.throttled(start + Duration::from_millis(500));
        assert_eq!(budget.rate(start + Duration::from_millis(900)), 14.0);
        let t = start + Duration::from_millis(1200);
        budget.throttled(t);
        assert!((budget.rate(t) - 9.8).abs() < 1e-9);
        // One call per second of quiet adds 5 % of 20.
        assert!((budget.rate(t + Duration::from_millis(2500)) - 11.8).abs() < 1e-9);
        assert_eq!(
            budget.rate(t + Duration::from_secs(60)),
            20.0,
            "never above the set rate"
        );
        for i in 0..50 {
            budget.throttled(t + Duration::from_secs(100 + 2 * i));
        }
        assert_eq!(budget.rate(t + Duration::from_millis(198_500)), MIN_RATE);
    }

    #[test]
    fn no_rate_means_no_budget() {
        assert!(Budgets::new(None, None).of("iam").is_none());
        assert!(Budgets::new(Some(0.0), None).of("iam").is_none());
        let budgets = Budgets::new(Some(5.0), None);
        let iam = budgets.of("iam").unwrap();
        assert!(Arc::ptr_eq(&iam, &budgets.of("iam").unwrap()));
        assert!(!Arc::ptr_eq(&iam, &budgets.of("ssm").unwrap()));
    }
}
