//! The Secret that holds what the agent needs and only the agent may keep (the OpsWorks secret
//! access key, the Systems Manager activation code) from the moment the service hands it out
//! until the install has passed it on. The service shows it once, so it must survive a restart
//! in between; it is owned by the object (garbage-collected with it), labelled as the
//! controller's, and deleted as soon as the agent has what it holds.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::{Context, FIELD_MANAGER};
use crate::resource::InstanceRegistration;

/// The Secret's name for `obj` and `suffix` (`opsworks-access-key`, `ssm-activation`): the
/// object's name, or its UID when the name is too long for one.
pub fn secret_name(obj: &InstanceRegistration, suffix: &str) -> String {
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

/// The Secret's entries that are UTF-8, or None when there is no such Secret.
pub async fn read(
    ctx: &Context,
    obj: &InstanceRegistration,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Outcome> {
    let found = secrets(ctx, obj)
        .get_opt(name)
        .await
        .map_err(|e| kube_retry(&format!("reading Secret {name:?}"), &e))?;
    Ok(found.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
            .collect()
    }))
}

/// Writes the Secret with `data` (server-side apply, owned by `obj`).
pub async fn write(
    ctx: &Context,
    obj: &InstanceRegistration,
    name: &str,
    data: &[(&str, &str)],
) -> Result<(), Outcome> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: obj.namespace(),
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
    secrets(ctx, obj)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|e| kube_retry(&format!("writing Secret {name:?}"), &e))?;
    Ok(())
}

/// Deletes the Secret; true if there was one.
pub async fn forget(ctx: &Context, obj: &InstanceRegistration, name: &str) -> Result<bool, String> {
    match secrets(ctx, obj).delete(name, &Default::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(format!(
            "deleting Secret {name:?}: {}",
            crate::kube_error_summary(&e)
        )),
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
pub fn kube_retry(what: &str, error: &kube::Error) -> Outcome {
    Outcome::Retry(Observation::fails(
        reasons::KUBERNETES_API_ERROR,
        format!("{what}: {}", crate::kube_error_summary(error)),
    ))
}
