//! Endpoint configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::faults::Faults;
use crate::keys::KeyStore;
use crate::ssm_standin::SsmStandIn;
use crate::standin::StandIn;

/// Access key ID the endpoint calls moto with by default (moto accepts any credentials).
pub const MOTO_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// Secret access key the endpoint calls moto with by default.
pub const MOTO_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// The agent installer tarball that `DescribeStackProvisioningParameters` points at.
#[derive(Debug, Clone, Default)]
pub enum AgentInstaller {
    /// None: the installer URL answers 404.
    #[default]
    None,
    /// These bytes.
    Bytes(Vec<u8>),
    /// The content of this file, read at each download (so it may be rebuilt meanwhile).
    File(PathBuf),
    /// The agent installer stand-in: a tarball, built at each download, whose
    /// `boot-registration` runs this program against this endpoint (see [`crate::standin`]).
    StandIn(StandIn),
}

/// How to run an endpoint. Start from [`Config::default`] (no moto: registration is not
/// authorized against anything) or [`Config::with_moto`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// AWS account ID used in ARNs. Default `123456789012` (moto's default account).
    pub account_id: String,
    /// IAM endpoint (moto) that `RegisterInstance` is authorized against and whose
    /// `/moto-api/data.json` gives the secret keys signatures are verified with, for keys
    /// [`Config::key_store`] lacks. `None`: no authorization, every signature unverified.
    pub iam_endpoint_url: Option<String>,
    /// EC2 endpoint (moto) used to look up EC2 instances named by instance identity documents.
    /// `None`: not looked up.
    pub ec2_endpoint_url: Option<String>,
    /// Credentials the endpoint calls moto with: (access key ID, secret access key).
    pub moto_credentials: (String, String),
    /// Credentials whose signatures are verified besides moto's IAM users' keys, e.g. the static
    /// ones a test's admin client uses: (access key ID, secret access key).
    pub known_credentials: Vec<(String, String)>,
    /// Where the endpoint looks IAM access keys' secrets up before reading moto's whole state
    /// for them (and keeps what it read there): give the same store to the proxy in front of
    /// moto ([`crate::ProxyConfig::key_store`]) and the keys made through it are known at once
    /// (see [`crate::keys`]). `None` (the default): a store of the endpoint's own,
    /// [`crate::EndpointHandle::key_store`].
    pub key_store: Option<KeyStore>,
    /// Refuse keys that are neither moto IAM keys nor [`Config::known_credentials`] with
    /// `UnrecognizedClientException`, for every action. Default false: they are accepted
    /// unverified (moto's own behaviour), except that `RegisterInstance` still needs
    /// authorization.
    pub reject_unknown_access_keys: bool,
    /// Authorize every OpsWorks and Systems Manager call of a moto IAM user's key against that
    /// user's policies (action `opsworks:<Operation>` or `ssm:<Operation>`, resource `*`), as
    /// moto does for its own services once its `INITIAL_NO_AUTH_ACTION_COUNT` is spent.
    /// `RegisterInstance` is always authorized (on its stack). Default false: only
    /// `RegisterInstance` is.
    pub enforce_iam_policies: bool,
    /// How long a registered instance stays `registering` before it is `registered`.
    pub registration_delay: Duration,
    /// The agent installer tarball served under [`crate::AGENT_INSTALLER_PATH`].
    pub agent_installer: AgentInstaller,
    /// Provisioning parameters added to (or replacing) the defaults that
    /// `DescribeStackProvisioningParameters` returns.
    pub extra_provisioning_parameters: BTreeMap<String, String>,
    /// Fault injection; changeable later through the handle.
    pub faults: Faults,
    /// Largest request body accepted, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long after its agent's last heartbeat an SSM node turns from `Online` to
    /// `ConnectionLost`. Default 5 s.
    pub ssm_connection_lost_after: Duration,
    /// The SSM setup tool and agent stand-in served under [`crate::ssm_standin::SETUP_PATH_PREFIX`];
    /// `None` (the default): those URLs answer 404.
    pub ssm_standin: Option<SsmStandIn>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            account_id: "123456789012".to_owned(),
            iam_endpoint_url: None,
            ec2_endpoint_url: None,
            moto_credentials: (
                MOTO_ACCESS_KEY_ID.to_owned(),
                MOTO_SECRET_ACCESS_KEY.to_owned(),
            ),
            known_credentials: Vec::new(),
            key_store: None,
            reject_unknown_access_keys: false,
            enforce_iam_policies: false,
            registration_delay: Duration::from_millis(500),
            agent_installer: AgentInstaller::None,
            extra_provisioning_parameters: BTreeMap::new(),
            faults: Faults::default(),
            max_body_bytes: 1 << 20,
            ssm_connection_lost_after: Duration::from_secs(5),
            ssm_standin: None,
        }
    }
}

impl Config {
    /// The defaults, with IAM and EC2 at moto's server `url` (e.g. `http://127.0.0.1:5000`).
    pub fn with_moto(url: &str) -> Self {
        let url = url.trim_end_matches('/').to_owned();
        Config {
            iam_endpoint_url: Some(url.clone()),
            ec2_endpoint_url: Some(url),
            ..Config::default()
        }
    }
}
