//! A third service, for tests only: the proof that a service is one value behind [`Service`]
//! and one line in a registry ([`WithLedger`], the product's [`Services`] with the ledger in
//! front; nothing outside this file changes). "Ledger" keeps its registrations in memory
//! (its API, as it were); its credentials are a token made per object, its install a script run
//! over SSH through the shared runner that hands the token to the host, and its registration the
//! entry the token made. An object asks for it with the annotation [`ANNOTATION`]; its
//! `stackId` names its ledger, which its namespace must be allowed (`registrar.dev/allowed-stacks`).
//! The test runs the real controller, in this process, against a real kube-apiserver and sshd.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::conditions::{Observation, Outcome, Undone, reasons};
use crate::context::{Context, Facts, Registry, Service, Step, TargetFacts};
use crate::resource::{InstanceRegistration, InstanceRegistrationStatus};
use crate::services::Services;
use crate::steps::script::shell_quote;
use crate::tenancy::Scope;

/// The annotation that gives an object to the ledger.
pub(crate) const ANNOTATION: &str = "registrar.dev/test-service";

/// The ledger service: its entries by object UID.
#[derive(Default)]
pub(crate) struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// One object's entry: the host it names, the token it registers with, and whether the token was
/// used (the host is registered).
#[derive(Clone, Debug)]
struct Entry {
    host: String,
    token: String,
    registered: bool,
}

static LEDGER: LazyLock<Ledger> = LazyLock::new(Ledger::default);

/// The product's services, and the ledger for an object that asks for it.
#[derive(Default)]
pub(crate) struct WithLedger(Services);

impl Registry for WithLedger {
    fn of(&self, obj: &InstanceRegistration) -> &dyn Service {
        match obj.annotations().get(ANNOTATION).map(String::as_str) {
            Some("ledger") => &*LEDGER,
            _ => self.0.of(obj),
        }
    }

    fn all(&self) -> Vec<&dyn Service> {
        let mut all = self.0.all();
        all.push(&*LEDGER);
        all
    }
}

/// What the ledger's steps found in a pass: the entry, once registered.
#[derive(Default)]
struct Findings {
    registered_as: Option<String>,
}

impl Ledger {
    fn entry(&self, obj: &InstanceRegistration) -> Option<Entry> {
        let entries = self.entries.lock().unwrap();
        entries.get(&obj.uid().unwrap_or_default()).cloned()
    }

    fn target(&self, obj: &InstanceRegistration, ctx: &Context, facts: &mut Facts) -> Outcome {
        if let Err(outcome) = ctx.allowed(obj) {
            return outcome;
        }
        let status = obj.status.clone().unwrap_or_default();
        let others = ctx.store.state();
        let competes = |o: &InstanceRegistration| ctx.competes(obj, o);
        if let Some(holder) =
            crate::conflict::holder_of_the_same_host(obj, &status, None, &others, competes)
        {
            return Outcome::Blocked(holder.observation(&self.place(obj)));
        }
        facts.target = Some(TargetFacts::on_premises(&obj.spec.target));
        let registered = self.entry(obj).filter(|e| e.registered);
        facts.own::<Findings>().registered_as = registered.map(|e| format!("ledger:{}", e.host));
        Outcome::Done(Observation::holds(reasons::SUCCEEDED, "the host is named"))
    }

    fn credentials(&self, obj: &InstanceRegistration) -> Outcome {
        let mut entries = self.entries.lock().unwrap();
        let entry = entries
            .entry(obj.uid().unwrap_or_default())
            .or_insert(Entry {
                host: obj.spec.target.clone(),
                token: format!("token'$(touch CANARY)-{}", obj.uid().unwrap_or_default()),
                registered: false,
            });
        let said = format!("a token for {}", entry.host);
        Outcome::Done(Observation::holds(reasons::SUCCEEDED, said))
    }

    async fn agent(
        &self,
        obj: &InstanceRegistration,
        ctx: &Context,
        facts: &mut Facts,
        status: &mut InstanceRegistrationStatus,
    ) -> Outcome {
        let Some(entry) = self.entry(obj) else {
            return Outcome::Blocked(Observation::fails(reasons::WAITING, "no token"));
        };
        let token = entry.token.as_str();
        let script = format!(
            "printf '%s' {} >{}/ledger-token\n",
            shell_quote(token),
            registrar_local_env::ssh_hosts::HOST_DIR_MOUNT
        );
        let run = match crate::steps::run_install(obj, ctx, facts, status, &script, "ledger").await
        {
            Ok(run) => run,
            Err(outcome) => return outcome,
        };
        if run.exit_status() != Some(0) {
            return run.failed(obj, &[token], "the ledger script");
        }
        // What the host's agent would do with the token: register.
        let uid = obj.uid().unwrap_or_default();
        if let Some(entry) = self.entries.lock().unwrap().get_mut(&uid) {
            entry.registered = true;
        }
        status.agent_installed_at = Some(Time(Timestamp::now()));
        Outcome::Done(Observation::holds(
            reasons::SUCCEEDED,
            "the token was handed over",
        ))
    }

    fn registered(
        &self,
        obj: &InstanceRegistration,
        status: &mut InstanceRegistrationStatus,
    ) -> Outcome {
        match self.entry(obj) {
            Some(entry) if entry.registered => {
                status.registered_at.get_or_insert(Time(Timestamp::now()));
                Outcome::Done(Observation::holds(reasons::SUCCEEDED, "in the ledger"))
            }
            _ => Outcome::Blocked(Observation::fails(reasons::WAITING, "not in the ledger")),
        }
    }
}

impl Service for Ledger {
    fn name(&self) -> &'static str {
        "Ledger"
    }

    fn pipeline(&self) -> &'static [Step] {
        use Step::*;
        &[Target, SshKey, Host, Credentials, Agent, Registered]
    }

    fn place(&self, obj: &InstanceRegistration) -> String {
        format!("ledger {}", obj.spec.stack_id())
    }

    fn scope<'o>(&self, obj: &'o InstanceRegistration) -> Option<Scope<'o>> {
        Some(Scope::stack(obj.spec.stack_id()))
    }

    fn registered_as<'f>(&self, facts: &'f Facts) -> Option<&'f str> {
        facts.own_ref::<Findings>()?.registered_as.as_deref()
    }

    fn run<'a>(
        &'a self,
        step: Step,
        obj: &'a InstanceRegistration,
        ctx: &'a Context,
        facts: &'a mut Facts,
        status: &'a mut InstanceRegistrationStatus,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match step {
                Step::Target => self.target(obj, ctx, facts),
                Step::Credentials => self.credentials(obj),
                Step::Agent => self.agent(obj, ctx, facts, status).await,
                _ => self.registered(obj, status),
            }
        })
    }

    fn undo<'a>(
        &'a self,
        obj: &'a InstanceRegistration,
        _ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Undone, String>> {
        let removed = self
            .entries
            .lock()
            .unwrap()
            .remove(&obj.uid().unwrap_or_default());
        let said = format!("removed {} ledger entry", usize::from(removed.is_some()));
        Box::pin(async move { Ok(Undone::new(&[said], removed.is_some())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::types;
    use kube::api::{Api, DeleteParams, PostParams};
    use registrar_local_env::control_plane::ControlPlane;
    use registrar_local_env::ssh_hosts::{self, SshHost};
    use std::time::Duration;

    const LEDGER_ID: &str = "1ed6e000-0000-4000-8000-000000000001";

    async fn namespace(client: &kube::Client, name: &str, allowed: &str, key: &str) -> String {
        let ns = format!("{name}-{}", std::process::id());
        let yaml = format!(
            "{{apiVersion: v1, kind: Namespace, metadata: {{name: {ns}, annotations: \
             {{registrar.dev/allowed-stacks: '{allowed}'}}}}}}"
        );
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_yaml::from_str(&yaml).unwrap(),
        )
        .await
        .unwrap();
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "key"}, "type": "kubernetes.io/ssh-auth",
            "stringData": {"ssh-privatekey": key}});
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(secret).unwrap(),
            )
            .await
            .unwrap();
        ns
    }

    async fn create(client: &kube::Client, ns: &str, name: &str, host: &SshHost) {
        let yaml = format!(
            "{{apiVersion: registrar.dev/v1alpha1, kind: InstanceRegistration, metadata: \
             {{name: {name}, annotations: {{{ANNOTATION}: ledger}}}}, spec: {{stackId: \
             {LEDGER_ID}, infrastructureClass: on-premises, target: '{}', ssh: {{username: {}, \
             port: {}, privateKeySecretRef: {{name: key}}}}}}}}",
            host.address(),
            ssh_hosts::USER,
            host.port()
        );
        Api::<InstanceRegistration>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_yaml::from_str(&yaml).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Waits for `name`'s Ready condition to have `reason`; returns its message.
    async fn ready_reason(client: &kube::Client, ns: &str, name: &str, reason: &str) -> String {
        let api = Api::<InstanceRegistration>::namespaced(client.clone(), ns);
        for _ in 0..600 {
            let obj = api.get(name).await.unwrap();
            let status = obj.status.unwrap_or_default();
            if let Some(ready) = crate::conditions::get(&status.conditions, types::READY)
                && ready.reason == reason
            {
                return ready.message.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{ns}/{name} never became {reason}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_third_service_goes_through_the_whole_pipeline_behind_the_seam() {
        crate::install_crypto_provider();
        let client = ControlPlane::shared().client().await;
        let dir = tempfile::tempdir().unwrap();
        let public = ssh_hosts::generate_key(&dir.path().join("k"), "ed25519", "", "t").unwrap();
        let key = std::fs::read_to_string(dir.path().join("k")).unwrap();
        let host = SshHost::start("ledger");
        host.authorize(&public);
        let ours = namespace(&client, "ledger", LEDGER_ID, &key).await;
        let refused = namespace(&client, "no-ledger", "", &key).await;
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(crate::controller::run_with(
            client.clone(),
            crate::aws::Aws::new(config, None, None),
            Box::new(WithLedger::default()),
            Default::default(),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
            Default::default(),
            async move {
                let _ = stopped.await;
            },
        ));

        create(&client, &ours, "first", &host).await;
        ready_reason(&client, &ours, "first", reasons::SUCCEEDED).await;
        let handed = std::fs::read_to_string(host.dir().join("ledger-token")).unwrap();
        assert!(
            handed.starts_with("token'$(touch CANARY)-"),
            "quoted intact"
        );
        // The same host, named again: Conflict, naming the first.
        create(&client, &ours, "second", &host).await;
        let said = ready_reason(&client, &ours, "second", reasons::CONFLICT).await;
        assert!(said.contains(&format!("{ours}/first")), "{said}");
        // A namespace not allowed the ledger: refused before anything.
        create(&client, &refused, "third", &host).await;
        ready_reason(&client, &refused, "third", reasons::STACK_NOT_ALLOWED).await;
        assert_eq!(
            LEDGER.entries.lock().unwrap().len(),
            1,
            "only the first has an entry"
        );
        // Deleting the first undoes its entry through the service, then lets the object go.
        let api = Api::<InstanceRegistration>::namespaced(client.clone(), &ours);
        api.delete("first", &DeleteParams::default()).await.unwrap();
        for _ in 0..600 {
            if api.get_opt("first").await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            api.get_opt("first").await.unwrap().is_none(),
            "the finalizer went"
        );
        assert!(
            LEDGER.entries.lock().unwrap().is_empty(),
            "the entry was undone"
        );
        let _ = stop.send(());
        controller.await.unwrap().unwrap();
    }
}
