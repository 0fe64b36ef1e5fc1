//! What the steps of one pass found, for the steps after them ([`Facts`]): the part every service
//! uses (the host, the SSH keys, the resourceVersion to write status against) and one slot of the
//! object's service's own ([`Facts::own`]), which no other code reads.

use std::any::Any;
use std::sync::Arc;

/// What the steps of one pass found, for the steps after them. Rebuilt on every pass from the
/// world (and from status, for what cannot be looked up again).
#[derive(Default)]
pub(crate) struct Facts {
    /// The address to connect to and, for EC2, the instance, once the target step resolved it.
    pub target: Option<TargetFacts>,
    /// The object's resourceVersion that the status written next must be based on: a status
    /// write is refused (409) when the object changed meanwhile, so a pass that ran on an old
    /// copy never moves a field back.
    pub resource_version: Option<String>,
    /// The status this pass wrote at its last checkpoint ([`crate::context::checkpoint`]): what
    /// the API server holds at `resource_version`. `None`: the status the pass started from.
    pub written: Option<crate::resource::InstanceRegistrationStatus>,
    /// The SSH private key, once the SSH key step read it.
    pub ssh_key: Option<Arc<russh::keys::PrivateKey>>,
    /// The private key of each jump host, in order (the host's when one has none of its own).
    pub jump_keys: Vec<Arc<russh::keys::PrivateKey>>,
    /// The user certificate beside the SSH private key, if its Secret carries one.
    pub ssh_certificate: Option<russh::keys::Certificate>,
    /// The user certificate beside each jump host's key, in order, if its Secret carries one.
    pub jump_certificates: Vec<Option<russh::keys::Certificate>>,
    /// Whether an install ran on the host in this pass.
    pub installed_now: bool,
    /// Tells the reconcile that runs this pass to let it go on without it (see [`Facts::detach`]).
    pub detach: Option<tokio::sync::oneshot::Sender<()>>,
    /// What the object's service found (its own type; see [`Facts::own`]).
    own: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Facts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facts")
            .field("target", &self.target)
            .field("resource_version", &self.resource_version)
            .field("installed_now", &self.installed_now)
            .finish_non_exhaustive()
    }
}

impl Facts {
    /// The facts of a pass that writes status against `resource_version` and lets go of its
    /// reconcile through `detach`.
    pub(crate) fn new(
        resource_version: Option<String>,
        detach: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Self {
        Self {
            resource_version,
            detach,
            ..Self::default()
        }
    }

    /// Lets the pass go on off its reconcile worker: called before an SSH session, which may take
    /// as long as the host's installer (minutes), so that the reconcile workers stay free for
    /// the other objects while installs outnumber them. The pass itself goes on as it would have:
    /// the same facts, the install's result handled by the step that started it, one status
    /// write at its end (see [`crate::context::Detached`]).
    pub(crate) fn detach(&mut self) {
        if let Some(tell) = self.detach.take() {
            let _ = tell.send(());
        }
    }

    /// The service's own facts of this pass, made empty the first time the service asks. A pass
    /// runs one service, so the slot holds one type; asking for another starts it afresh.
    pub(crate) fn own<T: Default + Send + Sync + 'static>(&mut self) -> &mut T {
        if !self.own.as_ref().is_some_and(|own| own.is::<T>()) {
            self.own = Some(Box::new(T::default()));
        }
        self.own
            .as_mut()
            .and_then(|own| own.downcast_mut::<T>())
            .expect("the slot was just filled with a T")
    }

    /// The service's own facts, if it recorded any of type `T`.
    pub(crate) fn own_ref<T: 'static>(&self) -> Option<&T> {
        self.own.as_ref().and_then(|own| own.downcast_ref::<T>())
    }
}

/// The host to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TargetFacts {
    /// The EC2 instance ID (ec2 only).
    pub ec2_instance_id: Option<String>,
    /// The address to connect to over SSH.
    pub address: String,
    /// The EC2 instance's IAM instance profile (ARN), when the instance was looked up.
    pub instance_profile: Option<String>,
}

impl TargetFacts {
    /// An on-premises host at `address`.
    pub(crate) fn on_premises(address: &str) -> Self {
        Self {
            ec2_instance_id: None,
            address: address.to_owned(),
            instance_profile: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Mine(u32);
    #[derive(Default, Debug, PartialEq)]
    struct Theirs(&'static str);

    #[test]
    fn a_service_reads_back_only_its_own_facts() {
        let mut facts = Facts::default();
        assert_eq!(facts.own_ref::<Mine>(), None);
        facts.own::<Mine>().0 = 7;
        assert_eq!(facts.own_ref::<Mine>(), Some(&Mine(7)));
        assert_eq!(facts.own_ref::<Theirs>(), None, "another type sees nothing");
        assert_eq!(
            facts.own::<Mine>(),
            &Mine(7),
            "asking again keeps what was found"
        );
    }
}
