//! The install step of a Systems Manager object: over SSH, the agent setup tool
//! (`ssm-setup-cli`, from `--ssm-setup-url`, checked against `systemsManager.agentSetupSha256`)
//! registers an on-premises host with the object's activation, or installs and starts the agent
//! on an EC2 instance where it does not run. The script and its exit statuses are
//! [`super::script`]'s; the SSH session, the install lock and the status checkpoint before the
//! run are shared with OpsWorks ([`crate::steps::run_install`]).
//!
//! A host found registered already is never registered again: its node, when Systems Manager
//! lists it in the region, is adopted (or recognised as this object's own, registered with its
//! activation before a restart); otherwise it is `RegisteredElsewhere`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::warn;

use super::findings;
use super::script::{self, SsmMode, SsmPlan};
use crate::conditions::Outcome;
use crate::conditions::{Observation, reasons};
use crate::context::Context;
use crate::context::Facts;
use crate::resource::{
    InfrastructureClass, InstanceRegistration, InstanceRegistrationStatus, SystemsManagerSpec,
};
use crate::steps::handoff;
use crate::steps::script as install;

use super::evidence;

pub(super) async fn check(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    let region = super::region(ctx, ssm).to_owned();
    let mode = match obj.spec.infrastructure_class {
        InfrastructureClass::Ec2 => SsmMode::Install,
        InfrastructureClass::OnPremises => {
            let Some(activation) = &findings(facts).activation else {
                return Outcome::Blocked(Observation::fails(
                    reasons::WAITING,
                    "no activation for the agent",
                ));
            };
            SsmMode::Register {
                activation_id: activation.id.clone(),
                activation_code: activation.code.clone(),
                // The node recorded on status is not listed any more (the target step looked):
                // the host may still say it is that node, and is registered again over it.
                replace: match &findings(facts).resume {
                    Some(_) => None,
                    None => status.managed_node_id.clone(),
                },
                resume: findings(facts).resume.clone(),
            }
        }
    };
    let plan = SsmPlan {
        setup_url: super::setup_url(ctx, &region),
        setup_sha256: ssm.agent_setup_sha256.clone(),
        region: region.clone(),
        mode,
        time_limit: Duration::from_secs(obj.spec.ssh.command_timeout_seconds.into()),
    };
    let script = match script::render_ssm(&plan) {
        Ok(script) => script,
        Err(e) => {
            return Outcome::Blocked(Observation::fails(
                reasons::INSTALLER_INVALID,
                format!("--ssm-setup-url: {e}"),
            ));
        }
    };
    let code = findings(facts).activation.as_ref().map(|a| a.code.clone());
    let secrets: Vec<&str> = code.iter().map(|c| c.expose()).collect();
    let run =
        match crate::steps::run_install(obj, ctx, facts, status, &script, "the SSM agent").await {
            Ok(run) => run,
            Err(outcome) => return outcome,
        };
    let said = |what: &str| run.said(what, &secrets);
    let already = install::marked(run.output(), script::SSM_REGISTERED_ALREADY_MARKER);
    match run.exit_status() {
        Some(0) => {
            if obj.spec.infrastructure_class == InfrastructureClass::OnPremises {
                match install::marked(run.output(), script::SSM_NODE_MARKER) {
                    Some(node) if super::is_managed_node_id(&node) => {
                        status.managed_node_id = Some(node);
                    }
                    other => {
                        return Outcome::Blocked(Observation::fails(
                            reasons::INSTALLER_FAILED,
                            said(&format!(
                                "the setup tool finished, and the host's registration file names \
                                 {}",
                                match other {
                                    Some(_) => "something that is not a managed node ID",
                                    None => "no managed node",
                                }
                            )),
                        ));
                    }
                }
            }
            status.agent_installed_at = Some(Time(Timestamp::now()));
            // The activation was used: its code is of no more use to anyone.
            if let Err(problem) =
                handoff::forget(ctx, obj, &super::activation_secret_name(obj)).await
            {
                warn!(name = %obj.name_any(), %problem, "could not delete the activation Secret yet");
            }
            Outcome::Done(Observation::holds(
                reasons::SUCCEEDED,
                said(&match &status.managed_node_id {
                    Some(node)
                        if obj.spec.infrastructure_class == InfrastructureClass::OnPremises =>
                    {
                        format!("the agent setup registered the host as {node}")
                    }
                    _ => "the agent setup finished".to_owned(),
                }),
            ))
        }
        Some(install::EXIT_INSTALLER_FAILED)
            if install::installer_status(run.output())
                == Some(script::SSM_EXIT_REGISTERED_ALREADY) =>
        {
            let node = already.unwrap_or_default();
            registered_already(obj, ctx, &region, &node, status, facts, &said).await
        }
        Some(install::EXIT_INSTALLER_FAILED)
            if install::installer_status(run.output())
                == Some(script::SSM_EXIT_REGISTRATION_LOST) =>
        {
            registration_lost(ctx, &region, status, facts, &said).await
        }
        _ => run.failed(obj, &secrets, "ssm-setup-cli"),
    }
}

/// The node this object's cut-short install registered is not the host's: the install was cut
/// short before the host wrote its registration, whose keys are lost with it. The node can never
/// come online; it is the object's (its activation is), so it is deregistered, and the next pass
/// registers the host afresh with a new activation.
async fn registration_lost(
    ctx: &Context,
    region: &str,
    status: &mut InstanceRegistrationStatus,
    facts: &mut Facts,
    said: &(dyn Fn(&str) -> String + Sync),
) -> Outcome {
    let Some(node) = findings(facts).resume.take() else {
        return Outcome::Blocked(Observation::fails(
            reasons::INSTALLER_FAILED,
            said("the host has no registration, and no node was to be resumed"),
        ));
    };
    if let Err(e) = ctx
        .aws
        .ssm(Some(region))
        .deregister_managed_instance()
        .instance_id(&node)
        .send()
        .await
    {
        let failure = crate::aws::classify(&e);
        if failure.kind != crate::aws::Kind::NotFound {
            return failure.outcome("ssm:DeregisterManagedInstance");
        }
    }
    status.managed_node_id = None;
    Outcome::Progressing(
        Observation::unknown(
            reasons::REGISTERING,
            said(&format!(
                "node {node}, registered by an install of this object's that was cut short, is \
                 not the host's (its registration was never written there): deregistered; the \
                 host is registered again"
            )),
        ),
        Duration::from_secs(1),
    )
}

/// The probe found the host registered as `node` (its registration file) before anything was
/// made for it in AWS: the node is adopted on its evidence, or refused, here, so that no
/// activation is made for a host that needs none. `None` when this is not for this step to say
/// (an EC2 instance, or the object's own node, which the install registers again or resumes).
pub(super) async fn after_probe(
    obj: &InstanceRegistration,
    ssm: &SystemsManagerSpec,
    ctx: &Context,
    node: &str,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Option<Outcome> {
    if obj.spec.infrastructure_class != InfrastructureClass::OnPremises
        || findings(facts).resume.is_some()
        || status.managed_node_id.as_deref() == Some(node)
    {
        return None;
    }
    let region = super::region(ctx, ssm).to_owned();
    let said = |what: &str| format!("{what} (from the host's {})", script::SSM_REGISTRATION_FILE);
    Some(registered_already(obj, ctx, &region, node, status, facts, &said).await)
}

/// The host said it is registered as `node` already (nothing was run): adopted if Systems
/// Manager lists that node in `region` and its own record of it proves it the host's and this
/// namespace's to take ([`super::evidence`]); this object's own if it registered with the
/// object's activation; else reported, and nothing is recorded of it.
async fn registered_already(
    obj: &InstanceRegistration,
    ctx: &Context,
    region: &str,
    node: &str,
    status: &mut InstanceRegistrationStatus,
    facts: &mut Facts,
    said: &(dyn Fn(&str) -> String + Sync),
) -> Outcome {
    if !super::is_managed_node_id(node) {
        return Outcome::Blocked(Observation::fails(
            reasons::REGISTERED_ELSEWHERE,
            said(
                "the host's registration file names something that is not a managed node ID; nothing was run",
            ),
        ));
    }
    let listed = match super::find_node(ctx, region, "InstanceIds", node).await {
        Ok(listed) => listed,
        Err(outcome) => return outcome,
    };
    let Some(listed) = listed else {
        return Outcome::Blocked(Observation::fails(
            reasons::REGISTERED_ELSEWHERE,
            said(&format!(
                "the host is registered with Systems Manager as {node}, which {region} does not \
                 list (another account or region, or deregistered); it is not registered again: \
                 deregister it there, or remove {} on the host",
                script::SSM_REGISTRATION_FILE
            )),
        ));
    };
    let evidence = match evidence::gather(ctx, region, obj, listed.clone()).await {
        Ok(evidence) => evidence,
        Err(outcome) => return outcome,
    };
    // Registered with this object's activation (made for it, and tagged with its UID).
    let ours = evidence.owner == evidence::Owner::This
        && listed.activation_id.is_some()
        && listed.activation_id == status.activation_id;
    if !ours {
        let namespace = obj.namespace().unwrap_or_default();
        match evidence::judge(&evidence, &namespace, status.host.as_ref()) {
            evidence::Judgement::Proven => {}
            evidence::Judgement::Refused(refused) => {
                warn!(name = %obj.name_any(), node, reason = refused.reason, "not adopting the node the host names");
                return Outcome::Blocked(Observation::fails(
                    refused.reason,
                    said(&format!(
                        "the host's registration file names node {node}; {}",
                        refused.message
                    )),
                ));
            }
            evidence::Judgement::Unknown(unknown) => return Outcome::Retry(unknown),
        }
    }
    status.managed_node_id = Some(listed.id.clone());
    status.adopted = !ours;
    if ours {
        status.agent_installed_at = Some(Time(Timestamp::now()));
    }
    let message = format!(
        "the host is registered as {} ({}){}",
        listed.id,
        listed.ping_status,
        if ours {
            ", with this object's activation"
        } else {
            "; adopted"
        }
    );
    findings(facts).node = Some(listed);
    Outcome::Done(Observation::holds(
        if ours {
            reasons::SUCCEEDED
        } else {
            reasons::ADOPTED
        },
        message,
    ))
}
