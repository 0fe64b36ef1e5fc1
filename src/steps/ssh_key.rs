//! Step: the Secret named by `ssh.privateKeySecretRef` exists in the object's namespace, may be
//! read, and holds a private key the SSH client can use (decrypted with the Secret's `passphrase`
//! when it is encrypted). Nothing of the Secret's content is ever put in a message.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{Facts, Outcome};
use crate::conditions::{Observation, reasons};
use crate::controller::Context;
use crate::resource::InstanceRegistration;
use crate::sshkey::{self, KeyProblem};

/// The Secret key that holds the passphrase of an encrypted private key.
pub const PASSPHRASE_KEY: &str = "passphrase";
/// Secret types that may hold an SSH private key.
const ACCEPTED_TYPES: &[&str] = &["kubernetes.io/ssh-auth", "Opaque"];

pub(super) async fn check(obj: &InstanceRegistration, ctx: &Context, facts: &mut Facts) -> Outcome {
    let namespace = obj.namespace().unwrap_or_default();
    let reference = &obj.spec.ssh.private_key_secret_ref;
    let name = &reference.name;
    // Always the object's own namespace: an object cannot make the controller read elsewhere.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = match secrets.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Outcome::Blocked(Observation::fails(
                reasons::SECRET_NOT_FOUND,
                format!(
                    "Secret {name:?} (ssh.privateKeySecretRef) not found in namespace {namespace:?}"
                ),
            ));
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Outcome::Blocked(Observation::fails(
                reasons::SECRET_FORBIDDEN,
                format!("the controller may not read Secret {name:?} in namespace {namespace:?}"),
            ));
        }
        Err(error) => {
            return Outcome::Retry(Observation::fails(
                reasons::KUBERNETES_API_ERROR,
                format!(
                    "reading Secret {name:?}: {}",
                    crate::kube_error_summary(&error)
                ),
            ));
        }
    };
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    if !ACCEPTED_TYPES.contains(&secret_type) {
        return Outcome::Blocked(Observation::fails(
            reasons::SECRET_TYPE_INVALID,
            format!(
                "Secret {name:?} has type {secret_type:?}; an SSH key belongs in a Secret of type kubernetes.io/ssh-auth (or Opaque)"
            ),
        ));
    }
    let data = secret.data.unwrap_or_default();
    let Some(key_bytes) = data.get(&reference.key) else {
        let mut present: Vec<&str> = data.keys().map(String::as_str).collect();
        present.sort_unstable();
        return Outcome::Blocked(Observation::fails(
            reasons::SECRET_KEY_MISSING,
            format!(
                "Secret {name:?} has no key {:?} (its keys: {})",
                reference.key,
                if present.is_empty() {
                    "none".to_owned()
                } else {
                    present.join(", ")
                }
            ),
        ));
    };
    let passphrase = data.get(PASSPHRASE_KEY).map(|p| p.0.as_slice());
    match sshkey::parse(&key_bytes.0, passphrase) {
        Ok(key) => {
            let summary = sshkey::summary(&key);
            facts.ssh_key = Some(std::sync::Arc::new(key));
            Outcome::Done(Observation::holds(
                reasons::SUCCEEDED,
                format!(
                    "Secret {name:?} key {:?} holds a usable {} key, public key {}",
                    reference.key, summary.algorithm, summary.fingerprint
                ),
            ))
        }
        Err(problem) => {
            let reason = match problem {
                KeyProblem::Invalid(_) => reasons::INVALID_PRIVATE_KEY,
                KeyProblem::UnsupportedType => reasons::UNSUPPORTED_KEY_TYPE,
                KeyProblem::PassphraseRequired => reasons::PASSPHRASE_REQUIRED,
                KeyProblem::WrongPassphrase => reasons::WRONG_PASSPHRASE,
            };
            Outcome::Blocked(Observation::fails(
                reason,
                format!("Secret {name:?} key {:?}: {problem}", reference.key),
            ))
        }
    }
}
