//! Crash points, for tests of crash safety. When the environment variable
//! `REGISTRAR_CRASH_AFTER` names an operation (for example `iam:CreateUser`), the process exits
//! abruptly, as a SIGKILL would leave it, right after that operation succeeds: the test then
//! restarts the controller and checks that nothing was done twice or left behind. Unset (always,
//! outside tests), every crash point is a no-op.

use std::sync::OnceLock;

/// The variable naming the operation to crash after.
pub const VARIABLE: &str = "REGISTRAR_CRASH_AFTER";

static CRASH_AFTER: OnceLock<Option<String>> = OnceLock::new();

/// Marks that `operation` just succeeded; exits the process if the crash point names it.
pub(crate) fn after(operation: &str) {
    let armed = CRASH_AFTER.get_or_init(|| std::env::var(VARIABLE).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(operation) {
        eprintln!("crash point: exiting abruptly after {operation}");
        std::process::exit(137);
    }
}
