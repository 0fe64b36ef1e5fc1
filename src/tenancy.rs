//! Tenancy: which OpsWorks stacks and Systems Manager service roles the objects of a namespace may
//! use. A controller serves many teams, and which stacks a team may register hosts with (and for
//! which IAM service roles it may make activations) is the cluster administrator's decision, not
//! the team's: it is said on the Namespace (which tenants cannot edit), in the annotations
//! [`ALLOWED_STACKS`] and [`ALLOWED_SERVICE_ROLES`], and enforced before any AWS write.
//!
//! - [`AllowList`] parses an annotation's value; [`verdict`] decides, from a Namespace's
//!   annotations, whether an object of it may use a [`Scope`]. Both are pure.
//! - [`Tenancy`] answers for an object from a reflector of Namespace metadata, which
//!   [`watch`] keeps current and which re-runs a namespace's objects when its annotations change.
//!
//! Another thing an administrator allows per namespace is another [`Scope`]: an annotation read
//! with the same [`AllowList`] and [`verdict`].

use std::collections::BTreeMap;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};

use crate::resource::InstanceRegistration;

/// The Namespace annotation that lists the OpsWorks stack IDs its objects may use: separated by
/// commas or whitespace, `*` for any stack; present but empty, no stack.
pub const ALLOWED_STACKS: &str = "registrar.dev/allowed-stacks";
/// The Namespace annotation that lists the IAM service roles (by name) its objects may make
/// Systems Manager activations for, in the same form as [`ALLOWED_STACKS`].
pub const ALLOWED_SERVICE_ROLES: &str = "registrar.dev/allowed-ssm-service-roles";

/// What an object uses that its namespace must be allowed: an OpsWorks stack, or the IAM service
/// role of a Systems Manager activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scope<'a> {
    /// The annotation that lists what is allowed.
    pub annotation: &'static str,
    /// What it is, for messages ("stack", "service role").
    pub noun: &'static str,
    /// Its ID.
    pub id: &'a str,
    /// The condition reason of an object refused it.
    pub refused: &'static str,
}

impl<'a> Scope<'a> {
    /// The OpsWorks stack `id`.
    pub(crate) fn stack(id: &'a str) -> Self {
        Self {
            annotation: ALLOWED_STACKS,
            noun: "stack",
            id,
            refused: crate::conditions::reasons::STACK_NOT_ALLOWED,
        }
    }

    /// The Systems Manager service role `id` (by name).
    pub(crate) fn service_role(id: &'a str) -> Self {
        Self {
            annotation: ALLOWED_SERVICE_ROLES,
            noun: "Systems Manager service role",
            id,
            refused: crate::conditions::reasons::SERVICE_ROLE_NOT_ALLOWED,
        }
    }
}

/// What a namespace without the [`ALLOWED_STACKS`] annotation may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Unannotated {
    /// Any stack, as before the annotation existed: nothing changes for a cluster whose
    /// namespaces carry none.
    #[default]
    Any,
    /// No stack: a namespace uses only the stacks an administrator listed (shared clusters).
    None,
}

/// The stacks (or, later, other things) an annotation allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllowList {
    /// `*`: anything.
    Any,
    /// Only these IDs (none when empty).
    Only(Vec<String>),
}

impl AllowList {
    /// Parses an annotation's value: IDs separated by commas and/or whitespace; `*` among them
    /// allows anything. IDs are matched whole (no patterns) and without regard to ASCII case.
    pub(crate) fn parse(value: &str) -> Self {
        let mut ids: Vec<String> = Vec::new();
        for item in value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            if item == "*" {
                return AllowList::Any;
            }
            if !ids.iter().any(|id| id.eq_ignore_ascii_case(item)) {
                ids.push(item.to_owned());
            }
        }
        AllowList::Only(ids)
    }

    /// Whether `id` is allowed.
    pub(crate) fn allows(&self, id: &str) -> bool {
        match self {
            AllowList::Any => true,
            AllowList::Only(ids) => ids.iter().any(|allowed| allowed.eq_ignore_ascii_case(id)),
        }
    }

    /// The allowed IDs for a message: at most a few, then how many more.
    fn describe(&self) -> String {
        const SHOWN: usize = 5;
        match self {
            AllowList::Any => "*".into(),
            AllowList::Only(ids) if ids.is_empty() => "no stack".into(),
            AllowList::Only(ids) => {
                let mut text = ids
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if ids.len() > SHOWN {
                    text += &format!(" and {} more", ids.len() - SHOWN);
                }
                text
            }
        }
    }
}

/// Whether an object may use what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It may.
    Allowed,
    /// It may not; the message names the namespace, what was refused and the annotation.
    Refused(String),
    /// The namespace is not known yet (its watch lags its objects): neither allowed nor
    /// refused, so the caller waits and retries; never taken as allowed.
    Unknown(String),
}

/// Whether an object of `namespace`, whose annotations are `annotations` (`None`: the
/// namespace is not known), may use `scope`.
pub(crate) fn verdict(
    namespace: &str,
    annotations: Option<&BTreeMap<String, String>>,
    unannotated: Unannotated,
    scope: Scope<'_>,
) -> Verdict {
    let Scope {
        annotation,
        noun,
        id,
        ..
    } = scope;
    let Some(annotations) = annotations else {
        return Verdict::Unknown(format!(
            "namespace {namespace:?} is not yet known to the controller's Namespace watch, so \
             whether it may use {noun} {id} is not known yet; retrying"
        ));
    };
    match annotations.get(annotation) {
        Some(value) => {
            let allowed = AllowList::parse(value);
            if allowed.allows(id) {
                Verdict::Allowed
            } else {
                Verdict::Refused(format!(
                    "namespace {namespace:?} may not use {noun} {id}: its annotation \
                     {annotation} allows {} (a cluster administrator sets it)",
                    allowed.describe()
                ))
            }
        }
        None => match unannotated {
            Unannotated::Any => Verdict::Allowed,
            Unannotated::None => Verdict::Refused(format!(
                "namespace {namespace:?} may not use {noun} {id}: it has no {annotation} \
                 annotation, and the controller runs with --unannotated-namespaces=none (a \
                 cluster administrator lists what a namespace may use in that annotation)"
            )),
        },
    }
}

/// [`verdict`] for an OpsWorks stack.
#[cfg(test)]
pub(crate) fn stack_verdict(
    namespace: &str,
    annotations: Option<&BTreeMap<String, String>>,
    unannotated: Unannotated,
    stack_id: &str,
) -> Verdict {
    verdict(namespace, annotations, unannotated, Scope::stack(stack_id))
}

/// The Namespaces as last seen, and the rule for those without the annotation.
#[derive(Clone)]
pub(crate) struct Tenancy {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    unannotated: Unannotated,
}

impl Tenancy {
    /// Answers from `namespaces` (see [`watch`]), with `unannotated` for namespaces without the
    /// annotation.
    pub(crate) fn new(
        namespaces: Store<PartialObjectMeta<Namespace>>,
        unannotated: Unannotated,
    ) -> Self {
        Self {
            namespaces,
            unannotated,
        }
    }

    /// Whether `obj`'s namespace may use `scope`, what `obj` names (its stack, its Systems
    /// Manager service role; its service says which: `Service::scope`); nothing to allow when
    /// `None`.
    pub(crate) fn verdict(&self, obj: &InstanceRegistration, scope: Option<Scope<'_>>) -> Verdict {
        match scope {
            Some(scope) => self.verdict_for(obj, scope),
            None => Verdict::Allowed,
        }
    }

    /// Whether `obj`'s namespace may use `scope`, something other than what `obj` names itself
    /// (the IAM role of a managed node it would adopt).
    pub(crate) fn verdict_for(&self, obj: &InstanceRegistration, scope: Scope<'_>) -> Verdict {
        let namespace = obj.namespace().unwrap_or_default();
        let known = self.namespaces.get(&ObjectRef::new(&namespace));
        verdict(
            &namespace,
            known.as_ref().map(|ns| ns.annotations()),
            self.unannotated,
            scope,
        )
    }
}

/// The Namespaces the controller reads: every namespace, or each of `watched` by name (which a
/// ClusterRole confined to them by `resourceNames` allows), as (API, field selector) pairs.
fn namespaces_apis(
    client: Client,
    watched: &[String],
) -> Vec<(Api<PartialObjectMeta<Namespace>>, Option<String>)> {
    match watched {
        [] => vec![(Api::all(client), None)],
        names => names
            .iter()
            .map(|ns| {
                (
                    Api::all(client.clone()),
                    Some(format!("metadata.name={ns}")),
                )
            })
            .collect(),
    }
}

/// Fails, and clearly, when the controller may not list Namespaces (their annotations say which
/// stacks each may use; without them no object could proceed).
pub(crate) async fn check_access(client: Client, watched: &[String]) -> anyhow::Result<()> {
    for (api, fields) in namespaces_apis(client, watched) {
        let mut params = ListParams::default().limit(1);
        if let Some(fields) = &fields {
            params = params.fields(fields);
        }
        api.list(&params).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot list Namespaces (their {ALLOWED_STACKS} annotation says which stacks each \
                 may use; the controller needs get, list and watch on namespaces): {}",
                crate::kube_error_summary(&e)
            )
        })?;
    }
    Ok(())
}

/// The Namespace metadata watch: a store of the Namespaces (metadata only), and a stream, to be
/// driven for the store to fill, of the names of Namespaces seen for the first time or whose
/// annotations changed.
pub(crate) fn watch(
    client: Client,
    watched: &[String],
) -> (
    Store<PartialObjectMeta<Namespace>>,
    impl Stream<Item = String> + Send + 'static,
) {
    let sources = namespaces_apis(client, watched)
        .into_iter()
        .map(|(api, fields)| {
            let mut config = watcher::Config::default().any_semantic();
            if let Some(fields) = &fields {
                config = config.fields(fields);
            }
            watcher(api, config)
                .default_backoff()
                .modify(|ns| ns.managed_fields_mut().clear())
        })
        .collect();
    let (store, writer) = reflector::store();
    let changes = crate::watches::merge(sources)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::annotations, Default::default())
        .filter_map(|ns| async move {
            match ns {
                Ok(ns) => Some(ns.name_any()),
                Err(error) => {
                    tracing::warn!(%error, "Namespace watch failed; retrying");
                    None
                }
            }
        });
    (store, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0b1c2d3e-0000-4000-8000-00000000000a";
    const B: &str = "0b1c2d3e-0000-4000-8000-00000000000b";

    fn annotated(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ALLOWED_STACKS.to_owned(), value.to_owned())])
    }

    #[test]
    fn an_allow_list_is_ids_separated_by_commas_or_whitespace_and_star_is_any() {
        assert_eq!(
            AllowList::parse(&format!(" {A},{B}\n")),
            AllowList::Only(vec![A.into(), B.into()])
        );
        assert_eq!(
            AllowList::parse(&format!("{A} ,\t, {B} {A}")),
            AllowList::Only(vec![A.into(), B.into()])
        );
        assert_eq!(AllowList::parse(&format!("{A}, *")), AllowList::Any);
        assert_eq!(AllowList::parse(""), AllowList::Only(vec![]));
        assert_eq!(AllowList::parse(" , "), AllowList::Only(vec![]));
    }

    #[test]
    fn an_allow_list_matches_whole_ids_in_any_case_and_has_no_patterns() {
        let list = AllowList::parse(A);
        assert!(list.allows(A));
        assert!(list.allows(&A.to_uppercase()));
        assert!(!list.allows(B));
        assert!(!list.allows(&A[..10]));
        assert!(!list.allows(""));
        let prefix = AllowList::parse("0b1c2d3e*");
        assert!(!prefix.allows(A), "a pattern is not a wildcard");
        assert!(!AllowList::parse("").allows(A));
        assert!(AllowList::Any.allows(B));
    }

    #[test]
    fn a_namespace_uses_only_the_stacks_its_annotation_lists() {
        let a = annotated(A);
        assert_eq!(
            stack_verdict("team-a", Some(&a), Unannotated::Any, A),
            Verdict::Allowed
        );
        let Verdict::Refused(message) = stack_verdict("team-a", Some(&a), Unannotated::Any, B)
        else {
            panic!("team-a may not use stack B");
        };
        assert!(message.contains("\"team-a\""), "{message}");
        assert!(message.contains(B), "{message}");
        assert!(message.contains(ALLOWED_STACKS), "{message}");
        assert_eq!(
            stack_verdict("t", Some(&annotated("*")), Unannotated::None, B),
            Verdict::Allowed
        );
        // Present but empty: no stack, whatever the default for unannotated namespaces.
        assert!(matches!(
            stack_verdict("t", Some(&annotated("")), Unannotated::Any, A),
            Verdict::Refused(m) if m.contains("allows no stack")
        ));
    }

    #[test]
    fn a_namespace_without_the_annotation_gets_the_controllers_default() {
        let other = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert_eq!(
            stack_verdict("t", Some(&other), Unannotated::Any, A),
            Verdict::Allowed
        );
        assert!(matches!(
            stack_verdict("t", Some(&other), Unannotated::None, A),
            Verdict::Refused(m) if m.contains("--unannotated-namespaces=none")
        ));
    }

    #[test]
    fn a_namespace_not_yet_seen_is_never_allowed() {
        for unannotated in [Unannotated::Any, Unannotated::None] {
            assert!(matches!(
                stack_verdict("t", None, unannotated, A),
                Verdict::Unknown(m) if m.contains("not yet known")
            ));
        }
    }

    #[test]
    fn a_long_allow_list_is_cut_short_in_messages() {
        let many: Vec<String> = (0..8).map(|i| format!("stack-{i}")).collect();
        let Verdict::Refused(message) =
            stack_verdict("t", Some(&annotated(&many.join(","))), Unannotated::Any, A)
        else {
            panic!("refused");
        };
        assert!(message.contains("stack-4 and 3 more"), "{message}");
        assert!(!message.contains("stack-5"), "{message}");
    }
}
