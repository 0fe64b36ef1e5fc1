//! Look-ups of many keys that one call answers together, made together: when many objects want
//! one each at once (a fleet applied together, a restart), their keys go in one call, up to
//! [`MAX_KEYS`], instead of one call each. A look-up that finds fewer than [`MAX_IN_FLIGHT`]
//! calls of its group in flight goes at once, so one alone waits for nothing; while that many
//! are in flight, the look-ups that come wait and go together in the next call.
//!
//! Sharing a call must not mean sharing its fate more than needed: each call runs on a task of
//! its own (a caller that stops waiting, its pass cut, cuts nobody else's call), and a call that
//! hangs holds only the keys in it, while the group's other calls go on (should all of them
//! hang, the look-ups that come wait for the first to end, which the AWS call's own time limit
//! bounds). A call's failure is
//! each of its callers' failure; a key it did not find is `None` for that key's callers.
//!
//! The calls run with the priority of the caller that started them ([`crate::budget`]); an
//! urgent caller (a deletion) does not wait for a batch: it makes its own call at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Keys in one call at most.
pub(crate) const MAX_KEYS: usize = 100;
/// Calls of one group in flight at once at most.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

/// What a look-up gets: the value found for its key (`None`: not found), or the call's failure.
pub(crate) type Answer<V, E> = Result<Option<V>, E>;

/// Callers waiting for their keys' answers.
type Callers<V, E> = Vec<(String, oneshot::Sender<Answer<V, E>>)>;

/// Look-ups waiting or in flight, by group (the keys of one group can share a call).
#[derive(Debug)]
pub(crate) struct Batches<V, E> {
    groups: Mutex<HashMap<String, Group<V, E>>>,
}

#[derive(Debug)]
struct Group<V, E> {
    /// Calls in flight (each a task that takes the waiting keys until none are left).
    in_flight: usize,
    waiting: Callers<V, E>,
}

impl<V, E> Default for Batches<V, E> {
    fn default() -> Self {
        Self {
            groups: Mutex::default(),
        }
    }
}

impl<V, E> Batches<V, E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group<V, E>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<V, E> Batches<V, E>
where
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    /// `key`'s answer, looked up in `group` by `fetch`, which is given the distinct keys of one
    /// call and returns the values it found by key. `None` when the call ended without an answer
    /// (its task panicked).
    pub(crate) async fn get<F, Fut>(
        self: &Arc<Self>,
        group: &str,
        key: &str,
        fetch: F,
    ) -> Option<Answer<V, E>>
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
    {
        let priority = crate::budget::priority();
        if priority == crate::budget::Priority::Urgent {
            let found = fetch(vec![key.to_owned()]).await;
            return Some(found.map(|mut values| values.remove(key)));
        }
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut groups = self.lock();
            let g = groups.entry(group.to_owned()).or_insert_with(|| Group {
                in_flight: 0,
                waiting: Vec::new(),
            });
            g.waiting.push((key.to_owned(), answer));
            let start = g.in_flight < MAX_IN_FLIGHT;
            if start {
                g.in_flight += 1;
            }
            start
        };
        if start {
            let (this, group) = (self.clone(), group.to_owned());
            tokio::spawn(crate::budget::with_priority(priority, async move {
                this.serve(&group, fetch).await
            }));
        }
        answered.await.ok()
    }

    /// Calls `fetch` for the waiting keys of `group`, [`MAX_KEYS`] at a time, until none wait.
    async fn serve<F, Fut>(&self, group: &str, fetch: F)
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, V>, E>>,
    {
        // Should this task end otherwise (a panic, the runtime stopping), its place is given
        // back, and if it was the group's last, the callers still waiting are let go (`None`).
        let mut serving = Serving {
            batches: self,
            group,
            ended: false,
        };
        loop {
            let Some((keys, callers)) = self.take(group) else {
                serving.ended = true;
                return;
            };
            let found = fetch(keys).await;
            for (key, answer) in callers {
                let _ = answer.send(match &found {
                    Ok(values) => Ok(values.get(&key).cloned()),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }

    /// The next call's distinct keys (at most [`MAX_KEYS`]) and every waiting caller of those
    /// keys; `None` when nobody waits (this call's task then ends). Callers that stopped waiting
    /// are dropped.
    fn take(&self, group: &str) -> Option<(Vec<String>, Callers<V, E>)> {
        let mut groups = self.lock();
        let g = groups.get_mut(group)?;
        g.waiting.retain(|(_, answer)| !answer.is_closed());
        if g.waiting.is_empty() {
            g.in_flight -= 1;
            if g.in_flight == 0 {
                groups.remove(group);
            }
            return None;
        }
        let mut chosen = HashSet::new();
        let (callers, left) = g.waiting.drain(..).partition(|(key, _)| {
            chosen.contains(key) || (chosen.len() < MAX_KEYS && chosen.insert(key.clone()))
        });
        g.waiting = left;
        Some((chosen.into_iter().collect(), callers))
    }
}

/// A task serving a group, until it ends as it should ([`Batches::take`] found nobody waiting).
struct Serving<'a, V, E> {
    batches: &'a Batches<V, E>,
    group: &'a str,
    ended: bool,
}

impl<V, E> Drop for Serving<'_, V, E> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut groups = self.batches.lock();
        if let Some(g) = groups.get_mut(self.group) {
            g.in_flight = g.in_flight.saturating_sub(1);
            if g.in_flight == 0 {
                groups.remove(self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// What [`counting`]'s fetch returns.
    type Fetched =
        std::pin::Pin<Box<dyn Future<Output = Result<HashMap<String, String>, String>> + Send>>;

    /// A fetch that finds every key but "missing", after `delay`, counting its calls and the
    /// most keys one call had.
    fn counting(
        calls: Arc<AtomicUsize>,
        widest: Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Fn(Vec<String>) -> Fetched + Send + Sync + 'static {
        move |keys: Vec<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            widest.fetch_max(keys.len(), Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(keys
                    .into_iter()
                    .filter(|k| k != "missing")
                    .map(|k| (k.clone(), format!("value of {k}")))
                    .collect())
            })
        }
    }

    /// Fetches that find every key, fail, hang, and panic.
    async fn found(keys: Vec<String>) -> Result<HashMap<String, String>, String> {
        Ok(keys
            .into_iter()
            .map(|k| (k.clone(), format!("value of {k}")))
            .collect())
    }
    async fn failing(_keys: Vec<String>) -> Result<HashMap<String, String>, String> {
        Err("no".into())
    }
    async fn hung(_keys: Vec<String>) -> Result<HashMap<String, String>, String> {
        std::future::pending().await
    }
    async fn panics(_keys: Vec<String>) -> Result<HashMap<String, String>, String> {
        panic!("a fetch that panics")
    }

    #[tokio::test]
    async fn a_wave_of_look_ups_makes_few_calls_and_each_gets_its_own_answer() {
        let batches: Arc<Batches<String, String>> = Arc::default();
        let (calls, widest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut looks = Vec::new();
        for i in 0..250 {
            let key = if i == 7 {
                "missing".to_owned()
            } else {
                format!("k{}", i % 200)
            };
            let (b, c, w) = (batches.clone(), calls.clone(), widest.clone());
            looks.push(tokio::spawn(async move {
                let answer = b
                    .get("g", &key, counting(c, w, Duration::from_millis(50)))
                    .await;
                (key, answer)
            }));
        }
        for look in looks {
            let (key, answer) = look.await.unwrap();
            let answer = answer.expect("answered").expect("no failure");
            if key == "missing" {
                assert_eq!(answer, None);
            } else {
                assert_eq!(answer, Some(format!("value of {key}")));
            }
        }
        // The first MAX_IN_FLIGHT go alone (each found its group with room); the rest share.
        let made = calls.load(Ordering::SeqCst);
        assert!(made <= MAX_IN_FLIGHT + 250 / MAX_KEYS + 1, "{made} calls");
        assert!(widest.load(Ordering::SeqCst) <= MAX_KEYS);
        assert!(batches.lock().is_empty(), "a group was left behind");
    }

    #[tokio::test]
    async fn a_lone_look_up_goes_at_once_and_a_failure_reaches_every_caller_of_the_call() {
        let batches: Arc<Batches<String, String>> = Arc::default();
        assert_eq!(batches.get("g", "a", failing).await, Some(Err("no".into())));
        let mut looks = Vec::new();
        for key in ["a", "b", "c", "d", "e", "f"] {
            let b = batches.clone();
            looks.push(tokio::spawn(async move { b.get("g", key, failing).await }));
        }
        for look in looks {
            assert_eq!(look.await.unwrap(), Some(Err("no".into())));
        }
    }

    #[tokio::test]
    async fn a_hung_call_holds_only_its_own_keys() {
        let batches: Arc<Batches<String, String>> = Arc::default();
        // One call hangs; a caller that gives up on it leaves nothing waiting behind.
        let b = batches.clone();
        let stuck = tokio::spawn(async move { b.get("g", "h", hung).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), batches.get("g", "x", found))
            .await
            .expect("not held by the hung call");
        assert_eq!(answer, Some(Ok(Some("value of x".to_owned()))));
        stuck.abort();
    }

    #[tokio::test]
    async fn a_call_that_panics_lets_its_callers_go_and_the_group_serves_on() {
        let batches: Arc<Batches<String, String>> = Arc::default();
        for _ in 0..=MAX_IN_FLIGHT {
            assert_eq!(batches.get("g", "p", panics).await, None);
        }
        let answer = tokio::time::timeout(Duration::from_secs(5), batches.get("g", "x", found))
            .await
            .expect("the group still serves");
        assert_eq!(answer, Some(Ok(Some("value of x".to_owned()))));
        assert!(batches.lock().is_empty(), "a group was left behind");
    }

    #[tokio::test]
    async fn an_urgent_look_up_makes_its_own_call() {
        let batches: Arc<Batches<String, String>> = Arc::default();
        // Every call of the group in flight and hung (one after another: each takes the keys
        // waiting when it starts): a normal look-up waits...
        for i in 0..MAX_IN_FLIGHT {
            let b = batches.clone();
            tokio::spawn(async move { b.get("g", &format!("h{i}"), hung).await });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let waits =
            tokio::time::timeout(Duration::from_millis(200), batches.get("g", "n", found)).await;
        assert!(
            waits.is_err(),
            "a normal look-up went past the calls in flight"
        );
        // ... an urgent one does not.
        let (calls, widest) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let fetch = counting(calls.clone(), widest, Duration::ZERO);
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            crate::budget::urgent(batches.get("g", "u", fetch)),
        )
        .await
        .expect("an urgent look-up waited for the calls in flight");
        assert_eq!(answer, Some(Ok(Some("value of u".to_owned()))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
