//! One budget of AWS calls per service (IAM, OpsWorks, EC2, Systems Manager), shared by every
//! pass, deletion and audit of the controller: a client-side rate limit that every attempt of
//! every call goes through (the SDK clients' HTTP connector waits its turn, [`Budgeted`]), and
//! that adapts to the service's throttling. AWS publishes no call rate for most of the calls the
//! controller makes (`ssm:CreateActivation`, `iam:CreateAccessKey`, ...), limits them per
//! operation, and throttles with `ThrottlingException: Rate exceeded`, expecting clients to slow
//! down: a throttled attempt (any of the codes [`crate::metrics`] counts as `throttled`) gives
//! its operation a rate of its own, [`DECREASE`] of what the operation sent in the last second
//! (or of its rate, if lower; at most one cut per [`COOL_DOWN`]), and each second without a cut
//! adds back [`INCREASE`] of the service's rate, until the operation is limited by the service's
//! rate alone again. The other operations of the service are not slowed by it.
//!
//! No more than [`MAX_IN_FLIGHT`] calls to a service are unanswered at once, so when the service
//! is slow a wave's calls queue here rather than at the service. A deletion's calls ([`urgent`])
//! go before every other waiting call; the others take their turns oldest object first
//! ([`Seniority`]: the object made first, then the pass that started first): a pass's next call
//! goes before the calls of newer objects' passes, so the passes that have begun their calls end
//! them (and their objects go on to install) rather than every pass of a wave making its first
//! call, then every pass its second, and none reaching its install until the whole wave's calls
//! are made; and an object's later pass (a retry, a look after a refused call) keeps its place
//! instead of going behind a wave of newer objects.
//!
//! An attempt waits for its turn inside the SDK's attempt time limit, so a turn further away than
//! [`MAX_WAIT`] is not waited for: the attempt fails at once (or when [`MAX_WAIT`] is up, if the
//! service is slow to answer the calls ahead) as throttled by the controller's own budget
//! (retried by the SDK with backoff, then by the step with the object's backoff, reason
//! `Throttled`), and the calls that do wait are not held past their time limits.

use std::collections::{HashMap, VecDeque};
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
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// The factor a throttled attempt cuts its operation's rate by.
pub(crate) const DECREASE: f64 = 0.7;
/// How much of the service's rate each second without a cut adds back to an operation's.
pub(crate) const INCREASE: f64 = 0.05;
/// Least time between two cuts: the throttled answers of calls sent at the old rate come back
/// together, and count as one.
pub(crate) const COOL_DOWN: Duration = Duration::from_secs(1);
/// The lowest rate an operation is cut to, calls per second.
pub(crate) const MIN_RATE: f64 = 0.5;
/// The longest an attempt waits for its turn.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);
/// Calls to one service sent and not answered yet, at most. At AWS's usual 50–300 ms a call, 16
/// at once carry 50–300 calls a second, above any rate the budget allows; it binds when the
/// service is slow to answer, and then a wave's calls wait here, where a deletion's go first
/// ([`urgent`]), rather than in the service's own queue, where they would not.
pub(crate) const MAX_IN_FLIGHT: usize = 16;
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

    /// Says that an attempt of `operation` to `service` was throttled.
    pub(crate) fn throttled(&self, service: &str, operation: &str) {
        if let Some(budget) = self.of(service) {
            budget.throttled(operation, Instant::now());
        }
    }
}

/// Whose calls go first when a service's calls wait: a deletion's ([`urgent`]) before every
/// pass's and audit's, and an older object's pass's before a newer one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Ahead of every other call waiting for the same service.
    Urgent,
    /// A call of a pass of this seniority: ahead of the calls of every junior pass.
    Pass(Seniority),
    /// Outside a pass (an audit): as a pass of an object made when the call comes.
    Normal,
}

/// Where a pass's calls stand among the others waiting: the object made first (its
/// `creationTimestamp`, in whole seconds), then, among objects made in the same second, the pass
/// that started first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Seniority {
    /// The object's creation, seconds since the Unix epoch.
    created: i64,
    /// When the pass started.
    started: Instant,
}

impl Seniority {
    /// A pass of an object made at `created` (seconds since the Unix epoch; `None`, an object
    /// not from the API server: now), started at `started`.
    pub(crate) fn new(created: Option<i64>, started: Instant) -> Self {
        Self {
            created: created.unwrap_or_else(unix_now),
            started,
        }
    }
}

/// Seconds since the Unix epoch now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `work` with its AWS calls ahead of every other call waiting for a turn in the same
/// service's budget ([`Priority::Urgent`]): a deletion's few calls are not queued behind a
/// wave's hundreds, whether they wait for the rate or for one of the [`MAX_IN_FLIGHT`] calls at
/// the service to end.
pub(crate) async fn urgent<F: std::future::Future>(work: F) -> F::Output {
    with_priority(Priority::Urgent, work).await
}

/// Runs `work` with its AWS calls at `priority`: a task made for a caller's work (a batch of
/// look-ups, [`crate::batch`]) keeps the caller's.
pub(crate) async fn with_priority<F: std::future::Future>(
    priority: Priority,
    work: F,
) -> F::Output {
    PRIORITY.scope(priority, work).await
}

/// The priority of the calls made from the current task.
pub(crate) fn priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(Priority::Normal)
}

/// One service's budget.
#[derive(Debug)]
pub(crate) struct Budget {
    service: String,
    /// The configured rate, calls per second: the service's, and the most an operation's grows
    /// back to.
    max: f64,
    state: Mutex<State>,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug)]
struct State {
    /// When the next call may go (calls are spaced `1 / max` apart).
    next: Instant,
    /// The operations called, by name.
    operations: HashMap<String, Operation>,
    /// Calls sent and not answered yet.
    in_flight: usize,
    /// The calls waiting for a turn: the urgent ones in the order they came, then the others
    /// senior first ([`Waiter::since`], then the order they came).
    urgent: VecDeque<Waiter>,
    normal: VecDeque<Waiter>,
    /// The last ticket given.
    tickets: u64,
}

/// One operation's calls.
#[derive(Debug, Default)]
struct Operation {
    /// When its calls of the last second went.
    sent: VecDeque<Instant>,
    /// Its own rate, since the service throttled it.
    limit: Option<Limit>,
}

impl Operation {
    /// Forgets the calls sent more than a second before `now`.
    fn trim(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(1))
        {
            self.sent.pop_front();
        }
    }
}

/// `operation`'s entry in `operations`, made on first use (its name copied only then: this is
/// on every call's way).
fn operation_mut<'a>(
    operations: &'a mut HashMap<String, Operation>,
    operation: &str,
) -> &'a mut Operation {
    if !operations.contains_key(operation) {
        operations.insert(operation.to_owned(), Operation::default());
    }
    operations.get_mut(operation).expect("just inserted")
}

/// An operation's own rate, since the service throttled it.
#[derive(Debug)]
struct Limit {
    /// Calls per second.
    rate: f64,
    /// When its next call may go.
    next: Instant,
    /// When it was last cut.
    cut_at: Instant,
    /// When it last grew (or was cut).
    grown_at: Instant,
}

/// A call waiting for its turn: its ticket, its pass's seniority, and how to wake it when it may
/// be its turn.
#[derive(Debug)]
struct Waiter {
    ticket: u64,
    since: Seniority,
    wake: Arc<Notify>,
}

impl State {
    /// The call whose turn is next.
    fn head(&self) -> Option<&Waiter> {
        self.urgent.front().or_else(|| self.normal.front())
    }

    /// Wakes the call whose turn is next, to look again.
    fn wake_head(&self) {
        if let Some(head) = self.head() {
            head.wake.notify_one();
        }
    }
}

/// What a waiting call is to do.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Go: its turn is taken, and it counts as in flight.
    Go,
    /// Its turn comes at this time, unless woken before.
    WaitUntil(Instant),
    /// Another call goes first, or [`MAX_IN_FLIGHT`] are at the service: wait to be woken.
    Wait,
}

impl Budget {
    fn new(service: &str, max: f64, metrics: Option<Arc<Metrics>>, now: Instant) -> Self {
        let budget = Self {
            service: service.to_owned(),
            max,
            state: Mutex::new(State {
                next: now,
                operations: HashMap::new(),
                in_flight: 0,
                urgent: VecDeque::new(),
                normal: VecDeque::new(),
                tickets: 0,
            }),
            metrics,
        };
        if let Some(metrics) = &budget.metrics {
            metrics.aws_budget_rate(service, max);
        }
        budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a call of `priority`: its ticket and waker, or `None` when its turn would be
    /// further away than [`MAX_WAIT`] at the rate now (nothing is queued then).
    fn enter(&self, priority: Priority, now: Instant) -> Option<Waiter> {
        let mut state = self.lock();
        let since = match priority {
            Priority::Pass(since) => since,
            Priority::Urgent | Priority::Normal => Seniority::new(None, now),
        };
        // Among the others, after those senior to it or as senior.
        let place = state.normal.partition_point(|w| w.since <= since);
        let ahead = match priority {
            Priority::Urgent => state.urgent.len(),
            Priority::Pass(_) | Priority::Normal => state.urgent.len() + place,
        };
        let spacing = Duration::from_secs_f64(1.0 / self.max);
        let turn = state.next.max(now.checked_sub(BURST).unwrap_or(now));
        let wait = turn.saturating_duration_since(now) + spacing.mul_f64(ahead as f64);
        if wait > MAX_WAIT {
            return None;
        }
        state.tickets += 1;
        let waiter = Waiter {
            ticket: state.tickets,
            since,
            wake: Arc::new(Notify::new()),
        };
        let queued = Waiter {
            ticket: waiter.ticket,
            since,
            wake: waiter.wake.clone(),
        };
        match priority {
            Priority::Urgent => state.urgent.push_back(queued),
            Priority::Pass(_) | Priority::Normal => state.normal.insert(place, queued),
        }
        Some(waiter)
    }

    /// Whether the call of `ticket` may go now; when it does, its turn is taken and the next
    /// call is woken.
    fn step(&self, ticket: u64, now: Instant) -> Step {
        let mut state = self.lock();
        if state.head().is_none_or(|head| head.ticket != ticket) || state.in_flight >= MAX_IN_FLIGHT
        {
            return Step::Wait;
        }
        // After a quiet while, a burst of up to BURST's worth goes at once.
        let turn = state.next.max(now.checked_sub(BURST).unwrap_or(now));
        if turn > now {
            return Step::WaitUntil(turn);
        }
        state.next = turn + Duration::from_secs_f64(1.0 / self.max);
        state.in_flight += 1;
        if state.urgent.front().is_some_and(|w| w.ticket == ticket) {
            state.urgent.pop_front();
        } else {
            state.normal.pop_front();
        }
        state.wake_head();
        Step::Go
    }

    /// The call of `ticket` stops waiting (its time is up, or it was dropped).
    fn leave(&self, ticket: u64) {
        let mut state = self.lock();
        let was_head = state.head().is_some_and(|head| head.ticket == ticket);
        state.urgent.retain(|w| w.ticket != ticket);
        state.normal.retain(|w| w.ticket != ticket);
        if was_head {
            state.wake_head();
        }
    }

    /// A call that went is answered (or dropped): the next may go.
    fn answered(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.wake_head();
    }

    /// The wait for `operation`'s own turn, when the service throttled it; `None` when that
    /// turn is further away than `max_wait` (no turn is taken then).
    fn operation_turn(
        &self,
        operation: &str,
        now: Instant,
        max_wait: Duration,
    ) -> Option<Duration> {
        let mut state = self.lock();
        let op = operation_mut(&mut state.operations, operation);
        self.grow(operation, op, now);
        let Some(limit) = &mut op.limit else {
            return Some(Duration::ZERO);
        };
        let turn = limit.next.max(now.checked_sub(BURST).unwrap_or(now));
        let wait = turn.saturating_duration_since(now);
        if wait > max_wait {
            return None;
        }
        limit.next = turn + Duration::from_secs_f64(1.0 / limit.rate);
        Some(wait)
    }

    /// A call of `operation` went at `now`.
    fn sent(&self, operation: &str, now: Instant) {
        let mut state = self.lock();
        let op = operation_mut(&mut state.operations, operation);
        op.trim(now);
        op.sent.push_back(now);
    }

    /// A throttled answer to `operation` came: its rate is cut to [`DECREASE`] of what it sent
    /// in the last second (or of its rate, if lower), unless it was cut within [`COOL_DOWN`].
    pub(crate) fn throttled(&self, operation: &str, now: Instant) {
        let mut state = self.lock();
        let op = operation_mut(&mut state.operations, operation);
        self.grow(operation, op, now);
        op.trim(now);
        let sent = (op.sent.len() as f64).max(1.0);
        let rate = match &mut op.limit {
            Some(limit) if now.saturating_duration_since(limit.cut_at) < COOL_DOWN => return,
            Some(limit) => {
                limit.rate = (limit.rate.min(sent) * DECREASE).max(MIN_RATE);
                limit.cut_at = now;
                limit.grown_at = now;
                limit.rate
            }
            None => {
                let rate = (self.max.min(sent) * DECREASE).max(MIN_RATE);
                op.limit = Some(Limit {
                    rate,
                    next: now,
                    cut_at: now,
                    grown_at: now,
                });
                rate
            }
        };
        drop(state);
        tracing::info!(service = %self.service, operation, rate, "AWS throttled a call: the controller slows its calls of the operation");
        self.report(operation, rate);
    }

    /// `operation`'s own rate now, calls per second (`None`: the service's rate alone).
    #[cfg(test)]
    fn rate(&self, operation: &str, now: Instant) -> Option<f64> {
        let mut state = self.lock();
        let op = operation_mut(&mut state.operations, operation);
        self.grow(operation, op, now);
        op.limit.as_ref().map(|l| l.rate)
    }

    /// Grows `operation`'s rate back for the whole seconds since it last grew; once it reaches
    /// the service's rate, the operation has none of its own.
    fn grow(&self, operation: &str, op: &mut Operation, now: Instant) {
        let Some(limit) = &mut op.limit else {
            return;
        };
        let seconds = now.saturating_duration_since(limit.grown_at).as_secs();
        if seconds == 0 {
            return;
        }
        limit.rate += self.max * INCREASE * seconds as f64;
        limit.grown_at += Duration::from_secs(seconds);
        let rate = limit.rate.min(self.max);
        if rate >= self.max {
            op.limit = None;
        }
        self.report(operation, rate);
    }

    fn report(&self, operation: &str, rate: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.aws_budget_operation_rate(&self.service, operation, rate);
        }
    }

    fn refused(&self) -> ConnectorError {
        if let Some(metrics) = &self.metrics {
            metrics.aws_budget_refused(&self.service);
        }
        ConnectorError::other(
            Box::new(OverBudget {
                service: self.service.clone(),
            }),
            Some(ErrorKind::ThrottlingError),
        )
    }

    /// Waits for a turn of a call of `operation` (its own turn first, if the service throttled
    /// it, then the service's, in the order of the current task's [`Priority`]): the call is in
    /// flight until the returned guard is dropped. An error to fail the attempt with when no
    /// turn comes within [`MAX_WAIT`].
    async fn turn(self: &Arc<Self>, operation: &str) -> Result<Sent, ConnectorError> {
        self.turn_within(operation, MAX_WAIT).await
    }

    /// [`Budget::turn`], waiting `max_wait` at most.
    async fn turn_within(
        self: &Arc<Self>,
        operation: &str,
        max_wait: Duration,
    ) -> Result<Sent, ConnectorError> {
        let deadline = Instant::now() + max_wait;
        let Some(wait) = self.operation_turn(operation, Instant::now(), max_wait) else {
            return Err(self.refused());
        };
        if !wait.is_zero() {
            let _waiting = self
                .metrics
                .as_ref()
                .map(|m| m.aws_budget_waiting(&self.service));
            tokio::time::sleep(wait).await;
        }
        let Some(waiter) = self.enter(priority(), Instant::now()) else {
            return Err(self.refused());
        };
        // Leaves the queue however this ends (dropped with its attempt included).
        let mut queued = Queued {
            budget: self,
            ticket: waiter.ticket,
            went: false,
        };
        let mut waiting = None;
        loop {
            let now = Instant::now();
            let until = match self.step(waiter.ticket, now) {
                Step::Go => {
                    queued.went = true;
                    self.sent(operation, now);
                    return Ok(Sent(self.clone()));
                }
                _ if now >= deadline => return Err(self.refused()),
                Step::WaitUntil(turn) => turn.min(deadline),
                Step::Wait => deadline,
            };
            if waiting.is_none() {
                waiting = self
                    .metrics
                    .as_ref()
                    .map(|m| m.aws_budget_waiting(&self.service));
            }
            tokio::select! {
                () = waiter.wake.notified() => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

/// A call in its service's queue; leaves it when dropped before it went.
struct Queued<'a> {
    budget: &'a Budget,
    ticket: u64,
    went: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.went {
            self.budget.leave(self.ticket);
        }
    }
}

/// A call sent to its service and not answered yet (one of [`MAX_IN_FLIGHT`]).
struct Sent(Arc<Budget>);

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.answered();
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
        let operation = operation(&request).unwrap_or_default();
        HttpConnectorFuture::new(async move {
            let _sent = budget.turn(&operation).await?;
            inner.call(request).await
        })
    }
}

/// The API operation `request` calls: the target of the JSON protocols (`X-Amz-Target:
/// AmazonSSM.CreateActivation`, OpsWorks), else the `Action` of the query protocols' form body
/// (IAM, EC2).
fn operation(request: &HttpRequest) -> Option<String> {
    if let Some(target) = request.headers().get("x-amz-target") {
        return target.rsplit('.').next().map(str::to_owned);
    }
    let body = std::str::from_utf8(request.body().bytes()?).ok()?;
    body.split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues `n` calls of `priority` at `now`; their tickets.
    fn queue(budget: &Budget, priority: Priority, n: usize, now: Instant) -> Vec<u64> {
        (0..n)
            .map(|_| budget.enter(priority, now).expect("queued").ticket)
            .collect()
    }

    #[test]
    fn calls_are_spaced_at_the_rate_after_a_burst_and_refused_beyond_the_longest_wait() {
        let start = Instant::now();
        let budget = Budget::new("iam", 10.0, None, start);
        let later = start + Duration::from_secs(5);
        let tickets = queue(&budget, Priority::Normal, 14, later);
        // A second's worth at once after a quiet while (and the one due now), then 100 ms apart.
        for (i, &ticket) in tickets[..11].iter().enumerate() {
            assert_eq!(budget.step(ticket, later), Step::Go, "call {i}");
            budget.answered();
        }
        assert_eq!(budget.step(tickets[12], later), Step::Wait, "not its turn");
        assert_eq!(
            budget.step(tickets[11], later),
            Step::WaitUntil(later + Duration::from_millis(100))
        );
        let at = later + Duration::from_millis(100);
        assert_eq!(budget.step(tickets[11], at), Step::Go);
        assert_eq!(
            budget.step(tickets[12], at),
            Step::WaitUntil(at + Duration::from_millis(100))
        );
        // 10 s at 10/s: the calls whose turn is further away than MAX_WAIT are not queued.
        let mut queued = 2;
        while budget.enter(Priority::Normal, at).is_some() {
            queued += 1;
        }
        assert_eq!(queued, 100, "turns 100 ms apart, the last 10 s away");
        assert!(budget.enter(Priority::Normal, at).is_none());
    }

    #[test]
    fn no_more_than_the_most_in_flight_go_and_an_urgent_call_goes_before_waiting_ones() {
        let start = Instant::now();
        let budget = Budget::new("iam", 10_000.0, None, start);
        let now = start + Duration::from_secs(5);
        let first = queue(&budget, Priority::Normal, MAX_IN_FLIGHT + 3, now);
        for &ticket in &first[..MAX_IN_FLIGHT] {
            assert_eq!(budget.step(ticket, now), Step::Go);
        }
        assert_eq!(
            budget.step(first[MAX_IN_FLIGHT], now),
            Step::Wait,
            "all in flight"
        );
        let urgent = queue(&budget, Priority::Urgent, 2, now);
        assert_eq!(budget.step(urgent[0], now), Step::Wait, "all in flight");
        budget.answered();
        assert_eq!(
            budget.step(first[MAX_IN_FLIGHT], now),
            Step::Wait,
            "urgent first"
        );
        assert_eq!(budget.step(urgent[0], now), Step::Go);
        budget.answered();
        assert_eq!(budget.step(urgent[1], now), Step::Go);
        budget.answered();
        assert_eq!(budget.step(first[MAX_IN_FLIGHT], now), Step::Go);
        // A call that stops waiting leaves its turn to the next.
        budget.answered();
        budget.leave(first[MAX_IN_FLIGHT + 1]);
        assert_eq!(budget.step(first[MAX_IN_FLIGHT + 2], now), Step::Go);
    }

    #[test]
    fn urgent_calls_are_refused_only_for_the_urgent_calls_ahead() {
        let now = Instant::now();
        let budget = Budget::new("ssm", 1.0, None, now);
        let normal = queue(&budget, Priority::Normal, 11, now);
        assert!(budget.enter(Priority::Normal, now).is_none(), "11 s away");
        assert!(budget.enter(Priority::Urgent, now).is_some());
        assert_eq!(
            budget.step(normal[0], now),
            Step::Wait,
            "the urgent call first"
        );
    }

    #[test]
    fn an_older_object_s_pass_goes_before_newer_objects_passes() {
        let start = Instant::now();
        let budget = Budget::new("iam", 10.0, None, start);
        let now = start + Duration::from_secs(5);
        // A wave: passes of objects 1 to 3, made a second apart, each queue their first call (an
        // audit's comes between: as an object made now).
        let pass = |i: i64| Priority::Pass(Seniority::new(Some(1_000 + i), start));
        let first: Vec<u64> = (1..=3)
            .map(|i| budget.enter(pass(i), now).expect("queued").ticket)
            .collect();
        let audit = queue(&budget, Priority::Normal, 1, now)[0];
        assert_eq!(budget.step(first[0], now), Step::Go);
        budget.answered();
        // Object 1's next call comes after the others' first: it goes before them, and the call
        // that was next waits its turn again.
        let next = budget.enter(pass(1), now).expect("queued").ticket;
        assert_eq!(budget.step(first[1], now), Step::Wait, "object 1 first");
        assert_eq!(budget.step(next, now), Step::Go);
        budget.answered();
        // Then the older objects' passes, and the audit's call, which came after they were made;
        // among objects made in the same second, the pass that started first; an object made
        // after the audit's call goes after it.
        let twin = Seniority::new(Some(1_002), start + Duration::from_secs(1));
        let twin = budget
            .enter(Priority::Pass(twin), now)
            .expect("queued")
            .ticket;
        let newest = Priority::Pass(Seniority::new(Some(i64::MAX), now));
        let late = budget.enter(newest, now).expect("queued").ticket;
        for (what, ticket) in [
            ("object 2", first[1]),
            ("object 2's twin, whose pass started later", twin),
            ("object 3", first[2]),
            ("the audit", audit),
        ] {
            assert_eq!(budget.step(late, now), Step::Wait, "{what} first");
            assert_eq!(budget.step(ticket, now), Step::Go, "{what}");
            budget.answered();
        }
        assert_eq!(budget.step(late, now), Step::Go);
        // A pass's call is refused only for the calls ahead of it: at 10 a second, 100 calls of
        // newer objects' passes queued leave room for an older object's.
        while budget.enter(newest, now).is_some() {}
        assert!(budget.enter(newest, now).is_none(), "10 s away");
        assert!(budget.enter(pass(4), now).is_some());
    }

    #[tokio::test]
    async fn a_call_dropped_while_it_waits_leaves_its_turn_and_a_sent_one_its_place() {
        let budget = Arc::new(Budget::new("ec2", 10_000.0, None, Instant::now()));
        let mut sent = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            sent.push(budget.turn("DescribeInstances").await.expect("a turn"));
        }
        // The next waits for one of them to be answered; dropped, it leaves the queue.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.turn("DescribeInstances").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        waiting.abort();
        let _ = waiting.await;
        let next = tokio::spawn({
            let budget = budget.clone();
            async move { budget.turn("DescribeInstances").await.ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!next.is_finished(), "all in flight");
        drop(sent.pop());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(next.is_finished(), "woken when one was answered");
        sent.push(next.await.unwrap().expect("a turn"));
        // Urgent calls made within `urgent` go first.
        let normal = tokio::spawn({
            let budget = budget.clone();
            async move {
                budget
                    .turn_within("DescribeInstances", Duration::from_millis(300))
                    .await
                    .ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let urgent = tokio::spawn({
            let budget = budget.clone();
            urgent(async move { budget.turn("DescribeInstances").await.ok() })
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !urgent.is_finished() && !normal.is_finished(),
            "all in flight"
        );
        drop(sent.pop());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(urgent.is_finished() && !normal.is_finished());
        // Nothing else answered: the normal call is refused when its wait is up.
        assert!(normal.await.unwrap().is_none());
        assert!(urgent.await.unwrap().is_some());
    }

    #[test]
    fn a_throttled_operation_is_cut_below_what_it_sent_and_grows_back_and_no_other_is_slowed() {
        let start = Instant::now();
        let budget = Budget::new("ssm", 20.0, None, start);
        for i in 0..10 {
            budget.sent("CreateActivation", start + Duration::from_millis(50 * i));
        }
        let t = start + Duration::from_millis(600);
        assert_eq!(
            budget.rate("CreateActivation", t),
            None,
            "not throttled yet"
        );
        // 10 sent in the last second: cut to 7, once per cool-down.
        budget.throttled("CreateActivation", t);
        budget.throttled("CreateActivation", t + Duration::from_millis(500));
        assert_eq!(budget.rate("CreateActivation", t), Some(7.0));
        let later = t + Duration::from_millis(1200);
        budget.throttled("CreateActivation", later);
        assert!(
            (budget.rate("CreateActivation", later).unwrap() - 0.7).abs() < 1e-9,
            "nothing sent in the last second: 70 % of one call"
        );
        // Spaced at its own rate; the service's other operations are not.
        let waits: Vec<_> = (0..3)
            .map(|_| {
                budget
                    .operation_turn("CreateActivation", later, MAX_WAIT)
                    .unwrap()
            })
            .collect();
        assert_eq!(waits[0], Duration::ZERO);
        assert!(waits[2] > Duration::from_secs(1), "{waits:?}");
        assert_eq!(
            budget.operation_turn("DescribeInstanceInformation", later, MAX_WAIT),
            Some(Duration::ZERO)
        );
        assert_eq!(
            budget.operation_turn("CreateActivation", later, Duration::from_millis(100)),
            None
        );
        // Each quiet second adds 5 % of 20; at 20 it has no rate of its own again.
        let grown = later + Duration::from_millis(2500);
        assert!((budget.rate("CreateActivation", grown).unwrap() - 2.7).abs() < 1e-9);
        assert_eq!(
            budget.rate("CreateActivation", later + Duration::from_secs(60)),
            None
        );
        // Never below the least rate.
        let slow = Budget::new("iam", 1.0, None, start);
        for i in 0..5 {
            slow.throttled("CreateUser", start + Duration::from_secs(i));
        }
        assert_eq!(
            slow.rate("CreateUser", start + Duration::from_secs(4)),
            Some(MIN_RATE)
        );
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
