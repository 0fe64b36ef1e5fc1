//! instance-registrar: a Kubernetes controller that registers Linux hosts (EC2 instances or
//! on-premises machines) with AWS OpsWorks Stacks or AWS Systems Manager, one
//! `InstanceRegistration` per host.
//!
//! - [`resource`]: the custom resource, its schema and validation rules.
//! - [`controller`]: the watch, the finalizer, status and events around the [`steps`].
//! - [`context`]: what every reconcile shares, and the conditional status write.
//! - [`steps`]: the reconcile as a sequence of steps, each reporting one condition, and the parts
//!   both services share (SSH key, host probe, install runner, hand-off Secret).
//! - [`opsworks`] and [`ssm`]: each service's own steps and undo, side by side.
//! - [`conditions`]: condition types, reasons and the rules for updating them.
//! - [`tenancy`]: which stacks the objects of a namespace may use; [`conflict`]: which of two
//!   objects naming one host acts.
#![forbid(unsafe_code)]
#![deny(warnings)]

pub mod aws;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod conditions;
pub mod conflict;
pub mod context;
pub mod controller;
pub mod failpoint;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod opsworks;
pub mod pipeline;
pub mod resource;
pub mod services;
pub mod slots;
pub mod ssh;
pub mod sshkey;
pub mod ssm;
pub mod steps;
pub mod telemetry;
pub mod tenancy;
pub mod watches;

/// Errors that end a reconcile early; they are retried with per-object backoff. Failures the user
/// must fix are not errors: they are conditions (see [`steps::Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    pub fn kube(operation: &'static str, source: kube::Error) -> Self {
        Error::Kube {
            operation,
            summary: kube_error_summary(&source),
            source,
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
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
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A one-line description of a Kubernetes client error: the API's status code, reason and message
/// when the server answered, else the error's own text.
pub fn kube_error_summary(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}
