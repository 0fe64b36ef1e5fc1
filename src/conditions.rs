//! Condition types and reasons (they are an API: typed once, here) and the rules for updating a
//! condition list: `lastTransitionTime` moves only when a condition's status flips, so a
//! reconcile that finds nothing new produces a status equal to the one already stored.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::resource::{Condition, ConditionStatus};

/// Condition types.
pub mod types {
    /// The OpsWorks stack and its provisioning parameters were found.
    pub const STACK_RESOLVED: &str = "StackResolved";
    /// The host was found (EC2) and the hostname checked.
    pub const TARGET_RESOLVED: &str = "TargetResolved";
    /// The SSH private key Secret exists and holds a usable key.
    pub const SSH_KEY_READY: &str = "SshKeyReady";
    /// The host answered over SSH (host key accepted, login accepted) and said what it registers
    /// as; checked before anything is written in IAM.
    pub const HOST_REACHABLE: &str = "HostReachable";
    /// The IAM user and access key for the agent exist (or the instance profile is used).
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
    /// The OpsWorks agent was installed on the host.
    pub const AGENT_INSTALLED: &str = "AgentInstalled";
    /// OpsWorks reports the instance registered.
    pub const REGISTERED: &str = "Registered";
    /// Sums up the others: true only when the host is registered and healthy.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the controller cannot progress until the spec (or an input it names) changes.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons. CamelCase and stable: users alert and automate on them.
pub mod reasons {
    // Progress and success.
    /// The step's condition holds.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A step before this one has not finished yet.
    pub const WAITING: &str = "Waiting";
    /// Work is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Nothing left to do for this generation.
    pub const RECONCILED: &str = "Reconciled";
    /// spec.suspend is true.
    pub const SUSPENDED: &str = "Suspended";
    /// The object is being deleted; the message says what is left to undo.
    pub const DELETING: &str = "Deleting";
    /// This build of the controller does not perform the step yet.
    pub const NOT_IMPLEMENTED: &str = "NotImplemented";

    // Inputs (the SSH key Secret).
    /// The Secret named by ssh.privateKeySecretRef does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The controller may not read the Secret.
    pub const SECRET_FORBIDDEN: &str = "SecretForbidden";
    /// The Secret has a type that cannot hold an SSH key.
    pub const SECRET_TYPE_INVALID: &str = "SecretTypeInvalid";
    /// The Secret lacks the key named by ssh.privateKeySecretRef.key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The value is not a private key the controller can read.
    pub const INVALID_PRIVATE_KEY: &str = "InvalidPrivateKey";
    /// The private key is of a type SSH here does not support.
    pub const UNSUPPORTED_KEY_TYPE: &str = "UnsupportedKeyType";
    /// The private key is encrypted and the Secret has no `passphrase`.
    pub const PASSPHRASE_REQUIRED: &str = "PassphraseRequired";
    /// The passphrase in the Secret does not decrypt the private key.
    pub const WRONG_PASSPHRASE: &str = "WrongPassphrase";
    /// The private key's encryption asks for more key-derivation work (bcrypt rounds, Argon2
    /// memory, PBKDF2 iterations, scrypt cost) than key-writing tools use; it is not decrypted.
    pub const PRIVATE_KEY_TOO_COSTLY: &str = "PrivateKeyTooCostly";
    /// Decoding the private key did not finish within its time limit; it goes on in the
    /// background and the next look uses its result.
    pub const PRIVATE_KEY_DECODE_TIMEOUT: &str = "PrivateKeyDecodeTimeout";
    /// The user certificate beside the private key (the Secret's `ssh-certificate`, or the key
    /// its privateKeySecretRef.certificateKey names) is not an OpenSSH user certificate for that
    /// key; the message says why.
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    /// The user certificate beside the private key has expired (the message gives the time);
    /// nothing was connected to. An updated Secret is used at once.
    pub const CERTIFICATE_EXPIRED: &str = "CertificateExpired";
    /// The user certificate beside the private key is not valid yet (the message gives the
    /// time); retried with backoff.
    pub const CERTIFICATE_NOT_YET_VALID: &str = "CertificateNotYetValid";
    /// The user certificate is valid but expires within ssh.commandTimeoutSeconds (the message
    /// gives the time): the session goes ahead (a session outlives its login certificate), but a
    /// session started after that time would be refused unless the Secret is renewed.
    pub const CERTIFICATE_EXPIRING: &str = "CertificateExpiring";

    // The stack and the target.
    /// DescribeStacks does not know the stack.
    pub const STACK_NOT_FOUND: &str = "StackNotFound";
    /// The object's namespace may not use the stack (its `registrar.dev/allowed-stacks`
    /// annotation, or the controller's rule for namespaces without one); nothing was done in AWS.
    pub const STACK_NOT_ALLOWED: &str = "StackNotAllowed";
    /// The controller's Namespace watch has not seen the object's namespace yet, so which stacks
    /// it may use is not known; retried.
    pub const NAMESPACE_UNKNOWN: &str = "NamespaceUnknown";
    /// No EC2 instance matches the target.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Several EC2 instances match the target; the message lists them.
    pub const TARGET_AMBIGUOUS: &str = "TargetAmbiguous";
    /// The EC2 instance has neither a public nor a private address.
    pub const TARGET_HAS_NO_ADDRESS: &str = "TargetHasNoAddress";
    /// Another instance of the stack already uses the hostname.
    pub const HOSTNAME_TAKEN: &str = "HostnameTaken";
    /// The host is already registered in the stack; the controller adopts it.
    pub const ADOPTED: &str = "Adopted";
    /// Another InstanceRegistration already names this host in this stack.
    pub const CONFLICT: &str = "Conflict";

    // Credentials.
    /// No step needs to happen: the host is already registered, or uses its instance profile.
    pub const NOT_NEEDED: &str = "NotNeeded";
    /// Every candidate IAM user name is held by a user this object did not make.
    pub const IAM_NAMES_EXHAUSTED: &str = "IamNamesExhausted";

    /// The host answered over SSH but did not say what it registers as (no hostname): without
    /// it the controller could not find the registration it makes, so it installs nothing.
    pub const HOST_IDENTITY_UNKNOWN: &str = "HostIdentityUnknown";

    /// Preflight: the host's clock is more than 5 minutes from the controller's; the agent's
    /// signed AWS requests would be refused. The message gives both times.
    pub const CLOCK_SKEW: &str = "ClockSkew";
    /// Preflight: the host cannot open a TCP connection to an endpoint the agent or its
    /// installer will call; the message names it.
    pub const ENDPOINT_UNREACHABLE: &str = "EndpointUnreachable";
    /// Preflight: too little free space where the agent installs; the message gives the figure.
    pub const DISK_FULL: &str = "DiskFull";

    // Installing the agent over SSH.
    /// No TCP connection or SSH session with the host (refused, unreachable, timed out); retried
    /// with backoff.
    pub const HOST_UNREACHABLE: &str = "HostUnreachable";
    /// The host key is not the pinned one or not the one recorded on first use; nothing was run.
    pub const HOST_KEY_MISMATCH: &str = "HostKeyMismatch";
    /// hostKeyPolicy CertificateAuthority: the host's certificate is not valid for it (signed by
    /// a CA not listed, expired, not yet valid, not naming the address connected to, a user
    /// certificate, an unknown critical option); the message says which. Nothing was sent past
    /// the key exchange; retried with backoff (a certificate is renewed on the host).
    pub const HOST_CERTIFICATE_INVALID: &str = "HostCertificateInvalid";
    /// The host (or a jump host, which the message names) refused the private key for its user.
    pub const SSH_AUTH_FAILED: &str = "SshAuthFailed";
    /// A jump host (the message names it) refused to forward a connection to the next hop: its
    /// sshd needs `AllowTcpForwarding yes` (and `PermitOpen` to allow the next hop, if set).
    pub const FORWARDING_REFUSED: &str = "ForwardingRefused";
    /// The SSH session failed after connecting (no common algorithm, a broken session).
    pub const SSH_PROTOCOL_ERROR: &str = "SshProtocolError";
    /// The login user may not run sudo without a password.
    pub const SUDO_NOT_PERMITTED: &str = "SudoNotPermitted";
    /// sudo on the host runs only from a terminal (`requiretty`) and the install could not get
    /// one (sshd refused a pseudo-terminal); the message says how to fix the host.
    pub const SUDO_REQUIRES_TTY: &str = "SudoRequiresTty";
    /// Another install holds the host's install lock (one `boot-registration` at a time on a
    /// host); nothing was run, and the install is tried again after a while.
    pub const INSTALL_IN_PROGRESS: &str = "InstallInProgress";
    /// The SSH session waits for a slot: every `--ssh-concurrency` slot is in use, or the
    /// object's namespace holds its share of them (`--ssh-namespace-share`); the message says how
    /// many of the namespace's sessions are ahead.
    pub const QUEUED: &str = "Queued";
    /// The install runs on the host now (recorded before it starts; the pass's end records how
    /// it ended).
    pub const INSTALLING: &str = "Installing";
    /// The host could not download the agent installer; retried with backoff.
    pub const INSTALLER_DOWNLOAD_FAILED: &str = "InstallerDownloadFailed";
    /// The installer's SHA-256 is not spec.agentInstallerSha256; nothing was run.
    pub const INSTALLER_CHECKSUM_MISMATCH: &str = "InstallerChecksumMismatch";
    /// The stack's installer URL is not http(s), or the tarball is not an agent installer.
    pub const INSTALLER_INVALID: &str = "InstallerInvalid";
    /// The host lacks a tool the install script needs (mktemp, sha256sum, timeout, ...) or its
    /// install lock directory is not root's. (No curl or wget is `InstallerDownloadFailed`; a
    /// tarball that does not unpack is `InstallerInvalid`.)
    pub const HOST_UNSUITABLE: &str = "HostUnsuitable";
    /// The agent installer exited with a failure; the message has its exit status and the tail
    /// of its output.
    pub const INSTALLER_FAILED: &str = "InstallerFailed";
    /// The install did not finish within ssh.commandTimeoutSeconds (the host stops the installer
    /// at that limit too, even when the session is gone).
    pub const INSTALL_TIMEOUT: &str = "InstallTimeout";

    // Registration.
    /// The agent was installed, but OpsWorks did not list the instance within the registration
    /// timeout; the install is tried again after a backoff.
    pub const REGISTRATION_TIMEOUT: &str = "RegistrationTimeout";
    /// The instance was registered, and OpsWorks no longer lists it (deregistered or gone); it
    /// is registered again.
    pub const INSTANCE_GONE: &str = "InstanceGone";
    /// The instance is registered and is being assigned to spec.layerIds.
    pub const ASSIGNING_LAYERS: &str = "AssigningLayers";
    /// OpsWorks reports a failure state for the instance (the message names it).
    pub const REGISTRATION_FAILED: &str = "RegistrationFailed";
    /// OpsWorks is registering the instance.
    pub const REGISTERING: &str = "Registering";

    // Systems Manager.
    /// The IAM service role systemsManager.serviceRole names does not exist.
    pub const ROLE_NOT_FOUND: &str = "RoleNotFound";
    /// The EC2 instance has no IAM instance profile, so its agent cannot register with Systems
    /// Manager; attach one (with AmazonSSMManagedInstanceCore) to the instance.
    pub const NO_INSTANCE_PROFILE: &str = "NoInstanceProfile";
    /// The namespace may not make activations for the service role (its
    /// `registrar.dev/allowed-ssm-service-roles` annotation).
    pub const SERVICE_ROLE_NOT_ALLOWED: &str = "ServiceRoleNotAllowed";
    /// The host is already registered with Systems Manager as a node this controller cannot see
    /// (another account or region, or deregistered), or as one whose own record does not prove
    /// it the host's; it is not registered again, nor adopted.
    pub const REGISTERED_ELSEWHERE: &str = "RegisteredElsewhere";
    /// Systems Manager reports the node's agent as not in touch (PingStatus ConnectionLost).
    pub const CONNECTION_LOST: &str = "ConnectionLost";
    /// Systems Manager reports the node as Inactive.
    pub const INACTIVE: &str = "Inactive";
    /// The agent's service was restarted over SSH after the service reported it out of touch
    /// for `--agent-repair-after-seconds`, and the registration is healthy again.
    pub const AGENT_REPAIRED: &str = "AgentRepaired";
    /// The agent's service was restarted over SSH after the service reported it out of touch;
    /// waiting for the service to hear from it.
    pub const AGENT_REPAIRING: &str = "AgentRepairing";
    /// A repair of an agent out of touch failed: the host did not answer, its init system could
    /// not restart the agent's service, or the restarted agent stayed out of touch. The next
    /// attempt comes an hour after this one; nothing is registered again because of silence.
    pub const AGENT_REPAIR_FAILED: &str = "AgentRepairFailed";

    // AWS failures.
    /// AWS throttled a call; retried with backoff.
    pub const THROTTLED: &str = "Throttled";
    /// The controller's AWS identity may not make a call; the message names the operation.
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// An AWS endpoint could not be reached or failed (5xx); retried with backoff.
    pub const AWS_UNAVAILABLE: &str = "AwsUnavailable";
    /// AWS refused a request as invalid; the message says which and why.
    pub const AWS_REQUEST_REFUSED: &str = "AwsRequestRefused";

    // Kubernetes.
    /// The Secret the controller keeps a secret in until the install (`<name>-ssm-activation`,
    /// `<name>-opsworks-access-key`) exists and is not this object's: it is left untouched.
    pub const SECRET_NAME_TAKEN: &str = "SecretNameTaken";

    // Transient failures.
    /// A Kubernetes API call failed in a way that may pass; retried with backoff.
    pub const KUBERNETES_API_ERROR: &str = "KubernetesApiError";
}

/// What deleting an object undid: a summary for the Event and the log, and whether a
/// registration of the host was seen and undone (deregistered, or found deregistered already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Undone {
    /// What was done, for people.
    pub summary: String,
    /// A registration this object made was found and is gone now.
    pub registration_undone: bool,
}

impl Undone {
    /// The summary of `done` (one note per thing done).
    pub(crate) fn new(done: &[String], registration_undone: bool) -> Self {
        Undone {
            summary: if done.is_empty() {
                "nothing to undo".into()
            } else {
                done.join("; ")
            },
            registration_undone,
        }
    }
}

/// What a step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The step's condition holds: go on to the next step.
    Done(Observation),
    /// Under way and moving by itself (an install running, a registration pending): look again
    /// after the given time.
    Progressing(Observation, Duration),
    /// Cannot go on until a person changes something (the spec, a Secret): kstatus Stalled.
    Blocked(Observation),
    /// A failure that may pass (throttling, network, 5xx): retried with backoff.
    Retry(Observation),
}

impl Outcome {
    /// The observation to record on the step's condition.
    pub(crate) fn observation(&self) -> &Observation {
        match self {
            Outcome::Done(o)
            | Outcome::Progressing(o, _)
            | Outcome::Blocked(o)
            | Outcome::Retry(o) => o,
        }
    }
}

/// Whether a condition holds, with the reason and message to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// CamelCase reason from [`reasons`].
    pub reason: &'static str,
    /// A human-readable explanation; never holds secret material.
    pub message: String,
}

impl Observation {
    /// The condition holds.
    pub(crate) fn holds(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: ConditionStatus::True,
            reason,
            message: message.into(),
        }
    }
    /// The condition does not hold.
    pub(crate) fn fails(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: ConditionStatus::False,
            reason,
            message: message.into(),
        }
    }
    /// Not known yet.
    pub(crate) fn unknown(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: ConditionStatus::Unknown,
            reason,
            message: message.into(),
        }
    }
}

/// Sets condition `type_` in `conditions` to `observation`, computed for `generation`.
///
/// `lastTransitionTime` is kept when the status does not change, so that setting a condition to
/// what it already says leaves the list equal to what it was.
pub(crate) fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    observation: Observation,
    generation: i64,
    now: &Time,
) {
    let Observation {
        status,
        reason,
        message,
    } = observation;
    match conditions.iter_mut().find(|c| c.r#type == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            r#type: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            last_transition_time: now.clone(),
            observed_generation: generation,
        }),
    }
}

/// Looks up condition `type_`.
pub(crate) fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.r#type == type_)
}

/// Whether condition `type_` is present and True.
pub(crate) fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// The conditions of `new` whose status or reason differ from `old` (a message-only change is not
/// news): these are the ones worth an Event.
pub(crate) fn changed<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| {
            get(old, &n.r#type).is_none_or(|o| o.status != n.status || o.reason != n.reason)
        })
        .collect()
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…` when cut: for a message
/// or a status field with a length limit.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 3);
        assert_eq!(cut, "é…");
    }
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn setting_the_same_status_again_keeps_the_transition_time_and_equals_the_old_list() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            types::READY,
            Observation::fails("A", "first"),
            1,
            &at(100),
        );
        let before = conditions.clone();
        set(
            &mut conditions,
            types::READY,
            Observation::fails("A", "first"),
            1,
            &at(200),
        );
        assert_eq!(conditions, before);
    }

    #[test]
    fn a_status_flip_moves_the_transition_time_but_a_reason_change_does_not() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            types::READY,
            Observation::fails("A", "m"),
            1,
            &at(100),
        );
        set(
            &mut conditions,
            types::READY,
            Observation::fails("B", "m"),
            1,
            &at(200),
        );
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].reason, "B");
        set(
            &mut conditions,
            types::READY,
            Observation::holds("C", "m"),
            2,
            &at(300),
        );
        assert_eq!(conditions[0].last_transition_time, at(300));
        assert_eq!(conditions[0].observed_generation, 2);
    }

    #[test]
    fn a_new_generation_alone_updates_observed_generation() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            types::READY,
            Observation::holds("A", "m"),
            1,
            &at(100),
        );
        set(
            &mut conditions,
            types::READY,
            Observation::holds("A", "m"),
            2,
            &at(200),
        );
        assert_eq!(conditions[0].observed_generation, 2);
        assert_eq!(conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn changed_reports_new_conditions_and_status_or_reason_changes_but_not_message_changes() {
        let mut old = Vec::new();
        set(
            &mut old,
            types::READY,
            Observation::fails("A", "m"),
            1,
            &at(100),
        );
        set(
            &mut old,
            types::STALLED,
            Observation::fails("A", "m"),
            1,
            &at(100),
        );
        let mut new = old.clone();
        set(
            &mut new,
            types::READY,
            Observation::fails("A", "other message"),
            1,
            &at(200),
        );
        set(
            &mut new,
            types::STALLED,
            Observation::holds("A", "m"),
            1,
            &at(200),
        );
        set(
            &mut new,
            types::RECONCILING,
            Observation::fails("A", "m"),
            1,
            &at(200),
        );
        let changed: Vec<_> = changed(&old, &new)
            .iter()
            .map(|c| c.r#type.as_str())
            .collect();
        assert_eq!(changed, vec![types::STALLED, types::RECONCILING]);
    }
}
