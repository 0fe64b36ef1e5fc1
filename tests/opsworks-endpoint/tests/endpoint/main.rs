//! Integration tests of the OpsWorks-compatible endpoint: real moto (one server for this test
//! binary), real endpoints, the real aws-sdk-opsworks client. Needs tests/setup.sh to have run.

mod auth;
mod common;
mod conformance;
mod faults;
mod sdk;
mod standin;
