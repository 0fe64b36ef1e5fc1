//! Integration tests of the OpsWorks- and Systems Manager-compatible endpoint: real moto (one
//! server for this test binary), real endpoints, the real aws-sdk-opsworks and aws-sdk-ssm
//! clients, the stand-ins on real SSH test hosts. Needs tests/setup.sh to have run.

mod auth;
mod common;
mod conformance;
mod faults;
mod keys;
mod sdk;
mod ssm_agent;
mod ssm_conformance;
mod ssm_local_env;
mod ssm_sdk;
mod ssm_standin;
mod standin;
