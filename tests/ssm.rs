//! Systems Manager end to end, against real parts: a kube-apiserver, OpenSSH `sshd` test hosts,
//! moto for IAM and EC2, and the project's endpoint serving the Systems Manager API (and the
//! agent's own calls) with the stand-in setup tool and agent: `ssm-setup-cli` registers the
//! host with the activation's code and ID, writes `/var/lib/amazon/ssm/registration` on the host,
//! and leaves an `amazon-ssm-agent` daemon sending heartbeats.
//!
//! Every test ends by scanning what the controller wrote (its debug log, the Events and the
//! objects) for the activation codes in play.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use support::condition_message as message;
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, namespace, ssh_key_secret, wait_gone,
};

/// How long the stand-in setup tool takes (the real one downloads and installs the agent).
const SETUP_RUN_TIME: Duration = Duration::from_secs(3);

/// `aws`, its setup tool taking [`SETUP_RUN_TIME`].
fn serving(aws: &'static AwsEnv) -> &'static AwsEnv {
    assert!(aws.opsworks.set_ssm_setup_run_time(SETUP_RUN_TIME));
    aws
}

/// The environment most tests share.
fn aws() -> &'static AwsEnv {
    serving(AwsEnv::shared())
}

/// An environment of its own for a test that counts the endpoint's calls (its records are not
/// per caller).
fn counted_aws() -> &'static AwsEnv {
    serving(AwsEnv::isolated())
}

/// Another, for the crash test's counts.
fn crash_aws() -> &'static AwsEnv {
    serving(AwsEnv::faulty())
}

/// One test's world: a namespace, an SSH key in a Secret named `key`, a service role, a
/// controller.
struct World {
    cp: &'static ControlPlane,
    aws: &'static AwsEnv,
    client: kube::Client,
    ns: String,
    api: Api<InstanceRegistration>,
    role: String,
    public_key: String,
    controller: ControllerProcess,
    /// Every activation code made for this world's role, as the endpoint held them (polled: the
    /// controller deletes an activation once its node is online).
    codes: Arc<Mutex<BTreeSet<String>>>,
}

impl World {
    async fn new(prefix: &str, controller_args: &[&str], env: &[(&str, &str)]) -> World {
        Self::with(aws(), prefix, controller_args, env).await
    }

    async fn with(
        aws: &'static AwsEnv,
        prefix: &str,
        controller_args: &[&str],
        env: &[(&str, &str)],
    ) -> World {
        let cp = ControlPlane::shared();
        let client = cp.client().await;
        let ns = namespace(&client, prefix).await;
        let (_, public_key) = ssh_key_secret(&client, &ns, "key").await;
        let role = format!("{ns}-ssm");
        aws.create_ssm_service_role(&role).await;
        let codes = Arc::new(Mutex::new(BTreeSet::new()));
        let (sink, watched) = (codes.clone(), role.clone());
        tokio::spawn(async move {
            loop {
                for a in aws.opsworks.ssm_activations() {
                    if a.iam_role.ends_with(&watched) {
                        sink.lock().unwrap().insert(a.activation_code);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        let controller = ControllerProcess::start_with_env(cp, aws, &ns, controller_args, env);
        World {
            cp,
            aws,
            api: Api::namespaced(client.clone(), &ns),
            client,
            ns,
            role,
            public_key,
            controller,
            codes,
        }
    }

    fn host(&self, name: &str) -> SshHost {
        let host = SshHost::start(&format!("{}-{name}", self.ns));
        host.authorize(&self.public_key);
        host
    }

    /// An on-premises host's manifest for Systems Manager.
    fn on_premises(&self, name: &str, host: &SshHost, extra: &str) -> String {
        format!(
            "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  systemsManager:
    serviceRole: {role}
    defaultInstanceName: {name}-node
    tags:
      - key: team
        value: platform
  infrastructureClass: on-premises
  target: {address}
{extra}  ssh:
    username: {user}
    privateKeySecretRef:
      name: key
    port: {port}
",
            ns = self.ns,
            role = self.role,
            address = host.address(),
            user = support::ssh_hosts::USER,
            port = host.port(),
        )
    }

    /// An EC2 instance's manifest for Systems Manager, connecting to `host`.
    fn ec2(&self, name: &str, instance: &str, host: &SshHost) -> String {
        format!(
            "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: {name}
  namespace: {ns}
spec:
  systemsManager: {{}}
  infrastructureClass: ec2
  target: {instance}
  ssh:
    username: {user}
    privateKeySecretRef:
      name: key
    address: {address}
    port: {port}
",
            ns = self.ns,
            address = host.address(),
            user = support::ssh_hosts::USER,
            port = host.port(),
        )
    }

    async fn get(&self, name: &str) -> InstanceRegistration {
        self.api.get(name).await.unwrap()
    }

    /// Waits up to `patience` for `name`'s condition `type_` to have `reason` (for the current
    /// generation).
    async fn wait_for(
        &self,
        name: &str,
        type_: &str,
        reason: &str,
        patience: Duration,
    ) -> InstanceRegistration {
        let deadline = Instant::now() + patience;
        loop {
            let obj = self.get(name).await;
            if let Some((_, r, g)) = condition(&obj, type_)
                && r == reason
                && Some(g) == obj.metadata.generation
            {
                return obj;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: no {type_}={reason}; status: {:#?}\ncontroller log tail:\n{}",
                    obj.status,
                    tail(&self.controller.logs(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait(&self, name: &str, type_: &str, reason: &str) -> InstanceRegistration {
        self.wait_for(name, type_, reason, Duration::from_secs(90))
            .await
    }

    /// The activations made for this world's service role, as the endpoint holds them.
    fn activations(&self) -> Vec<opsworks_endpoint::SsmActivationView> {
        self.aws
            .opsworks
            .ssm_activations()
            .into_iter()
            .filter(|a| a.iam_role.ends_with(&self.role))
            .collect()
    }

    /// How many times SSM `operation` was called on this world's endpoint (count before and
    /// after, in a test that has the endpoint to itself).
    fn calls(&self, operation: &str) -> usize {
        self.aws
            .opsworks
            .calls()
            .iter()
            .filter(|c| c.service == "ssm" && c.action == operation)
            .count()
    }

    /// How many `CreateActivation` calls named this world's service role, from the endpoint's
    /// call log (the role is this world's own, so other tests' calls do not count).
    fn activations_created(&self) -> usize {
        self.aws
            .opsworks
            .calls()
            .iter()
            .filter(|c| {
                c.service == "ssm"
                    && c.action == "CreateActivation"
                    && c.iam_role.as_deref() == Some(self.role.as_str())
            })
            .count()
    }

    /// Asserts that nothing the controller wrote holds an activation code of this world's:
    /// its log, the namespace's Events and objects (with status).
    fn assert_no_codes(&self) {
        let codes: Vec<String> = self.codes.lock().unwrap().iter().cloned().collect();
        assert!(!codes.is_empty(), "no activation was made");
        let events = self
            .cp
            .kubectl_ok(&["get", "events", "-n", &self.ns, "-o", "yaml"])
            .unwrap();
        let objects = self
            .cp
            .kubectl_ok(&["get", "ir", "-n", &self.ns, "-o", "yaml"])
            .unwrap();
        let log = self.controller.logs();
        for (what, text) in [("log", &log), ("events", &events), ("objects", &objects)] {
            for code in &codes {
                assert!(
                    !text.contains(code.as_str()),
                    "the controller's {what} hold an activation code"
                );
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn status(obj: &InstanceRegistration) -> instance_registrar::resource::InstanceRegistrationStatus {
    obj.status.clone().unwrap_or_default()
}

#[tokio::test]
async fn an_on_premises_host_is_registered_through_systems_manager_and_deregistered_on_delete() {
    let w = World::with(counted_aws(), "ssm-onprem", &[], &[]).await;
    let host = w.host("build");
    let calls_before: Vec<(String, usize)> = [
        "CreateActivation",
        "DescribeActivations",
        "DeleteActivation",
        "DescribeInstanceInformation",
        "DeregisterManagedInstance",
        "RegisterManagedInstance",
    ]
    .iter()
    .map(|op| (op.to_string(), w.calls(op)))
    .collect();
    let started = Instant::now();
    apply(w.cp, &w.on_premises("build", &host, ""));
    let obj = w.wait("build", types::READY, reasons::SUCCEEDED).await;
    let took = started.elapsed();
    let s = status(&obj);
    let node = s.managed_node_id.clone().expect("status names the node");
    assert!(node.starts_with("mi-"), "{node}");
    assert_eq!(s.service.as_deref(), Some("SystemsManager"));
    assert_eq!(host.ssm_registration().as_deref(), Some(node.as_str()));
    let listed = w
        .aws
        .opsworks
        .ssm_node(&node)
        .expect("the endpoint lists the node");
    assert_eq!(listed.ping_status, "Online");
    assert_eq!(listed.activation_id, s.activation_id);
    // One activation, used once, and deleted once the node was online, with its Secret.
    let activations = w.activations();
    assert_eq!(
        activations.len(),
        0,
        "the activation is not deleted: {activations:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns);
    assert!(
        secrets
            .get_opt("build-ssm-activation")
            .await
            .unwrap()
            .is_none(),
        "the activation Secret is left"
    );
    assert_eq!(
        host.ssm_setup_runs().len(),
        1,
        "{:?}",
        host.ssm_setup_runs()
    );
    let used: Vec<(String, usize)> = calls_before
        .iter()
        .map(|(op, before)| (op.clone(), w.calls(op) - before))
        .collect();
    // Every AWS call the controller made, by service and operation (its own count).
    let metrics = w.controller.http_address("/metrics");
    let (_, text) = support::http_get(&format!("http://{metrics}/metrics"));
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("registrar_aws_calls_total{"))
        .collect();
    println!(
        "apply to Ready through Systems Manager with a {}s setup tool: {:.2}s; calls to the SSM \
         endpoint: {used:?}; the controller's AWS calls:\n  {}",
        SETUP_RUN_TIME.as_secs(),
        took.as_secs_f64(),
        calls.join("\n  ")
    );
    assert!(
        calls
            .iter()
            .any(|l| l.contains("operation=\"CreateActivation\"")),
        "{text}"
    );
    assert_eq!(used[0].1, 1, "CreateActivation: {used:?}");
    assert_eq!(used[5].1, 1, "RegisterManagedInstance: {used:?}");
    // `kubectl get ir` shows the service and the node.
    let table =
        w.cp.kubectl_ok(&["get", "ir", "-n", &w.ns, "build"])
            .unwrap();
    assert!(
        table.contains("SystemsManager") && table.contains(&node),
        "{table}"
    );

    // A pass over the finished object changes nothing on the host.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host.ssm_setup_runs().len(), 1);

    // Deleting the object deregisters the node this object registered.
    w.api
        .delete("build", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "build").await;
    assert!(
        w.aws.opsworks.ssm_node(&node).is_none(),
        "node {node} is still registered"
    );
    w.assert_no_codes();
}

#[tokio::test]
async fn an_ec2_instance_registers_with_its_instance_profile_and_one_without_is_reported() {
    let w = World::new("ssm-ec2", &[], &[]).await;
    let profile = format!("{}-profile", w.ns);
    w.aws.create_instance_profile(&profile, Some(&w.role)).await;
    let host = w.host("api");
    let (instance, _, _) = w
        .aws
        .try_run_instance(host.name(), None, Some(&profile))
        .await
        .unwrap();
    host.set_identity(&instance, support::aws::REGION);
    let bare = w.host("bare");
    let (no_profile, _, _) = w
        .aws
        .try_run_instance(bare.name(), None, None)
        .await
        .unwrap();
    bare.set_identity(&no_profile, support::aws::REGION);

    apply(w.cp, &w.ec2("api", &instance, &host));
    apply(w.cp, &w.ec2("bare", &no_profile, &bare));
    let obj = w.wait("api", types::READY, reasons::SUCCEEDED).await;
    assert_eq!(
        status(&obj).managed_node_id.as_deref(),
        Some(instance.as_str())
    );
    let node = w.aws.opsworks.ssm_node(&instance).expect("listed");
    assert_eq!(node.ping_status, "Online");
    assert_eq!(node.resource_type, "EC2Instance");
    assert_eq!(
        w.activations().len(),
        0,
        "an EC2 instance needs no activation"
    );
    let setup_runs = host.ssm_setup_runs().len();
    assert_eq!(setup_runs, 1, "{:?}", host.ssm_setup_runs());
    let said = message(&obj, types::CREDENTIALS_READY);
    assert!(said.contains("instance profile"), "{said}");

    let bare_obj = w
        .wait("bare", types::TARGET_RESOLVED, reasons::NO_INSTANCE_PROFILE)
        .await;
    assert_eq!(
        condition(&bare_obj, types::READY).unwrap().1,
        reasons::NO_INSTANCE_PROFILE
    );
    assert!(bare.ssm_setup_runs().is_empty(), "nothing runs on the host");

    // The instance's node is its own: deleting the object leaves it.
    w.api.delete("api", &DeleteParams::default()).await.unwrap();
    wait_gone(&w.api, "api").await;
    assert!(w.aws.opsworks.ssm_node(&instance).is_some());
    // A new object for the same instance finds it online and runs nothing over SSH.
    apply(w.cp, &w.ec2("api-again", &instance, &host));
    let again = w.wait("api-again", types::READY, reasons::SUCCEEDED).await;
    assert_eq!(
        condition(&again, types::AGENT_INSTALLED).unwrap().1,
        reasons::NOT_NEEDED
    );
    assert_eq!(host.ssm_setup_runs().len(), setup_runs);
}

#[tokio::test]
async fn a_node_whose_heartbeat_stops_is_reported_and_a_deregistered_one_is_registered_again() {
    // Looked at again every few seconds, to notice what changed behind its back.
    let w = World::new("ssm-drift", &["--resync-seconds", "5"], &[]).await;
    let host = w.host("drift");
    apply(w.cp, &w.on_premises("drift", &host, ""));
    let obj = w.wait("drift", types::READY, reasons::SUCCEEDED).await;
    let first = status(&obj).managed_node_id.unwrap();

    // The agent dies: no more heartbeats; Systems Manager says ConnectionLost, and so does Ready.
    assert!(host.kill_ssm_agent() >= 1);
    let lost = w
        .wait_for(
            "drift",
            types::READY,
            reasons::CONNECTION_LOST,
            Duration::from_secs(60),
        )
        .await;
    let said = message(&lost, types::REGISTERED);
    assert!(said.contains(&first), "{said}");

    // Deregistered behind the controller's back: registered again, over the old registration.
    w.aws
        .ssm()
        .deregister_managed_instance()
        .instance_id(&first)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let second = loop {
        let obj = w.get("drift").await;
        let s = status(&obj);
        if condition(&obj, types::READY)
            .is_some_and(|(st, r, _)| st == "True" && r == reasons::SUCCEEDED)
            && let Some(node) = s.managed_node_id.filter(|n| *n != first)
        {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "not registered again: {:#?}\n{}",
            obj.status,
            tail(&w.controller.logs(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(host.ssm_registration().as_deref(), Some(second.as_str()));
    assert_eq!(
        w.aws.opsworks.ssm_node(&second).unwrap().ping_status,
        "Online"
    );
    assert_eq!(
        host.ssm_setup_runs().len(),
        2,
        "{:?}",
        host.ssm_setup_runs()
    );
    w.assert_no_codes();
}

#[tokio::test]
async fn a_host_registered_already_is_adopted_or_reported_and_never_registered_again() {
    let w = World::new("ssm-already", &[], &[]).await;
    // A host whose registration file names a node nobody lists here (another account).
    let elsewhere = w.host("elsewhere");
    let dir = elsewhere.amazon_dir().join("ssm");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("registration"),
        r#"{"ManagedInstanceID":"mi-0aaaaaaaaaaaaaaa1","Region":"ap-south-1"}"#,
    )
    .unwrap();
    apply(w.cp, &w.on_premises("elsewhere", &elsewhere, ""));
    // The probe reads the file: reported before anything is made in AWS.
    let obj = w
        .wait("elsewhere", types::READY, reasons::REGISTERED_ELSEWHERE)
        .await;
    let said = message(&obj, types::HOST_REACHABLE);
    assert!(said.contains("mi-0aaaaaaaaaaaaaaa1"), "{said}");
    assert!(elsewhere.ssm_setup_runs().is_empty(), "the setup tool ran");
    assert!(
        !status(&obj).adopted && status(&obj).managed_node_id.is_none(),
        "{:?}",
        obj.status
    );
    // And at the next pass too (after its backoff): the host is asked again, not taken as
    // learned earlier, so no activation is made for it then either.
    let deadline = Instant::now() + Duration::from_secs(60);
    while elsewhere.sessions() < 2 && w.activations().is_empty() {
        assert!(Instant::now() < deadline, "no second pass");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let made: Vec<String> = w
        .activations()
        .into_iter()
        .map(|a| a.activation_id)
        .collect();
    assert!(
        made.is_empty(),
        "an activation was made at the next pass: {made:?}"
    );

    // A host registered by another object (deleted with Retain): adopted by a new one, and left
    // registered when that one is deleted.
    let kept = w.host("kept");
    apply(
        w.cp,
        &w.on_premises("first", &kept, "  deletionPolicy: Retain\n"),
    );
    let first = w.wait("first", types::READY, reasons::SUCCEEDED).await;
    let node = status(&first).managed_node_id.unwrap();
    w.api
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "first").await;
    // The host's registration file is root's, mode 0600, as the agent writes it: the probe
    // reads it through sudo, and the node is adopted before any activation is made.
    let created_before = w.activations_created();
    apply(w.cp, &w.on_premises("second", &kept, ""));
    let second = w.wait("second", types::READY, reasons::SUCCEEDED).await;
    assert_eq!(
        status(&second).managed_node_id.as_deref(),
        Some(node.as_str())
    );
    assert!(status(&second).adopted);
    assert_eq!(
        condition(&second, types::HOST_REACHABLE).unwrap().1,
        reasons::ADOPTED
    );
    assert_eq!(
        w.activations_created() - created_before,
        0,
        "an activation was made for a host registered already"
    );
    assert_eq!(
        kept.ssm_setup_runs().len(),
        1,
        "{:?}",
        kept.ssm_setup_runs()
    );
    w.api
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "second").await;
    assert!(
        w.aws.opsworks.ssm_node(&node).is_some(),
        "an adopted node was deregistered"
    );
    // Adopted again, by an object that asks for it to be deregistered: its evidence still
    // holds at deletion (the object that registered it is gone, the role and the host are the
    // namespace's), so it is.
    let created_before = w.activations_created();
    apply(
        w.cp,
        &w.on_premises("third", &kept, "  deletionPolicy: DeregisterAdopted\n"),
    );
    let third = w.wait("third", types::READY, reasons::SUCCEEDED).await;
    assert!(status(&third).adopted);
    assert_eq!(w.activations_created() - created_before, 0);
    w.api
        .delete("third", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "third").await;
    assert!(
        w.aws.opsworks.ssm_node(&node).is_none(),
        "the adopted node {node} was not deregistered with DeregisterAdopted"
    );
    assert_eq!(
        kept.ssm_setup_runs().len(),
        1,
        "{:?}",
        kept.ssm_setup_runs()
    );
    // The object that found its host registered elsewhere never made an activation.
    let made: Vec<String> = w
        .activations()
        .into_iter()
        .map(|a| a.activation_id)
        .collect();
    assert!(made.is_empty(), "activations made: {made:?}");
    w.api
        .delete("elsewhere", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "elsewhere").await;
    w.assert_no_codes();
}

/// A controller killed right after `CreateActivation` (before the code is stored), after the
/// code is stored, or while the setup tool runs on the host: one node, at most one activation
/// at any time, none left at the end.
#[tokio::test]
async fn sigkill_around_the_activation_and_during_the_install_gives_one_activation_and_one_node() {
    for (point, label) in [
        ("ssm:CreateActivation", "after CreateActivation"),
        ("kube:WriteActivationSecret", "after the code is stored"),
        ("", "during the install"),
    ] {
        let env: Vec<(&str, &str)> = if point.is_empty() {
            Vec::new()
        } else {
            vec![("REGISTRAR_CRASH_AFTER", point)]
        };
        let mut w = World::with(crash_aws(), "ssm-crash", &[], &env).await;
        let host = w.host("crash");
        let created_before = w.calls("CreateActivation");
        apply(w.cp, &w.on_premises("crash", &host, ""));
        if point.is_empty() {
            // Killed while the setup tool runs (it takes SETUP_RUN_TIME).
            let deadline = Instant::now() + Duration::from_secs(60);
            while host.processes("ssm-setup-cli").is_empty() {
                assert!(Instant::now() < deadline, "the setup tool never ran");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            w.controller.kill();
        } else {
            assert!(
                w.controller.wait_exit(Duration::from_secs(60)).is_some(),
                "{label}: the controller did not stop at {point}"
            );
        }
        let live = w.activations().len();
        assert!(live <= 1, "{label}: {live} activations after the crash");
        w.controller = ControllerProcess::start(w.cp, w.aws, &w.ns, &[]);
        let obj = w
            .wait_for(
                "crash",
                types::READY,
                reasons::SUCCEEDED,
                Duration::from_secs(120),
            )
            .await;
        let node = status(&obj).managed_node_id.unwrap();
        let created = w.calls("CreateActivation") - created_before;
        let nodes: Vec<_> = w
            .aws
            .opsworks
            .ssm_nodes()
            .into_iter()
            .filter(|n| n.iam_role.as_deref() == Some(w.role.as_str()))
            .collect();
        println!(
            "crash {label}: {created} CreateActivation, {} node(s), {} setup run(s)",
            nodes.len(),
            host.ssm_setup_runs().len()
        );
        assert_eq!(nodes.len(), 1, "{label}: {nodes:?}");
        assert_eq!(nodes[0].instance_id, node, "{label}");
        assert_eq!(host.ssm_registration().as_deref(), Some(node.as_str()));
        assert!(w.activations().is_empty(), "{label}: {:?}", w.activations());
        match point {
            // The code was lost with the process: that activation was deleted, another made.
            "ssm:CreateActivation" => assert_eq!(created, 2, "{label}"),
            _ => assert_eq!(created, 1, "{label}"),
        }
        w.assert_no_codes();
    }
}

/// A node registered with the object's activation whose host never got the registration (the
/// install was cut short between the agent's RegisterManagedInstance and its writing the
/// registration file, whose keys are lost with it): it can never come online, so the object
/// deregisters it and registers the host afresh.
#[tokio::test]
async fn a_node_registered_for_the_host_whose_registration_the_host_never_wrote_is_replaced() {
    let mut w = World::with(
        crash_aws(),
        "ssm-lost",
        &[],
        &[("REGISTRAR_CRASH_AFTER", "kube:WriteActivationSecret")],
    )
    .await;
    let host = w.host("lost");
    apply(w.cp, &w.on_premises("lost", &host, ""));
    assert!(
        w.controller.wait_exit(Duration::from_secs(60)).is_some(),
        "the controller did not stop after storing the activation"
    );
    // The agent's registration, as the cut-short install made it; the host knows nothing of it.
    let activation = w.activations().pop().expect("an activation");
    let lost = opsworks_endpoint::ssm_standin::call(
        w.aws.opsworks.url(),
        "RegisterManagedInstance",
        &serde_json::json!({
            "ActivationCode": activation.activation_code,
            "ActivationId": activation.activation_id,
            // The form (base64 of a 2048-bit key's size) is all the endpoint checks.
            "PublicKey": "A".repeat(392),
            "PublicKeyType": "Rsa",
            "Fingerprint": "lost-fingerprint",
        }),
        None,
    )
    .unwrap_or_else(|e| panic!("RegisterManagedInstance: {e:?}"))["InstanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(host.ssm_registration().is_none());

    w.controller = ControllerProcess::start(w.cp, w.aws, &w.ns, &[]);
    let obj = w
        .wait_for(
            "lost",
            types::READY,
            reasons::SUCCEEDED,
            Duration::from_secs(120),
        )
        .await;
    let node = status(&obj).managed_node_id.unwrap();
    assert_ne!(node, lost);
    assert_eq!(host.ssm_registration().as_deref(), Some(node.as_str()));
    assert!(
        w.aws.opsworks.ssm_node(&lost).is_none(),
        "the lost node {lost} is still registered"
    );
    let made: Vec<String> = w
        .activations()
        .into_iter()
        .map(|a| a.activation_id)
        .collect();
    assert!(made.is_empty(), "activations made: {made:?}");
    w.assert_no_codes();
}

/// A managed node registered by hand, as another tenant (or a person) would: an activation for
/// `role` with `tags`, the agent's `RegisterManagedInstance`, and heartbeats reporting
/// `computer` and `ip` while the returned guard lives (one, then none, for a node that is
/// `ConnectionLost` soon).
async fn register_by_hand(
    aws: &'static AwsEnv,
    role: &str,
    tags: &[(&str, &str)],
    computer: &str,
    ip: &str,
) -> (String, Heartbeats) {
    let mut create = aws
        .ssm()
        .create_activation()
        .iam_role(role)
        .registration_limit(1);
    for (k, v) in tags {
        create = create.tags(
            aws_sdk_ssm::types::Tag::builder()
                .key(*k)
                .value(*v)
                .build()
                .unwrap(),
        );
    }
    let created = create
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateActivation for {role}: {e:?}"));
    let node = opsworks_endpoint::ssm_standin::call(
        aws.opsworks.url(),
        "RegisterManagedInstance",
        &serde_json::json!({
            "ActivationCode": created.activation_code().unwrap(),
            "ActivationId": created.activation_id().unwrap(),
            "PublicKey": "A".repeat(392),
            "PublicKeyType": "Rsa",
            "Fingerprint": format!("by-hand-{computer}"),
        }),
        None,
    )
    .unwrap_or_else(|e| panic!("RegisterManagedInstance: {e:?}"))["InstanceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, id, computer, ip, flag) = (
        aws.opsworks.url().to_owned(),
        node.clone(),
        computer.to_owned(),
        ip.to_owned(),
        stop.clone(),
    );
    let beat = move || {
        opsworks_endpoint::ssm_standin::call(
            &url,
            "UpdateInstanceInformation",
            &serde_json::json!({
                "InstanceId": id,
                "AgentName": "amazon-ssm-agent",
                "AgentVersion": "3.3.0.0",
                "AgentStatus": "Active",
                "PlatformType": "Linux",
                "ComputerName": computer,
                "IPAddress": ip,
            }),
            Some((
                opsworks_endpoint::ssm_standin::AGENT_ACCESS_KEY_ID,
                opsworks_endpoint::ssm_standin::AGENT_SECRET_ACCESS_KEY,
                support::aws::REGION,
            )),
        )
        .unwrap_or_else(|e| panic!("UpdateInstanceInformation: {e:?}"));
    };
    beat();
    std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            beat();
        }
    });
    (node, Heartbeats(stop))
}

/// Stops a hand-registered node's heartbeats when dropped.
struct Heartbeats(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes `host`'s `/var/lib/amazon/ssm/registration` naming `node`, root's and mode 0600, as
/// the agent writes it.
fn write_registration(host: &SshHost, node: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = host.amazon_dir().join("ssm");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("registration");
    std::fs::write(
        &file,
        format!(
            r#"{{"ManagedInstanceID":"{node}","Region":"{}"}}"#,
            support::aws::REGION
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Issue 21, item 1: a tenant rewrites its own host's registration file to name another
/// tenant's node, and asks for adopted nodes to be deregistered. The node's own record refuses
/// it: registered under a role the namespace may not use, or carrying another namespace's
/// owner tags (a role both may use), and reporting another host. Nothing is adopted, no
/// activation is made, and deleting the objects leaves the other tenant's nodes registered.
#[tokio::test]
async fn a_host_naming_another_tenants_node_is_refused_and_never_deregisters_it() {
    let w = World::new("ssm-victim", &[], &[]).await;
    // The namespace may use its own role only.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(w.client.clone());
    namespaces
        .patch(
            &w.ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({"metadata": {"annotations": {
                instance_registrar::ALLOWED_SERVICE_ROLES: w.role.clone()
            }}})),
        )
        .await
        .unwrap();
    // Another tenant's nodes: one under its own role, registered by hand; one under a role the
    // two namespaces share, registered by the controller for an object of the other namespace
    // (its activation's owner tags).
    let victim_role = format!("{}-victim", w.ns);
    w.aws.create_ssm_service_role(&victim_role).await;
    let (by_role, _beats_a) = register_by_hand(
        w.aws,
        &victim_role,
        &[],
        "victim-db.corp.example",
        "10.20.30.40",
    )
    .await;
    let (by_tag, _beats_b) = register_by_hand(
        w.aws,
        &w.role,
        &[
            (
                instance_registrar::testing::OWNER_UID_TAG,
                "6f1c2d3e-0000-4000-8000-00000000000b",
            ),
            (instance_registrar::testing::OWNER_TAG, "victims/db"),
        ],
        "victim-app.corp.example",
        "10.20.30.41",
    )
    .await;

    let created_before = w.activations_created();
    let mut objects = Vec::new();
    for (name, victim, reason) in [
        ("rogue-role", &by_role, reasons::SERVICE_ROLE_NOT_ALLOWED),
        ("rogue-tag", &by_tag, reasons::CONFLICT),
    ] {
        let host = w.host(name);
        write_registration(&host, victim);
        apply(
            w.cp,
            &w.on_premises(name, &host, "  deletionPolicy: DeregisterAdopted\n"),
        );
        objects.push((name, victim, reason, host));
    }
    for (name, victim, reason, host) in &objects {
        let obj = w.wait(name, types::READY, reason).await;
        let s = status(&obj);
        assert!(!s.adopted, "{name}: {:?}", obj.status);
        assert_eq!(s.managed_node_id, None, "{name}");
        let said = message(&obj, types::HOST_REACHABLE);
        assert!(said.contains(victim.as_str()), "{name}: {said}");
        assert!(
            host.ssm_setup_runs().is_empty(),
            "{name}: the setup tool ran"
        );
        println!("{name}: {reason}: {said}");
    }
    assert_eq!(
        w.activations_created() - created_before,
        0,
        "an activation was made for a host that names a node"
    );
    for (name, ..) in &objects {
        w.api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for (name, victim, ..) in &objects {
        wait_gone(&w.api, name).await;
        assert!(
            w.aws.opsworks.ssm_node(victim).is_some(),
            "{name}: the other tenant's node {victim} was deregistered"
        );
    }
}

/// Issue 21, item 7: a Secret of the namespace's own named `<name>-ssm-activation` is never
/// read, overwritten or deleted: the object reports `SecretNameTaken`, and the Secret is as it
/// was after the object's deletion.
#[tokio::test]
async fn a_tenants_secret_named_like_the_activation_secret_is_left_untouched() {
    let w = World::new("ssm-secret", &[], &[]).await;
    let host = w.host("own");
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), &w.ns);
    let mine: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "own-ssm-activation", "labels": {"team": "a"}},
        "type": "Opaque",
        "stringData": {"activation_id": "the tenant's", "notes": "keep me"},
    }))
    .unwrap();
    let before = secrets.create(&Default::default(), &mine).await.unwrap();
    apply(w.cp, &w.on_premises("own", &host, ""));
    let obj = w
        .wait("own", types::READY, reasons::SECRET_NAME_TAKEN)
        .await;
    let said = message(&obj, types::CREDENTIALS_READY);
    assert!(said.contains("own-ssm-activation"), "{said}");
    assert!(host.ssm_setup_runs().is_empty(), "the setup tool ran");
    let unchanged = |s: &Secret| {
        assert_eq!(s.metadata.uid, before.metadata.uid);
        assert_eq!(
            s.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(s.data, before.data);
        assert!(s.metadata.owner_references.is_none(), "{:?}", s.metadata);
    };
    unchanged(&secrets.get("own-ssm-activation").await.unwrap());
    w.api.delete("own", &DeleteParams::default()).await.unwrap();
    wait_gone(&w.api, "own").await;
    // Garbage collection would have taken it with the object had it been given an owner.
    tokio::time::sleep(Duration::from_secs(2)).await;
    unchanged(&secrets.get("own-ssm-activation").await.unwrap());
}

/// Issue 21, item 7: an endpoint whose `DescribeActivations` pages never end (a new `NextToken`
/// each time) is read for a bounded number of pages: the deletion reports it, then completes
/// once the endpoint behaves.
#[tokio::test]
async fn endless_activation_pages_are_reported_and_do_not_hold_a_deletion_forever() {
    let aws = serving(AwsEnv::hanging());
    let w = World::with(aws, "ssm-pages", &[], &[]).await;
    let host = w.host("pages");
    apply(w.cp, &w.on_premises("pages", &host, ""));
    w.wait("pages", types::READY, reasons::SUCCEEDED).await;
    aws.set_faults(opsworks_endpoint::Faults::endless_pages(&[
        "ssm:DescribeActivations",
    ]));
    let listed_before = w.calls("DescribeActivations");
    w.api
        .delete("pages", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        let obj = w.get("pages").await;
        if let Some(c) = obj
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == types::READY))
            && c.reason == reasons::DELETING
            && c.message.contains("NextToken")
        {
            break c.message.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the deletion did not report the endless pages: {:#?}\n{}",
            obj.status,
            tail(&w.controller.logs(), 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pages = w.calls("DescribeActivations") - listed_before;
    println!("endless pages: {pages} DescribeActivations calls before the report: {said}");
    assert!(pages > 100, "{pages}");
    aws.set_faults(opsworks_endpoint::Faults::none());
    wait_gone(&w.api, "pages").await;
    let made: Vec<String> = w
        .activations()
        .into_iter()
        .map(|a| a.activation_id)
        .collect();
    assert!(made.is_empty(), "activations made: {made:?}");
    w.assert_no_codes();
}

/// The node's tags, as the test endpoint holds them (sorted).
async fn node_tags(aws: &AwsEnv, node: &str) -> Vec<(String, String)> {
    let out = aws
        .ssm()
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::ManagedInstance)
        .resource_id(node)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = out
        .tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    tags.sort();
    tags
}

/// The orphan audit: an object deleted with its finalizer removed by hand leaves its node
/// registered; the audit (every 2 s here) reports it, and with `--delete-orphans` deregisters it
/// at its second sighting. An activation made by hand (no owner tag, as the CLI makes one) and
/// another test's nodes are left alone.
#[tokio::test]
async fn a_node_left_by_an_object_deleted_without_its_finalizer_is_reported_then_removed() {
    let w = World::new(
        "ssm-orphan",
        &["--audit-seconds", "2", "--delete-orphans", "true"],
        &[],
    )
    .await;
    let host = w.host("left");
    apply(w.cp, &w.on_premises("left", &host, ""));
    let obj = w.wait("left", types::READY, reasons::SUCCEEDED).await;
    let node = status(&obj).managed_node_id.unwrap();
    assert!(
        node_tags(w.aws, &node)
            .await
            .iter()
            .any(|(k, _)| k == "registrar.dev/cluster"),
        "the node carries the cluster tag"
    );
    let by_hand = w
        .aws
        .ssm()
        .create_activation()
        .iam_role(&w.role)
        .default_instance_name("left-node")
        .send()
        .await
        .unwrap();
    let by_hand = by_hand.activation_id().unwrap().to_owned();
    // The finalizer goes by hand, then the object: nothing is undone.
    w.api
        .patch(
            "left",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    w.api
        .delete("left", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&w.api, "left").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.aws.opsworks.ssm_node(&node).is_some() {
        assert!(
            Instant::now() < deadline,
            "orphaned node {node} still registered; log:\n{}",
            tail(&w.controller.logs(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = w.controller.logs();
    let reported = log
        .lines()
        .position(|l| l.contains("orphan: its object no longer exists") && l.contains(&node))
        .expect("the orphan is reported first");
    let removed = log
        .lines()
        .position(|l| l.contains("orphan removed") && l.contains(&node))
        .expect("then removed");
    assert!(reported < removed);
    assert!(
        w.activations().iter().any(|a| a.activation_id == by_hand),
        "the activation made by hand is left"
    );
}

/// Preflight for Systems Manager: a host whose clock is 10 minutes behind gets `ClockSkew` and
/// no activation; set right, it registers with no change to the object. What was checked names
/// the setup tool and the `ssm` endpoint.
#[tokio::test]
async fn a_host_whose_clock_is_behind_gets_no_activation_until_it_is_set_right() {
    let w = World::new("ssm-preflight", &[], &[]).await;
    let host = w.host("late");
    host.set_command(
        "date",
        Some(r#"exec /usr/bin/date -d "@$(( $(/usr/bin/date +%s) - 600 ))" "$@""#),
    );
    apply(w.cp, &w.on_premises("late", &host, ""));
    let obj = w
        .wait("late", types::HOST_REACHABLE, reasons::CLOCK_SKEW)
        .await;
    let said = message(&obj, types::HOST_REACHABLE);
    assert!(said.contains("behind"), "{said}");
    assert_eq!(
        w.activations_created(),
        0,
        "no activation for a host that could not use it"
    );
    host.set_command("date", None);
    w.wait("late", types::READY, reasons::SUCCEEDED).await;
    assert_eq!(w.activations_created(), 1);
    let events =
        w.cp.kubectl_ok(&["get", "events", "-n", &w.ns, "-o", "json"])
            .unwrap();
    assert!(
        events.contains(
            "preflight: clock, the agent setup tool, ssm, free space in /var/lib/amazon/ssm, init ("
        ),
        "{events}"
    );
}

#[tokio::test]
async fn changed_tags_are_made_on_the_node_in_place_and_others_are_left() {
    let w = World::new("ssm-tags", &[], &[]).await;
    let host = w.host("tagged");
    apply(w.cp, &w.on_premises("tagged", &host, ""));
    let obj = w.wait("tagged", types::READY, reasons::SUCCEEDED).await;
    let node = status(&obj).managed_node_id.unwrap();
    // Someone else tags the node too.
    w.aws
        .ssm()
        .add_tags_to_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::ManagedInstance)
        .resource_id(&node)
        .tags(
            aws_sdk_ssm::types::Tag::builder()
                .key("backup")
                .value("nightly")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let sessions = host.sessions();
    let tags = |pairs: &[(&str, &str)]| {
        let list: Vec<_> = pairs
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        serde_json::json!({"spec": {"systemsManager": {"tags": list}}})
    };
    // `team` changes value and `env` is added; then `team` is taken out.
    for (spec, want) in [
        (
            tags(&[("team", "data"), ("env", "prod")]),
            vec![("env", "prod"), ("team", "data")],
        ),
        (tags(&[("env", "prod")]), vec![("env", "prod")]),
    ] {
        w.api
            .patch(
                "tagged",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&spec),
            )
            .await
            .unwrap();
        w.wait("tagged", types::READY, reasons::SUCCEEDED).await;
        let on_node = node_tags(w.aws, &node).await;
        for (k, v) in &want {
            assert!(
                on_node.contains(&((*k).to_owned(), (*v).to_owned())),
                "{k}={v} on the node: {on_node:?}"
            );
        }
        let keys: Vec<&str> = on_node.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys.contains(&"team"),
            want.iter().any(|(k, _)| *k == "team"),
            "a key taken out of the spec is taken off the node: {on_node:?}"
        );
        // Never the owner tags, nor what someone else set.
        assert!(keys.contains(&"backup"), "{on_node:?}");
        assert!(
            keys.contains(&instance_registrar::testing::OWNER_UID_TAG),
            "{on_node:?}"
        );
        assert!(
            keys.contains(&instance_registrar::testing::OWNER_TAG),
            "{on_node:?}"
        );
    }
    let obj = w.get("tagged").await;
    assert_eq!(
        status(&obj).managed_node_id.as_deref(),
        Some(node.as_str()),
        "same node"
    );
    assert_eq!(host.sessions(), sessions, "no SSH session for a tag change");
    assert_eq!(w.activations_created(), 1, "no re-registration");
}

#[tokio::test]
async fn an_agent_out_of_touch_is_restarted_over_ssh_and_a_host_that_is_gone_is_not_registered_again()
 {
    use instance_registrar::resource::RepairOutcome;
    use opsworks_endpoint::ssm_standin::host_files::SERVICE_LOG;
    let w = World::new(
        "ssm-repair",
        &["--resync-seconds", "5", "--agent-repair-after-seconds", "3"],
        &[],
    )
    .await;
    let (alive, gone) = (w.host("alive"), w.host("gone"));
    apply(w.cp, &w.on_premises("alive", &alive, ""));
    apply(w.cp, &w.on_premises("gone", &gone, ""));
    let mut nodes = Vec::new();
    for name in ["alive", "gone"] {
        let obj = w.wait(name, types::READY, reasons::SUCCEEDED).await;
        nodes.push(status(&obj).managed_node_id.unwrap());
    }
    let (sessions, setups) = (alive.sessions(), alive.ssm_setup_runs().len());
    let activations = w.activations_created();

    // The agent dies on one host; the other host goes down altogether.
    assert!(alive.kill_ssm_agent() >= 1);
    let mut gone = gone;
    gone.stop();
    let lost = w
        .wait_for(
            "alive",
            types::READY,
            reasons::CONNECTION_LOST,
            Duration::from_secs(60),
        )
        .await;
    assert!(
        message(&lost, types::REGISTERED).contains("is restarted at"),
        "{:#?}",
        lost.status
    );

    // The agent's service is restarted with the host's init system, once; the node is the same
    // and Online again, nothing was installed.
    let repaired = w
        .wait_for(
            "alive",
            types::REGISTERED,
            reasons::AGENT_REPAIRED,
            Duration::from_secs(90),
        )
        .await;
    assert_eq!(condition(&repaired, types::READY).unwrap().0, "True");
    let said = message(&repaired, types::REGISTERED);
    assert!(
        said.contains(&nodes[0]) && said.contains("restarted over SSH"),
        "{said}"
    );
    let repair = status(&repaired).agent_repair.unwrap();
    assert_eq!(repair.attempts, 1);
    assert_eq!(repair.outcome, Some(RepairOutcome::Repaired));
    assert!(repair.lost_since.is_none());
    assert_eq!(
        status(&repaired).managed_node_id.as_deref(),
        Some(nodes[0].as_str())
    );
    assert_eq!(
        w.aws.opsworks.ssm_node(&nodes[0]).unwrap().ping_status,
        "Online"
    );
    let runs = alive.service_runs(SERVICE_LOG);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        runs[0].starts_with("restart uid=0 result=running"),
        "{runs:?}"
    );
    assert!(!alive.ssm_agent_pids().is_empty());
    assert_eq!(
        alive.ssm_setup_runs().len(),
        setups,
        "{:?}",
        alive.ssm_setup_runs()
    );
    assert_eq!(alive.sessions(), sessions + 1);

    // The host that is gone: one attempt, which could not reach it; reported, with the node
    // left as it is and nothing made or registered again.
    let failed = w
        .wait_for(
            "gone",
            types::READY,
            reasons::AGENT_REPAIR_FAILED,
            Duration::from_secs(90),
        )
        .await;
    let said = message(&failed, types::REGISTERED);
    assert!(
        said.contains("did not answer") && said.contains("next is"),
        "{said}"
    );
    let repair = status(&failed).agent_repair.unwrap();
    assert_eq!(
        (repair.attempts, repair.outcome),
        (1, Some(RepairOutcome::Failed))
    );
    assert_eq!(
        status(&failed).managed_node_id.as_deref(),
        Some(nodes[1].as_str())
    );
    assert_eq!(w.activations_created(), activations);

    let (code, metrics) = support::http_get(&format!(
        "http://{}/metrics",
        w.controller.http_address("/metrics")
    ));
    assert_eq!(code, 200);
    for line in [
        r#"registrar_agent_repairs_total{service="ssm",outcome="restarted"} 1"#,
        r#"registrar_agent_repairs_total{service="ssm",outcome="repaired"} 1"#,
        r#"registrar_agent_repairs_total{service="ssm",outcome="unreachable"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    // Still one attempt each a while later (one an hour).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        status(&w.get("gone").await).agent_repair.unwrap().attempts,
        1
    );
    assert_eq!(alive.service_runs(SERVICE_LOG).len(), 1);
    w.assert_no_codes();
}
