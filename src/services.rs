//! The services an object can register its host with, and the one place that reads which one
//! out of the spec ([`Services::of`]). Each service is a folder of its own (`opsworks/`,
//! `ssm/`) behind [`crate::context::Service`]; adding one is its folder and a line here.

use crate::context::{Registry, Service};
use crate::opsworks::OpsWorks;
use crate::resource::{self, InstanceRegistration};
use crate::ssm::SystemsManager;

/// Every service, each with its own caches; one per controller.
#[derive(Default)]
pub(crate) struct Services {
    opsworks: OpsWorks,
    systems_manager: SystemsManager,
}

impl Registry for Services {
    fn of(&self, obj: &InstanceRegistration) -> &dyn Service {
        match obj.spec.service() {
            resource::Service::OpsWorks(_) => &self.opsworks,
            resource::Service::SystemsManager(_) => &self.systems_manager,
        }
    }

    fn all(&self) -> Vec<&dyn Service> {
        vec![&self.opsworks, &self.systems_manager]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, target: &str) -> InstanceRegistration {
        serde_yaml::from_str(&format!(
            "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata: {{name: {name}, namespace: ns, uid: uid-{name}}}
spec:
  stackId: 0b1c2d3e-0000-4000-8000-000000000000
  infrastructureClass: ec2
  target: {target}
  ssh: {{username: u, privateKeySecretRef: {{name: k}}}}
"
        ))
        .unwrap()
    }

    fn same_registry(a: &InstanceRegistration, b: &InstanceRegistration) -> bool {
        let services: Box<dyn Registry> = Box::new(Services::default());
        services.same_registry(a, b)
    }

    #[test]
    fn systems_manager_objects_compete_for_a_host_whatever_region_they_name() {
        let mut a = object("a", "db-1.example");
        let mut b = object("b", "db-1.example");
        for (o, region) in [(&mut a, None), (&mut b, Some("us-east-1"))] {
            o.spec.stack_id = None;
            o.spec.systems_manager = Some(crate::resource::SystemsManagerSpec {
                region: region.map(str::to_owned),
                ..Default::default()
            });
        }
        assert!(same_registry(&a, &b));
        // Not with an OpsWorks object: the two agents live side by side.
        let c = object("c", "db-1.example");
        assert!(!same_registry(&a, &c));
        // Nor are two stacks one registry.
        let mut d = object("d", "db-1.example");
        d.spec.stack_id = Some("ffffffff-0000-4000-8000-000000000000".into());
        assert!(!same_registry(&c, &d));
    }
}
