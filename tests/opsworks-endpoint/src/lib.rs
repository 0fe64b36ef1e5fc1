//! An OpsWorks- and Systems Manager-compatible endpoint for local use and tests, and the code
//! that starts moto's server (the AWS mock for IAM, EC2 and STS) it checks credentials against.
//!
//! AWS closed OpsWorks Stacks to customers in 2024. This crate serves the part of the official
//! OpsWorks API (version `2013-02-18`, AWS JSON 1.1 protocol, target prefix `OpsWorks_20130218`)
//! that registering hosts needs, following the official service model: its shapes, its required
//! members and its error codes, so that the `aws-sdk-opsworks` crate (generated from that model)
//! and the AWS CLI talk to it as they talked to AWS.
//!
//! # What it serves
//!
//! - The API, `POST /` with `X-Amz-Target: OpsWorks_20130218.<Action>`, SigV4-signed:
//!   `CreateStack`, `DescribeStacks`, `DescribeStackProvisioningParameters`, `CreateLayer`,
//!   `DescribeLayers`, `DescribeInstances`, `RegisterInstance`, `DeregisterInstance`,
//!   `AssignInstance`, `UnassignInstance` (see [`model::OPERATIONS`]).
//! - The Systems Manager (SSM) API on the same URL, `POST /` with `X-Amz-Target:
//!   AmazonSSM.<Action>` (API `2014-11-06`, AWS JSON 1.1, signing name `ssm`), following the
//!   official model: `CreateActivation`, `DescribeActivations`, `DeleteActivation`,
//!   `DescribeInstanceInformation`, `DeregisterManagedInstance`, `AddTagsToResource`,
//!   `RemoveTagsFromResource`, `ListTagsForResource`; and the agent's own `RegisterManagedInstance` (accepted without any
//!   `Authorization` header, as the agent sends it) and `UpdateInstanceInformation` (its
//!   heartbeat; a node is `Online` while they come, `ConnectionLost` once none came for
//!   [`Config::ssm_connection_lost_after`]). See [`model::ssm`]. An `i-…` heartbeat (an agent on
//!   an EC2 instance, using its instance profile) makes an `EC2Instance` node when moto reports
//!   the instance with an IAM instance profile, and is refused (`AccessDeniedException`)
//!   otherwise. Every call is recorded with its service (`opsworks` or `ssm`) and
//!   fault-injected alike.
//! - The SSM setup tool stand-in under `/ssm/latest/<platform>_<arch>/ssm-setup-cli`, when
//!   configured ([`Config::ssm_standin`]): see [`ssm_standin`].
//! - The agent installer tarball the provisioning parameters point at, under
//!   [`AGENT_INSTALLER_PATH`]: given bytes or a file, or the agent installer stand-in
//!   ([`standin`]), whose `boot-registration` registers the host as the real one did.
//! - Test controls under [`CONTROL_PREFIX`] (`/_endpoint/`), unsigned and never
//!   fault-injected, the same as [`EndpointHandle`]'s methods:
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_endpoint/health` | `ok` |
//! | `GET /_endpoint/calls` | the call records, a JSON array of [`CallRecord`] |
//! | `DELETE /_endpoint/calls` | forgets the call records |
//! | `GET /_endpoint/faults`, `PUT /_endpoint/faults` | reads / sets [`Faults`] (JSON; absent fields take their defaults) |
//! | `PUT /_endpoint/registration-delay` | `{"seconds": 1.5}`, as [`EndpointHandle::set_registration_delay`] |
//! | `PUT /_endpoint/instances/<id>/status` | `{"status": "setup_failed"}`, as [`EndpointHandle::set_instance_status`] |
//! | `GET /_endpoint/instances` | the registered instances, a JSON array of [`InstanceView`] |
//! | `GET /_endpoint/moto-state-reads` | `{"reads": 2}`, as [`EndpointHandle::moto_state_reads`] |
//! | `GET /_endpoint/state` | stacks, layers and instances as the API shapes them, delay and faults |
//! | `GET /_endpoint/ssm/nodes` | the SSM nodes, a JSON array of [`SsmNodeView`], as [`EndpointHandle::ssm_nodes`] |
//! | `GET /_endpoint/ssm/activations` | the SSM activations with their codes, a JSON array of [`SsmActivationView`], as [`EndpointHandle::ssm_activations`] |
//! | `PUT /_endpoint/ssm/setup-run-time` | `{"seconds": 1.5}`, as [`EndpointHandle::set_ssm_setup_run_time`] (404 when no setup tool is served) |
//!
//! # moto behind a proxy
//!
//! [`proxy`] is a recording, fault-injecting HTTP proxy to put in front of moto, so that IAM,
//! EC2 and STS calls can be throttled or failed (with the same [`Faults`]) and counted as
//! OpsWorks calls are; its test controls are under `/_proxy/`. Given the endpoint's key store
//! ([`ProxyConfig::key_store`]), it also tells the endpoint the access keys made through it.
//!
//! # Credentials
//!
//! Every API request must carry a well-formed SigV4 `Authorization` header (else
//! `MissingAuthenticationTokenException` / `IncompleteSignatureException`). When the access key
//! is one moto's IAM knows or one given in [`Config::known_credentials`], the signature is
//! verified (`InvalidSignatureException` when it does not match). Keys nobody knows are
//! accepted unverified for every action but `RegisterInstance` (unless
//! [`Config::reject_unknown_access_keys`]; the SSM agent's heartbeats are accepted all the same,
//! as their keys come from its registration). The SSM agent's `RegisterManagedInstance` needs no
//! `Authorization` header at all.
//!
//! An IAM key's secret is looked up in the endpoint's [`KeyStore`], where the [`proxy`] in front
//! of moto, given the same store, puts every key it sees made (IAM `CreateAccessKey`); only for a
//! key made some other way (straight against moto) does the endpoint read moto's whole state,
//! `/moto-api/data.json` (megabytes, most of a second in the benchmark, more as moto fills up;
//! [`EndpointHandle::moto_state_reads`] counts those reads). See [`keys`].
//!
//! `RegisterInstance` is authorized as AWS did, against moto: the key's IAM user must be allowed
//! `opsworks:RegisterInstance` on the stack's ARN by an attached managed policy (such as
//! `arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration`) or an inline policy (with its
//! `DateLessThan aws:CurrentTime` condition, if any, not passed), directly or through a group;
//! or, for a key IAM does not know, the instance identity document must name an EC2 instance that
//! moto reports with an IAM instance profile. See [`Authorization`].
//!
//! # Use from tests
//!
//! ```no_run
//! use opsworks_endpoint::{Config, Endpoint, moto::MotoServer};
//!
//! let moto = MotoServer::shared().unwrap();
//! let endpoint = Endpoint::start(Config::with_moto(moto.url())).unwrap();
//! // point an aws-sdk-opsworks client at endpoint.url() ...
//! for call in endpoint.calls() {
//!     println!("{} {} {:?}", call.action, call.status, call.error_code);
//! }
//! ```

pub mod authorize;
pub mod faults;
pub mod keys;
pub mod model;
pub mod moto;
pub mod policy;
pub mod proxy;
pub mod sigv4;
pub mod ssm_standin;
pub mod standin;

mod aws;
mod config;
mod error;
mod handlers;
mod record;
mod server;
mod ssm;
mod state;
mod time;

pub use config::{AgentInstaller, Config, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY};
pub use error::ApiError;
pub use faults::Faults;
pub use keys::KeyStore;
pub use model::Service;
pub use proxy::{CallSummary, Proxy, ProxyCall, ProxyConfig, ProxyHandle};
pub use record::{Authorization, CallRecord, InjectedFault, SignatureCheck};
pub use server::{AGENT_INSTALLER_PATH, CONTROL_PREFIX, Endpoint, EndpointHandle};
pub use ssm::{SsmActivationView, SsmNodeView};
pub use standin::StandIn;
pub use state::InstanceView;
