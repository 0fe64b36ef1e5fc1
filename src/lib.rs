//! instance-registrar: a Kubernetes controller that registers Linux hosts (EC2 instances or
//! on-premises machines) with AWS OpsWorks Stacks or AWS Systems Manager, one
//! `InstanceRegistration` per host.
//!
//! The library's face is what the binary and the tests use: [`cli`] (the commands), [`resource`]
//! (the custom resource), [`conditions`]' types and reasons, and the Namespace annotations
//! of tenancy. Inside, the modules form layers, each importing only those below it
//! (`.ci/layers.py` checks it):
//!
//! 1. Base: the resource, conditions, AWS and SSH plumbing (`aws`, `ssh`, `sshkey`, `slots`),
//!    caches, metrics, watches, leader election and tenancy. No service, no pass.
//! 2. `context`: what a pass works with: the `Context`, the `Facts`, and the `Service` seam a
//!    service implements.
//! 3. Shared machinery, knowing no service: `steps` (the SSH key, the host probe, the install
//!    runner and script, the hand-off Secret, EC2 look-ups, status summaries) and `conflict`.
//! 4. Services, one folder each, importing no other: `opsworks`, `ssm`.
//! 5. Top: `services` (the registry, the one place that reads the service out of the spec),
//!    `pipeline`, `controller`, `cli`.
#![forbid(unsafe_code)]
#![deny(warnings)]
#![warn(unreachable_pub, missing_docs)]

pub mod cli;
pub mod conditions;
pub mod resource;

mod audit;
mod aws;
mod backoff;
mod batch;
mod budget;
mod cache;
mod conflict;
mod context;
mod controller;
mod failpoint;
mod http;
mod leader;
mod metrics;
mod opsworks;
mod pipeline;
mod services;
mod slots;
mod ssh;
mod sshcert;
mod sshkey;
mod ssm;
mod steps;
mod telemetry;
mod tenancy;
#[cfg(test)]
mod third_service;
mod watches;

pub use tenancy::{ALLOWED_SERVICE_ROLES, ALLOWED_STACKS};

/// A narrow door for the integration tests: what they check the controller's work against
/// (tags, paths, policy documents, the fault-injection variable) and the status write they race
/// it with. Not an interface.
#[doc(hidden)]
pub mod testing {
    pub use crate::context::apply_status;
    pub use crate::failpoint::VARIABLE as FAILPOINT_VARIABLE;
    pub use crate::opsworks::credentials::IAM_PATH;
    pub use crate::opsworks::{inline_policy_expiry, policy_document_json};
    pub use crate::steps::{OWNER_TAG, OWNER_UID_TAG};
    /// The lowest rate a service's budget of AWS calls is cut to.
    pub const AWS_MIN_RATE: f64 = crate::budget::MIN_RATE;
}

/// Errors that end a reconcile early; they are retried with per-object backoff. Failures the user
/// must fix are not errors: they are conditions (see [`conditions::Outcome`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call {operation} failed: {summary}")]
    Kube {
        /// What was being done.
        operation: &'static str,
        /// A one-line summary of the failure.
        summary: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper failed (adding or removing the finalizer, or a step inside it).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object has no namespace (the kind is namespaced, so this is a bug upstream).
    #[error("object has no namespace")]
    NotNamespaced,
    /// Deleting the object could not undo everything yet (the finalizer stays; retried).
    #[error("cleanup incomplete: {0}")]
    CleanupIncomplete(String),
    /// A pass's task ended without a result (it panicked); retried with backoff.
    #[error("the pass ended without a result: {0}")]
    PassFailed(String),
}

impl Error {
    /// Wraps a Kubernetes API error with what was being done.
    pub(crate) fn kube(operation: &'static str, source: kube::Error) -> Self {
        Error::Kube {
            operation,
            summary: kube_error_summary(&source),
            source,
        }
    }

    /// A short, stable label for metrics and logs.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Finalizer(_) => "finalizer",
            Error::NotNamespaced => "not_namespaced",
            Error::CleanupIncomplete(_) => "cleanup_incomplete",
            Error::PassFailed(_) => "pass_failed",
        }
    }
}

/// Selects the TLS crypto provider for the whole process (the Kubernetes and AWS clients share
/// rustls, and with more than one provider compiled in, none is chosen by default). Call once,
/// before any client is made; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `Result` with this crate's [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// A one-line description of a Kubernetes client error: the API's status code, reason and message
/// when the server answered, else the error's own text.
pub(crate) fn kube_error_summary(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}
