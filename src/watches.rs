//! What the controller watches: every namespace, or a list of them, and optionally only the
//! objects a label selector picks (so that several controllers can split the objects between
//! them, each with its own selector and its own leader lease: a shard).
//!
//! A list of namespaces is one watch per namespace, so that the controller needs rights in
//! those namespaces only (Roles, not a ClusterRole). Their events are merged into one stream that
//! a single reflector store can take ([`merge`]): kube-runtime's store reads each watch's
//! `Init`..`InitDone` as "the whole world", which two interleaved lists would each wipe out.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

/// The namespaces (none: all) and the label selector the controller watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Watched {
    /// The namespaces watched; empty for all of them.
    pub namespaces: Vec<String>,
    /// Only objects whose labels match (a Kubernetes label selector), if set.
    pub selector: Option<String>,
}

impl Watched {
    /// How logs and messages name what is watched.
    /// Whether objects of `namespace` are watched.
    pub(crate) fn includes(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }

    pub(crate) fn describe(&self) -> String {
        let namespaces = match self.namespaces.as_slice() {
            [] => "all namespaces".to_owned(),
            [one] => format!("namespace {one}"),
            many => format!("namespaces {}", many.join(", ")),
        };
        match &self.selector {
            Some(selector) => format!("{namespaces}, objects labelled {selector}"),
            None => namespaces,
        }
    }
}

/// Merges the watch streams of several sources (one per namespace) into one that a reflector
/// store can take: one `Init`, the objects of every source, one `InitDone` once every source has
/// listed its objects; after that only `Apply` and `Delete`. A source that lists again (after
/// its watch lapsed) gives `Apply` for what it lists and `Delete` for what it held and no longer
/// lists. One source is passed through as it is.
pub(crate) fn merge<K, E, S>(
    sources: Vec<S>,
) -> futures::stream::BoxStream<'static, Result<Event<K>, E>>
where
    K: Resource + Clone + Send + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send,
    E: Send + 'static,
    S: Stream<Item = Result<Event<K>, E>> + Send + 'static,
{
    if sources.len() == 1 {
        return sources.into_iter().next().expect("one source").boxed();
    }
    let mut merge = Merger::new(sources.len());
    futures::stream::select_all(
        sources
            .into_iter()
            .enumerate()
            .map(|(i, source)| source.map(move |event| (i, event)).boxed()),
    )
    .flat_map(move |(i, event)| futures::stream::iter(merge.step(i, event)))
    .boxed()
}

/// The state of a [`merge`].
struct Merger<K: Resource> {
    /// By source: the objects it holds, as last told.
    held: Vec<HashMap<ObjectRef<K>, K>>,
    /// By source: the objects of the list under way, if one is.
    listing: Vec<Option<HashSet<ObjectRef<K>>>>,
    /// By source: whether it has listed its objects once.
    listed: Vec<bool>,
    /// Whether the merged stream has given its own first list.
    ready: bool,
}

impl<K> Merger<K>
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    fn new(sources: usize) -> Self {
        Self {
            held: (0..sources).map(|_| HashMap::new()).collect(),
            listing: vec![None; sources],
            listed: vec![false; sources],
            ready: false,
        }
    }

    /// What event `event` of source `i` becomes in the merged stream (none, one or more).
    fn step<E>(&mut self, i: usize, event: Result<Event<K>, E>) -> Vec<Result<Event<K>, E>> {
        let event = match event {
            Ok(event) => event,
            Err(error) => return vec![Err(error)],
        };
        let key = |obj: &K| ObjectRef::from_obj(obj);
        let mut out = Vec::new();
        match event {
            Event::Init => self.listing[i] = Some(HashSet::new()),
            Event::InitApply(obj) => {
                self.listing[i]
                    .get_or_insert_with(HashSet::new)
                    .insert(key(&obj));
                self.held[i].insert(key(&obj), obj.clone());
                if self.ready {
                    out.push(Ok(Event::Apply(obj)));
                }
            }
            Event::InitDone => {
                let listed = self.listing[i].take().unwrap_or_default();
                let gone: Vec<ObjectRef<K>> = self.held[i]
                    .keys()
                    .filter(|k| !listed.contains(k))
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(obj) = self.held[i].remove(&k)
                        && self.ready
                    {
                        out.push(Ok(Event::Delete(obj)));
                    }
                }
                self.listed[i] = true;
                if !self.ready && self.listed.iter().all(|l| *l) {
                    self.ready = true;
                    out.push(Ok(Event::Init));
                    for held in &self.held {
                        out.extend(held.values().cloned().map(|o| Ok(Event::InitApply(o))));
                    }
                    out.push(Ok(Event::InitDone));
                }
            }
            Event::Apply(obj) => {
                self.held[i].insert(key(&obj), obj.clone());
                if self.ready {
                    out.push(Ok(Event::Apply(obj)));
                }
            }
            Event::Delete(obj) => {
                self.held[i].remove(&key(&obj));
                if self.ready {
                    out.push(Ok(Event::Delete(obj)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Feeds `events` (by source) through a merger into a store; returns the store's names.
    fn run(sources: usize, events: Vec<(usize, Event<ConfigMap>)>) -> (Vec<String>, bool) {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let mut merger = Merger::new(sources);
        for (i, event) in events {
            for out in merger.step::<()>(i, Ok(event)) {
                writer.apply_watcher_event(&out.unwrap());
            }
        }
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.metadata.namespace.clone().unwrap(),
                    o.metadata.name.clone().unwrap()
                )
            })
            .collect();
        names.sort();
        let ready = matches!(
            futures::FutureExt::now_or_never(store.wait_until_ready()),
            Some(Ok(()))
        );
        (names, ready)
    }

    #[test]
    fn the_store_is_ready_only_once_every_namespace_listed_and_holds_them_all() {
        let (names, ready) = run(
            2,
            vec![
                (0, Event::Init),
                (0, Event::InitApply(cm("a", "1"))),
                (0, Event::InitDone),
                // A change in `a` while `b` still lists: kept, not lost.
                (0, Event::Apply(cm("a", "2"))),
                (1, Event::Init),
                (1, Event::InitApply(cm("b", "1"))),
            ],
        );
        assert!(!ready, "ready before b listed: {names:?}");
        let (names, ready) = run(
            2,
            vec![
                (0, Event::Init),
                (0, Event::InitApply(cm("a", "1"))),
                (0, Event::InitDone),
                (0, Event::Apply(cm("a", "2"))),
                (1, Event::Init),
                (1, Event::InitApply(cm("b", "1"))),
                (1, Event::InitDone),
                (1, Event::Apply(cm("b", "2"))),
                (0, Event::Delete(cm("a", "1"))),
            ],
        );
        assert!(ready);
        assert_eq!(names, ["a/2", "b/1", "b/2"]);
    }

    #[test]
    fn a_namespace_that_lists_again_drops_only_its_own_vanished_objects() {
        let (names, _) = run(
            2,
            vec![
                (0, Event::Init),
                (0, Event::InitApply(cm("a", "1"))),
                (0, Event::InitApply(cm("a", "2"))),
                (0, Event::InitDone),
                (1, Event::Init),
                (1, Event::InitApply(cm("b", "1"))),
                (1, Event::InitDone),
                // `a`'s watch lapsed; its new list lacks a/2 and has a/3.
                (0, Event::Init),
                (0, Event::InitApply(cm("a", "1"))),
                (0, Event::InitApply(cm("a", "3"))),
                (0, Event::InitDone),
            ],
        );
        assert_eq!(names, ["a/1", "a/3", "b/1"]);
    }

    #[test]
    fn what_is_watched_is_said_plainly() {
        let mut watched = Watched::default();
        assert_eq!(watched.describe(), "all namespaces");
        watched.namespaces = vec!["a".into(), "b".into()];
        watched.selector = Some("shard=1".into());
        assert_eq!(
            watched.describe(),
            "namespaces a, b, objects labelled shard=1"
        );
    }
}
