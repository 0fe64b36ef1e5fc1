//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! acts.
//!
//! Expiry is judged as client-go judges it: by when *this* replica last saw the lease record
//! change, on its own monotonic clock, never by comparing the holder's `renewTime` with its own
//! wall clock. So a standby whose clock runs ahead (or a holder whose clock runs behind) cannot
//! take a healthy lease early: a standby takes the lease only after it has watched the record
//! stay unchanged for the lease's whole duration (or the holder released it).
//!
//! The leader renews every fifth of the duration and counts its lease from the moment it *sent*
//! the write that took or renewed it (before the API server committed it, so before any standby
//! can have seen it). It acts only while less than two thirds of the duration have passed since
//! then: every attempt is bounded by that deadline, a take that came back too late is not acted
//! on, and when the deadline passes the process stops (fail-stop). Any standby waits the whole
//! duration after it saw the write, so the leader has stopped strictly before a standby may take
//! over, whatever the clocks and however slow the API server answers. Every write is conditional
//! on the resourceVersion read, so two replicas never both believe they took the lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

/// How a replica takes part in the election.
#[derive(Clone, Debug)]
pub(crate) struct Election {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
}

impl Election {
    /// How often the leader renews, and a standby tries to take the lease: a fifth of the lease
    /// duration (3 s of 15 s).
    fn retry_every(&self) -> Duration {
        (self.lease_duration / 5).max(Duration::from_millis(200))
    }
    /// How long after it sent its last successful write the leader may act: two thirds of the
    /// lease duration (10 s of 15 s), so it has stopped well before a standby may take over, and
    /// an API server that is away for a few seconds (a restart, an upgrade) costs no leader.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// What this replica last saw of the lease, and when it first saw it so (on its own monotonic
/// clock).
#[derive(Default)]
struct Observed {
    record: Option<LeaseSpec>,
    since: Option<Instant>,
}

impl Observed {
    /// Notes `record` as seen at `at`; the time moves only when the record changed.
    fn see(&mut self, record: &LeaseSpec, at: Instant) {
        if self.record.as_ref() != Some(record) || self.since.is_none() {
            self.record = Some(record.clone());
            self.since = Some(at);
        }
    }

    /// Whether the holder of the record seen last let it run out: released (no holder), or
    /// unchanged for its whole duration as this replica watched it.
    fn expired(&self, now: Instant) -> bool {
        let Some(record) = &self.record else {
            return true;
        };
        if record.holder_identity.as_deref().is_none_or(str::is_empty) {
            return true;
        }
        let duration =
            Duration::from_secs(record.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        self.since.is_some_and(|since| now >= since + duration)
    }
}

/// The lease, held by this replica.
pub(crate) struct Held {
    api: Api<Lease>,
    election: Election,
    observed: Observed,
    /// When the write that last took or renewed the lease was sent.
    renewed: Instant,
}

/// Waits until this replica holds the lease with time left to act.
pub(crate) async fn acquire(client: Client, election: Election) -> Held {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut observed = Observed::default();
    let mut announced = false;
    loop {
        let attempt = Instant::now();
        let deadline = attempt + election.renew_deadline();
        match tokio::time::timeout_at(deadline.into(), try_take(&api, &election, &mut observed))
            .await
        {
            Ok(Ok(true)) if Instant::now() < deadline => {
                info!(lease = %election.name, identity = %election.identity, "acquired the leader lease");
                return Held {
                    api,
                    election,
                    observed,
                    renewed: attempt,
                };
            }
            Ok(Ok(true)) => warn!(
                lease = %election.name,
                "took the leader lease, but the API server answered too late to act on it; renewing first"
            ),
            Ok(Ok(false)) => {
                if !announced {
                    info!(lease = %election.name, "another replica leads; waiting as a standby");
                    announced = true;
                }
            }
            Ok(Err(error)) => {
                warn!(lease = %election.name, %error, "could not take part in leader election yet")
            }
            Err(_) => warn!(
                lease = %election.name,
                "could not take part in leader election yet: the API server did not answer in time"
            ),
        }
        tokio::time::sleep_until((attempt + election.retry_every()).into()).await;
    }
}

impl Held {
    /// Renews the lease until it cannot be renewed within the renew deadline; then returns, at
    /// that deadline at the latest (the caller must stop acting at once). A failed renewal is
    /// retried until the deadline, and nothing here, not a request that hangs nor the wait
    /// between attempts, outlasts it.
    pub(crate) async fn keep(&mut self) -> String {
        let mut renewed = self.renewed;
        let mut problem = String::from("no renewal was tried");
        let mut next = renewed + self.election.retry_every();
        loop {
            let deadline = renewed + self.election.renew_deadline();
            if next >= deadline {
                tokio::time::sleep_until(deadline.into()).await;
                return self.gave_up(&problem);
            }
            tokio::time::sleep_until(next.into()).await;
            let attempt = Instant::now();
            next = attempt + self.election.retry_every();
            problem = match tokio::time::timeout_at(
                deadline.into(),
                try_take(&self.api, &self.election, &mut self.observed),
            )
            .await
            {
                Ok(Ok(true)) => {
                    debug!(lease = %self.election.name, "renewed the leader lease");
                    renewed = attempt;
                    continue;
                }
                Ok(Ok(false)) => return "another replica took the lease".into(),
                Ok(Err(error)) => error.to_string(),
                Err(_) => return self.gave_up("the renewal did not finish in time"),
            };
            if Instant::now() >= deadline {
                return self.gave_up(&problem);
            }
            warn!(lease = %self.election.name, error = %problem, "could not renew the leader lease; retrying");
        }
    }

    fn gave_up(&self, problem: &str) -> String {
        format!(
            "could not renew the lease within {:?}: {problem}",
            self.election.renew_deadline()
        )
    }

    /// Gives the lease up (on a graceful shutdown), so that a standby takes over at once.
    pub(crate) async fn release(self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.election.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.election.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.election.name, "released the leader lease"),
            Err(error) => warn!(%error, "could not release the leader lease"),
        }
    }
}

/// Takes or renews the lease if it is free, expired (as `observed` judges it) or ours; returns
/// whether we hold it now.
async fn try_take(
    api: &Api<Lease>,
    election: &Election,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    // renewTime and acquireTime are for people reading the Lease; no replica judges by them.
    let now = Timestamp::now();
    let duration_seconds = election.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&election.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.name.clone()),
                namespace: Some(election.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    observed.see(spec, Instant::now());
    let ours = spec.holder_identity.as_deref() == Some(election.identity.as_str());
    if !ours && !observed.expired(Instant::now()) {
        return Ok(false);
    }
    if !ours {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(election.identity.clone());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_seconds);
    // `replace` carries the resourceVersion read above: if anyone wrote in between, it fails
    // with a conflict and nobody takes the lease on stale information.
    match api
        .replace(&election.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_only_after_this_replica_saw_it_unchanged_for_its_duration() {
        let start = Instant::now();
        let mut observed = Observed::default();
        assert!(observed.expired(start), "nothing seen: free to take");
        // A renewTime far in the past (a holder whose clock runs behind, or a standby whose
        // clock runs ahead) does not make the lease expired: only watching it unchanged does.
        observed.see(&record("a", 0), start);
        assert!(!observed.expired(start));
        assert!(!observed.expired(start + Duration::from_secs(14)));
        // The holder renewed (the record changed): the count starts again.
        observed.see(&record("a", 1), start + Duration::from_secs(14));
        assert!(!observed.expired(start + Duration::from_secs(20)));
        // Seeing the same record again does not move the time.
        observed.see(&record("a", 1), start + Duration::from_secs(25));
        assert!(!observed.expired(start + Duration::from_secs(28)));
        assert!(observed.expired(start + Duration::from_secs(29)));
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let mut observed = Observed::default();
        let now = Instant::now();
        observed.see(
            &LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(15),
                ..Default::default()
            },
            now,
        );
        assert!(observed.expired(now));
    }
}
