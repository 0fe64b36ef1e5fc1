//! The orphan audit: what the controller made in AWS for objects that no longer exist (an object
//! deleted with its finalizer removed by hand, a namespace force-deleted), found by the owner
//! tags each service puts on what it makes ([`crate::context::Service::made`]). It runs at start and every
//! `--audit-seconds`, reports each orphan (a log line with its ID, the `registrar_orphans`
//! metric), and with `--delete-orphans` removes what was an orphan at two audits in a row.
//!
//! Which cluster a resource belongs to: everything made since the audit exists carries the
//! cluster tag (`registrar.dev/cluster`, the `kube-system` Namespace's UID, which a cluster keeps
//! for its life). Only a resource with this cluster's tag is ever removed. One without the tag
//! (made before it existed, or by a controller that could not read its cluster's ID) is
//! reported as of an unknown cluster and left for a person: two clusters may share an account.
//! One with another cluster's tag is not this audit's business.
//!
//! Whose a resource is: its owner tag names the object as `namespace/name`. Only resources of a
//! namespace this controller watches are judged, and that namespace's objects are listed (not
//! read from the watch's cache, which a label selector or a shard may narrow): an orphan is a
//! resource whose object is not there, or is there with another UID (deleted and made again),
//! and that no object of the namespace holds (a node another object adopted once its own object
//! was gone is that object's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::context::{Context, Made};
use crate::resource::InstanceRegistration;

/// This cluster's ID: the `kube-system` Namespace's UID, if the controller may read it.
pub(crate) async fn cluster_id(client: &Client) -> Option<String> {
    match Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
    {
        Ok(ns) => ns.metadata.uid,
        Err(e) => {
            warn!(error = %crate::kube_error_summary(&e), "cannot read the kube-system Namespace's UID: what the controller makes carries no cluster tag, and the orphan audit removes nothing");
            None
        }
    }
}

/// What the audit makes of one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Its object exists, or it is not this controller's to judge.
    Fine,
    /// Its object is gone, and it carries this cluster's tag: removable.
    Orphan,
    /// Its object is gone from this cluster, and it carries no cluster tag: reported only.
    UnknownCluster,
}

/// The objects of one watched namespace, as the audit lists them: each one's UID by name, and
/// what their status says they hold (a node, an activation, an IAM user), adopted or made.
#[derive(Debug, Default)]
struct Owners {
    uids: BTreeMap<String, String>,
    held: BTreeSet<String>,
}

impl Owners {
    fn of(objects: &[InstanceRegistration]) -> Self {
        let mut owners = Owners::default();
        for obj in objects {
            if let (Some(name), Some(uid)) = (&obj.metadata.name, &obj.metadata.uid) {
                owners.uids.insert(name.clone(), uid.clone());
            }
            let status = obj.status.clone().unwrap_or_default();
            owners.held.extend(
                [
                    status.managed_node_id,
                    status.activation_id,
                    status.iam_user_name,
                ]
                .into_iter()
                .flatten(),
            );
        }
        owners
    }
}

/// Judges `made`, whose owner namespace's objects are `owners` (`None`: a namespace this
/// controller does not watch, or no owner named).
fn judge(made: &Made, cluster: Option<&str>, owners: Option<&Owners>) -> Verdict {
    match (&made.cluster, cluster) {
        (Some(theirs), Some(ours)) if theirs != ours => return Verdict::Fine,
        (Some(_), None) => return Verdict::Fine,
        _ => {}
    }
    let (Some(owners), Some((_, name))) = (
        owners,
        made.owner.as_deref().and_then(|o| o.split_once('/')),
    ) else {
        return Verdict::Fine;
    };
    // Its object is there; or another object of the namespace holds it (a node adopted after
    // its own object went).
    if owners.uids.get(name) == Some(&made.owner_uid) || owners.held.contains(&made.id) {
        return Verdict::Fine;
    }
    match made.cluster {
        Some(_) => Verdict::Orphan,
        None => Verdict::UnknownCluster,
    }
}

/// Runs the audit at start and every `ctx.settings.audit_every` (never when that is 0). The
/// start's audit may find the watch's cache still empty: OpsWorks users are found through the
/// stacks objects name, so they wait for the next one.
pub(crate) async fn run(ctx: Arc<Context>) {
    let every = ctx.settings.audit_every;
    if every.is_zero() {
        return;
    }
    let mut seen_before = BTreeSet::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        seen_before = audit(&ctx, &seen_before).await;
    }
}

/// One audit: the orphans found now, given those found at the last one (`seen_before`).
async fn audit(ctx: &Context, seen_before: &BTreeSet<Made>) -> BTreeSet<Made> {
    // Systems Manager's regions: the controller's, and every one a Systems Manager object names.
    let mut regions: BTreeSet<String> = ctx
        .store
        .state()
        .iter()
        .filter_map(|o| o.spec.systems_manager.as_ref()?.region.clone())
        .collect();
    regions.extend(ctx.aws.default_region().map(str::to_owned));
    let regions: Vec<String> = regions.into_iter().collect();
    let cluster = ctx.settings.cluster_id.as_deref();
    // Each owner namespace is listed once an audit (not read from the watch's cache, which a
    // label selector or a shard narrows).
    let mut listed: BTreeMap<String, Owners> = BTreeMap::new();
    let mut orphans = BTreeSet::new();
    let mut unknown = 0;
    let mut looked_at = 0;
    for service in ctx.services.all() {
        let made = match service.made(ctx, &regions).await {
            Ok(made) => made,
            Err(problem) => {
                warn!(service = service.name(), %problem, "orphan audit: cannot list what the service made; tried again at the next audit");
                continue;
            }
        };
        looked_at += made.len();
        for made in made {
            let namespace = made
                .owner
                .as_deref()
                .and_then(|o| o.split_once('/'))
                .map(|(ns, _)| ns.to_owned())
                .filter(|ns| ctx.settings.watched.includes(ns));
            if let Some(ns) = &namespace
                && !listed.contains_key(ns)
            {
                match owners(ctx, ns).await {
                    Ok(owners) => {
                        listed.insert(ns.clone(), owners);
                    }
                    Err(problem) => {
                        warn!(kind = made.kind, id = %made.id, %problem, "orphan audit: cannot list the owner's namespace; not judged");
                        continue;
                    }
                }
            }
            match judge(&made, cluster, namespace.and_then(|ns| listed.get(&ns))) {
                Verdict::Fine => {}
                Verdict::UnknownCluster => {
                    unknown += 1;
                    warn!(kind = made.kind, id = %made.id, region = made.region.as_deref().unwrap_or(""), owner = made.owner.as_deref().unwrap_or(""), owner_uid = %made.owner_uid, "orphan of an unknown cluster (no cluster tag): its object is not in this cluster; left for a person");
                }
                Verdict::Orphan => {
                    warn!(kind = made.kind, id = %made.id, region = made.region.as_deref().unwrap_or(""), owner = made.owner.as_deref().unwrap_or(""), owner_uid = %made.owner_uid, "orphan: its object no longer exists");
                    orphans.insert(made);
                }
            }
        }
    }
    ctx.metrics.orphans(orphans.iter().map(|m| m.kind), unknown);
    debug!(
        looked_at,
        orphans = orphans.len(),
        unknown_cluster = unknown,
        "orphan audit done"
    );
    if ctx.settings.delete_orphans {
        for made in orphans.intersection(seen_before) {
            remove(ctx, made).await;
        }
    }
    orphans
}

/// Removes `made` through the service that made it.
async fn remove(ctx: &Context, made: &Made) {
    let Some(service) = ctx
        .services
        .all()
        .into_iter()
        .find(|s| s.name() == made.service)
    else {
        return;
    };
    match service.remove(ctx, made).await {
        Ok(()) => {
            info!(kind = made.kind, id = %made.id, owner = made.owner.as_deref().unwrap_or(""), "orphan removed (an orphan at two audits in a row)");
        }
        Err(problem) => {
            warn!(kind = made.kind, id = %made.id, %problem, "orphan audit: could not remove it; tried again at the next audit");
        }
    }
}

/// The objects of `namespace`, listed.
async fn owners(ctx: &Context, namespace: &str) -> Result<Owners, String> {
    let api: Api<InstanceRegistration> = Api::namespaced(ctx.client.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(Owners::of(&list.items)),
        Err(e) => Err(crate::kube_error_summary(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(owner: &str, cluster: Option<&str>) -> Made {
        Made {
            service: "SystemsManager",
            kind: "managed node",
            id: "mi-0123456789abcdef0".into(),
            region: Some("us-east-1".into()),
            owner_uid: "uid-1".into(),
            owner: Some(owner.into()),
            cluster: cluster.map(str::to_owned),
        }
    }

    fn owners(uid: &str, held: &[&str]) -> Owners {
        Owners {
            uids: [("db".to_owned(), uid.to_owned())].into(),
            held: held.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    #[test]
    fn only_this_clusters_resources_of_gone_objects_in_watched_namespaces_are_orphans() {
        let ours = Some("c1");
        let gone = Owners::default();
        // The object is there with the same UID: fine.
        assert_eq!(
            judge(&made("team/db", ours), ours, Some(&owners("uid-1", &[]))),
            Verdict::Fine
        );
        // Gone, or made again (another UID): an orphan.
        assert_eq!(
            judge(&made("team/db", ours), ours, Some(&gone)),
            Verdict::Orphan
        );
        assert_eq!(
            judge(&made("team/db", ours), ours, Some(&owners("uid-2", &[]))),
            Verdict::Orphan
        );
        // Gone, but another object of the namespace holds it (adopted): fine.
        let adopted = owners("uid-2", &["mi-0123456789abcdef0"]);
        assert_eq!(
            judge(&made("team/db", ours), ours, Some(&adopted)),
            Verdict::Fine
        );
        // Another cluster's, or this controller's cluster unknown: never.
        assert_eq!(
            judge(&made("team/db", Some("c2")), ours, Some(&gone)),
            Verdict::Fine
        );
        assert_eq!(
            judge(&made("team/db", Some("c1")), None, Some(&gone)),
            Verdict::Fine
        );
        // No cluster tag: reported only.
        assert_eq!(
            judge(&made("team/db", None), ours, Some(&gone)),
            Verdict::UnknownCluster
        );
        // A namespace not watched (not listed), or no owner: not this controller's to judge.
        assert_eq!(judge(&made("other/db", ours), ours, None), Verdict::Fine);
        let mut no_owner = made("team/db", ours);
        no_owner.owner = None;
        assert_eq!(judge(&no_owner, ours, Some(&gone)), Verdict::Fine);
    }
}
