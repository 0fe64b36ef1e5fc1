//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! acts. A replica takes the lease when it is free or expired (its holder did not renew it within
//! its duration), renews it every fifth of that duration, retries a failed renewal until two
//! thirds of it have passed, and then stops the process (fail-stop: a replica that is not sure
//! it leads must not act). Every write is conditional on
//! the resourceVersion read, so two replicas never both believe they took the lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

/// How a replica takes part in the election.
#[derive(Clone, Debug)]
pub struct Election {
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
    /// How long after its last renewal the leader keeps trying before it gives up: two thirds
    /// of the lease duration (10 s of 15 s), so it has stopped well before a standby may take
    /// over, and an API server that is away for a few seconds (a restart, an upgrade) costs no
    /// leader.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// The lease, held by this replica.
pub struct Held {
    api: Api<Lease>,
    election: Election,
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: Client, election: Election) -> Held {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut announced = false;
    loop {
        match try_take(&api, &election).await {
            Ok(true) => {
                info!(lease = %election.name, identity = %election.identity, "acquired the leader lease");
                return Held { api, election };
            }
            Ok(false) => {
                if !announced {
                    info!(lease = %election.name, "another replica leads; waiting as a standby");
                    announced = true;
                }
            }
            Err(error) => {
                warn!(lease = %election.name, %error, "could not take part in leader election yet")
            }
        }
        tokio::time::sleep(election.retry_every()).await;
    }
}

impl Held {
    /// Renews the lease until it cannot be renewed within the renew deadline; then returns (the
    /// caller must stop acting at once). A failed renewal is retried until that deadline, and no
    /// attempt may outlast it: a request that hangs is a failed renewal.
    pub async fn keep(&self) -> String {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.election.retry_every()).await;
            let deadline = last_renewed + self.election.renew_deadline();
            let attempt = Instant::now();
            let problem =
                match tokio::time::timeout_at(deadline.into(), try_take(&self.api, &self.election))
                    .await
                {
                    Ok(Ok(true)) => {
                        debug!(lease = %self.election.name, "renewed the leader lease");
                        // The lease runs from the renewTime written, taken before the request.
                        last_renewed = attempt;
                        continue;
                    }
                    Ok(Ok(false)) => return "another replica took the lease".into(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "the renewal did not finish in time".to_owned(),
                };
            if Instant::now() >= deadline {
                return format!(
                    "could not renew the lease within {:?}: {problem}",
                    self.election.renew_deadline()
                );
            }
            warn!(lease = %self.election.name, error = %problem, "could not renew the leader lease; retrying");
        }
    }

    /// Gives the lease up (on a graceful shutdown), so that a standby takes over at once.
    pub async fn release(self) {
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

/// Takes or renews the lease if it is free, expired or ours; returns whether we hold it now.
async fn try_take(api: &Api<Lease>, election: &Election) -> Result<bool, kube::Error> {
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
    let ours = spec.holder_identity.as_deref() == Some(election.identity.as_str());
    let held_by_other = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && !ours;
    if held_by_other && !expired(spec, now) {
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

/// Whether the holder let the lease run out.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() > renewed.0.as_second() + duration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_after_its_duration_without_renewal() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = |renewed: i64| LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        };
        assert!(!expired(&spec(990), now));
        assert!(!expired(&spec(985), now));
        assert!(expired(&spec(984), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
