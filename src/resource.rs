//! The `InstanceRegistration` resource (`registrar.dev/v1alpha1`): what a platform team writes and
//! what `kubectl`, Argo CD and kstatus readers read.
//!
//! Every rule that can be checked before anything runs is in the schema (patterns, enums, lengths,
//! CEL rules), so the API server refuses a bad manifest at `kubectl apply` with a message naming
//! the field. The doc comments here are the field descriptions `kubectl explain` prints.
// The custom resource is the crate's public interface; the schema derives wrap its types in a
// way the lint takes for unreachable.
#![allow(unreachable_pub)]
// clippy reads the repeated `type_ = ...` of the printcolumn(...) groups as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The finalizer the controller puts on every object it manages.
pub const FINALIZER: &str = "registrar.dev/cleanup";

/// A host label: letters, digits and dashes, not starting or ending with a dash, 1-63 characters.
pub const HOST_LABEL_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
/// A DNS name (dot-separated host labels) or an IPv4 address.
const HOST_ADDRESS_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\\.?$";
const IPV4_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";
/// One known_hosts entry: `[host-patterns] key-type base64-key [comment]`.
const KNOWN_HOST_PATTERN: &str = "^([^\\s]+ )?(ssh-ed25519|ssh-rsa|rsa-sha2-256|rsa-sha2-512|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+=*( [^\\x00-\\x1F\\x7F]*)?$";
/// One trusted host CA: `@cert-authority <host-patterns> key-type base64-key [comment]` (the
/// known_hosts form) or `key-type base64-key [comment]`. No other marker (`@revoked`) and no
/// authorized_keys-style options.
const CA_LINE_PATTERN: &str = "^(@cert-authority [^\\s]+ )?(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+=*( [^\\x00-\\x1F\\x7F]*)?$";
/// The most host CAs one hop trusts.
pub const MAX_HOST_CAS: usize = 8;
/// The most jump hosts one connection goes through.
pub const MAX_JUMP_HOSTS: usize = 4;
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Registers one Linux host (an EC2 instance or an on-premises machine) with AWS fleet management:
/// an AWS OpsWorks Stacks stack (`stackId`) or AWS Systems Manager (`systemsManager`). The
/// controller makes the credentials the agent needs (IAM user and access key, or a hybrid
/// activation), installs the agent over SSH, waits until the service reports the host
/// registered, and undoes its work when the object is deleted (unless deletionPolicy is Retain).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "registrar.dev",
    version = "v1alpha1",
    kind = "InstanceRegistration",
    namespaced,
    status = "InstanceRegistrationStatus",
    shortname = "ir",
    category = "registrar",
    doc = "Registers one Linux host (EC2 or on-premises) with AWS OpsWorks Stacks or AWS Systems Manager.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the host is registered and healthy"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the registration stands"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why Ready has its status"
    ),
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".status.service",
        description = "OpsWorks or SystemsManager"
    ),
    printcolumn(
        name = "Stack",
        type_ = "string",
        json_path = ".spec.stackId",
        description = "OpsWorks stack ID",
        priority = 1
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target",
        description = "EC2 instance ID, IP, Name tag or host address"
    ),
    printcolumn(
        name = "OpsWorks ID",
        type_ = "string",
        json_path = ".status.opsworksInstanceId",
        description = "OpsWorks instance ID",
        priority = 1
    ),
    printcolumn(
        name = "Node ID",
        type_ = "string",
        json_path = ".status.managedNodeId",
        description = "Systems Manager managed node ID"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.address",
        description = "Address the controller connects to",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("!has(self.privateIp) || self.infrastructureClass == 'on-premises'").message("privateIp is allowed only when infrastructureClass is on-premises").field_path(".privateIp").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.publicIp) || self.infrastructureClass == 'on-premises'").message("publicIp is allowed only when infrastructureClass is on-premises").field_path(".publicIp").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.useInstanceProfile) || !self.useInstanceProfile || self.infrastructureClass == 'ec2'").message("useInstanceProfile is allowed only when infrastructureClass is ec2").field_path(".useInstanceProfile").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new(format!("self.infrastructureClass != 'on-premises' || (self.target.matches(r'{HOST_ADDRESS_PATTERN}') && (!self.target.matches(r'^[0-9.]+$') || self.target.matches(r'{IPV4_PATTERN}')))")).message("target of an on-premises host must be a DNS name or an IPv4 address (no leading zeros)").field_path(".target").reason(kube::core::Reason::FieldValueInvalid))]
// Optional, so immutable at the spec level: a field-level rule would not see it added or removed.
#[x_kube(validation = kube::core::Rule::new("has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)").message("region is immutable: it names the endpoint the host is registered with; delete and re-create the object to use another").field_path(".region"))]
#[x_kube(validation = kube::core::Rule::new("has(self.stackId) != has(self.systemsManager)").message("exactly one of stackId (AWS OpsWorks Stacks) and systemsManager (AWS Systems Manager) must be set").field_path(".stackId").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("has(self.systemsManager) == has(oldSelf.systemsManager)").message("the service is immutable: stackId and systemsManager cannot be swapped; delete and re-create the object to use the other service").field_path(".systemsManager"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || !has(self.layerIds)").message("layerIds is an OpsWorks field, not allowed with systemsManager").field_path(".layerIds").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || !has(self.region)").message("region is the OpsWorks endpoint's region, not allowed with systemsManager (set systemsManager.region)").field_path(".region").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || !has(self.hostname)").message("hostname is an OpsWorks field, not allowed with systemsManager (set systemsManager.defaultInstanceName)").field_path(".hostname").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || (!has(self.privateIp) && !has(self.publicIp))").message("privateIp and publicIp are OpsWorks fields, not allowed with systemsManager").field_path(".privateIp").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || !has(self.useInstanceProfile)").message("useInstanceProfile is an OpsWorks field, not allowed with systemsManager (an EC2 instance always registers with its instance profile)").field_path(".useInstanceProfile").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || !has(self.agentInstallerSha256)").message("agentInstallerSha256 is an OpsWorks field, not allowed with systemsManager (set systemsManager.agentSetupSha256)").field_path(".agentInstallerSha256").reason(kube::core::Reason::FieldValueForbidden))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || self.infrastructureClass != 'on-premises' || has(self.systemsManager.serviceRole)").message("systemsManager.serviceRole is required for an on-premises host: the IAM role its managed node uses").field_path(".systemsManager.serviceRole").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("!has(self.systemsManager) || self.infrastructureClass != 'ec2' || !has(self.systemsManager.serviceRole)").message("systemsManager.serviceRole is not allowed for an ec2 host: the instance registers with its own instance profile").field_path(".systemsManager.serviceRole").reason(kube::core::Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct InstanceRegistrationSpec {
    /// ID of the AWS OpsWorks Stacks stack to register the host with (a lowercase UUID).
    /// Exactly one of stackId and systemsManager is set. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = UUID_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("stackId is immutable: delete and re-create the object to move the host to another stack"))]
    pub stack_id: Option<String>,

    /// Register the host with AWS Systems Manager instead of OpsWorks: an on-premises host with a
    /// hybrid activation made for it, an EC2 instance with its own instance profile. Exactly one
    /// of stackId and systemsManager is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systems_manager: Option<SystemsManagerSpec>,

    /// Region of the OpsWorks endpoint (for example us-east-1). Defaults to the controller's
    /// region. The stack's own region, reported by OpsWorks, is the one used for EC2 look-ups.
    /// Immutable (it cannot be added, changed or removed after creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"), length(max = 32))]
    pub region: Option<String>,

    /// What kind of host this is: `ec2` (an EC2 instance, found by EC2 DescribeInstances) or
    /// `on-premises` (any other Linux host reachable over SSH). Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("infrastructureClass is immutable"))]
    pub infrastructure_class: InfrastructureClass,

    /// The host. For `ec2`: an instance ID (i-...), an IPv4 address (matched against the private
    /// and public addresses) or the value of the instance's Name tag. For `on-premises`: the host's
    /// DNS name or IPv4 address. Immutable.
    #[schemars(length(min = 1, max = 255), regex(pattern = "^[^\\x00-\\x1F\\x7F]+$"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("target is immutable: delete and re-create the object to register another host"))]
    pub target: String,

    /// Hostname the instance gets in OpsWorks instead of the one the agent detects: a host label
    /// (letters, digits and dashes, not starting or ending with a dash, at most 63 characters)
    /// not already used by an instance of the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new(format!("self.matches(r'{HOST_LABEL_PATTERN}')")).message("hostname must be a host label: letters, digits and dashes, not starting or ending with a dash, at most 63 characters").reason(kube::core::Reason::FieldValueInvalid))]
    pub hostname: Option<String>,

    /// Private IPv4 address OpsWorks records for the host instead of the detected one.
    /// on-premises only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IPV4_PATTERN), length(max = 15))]
    pub private_ip: Option<String>,

    /// Public IPv4 address OpsWorks records for the host instead of the detected one.
    /// on-premises only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = IPV4_PATTERN), length(max = 15))]
    pub public_ip: Option<String>,

    /// Let the agent register with the EC2 instance's own instance profile instead of an IAM user
    /// made for it; no IAM user or access key is created. ec2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_instance_profile: Option<bool>,

    /// How the controller reaches the host over SSH to install the OpsWorks agent.
    pub ssh: SshSpec,

    /// OpsWorks layer IDs to assign the instance to once it is registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = UUID_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub layer_ids: Vec<String>,

    /// What happens to the registration when this object is deleted: `Deregister` (default)
    /// deregisters the instance this object registered and deletes the IAM entities the
    /// controller made for it, but leaves a registration it adopted (found already registered,
    /// status.adopted) registered; `DeregisterAdopted` deregisters an adopted one too; `Retain`
    /// leaves everything in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// SHA-256 (lowercase hex) the agent installer tarball must have; when set, a tarball that
    /// does not match is refused before anything on the host runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub agent_installer_sha256: Option<String>,

    /// When true the controller takes no action for this object (it still reports status). A
    /// suspended object that is deleted keeps its registration and IAM entities.
    #[serde(default)]
    pub suspend: bool,
}

/// Registration with AWS Systems Manager.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.region) == has(oldSelf.region) && (!has(self.region) || self.region == oldSelf.region)").message("systemsManager.region is immutable: the node is registered there; delete and re-create the object to use another").field_path(".region"))]
#[x_kube(validation = kube::core::Rule::new("has(self.serviceRole) == has(oldSelf.serviceRole) && (!has(self.serviceRole) || self.serviceRole == oldSelf.serviceRole)").message("systemsManager.serviceRole is immutable: the node was registered for it").field_path(".serviceRole"))]
#[serde(rename_all = "camelCase")]
pub struct SystemsManagerSpec {
    /// Name of the IAM service role the managed node of an on-premises host uses (trusting
    /// ssm.amazonaws.com, with AmazonSSMManagedInstanceCore attached). Required for on-premises,
    /// not allowed for ec2. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = "^[A-Za-z0-9+=,.@_-]+$"))]
    pub service_role: Option<String>,

    /// Region of Systems Manager (for example eu-west-1). Defaults to the controller's region.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"), length(max = 32))]
    pub region: Option<String>,

    /// Name the managed node of an on-premises host gets in Systems Manager (the activation's
    /// default instance name). Defaults to the object's name. Systems Manager has no call that
    /// renames a managed node: a change takes effect only if the host is registered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = "^[A-Za-z0-9 _.:/=+@-]+$"))]
    pub default_instance_name: Option<String>,

    /// Tags the managed node of an on-premises host gets (through its activation). Keys starting
    /// with `aws:` or `registrar.dev/` are not allowed (the latter are the controller's). A change
    /// is made on the node in place; a key taken out is removed from it; tags this object did not
    /// set stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 40))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"]))]
    pub tags: Vec<NodeTag>,

    /// Minutes the activation made for an on-premises host stays usable (it is deleted as soon
    /// as the node is online, and made again if the install has to run again).
    #[serde(default = "default_activation_lifetime")]
    #[schemars(range(min = 10, max = 43200))]
    pub activation_lifetime_minutes: u32,

    /// SHA-256 (lowercase hex) the downloaded agent setup tool (ssm-setup-cli) must have; when
    /// set, a tool that does not match is refused before anything on the host runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub agent_setup_sha256: Option<String>,
}

/// A tag of a managed node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = kube::core::Rule::new("!self.key.startsWith('aws:') && !self.key.startsWith('registrar.dev/')").message("tag keys starting with aws: or registrar.dev/ are reserved").field_path(".key").reason(kube::core::Reason::FieldValueInvalid))]
pub struct NodeTag {
    /// The tag's key: 1-128 letters, digits, spaces and `_.:/=+@-`.
    #[schemars(length(min = 1, max = 128), regex(pattern = "^[A-Za-z0-9 _.:/=+@-]+$"))]
    pub key: String,
    /// The tag's value: at most 256 letters, digits, spaces and `_.:/=+@-`.
    #[serde(default)]
    #[schemars(length(max = 256), regex(pattern = "^[A-Za-z0-9 _.:/=+@-]*$"))]
    pub value: String,
}

fn default_activation_lifetime() -> u32 {
    60
}

/// The service an object registers its host with, as its spec says (read in one place: the
/// controller's registry of services, which gives each its `Service` value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Service<'a> {
    /// AWS OpsWorks Stacks, with the stack's ID.
    OpsWorks(&'a str),
    /// AWS Systems Manager.
    SystemsManager(&'a SystemsManagerSpec),
}

impl InstanceRegistrationSpec {
    /// The service this object registers its host with (the schema allows exactly one; an
    /// object without either, which the API server refuses, reads as OpsWorks with no stack).
    pub fn service(&self) -> Service<'_> {
        match &self.systems_manager {
            Some(ssm) if self.stack_id.is_none() => Service::SystemsManager(ssm),
            _ => Service::OpsWorks(self.stack_id()),
        }
    }

    /// The OpsWorks stack ID (empty for a Systems Manager object).
    pub fn stack_id(&self) -> &str {
        self.stack_id.as_deref().unwrap_or_default()
    }
}

/// What kind of host is registered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum InfrastructureClass {
    /// An EC2 instance, found with EC2 DescribeInstances in the stack's region.
    #[serde(rename = "ec2")]
    Ec2,
    /// Any other Linux host reachable over SSH.
    #[serde(rename = "on-premises")]
    OnPremises,
}

/// What deleting the object does to the registration.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Deregister the instance this object registered and delete the IAM entities made for it;
    /// a registration this object adopted stays registered.
    #[default]
    Deregister,
    /// As Deregister, and deregister a registration this object adopted as well.
    DeregisterAdopted,
    /// Leave the registration and the IAM entities in place.
    Retain,
}

/// How host keys are checked before anything is sent to the host.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum HostKeyPolicy {
    /// Accept only the keys listed in hostKeys.
    Pinned,
    /// Accept the first key seen, record its fingerprint in status.hostKeyFingerprint, and refuse
    /// any other key later (HostKeyMismatch) until the key is pinned or the record is cleared.
    #[default]
    TrustOnFirstUse,
    /// Accept any host key. Only for hosts whose identity is assured some other way.
    AcceptAny,
    /// Accept only a host certificate signed by one of hostCertificateAuthorities, valid now
    /// (60 s allowed for clock differences), naming the address the controller connects to
    /// among its principals, and with no critical options; a plain key is refused. Nothing is
    /// recorded on first use: the CA vouches for the host.
    CertificateAuthority,
}

/// SSH access to the host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy != 'Pinned' || (has(self.hostKeys) && size(self.hostKeys) > 0)").message("hostKeyPolicy Pinned requires at least one entry in hostKeys").field_path(".hostKeys").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy != 'CertificateAuthority' || (has(self.hostCertificateAuthorities) && size(self.hostCertificateAuthorities) > 0)").message("hostKeyPolicy CertificateAuthority requires at least one entry in hostCertificateAuthorities").field_path(".hostCertificateAuthorities").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy == 'CertificateAuthority' || !has(self.hostCertificateAuthorities) || size(self.hostCertificateAuthorities) == 0").message("hostCertificateAuthorities is used only with hostKeyPolicy CertificateAuthority").field_path(".hostCertificateAuthorities").reason(kube::core::Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct SshSpec {
    /// User to log in as; it must be able to run sudo without a password.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = "^[A-Za-z_][A-Za-z0-9._-]*$")
    )]
    pub username: String,

    /// The Secret (in this object's namespace, usually of type kubernetes.io/ssh-auth) holding the
    /// private key, and, for an encrypted key, its passphrase under the key `passphrase`.
    pub private_key_secret_ref: SecretKeyRef,

    /// SSH port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// Connect to this DNS name or IPv4 address instead of the resolved one (a bastion's port
    /// forward, a private network name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_ADDRESS_PATTERN))]
    pub address: Option<String>,

    /// Public keys the host may present, one per entry, in known_hosts form
    /// (`[host-patterns] key-type base64-key [comment]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(max = 8192),
            regex(
                pattern = KNOWN_HOST_PATTERN
            )
        )
    )]
    pub host_keys: Vec<String>,

    /// How the host key is verified: Pinned, TrustOnFirstUse (default), AcceptAny, or
    /// CertificateAuthority (a host certificate signed by one of hostCertificateAuthorities).
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,

    /// The SSH certificate authorities whose host certificates are trusted
    /// (hostKeyPolicy CertificateAuthority), one per entry: a known_hosts line
    /// `@cert-authority <host-patterns> key-type base64-key [comment]` (the CA is trusted only
    /// for hosts matching the patterns, as `[address]:port` off port 22) or the CA's public key
    /// `key-type base64-key [comment]` (trusted for any host). The certificate must name the
    /// address the controller connects to (ssh.address, else the resolved target) among its
    /// principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_HOST_CAS),
        inner(length(max = 8192), regex(pattern = CA_LINE_PATTERN))
    )]
    pub host_certificate_authorities: Vec<String>,

    /// Jump hosts (bastions) to reach the host through, in order, as OpenSSH's ProxyJump: the
    /// controller logs in to the first, opens a forwarded TCP channel (direct-tcpip) through it to
    /// the next, and so on to the host, checking each one's host key before authenticating to
    /// it. Each jump host's sshd must allow it (`AllowTcpForwarding yes`, and `PermitOpen` if
    /// set must list the next hop). The whole chain is one session: timeoutSeconds covers
    /// connecting through all of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_JUMP_HOSTS))]
    pub jump_hosts: Vec<JumpHost>,

    /// Seconds allowed to open the connection and authenticate.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: u32,

    /// Seconds the agent installer may run on the host (download, boot-registration) before the
    /// session is closed and the attempt counts as failed.
    #[serde(default = "default_command_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub command_timeout_seconds: u32,
}

/// One SSH jump host on the way to the host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy != 'Pinned' || (has(self.hostKeys) && size(self.hostKeys) > 0)").message("hostKeyPolicy Pinned requires at least one entry in hostKeys").field_path(".hostKeys").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy != 'CertificateAuthority' || (has(self.hostCertificateAuthorities) && size(self.hostCertificateAuthorities) > 0)").message("hostKeyPolicy CertificateAuthority requires at least one entry in hostCertificateAuthorities").field_path(".hostCertificateAuthorities").reason(kube::core::Reason::FieldValueRequired))]
#[x_kube(validation = kube::core::Rule::new("self.hostKeyPolicy == 'CertificateAuthority' || !has(self.hostCertificateAuthorities) || size(self.hostCertificateAuthorities) == 0").message("hostCertificateAuthorities is used only with hostKeyPolicy CertificateAuthority").field_path(".hostCertificateAuthorities").reason(kube::core::Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct JumpHost {
    /// DNS name or IPv4 address of the jump host, as the controller (first jump host) or the
    /// jump host before it (later ones) resolves it.
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_ADDRESS_PATTERN))]
    pub address: String,

    /// SSH port of the jump host.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// User to log in to the jump host as; it needs no shell and no sudo, only forwarding.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = "^[A-Za-z_][A-Za-z0-9._-]*$")
    )]
    pub username: String,

    /// The Secret (in this object's namespace) holding the private key for the jump host;
    /// ssh.privateKeySecretRef when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_secret_ref: Option<SecretKeyRef>,

    /// Public keys the jump host may present, one per entry, in known_hosts form
    /// (`[host-patterns] key-type base64-key [comment]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(max = 8192), regex(pattern = KNOWN_HOST_PATTERN))
    )]
    pub host_keys: Vec<String>,

    /// How the jump host's key is verified: Pinned, TrustOnFirstUse (default; the fingerprint is
    /// recorded in status.jumpHostKeyFingerprints), AcceptAny, or CertificateAuthority (a host
    /// certificate signed by one of hostCertificateAuthorities, naming this jump host's
    /// address).
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,

    /// The SSH certificate authorities whose host certificates are trusted for this jump host
    /// (hostKeyPolicy CertificateAuthority), in the form of ssh.hostCertificateAuthorities. The
    /// certificate must name the jump host's address among its principals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_HOST_CAS),
        inner(length(max = 8192), regex(pattern = CA_LINE_PATTERN))
    )]
    pub host_certificate_authorities: Vec<String>,
}

impl SshSpec {
    /// The private key Secret of each hop of the connection, in order: the jump hosts (their own,
    /// or the host's), then the host itself.
    pub fn key_refs(&self) -> impl Iterator<Item = &SecretKeyRef> {
        self.jump_hosts
            .iter()
            .map(|hop| {
                hop.private_key_secret_ref
                    .as_ref()
                    .unwrap_or(&self.private_key_secret_ref)
            })
            .chain(std::iter::once(&self.private_key_secret_ref))
    }
}

/// A key of a Secret in the object's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret that holds the private key (OpenSSH, PKCS#8 or PEM form).
    #[serde(default = "default_private_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = "^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Key within the Secret that holds an OpenSSH user certificate for the private key (the
    /// `<key>-cert.pub` line `ssh-keygen -s` writes). When set, the Secret must have it; when
    /// not set, `ssh-certificate` is used if the Secret has it. With a certificate, the
    /// controller logs in with it instead of the bare key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = "^[-._a-zA-Z0-9]+$"))]
    pub certificate_key: Option<String>,
}

fn default_port() -> u16 {
    22
}
fn default_connect_timeout() -> u32 {
    30
}
fn default_command_timeout() -> u32 {
    1800
}
fn default_private_key_key() -> String {
    "ssh-privatekey".to_owned()
}

/// Where the registration stands, as the controller last observed it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRegistrationStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Installing, Registering, Registered, Failed or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// ID of the instance in OpsWorks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opsworks_instance_id: Option<String>,
    /// ID of the EC2 instance (ec2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_instance_id: Option<String>,
    /// The service the host is registered with: OpsWorks or SystemsManager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// ID of the managed node in Systems Manager (`mi-…` for an on-premises host, the instance
    /// ID for an EC2 instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_node_id: Option<String>,
    /// ID of the Systems Manager activation made for the host (deleted once the node is online;
    /// the activation code never appears in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_id: Option<String>,
    /// Hostname of the instance in OpsWorks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Address the controller connects to over SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Name of the IAM user made for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_user_name: Option<String>,
    /// ID of the access key made for the agent (the secret key never appears in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// SHA256 fingerprint of the host key accepted on first use (TrustOnFirstUse); any other key
    /// is refused with HostKeyMismatch until this is cleared or the key is pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    /// The host certificate the host presented, trusted by its CA (hostKeyPolicy
    /// CertificateAuthority); hostKeyFingerprint is then the certificate's key. Updated at each
    /// session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_certificate: Option<HostCertificate>,
    /// SHA256 fingerprints of the jump hosts' keys accepted on first use (TrustOnFirstUse), by
    /// `address:port`; any other key from that jump host is refused with HostKeyMismatch until
    /// its entry is removed or the key is pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_JUMP_HOSTS))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["via"]))]
    pub jump_host_key_fingerprints: Vec<RecordedHostKey>,
    /// What the host registers as, learned from the host itself over SSH before anything is
    /// installed: the registration is matched on this, not on the spec's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostIdentity>,
    /// The tags this object last set on its managed node (spec.systemsManager.tags as last
    /// applied): a key taken out of the spec is removed from the node; tags it did not set are
    /// left as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub node_tags: Option<Vec<NodeTag>>,
    /// True when the host was already registered and this object adopted the registration
    /// rather than made it: deleting the object then leaves it registered unless
    /// deletionPolicy is DeregisterAdopted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// When this object last started the agent installer on the host (recorded before the
    /// install starts, so that a restart knows a registration of its own may exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_started_at: Option<Time>,
    /// The shard whose controller started that install: its label selector (`--label-selector`),
    /// empty for a controller that watches every object. A controller of another shard (the
    /// object was relabelled meanwhile) leaves the object alone until that install has ended for
    /// sure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_shard: Option<String>,
    /// The agent's repairs: since when the service reports it out of touch, and how the last
    /// restart of its service went (`--agent-repair-after-seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_repair: Option<AgentRepair>,
    /// When the agent installer last finished successfully on the host (cleared when the instance
    /// has to be registered again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_installed_at: Option<Time>,
    /// When OpsWorks first reported the instance registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<Time>,
    /// A human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Conditions in the Kubernetes convention: StackResolved, TargetResolved, SshKeyReady,
    /// CredentialsReady, AgentInstalled, Registered, Ready (sums them up), and the kstatus pair
    /// Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What a host said of itself over SSH (never trusted to be anything but data).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostIdentity {
    /// The host's own hostname (`uname -n`); the agent registers with it when spec.hostname is
    /// not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub hostname: Option<String>,
    /// The host's own IPv4 addresses: the one the SSH connection reached first, then those of
    /// its interfaces (loopback left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 15)))]
    pub addresses: Vec<String>,
    /// The address and port this was learned through, and the jump hosts on the way if any
    /// (learned again when ssh.address, ssh.port or ssh.jumpHosts change).
    #[schemars(length(max = 1400))]
    pub via: String,
}

/// The repairs of a registered host's agent that the service reports out of touch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRepair {
    /// When the controller first saw the service report the agent out of touch (ConnectionLost),
    /// since it was last in touch; unset while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_since: Option<Time>,
    /// When the agent's service was last restarted, or a restart tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted_at: Option<Time>,
    /// Restarts tried for this object.
    #[serde(default)]
    pub attempts: u32,
    /// How the last attempt went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RepairOutcome>,
    /// What the last failed attempt found (the host's answer, or why there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub message: Option<String>,
}

/// How a repair of an agent went.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RepairOutcome {
    /// The agent's service was restarted; the service has not heard from it yet.
    Restarted,
    /// The service heard from the restarted agent: the registration is healthy again.
    Repaired,
    /// The restart failed, the host did not answer, or the restarted agent stayed out of touch.
    Failed,
}

/// A host key fingerprint recorded on first use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedHostKey {
    /// The jump host's `address:port`.
    #[schemars(length(max = 260))]
    pub via: String,
    /// Its key's SHA256 fingerprint (`SHA256:...`).
    #[schemars(length(max = 100))]
    pub fingerprint: String,
    /// Its host certificate, when trusted by its CA (hostKeyPolicy CertificateAuthority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<HostCertificate>,
}

/// A host certificate the controller trusted by its CA (public information).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostCertificate {
    /// The certificate's key ID (`ssh-keygen -s ... -I`), at most 128 characters as shown.
    #[schemars(length(max = 400))]
    pub key_id: String,
    /// The certificate's serial number (`ssh-keygen -s ... -z`).
    pub serial: u64,
    /// SHA256 fingerprint of the CA key that signed it.
    #[schemars(length(max = 100))]
    pub certificate_authority: String,
    /// When it expires (absent: valid forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<Time>,
}

/// The registration's phase, derived from its conditions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Checking inputs, the stack, the target and credentials.
    Pending,
    /// Installing the OpsWorks agent on the host.
    Installing,
    /// Waiting for OpsWorks to report the instance registered.
    Registering,
    /// OpsWorks reports the instance registered.
    Registered,
    /// Cannot progress until the spec (or a referenced Secret) changes.
    Failed,
    /// The object is being deleted.
    Deleting,
}

/// One aspect of the object's state, in the Kubernetes condition convention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, CamelCase (for example Ready).
    #[schemars(length(min = 1, max = 316))]
    pub r#type: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase reason that is stable across releases (it is an API).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// A human-readable explanation.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When status last changed.
    pub last_transition_time: Time,
    /// The metadata.generation this condition was computed for.
    pub observed_generation: i64,
}

/// Status of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known yet whether the condition holds.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_has_a_key_secret_the_hosts_unless_its_own() {
        let ssh: SshSpec = serde_yaml::from_str(
            "username: admin
privateKeySecretRef: {name: host-key}
jumpHosts:
- {address: a, username: j}
- {address: b, username: j, privateKeySecretRef: {name: b-key, key: id}}",
        )
        .unwrap();
        let refs: Vec<(&str, &str)> = ssh
            .key_refs()
            .map(|r| (r.name.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(
            refs,
            [
                ("host-key", "ssh-privatekey"),
                ("b-key", "id"),
                ("host-key", "ssh-privatekey")
            ]
        );
        assert_eq!(ssh.jump_hosts[1].port, 22);
        assert_eq!(
            ssh.jump_hosts[0].host_key_policy,
            HostKeyPolicy::TrustOnFirstUse
        );
    }
}
