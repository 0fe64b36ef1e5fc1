//! Step: the host answers over SSH before anything is written in IAM. One short session, with the
//! host key checked per `ssh.hostKeyPolicy` and the login accepted, runs a read-only probe that
//! asks the host what it registers as ([`probe::PROBE_SCRIPT`]: its hostname and its own
//! addresses). The host key's fingerprint (trust on first use) and the answer are recorded on
//! status at once, so an unreachable or mistyped host never gets an IAM user, a later session that
//! fails half-way still finds the key recorded, and the registration the install makes can be
//! recognised whatever address the agent reports.
//!
//! The object's service looks at the answer before anything is made in AWS
//! ([`Service::after_probe`]): OpsWorks decides whether an on-premises host is registered already
//! (it is then adopted) or its hostname is another host's; Systems Manager adopts or refuses the
//! node a host's registration file names (the answer to its own [`Service::probe_question`]).

use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use tracing::info;

use super::{preflight, probe};
use crate::conditions::{self, Observation, Outcome, reasons, types};
use crate::context::{Context, Facts, Probed, Service, TargetFacts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::resource::{
    HostCertificate, HostIdentity, HostKeyPolicy, InstanceRegistration, InstanceRegistrationStatus,
    JumpHost, RecordedHostKey,
};
use crate::slots::{Acquired, Slot};
use crate::ssh::{self, HostKeyRule, SshError};
use crate::sshcert;

/// Runs the host step for `obj`, whose service is `service`.
pub(crate) async fn check(
    service: &dyn Service,
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Outcome {
    if let Some(id) = service.registered_as(facts) {
        return Outcome::Done(Observation::holds(
            reasons::NOT_NEEDED,
            format!("the host is registered as {id}"),
        ));
    }
    let (Some(target), Some(key)) = (facts.target.clone(), facts.ssh_key.clone()) else {
        return Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the host or the SSH key is not resolved",
        ));
    };
    let (connect, rule) = match connection(obj, &target, facts, status) {
        Ok(c) => c,
        Err(outcome) => return outcome,
    };
    let via = via(&connect);
    // Asked again when the way to the host changed, or a host key to trust on first use has no
    // record (a person cleared it to accept a new key), or the service asks a question of its
    // own (the answer is not kept on status: a host is asked at each pass until it is
    // registered, so a registration refused once is refused again before anything is made).
    // A pass that ended on a preflight failure asks again too: what was fixed on the host
    // (its clock, a route) is seen at the next pass.
    let learned_earlier = status.host.as_ref().is_some_and(|h| h.via == via);
    let question = service.probe_question(obj);
    let mut answer = None;
    let mut preflight = None;
    let learned_here = match learned_earlier
        && unrecorded_hop(obj, status).is_none()
        && question.is_none()
        && !preflight_failed(status)
    {
        true => false,
        false => {
            // The probe may wait on a host that does not answer: off the reconcile workers.
            facts.detach();
            let slot = match slot(obj, ctx, facts, status, types::HOST_REACHABLE).await {
                Ok(slot) => slot,
                Err(outcome) => return outcome,
            };
            let mut needs = service.needs(obj, ctx, facts).await;
            if !ctx.settings.check_host_endpoints {
                needs.endpoints.clear();
            }
            let script = probe::script(question, &preflight::script(&needs));
            let asked = SystemTime::now();
            let (learned, run) = match probe(obj, ctx, slot, &connect, rule, key, &script).await {
                Ok(probed) => probed,
                Err(outcome) => return outcome,
            };
            let report = preflight::parse(&String::from_utf8_lossy(&run.output));
            preflight = Some(preflight::judge(&needs, &report, asked, SystemTime::now()));
            record_host_keys(obj, status, &run);
            answer = learned.answer;
            status.host = Some(HostIdentity {
                hostname: learned.hostname,
                addresses: learned.addresses,
                via: via.clone(),
            });
            true
        }
    };
    if learned_here && let Err(outcome) = record(ctx, obj, facts, status).await {
        return outcome;
    }
    if let Some(holder) = crate::conflict::holder_of_the_same_host(
        obj,
        status,
        target.ec2_instance_id.as_deref(),
        &ctx.store.state(),
        |o| ctx.competes(obj, o),
    ) {
        return Outcome::Blocked(holder.observation(&service.place(obj)));
    }
    let said = said(&via, &status.host.clone().unwrap_or_default());
    let probed = Probed {
        obj,
        target: &target,
        said: &said,
        answer: answer.as_deref(),
    };
    if let Some(outcome) = service.after_probe(probed, ctx, facts, status).await {
        return outcome;
    }
    // Nothing is made for a host the agent could not work on; each failure passes once fixed
    // on the host, so it is retried with backoff.
    let checked = match preflight {
        Some(Err(failed)) => return Outcome::Retry(failed),
        Some(Ok(checked)) => format!("; {checked}"),
        None => String::new(),
    };
    Outcome::Done(Observation::holds(
        reasons::SUCCEEDED,
        if learned_here {
            format!("{said}{checked}")
        } else {
            format!("{said} (learned earlier)")
        },
    ))
}

/// Records what the host said at once, not at the end of the pass: another object that reached
/// the same host (named otherwise: an address and a DNS name) must see it before either makes
/// credentials.
async fn record(
    ctx: &Context,
    obj: &InstanceRegistration,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
) -> Result<(), Outcome> {
    if let Err(problem) = crate::context::checkpoint(ctx, obj, status, facts).await {
        return Err(Outcome::Retry(Observation::fails(
            reasons::KUBERNETES_API_ERROR,
            format!("recording what the host said: {problem}"),
        )));
    }
    settle(ctx, obj, facts.resource_version.as_deref()).await;
    Ok(())
}

/// What the host at `via` said of itself, for messages.
fn said(via: &str, host: &HostIdentity) -> String {
    format!(
        "{via} answered as {} ({})",
        host.hostname.as_deref().unwrap_or("no hostname"),
        if host.addresses.is_empty() {
            "no addresses".to_owned()
        } else {
            host.addresses.join(", ")
        }
    )
}

/// Whether the host step's last pass ended on a preflight failure ([`preflight::REASONS`]).
fn preflight_failed(status: &InstanceRegistrationStatus) -> bool {
    conditions::get(&status.conditions, types::HOST_REACHABLE)
        .is_some_and(|c| preflight::REASONS.contains(&c.reason.as_str()))
}

/// How long the host step waits, once what a host said is recorded, for other objects probing
/// at the same moment (possibly the same host, named otherwise) to record theirs.
const SETTLE: Duration = Duration::from_secs(1);
/// How long it waits at most for its own record to reach the controller's cache.
const SEEN_WITHIN: Duration = Duration::from_secs(3);

/// Waits until this object's status write (`version`) is in the controller's cache, so that every
/// write before it is too (one watch delivers them in order), and then, for at most [`SETTLE`],
/// while another object of the same registry has not recorded its host yet (it may be probing
/// the same host now). Then [`crate::conflict::holder_of_the_same_host`] sees the others.
async fn settle(ctx: &Context, obj: &InstanceRegistration, version: Option<&str>) {
    let me = kube::runtime::reflector::ObjectRef::from_obj(obj);
    let start = std::time::Instant::now();
    let mut seen_at = None;
    while start.elapsed() < SEEN_WITHIN {
        let seen = match seen_at {
            Some(at) => at,
            None => match ctx.store.get(&me) {
                Some(cached) if cached.metadata.resource_version.as_deref() == version => {
                    *seen_at.insert(std::time::Instant::now())
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let probing = ctx.store.state().iter().any(|o| {
            o.metadata.uid != obj.metadata.uid
                && ctx.services.same_registry(o, obj)
                && o.metadata.deletion_timestamp.is_none()
                && o.status.as_ref().is_none_or(|s| s.host.is_none())
        });
        if !probing || seen.elapsed() >= SETTLE {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether this object started an install on the host (so a registration of the host may be one
/// it made).
pub(crate) fn installed(status: &InstanceRegistrationStatus) -> bool {
    status.install_started_at.is_some() || status.agent_installed_at.is_some()
}

/// Where and how to connect to the host (through its jump hosts, each logged in to with its key
/// and certificate in `keys`), and which host keys to trust.
pub(crate) fn connection(
    obj: &InstanceRegistration,
    target: &TargetFacts,
    keys: &Facts,
    status: &InstanceRegistrationStatus,
) -> Result<(ssh::Target, HostKeyRule), Outcome> {
    let spec = &obj.spec.ssh;
    let jump_keys = &keys.jump_keys;
    if jump_keys.len() != spec.jump_hosts.len() {
        return Err(Outcome::Blocked(Observation::fails(
            reasons::WAITING,
            "the jump hosts' SSH keys are not resolved",
        )));
    }
    let mut jump_hosts = Vec::with_capacity(spec.jump_hosts.len());
    for (index, (hop, key)) in spec.jump_hosts.iter().zip(jump_keys).enumerate() {
        let via = hop_via(hop);
        let rule = host_key_rule(
            hop.host_key_policy,
            &hop.host_keys,
            &hop.host_certificate_authorities,
            status
                .jump_host_key_fingerprints
                .iter()
                .find(|r| r.via == via)
                .map(|r| r.fingerprint.clone()),
            "status.jumpHostKeyFingerprints",
        )
        .map_err(|(field, problem)| {
            Outcome::Blocked(Observation::fails(
                reasons::HOST_KEY_MISMATCH,
                format!("ssh.jumpHosts[{index}].{field}: {problem}"),
            ))
        })?;
        jump_hosts.push(ssh::Hop {
            host: hop.address.clone(),
            port: hop.port,
            username: hop.username.clone(),
            key: key.clone(),
            certificate: keys.jump_certificates.get(index).cloned().flatten(),
            rule,
        });
    }
    let connect = ssh::Target {
        host: spec
            .address
            .clone()
            .unwrap_or_else(|| target.address.clone()),
        port: spec.port,
        username: spec.username.clone(),
        certificate: keys.ssh_certificate.clone(),
        jump_hosts,
        connect_timeout: Duration::from_secs(spec.timeout_seconds.into()),
        command_timeout: Duration::from_secs(spec.command_timeout_seconds.into()),
        tty_retry_status: None,
    };
    let rule = host_key_rule(
        spec.host_key_policy,
        &spec.host_keys,
        &spec.host_certificate_authorities,
        status.host_key_fingerprint.clone(),
        "status.hostKeyFingerprint",
    )
    .map_err(|(field, problem)| {
        Outcome::Blocked(Observation::fails(
            reasons::HOST_KEY_MISMATCH,
            format!("ssh.{field}: {problem}"),
        ))
    })?;
    Ok((connect, rule))
}

/// The host key rule of one hop; fails (naming the field) when keys are listed but none can be
/// read, or a listed CA cannot be read (a CA left out would narrow the trust the manifest
/// meant, silently).
fn host_key_rule(
    policy: HostKeyPolicy,
    host_keys: &[String],
    authorities: &[String],
    recorded: Option<String>,
    recorded_in: &'static str,
) -> Result<HostKeyRule, (&'static str, String)> {
    let pinned: Vec<_> = host_keys
        .iter()
        .filter_map(|line| ssh::parse_known_host(line))
        .collect();
    if !host_keys.is_empty() && pinned.is_empty() {
        return Err((
            "hostKeys",
            "none of the listed keys is a public key the controller can read".into(),
        ));
    }
    let mut cas = Vec::with_capacity(authorities.len());
    for (index, line) in authorities.iter().enumerate() {
        match sshcert::parse_ca_line(line) {
            Some(ca) => cas.push(ca),
            None => {
                return Err((
                    "hostCertificateAuthorities",
                    format!(
                        "entry {index} is not a CA public key the controller can read \
                         (@cert-authority <host-patterns> <key-type> <base64>, or <key-type> \
                         <base64>)"
                    ),
                ));
            }
        }
    }
    if policy == HostKeyPolicy::CertificateAuthority && cas.is_empty() {
        return Err((
            "hostCertificateAuthorities",
            "hostKeyPolicy CertificateAuthority needs at least one CA".into(),
        ));
    }
    Ok(HostKeyRule {
        policy,
        pinned,
        recorded,
        recorded_in,
        authorities: cas,
    })
}

/// A jump host's `address:port`, as status.jumpHostKeyFingerprints records it.
fn hop_via(hop: &JumpHost) -> String {
    format!("{}:{}", hop.address, hop.port)
}

/// `address:port` of the host, and of the jump hosts on the way if any, as status.host.via
/// records it.
fn via(connect: &ssh::Target) -> String {
    let host = format!("{}:{}", connect.host, connect.port);
    if connect.jump_hosts.is_empty() {
        return host;
    }
    let hops: Vec<String> = connect
        .jump_hosts
        .iter()
        .map(|hop| format!("{}:{}", hop.host, hop.port))
        .collect();
    format!("{host} via {}", hops.join(" > "))
}

/// The first hop (a jump host's index, or `None` for the host itself) whose key is to be
/// trusted on first use but has no record, if any: nothing may be installed through it until
/// the probe recorded its key.
pub(crate) fn unrecorded_hop(
    obj: &InstanceRegistration,
    status: &InstanceRegistrationStatus,
) -> Option<Option<usize>> {
    let spec = &obj.spec.ssh;
    let hop = spec.jump_hosts.iter().position(|hop| {
        hop.host_key_policy == HostKeyPolicy::TrustOnFirstUse
            && !status
                .jump_host_key_fingerprints
                .iter()
                .any(|r| r.via == hop_via(hop))
    });
    match hop {
        Some(index) => Some(Some(index)),
        None => (spec.host_key_policy == HostKeyPolicy::TrustOnFirstUse
            && status.host_key_fingerprint.is_none())
        .then_some(None),
    }
}

/// Records on status the host keys a session trusted that have no record yet (trust on first
/// use); a jump host no longer in the spec loses its record. A hop trusted by its CA
/// (CertificateAuthority) has its key and certificate recorded at every session instead: the
/// record is what the host is now, not what it is trusted by, and a renewed certificate or a
/// new key the CA vouches for replaces it.
pub(crate) fn record_host_keys(
    obj: &InstanceRegistration,
    status: &mut InstanceRegistrationStatus,
    run: &ssh::Run,
) {
    let by_ca = obj.spec.ssh.host_key_policy == HostKeyPolicy::CertificateAuthority;
    if by_ca {
        status.host_key_fingerprint = Some(run.host_key_fingerprint.clone());
        status.host_certificate = run.host_certificate.as_ref().map(certificate_record);
    } else {
        if status.host_key_fingerprint.is_none() {
            status.host_key_fingerprint = Some(run.host_key_fingerprint.clone());
        }
        status.host_certificate = None;
    }
    let hops = &obj.spec.ssh.jump_hosts;
    let records = &mut status.jump_host_key_fingerprints;
    records.retain(|r| hops.iter().any(|hop| hop_via(hop) == r.via));
    let certificates = run
        .jump_host_certificates
        .iter()
        .chain(std::iter::repeat(&None));
    for ((hop, fingerprint), certificate) in hops
        .iter()
        .zip(&run.jump_host_key_fingerprints)
        .zip(certificates)
    {
        let via = hop_via(hop);
        let record = RecordedHostKey {
            via: via.clone(),
            fingerprint: fingerprint.clone(),
            certificate: certificate.as_ref().map(certificate_record),
        };
        match records.iter_mut().find(|r| r.via == via) {
            Some(existing) if hop.host_key_policy == HostKeyPolicy::CertificateAuthority => {
                *existing = record;
            }
            Some(_) => {}
            None => records.push(record),
        }
    }
}

/// Status's record of a host certificate.
fn certificate_record(summary: &sshcert::CertificateSummary) -> HostCertificate {
    HostCertificate {
        key_id: summary.key_id.clone(),
        serial: summary.serial,
        certificate_authority: summary.certificate_authority.clone(),
        valid_before: summary
            .valid_before
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
            .map(Time),
    }
}

/// How long the probe may run once logged in.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the probe `script` (with the service's own question and the preflight checks); returns
/// what the host said, and the session (its host keys).
async fn probe(
    obj: &InstanceRegistration,
    ctx: &Context,
    slot: Slot,
    connect: &ssh::Target,
    rule: HostKeyRule,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    script: &str,
) -> Result<(probe::Learned, ssh::Run), Outcome> {
    let connect = ssh::Target {
        command_timeout: PROBE_TIMEOUT.min(connect.command_timeout),
        ..connect.clone()
    };
    info!(name = %obj.name_any(), host = %connect.host, port = connect.port, "asking the host what it registers as");
    let run = match session(ctx, slot, &connect, rule, key, script).await {
        Ok(run) => run,
        // A probe that does not finish in its time says the host is not answering.
        Err(outcome) if outcome.observation().reason == reasons::INSTALL_TIMEOUT => {
            return Err(Outcome::Retry(Observation::fails(
                reasons::HOST_UNREACHABLE,
                format!(
                    "{}:{}: the probe did not finish within {}s; retrying",
                    connect.host,
                    connect.port,
                    connect.command_timeout.as_secs()
                ),
            )));
        }
        Err(outcome) => return Err(outcome),
    };
    let text = String::from_utf8_lossy(&run.output);
    match probe::parse_probe(&text) {
        Some(learned) if run.exit_status == Some(0) => Ok((learned, run)),
        _ => Err(Outcome::Blocked(Observation::fails(
            reasons::HOST_IDENTITY_UNKNOWN,
            format!(
                "{}:{}: the host's login shell did not run the probe (exit status {}); it must \
                 run /bin/sh commands for the install too",
                connect.host,
                connect.port,
                run.exit_status
                    .map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        ))),
    }
}

/// Waits for an SSH slot for `obj`'s namespace ([`crate::slots`]). While it waits (every slot in
/// use, or the namespace holds its share), the object says why: its `condition` and Ready have
/// reason `Queued`, written at once (a pass that waits has let go of its reconcile worker).
pub(crate) async fn slot(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    condition: &str,
) -> Result<Slot, Outcome> {
    let queued = match ctx.ssh_slots.acquire(&obj.namespace().unwrap_or_default()) {
        Acquired::Now(slot) => return Ok(slot),
        Acquired::Queued(queued) => queued,
    };
    let why = queued.reason();
    info!(name = %obj.name_any(), "{why}");
    let generation = obj.metadata.generation.unwrap_or_default();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let conds = &mut status.conditions;
    let waiting = Observation::unknown(reasons::QUEUED, why.clone());
    conditions::set(conds, condition, waiting, generation, &now);
    conditions::set(
        conds,
        types::READY,
        Observation::fails(reasons::QUEUED, why.clone()),
        generation,
        &now,
    );
    status.message = Some(why);
    // Best effort: if the object changed meanwhile, the pass's end writes what it found.
    if let Err(problem) = crate::context::checkpoint(ctx, obj, status, facts).await {
        tracing::debug!(name = %obj.name_any(), %problem, "recording that the session is queued");
    }
    Ok(queued.wait().await)
}

/// Runs `script` on the host in one SSH session, in `slot` (sessions are bounded apart from
/// reconciles: a slow fleet of hosts must not starve the reconciles that only talk to AWS),
/// counted by how they ended: succeeded, failed (a non-zero exit), or the condition reason of the
/// SSH failure, which is the outcome returned. The session is counted in flight while it runs,
/// however its pass ends.
pub(crate) async fn session(
    ctx: &Context,
    slot: Slot,
    connect: &ssh::Target,
    rule: HostKeyRule,
    key: std::sync::Arc<russh::keys::PrivateKey>,
    script: &str,
) -> Result<ssh::Run, Outcome> {
    let in_flight = ctx.metrics.ssh_session();
    let result = ssh::run_script(connect, rule, key, script).await;
    drop(in_flight);
    drop(slot);
    let (ended, result) = match result {
        Ok(run) if run.exit_status == Some(0) => ("succeeded", Ok(run)),
        Ok(run) => ("failed", Ok(run)),
        Err(error) => {
            let outcome = ssh_failure(error);
            (outcome.observation().reason, Err(outcome))
        }
    };
    ctx.metrics
        .ssh_sessions
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: ended.to_owned(),
        })
        .inc();
    result
}

/// The outcome of an SSH failure: the host may come back (retried quickly); a key, an identity
/// or a jump host's configuration problem waits for a person (retried slowly).
fn ssh_failure(failure: ssh::Failure) -> Outcome {
    let message = failure.to_string();
    match failure.error {
        SshError::Unreachable(_) | SshError::ConnectTimeout => Outcome::Retry(Observation::fails(
            reasons::HOST_UNREACHABLE,
            format!("{message}; retrying"),
        )),
        SshError::HostKeyMismatch(_) => Outcome::Blocked(Observation::fails(
            reasons::HOST_KEY_MISMATCH,
            format!("{message}; nothing was sent to it or past it"),
        )),
        // Retried with backoff, not only on a spec change: a host's certificate is renewed on
        // the host, and a clock catches up.
        SshError::HostCertificateInvalid(_) => Outcome::Retry(Observation::fails(
            reasons::HOST_CERTIFICATE_INVALID,
            format!("{message}; nothing was sent to it or past it"),
        )),
        SshError::AuthFailed(_) => {
            Outcome::Blocked(Observation::fails(reasons::SSH_AUTH_FAILED, message))
        }
        SshError::ForwardingRefused(_) => {
            Outcome::Blocked(Observation::fails(reasons::FORWARDING_REFUSED, message))
        }
        SshError::Protocol(_) => {
            Outcome::Retry(Observation::fails(reasons::SSH_PROTOCOL_ERROR, message))
        }
        SshError::CommandTimeout(_) => {
            Outcome::Blocked(Observation::fails(reasons::INSTALL_TIMEOUT, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};
    use std::sync::Arc;

    fn obj(ssh: &str) -> InstanceRegistration {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: registrar.dev/v1alpha1
kind: InstanceRegistration
metadata: {{name: db, namespace: ns}}
spec:
  stackId: 0b1c2d3e-0000-4000-8000-000000000000
  infrastructureClass: on-premises
  target: 10.0.0.5
  ssh:
    username: admin
    privateKeySecretRef: {{name: key}}
{ssh}
"#
        ))
        .unwrap()
    }

    const TWO_HOPS: &str = "    jumpHosts:
    - {address: bastion, username: jump}
    - {address: gw, port: 2222, username: ops, hostKeyPolicy: AcceptAny}";

    fn target() -> TargetFacts {
        TargetFacts::on_premises("10.0.0.5")
    }

    fn key() -> Arc<PrivateKey> {
        Arc::new(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap())
    }

    fn keys(jumps: usize) -> Facts {
        let mut facts = Facts::default();
        facts.jump_keys = (0..jumps).map(|_| key()).collect();
        facts
    }

    fn run(host: &str, jumps: &[&str]) -> ssh::Run {
        ssh::Run {
            host_key_fingerprint: host.into(),
            jump_host_key_fingerprints: jumps.iter().map(|s| s.to_string()).collect(),
            host_certificate: None,
            jump_host_certificates: vec![],
            exit_status: Some(0),
            output: Vec::new(),
        }
    }

    #[test]
    fn the_way_to_the_host_names_every_hop_and_needs_every_hop_key() {
        let obj = obj(TWO_HOPS);
        let status = InstanceRegistrationStatus::default();
        let (connect, _) = connection(&obj, &target(), &keys(2), &status).unwrap();
        assert_eq!(via(&connect), "10.0.0.5:22 via bastion:22 > gw:2222");
        assert_eq!(connect.hop_name(0), "jump host 1 of 2 (bastion:22)");
        assert_eq!(connect.hop_name(2), "10.0.0.5:22 (through 2 jump hosts)");
        // Without the jump hosts' keys (the SSH key step did not run), nothing connects.
        assert!(connection(&obj, &target(), &keys(1), &status).is_err());
        let direct = self::obj("");
        let (connect, _) = connection(&direct, &target(), &keys(0), &status).unwrap();
        assert_eq!(via(&connect), "10.0.0.5:22");
        assert_eq!(connect.hop_name(0), "10.0.0.5:22");
    }

    #[test]
    fn each_hop_is_judged_by_its_own_record() {
        let obj = obj(TWO_HOPS);
        let status = InstanceRegistrationStatus {
            host_key_fingerprint: Some("SHA256:host".into()),
            jump_host_key_fingerprints: vec![RecordedHostKey {
                via: "bastion:22".into(),
                fingerprint: "SHA256:bastion".into(),
                certificate: None,
            }],
            ..Default::default()
        };
        let (connect, rule) = connection(&obj, &target(), &keys(2), &status).unwrap();
        assert_eq!(rule.recorded.as_deref(), Some("SHA256:host"));
        assert_eq!(
            connect.jump_hosts[0].rule.recorded.as_deref(),
            Some("SHA256:bastion")
        );
        assert_eq!(
            connect.jump_hosts[0].rule.recorded_in,
            "status.jumpHostKeyFingerprints"
        );
        assert_eq!(connect.jump_hosts[1].rule.recorded, None);
        assert_eq!(connect.jump_hosts[1].rule.policy, HostKeyPolicy::AcceptAny);
    }

    #[test]
    fn unreadable_jump_host_keys_block_naming_the_field() {
        // The schema's pattern passes it; the key itself does not parse.
        let obj = obj(
            "    jumpHosts:\n    - {address: b, username: j, hostKeys: [\"ssh-ed25519 AAAA\"]}",
        );
        let status = InstanceRegistrationStatus::default();
        let Err(Outcome::Blocked(o)) = connection(&obj, &target(), &keys(1), &status) else {
            panic!("an unreadable pinned key was accepted");
        };
        assert_eq!(o.reason, reasons::HOST_KEY_MISMATCH);
        assert!(
            o.message.starts_with("ssh.jumpHosts[0].hostKeys"),
            "{}",
            o.message
        );
    }

    #[test]
    fn nothing_is_installed_until_every_key_to_trust_on_first_use_is_recorded() {
        let obj = obj(TWO_HOPS);
        let mut status = InstanceRegistrationStatus::default();
        // The first jump host trusts on first use; the second accepts any key.
        assert_eq!(unrecorded_hop(&obj, &status), Some(Some(0)));
        record_host_keys(
            &obj,
            &mut status,
            &run("SHA256:host", &["SHA256:b", "SHA256:g"]),
        );
        assert_eq!(unrecorded_hop(&obj, &status), None);
        assert_eq!(status.host_key_fingerprint.as_deref(), Some("SHA256:host"));
        let recorded: Vec<_> = status
            .jump_host_key_fingerprints
            .iter()
            .map(|r| (r.via.as_str(), r.fingerprint.as_str()))
            .collect();
        assert_eq!(
            recorded,
            [("bastion:22", "SHA256:b"), ("gw:2222", "SHA256:g")]
        );
        // A record is never overwritten by a later session.
        record_host_keys(
            &obj,
            &mut status,
            &run("SHA256:other", &["SHA256:x", "SHA256:y"]),
        );
        assert_eq!(status.host_key_fingerprint.as_deref(), Some("SHA256:host"));
        assert_eq!(status.jump_host_key_fingerprints[0].fingerprint, "SHA256:b");
        // A person clears the host's record to accept a new key: asked again.
        status.host_key_fingerprint = None;
        assert_eq!(unrecorded_hop(&obj, &status), Some(None));
    }

    #[test]
    fn a_jump_host_taken_out_of_the_spec_loses_its_record() {
        let mut status = InstanceRegistrationStatus::default();
        record_host_keys(
            &obj(TWO_HOPS),
            &mut status,
            &run("SHA256:h", &["SHA256:b", "SHA256:g"]),
        );
        let one_hop = obj("    jumpHosts:\n    - {address: gw, port: 2222, username: ops}");
        record_host_keys(&one_hop, &mut status, &run("SHA256:h", &["SHA256:g2"]));
        let recorded: Vec<_> = status
            .jump_host_key_fingerprints
            .iter()
            .map(|r| (r.via.as_str(), r.fingerprint.as_str()))
            .collect();
        // The one kept is the first one recorded for that jump host.
        assert_eq!(recorded, [("gw:2222", "SHA256:g")]);
    }
}
