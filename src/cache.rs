//! A small time-bounded cache with one fetch in flight per key: when many objects of one stack
//! are reconciled at once (a restart, a fleet applied together), they share one OpsWorks look-up
//! per stack instead of making one each.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Slot<V> = Arc<tokio::sync::Mutex<Option<(Instant, V)>>>;

/// Values by key, each fresh for `ttl` after it was fetched.
#[derive(Debug)]
pub struct TtlCache<V> {
    ttl: Duration,
    slots: Mutex<HashMap<String, Slot<V>>>,
}

impl<V: Clone> TtlCache<V> {
    /// A cache whose values are fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Mutex::default(),
        }
    }

    /// The value for `key`: the cached one while fresh, else what `fetch` returns (cached when
    /// it is a success). Callers asking for the same key meanwhile wait for that one fetch.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.get_or_fetch_within(key, self.ttl, fetch).await
    }

    /// [`TtlCache::get_or_fetch`] for a caller content with a value up to `max_age` old
    /// (longer or shorter than the cache's own time to live).
    pub async fn get_or_fetch_within<E, F, Fut>(
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
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some((at, value)) = cached.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(value.clone());
        }
        let value = fetch().await?;
        *cached = Some((Instant::now(), value.clone()));
        Ok(value)
    }

    /// How long a value is fresh for callers of [`TtlCache::get_or_fetch`].
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets `key` (after a write that changed it).
    pub fn invalidate(&self, key: &str) {
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
}
