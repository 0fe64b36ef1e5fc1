//! The local environment of instance-registrar: everything the controller talks to, for real, on
//! loopback addresses only.
//!
//! - [`control_plane`]: etcd and kube-apiserver (TLS, RBAC, an audit log) with the CRD installed;
//! - [`aws`]: moto's server for IAM, EC2 and STS, and the project's OpsWorks-compatible endpoint
//!   (`tests/opsworks-endpoint`), which serves the agent installer stand-in;
//! - [`ssh_hosts`]: OpenSSH `sshd` hosts on `127.0.0.x`, each with its own host key and its own
//!   view of its instance metadata;
//! - [`node`]: kube-controller-manager, kube-scheduler and nodes (containerd and kubelet), for
//!   the tests that run the controller as the chart's Pods.
//!
//! The integration tests use them through `tests/support`; the `local-env` binary is the demo
//! (`bash tests/demo.sh`). Not product code. `tests/setup.sh` installs what they need.

pub mod aws;
pub mod control_plane;
pub mod node;
pub mod ssh_hosts;
