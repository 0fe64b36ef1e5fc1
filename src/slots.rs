//! The SSH session slots (`--ssh-concurrency`), shared fairly between namespaces, so that one
//! tenant's hosts cannot keep every other tenant's installs waiting:
//!
//! - a namespace holds at most its share of the slots at once (`--ssh-namespace-share`, by
//!   default half of them, rounded up): whatever one namespace does, the rest of the slots stay
//!   for the others;
//! - when a slot frees, it goes to the waiting namespaces in turn (round-robin), each one's
//!   sessions in the order they asked, skipping a namespace that holds its share already.
//!
//! A session that has to wait learns why ([`Queued`]), for its object's condition.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The slots, and the sessions waiting for one.
pub(crate) struct Slots(Arc<Inner>);

struct Inner {
    /// Slots in all.
    total: usize,
    /// Slots one namespace may hold at once.
    share: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Slots held, in all.
    held: usize,
    /// Slots held, by namespace.
    by_namespace: HashMap<String, usize>,
    /// The sessions waiting, by namespace, in the order they asked.
    waiting: HashMap<String, VecDeque<Waiter>>,
    /// The namespaces with sessions waiting, in the order they are served.
    turns: VecDeque<String>,
    /// The next waiter's number.
    next: u64,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Slot>,
}

/// A slot held by a session of `namespace`; freed (and handed to the next in turn) when dropped.
pub(crate) struct Slot {
    inner: Arc<Inner>,
    namespace: String,
}

/// A session waiting for a slot: why, and the slot when it comes. Dropped, it leaves the queue.
pub(crate) struct Queued {
    inner: Arc<Inner>,
    namespace: String,
    id: u64,
    grant: Option<oneshot::Receiver<Slot>>,
    /// Sessions of the same namespace ahead of this one.
    pub ahead: usize,
    /// Whether the namespace held its share when this one asked (else every slot was in use).
    pub at_share: bool,
    /// Slots held by the namespace when this one asked.
    pub held: usize,
    /// Slots in all.
    pub total: usize,
}

/// What [`Slots::acquire`] gives: a slot at once, or a place in the queue.
pub(crate) enum Acquired {
    /// A slot was free.
    Now(Slot),
    /// Every slot is in use, or the namespace holds its share: wait.
    Queued(Queued),
}

impl Slots {
    /// `total` slots (at least one), of which one namespace holds at most `share` (at least one,
    /// at most `total`; `None`: half of them, rounded up).
    pub(crate) fn new(total: usize, share: Option<usize>) -> Self {
        let total = total.max(1);
        let share = share.unwrap_or(total.div_ceil(2)).clamp(1, total);
        Self(Arc::new(Inner {
            total,
            share,
            state: Mutex::default(),
        }))
    }

    /// Slots one namespace may hold at once.
    #[cfg(test)]
    pub(crate) fn share(&self) -> usize {
        self.0.share
    }

    /// A slot for a session of `namespace`, now if one is free for it, or a place in the queue.
    pub(crate) fn acquire(&self, namespace: &str) -> Acquired {
        let mut state = self.0.lock();
        let held = state.by_namespace.get(namespace).copied().unwrap_or(0);
        let ahead = state.waiting.get(namespace).map_or(0, VecDeque::len);
        // A slot free for the namespace goes to it, unless its own sessions wait already (they
        // were first). Sessions of other namespaces waiting with a slot free are at their share.
        if ahead == 0 && state.held < self.0.total && held < self.0.share {
            state.take(namespace);
            return Acquired::Now(Slot {
                inner: self.0.clone(),
                namespace: namespace.to_owned(),
            });
        }
        let (grant, granted) = oneshot::channel();
        let id = state.next;
        state.next += 1;
        let queue = state.waiting.entry(namespace.to_owned()).or_default();
        queue.push_back(Waiter { id, grant });
        if queue.len() == 1 {
            state.turns.push_back(namespace.to_owned());
        }
        Acquired::Queued(Queued {
            inner: self.0.clone(),
            namespace: namespace.to_owned(),
            id,
            grant: Some(granted),
            ahead,
            at_share: held >= self.0.share,
            held,
            total: self.0.total,
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands free slots to the waiting namespaces in turn. Returns the slots whose waiter went
    /// away meanwhile: the caller drops them once the lock is released (which frees them again).
    fn serve(self: &Arc<Self>, state: &mut State) -> Vec<Slot> {
        let mut orphans = Vec::new();
        let mut skipped = 0;
        while state.held < self.total && skipped < state.turns.len() {
            let Some(namespace) = state.turns.pop_front() else {
                break;
            };
            let held = state.by_namespace.get(&namespace).copied().unwrap_or(0);
            if held >= self.share {
                // At its share: its turn waits for one of its own slots to free.
                state.turns.push_back(namespace);
                skipped += 1;
                continue;
            }
            skipped = 0;
            let queue = state.waiting.get_mut(&namespace);
            let Some(waiter) = queue.and_then(VecDeque::pop_front) else {
                state.waiting.remove(&namespace);
                continue;
            };
            if state.waiting.get(&namespace).is_some_and(|q| !q.is_empty()) {
                state.turns.push_back(namespace.clone());
            } else {
                state.waiting.remove(&namespace);
            }
            state.take(&namespace);
            let slot = Slot {
                inner: self.clone(),
                namespace,
            };
            if let Err(slot) = waiter.grant.send(slot) {
                orphans.push(slot);
            }
        }
        orphans
    }
}

impl State {
    fn take(&mut self, namespace: &str) {
        self.held += 1;
        *self.by_namespace.entry(namespace.to_owned()).or_default() += 1;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let orphans = {
            let mut state = self.inner.lock();
            state.held = state.held.saturating_sub(1);
            if let Some(n) = state.by_namespace.get_mut(&self.namespace) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.by_namespace.remove(&self.namespace);
                }
            }
            self.inner.serve(&mut state)
        };
        drop(orphans);
    }
}

impl Queued {
    /// Waits for the slot.
    pub(crate) async fn wait(mut self) -> Slot {
        let granted = self.grant.take().expect("waited for once");
        // The sender is dropped only by handing out a slot, or by this waiter leaving the queue
        // (which it has not: it is here).
        granted.await.expect("a waiter in the queue gets a slot")
    }

    /// Why this session waits, for its object's condition.
    pub(crate) fn reason(&self) -> String {
        let why = match self.at_share {
            true => format!(
                "namespace at its share ({} of {} SSH slots)",
                self.held, self.total
            ),
            false => format!("all {} SSH slots in use", self.total),
        };
        format!(
            "queued: {} session{} of this namespace ahead, {why}",
            self.ahead,
            if self.ahead == 1 { "" } else { "s" }
        )
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        {
            let mut state = self.inner.lock();
            if let Some(queue) = state.waiting.get_mut(&self.namespace) {
                queue.retain(|w| w.id != self.id);
                if queue.is_empty() {
                    state.waiting.remove(&self.namespace);
                    state.turns.retain(|n| *n != self.namespace);
                }
            }
        }
        // A slot handed to it but not taken is freed (and handed on) as `grant` drops, with the
        // lock released.
        drop(self.grant.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(slots: &Slots, ns: &str) -> Slot {
        match slots.acquire(ns) {
            Acquired::Now(slot) => slot,
            Acquired::Queued(q) => panic!("{ns} queued: {}", q.reason()),
        }
    }

    fn queued(slots: &Slots, ns: &str) -> Queued {
        match slots.acquire(ns) {
            Acquired::Now(_) => panic!("{ns} got a slot"),
            Acquired::Queued(q) => q,
        }
    }

    #[test]
    fn a_namespace_holds_at_most_its_share_and_the_rest_stay_for_the_others() {
        let slots = Slots::new(4, None);
        assert_eq!(slots.share(), 2);
        let a: Vec<Slot> = (0..2).map(|_| now(&slots, "a")).collect();
        let waiting = queued(&slots, "a");
        assert!(waiting.at_share);
        assert_eq!(waiting.ahead, 0);
        assert_eq!(
            waiting.reason(),
            "queued: 0 sessions of this namespace ahead, namespace at its share (2 of 4 SSH slots)"
        );
        assert_eq!(queued(&slots, "a").ahead, 1);
        // Another namespace gets the free slots at once.
        let b1 = now(&slots, "b");
        let _b2 = now(&slots, "b");
        let c = queued(&slots, "c");
        assert!(!c.at_share);
        assert_eq!(
            c.reason(),
            "queued: 0 sessions of this namespace ahead, all 4 SSH slots in use"
        );
        // A slot freed by b goes to c (a is at its share), not back to a.
        drop(b1);
        let mut c_slot = std::pin::pin!(c.wait());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let Poll::Ready(_c_slot) = c_slot.as_mut().poll(&mut cx) else {
            panic!("c was not served");
        };
        drop(a);
        drop(waiting);
    }

    use std::future::Future;
    use std::task::Poll;

    #[tokio::test]
    async fn freed_slots_go_to_the_waiting_namespaces_in_turn() {
        let slots = Slots::new(2, Some(2));
        let held: Vec<Slot> = (0..2).map(|_| now(&slots, "flood")).collect();
        // The flooding namespace asks many times; then a quiet one asks once.
        let flood: Vec<Queued> = (0..5).map(|_| queued(&slots, "flood")).collect();
        let quiet = queued(&slots, "quiet");
        let mut held = held;
        held.pop();
        // The first slot freed goes to the first namespace in turn (flood asked first).
        let mut flood = flood.into_iter();
        let f0 = flood.next().unwrap().wait().await;
        drop(f0);
        // The next one goes to quiet, though flood has four more waiting.
        let q = tokio::time::timeout(std::time::Duration::from_secs(1), quiet.wait())
            .await
            .expect("quiet served in its turn");
        assert_eq!(q.namespace, "quiet");
        drop(held);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_its_place_and_a_slot_handed_to_it_comes_back() {
        let slots = Slots::new(1, None);
        let first = now(&slots, "a");
        let gone = queued(&slots, "a");
        let next = queued(&slots, "b");
        drop(gone);
        drop(first);
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), next.wait())
            .await
            .expect("b served");
        // Handed a slot and gone before taking it: the slot is free again.
        let late = queued(&slots, "c");
        drop(b);
        drop(late);
        let _again = now(&slots, "d");
    }
}
