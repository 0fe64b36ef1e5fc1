//! A small time-bounded cache with one fetch in flight per key: when many objects of one stack
//! are reconciled at once (a restart, a fleet applied together), they share one OpsWorks look-up
//! per stack instead of making one each.
//!
//! Sharing a fetch must not mean sharing its fate: a caller waits for the fetch ahead of it only
//! for a short, bounded while ([`WAITER_PATIENCE`]), then fetches on its own. A call that hangs
//! (until the AWS call's own time limit ends it) so costs the one object that made it, not
//! every object of the stack; and the value any caller fetched serves the others at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a caller waits for a fetch of the same key that is already in flight before it
/// fetches on its own. A look-up takes milliseconds; one still going after this long is being
/// retried or hangs, and waiting for it longer would tie this caller to its outcome.
pub(crate) const WAITER_PATIENCE: Duration = Duration::from_secs(3);

/// One key: its latest value, and the lock that the fetch in flight holds.
#[derive(Debug)]
struct Slot<V> {
    value: Mutex<Option<(Instant, V)>>,
    flight: tokio::sync::Mutex<()>,
}

impl<V: Clone> Slot<V> {
    fn fresh(&self, max_age: Duration) -> Option<V> {
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner());
        match value.as_ref() {
            Some((at, v)) if at.elapsed() < max_age => Some(v.clone()),
            _ => None,
        }
    }

    fn store(&self, v: V) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v));
    }
}

/// Values by key, each fresh for `ttl` after it was fetched.
#[derive(Debug)]
pub(crate) struct TtlCache<V> {
    ttl: Duration,
    patience: Duration,
    slots: Mutex<HashMap<String, Arc<Slot<V>>>>,
}

impl<V: Clone> TtlCache<V> {
    /// A cache whose values are fresh for `ttl`; callers wait up to [`WAITER_PATIENCE`] for a
    /// fetch already in flight.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self::with_patience(ttl, WAITER_PATIENCE)
    }

    /// A cache whose values are fresh for `ttl`, whose callers wait up to `patience` for a fetch
    /// of the same key already in flight before they fetch on their own.
    pub(crate) fn with_patience(ttl: Duration, patience: Duration) -> Self {
        Self {
            ttl,
            patience,
            slots: Mutex::default(),
        }
    }

    /// The value for `key`: the cached one while fresh, else what `fetch` returns (cached when
    /// it is a success). Callers asking for the same key meanwhile wait for that one fetch, for
    /// a bounded while.
    pub(crate) async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.get_or_fetch_within(key, self.ttl, fetch).await
    }

    /// [`TtlCache::get_or_fetch`] for a caller content with a value up to `max_age` old
    /// (longer or shorter than the cache's own time to live).
    pub(crate) async fn get_or_fetch_within<E, F, Fut>(
        &self,
        key: &str,
        max_age: Duration,
        fetch: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Slot {
                    value: Mutex::new(None),
                    flight: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        if let Some(value) = slot.fresh(max_age) {
            return Ok(value);
        }
        // Held across the fetch, so that callers behind it share its value; a caller that gave
        // up on it (`Err`: the fetch ahead is slow) fetches on its own, without the lock.
        let _flight = match tokio::time::timeout(self.patience, slot.flight.lock()).await {
            Ok(flight) => {
                if let Some(value) = slot.fresh(max_age) {
                    return Ok(value);
                }
                Some(flight)
            }
            Err(_) => None,
        };
        let value = fetch().await?;
        slot.store(value.clone());
        Ok(value)
    }

    /// How long a value is fresh for callers of [`TtlCache::get_or_fetch`].
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets `key` (after a write that changed it).
    pub(crate) fn invalidate(&self, key: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_failures_are_not_cached() {
        let cache = Arc::new(TtlCache::<u32>::new(Duration::from_secs(60)));
        let fetches = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch("stack", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let failed: Result<u32, &str> = cache.get_or_fetch("other", || async { Err("no") }).await;
        assert_eq!(failed, Err("no"));
        let again: Result<u32, &str> = cache.get_or_fetch("other", || async { Ok(1) }).await;
        assert_eq!(again, Ok(1));
        cache.invalidate("stack");
        let fresh: Result<u32, ()> = cache.get_or_fetch("stack", || async { Ok(8) }).await;
        assert_eq!(fresh, Ok(8));
    }

    #[tokio::test]
    async fn a_caller_content_with_older_values_shares_one_a_stricter_caller_would_refetch() {
        let cache = TtlCache::<u32>::new(Duration::from_millis(50));
        let first: Result<u32, ()> = cache.get_or_fetch("stack", || async { Ok(1) }).await;
        assert_eq!(first, Ok(1));
        tokio::time::sleep(Duration::from_millis(80)).await;
        // Older than the cache's own time to live, but within what this caller accepts.
        let lenient: Result<u32, ()> = cache
            .get_or_fetch_within("stack", Duration::from_secs(60), || async { Ok(2) })
            .await;
        assert_eq!(lenient, Ok(1));
        let strict: Result<u32, ()> = cache.get_or_fetch("stack", || async { Ok(3) }).await;
        assert_eq!(strict, Ok(3));
        let strictest: Result<u32, ()> = cache
            .get_or_fetch_within("stack", Duration::ZERO, || async { Ok(4) })
            .await;
        assert_eq!(strictest, Ok(4));
    }

    #[tokio::test]
    async fn a_fetch_that_never_completes_delays_other_callers_of_its_key_by_the_patience_only() {
        let patience = Duration::from_millis(200);
        let cache = Arc::new(TtlCache::<u32>::with_patience(
            Duration::from_secs(60),
            patience,
        ));
        // The first caller's fetch hangs for good (an AWS call that never answers).
        let hung = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_fetch("stack", std::future::pending::<Result<u32, ()>>)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let bound = patience + Duration::from_millis(500);

        // Another key is not affected at all.
        let started = Instant::now();
        let other = tokio::time::timeout(
            bound,
            cache.get_or_fetch("other-stack", || async { Ok::<_, ()>(9) }),
        )
        .await;
        assert_eq!(other, Ok(Ok(9)));
        assert!(started.elapsed() < patience, "{:?}", started.elapsed());

        // Callers of the same key give up on the hung fetch after the patience and fetch on
        // their own, all of them, concurrently.
        let started = Instant::now();
        let mut waiters = Vec::new();
        for n in 0..5 {
            let cache = cache.clone();
            waiters.push(tokio::spawn(async move {
                tokio::time::timeout(
                    bound,
                    cache.get_or_fetch("stack", || async move { Ok::<_, ()>(n) }),
                )
                .await
            }));
        }
        for w in waiters {
            let got = w.await.unwrap();
            assert!(matches!(got, Ok(Ok(n)) if n < 5), "{got:?}");
        }
        let waited = started.elapsed();
        assert!(
            waited >= patience && waited < bound,
            "the waiters took {waited:?}"
        );

        // What they fetched serves the next caller at once, though the hung fetch goes on.
        let started = Instant::now();
        let next: Result<u32, ()> = cache.get_or_fetch("stack", || async { Ok(99) }).await;
        assert!(matches!(next, Ok(n) if n < 5), "{next:?}");
        assert!(started.elapsed() < patience, "{:?}", started.elapsed());
        assert!(!hung.is_finished());
        hung.abort();
    }
}
