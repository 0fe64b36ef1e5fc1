//! Fault injection for tests: latency (fixed, plus spikes at a rate), throttling, server faults
//! and hangs at rates, drawn from a seeded random generator so that a run is repeatable.
//!
//! Each API call that passed the authentication checks draws four numbers, in arrival order,
//! from a generator seeded with [`Faults::seed`] (re-seeded whenever the faults are set):
//! whether a latency spike happens, then throttling, then 500, then 503; and a fifth, whether it
//! hangs, only when [`Faults::hang_rate`] is not zero (so the draws of a seed without hangs are
//! what they always were).
//!
//! A hung call is held without an answer until the faults are next set (or for [`MAX_HANG`]),
//! then its connection is closed, still without an answer: an endpoint that stopped answering,
//! as a client sees it. The request is never carried out. The control routes
//! (`/_endpoint/...`) and the agent installer download are never fault-injected. The moto proxy
//! ([`crate::proxy`]) draws the same way for each IAM, EC2 or STS call it recognises.

use std::time::Duration;

use tokio::sync::watch;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::record::InjectedFault;

/// Fault settings. All rates are probabilities in `[0, 1]` per call; the default is no faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Latency added to every call, in milliseconds.
    pub latency_ms: u64,
    /// Rate of latency spikes.
    pub spike_rate: f64,
    /// Extra latency of a spike, in milliseconds.
    pub spike_latency_ms: u64,
    /// Rate of `ThrottlingException` (HTTP 400) answers.
    pub throttle_rate: f64,
    /// When not zero, each action (of [`Faults::only_actions`], or every one) takes at most this
    /// many calls per second, as AWS's own rate limits do (a token bucket holding one second's
    /// worth): the calls beyond it are answered `ThrottlingException` (HTTP 400) and not carried
    /// out. Draws nothing from the generator.
    pub calls_per_second: f64,
    /// Rate of `InternalFailure` (HTTP 500) answers.
    pub internal_error_rate: f64,
    /// Rate of `ServiceUnavailable` (HTTP 503) answers.
    pub unavailable_rate: f64,
    /// Rate of calls held without an answer until the faults are next set (see the module
    /// documentation).
    pub hang_rate: f64,
    /// Whether paginated answers (of calls whose input takes a `NextToken`) never end: each
    /// carries a new `NextToken`, and a token of these gets the first page again. An endpoint
    /// a client that follows tokens without a bound never gets to the end of (the endpoint only;
    /// the moto proxy ignores it).
    pub endless_pages: bool,
    /// When not empty, faults apply only to these actions (e.g. `["DescribeInstances"]`). They
    /// may also be qualified by service: `opsworks:DescribeInstances` and
    /// `ssm:DescribeActivations` for the endpoint, `iam:CreateUser` for the moto proxy
    /// ([`crate::proxy`]).
    pub only_actions: Vec<String>,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            spike_rate: 0.0,
            spike_latency_ms: 0,
            throttle_rate: 0.0,
            calls_per_second: 0.0,
            internal_error_rate: 0.0,
            unavailable_rate: 0.0,
            hang_rate: 0.0,
            endless_pages: false,
            only_actions: Vec::new(),
            seed: 0,
        }
    }
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Throttles calls at `rate`.
    pub fn throttling(rate: f64) -> Self {
        Faults {
            throttle_rate: rate,
            ..Self::default()
        }
    }

    /// Holds every call (of `actions` only, when not empty) without an answer.
    pub fn hang(actions: &[&str]) -> Self {
        Faults {
            hang_rate: 1.0,
            only_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Paginated answers of `actions` (all, when empty) never end ([`Faults::endless_pages`]).
    pub fn endless_pages(actions: &[&str]) -> Self {
        Faults {
            endless_pages: true,
            only_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Takes at most `rate` calls per second of each of `actions` (all, when empty), throttling
    /// the rest ([`Faults::calls_per_second`]).
    pub fn rate_limit(rate: f64, actions: &[&str]) -> Self {
        Faults {
            calls_per_second: rate,
            only_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Checks that the rates are probabilities.
    pub fn validate(&self) -> Result<(), String> {
        if !self.calls_per_second.is_finite() || self.calls_per_second < 0.0 {
            return Err(format!(
                "calls_per_second must be 0 or more, not {}",
                self.calls_per_second
            ));
        }
        for (name, r) in [
            ("spike_rate", self.spike_rate),
            ("throttle_rate", self.throttle_rate),
            ("internal_error_rate", self.internal_error_rate),
            ("unavailable_rate", self.unavailable_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, not {r}"));
            }
        }
        Ok(())
    }
}

impl Injector {
    /// Takes a token of `action`'s bucket, if it has one.
    fn take_turn(&mut self, action: &str) -> bool {
        let rate = self.faults.calls_per_second;
        let now = std::time::Instant::now();
        let (tokens, at) = self
            .buckets
            .entry(action.to_owned())
            .or_insert((rate.max(1.0), now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate.max(1.0));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The longest a call is held by an injected hang when the faults are not set again.
pub const MAX_HANG: Duration = Duration::from_secs(600);

/// What the generator decided for one call.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub delay: Duration,
    pub spike: bool,
    pub fault: Option<InjectedFault>,
    /// For a hang ([`InjectedFault::Hang`]): closed when the faults are next set.
    pub hold: Option<watch::Receiver<()>>,
    /// Whether the answer, if paginated, never ends ([`Faults::endless_pages`]).
    pub endless_pages: bool,
}

impl Decision {
    pub fn error(&self) -> Option<ApiError> {
        self.fault.map(|f| match f {
            InjectedFault::Throttling => ApiError::new(400, "ThrottlingException", "Rate exceeded"),
            InjectedFault::InternalFailure => ApiError::internal(
                "The request processing has failed because of an unknown error, exception or \
                 failure.",
            ),
            InjectedFault::ServiceUnavailable | InjectedFault::Hang => ApiError::new(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ),
        })
    }
}

impl Decision {
    /// For a hang: waits until the faults are set again (or [`MAX_HANG`]); at once otherwise.
    pub async fn held(&mut self) {
        if let Some(hold) = &mut self.hold {
            // Nothing is ever sent: `changed` ends when the injector that made this decision is
            // replaced (dropping its sender).
            let _ = tokio::time::timeout(MAX_HANG, hold.changed()).await;
        }
    }
}

/// Faults and their generator.
pub(crate) struct Injector {
    pub faults: Faults,
    rng: StdRng,
    /// Hung calls wait until this is dropped, with the injector, when the faults are set again.
    release: watch::Sender<()>,
    /// Each action's token bucket for [`Faults::calls_per_second`]: tokens, and when counted.
    buckets: std::collections::HashMap<String, (f64, std::time::Instant)>,
}

impl Injector {
    pub fn new(faults: Faults) -> Self {
        let rng = StdRng::seed_from_u64(faults.seed);
        Injector {
            faults,
            rng,
            release: watch::Sender::new(()),
            buckets: Default::default(),
        }
    }

    /// Decides the faults of a call to `action`.
    #[cfg(test)]
    pub fn decide(&mut self, action: &str) -> Decision {
        self.decide_any(&[action])
    }

    /// Decides the faults of a call that [`Faults::only_actions`] may name by any of `names`
    /// (the proxy passes `CreateUser` and `iam:CreateUser`; the endpoint `DescribeInstances` and
    /// `opsworks:DescribeInstances`).
    pub fn decide_any(&mut self, names: &[&str]) -> Decision {
        let f = &self.faults;
        if !f.only_actions.is_empty() && !f.only_actions.iter().any(|a| names.contains(&a.as_str()))
        {
            return Decision::default();
        }
        if f.calls_per_second > 0.0 && !self.take_turn(names.first().copied().unwrap_or("")) {
            return Decision {
                fault: Some(InjectedFault::Throttling),
                ..Decision::default()
            };
        }
        let f = &self.faults;
        let (spike, throttle, internal, unavailable): (f64, f64, f64, f64) = (
            self.rng.random(),
            self.rng.random(),
            self.rng.random(),
            self.rng.random(),
        );
        let hang: f64 = if f.hang_rate > 0.0 {
            self.rng.random()
        } else {
            1.0
        };
        let spike = spike < f.spike_rate;
        let mut delay = Duration::from_millis(f.latency_ms);
        if spike {
            delay += Duration::from_millis(f.spike_latency_ms);
        }
        let fault = if throttle < f.throttle_rate {
            Some(InjectedFault::Throttling)
        } else if internal < f.internal_error_rate {
            Some(InjectedFault::InternalFailure)
        } else if unavailable < f.unavailable_rate {
            Some(InjectedFault::ServiceUnavailable)
        } else if hang < f.hang_rate {
            Some(InjectedFault::Hang)
        } else {
            None
        };
        let hold = (fault == Some(InjectedFault::Hang)).then(|| self.release.subscribe());
        Decision {
            delay,
            spike,
            fault,
            hold,
            endless_pages: f.endless_pages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_takes_a_seconds_worth_then_throttles_each_action_apart() {
        let mut i = Injector::new(Faults::rate_limit(5.0, &["CreateAccessKey"]));
        let throttled = |i: &mut Injector, action: &str| {
            (0..8)
                .filter(|_| i.decide(action).fault == Some(InjectedFault::Throttling))
                .count()
        };
        assert_eq!(throttled(&mut i, "CreateAccessKey"), 3);
        assert_eq!(throttled(&mut i, "CreateUser"), 0, "not limited");
        std::thread::sleep(Duration::from_millis(450));
        // 2.25 tokens came back (more if the sleep overran): two or three calls go through.
        let again = throttled(&mut i, "CreateAccessKey");
        assert!((5..=6).contains(&again), "{again}");
        assert!(Faults::rate_limit(-1.0, &[]).validate().is_err());
    }

    #[test]
    fn deterministic_and_near_the_rate() {
        let faults = Faults {
            throttle_rate: 0.3,
            seed: 7,
            ..Faults::default()
        };
        let run = || {
            let mut i = Injector::new(faults.clone());
            (0..1000)
                .map(|_| i.decide("DescribeStacks").fault.is_some())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let n = a.iter().filter(|x| **x).count();
        assert!((230..370).contains(&n), "{n} throttled of 1000");
        let mut only = Injector::new(Faults {
            throttle_rate: 1.0,
            only_actions: vec!["DescribeInstances".into()],
            ..Faults::default()
        });
        assert!(only.decide("DescribeStacks").fault.is_none());
        assert!(only.decide("DescribeInstances").fault.is_some());
        assert!(Faults::throttling(1.5).validate().is_err());
    }

    #[test]
    fn endless_pages_apply_to_the_actions_named() {
        let mut i = Injector::new(Faults::endless_pages(&["ssm:DescribeActivations"]));
        assert!(
            i.decide_any(&["DescribeActivations", "ssm:DescribeActivations"])
                .endless_pages
        );
        assert!(!i.decide_any(&["DescribeInstanceInformation"]).endless_pages);
        assert!(i.decide("DescribeActivations").fault.is_none());
    }

    #[tokio::test]
    async fn a_hung_call_is_held_until_the_faults_are_set_again() {
        let mut injector = Injector::new(Faults::hang(&["iam:GetGroup"]));
        assert!(
            injector
                .decide_any(&["CreateUser", "iam:CreateUser"])
                .hold
                .is_none()
        );
        let mut decision = injector.decide_any(&["GetGroup", "iam:GetGroup"]);
        assert_eq!(decision.fault, Some(InjectedFault::Hang));
        let held = tokio::time::timeout(Duration::from_millis(200), decision.held()).await;
        assert!(held.is_err(), "a hung call was answered");
        injector = Injector::new(Faults::none());
        tokio::time::timeout(Duration::from_secs(1), decision.held())
            .await
            .expect("setting the faults again releases a hung call");
        assert!(injector.decide("GetGroup").fault.is_none());
    }
}
