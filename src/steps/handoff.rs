//! The Secret that holds what the agent needs and only the agent may keep (the OpsWorks secret
//! access key, the Systems Manager activation code) from the moment the service hands it out
//! until the install has passed it on. The service shows it once, so it must survive a restart
//! in between; it is owned by the object (garbage-collected with it), labelled as the
//! controller's, and deleted as soon as the agent has what it holds. A Secret of the same name
//! that is not owned by the object (a tenant's own) is never read, overwritten or deleted: the
//! object reports `SecretNameTaken`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use crate::conditions::{Observation, Outcome, reasons};
use crate::context::{Context, FIELD_MANAGER};
use crate::resource::InstanceRegistration;

/// The Secret's name for `obj` and `suffix` (`opsworks-access-key`, `ssm-activation`): the
/// object's name, or its UID when the name is too long for one.
pub(crate) fn secret_name(obj: &InstanceRegistration, suffix: &str) -> String {
    let name = format!("{}-{suffix}", obj.name_any());
    if name.len() <= 253 {
        name
    } else {
        format!("ir-{}-{suffix}", obj.uid().unwrap_or_default())
    }
}

fn secrets(ctx: &Context, obj: &InstanceRegistration) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default())
}

/// Whether `secret` is `obj`'s: owned by it (an owner reference, the controller one, with the
/// object's UID). A Secret of the same name that is not (a tenant's own) is never read for what
/// the controller keeps there, overwritten or deleted.
fn owned_by(secret: &Secret, obj: &InstanceRegistration) -> bool {
    let Some(uid) = obj.uid() else {
        return false;
    };
    secret
        .owner_references()
        .iter()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

/// The outcome when the Secret `name` exists and is not `obj`'s.
fn taken(name: &str) -> Outcome {
    Outcome::Blocked(Observation::fails(
        reasons::SECRET_NAME_TAKEN,
        format!(
            "Secret {name:?} exists in the namespace and is not this object's (it has no owner \
             reference to it): the controller keeps a secret there until the install, and \
             leaves that Secret untouched; rename or delete it, or re-create this object under \
             another name"
        ),
    ))
}

/// The Secret's entries that are UTF-8, or None when there is no such Secret; a Secret of that
/// name that is not `obj`'s is [`reasons::SECRET_NAME_TAKEN`].
pub(crate) async fn read(
    ctx: &Context,
    obj: &InstanceRegistration,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Outcome> {
    let found = secrets(ctx, obj)
        .get_opt(name)
        .await
        .map_err(|e| kube_retry(&format!("reading Secret {name:?}"), &e))?;
    if let Some(secret) = &found
        && !owned_by(secret, obj)
    {
        return Err(taken(name));
    }
    Ok(found.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
            .collect()
    }))
}

/// Writes the Secret with `data`, owned by `obj`: made if there is none, replaced if it is
/// `obj`'s (server-side apply, bound to that Secret's UID); a Secret of that name that is not
/// `obj`'s is left untouched ([`reasons::SECRET_NAME_TAKEN`]).
pub(crate) async fn write(
    ctx: &Context,
    obj: &InstanceRegistration,
    name: &str,
    data: &[(&str, &str)],
) -> Result<(), Outcome> {
    let api = secrets(ctx, obj);
    let existing = api
        .get_opt(name)
        .await
        .map_err(|e| kube_retry(&format!("reading Secret {name:?}"), &e))?;
    let uid = match &existing {
        Some(secret) if !owned_by(secret, obj) => return Err(taken(name)),
        Some(secret) => secret.uid(),
        None => None,
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: obj.namespace(),
            // A precondition: the apply fails rather than write over a Secret that replaced
            // the one read above.
            uid: uid.clone(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
                (
                    "registrar.dev/instance-registration".to_owned(),
                    truncate_label(&obj.name_any()),
                ),
            ])),
            owner_references: obj.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let written = match uid {
        Some(_) => api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(drop),
        // Made, never applied over: a Secret of that name made meanwhile is a conflict, and
        // the next pass looks at it again.
        None => api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..Default::default()
                },
                &secret,
            )
            .await
            .map(drop),
    };
    written.map_err(|e| kube_retry(&format!("writing Secret {name:?}"), &e))
}

/// Deletes the Secret if it is `obj`'s; true if it was deleted. A Secret of that name that is
/// not `obj`'s is left untouched (false).
pub(crate) async fn forget(
    ctx: &Context,
    obj: &InstanceRegistration,
    name: &str,
) -> Result<bool, String> {
    let api = secrets(ctx, obj);
    let failed = |what: &str, e: &kube::Error| {
        format!("{what} Secret {name:?}: {}", crate::kube_error_summary(e))
    };
    let found = api.get_opt(name).await.map_err(|e| failed("reading", &e))?;
    let uid = match &found {
        None => return Ok(false),
        Some(secret) if !owned_by(secret, obj) => {
            info!(name = %obj.name_any(), secret = name, "a Secret of that name is not this object's: left untouched");
            return Ok(false);
        }
        Some(secret) => secret.uid(),
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        // Gone, or replaced by another Secret since it was read (the UID precondition).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(failed("deleting", &e)),
    }
}

fn truncate_label(value: &str) -> String {
    value
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '_', '.'])
        .to_owned()
}

/// A Kubernetes failure that may pass, as a step's outcome.
pub(crate) fn kube_retry(what: &str, error: &kube::Error) -> Outcome {
    Outcome::Retry(Observation::fails(
        reasons::KUBERNETES_API_ERROR,
        format!("{what}: {}", crate::kube_error_summary(error)),
    ))
}
