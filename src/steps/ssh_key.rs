//! Step: the Secret named by `ssh.privateKeySecretRef` exists in the object's namespace, may be
//! read, and holds a private key the SSH client can use (decrypted with the Secret's `passphrase`
//! when it is encrypted); so does each jump host's own `privateKeySecretRef`, if it has one.
//! Nothing of a Secret's content is ever put in a message.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::conditions::{Observation, Outcome, reasons};
use crate::context::{Context, Facts};
use std::sync::Arc;

use russh::keys::{Certificate, PrivateKey};

use crate::resource::{InstanceRegistration, SecretKeyRef};
use crate::sshcert::{self, UserCertificateProblem};
use crate::sshkey::{self, KeyProblem, LoadError};

/// The Secret key that holds the user certificate when privateKeySecretRef.certificateKey does
/// not name one (used only if the Secret has it).
pub(crate) const CERTIFICATE_KEY: &str = "ssh-certificate";

/// The Secret key that holds the passphrase of an encrypted private key.
pub(crate) const PASSPHRASE_KEY: &str = "passphrase";
/// Secret types that may hold an SSH private key.
const ACCEPTED_TYPES: &[&str] = &["kubernetes.io/ssh-auth", "Opaque"];
/// When to look again at a key whose decoding overran its time limit (it goes on meanwhile).
const DECODE_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the SSH key step for `obj`.
pub(crate) async fn check(obj: &InstanceRegistration, ctx: &Context, facts: &mut Facts) -> Outcome {
    let spec = &obj.spec.ssh;
    let window = std::time::Duration::from_secs(spec.command_timeout_seconds.into());
    let (key, certificate, summary) = match load(obj, ctx, &spec.private_key_secret_ref, None).await
    {
        Ok(loaded) => loaded,
        Err(outcome) => return outcome,
    };
    let mut expiring = expiring(&certificate, window, None);
    // Each jump host's own key, read once however many hops name the same one.
    let mut jump_keys: Vec<Arc<PrivateKey>> = Vec::with_capacity(spec.jump_hosts.len());
    let mut jump_certificates: Vec<Option<Certificate>> = Vec::with_capacity(spec.jump_hosts.len());
    let mut own = 0;
    for (index, hop) in spec.jump_hosts.iter().enumerate() {
        let (jump_key, jump_certificate) = match &hop.private_key_secret_ref {
            None => (key.clone(), certificate.clone()),
            Some(reference) if *reference == spec.private_key_secret_ref => {
                (key.clone(), certificate.clone())
            }
            Some(reference) => {
                let earlier = spec.jump_hosts[..index]
                    .iter()
                    .position(|h| h.private_key_secret_ref.as_ref() == Some(reference));
                match earlier {
                    Some(earlier) => (
                        jump_keys[earlier].clone(),
                        jump_certificates[earlier].clone(),
                    ),
                    None => match load(obj, ctx, reference, Some(index)).await {
                        Ok((jump_key, jump_certificate, _)) => {
                            own += 1;
                            if expiring.is_none() {
                                expiring = self::expiring(&jump_certificate, window, Some(index));
                            }
                            (jump_key, jump_certificate)
                        }
                        Err(outcome) => return outcome,
                    },
                }
            }
        };
        jump_keys.push(jump_key);
        jump_certificates.push(jump_certificate);
    }
    facts.ssh_key = Some(key);
    facts.ssh_certificate = certificate;
    facts.jump_keys = jump_keys;
    facts.jump_certificates = jump_certificates;
    let message = match own {
        0 => summary,
        1 => format!("{summary}; and a usable key for the jump host with a key of its own"),
        n => format!("{summary}; and usable keys for the {n} jump hosts with keys of their own"),
    };
    match expiring {
        Some(warning) => Outcome::Done(Observation::holds(
            reasons::CERTIFICATE_EXPIRING,
            format!("{message}; {warning}"),
        )),
        None => Outcome::Done(Observation::holds(reasons::SUCCEEDED, message)),
    }
}

/// What to say of `certificate` (of jump host `hop`'s own Secret, or the host's) when it
/// expires within `window` (ssh.commandTimeoutSeconds) from now.
fn expiring(
    certificate: &Option<Certificate>,
    window: std::time::Duration,
    hop: Option<usize>,
) -> Option<String> {
    let cert = certificate.as_ref()?;
    let at = sshcert::time_text(cert.valid_before());
    let seconds = window.as_secs();
    let now = sshcert::unix(std::time::SystemTime::now());
    (cert.valid_before() != u64::MAX && now.saturating_add(seconds) >= cert.valid_before()).then(
        || {
            let whose = match hop {
                None => "the user certificate".to_owned(),
                Some(index) => format!("ssh.jumpHosts[{index}]'s user certificate"),
            };
            format!(
                "{whose} expires at {at}, within ssh.commandTimeoutSeconds ({seconds} s): a \
                 session started after then is refused unless the Secret is renewed"
            )
        },
    )
}

/// The user certificate in `data` for `key`: under the key `reference.certificateKey` names
/// (which must be there), else under [`CERTIFICATE_KEY`] if present. Its Secret key and the
/// certificate, or the outcome that reports why it cannot be used (before anything connects).
fn certificate(
    reference: &SecretKeyRef,
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    key: &PrivateKey,
) -> Result<Option<(String, sshcert::UserCertificate)>, Outcome> {
    let name = &reference.name;
    let cert_key = reference
        .certificate_key
        .clone()
        .unwrap_or_else(|| CERTIFICATE_KEY.to_owned());
    let Some(bytes) = data.get(&cert_key) else {
        if reference.certificate_key.is_none() {
            return Ok(None);
        }
        return Err(Outcome::Blocked(Observation::fails(
            reasons::SECRET_KEY_MISSING,
            format!("Secret {name:?} has no key {cert_key:?} (privateKeySecretRef.certificateKey)"),
        )));
    };
    match sshcert::read_user_certificate(&bytes.0, key, std::time::SystemTime::now()) {
        Ok(cert) => Ok(Some((cert_key, cert))),
        Err(problem) => {
            let message = format!("Secret {name:?} key {cert_key:?}: {problem}");
            Err(match problem {
                UserCertificateProblem::Invalid(_) => {
                    Outcome::Blocked(Observation::fails(reasons::INVALID_CERTIFICATE, message))
                }
                UserCertificateProblem::Expired { .. } => Outcome::Blocked(Observation::fails(
                    reasons::CERTIFICATE_EXPIRED,
                    format!(
                        "{message}; nothing was connected to; renew the certificate in the Secret"
                    ),
                )),
                UserCertificateProblem::NotYetValid { .. } => Outcome::Retry(Observation::fails(
                    reasons::CERTIFICATE_NOT_YET_VALID,
                    message,
                )),
            })
        }
    }
}

/// Secret `name` (named by `field`) in `namespace`: always the object's own namespace, so an
/// object cannot make the controller read elsewhere.
async fn read_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<Secret, Outcome> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret),
        Ok(None) => Err(Outcome::Blocked(Observation::fails(
            reasons::SECRET_NOT_FOUND,
            format!("Secret {name:?} ({field}) not found in namespace {namespace:?}"),
        ))),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(Outcome::Blocked(Observation::fails(
                reasons::SECRET_FORBIDDEN,
                format!("the controller may not read Secret {name:?} in namespace {namespace:?}"),
            )))
        }
        Err(error) => Err(Outcome::Retry(Observation::fails(
            reasons::KUBERNETES_API_ERROR,
            format!(
                "reading Secret {name:?}: {}",
                crate::kube_error_summary(&error)
            ),
        ))),
    }
}

/// Reads and decodes the private key `reference` names (jump host `hop`'s own, or the host's),
/// and the user certificate beside it if the Secret carries one; returns them and a summary
/// that says which Secret and key hold them.
async fn load(
    obj: &InstanceRegistration,
    ctx: &Context,
    reference: &SecretKeyRef,
    hop: Option<usize>,
) -> Result<(Arc<PrivateKey>, Option<Certificate>, String), Outcome> {
    let field = match hop {
        None => "ssh.privateKeySecretRef".to_owned(),
        Some(index) => format!("ssh.jumpHosts[{index}].privateKeySecretRef"),
    };
    let namespace = obj.namespace().unwrap_or_default();
    let name = &reference.name;
    let secret = read_secret(ctx, &namespace, name, &field).await?;
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    if !ACCEPTED_TYPES.contains(&secret_type) {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::SECRET_TYPE_INVALID,
            format!(
                "Secret {name:?} has type {secret_type:?}; an SSH key belongs in a Secret of type kubernetes.io/ssh-auth (or Opaque)"
            ),
        )));
    }
    let data = secret.data.unwrap_or_default();
    let Some(key_bytes) = data.get(&reference.key) else {
        let mut present: Vec<&str> = data.keys().map(String::as_str).collect();
        present.sort_unstable();
        return Err(Outcome::Blocked(Observation::fails(
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
        )));
    };
    let passphrase = data.get(PASSPHRASE_KEY).map(|p| p.0.as_slice());
    // Decoded once per version of the Secret (UID and resourceVersion), however many objects
    // name it: a crafted key costs its limit once, not once per object and pass.
    let source = (namespace.clone(), name.clone(), reference.key.clone());
    let version = format!(
        "{}/{}",
        secret.metadata.uid.as_deref().unwrap_or_default(),
        secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    );
    let outcome = match ctx
        .ssh_keys
        .load(source, &version, &key_bytes.0, passphrase)
        .await
    {
        Ok(key) => {
            let summary = sshkey::summary(&key);
            let said = format!(
                "Secret {name:?} key {:?} holds a usable {} key, public key {}",
                reference.key, summary.algorithm, summary.fingerprint
            );
            match certificate(reference, &data, &key) {
                Ok(None) => return Ok((key, None, said)),
                Ok(Some((cert_key, cert))) => {
                    let said = format!(
                        "{said}, and key {cert_key:?} a user certificate for it ({}, valid until \
                         {})",
                        cert.what,
                        sshcert::time_text(cert.cert.valid_before())
                    );
                    return Ok((key, Some(cert.cert), said));
                }
                Err(outcome) => outcome,
            }
        }
        Err(LoadError::Overran(limit)) => Outcome::Progressing(
            Observation::fails(
                reasons::PRIVATE_KEY_DECODE_TIMEOUT,
                format!(
                    "Secret {name:?} key {:?}: decoding the private key took more than {} s (it goes on; the result is used when it is there)",
                    reference.key,
                    limit.as_secs()
                ),
            ),
            DECODE_RECHECK,
        ),
        Err(LoadError::Problem(problem)) => {
            let reason = match problem {
                KeyProblem::Invalid(_) => reasons::INVALID_PRIVATE_KEY,
                KeyProblem::UnsupportedType => reasons::UNSUPPORTED_KEY_TYPE,
                KeyProblem::PassphraseRequired => reasons::PASSPHRASE_REQUIRED,
                KeyProblem::WrongPassphrase => reasons::WRONG_PASSPHRASE,
                KeyProblem::TooCostly { .. } => reasons::PRIVATE_KEY_TOO_COSTLY,
            };
            Outcome::Blocked(Observation::fails(
                reason,
                format!("Secret {name:?} key {:?}: {problem}", reference.key),
            ))
        }
    };
    // A jump host's own key: the message says which.
    Err(match (hop, outcome) {
        (None, outcome) => outcome,
        (Some(_), Outcome::Blocked(mut o)) => {
            o.message = format!("{field}: {}", o.message);
            Outcome::Blocked(o)
        }
        (Some(_), Outcome::Retry(mut o)) => {
            o.message = format!("{field}: {}", o.message);
            Outcome::Retry(o)
        }
        (Some(_), Outcome::Progressing(mut o, after)) => {
            o.message = format!("{field}: {}", o.message);
            Outcome::Progressing(o, after)
        }
        (Some(_), outcome) => outcome,
    })
}
