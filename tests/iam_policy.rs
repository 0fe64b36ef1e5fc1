//! `charts/instance-registrar/iam-policy.json`, tested by enforcement, twice over.
//!
//! 1. **Every action is needed** (moto's own evaluation): the controller signs as a moto IAM
//!    user holding the policy, moto authorizes its IAM and EC2 calls
//!    (`INITIAL_NO_AUTH_ACTION_COUNT` spent, see [`AwsEnv::enforcing_iam`]), the endpoint its
//!    OpsWorks and Systems Manager calls, and the proxy in front of moto what moto does not
//!    (the tags of `CreateUser` as `iam:TagUser`). Three hosts (OpsWorks on-premises, OpsWorks
//!    EC2 with an IAM user, Systems Manager on-premises) are registered and deleted, and an
//!    object that never got an IAM user is deleted. Then the same again once for each action,
//!    with that action taken out: some step must fail with `AccessDenied`, so no action of the
//!    policy is surplus. moto authorizes IAM calls on the resource `*` and treats every
//!    `Condition` as unmet, so here the user holds the policy as moto can evaluate it: every
//!    statement's `Resource` widened to `*` and its `Condition` dropped ([`as_enforced`]).
//! 2. **The scoping is right** ([`AwsEnv::evaluating_scoped_policies`]): the same run with the
//!    policy as written, its resources and conditions evaluated as AWS documents it by the proxy
//!    and the endpoint (`opsworks_endpoint::authorize`): ARNs with the entity's path, or none for
//!    a name that is free, `iam:PolicyARN`, `iam:PassedToService`, `iam:PermissionsBoundary`.
//!    Then calls out of scope, signed with the controller's key, must be refused.

mod support;

use std::time::{Duration, Instant};

use aws_sdk_iam::types::AccessKey;
use futures::StreamExt;
use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use instance_registrar::testing::IAM_PATH;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::Value;
use support::ssh_hosts::{self, SshHost};
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, ec2, namespace, on_premises, serving_stand_in,
    ssh_key_secret, ssh_via,
};

const POLICY: &str = include_str!("../charts/instance-registrar/iam-policy.json");

/// The permissions boundary the full run sets (a managed policy moto has).
const BOUNDARY: &str = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";

/// How long one step (a registration, a deletion) may take before the run is called stuck.
const STEP_TIME: Duration = Duration::from_secs(90);

/// The actions of the inline-policy path (the agent's user gets the inline policy
/// `OpsWorks-Instance` where the managed one cannot be attached): their runs use a moto without
/// the managed policy, where that path is the one taken.
const INLINE_PATH: [&str; 3] = [
    "iam:PutUserPolicy",
    "iam:GetUserPolicy",
    "iam:DeleteUserPolicy",
];

/// Actions AWS needs that nothing here can deny, and why; the test fails if one of them turns
/// out to be denied after all (then it belongs with the others). None now: `iam:TagUser`, which
/// AWS authorizes for the tags given to `CreateUser` and moto does not, is authorized by the
/// proxy in front of moto (see `opsworks_endpoint::authorize`).
const NOT_ENFORCED_HERE: [(&str, &str); 0] = [];

/// The one action the controller calls only for a user that exists already (reading back the
/// inline policy it put, before renewing it): its runs (and the whole policy's inline run) first
/// run a controller that exits right after `iam:PutUserPolicy`, then the one that goes on.
const AFTER_A_RESTART: &str = "iam:GetUserPolicy";

/// How a run's policy is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enforcement {
    /// By moto (IAM, EC2) and the endpoint, on actions: the policy [`as_enforced`].
    /// `managed_policy` says whether moto has `AWSOpsWorksInstanceRegistration`.
    Actions { managed_policy: bool },
    /// As written, resources and conditions included, by the proxy in front of moto and the
    /// endpoint ([`AwsEnv::evaluating_scoped_policies`]).
    AsWritten,
}

/// The environment a run uses.
fn aws(enforcement: Enforcement) -> &'static AwsEnv {
    let env = match enforcement {
        Enforcement::Actions {
            managed_policy: true,
        } => AwsEnv::enforcing_iam(),
        Enforcement::Actions {
            managed_policy: false,
        } => AwsEnv::enforcing_iam_without_managed_policy(),
        Enforcement::AsWritten => AwsEnv::evaluating_scoped_policies(),
    };
    let aws = serving_stand_in(env, Duration::from_secs(2));
    assert!(aws.opsworks.set_ssm_setup_run_time(Duration::from_secs(2)));
    aws
}

fn statements(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

fn action_list(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every action of the policy, in its order, each once.
fn actions(policy: &Value) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    statements(policy)
        .iter()
        .flat_map(action_list)
        .filter(|a| seen.insert(a.clone()))
        .collect()
}

/// `policy` as moto and the endpoint evaluate it (see the module docs), without `without`.
fn as_enforced(policy: &Value, without: Option<&str>) -> Value {
    let statements: Vec<Value> = statements(policy)
        .iter()
        .filter_map(|st| {
            let kept: Vec<String> = action_list(st)
                .into_iter()
                .filter(|a| Some(a.as_str()) != without)
                .collect();
            (!kept.is_empty()).then(
                || serde_json::json!({"Effect": st["Effect"], "Action": kept, "Resource": "*"}),
            )
        })
        .collect();
    serde_json::json!({"Version": "2012-10-17", "Statement": statements})
}

/// Where a run stopped: which object, in which phase, and the denied condition's message.
#[derive(Debug)]
struct Stop {
    object: &'static str,
    phase: &'static str,
    /// `AccessDenied` on a condition (its type and message), or why it is something else.
    what: String,
    denied: bool,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.object, self.phase, self.what)
    }
}

/// The first condition of `obj` with reason `AccessDenied`, or while it is deleted the first
/// whose message says the controller was denied: (type, message).
fn access_denied(obj: &InstanceRegistration) -> Option<(String, String)> {
    let deleting = obj.metadata.deletion_timestamp.is_some();
    obj.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| {
                c.reason == reasons::ACCESS_DENIED
                    || (deleting && c.message.contains("is not authorized to perform"))
            })
            .map(|c| (c.r#type.clone(), c.message.clone()))
    })
}

/// The action a denial message names (`... is not authorized to perform: <action> ...`).
fn denied_action(message: &str) -> &str {
    message
        .split("is not authorized to perform: ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ')']).next())
        .unwrap_or("?")
}

fn ready(obj: &InstanceRegistration) -> bool {
    support::condition(obj, types::READY)
        .is_some_and(|(_, r, g)| r == reasons::SUCCEEDED && Some(g) == obj.metadata.generation)
}

/// Waits until `name` is ready (`deleting` false) or gone (`deleting` true), or a condition says
/// `AccessDenied`, or [`STEP_TIME`] has passed.
async fn step(
    api: &Api<InstanceRegistration>,
    object: &'static str,
    deleting: bool,
) -> Result<(), Stop> {
    let phase = if deleting { "deletion" } else { "registration" };
    let deadline = Instant::now() + STEP_TIME;
    loop {
        let obj = api.get_opt(object).await.ok().flatten();
        match &obj {
            None if deleting => return Ok(()),
            Some(o) if !deleting && ready(o) => return Ok(()),
            Some(o) => {
                if let Some((type_, message)) = access_denied(o) {
                    return Err(Stop {
                        object,
                        phase,
                        what: format!(
                            "{type_}: {} denied ({})",
                            denied_action(&message),
                            message.split(" (").next().unwrap_or_default()
                        ),
                        denied: true,
                    });
                }
            }
            None => {}
        }
        if Instant::now() > deadline {
            return Err(Stop {
                object,
                phase,
                what: format!(
                    "neither done nor AccessDenied after {STEP_TIME:?}: {:?}",
                    obj.and_then(|o| o.status)
                ),
                denied: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One registration and deletion of the three hosts (and the deletion of a fourth object that
/// never got as far as an IAM user), the controller holding `policy` (as enforced) without
/// `without`; `label` names the run's namespace and controller user.
async fn run(
    label: &str,
    without: Option<&str>,
    enforcement: Enforcement,
    controller_args: &[&str],
) -> Result<(), Stop> {
    let aws = aws(enforcement);
    let managed_policy = enforcement
        != (Enforcement::Actions {
            managed_policy: false,
        });
    let policy: Value = serde_json::from_str(POLICY).unwrap();
    let document = match enforcement {
        Enforcement::AsWritten => policy.clone(),
        Enforcement::Actions { .. } => as_enforced(&policy, without),
    };
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = namespace(&client, &format!("iam-{label}")).await;
    let key = user_holding(aws, &format!("{ns}-controller"), &document.to_string()).await;
    let (_, public_key) = ssh_key_secret(&client, &ns, "key").await;
    let stack = aws.create_stack(&ns, None).await;
    let layer = aws
        .opsworks_client()
        .create_layer()
        .stack_id(&stack)
        .r#type(aws_sdk_opsworks::types::LayerType::Custom)
        .name("db")
        .shortname("db")
        .send()
        .await
        .unwrap()
        .layer_id()
        .unwrap()
        .to_owned();
    let role = format!("{ns}-ssm");
    aws.create_ssm_service_role(&role).await;
    let hosts: Vec<SshHost> = ["ow", "ec2", "sm"]
        .iter()
        .map(|n| {
            let host = SshHost::start(&format!("{ns}-{n}"));
            host.authorize(&public_key);
            host
        })
        .collect();
    let (instance, _, _) = aws
        .try_run_instance(hosts[1].name(), None, None)
        .await
        .unwrap();
    hosts[1].set_identity(&instance, support::aws::REGION);
    let credentials = [
        ("AWS_ACCESS_KEY_ID", key.access_key_id()),
        ("AWS_SECRET_ACCESS_KEY", key.secret_access_key()),
    ];
    let restart = !managed_policy && matches!(without, None | Some(AFTER_A_RESTART));
    let mut crashing = restart.then(|| {
        let mut env = credentials.to_vec();
        env.push((
            instance_registrar::testing::FAILPOINT_VARIABLE,
            "iam:PutUserPolicy",
        ));
        ControllerProcess::start_with_env(cp, aws, &ns, controller_args, &env)
    });
    let address = hosts[0].address().to_string();
    apply(
        cp,
        &(on_premises(
            &ns,
            "ow",
            &stack,
            &address,
            &format!("{ns}-ow"),
            "key",
            &format!("  layerIds: [\"{layer}\"]\n"),
        ) + &ssh_via(&hosts[0])),
    );
    apply(
        cp,
        &(ec2(&ns, "ec2", &stack, &instance, "key", "") + &ssh_via(&hosts[1])),
    );
    apply(
        cp,
        &format!(
            "apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata:
  name: sm
  namespace: {ns}
spec:
  systemsManager:
    serviceRole: {role}
    defaultInstanceName: {ns}-sm
    tags:
      - key: team
        value: platform
  infrastructureClass: on-premises
  target: {address}
  ssh:
    username: {user}
    privateKeySecretRef:
      name: key
    port: {port}
",
            address = hosts[2].address(),
            user = ssh_hosts::USER,
            port = hosts[2].port(),
        ),
    );
    if let Some(crashing) = &mut crashing {
        let exited = crashing.wait_exit(Duration::from_secs(45));
        assert_eq!(
            exited,
            Some(137),
            "{label}: the crash point after iam:PutUserPolicy"
        );
    }
    // An object that never gets an IAM user (its key's Secret is missing): deleting it looks
    // for a user under each of its candidate names, names that are free.
    apply(
        cp,
        &(on_premises(
            &ns,
            "nokey",
            &stack,
            "127.0.9.9",
            &format!("{ns}-nokey"),
            "missing",
            "",
        )),
    );
    let mut controller =
        ControllerProcess::start_with_env(cp, aws, &ns, controller_args, &credentials);
    let api: Api<InstanceRegistration> = Api::namespaced(client, &ns);
    let objects = ["ow", "ec2", "sm"];
    let result: Result<(), Stop> = async {
        for o in objects {
            step(&api, o, false).await?;
        }
        // The node's tags follow the spec: one key set, the other taken out (on the node in
        // place, with AddTagsToResource and RemoveTagsFromResource).
        let tags = serde_json::json!({"spec": {"systemsManager": {"tags": [
            {"key": "env", "value": "test"}
        ]}}});
        api.patch("sm", &PatchParams::default(), &Patch::Merge(&tags))
            .await
            .unwrap();
        step(&api, "sm", false).await?;
        if without.is_none() {
            check_users(aws, &ns).await;
        }
        for o in objects.iter().chain(&["nokey"]) {
            api.delete(o, &DeleteParams::default()).await.unwrap();
        }
        for o in objects.into_iter().chain(["nokey"]) {
            step(&api, o, true).await?;
        }
        // A denial the controller got around (e.g. the inline policy where attaching the
        // managed one was denied), as the proxy in front of moto recorded it.
        if let Some(action) = without
            && let Some((service, operation)) = action.split_once(':')
            && let Some(call) = aws.proxy.as_ref().unwrap().calls().iter().find(|c| {
                c.service == service
                    && c.action == operation
                    && c.access_key_id.as_deref() == Some(key.access_key_id())
                    && c.error_code.as_deref() == Some("AccessDenied")
            })
        {
            return Err(Stop {
                object: "-",
                phase: "any",
                what: format!(
                    "no step failed, but {action} was denied ({} {}) and worked around",
                    call.status,
                    call.error_code.as_deref().unwrap_or_default()
                ),
                denied: true,
            });
        }
        Ok(())
    }
    .await;
    if let Err(stop) = &result
        && !stop.denied
    {
        eprintln!(
            "{label}: controller log tail:\n{}",
            support::strip_ansi(&controller.logs())
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    controller.kill();
    result
}

/// Makes IAM user `user` holding the inline policy `document` (`instance-registrar`) and
/// returns its access key.
async fn user_holding(aws: &AwsEnv, user: &str, document: &str) -> AccessKey {
    let iam = aws.iam();
    iam.create_user().user_name(user).send().await.unwrap();
    iam.put_user_policy()
        .user_name(user)
        .policy_name("instance-registrar")
        .policy_document(document)
        .send()
        .await
        .unwrap();
    let made = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .unwrap();
    made.access_key().unwrap().clone()
}

/// The IAM users the controller made for `ns`'s hosts are under the path and named as the
/// policy's resources say. (Whether they carry `--iam-permissions-boundary` cannot be read back:
/// moto 5 drops `PermissionsBoundary` on `CreateUser`.)
async fn check_users(aws: &AwsEnv, ns: &str) {
    let users = aws.iam_users(ns).await;
    assert_eq!(users.len(), 2, "one IAM user per OpsWorks host: {users:?}");
    for (name, _) in users {
        assert!(name.starts_with("OpsWorks-"), "{name}");
        let user = aws.iam().get_user().user_name(&name).send().await.unwrap();
        assert_eq!(user.user().unwrap().path(), IAM_PATH);
    }
}

#[tokio::test]
async fn the_iam_policy_is_enough_to_register_and_delete_and_every_action_in_it_is_needed() {
    let started = Instant::now();
    let policy: Value = serde_json::from_str(POLICY).unwrap();

    // The resources name what the controller makes: its groups and users under the path.
    let text = policy.to_string();
    assert!(
        text.contains(&format!("group{IAM_PATH}OpsWorks-*")),
        "{text}"
    );
    assert!(
        text.contains(&format!("user{IAM_PATH}OpsWorks-*")),
        "{text}"
    );

    for managed_policy in [true, false] {
        let label = if managed_policy {
            "full"
        } else {
            "full-inline"
        };
        if let Err(stop) = run(
            label,
            None,
            Enforcement::Actions { managed_policy },
            &["--iam-permissions-boundary", BOUNDARY],
        )
        .await
        {
            panic!("with the whole policy ({label}): {stop}");
        }
    }
    eprintln!("the whole policy: passed in {:?}", started.elapsed());

    let actions = actions(&policy);
    let results: Vec<(String, Result<(), Stop>)> =
        futures::stream::iter(actions.iter().enumerate().map(|(i, action)| async move {
            let label = format!("w{i:02}");
            let managed_policy = !INLINE_PATH.contains(&action.as_str());
            (
                action.clone(),
                run(
                    &label,
                    Some(action),
                    Enforcement::Actions { managed_policy },
                    &[],
                )
                .await,
            )
        }))
        .buffered(6)
        .collect()
        .await;

    let mut table = format!("{:<45} | the step that failed without it\n", "action");
    table.push_str(&format!("{}-|-{}\n", "-".repeat(45), "-".repeat(60)));
    let mut surplus = Vec::new();
    for (action, result) in &results {
        let unenforced = NOT_ENFORCED_HERE.iter().find(|(a, _)| a == action);
        let cell = match (result, unenforced) {
            (Err(stop), None) if stop.denied => stop.to_string(),
            (Ok(()), Some((_, why))) => format!("not shown here: {why}"),
            (Ok(()), None) => {
                surplus.push(action.clone());
                "nothing failed".to_owned()
            }
            (Err(stop), _) => {
                surplus.push(action.clone());
                format!("(unexpected) {stop}")
            }
        };
        table.push_str(&format!("{action:<45} | {cell}\n"));
    }
    eprintln!(
        "{} actions; one removed at a time:\n{table}\nin {:?}",
        actions.len(),
        started.elapsed()
    );
    assert!(
        surplus.is_empty(),
        "actions nothing was denied without, or runs that did not end as expected: \
         {surplus:?}\n{table}"
    );
}

/// The policy as written, its resources and conditions evaluated as AWS evaluates them (by the
/// proxy in front of moto and by the endpoint, see `opsworks_endpoint::authorize`): the
/// controller registers and deletes with it (free names looked up included: IAM authorizes a
/// call naming a user or group that does not exist on the ARN without a path). Then calls the
/// controller never makes, signed with its key, are refused for the resource or condition the
/// policy scopes, and reach neither moto nor the endpoint's state.
#[tokio::test]
async fn the_iam_policy_as_written_with_its_resources_and_conditions_registers_and_deletes() {
    let started = Instant::now();
    if let Err(stop) = run(
        "scoped",
        None,
        Enforcement::AsWritten,
        &["--iam-permissions-boundary", BOUNDARY],
    )
    .await
    {
        panic!("with the policy as written: {stop}");
    }
    eprintln!("the policy as written: passed in {:?}", started.elapsed());

    // The controller's key, on calls out of the policy's scope.
    let aws = aws(Enforcement::AsWritten);
    let admin = aws.iam();
    let user = "iam-probe-controller";
    let key = user_holding(aws, user, POLICY).await;
    let iam = aws.iam_as(key.access_key_id(), key.secret_access_key());
    // Someone else's user, outside the path, and an agent user of the controller's own kind.
    admin
        .create_user()
        .user_name("someone")
        .send()
        .await
        .unwrap();
    admin
        .create_user()
        .user_name("OpsWorks-probe-agent")
        .path(IAM_PATH)
        .send()
        .await
        .unwrap();
    fn code<E: aws_sdk_iam::error::ProvideErrorMetadata>(
        e: &aws_sdk_iam::error::SdkError<E, aws_sdk_iam::config::http::HttpResponse>,
    ) -> String {
        use aws_sdk_iam::error::ProvideErrorMetadata as _;
        e.code().unwrap_or("?").to_owned()
    }
    let mut refused = Vec::new();
    macro_rules! refused {
        ($what:expr, $call:expr) => {{
            let result = $call.send().await;
            match &result {
                Err(e) if code(e) == "AccessDenied" => refused.push($what),
                other => panic!("{}: not refused: {other:?}", $what),
            }
        }};
    }
    refused!(
        "CreateUser outside the path",
        iam.create_user().user_name("OpsWorks-root")
    );
    refused!(
        "CreateUser under the path, not named OpsWorks-*",
        iam.create_user().user_name("admin").path(IAM_PATH)
    );
    refused!(
        "AttachUserPolicy AdministratorAccess (iam:PolicyARN)",
        iam.attach_user_policy()
            .user_name("OpsWorks-probe-agent")
            .policy_arn("arn:aws:iam::aws:policy/AdministratorAccess")
    );
    refused!(
        "CreateAccessKey for a user outside the path",
        iam.create_access_key().user_name("someone")
    );
    refused!(
        "DeleteUser outside the path",
        iam.delete_user().user_name("someone")
    );
    refused!(
        "PutUserPolicy outside the path",
        iam.put_user_policy()
            .user_name("someone")
            .policy_name("p")
            .policy_document(r#"{"Version":"2012-10-17","Statement":[]}"#)
    );
    // And the scoped calls the policy does allow, for comparison: the managed policy attached
    // to an agent user, a free name looked up (NoSuchEntity, not AccessDenied).
    iam.attach_user_policy()
        .user_name("OpsWorks-probe-agent")
        .policy_arn(BOUNDARY)
        .send()
        .await
        .expect("attaching the registration policy to an agent user");
    let free = iam
        .list_user_tags()
        .user_name("OpsWorks-free-name")
        .send()
        .await
        .expect_err("no such user");
    assert_eq!(code(&free), "NoSuchEntity");
    // Nothing refused reached moto.
    let users = admin.list_users().send().await.unwrap();
    let names: Vec<&str> = users.users().iter().map(|u| u.user_name()).collect();
    assert!(
        !names.contains(&"OpsWorks-root") && !names.contains(&"admin"),
        "{names:?}"
    );
    let someone_keys = admin
        .list_access_keys()
        .user_name("someone")
        .send()
        .await
        .unwrap();
    assert!(someone_keys.access_key_metadata().is_empty());
    let attached = admin
        .list_attached_user_policies()
        .user_name("OpsWorks-probe-agent")
        .send()
        .await
        .unwrap();
    let arns: Vec<&str> = attached
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn())
        .collect();
    assert_eq!(arns, [BOUNDARY]);
    // README's permissions boundary condition on `OpsWorksAgentUsersCreate`: `CreateUser` is
    // refused without the boundary, allowed with it.
    let mut bounded: Value = serde_json::from_str(POLICY).unwrap();
    for statement in bounded["Statement"].as_array_mut().unwrap() {
        if statement["Sid"] == "OpsWorksAgentUsersCreate" {
            statement["Condition"] =
                serde_json::json!({"StringEquals": {"iam:PermissionsBoundary": BOUNDARY}});
        }
    }
    admin
        .put_user_policy()
        .user_name(user)
        .policy_name("instance-registrar")
        .policy_document(bounded.to_string())
        .send()
        .await
        .unwrap();
    refused!(
        "CreateUser without the permissions boundary the policy requires",
        iam.create_user()
            .user_name("OpsWorks-probe-unbounded")
            .path(IAM_PATH)
    );
    iam.create_user()
        .user_name("OpsWorks-probe-bounded")
        .path(IAM_PATH)
        .permissions_boundary(BOUNDARY)
        .send()
        .await
        .expect("CreateUser with the boundary");
    eprintln!("refused, as scoped: {refused:#?}");
}

/// parliament (duo-labs, installed by `tests/setup.sh`) checks a policy against the IAM actions,
/// resource types and condition keys AWS publishes: it finds nothing in the file, and does find
/// what is wrong in a policy that differs in one place from it (so it did look).
#[test]
fn parliament_finds_nothing_wrong_in_the_policy() {
    let python = opsworks_endpoint::moto::cache_dir().join("parliament/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/setup.sh`",
        python.display()
    );
    let findings = |policy: &str| -> Vec<String> {
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                "import sys\nfrom parliament import analyze_policy_string\n\
                 for f in analyze_policy_string(sys.stdin.read()).findings:\n    \
                 print(f.issue, f.detail)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(policy.as_bytes())?;
                child.wait_with_output()
            })
            .expect("running parliament");
        assert!(out.status.success(), "parliament failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(findings(POLICY), Vec::<String>::new());
    // The boundary condition where IAM has no such key (iam:ListUserTags), and an action that
    // does not exist.
    let mut wrong: Value = serde_json::from_str(POLICY).unwrap();
    for statement in wrong["Statement"].as_array_mut().unwrap() {
        if statement["Sid"] == "OpsWorksAgentUsers" {
            statement["Condition"] =
                serde_json::json!({"StringEquals": {"iam:PermissionsBoundary": BOUNDARY}});
        }
        if statement["Sid"] == "Ec2Hosts" {
            statement["Action"] = serde_json::json!("ec2:DescribeInstance");
        }
    }
    let found = findings(&wrong.to_string()).join("\n");
    assert!(
        found.contains("UNKNOWN_CONDITION_FOR_ACTION") && found.contains("iam:ListUserTags"),
        "{found}"
    );
    assert!(found.contains("UNKNOWN_ACTION"), "{found}");
}
