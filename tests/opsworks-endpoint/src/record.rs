//! What the endpoint records of each API call.

use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

/// One API call, as the endpoint saw and answered it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Sequence number, from 0, in arrival order.
    pub seq: u64,
    /// The service called: `opsworks` or `ssm` ([`crate::Service::label`]); `opsworks` for a
    /// request that names neither.
    pub service: String,
    /// The action (`X-Amz-Target` suffix); empty when the request named none.
    pub action: String,
    /// Access key ID from the `Authorization` header, when it could be read.
    pub access_key_id: Option<String>,
    /// The IAM role the request named (`IamRole`, as Systems Manager's `CreateActivation`
    /// takes it), so that a test can count the calls made for its own role.
    pub iam_role: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Error code (`__type`) of the answer, for errors.
    pub error_code: Option<String>,
    /// Error message, for errors.
    pub error_message: Option<String>,
    /// When the call arrived.
    #[serde(serialize_with = "unix_millis")]
    pub at: SystemTime,
    /// How long the endpoint took to answer, injected latency included.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// What became of the signature.
    pub signature: SignatureCheck,
    /// The fault injected into this call, if any.
    pub injected: Option<InjectedFault>,
    /// Whether a latency spike was injected.
    pub latency_spike: bool,
    /// For `RegisterInstance`: how the call was authorized (or `None` when it was not).
    pub authorization: Option<Authorization>,
}

fn unix_millis<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    s.serialize_u64(ms)
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// What became of a request's SigV4 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureCheck {
    /// No readable `Authorization` header: the call was refused before any check.
    Missing,
    /// The secret key is known (from moto's IAM or the configured credentials) and the
    /// signature matches it.
    Verified,
    /// The signature does not match the known secret key: the call was refused.
    Mismatch,
    /// The key is not known, so the signature could not be checked.
    Unverified,
}

/// How a `RegisterInstance` call was authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum Authorization {
    /// The access key's IAM user is allowed by a managed policy attached to it (or to a group it
    /// is in, then `group` names the group), e.g. `AWSOpsWorksInstanceRegistration`.
    ManagedPolicy {
        /// IAM user name.
        user: String,
        /// ARN of the policy that allowed it.
        policy_arn: String,
        /// The group the policy is attached to, when not to the user.
        group: Option<String>,
    },
    /// The access key's IAM user is allowed by an inline policy (of the user, or of a group).
    InlinePolicy {
        /// IAM user name.
        user: String,
        /// Name of the inline policy that allowed it.
        policy_name: String,
        /// The group the policy belongs to, when not to the user.
        group: Option<String>,
    },
    /// The instance identity document names an EC2 instance that has an IAM instance profile.
    InstanceProfile {
        /// The EC2 instance.
        ec2_instance_id: String,
        /// ARN of its instance profile.
        instance_profile_arn: String,
    },
    /// No IAM endpoint is configured: registration is not authorized against anything.
    Unchecked,
}

/// A fault injected into a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedFault {
    /// `ThrottlingException`, HTTP 400.
    Throttling,
    /// `InternalFailure`, HTTP 500.
    InternalFailure,
    /// `ServiceUnavailable`, HTTP 503.
    ServiceUnavailable,
    /// No answer: held until the faults were set again, then the connection was closed.
    Hang,
}
