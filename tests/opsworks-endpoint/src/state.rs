//! The endpoint's state: stacks, layers, registered instances, the call records and the test
//! controls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::AgentInstaller;
use crate::faults::Injector;
use crate::model::{STATUS_REGISTERED, STATUS_REGISTERING};
use crate::record::{Authorization, CallRecord};

pub(crate) struct Stack {
    pub seq: u64,
    pub region: String,
    pub arn: String,
    pub vpc_id: Option<String>,
    /// The `Stack` shape as DescribeStacks returns it.
    pub fields: Map<String, Value>,
}

pub(crate) struct Layer {
    pub seq: u64,
    pub id: String,
    pub stack_id: String,
    pub layer_type: String,
    pub name: String,
    pub shortname: String,
    /// The `Layer` shape as DescribeLayers returns it.
    pub fields: Map<String, Value>,
}

pub(crate) struct Instance {
    pub seq: u64,
    pub id: String,
    pub stack_id: String,
    pub hostname: String,
    pub ec2_instance_id: Option<String>,
    pub infrastructure_class: String,
    pub layer_ids: Vec<String>,
    /// When it was registered.
    pub registered_at: Instant,
    /// When it stops being `registering`.
    pub ready_at: Instant,
    pub forced_status: Option<String>,
    pub authorization: Option<Authorization>,
    /// The members of the `Instance` shape that do not change.
    pub fields: Map<String, Value>,
}

/// When an instance registered at `at` stops being `registering`, for any delay.
pub(crate) fn ready_time(at: Instant, delay: Duration) -> Instant {
    at.checked_add(delay)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 86_400))
}

impl Instance {
    pub fn status(&self, now: Instant) -> &str {
        match &self.forced_status {
            Some(s) => s,
            None if now >= self.ready_at => STATUS_REGISTERED,
            None => STATUS_REGISTERING,
        }
    }

    /// The `Instance` shape as DescribeInstances returns it.
    pub fn to_json(&self, now: Instant) -> Value {
        let mut m = self.fields.clone();
        m.insert("Status".into(), Value::from(self.status(now)));
        m.insert("LayerIds".into(), Value::from(self.layer_ids.clone()));
        Value::Object(m)
    }

    pub fn view(&self, now: Instant) -> InstanceView {
        InstanceView {
            instance_id: self.id.clone(),
            stack_id: self.stack_id.clone(),
            hostname: self.hostname.clone(),
            status: self.status(now).to_owned(),
            ec2_instance_id: self.ec2_instance_id.clone(),
            infrastructure_class: self.infrastructure_class.clone(),
            layer_ids: self.layer_ids.clone(),
            authorization: self.authorization.clone(),
        }
    }
}

/// A registered instance as a test sees it ([`crate::EndpointHandle::instances`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceView {
    /// OpsWorks instance ID.
    pub instance_id: String,
    /// Its stack.
    pub stack_id: String,
    /// Its hostname.
    pub hostname: String,
    /// Its status now.
    pub status: String,
    /// The EC2 instance, for the `ec2` class.
    pub ec2_instance_id: Option<String>,
    /// `ec2` or `on-premises`.
    pub infrastructure_class: String,
    /// Layers it is assigned to.
    pub layer_ids: Vec<String>,
    /// How its registration was authorized.
    pub authorization: Option<Authorization>,
}

pub(crate) struct State {
    pub seq: u64,
    pub stacks: BTreeMap<String, Stack>,
    pub layers: BTreeMap<String, Layer>,
    pub instances: BTreeMap<String, Instance>,
    pub calls: Vec<CallRecord>,
    pub next_call: u64,
    pub injector: Injector,
    pub registration_delay: Duration,
    pub installer: AgentInstaller,
    /// Systems Manager: activations, nodes, the setup tool stand-in.
    pub ssm: crate::ssm::SsmState,
}

impl State {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The instances of a stack, in registration order.
    pub fn stack_instances(&self, stack_id: &str) -> Vec<&Instance> {
        let mut v: Vec<&Instance> = self
            .instances
            .values()
            .filter(|i| i.stack_id == stack_id)
            .collect();
        v.sort_by_key(|i| i.seq);
        v
    }

    /// Everything, for `GET /_endpoint/state`.
    pub fn dump(&self) -> Value {
        let now = Instant::now();
        let mut stacks: Vec<&Stack> = self.stacks.values().collect();
        stacks.sort_by_key(|s| s.seq);
        let mut layers: Vec<&Layer> = self.layers.values().collect();
        layers.sort_by_key(|l| l.seq);
        let mut instances: Vec<&Instance> = self.instances.values().collect();
        instances.sort_by_key(|i| i.seq);
        serde_json::json!({
            "Stacks": stacks.iter().map(|s| Value::Object(s.fields.clone())).collect::<Vec<_>>(),
            "Layers": layers.iter().map(|l| Value::Object(l.fields.clone())).collect::<Vec<_>>(),
            "Instances": instances.iter().map(|i| i.to_json(now)).collect::<Vec<_>>(),
            "RegistrationDelayMs": self.registration_delay.as_millis() as u64,
            "Faults": self.injector.faults,
        })
    }
}
