//! A test-only third service (filled in later).
use crate::context::Service;
use crate::resource::InstanceRegistration;

/// The third service, for objects that ask for it.
pub(crate) fn third_service(_obj: &InstanceRegistration) -> Option<&'static dyn Service> {
    None
}
