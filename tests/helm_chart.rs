//! The Helm chart (`charts/instance-registrar`): `helm lint`; what `helm template` renders, and
//! that the real kube-apiserver accepts it; and the controller run with the token of the chart's
//! ServiceAccount and the settings of the chart's Deployment, so that the API server's own RBAC
//! shows that the chart grants what the controller needs, and that a call beyond it is refused.
//!
//! helm is built from its Go module by `tests/helm/build.sh` (once, cached), as the control plane
//! is. There is no kubelet: the Deployment is accepted but never runs; the tests run the
//! controller as its Pod would.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;
use support::control_plane::free_port;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, condition, eventually, host_whose_install_fails,
    namespace, on_premises, on_premises_at, secret, ssh_keypair, wait_gone, wait_reason,
};

/// The chart's directory.
fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/instance-registrar")
}

/// The helm binary, built on first use by `tests/helm/build.sh`.
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/helm/build.sh");
        assert!(out.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Runs helm with its own (empty) configuration, cache and data directories.
fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("instance-registrar-helm-{}", std::process::id()));
    Command::new(helm_binary())
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running helm")
}

fn stdout_of(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `helm template` made of the chart.
struct Rendered {
    yaml: String,
    docs: Vec<serde_yaml::Value>,
}

impl Rendered {
    /// Every object of `kind`, as `K`.
    fn all<K: DeserializeOwned>(&self, kind: &str) -> Vec<K> {
        self.docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .map(|d| serde_yaml::from_value(d.clone()).unwrap())
            .collect()
    }

    /// The one object of `kind`, as `K`.
    fn one<K: DeserializeOwned>(&self, kind: &str) -> K {
        let mut all = self.all(kind);
        assert_eq!(all.len(), 1, "{kind} objects: {}", self.yaml);
        all.remove(0)
    }

    /// `Kind/name` (or `Kind/namespace/name`) of every object.
    fn objects(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|d| {
                let kind = d["kind"].as_str().unwrap_or_default();
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                match d["metadata"]["namespace"].as_str() {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                }
            })
            .collect()
    }

    /// The object of `kind` named `name`.
    fn object(&self, kind: &str, name: &str) -> &serde_yaml::Value {
        self.docs
            .iter()
            .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{}", self.yaml))
    }

    /// The rules of the (Cluster)Role `name`.
    fn rules(&self, kind: &str, name: &str) -> Vec<PolicyRule> {
        serde_yaml::from_value(self.object(kind, name)["rules"].clone()).unwrap()
    }

    /// The controller's container.
    fn container(&self) -> Container {
        let deployment: Deployment = self.one("Deployment");
        let mut containers = deployment.spec.unwrap().template.spec.unwrap().containers;
        assert_eq!(containers.len(), 1);
        containers.remove(0)
    }

    /// The container's environment variables with a plain value, and the field each other one
    /// is set from (`fieldRef:metadata.name`).
    fn env(&self) -> Vec<(String, String)> {
        self.container()
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let value = match (e.value, e.value_from) {
                    (Some(v), None) => v,
                    (None, Some(from)) => {
                        format!("fieldRef:{}", from.field_ref.expect("fieldRef").field_path)
                    }
                    other => panic!("env {}: {other:?}", e.name),
                };
                (e.name, value)
            })
            .collect()
    }

    fn env_value(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// `helm template <release> <chart> -n <namespace> --set <sets>…`, parsed.
fn render(release: &str, namespace: &str, sets: &[String]) -> Rendered {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    let yaml = stdout_of(&format!("helm {}", args.join(" ")), &helm(&args));
    let docs = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &serde_yaml::Value| !doc.is_null())
        .collect();
    Rendered { yaml, docs }
}

fn sets(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// `helm template r <chart> --set <sets>…`, which must fail: its error output.
fn render_refused(sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "r", chart.to_str().unwrap()];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "helm {} was not refused:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `helm install <release> <chart> -n <namespace> --set <sets>…` against the control plane.
fn helm_install(cp: &ControlPlane, release: &str, namespace: &str, sets: &[String]) -> Output {
    let chart = chart();
    let kubeconfig = cp.kubeconfig.to_string_lossy();
    let mut args = vec![
        "install",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kubeconfig",
        &kubeconfig,
    ];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    helm(&args)
}

/// The labels that select release `release`'s Pods.
fn selector_labels(release: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "instance-registrar".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), release.to_owned()),
    ])
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |s: &[&str]| s.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        verbs: strings(verbs),
        non_resource_urls: None,
    }
}

/// The controller's rules, wherever it watches: what it calls and nothing else.
fn controller_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["registrar.dev"],
            &["instanceregistrations"],
            &[],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["registrar.dev"],
            &["instanceregistrations/status"],
            &[],
            &["patch"],
        ),
        rule(
            &[""],
            &["secrets"],
            &[],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(&["events.k8s.io"], &["events"], &[], &["create", "patch"]),
    ]
}

/// The rule that reads the Namespaces' annotations (which stacks each may use): `names` are the
/// namespaces it is confined to (none: every namespace).
fn namespaces_rule(names: &[&str]) -> PolicyRule {
    rule(&[""], &["namespaces"], names, &["list", "watch"])
}

/// The cluster's ID: the kube-system Namespace's UID.
fn cluster_id_rule() -> PolicyRule {
    rule(&[""], &["namespaces"], &["kube-system"], &["get"])
}

#[test]
fn helm_lint_passes_cluster_wide_and_namespaced_with_leader_election() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for extra in [
        &[][..],
        &[
            "--set",
            "watchNamespace=x",
            "--set",
            "leaderElection.enabled=true",
        ][..],
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "serviceAccount.roleArn=arn:aws:iam::123456789012:role/instance-registrar",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend(extra);
        let out = stdout_of(&format!("helm {}", args.join(" ")), &helm(&args));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn the_charts_crd_is_the_one_in_crds() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/instanceregistration.yaml"),
    )
    .unwrap();
    // What helm installs: the chart's crds/ as helm reads it (it follows the symlink).
    let chart = chart();
    let shown = stdout_of(
        "helm show crds",
        &helm(&["show", "crds", chart.to_str().unwrap()]),
    );
    assert!(
        shown.trim_end() == committed.trim_end(),
        "charts/instance-registrar/crds/ differs from crds/instanceregistration.yaml: \
         make it a symlink to ../../../crds/instanceregistration.yaml again"
    );
}

#[test]
fn the_deployment_runs_restricted_with_probes_and_the_controllers_settings() {
    let chart_yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml's appVersion is Cargo.toml's version"
    );
    let rendered = render("r", "sys", &[]);
    let deployment: Deployment = rendered.one("Deployment");
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let pod_security = pod.security_context.unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(
        pod_security.seccomp_profile.unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("r-instance-registrar")
    );

    let container = rendered.container();
    assert_eq!(
        container.image.as_deref(),
        Some(concat!(
            "ghcr.io/instance-registrar/instance-registrar:",
            env!("CARGO_PKG_VERSION")
        ))
    );
    assert_eq!(container.args, Some(vec!["run".to_owned()]));
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, None);
    assert_eq!(
        security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let resources = container.resources.clone().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());

    // The probes reach the port the controller serves them on; the metrics port is named.
    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no port {name}"))
            .container_port
    };
    for (probe, path) in [
        (container.liveness_probe.clone(), "/healthz"),
        (container.readiness_probe.clone(), "/readyz"),
    ] {
        let get = probe.unwrap().http_get.unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            serde_json::json!("probes")
        );
    }
    assert_eq!(
        rendered.env_value("PROBE_ADDRESS"),
        Some(format!("0.0.0.0:{}", port("probes")))
    );
    assert_eq!(
        rendered.env_value("METRICS_ADDRESS"),
        Some(format!("0.0.0.0:{}", port("metrics")))
    );

    // Settings reach the controller as the environment variables its flags read.
    let env = rendered.env();
    let expected = [
        ("POD_NAME", "fieldRef:metadata.name"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("UNANNOTATED_NAMESPACES", "any"),
        ("RECONCILE_CONCURRENCY", "64"),
        ("SSH_CONCURRENCY", "64"),
        ("RESYNC_SECONDS", "600"),
        ("REGISTRATION_TIMEOUT_SECONDS", "900"),
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("METRICS_ADDRESS", "0.0.0.0:8080"),
        ("PROBE_ADDRESS", "0.0.0.0:8081"),
        ("LEADER_ELECTION", "false"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(env, expected, "the default environment");

    let set = render(
        "r",
        "sys",
        &sets(&[
            "watchNamespace=hosts",
            "tenancy.unannotatedNamespaces=none",
            "concurrency=4",
            "sshConcurrency=2",
            "sshNamespaceShare=1",
            "log.format=human",
            "log.level=debug",
            "leaderElection.enabled=true",
            "aws.region=eu-west-1",
            "aws.endpoints.opsworks=http://127.0.0.1:1",
            "aws.endpoints.iam=http://127.0.0.1:2",
            "aws.endpoints.ec2=http://127.0.0.1:3",
            "aws.endpoints.sts=http://127.0.0.1:4",
            "aws.endpoints.ssm=http://127.0.0.1:5",
            "aws.ssmSetupUrl=http://127.0.0.1:6/{platform}_{arch}/ssm-setup-cli",
            "aws.iamPermissionsBoundary=arn:aws:iam::123456789012:policy/OpsWorksAgentBoundary",
            "aws.checkHostEndpoints=false",
            "audit.seconds=60",
            "audit.deleteOrphans=true",
            "agentRepair.afterSeconds=120",
            "aws.callsPerSecond=7.5",
            "image.tag=dev",
        ]),
    );
    for (name, value) in [
        ("WATCH_NAMESPACE", "hosts"),
        ("UNANNOTATED_NAMESPACES", "none"),
        ("RECONCILE_CONCURRENCY", "4"),
        ("SSH_CONCURRENCY", "2"),
        ("SSH_NAMESPACE_SHARE", "1"),
        ("LOG_FORMAT", "human"),
        ("LOG_LEVEL", "debug"),
        ("LEADER_ELECTION", "true"),
        ("LEADER_ELECTION_NAMESPACE", "sys"),
        ("LEADER_ELECTION_LEASE_NAME", "instance-registrar"),
        ("LEADER_ELECTION_LEASE_SECONDS", "15"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ENDPOINT_URL_OPSWORKS", "http://127.0.0.1:1"),
        ("AWS_ENDPOINT_URL_IAM", "http://127.0.0.1:2"),
        ("AWS_ENDPOINT_URL_EC2", "http://127.0.0.1:3"),
        ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4"),
        ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:5"),
        (
            "REGISTRAR_SSM_SETUP_URL",
            "http://127.0.0.1:6/{platform}_{arch}/ssm-setup-cli",
        ),
        (
            "IAM_PERMISSIONS_BOUNDARY",
            "arn:aws:iam::123456789012:policy/OpsWorksAgentBoundary",
        ),
        ("CHECK_HOST_ENDPOINTS", "false"),
        ("AUDIT_SECONDS", "60"),
        ("DELETE_ORPHANS", "true"),
        ("AGENT_REPAIR_AFTER_SECONDS", "120"),
        ("AWS_CALLS_PER_SECOND", "7.5"),
    ] {
        assert_eq!(set.env_value(name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(
        set.container().image.as_deref(),
        Some("ghcr.io/instance-registrar/instance-registrar:dev")
    );
}

#[test]
fn every_setting_the_chart_passes_is_an_environment_variable_of_run() {
    let help = Command::new(env!("CARGO_BIN_EXE_instance-registrar"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = stdout_of("instance-registrar run --help", &help);
    let rendered = render(
        "r",
        "sys",
        &sets(&[
            "watchNamespace=hosts",
            "leaderElection.enabled=true",
            "sshNamespaceShare=8",
            "aws.iamPermissionsBoundary=arn:aws:iam::123456789012:policy/OpsWorksAgentBoundary",
            "aws.checkHostEndpoints=false",
            "audit.seconds=0",
            "audit.deleteOrphans=true",
            "agentRepair.afterSeconds=0",
            "aws.callsPerSecond=0",
        ]),
    );
    for (name, _) in rendered.env() {
        // The AWS SDK reads AWS_*; the leader election namespace defaults to POD_NAMESPACE.
        if name.starts_with("AWS_") || name == "POD_NAMESPACE" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which `instance-registrar run` does not read:\n{help}"
        );
    }
}

#[test]
fn rbac_is_a_cluster_role_only_without_a_watch_namespace_and_leases_only_with_leader_election() {
    let wide = render("r", "sys", &[]);
    let mut wide_rules = controller_rules();
    wide_rules.push(namespaces_rule(&[]));
    wide_rules.push(cluster_id_rule());
    assert_eq!(
        wide.rules("ClusterRole", "r-instance-registrar"),
        wide_rules
    );
    assert!(wide.all::<serde_yaml::Value>("Role").is_empty());
    assert!(wide.all::<serde_yaml::Value>("RoleBinding").is_empty());
    let binding: serde_yaml::Value = wide.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "r-instance-registrar");
    assert_eq!(binding["subjects"][0]["name"], "r-instance-registrar");
    assert_eq!(binding["subjects"][0]["namespace"], "sys");

    let scoped = render(
        "r",
        "sys",
        &sets(&["watchNamespace=hosts", "leaderElection.enabled=true"]),
    );
    // Nothing cluster-wide (the CRD is in crds/, not here) but reading the one watched
    // Namespace, which is cluster-scoped, and the users' roles (ClusterRoles, to aggregate into
    // the built-in ones; unless turned off): every other object lives in a namespace.
    let reads_namespace = "r-instance-registrar-sys-namespace";
    let user_roles = [
        "r-instance-registrar-sys-view",
        "r-instance-registrar-sys-edit",
    ];
    for doc in &scoped.docs {
        assert!(
            doc["metadata"]["namespace"].as_str().is_some()
                || doc["metadata"]["name"] == reads_namespace
                || (doc["kind"] == "ClusterRole"
                    && user_roles.iter().any(|r| doc["metadata"]["name"] == *r)),
            "cluster-scoped object in the namespaced variant: {:?}",
            scoped.objects()
        );
    }
    let without_user_roles = render(
        "r",
        "sys",
        &sets(&["watchNamespace=hosts", "rbac.userRoles.create=false"]),
    );
    let cluster_scoped: Vec<String> = without_user_roles
        .objects()
        .into_iter()
        .filter(|o| o.matches('/').count() == 1)
        .collect();
    assert_eq!(
        cluster_scoped,
        [
            format!("ClusterRole/{reads_namespace}"),
            format!("ClusterRoleBinding/{reads_namespace}")
        ]
    );
    assert_eq!(
        scoped.rules("ClusterRole", reads_namespace),
        vec![namespaces_rule(&["hosts"]), cluster_id_rule()]
    );
    let binding: serde_yaml::Value = scoped.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], reads_namespace);
    assert_eq!(binding["subjects"][0]["name"], "r-instance-registrar");
    assert_eq!(binding["subjects"][0]["namespace"], "sys");
    assert_eq!(
        scoped.rules("Role", "r-instance-registrar"),
        controller_rules()
    );
    assert!(
        scoped
            .objects()
            .contains(&"Role/hosts/r-instance-registrar".to_owned()),
        "{:?}",
        scoped.objects()
    );
    assert!(
        scoped
            .objects()
            .contains(&"RoleBinding/hosts/r-instance-registrar".to_owned())
    );
    assert_eq!(
        scoped.rules("Role", "r-instance-registrar-leader-election"),
        vec![
            rule(&["coordination.k8s.io"], &["leases"], &[], &["create"]),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["instance-registrar"],
                &["get", "update"]
            ),
        ]
    );
    assert!(
        scoped
            .objects()
            .contains(&"Role/sys/r-instance-registrar-leader-election".to_owned())
    );
    let lease_elsewhere = render(
        "r",
        "sys",
        &sets(&[
            "leaderElection.enabled=true",
            "leaderElection.namespace=leases",
            "leaderElection.leaseName=other",
        ]),
    );
    assert!(
        lease_elsewhere
            .objects()
            .contains(&"RoleBinding/leases/r-instance-registrar-leader-election".to_owned())
    );
    assert_eq!(
        lease_elsewhere
            .env_value("LEADER_ELECTION_NAMESPACE")
            .as_deref(),
        Some("leases")
    );
    assert_eq!(
        lease_elsewhere
            .env_value("LEADER_ELECTION_LEASE_NAME")
            .as_deref(),
        Some("other")
    );

    let none = render("r", "sys", &sets(&["rbac.create=false"]));
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(none.all::<serde_yaml::Value>(kind).is_empty(), "{kind}");
    }
}

#[test]
fn optional_objects_follow_their_values() {
    let defaults = render("r", "sys", &[]);
    let kinds: Vec<String> = defaults
        .docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment"
        ],
        "no ServiceMonitor, PodDisruptionBudget, NetworkPolicy or IRSA annotation by default"
    );
    let account: ServiceAccount = defaults.one("ServiceAccount");
    assert_eq!(account.metadata.annotations, None);
    let deployment: Deployment = defaults.one("Deployment");
    let strategy = deployment.spec.unwrap().strategy.unwrap();
    assert_eq!(
        strategy.type_.as_deref(),
        Some("Recreate"),
        "without leader election two Pods must never overlap"
    );

    let role = "arn:aws:iam::123456789012:role/instance-registrar";
    let all = render(
        "r",
        "sys",
        &sets(&[
            "replicaCount=2",
            "leaderElection.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            &format!("serviceAccount.roleArn={role}"),
        ]),
    );
    let account: ServiceAccount = all.one("ServiceAccount");
    assert_eq!(
        account
            .metadata
            .annotations
            .unwrap()
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(role)
    );
    let monitor: serde_yaml::Value = all.one("ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service: serde_yaml::Value = all.one("Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(all.all::<serde_yaml::Value>("PodDisruptionBudget").len(), 1);
    let deployment: Deployment = all.one("Deployment");
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );

    // Two replicas that would both act are refused.
    let refused = render_refused(&["replicaCount=2"]);
    assert!(
        refused.contains("needs leaderElection.enabled=true"),
        "{refused}"
    );
}

#[test]
fn the_pod_disruption_budget_lets_a_drain_evict_a_single_replica_and_keeps_one_of_more() {
    let budget = |values: &[&str]| -> PodDisruptionBudgetSpec {
        let rendered = render("r", "sys", &sets(values));
        let budget: PodDisruptionBudget = rendered.one("PodDisruptionBudget");
        let spec = budget.spec.unwrap();
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels,
            Some(selector_labels("r")),
            "{values:?}"
        );
        spec
    };
    // One replica: the budget allows its eviction, so a node drain goes on.
    let one = budget(&["podDisruptionBudget.enabled=true"]);
    assert_eq!(one.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(one.min_available, None);
    // More: one stays up through a drain.
    let two = budget(&["replicaCount=2", "leaderElection.enabled=true"]);
    assert_eq!(two.min_available, Some(IntOrString::Int(1)));
    assert_eq!(two.max_unavailable, None);
    let three = budget(&[
        "replicaCount=3",
        "leaderElection.enabled=true",
        "podDisruptionBudget.minAvailable=2",
    ]);
    assert_eq!(three.min_available, Some(IntOrString::Int(2)));
    // A budget that no eviction could meet is refused.
    let refused = render_refused(&[
        "replicaCount=2",
        "leaderElection.enabled=true",
        "podDisruptionBudget.minAvailable=2",
    ]);
    assert!(
        refused.contains("podDisruptionBudget.minAvailable (2) must be less than replicaCount (2)"),
        "{refused}"
    );
    // None by default (one replica, not asked for).
    assert!(
        render("r", "sys", &[])
            .all::<serde_yaml::Value>("PodDisruptionBudget")
            .is_empty()
    );
}

#[test]
fn the_values_schema_refuses_a_wrong_value_naming_it_and_passes_the_defaults() {
    // The defaults pass, and so do the globals a parent chart hands its subcharts.
    render("r", "sys", &[]);
    render(
        "r",
        "sys",
        &sets(&["global.imageRegistry=registry.example"]),
    );
    for (set, says) in [
        (
            "concurrency=abc",
            "at '/concurrency': got string, want integer",
        ),
        (
            "concurency=4",
            "additional properties 'concurency' not allowed",
        ),
        ("concurrency=2000", "at '/concurrency': maximum"),
        ("sshConcurrency=0", "at '/sshConcurrency': minimum"),
        (
            "log.format=xml",
            "at '/log/format': value must be one of 'json', 'human'",
        ),
        (
            "tenancy.unannotatedNamespaces=some",
            "at '/tenancy/unannotatedNamespaces': value must be one of 'any', 'none'",
        ),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        (
            "leaderElection.enable=true",
            "at '/leaderElection': additional properties 'enable' not allowed",
        ),
        (
            "leaderElection.enabled=yes",
            "at '/leaderElection/enabled': got string, want boolean",
        ),
        ("metrics.port=70000", "at '/metrics/port': maximum"),
        (
            "aws.iamPermissionsBoundary=arn:aws:iam::123456789012:role/x",
            "at '/aws/iamPermissionsBoundary'",
        ),
        (
            "aws.endpoints.opswork=https://opsworks.example",
            "at '/aws/endpoints': additional properties 'opswork' not allowed",
        ),
        ("aws.endpoints.ssm=ssm.example", "at '/aws/endpoints/ssm'"),
        (
            "serviceAccount.roleArn=instance-registrar",
            "at '/serviceAccount/roleArn'",
        ),
        ("watchNamespace=Hosts", "at '/watchNamespace'"),
        (
            "networkPolicy.ssh.ports[0]=ssh",
            "at '/networkPolicy/ssh/ports/0': got string, want integer",
        ),
        (
            "networkPolicy.aws.cidrs[0]=aws",
            "at '/networkPolicy/aws/cidrs/0'",
        ),
        (
            "extraVolumeMounts[0].name=ca",
            "at '/extraVolumeMounts/0': missing property 'mountPath'",
        ),
    ] {
        let refused = render_refused(&[set]);
        assert!(
            refused.contains("values don't meet the specifications of the schema")
                && refused.contains(says),
            "--set {set}: expected {says:?} in:\n{refused}"
        );
    }
}

/// Whether a validation rule anywhere in `schema` sets `field`.
fn a_validation_rule_sets(schema: &serde_yaml::Value, field: &str) -> bool {
    match schema {
        serde_yaml::Value::Mapping(map) => map.iter().any(|(key, value)| {
            let rules = key == "x-kubernetes-validations"
                && value
                    .as_sequence()
                    .is_some_and(|rules| rules.iter().any(|r| r.get(field).is_some()));
            rules || a_validation_rule_sets(value, field)
        }),
        serde_yaml::Value::Sequence(items) => {
            items.iter().any(|v| a_validation_rule_sets(v, field))
        }
        _ => false,
    }
}

#[test]
fn the_chart_asks_for_the_kubernetes_version_its_crds_validation_rules_need() {
    // The CRD's validation rules say which field failed and why (`fieldPath`, `reason`): fields
    // kube-apiserver has from 1.28 on.
    let crd: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/instanceregistration.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(a_validation_rule_sets(&crd, "fieldPath") && a_validation_rule_sets(&crd, "reason"));
    let chart_yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["kubeVersion"].as_str(), Some(">=1.28.0-0"));

    let chart = chart();
    for (version, accepted) in [
        ("v1.27.16", false),
        ("v1.28.0", true),
        ("v1.28.15-eks-7f9249a", true),
        ("v1.35.4", true),
    ] {
        let out = helm(&[
            "template",
            "r",
            chart.to_str().unwrap(),
            "--kube-version",
            version,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), accepted, "{version}: {stderr}");
        if !accepted {
            assert!(
                stderr.contains(&format!(
                    "chart requires kubeVersion: >=1.28.0-0 which is incompatible with Kubernetes {version}"
                )),
                "{stderr}"
            );
        }
    }
}

#[test]
fn the_users_roles_read_or_manage_instance_registrations_and_aggregate_into_view_edit_and_admin() {
    let ir = "instanceregistrations";
    let status = "instanceregistrations/status";
    let rendered = render("r", "sys", &[]);
    assert_eq!(
        rendered.rules("ClusterRole", "r-instance-registrar-view"),
        vec![rule(
            &["registrar.dev"],
            &[ir, status],
            &[],
            &["get", "list", "watch"]
        )]
    );
    assert_eq!(
        rendered.rules("ClusterRole", "r-instance-registrar-edit"),
        vec![
            rule(
                &["registrar.dev"],
                &[ir],
                &[],
                &[
                    "get",
                    "list",
                    "watch",
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection"
                ]
            ),
            rule(
                &["registrar.dev"],
                &[status],
                &[],
                &["get", "list", "watch"]
            ),
        ]
    );
    let aggregates_to = |rendered: &Rendered, role: &str| -> Vec<String> {
        let labels = &rendered.object("ClusterRole", role)["metadata"]["labels"];
        labels
            .as_mapping()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| {
                let to = k
                    .as_str()?
                    .strip_prefix("rbac.authorization.k8s.io/aggregate-to-")?;
                assert_eq!(v.as_str(), Some("true"), "{role}: {k:?}");
                Some(to.to_owned())
            })
            .collect()
    };
    // view's rules reach view, edit and admin; edit's, edit and admin only.
    assert_eq!(
        aggregates_to(&rendered, "r-instance-registrar-view"),
        ["view", "edit", "admin"]
    );
    assert_eq!(
        aggregates_to(&rendered, "r-instance-registrar-edit"),
        ["edit", "admin"]
    );

    let unaggregated = render("r", "sys", &sets(&["rbac.userRoles.aggregate=false"]));
    for role in ["r-instance-registrar-view", "r-instance-registrar-edit"] {
        assert!(aggregates_to(&unaggregated, role).is_empty(), "{role}");
    }
    let none = render("r", "sys", &sets(&["rbac.userRoles.create=false"]));
    assert_eq!(
        none.all::<serde_yaml::Value>("ClusterRole").len(),
        1,
        "only the controller's: {:?}",
        none.objects()
    );
}

/// A NetworkPolicy rule as its ports (`TCP/22`) and its peers (an ipBlock's CIDR, or the peer as
/// JSON).
fn policy_rule(
    ports: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
    peers: Option<Vec<NetworkPolicyPeer>>,
) -> (Vec<String>, Vec<String>) {
    let ports = ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let port = match p.port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s,
                None => "any".to_owned(),
            };
            format!("{}/{port}", p.protocol.as_deref().unwrap_or("TCP"))
        })
        .collect();
    let peers = peers
        .unwrap_or_default()
        .into_iter()
        .map(|peer| match &peer.ip_block {
            Some(block) if peer.namespace_selector.is_none() && peer.pod_selector.is_none() => {
                block.cidr.clone()
            }
            _ => serde_json::to_string(&peer).unwrap(),
        })
        .collect();
    (ports, peers)
}

/// The rules of a NetworkPolicy: ingress, then egress.
type PolicyRules = (
    Vec<(Vec<String>, Vec<String>)>,
    Vec<(Vec<String>, Vec<String>)>,
);

fn policy_rules(policy: &NetworkPolicy) -> PolicyRules {
    let spec = policy.spec.clone().unwrap();
    let ingress = spec
        .ingress
        .unwrap_or_default()
        .into_iter()
        .map(|r| policy_rule(r.ports, r.from))
        .collect();
    let egress = spec
        .egress
        .unwrap_or_default()
        .into_iter()
        .map(|r| policy_rule(r.ports, r.to))
        .collect();
    (ingress, egress)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_network_policy_lets_in_metrics_and_probes_and_out_dns_the_api_server_ssh_and_aws() {
    assert!(
        render("r", "sys", &[])
            .all::<serde_yaml::Value>("NetworkPolicy")
            .is_empty(),
        "none by default"
    );
    let kube_dns = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    })
    .to_string();
    let anywhere = strings(&["0.0.0.0/0", "::/0"]);

    let defaults = render("r", "sys", &sets(&["networkPolicy.enabled=true"]));
    let policy: NetworkPolicy = defaults.one("NetworkPolicy");
    let spec = policy.spec.clone().unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels,
        Some(selector_labels("r"))
    );
    assert_eq!(
        spec.policy_types,
        Some(strings(&["Ingress", "Egress"])),
        "both directions are confined"
    );
    let (ingress, egress) = policy_rules(&policy);
    assert_eq!(
        ingress,
        [
            (strings(&["TCP/8080"]), vec![]),
            (strings(&["TCP/8081"]), vec![])
        ]
    );
    assert_eq!(
        egress,
        [
            (strings(&["UDP/53", "TCP/53"]), vec![kube_dns.clone()]),
            (strings(&["TCP/443", "TCP/6443"]), anywhere.clone()),
            (strings(&["TCP/443"]), anywhere.clone()),
            (strings(&["TCP/22"]), anywhere.clone()),
        ]
    );

    let monitoring = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    })
    .to_string();
    let set = render(
        "r",
        "sys",
        &sets(&[
            "networkPolicy.enabled=true",
            "metrics.port=9090",
            "probes.port=9091",
            r"networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=monitoring",
            "networkPolicy.probes.from[0].ipBlock.cidr=10.0.0.0/16",
            "networkPolicy.apiServer.cidrs={172.20.0.10/32}",
            "networkPolicy.apiServer.ports={443}",
            "networkPolicy.ssh.cidrs={10.0.0.0/8,192.168.0.0/16}",
            "networkPolicy.ssh.ports={22,2222}",
            "networkPolicy.aws.cidrs={10.1.0.0/16}",
            "networkPolicy.aws.ports={443,8080}",
            "networkPolicy.extraEgress[0].to[0].ipBlock.cidr=169.254.170.23/32",
            "networkPolicy.extraEgress[0].ports[0].port=80",
        ]),
    );
    let (ingress, egress) = policy_rules(&set.one("NetworkPolicy"));
    assert_eq!(
        ingress,
        [
            (strings(&["TCP/9090"]), vec![monitoring]),
            (strings(&["TCP/9091"]), strings(&["10.0.0.0/16"]))
        ]
    );
    assert_eq!(
        egress,
        [
            (strings(&["UDP/53", "TCP/53"]), vec![kube_dns]),
            (strings(&["TCP/443"]), strings(&["172.20.0.10/32"])),
            (strings(&["TCP/443", "TCP/8080"]), strings(&["10.1.0.0/16"])),
            (
                strings(&["TCP/22", "TCP/2222"]),
                strings(&["10.0.0.0/8", "192.168.0.0/16"])
            ),
            (strings(&["TCP/80"]), strings(&["169.254.170.23/32"])),
        ]
    );
}

#[test]
fn extra_volumes_mounts_and_environment_reach_the_controllers_pod() {
    let pod_of = |rendered: &Rendered| {
        let deployment: Deployment = rendered.one("Deployment");
        deployment.spec.unwrap().template.spec.unwrap()
    };
    let defaults = render("r", "sys", &[]);
    assert_eq!(pod_of(&defaults).volumes, None);
    assert_eq!(defaults.container().volume_mounts, None);

    // A private AWS-compatible endpoint's CA, from a ConfigMap, trusted besides the image's.
    let cas = "/etc/ssl/certs:/etc/instance-registrar/ca";
    let rendered = render(
        "r",
        "sys",
        &sets(&[
            "extraVolumes[0].name=aws-ca",
            "extraVolumes[0].configMap.name=aws-ca",
            "extraVolumeMounts[0].name=aws-ca",
            "extraVolumeMounts[0].mountPath=/etc/instance-registrar/ca",
            "extraVolumeMounts[0].readOnly=true",
            "extraEnv[0].name=SSL_CERT_DIR",
            &format!("extraEnv[0].value={cas}"),
        ]),
    );
    let volumes = pod_of(&rendered).volumes.unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].name, "aws-ca");
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some("aws-ca")
    );
    let mounts = rendered.container().volume_mounts.unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].name, "aws-ca");
    assert_eq!(mounts[0].mount_path, "/etc/instance-registrar/ca");
    assert_eq!(mounts[0].read_only, Some(true));
    // Added to the chart's own variables, not instead of them.
    let env = rendered.env();
    assert_eq!(
        env.last(),
        Some(&("SSL_CERT_DIR".to_owned(), cas.to_owned()))
    );
    assert_eq!(env[..env.len() - 1], defaults.env()[..]);
}

#[tokio::test]
async fn every_variant_is_accepted_by_the_api_server_and_its_pod_by_the_restricted_policy() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let hosts = namespace(&client, "chart-apply-hosts").await;
    for (release, values) in [
        ("apply-wide", vec![]),
        (
            "apply-scoped",
            vec![
                format!("watchNamespace={hosts}"),
                "replicaCount=2".into(),
                "leaderElection.enabled=true".into(),
                "serviceAccount.roleArn=arn:aws:iam::123456789012:role/x".into(),
                "aws.region=eu-west-1".into(),
                "aws.endpoints.opsworks=https://opsworks.example".into(),
                "metrics.service.type=NodePort".into(),
            ],
        ),
    ] {
        let ns = restricted_namespace(cp, &client, release).await;
        let rendered = render(release, &ns, &values);
        let out = cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &rendered.yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{release}: {stderr}");
        assert!(!stderr.contains("PodSecurity"), "{release}: {stderr}");
        // Every object rendered is there.
        for object in rendered.objects() {
            let parts: Vec<&str> = object.split('/').collect();
            let (kind, ns, name) = match parts[..] {
                [kind, ns, name] => (kind, Some(ns), name),
                [kind, name] => (kind, None, name),
                _ => unreachable!(),
            };
            let mut args = vec!["get", kind, name, "-o", "name"];
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            cp.kubectl_ok(&args).unwrap();
        }
        // No kubelet runs it, but the Pod the Deployment would make is admitted in a namespace
        // that enforces the restricted Pod Security Standard.
        let out = create_pod_of(cp, &rendered, &ns, release);
        assert!(
            out.status.success(),
            "{release}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The enforcement is real: a Pod that may escalate its privileges is refused.
    let ns = restricted_namespace(cp, &client, "apply-lax").await;
    let lax = render(
        "apply-lax",
        &ns,
        &sets(&["securityContext.allowPrivilegeEscalation=true"]),
    );
    let out = create_pod_of(cp, &lax, &ns, "apply-lax");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new namespace that enforces (and warns about) the restricted Pod Security Standard.
async fn restricted_namespace(cp: &ControlPlane, client: &kube::Client, prefix: &str) -> String {
    let ns = namespace(client, prefix).await;
    cp.kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ])
    .unwrap();
    ns
}

/// Creates a Pod `name` in `ns` from the rendered Deployment's Pod template.
fn create_pod_of(cp: &ControlPlane, rendered: &Rendered, ns: &str, name: &str) -> Output {
    let deployment: serde_json::Value = rendered.one("Deployment");
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": deployment["spec"]["template"]["spec"],
    });
    cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string())
}

#[tokio::test]
async fn helm_install_refuses_a_wrong_value_and_installs_every_optional_object() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = restricted_namespace(cp, &client, "helm-full").await;
    let kubeconfig = cp.kubeconfig.to_string_lossy();

    // A wrong value: refused, naming it, before anything is made.
    let out = helm_install(cp, "full", &ns, &sets(&["concurrency=abc"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("at '/concurrency': got string, want integer"),
        "{stderr}"
    );
    let made = cp
        .kubectl_ok(&["get", "deployments,secrets", "-n", &ns, "-o", "name"])
        .unwrap();
    assert_eq!(made.trim(), "", "a refused install made {made}");

    let values = sets(&[
        "replicaCount=2",
        "leaderElection.enabled=true",
        "networkPolicy.enabled=true",
        r"networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=monitoring",
        "networkPolicy.ssh.cidrs={10.0.0.0/8}",
        "networkPolicy.ssh.ports={22,2222}",
        "networkPolicy.aws.ports={443,8443}",
        "networkPolicy.extraEgress[0].to[0].ipBlock.cidr=169.254.170.23/32",
        "networkPolicy.extraEgress[0].ports[0].port=80",
        "extraVolumes[0].name=aws-ca",
        "extraVolumes[0].configMap.name=aws-ca",
        "extraVolumeMounts[0].name=aws-ca",
        "extraVolumeMounts[0].mountPath=/etc/instance-registrar/ca",
        "extraVolumeMounts[0].readOnly=true",
        "extraEnv[0].name=SSL_CERT_DIR",
        "extraEnv[0].value=/etc/ssl/certs:/etc/instance-registrar/ca",
    ]);
    let out = helm_install(cp, "full", &ns, &values);
    stdout_of("helm install full", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("PodSecurity"), "{stderr}");
    let status = stdout_of(
        "helm status",
        &helm(&["status", "full", "-n", &ns, "--kubeconfig", &kubeconfig]),
    );
    assert!(status.contains("STATUS: deployed"), "{status}");

    // The API server holds what the chart rendered.
    let rendered = render("full", &ns, &values);
    let get = |kind: &str| -> serde_json::Value {
        let json = cp
            .kubectl_ok(&[
                "get",
                kind,
                "full-instance-registrar",
                "-n",
                &ns,
                "-o",
                "json",
            ])
            .unwrap();
        serde_json::from_str(&json).unwrap()
    };
    let policy: NetworkPolicy = serde_json::from_value(get("networkpolicy")).unwrap();
    let rendered_policy: NetworkPolicy = rendered.one("NetworkPolicy");
    // (The API server fills in the protocol an extra rule left out: TCP.)
    assert_eq!(policy_rules(&policy), policy_rules(&rendered_policy));
    let (spec, rendered_spec) = (policy.spec.unwrap(), rendered_policy.spec.unwrap());
    assert_eq!(spec.pod_selector, rendered_spec.pod_selector);
    assert_eq!(spec.policy_types, rendered_spec.policy_types);
    let budget: PodDisruptionBudget = serde_json::from_value(get("poddisruptionbudget")).unwrap();
    assert_eq!(
        budget.spec.unwrap().min_available,
        Some(IntOrString::Int(1))
    );
    let deployment: Deployment = serde_json::from_value(get("deployment")).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.volumes.unwrap()[0].name, "aws-ca");
    assert_eq!(
        pod.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/etc/instance-registrar/ca"
    );

    // Its Pod, the CA's volume with it, is admitted under the restricted Pod Security Standard.
    let out = create_pod_of(cp, &rendered, &ns, "full");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `kubectl auth can-i <query> --as <user>` says.
fn can(cp: &ControlPlane, user: &str, query: &str) -> bool {
    let mut args = vec!["auth", "can-i"];
    args.extend(query.split_whitespace());
    args.extend(["--as", user]);
    let out = cp.kubectl(&args);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {}: {other} {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The ClusterRoles whose rules the built-in ClusterRole `name` aggregates, as the API server
/// selects them by its `aggregationRule`'s label selectors (what kube-controller-manager's
/// aggregation controller asks it).
fn aggregated_into(cp: &ControlPlane, name: &str) -> Vec<String> {
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_str(
        &cp.kubectl_ok(&["get", "clusterrole", name, "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let selectors = role
        .aggregation_rule
        .and_then(|a| a.cluster_role_selectors)
        .unwrap_or_else(|| panic!("the built-in {name} aggregates nothing"));
    let mut selected = Vec::new();
    for selector in selectors {
        assert_eq!(selector.match_expressions, None, "{name}");
        let labels: Vec<String> = selector
            .match_labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let names = cp
            .kubectl_ok(&["get", "clusterroles", "-l", &labels.join(","), "-o", "name"])
            .unwrap();
        selected.extend(names.lines().map(|n| {
            n.trim_start_matches("clusterrole.rbac.authorization.k8s.io/")
                .to_owned()
        }));
    }
    selected
}

#[tokio::test]
async fn namespace_viewers_read_and_editors_manage_instance_registrations_through_the_users_roles()
{
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let sys = namespace(&client, "helm-roles").await;
    stdout_of("helm install roles", &helm_install(cp, "roles", &sys, &[]));
    let (view, edit) = (
        "roles-instance-registrar-view",
        "roles-instance-registrar-edit",
    );

    // The roles aggregate into the built-in ones: the API server's own label selection by their
    // aggregation rules picks them. The test control plane runs no kube-controller-manager, so
    // nothing copies their rules into view, edit and admin here: a user is bound to the chart's
    // roles themselves below.
    let into_view = aggregated_into(cp, "view");
    assert!(into_view.iter().any(|r| r == view), "{into_view:?}");
    assert!(!into_view.iter().any(|r| r == edit), "{into_view:?}");
    for builtin in ["edit", "admin"] {
        let into = aggregated_into(cp, builtin);
        assert!(
            into.iter().any(|r| r == view) && into.iter().any(|r| r == edit),
            "{builtin}: {into:?}"
        );
    }

    let team = namespace(&client, "team").await;
    let other = namespace(&client, "team-other").await;
    for (binding, role, user) in [("viewers", view, "alice"), ("editors", edit, "bob")] {
        cp.kubectl_ok(&[
            "create",
            "rolebinding",
            binding,
            "--clusterrole",
            role,
            "--user",
            user,
            "-n",
            &team,
        ])
        .unwrap();
    }
    let ir = "instanceregistrations.registrar.dev";
    let status = "--subresource=status";
    let mut expected = Vec::new();
    for verb in ["get", "list", "watch"] {
        expected.push(("alice", true, format!("{verb} {ir} -n {team}")));
        expected.push(("bob", true, format!("{verb} {ir} -n {team}")));
    }
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        expected.push(("alice", false, format!("{verb} {ir} -n {team}")));
        expected.push(("bob", true, format!("{verb} {ir} -n {team}")));
    }
    for user in ["alice", "bob"] {
        expected.extend([
            (user, true, format!("get {ir} {status} -n {team}")),
            (user, false, format!("patch {ir} {status} -n {team}")),
            (user, false, format!("update {ir} {status} -n {team}")),
            (user, false, format!("get {ir} -n {other}")),
            (user, false, format!("create {ir} -n {other}")),
            (user, false, format!("get secrets -n {team}")),
        ]);
    }
    for (user, allowed, query) in expected {
        assert_eq!(can(cp, user, &query), allowed, "{user}: can-i {query}");
    }
}

/// Serialises the tests that run a controller: one watching every namespace would otherwise
/// act on the other test's objects too.
static CONTROLLERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chart release applied to the control plane, and a kubeconfig with its ServiceAccount's token.
struct Release {
    rendered: Rendered,
    namespace: String,
    /// The ServiceAccount's user name (`system:serviceaccount:<namespace>:<name>`).
    user: String,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Release {
    /// Renders the chart as `release` in a new namespace with `values` and the test AWS
    /// endpoints, applies it, and gets a token for its ServiceAccount (TokenRequest).
    async fn install(cp: &ControlPlane, aws: &AwsEnv, release: &str, values: &[String]) -> Self {
        let client = cp.client().await;
        let namespace = namespace(&client, release).await;
        let aws_env: std::collections::HashMap<_, _> = aws.controller_env().into_iter().collect();
        let mut values = values.to_vec();
        values.push(format!("aws.region={}", aws_env["AWS_REGION"]));
        for service in ["opsworks", "iam", "ec2", "sts"] {
            let variable = format!("AWS_ENDPOINT_URL_{}", service.to_uppercase());
            values.push(format!(
                "aws.endpoints.{service}={}",
                aws_env[variable.as_str()]
            ));
        }
        let rendered = render(release, &namespace, &values);
        let out = cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &rendered.yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let account: ServiceAccount = rendered.one("ServiceAccount");
        let account = account.metadata.name.unwrap();
        let token = cp
            .kubectl_ok(&[
                "create",
                "token",
                &account,
                "-n",
                &namespace,
                "--duration=1h",
            ])
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &cp.ca_pem).unwrap();
        let kubeconfig = dir.path().join(format!("{release}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: {account}\n  user:\n    token: {token}\n\
                 contexts:\n- name: {account}\n  context:\n    cluster: test\n    user: {account}\ncurrent-context: {account}\n",
                server = cp.server,
                ca = ca.display(),
                token = token.trim(),
            ),
        )
        .unwrap();
        Self {
            rendered,
            user: format!("system:serviceaccount:{namespace}:{account}"),
            namespace,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Starts the controller as the Deployment's Pod `pod` would run: its arguments and
    /// environment, the Pod's name and namespace for the field references, and the
    /// ServiceAccount's token. Only the listen addresses (loopback, free ports) and the AWS
    /// credentials (IRSA's part in a cluster) are the test's own; `overrides` replace
    /// variables.
    fn start_controller(
        &self,
        cp: &ControlPlane,
        aws: &AwsEnv,
        pod: &str,
        overrides: &[(&str, &str)],
    ) -> ControllerProcess {
        let container = self.rendered.container();
        let args = container.args.unwrap_or_default();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let metrics = format!("127.0.0.1:{}", free_port().unwrap());
        let probes = format!("127.0.0.1:{}", free_port().unwrap());
        let mut env: Vec<(String, String)> = self
            .rendered
            .env()
            .into_iter()
            .map(|(name, value)| {
                let value = match value.as_str() {
                    "fieldRef:metadata.name" => pod.to_owned(),
                    "fieldRef:metadata.namespace" => self.namespace.clone(),
                    _ if name == "METRICS_ADDRESS" => metrics.clone(),
                    _ if name == "PROBE_ADDRESS" => probes.clone(),
                    _ => value,
                };
                (name, value)
            })
            .filter(|(name, _)| !overrides.iter().any(|(o, _)| o == name))
            .collect();
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let from_chart: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
        for (name, value) in aws.controller_env() {
            if !from_chart.iter().any(|k| k == name) {
                env.push((name.to_owned(), value));
            }
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ControllerProcess::start_as(cp, &self.kubeconfig, &args, &env)
    }

    /// kubectl as the ServiceAccount.
    fn kubectl(&self, cp: &ControlPlane, args: &[&str]) -> Output {
        let kubeconfig = self.kubeconfig.to_string_lossy();
        let mut all = vec!["--kubeconfig", &kubeconfig];
        all.extend(args);
        cp.kubectl(&all)
    }

    /// Asserts that the API server refuses `args` to the ServiceAccount.
    fn assert_forbidden(&self, cp: &ControlPlane, args: &[&str]) {
        let out = self.kubectl(cp, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Forbidden"),
            "kubectl {} as the chart's ServiceAccount: expected Forbidden, got {}: {stderr}",
            args.join(" "),
            out.status
        );
    }

    /// Asserts what `kubectl auth can-i <query>` says for the ServiceAccount.
    fn assert_can(&self, cp: &ControlPlane, can: bool, query: &str) {
        let mut args = vec!["auth", "can-i"];
        args.extend(query.split_whitespace());
        let out = self.kubectl(cp, &args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let expected = if can { "yes" } else { "no" };
        assert_eq!(answer, expected, "kubectl auth can-i {query}");
    }
}

/// An on-premises host `name` whose SSH port is closed: the install fails at once, after the
/// credentials are made, and nothing leaves the machine.
fn unreachable_host(ns: &str, stack: &str, name: &str, key_secret: &str) -> String {
    let closed = free_port().unwrap();
    let mut manifest = on_premises(ns, name, stack, "127.0.0.1", name, key_secret, "");
    manifest.push_str(&format!("    address: \"127.0.0.1\"\n    port: {closed}\n"));
    manifest
}

/// The Events (events.k8s.io) recorded about object `name` in `ns` with `reason`.
async fn events(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// Asserts that nothing the controller asked of the API server was refused: no 403 to the
/// ServiceAccount in the audit log (which records InstanceRegistrations and Secrets), no refusal
/// in its logs (a refused Event or Lease would be logged); and that it logs JSON, as the chart
/// asks.
fn assert_nothing_refused(cp: &ControlPlane, release: &Release, controller: &ControllerProcess) {
    let audit = std::fs::read_to_string(&cp.audit_log).unwrap();
    let refused: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["user"]["username"] == release.user.as_str())
        .filter(|e| e["responseStatus"]["code"] == 403)
        .collect();
    assert!(refused.is_empty(), "refused: {refused:#?}");
    let logs = controller.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the controller was refused a call:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "LOG_FORMAT=json from the chart, yet no JSON log line:\n{logs}"
    );
}

#[tokio::test]
async fn the_controller_as_the_cluster_wide_service_account_does_its_work_and_no_more() {
    let _one_at_a_time = CONTROLLERS.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = AwsEnv::shared();
    let hosts = namespace(&client, "chw").await;
    let stack = aws.create_stack(&hosts, None).await;
    let release = Release::install(cp, aws, "wide", &[]).await;
    let mut controller = release.start_controller(cp, aws, "wide-pod", &[]);
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &hosts);

    // Its SSH key Secret missing: the controller reads the object, adds its finalizer, reads the
    // Secret, writes status and records an Event.
    // A host that answers (the controller makes IAM credentials only for such a host) and whose
    // installer fails, so the credentials stay for the test to look at.
    let (key, public) = ssh_keypair("ed25519", "");
    let host = host_whose_install_fails(&format!("{hosts}-web-1"), &public);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &on_premises_at(&hosts, "web-1", &stack, &host, "web-1", "key"),
    );
    wait_reason(
        &api,
        "web-1",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "a SecretNotFound Event",
        || async {
            let found = events(&client, &hosts, "web-1", reasons::SECRET_NOT_FOUND).await;
            (!found.is_empty()).then_some(())
        },
    )
    .await;

    // The Secret appears (the metadata watch notices): the key is read, and the credentials
    // are made and their Secret written (created by server-side apply); the install fails.
    secret(
        &client,
        &hosts,
        "key",
        "kubernetes.io/ssh-auth",
        &[("ssh-privatekey", key.as_bytes())],
    )
    .await;
    eventually(Duration::from_secs(90), "the install failed", || async {
        let obj = api.get("web-1").await.ok()?;
        let (status, _, _) = condition(&obj, types::AGENT_INSTALLED)?;
        (status == "False").then_some(())
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &hosts);
    assert!(
        secrets
            .get_opt("web-1-opsworks-access-key")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(aws.iam_users(&hosts).await.len(), 1);

    // Deletion: the access key Secret is deleted, the IAM user too, and the finalizer removed.
    api.delete("web-1", &Default::default()).await.unwrap();
    wait_gone(&api, "web-1").await;
    assert!(
        secrets
            .get_opt("web-1-opsworks-access-key")
            .await
            .unwrap()
            .is_none()
    );
    assert!(aws.iam_users(&hosts).await.is_empty());
    assert_nothing_refused(cp, &release, &controller);

    // What it may do, and what the API server refuses it.
    let ir = "instanceregistrations.registrar.dev";
    let sys = &release.namespace;
    for (can, query) in [
        (true, format!("list {ir} -A")),
        (true, format!("patch {ir}/web-1 -n {hosts}")),
        (true, "watch secrets -A".to_owned()),
        (true, format!("create events.events.k8s.io -n {hosts}")),
        (true, format!("get {ir} -n {hosts}")),
        (false, format!("update {ir} -n {hosts}")),
        (false, format!("delete {ir} -n {hosts}")),
        (false, format!("create {ir} -n {hosts}")),
        (false, format!("update secrets -n {hosts}")),
        (false, format!("create events -n {hosts}")),
        (false, format!("get configmaps -n {hosts}")),
        (false, format!("get leases.coordination.k8s.io -n {sys}")),
        (true, "watch namespaces".to_owned()),
        (false, "get namespaces".to_owned()),
        (false, format!("patch namespaces/{hosts}")),
    ] {
        release.assert_can(cp, can, &query);
    }
    release.assert_forbidden(cp, &["get", "pods", "-n", &hosts]);
    release.assert_forbidden(cp, &["get", "configmaps", "-A"]);
    release.assert_forbidden(cp, &["delete", "ir", "anything", "-n", &hosts]);

    assert!(
        controller.terminate(),
        "the controller did not exit cleanly:\n{}",
        controller.logs()
    );
}

#[tokio::test]
async fn the_controller_as_the_namespaced_service_account_is_confined_to_its_namespace() {
    let _one_at_a_time = CONTROLLERS.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = AwsEnv::shared();
    let hosts = namespace(&client, "chn").await;
    let other = namespace(&client, "chn-other").await;
    let stack = aws.create_stack(&hosts, None).await;
    let release = Release::install(
        cp,
        aws,
        "scoped",
        &[
            format!("watchNamespace={hosts}"),
            "leaderElection.enabled=true".into(),
        ],
    )
    .await;
    let pod = "scoped-pod-0";
    let controller = release.start_controller(cp, aws, pod, &[]);
    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &hosts);

    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &unreachable_host(&hosts, &stack, "db-1", "missing"),
    );
    wait_reason(
        &api,
        "db-1",
        types::SSH_KEY_READY,
        reasons::SECRET_NOT_FOUND,
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "a SecretNotFound Event",
        || async {
            let found = events(&client, &hosts, "db-1", reasons::SECRET_NOT_FOUND).await;
            (!found.is_empty()).then_some(())
        },
    )
    .await;

    // Leader election took the chart's Lease, in the release namespace: it was the leader that
    // acted.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    let lease = leases.get("instance-registrar").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod)
    );
    assert_nothing_refused(cp, &release, &controller);

    // Nothing outside the watched namespace, and nothing cluster-wide.
    release.assert_forbidden(cp, &["get", "ir", "-n", &other]);
    release.assert_forbidden(cp, &["get", "ir", "-A"]);
    release.assert_forbidden(cp, &["get", "secrets", "-n", &other]);
    release.assert_forbidden(cp, &["get", "secrets", "-n", &release.namespace]);
    release.assert_forbidden(cp, &["get", "pods", "-n", &hosts]);
    let ir = "instanceregistrations.registrar.dev";
    let lease = "leases.coordination.k8s.io";
    let sys = &release.namespace;
    for (can, query) in [
        (true, format!("watch {ir} -n {hosts}")),
        (true, format!("delete secrets -n {hosts}")),
        (true, format!("watch namespaces/{hosts}")),
        (false, "list namespaces".to_owned()),
        (false, format!("list namespaces/{other}")),
        (false, format!("patch namespaces/{hosts}")),
        (false, format!("list {ir} -n {other}")),
        (false, format!("create events.events.k8s.io -n {other}")),
        (true, format!("create {lease} -n {sys}")),
        (true, format!("update {lease}/instance-registrar -n {sys}")),
        (false, format!("update {lease}/another -n {sys}")),
        (false, format!("create {lease} -n {hosts}")),
    ] {
        release.assert_can(cp, can, &query);
    }

    // The same controller told to watch another namespace cannot list its objects, and says so.
    let mut astray = release.start_controller(
        cp,
        aws,
        "scoped-pod-astray",
        &[("WATCH_NAMESPACE", &other), ("LEADER_ELECTION", "false")],
    );
    let code = astray.wait_exit(Duration::from_secs(30));
    let logs = astray.logs();
    assert!(
        code.is_some_and(|c| c != 0),
        "a controller watching {other} did not fail: {code:?}\n{logs}"
    );
    assert!(
        logs.contains("cannot list InstanceRegistrations") && logs.contains("forbidden"),
        "{logs}"
    );
}

#[tokio::test]
async fn the_controller_as_the_service_account_of_a_release_for_two_namespaces_acts_in_both_only() {
    let _one_at_a_time = CONTROLLERS.lock().await;
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let aws = AwsEnv::shared();
    let (first, second) = (
        namespace(&client, "chm-a").await,
        namespace(&client, "chm-b").await,
    );
    let other = namespace(&client, "chm-other").await;
    let stack = aws.create_stack(&first, None).await;
    let release = Release::install(
        cp,
        aws,
        "multi",
        &[
            format!("watchNamespaces={{{first},{second}}}"),
            "labelSelector=shard=one".into(),
        ],
    )
    .await;
    let env: BTreeMap<String, String> = release.rendered.env().into_iter().collect();
    assert_eq!(env["WATCH_NAMESPACE"], format!("{first},{second}"));
    assert_eq!(env["LABEL_SELECTOR"], "shard=one");
    let controller = release.start_controller(cp, aws, "multi-pod-0", &[]);
    // Each names a host of its own (objects naming one host compete, across namespaces too).
    let hosts = std::sync::atomic::AtomicU8::new(10);
    let labelled = |ns: &str, name: &str, shard: &str| {
        let host = format!(
            "127.0.9.{}",
            hosts.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        on_premises(ns, name, &stack, &host, name, "missing", "").replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{shard: {shard}}}\n"),
        )
    };
    for ns in [&first, &second, &other] {
        cp.kubectl_stdin(&["apply", "-f", "-"], &labelled(ns, "db-1", "one"));
    }
    cp.kubectl_stdin(&["apply", "-f", "-"], &labelled(&first, "db-2", "two"));
    for ns in [&first, &second] {
        let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), ns);
        wait_reason(
            &api,
            "db-1",
            types::SSH_KEY_READY,
            reasons::SECRET_NOT_FOUND,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Not its namespace, not its shard.
    let outside: Api<InstanceRegistration> = Api::namespaced(client.clone(), &other);
    assert!(outside.get("db-1").await.unwrap().status.is_none());
    let first_api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &first);
    assert!(first_api.get("db-2").await.unwrap().status.is_none());
    assert_nothing_refused(cp, &release, &controller);
    let ir = "instanceregistrations.registrar.dev";
    for (can, query) in [
        (true, format!("watch {ir} -n {first}")),
        (true, format!("watch {ir} -n {second}")),
        (false, format!("list {ir} -n {other}")),
        (true, format!("watch namespaces/{first}")),
        (true, format!("watch namespaces/{second}")),
        (false, format!("list namespaces/{other}")),
        (false, "list namespaces".to_owned()),
        (false, format!("get secrets -n {other}")),
    ] {
        release.assert_can(cp, can, &query);
    }
}
