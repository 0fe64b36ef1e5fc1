//! Repairs of a registered host's agent that its service reports out of touch (Systems Manager's
//! `ConnectionLost`, OpsWorks' `connection_lost`): once it has been so for
//! `--agent-repair-after-seconds`, the agent's service is restarted over SSH, under the host's
//! install lock, with the host's init system ([`RESTART`]); then the service is given
//! [`HEARD_WITHIN`] to hear from the agent again. At most one attempt an hour per object
//! ([`EVERY`]), whatever came of the last. Nothing is installed or registered again because of
//! silence: a host that is gone stays out of touch, and says why no repair helped.
//!
//! What the attempts found is kept on status (`status.agentRepair`), so a restarted controller
//! neither repeats an attempt within the hour nor forgets that one is waited on. Each service
//! says what its agent is ([`Agent`]) and calls [`out_of_touch`] and [`in_touch`] from its
//! registration step.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use tracing::{info, warn};

use super::script::{self, Payload, shell_quote};
use crate::conditions::{Observation, Outcome, reasons, types};
use crate::context::{Context, Facts};
use crate::metrics::RepairLabels;
use crate::resource::{
    AgentRepair, InstanceRegistration, InstanceRegistrationStatus, RepairOutcome,
};

/// A service's agent, as its host's init system knows it.
pub(crate) struct Agent {
    /// The service, as metrics label it (`ssm`, `opsworks`).
    pub service: &'static str,
    /// What the agent is called in messages.
    pub what: &'static str,
    /// The names of the agent's service in the host's init system, tried in order (a systemd
    /// unit without `.service`, an upstart job, an init script in `/etc/init.d`).
    pub names: &'static [&'static str],
}

/// Least time between two repairs of one object.
pub(crate) const EVERY: Duration = Duration::from_secs(3600);
/// How long after a restart the service is given to hear from the agent.
pub(crate) const HEARD_WITHIN: Duration = Duration::from_secs(120);
/// How often the registration is looked at while the service has not heard from a restarted
/// agent yet.
const POLL: Duration = Duration::from_secs(2);
/// Time limit of a restart on the host (at most the spec's `ssh.commandTimeoutSeconds`).
const RESTART_LIMIT: Duration = Duration::from_secs(60);
/// How soon a repair that found an install holding the host's lock tries again.
const BUSY_RETRY: Duration = Duration::from_secs(30);

/// Restarts the agent's service with the host's init system, run as root under the install lock:
/// systemd when it runs, else upstart, else the init script (`rc-service` for OpenRC). The first
/// of `@NAMES@` the init system knows is restarted (started when it was not running); a host
/// whose init knows none of them fails with status 3.
const RESTART: &str = r#"set -u
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  for name in @NAMES@; do
    if systemctl cat -- "$name.service" >/dev/null 2>&1; then
      echo "instance-registrar: restarting $name.service (systemd)"
      systemctl restart -- "$name.service" && exit 0
      systemctl status --no-pager --lines=5 -- "$name.service" 2>&1
      exit 1
    fi
  done
fi
if command -v initctl >/dev/null 2>&1 && initctl version 2>/dev/null | grep -q upstart; then
  for name in @NAMES@; do
    if initctl status "$name" >/dev/null 2>&1; then
      echo "instance-registrar: restarting $name (upstart)"
      initctl restart "$name" 2>/dev/null || initctl start "$name"
      exit $?
    fi
  done
fi
for name in @NAMES@; do
  if [ -x "@INITD@/$name" ]; then
    echo "instance-registrar: restarting $name (@INITD@/$name)"
    if command -v rc-service >/dev/null 2>&1; then
      rc-service "$name" restart
    else
      "@INITD@/$name" restart
    fi
    exit $?
  fi
done
printf '%s' "instance-registrar: the host's init system knows none of"
for name in @NAMES@; do printf ' %s' "$name"; done
echo
exit 3
"#;

/// Where SysV and OpenRC init scripts are.
const INIT_SCRIPTS: &str = "/etc/init.d";

/// [`RESTART`] for `agent`, with init scripts in `init_scripts`.
fn restart_entry(agent: &Agent, init_scripts: &str) -> String {
    let names: Vec<String> = agent.names.iter().map(|n| shell_quote(n)).collect();
    RESTART
        .replace("@NAMES@", &names.join(" "))
        .replace("@INITD@", init_scripts)
}

/// The script that restarts `agent`'s service on the host within `time_limit`, for `/bin/sh -s`.
pub(crate) fn restart_script(agent: &Agent, time_limit: Duration) -> String {
    let payload = Payload {
        name: "the agent's restart",
        download: None,
        unpack: String::new(),
        run: r#"/bin/sh "$dir/entry.sh""#.to_owned(),
        run_args: String::new(),
        entry: Some(restart_entry(agent, INIT_SCRIPTS)),
    };
    script::render_payload(
        &payload,
        time_limit,
        script::LOCK_PARENTS,
        script::KILL_AFTER,
    )
}

/// What a registration step does with a registration whose agent its service reports out of
/// touch; `lost` says so (the service's words). Reports it, and repairs the agent when due.
pub(crate) async fn out_of_touch(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    agent: &Agent,
    lost: String,
) -> Outcome {
    let now = Timestamp::now();
    let after = ctx.settings.agent_repair_after;
    let repair = status.agent_repair.get_or_insert_with(AgentRepair::default);
    let since = repair.lost_since.get_or_insert(Time(now)).0;
    if after.is_zero() {
        return Outcome::Blocked(Observation::fails(reasons::CONNECTION_LOST, lost));
    }
    let attempted = repair.attempted_at.as_ref().map(|t| t.0);
    if repair.outcome == Some(RepairOutcome::Restarted)
        && let Some(at) = attempted
    {
        if elapsed(at, now) < HEARD_WITHIN {
            return Outcome::Progressing(
                Observation::unknown(
                    reasons::AGENT_REPAIRING,
                    format!(
                        "{lost}; {what}'s service was restarted at {at}: waiting up to {}s for it \
                         to be heard from",
                        HEARD_WITHIN.as_secs(),
                        what = agent.what,
                    ),
                ),
                POLL,
            );
        }
        repair.outcome = Some(RepairOutcome::Failed);
        repair.message = Some(format!(
            "{}'s service was restarted at {at}, and the service did not hear from it within {}s",
            agent.what,
            HEARD_WITHIN.as_secs()
        ));
        count(ctx, agent, "failed");
    }
    let due = due(since, attempted, after);
    if now < due {
        // Looked at again when the repair is due, or sooner at the resync pace (a node
        // deregistered meanwhile is noticed as at any other time).
        let wait = elapsed(now, due).min(ctx.settings.resync);
        return match (repair.outcome, attempted) {
            (Some(RepairOutcome::Failed), Some(at)) if at >= since => {
                Outcome::Blocked(Observation::fails(
                    reasons::AGENT_REPAIR_FAILED,
                    format!(
                        "{lost}; the repair at {at} failed: {}; the next is at {due} (one an hour); \
                         nothing is registered again because of silence",
                        repair.message.as_deref().unwrap_or("no detail")
                    ),
                ))
            }
            _ => Outcome::Progressing(
                Observation::fails(
                    reasons::CONNECTION_LOST,
                    format!(
                        "{lost}; {}'s service is restarted at {due} if it stays so",
                        agent.what
                    ),
                ),
                wait,
            ),
        };
    }
    attempt(obj, ctx, facts, status, agent, lost).await
}

/// What a registration step does with a registration whose agent its service hears from: the
/// repair bookkeeping ends, and when a restart brought it back, what to say (the reason is then
/// `AgentRepaired`).
pub(crate) fn in_touch(
    ctx: &Context,
    status: &mut InstanceRegistrationStatus,
    agent: &Agent,
) -> Option<String> {
    let repair = status.agent_repair.as_mut()?;
    let since = repair.lost_since.take();
    match repair.outcome {
        Some(RepairOutcome::Restarted) => {
            repair.outcome = Some(RepairOutcome::Repaired);
            repair.message = since.map(|s| format!("out of touch since {}", s.0));
            count(ctx, agent, "repaired");
        }
        Some(RepairOutcome::Repaired) => {}
        // Back by itself (or after a failed attempt): nothing of this controller's to report.
        Some(RepairOutcome::Failed) | None => {
            repair.outcome = None;
            repair.message = None;
            return None;
        }
    }
    let at = repair.attempted_at.as_ref().map(|t| t.0.to_string());
    Some(format!(
        "{}'s service was restarted over SSH at {} ({}): the service hears from it again",
        agent.what,
        at.unwrap_or_default(),
        repair.message.as_deref().unwrap_or("out of touch")
    ))
}

/// When a repair is due: `after` past the time the agent was first seen out of touch, and
/// [`EVERY`] past the last attempt.
fn due(since: Timestamp, attempted: Option<Timestamp>, after: Duration) -> Timestamp {
    let plus = |t: Timestamp, d: Duration| {
        SignedDuration::try_from(d)
            .ok()
            .and_then(|d| t.checked_add(d).ok())
            .unwrap_or(Timestamp::MAX)
    };
    let lost = plus(since, after);
    match attempted {
        Some(at) => lost.max(plus(at, EVERY)),
        None => lost,
    }
}

/// Time from `from` to `to`, zero when `to` comes first.
fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    to.duration_since(from).try_into().unwrap_or_default()
}

fn count(ctx: &Context, agent: &Agent, outcome: &str) {
    ctx.metrics
        .agent_repairs
        .get_or_create(&RepairLabels {
            service: agent.service.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Restarts the agent's service over SSH, and records how it went.
async fn attempt(
    obj: &InstanceRegistration,
    ctx: &Context,
    facts: &mut Facts,
    status: &mut InstanceRegistrationStatus,
    agent: &Agent,
    lost: String,
) -> Outcome {
    let cannot = |why: String| {
        Outcome::Blocked(Observation::fails(
            reasons::CONNECTION_LOST,
            format!("{lost}; {} cannot be repaired over SSH: {why}", agent.what),
        ))
    };
    // A registered host's key is not read by the pipeline: read here.
    if facts.ssh_key.is_none() {
        match super::ssh_key::check(obj, ctx, facts).await {
            Outcome::Done(_) => {}
            other => return cannot(other.observation().message.clone()),
        }
    }
    let (Some(target), Some(key)) = (facts.target.clone(), facts.ssh_key.clone()) else {
        return cannot("the host or the SSH key is not resolved".to_owned());
    };
    let (connect, rule) = match super::host::connection(obj, &target, facts, status) {
        Ok(c) => c,
        Err(outcome) => return cannot(outcome.observation().message.clone()),
    };
    if super::host::unrecorded_hop(obj, status).is_some() {
        return cannot("a host key to trust on first use has no record".to_owned());
    }
    let limit = RESTART_LIMIT.min(connect.command_timeout);
    let script = restart_script(agent, limit);
    // Waiting for a slot and the session itself: off the reconcile workers.
    facts.detach();
    let slot = match super::host::slot(obj, ctx, facts, status, types::REGISTERED).await {
        Ok(slot) => slot,
        Err(outcome) => return outcome,
    };
    let now = Timestamp::now();
    info!(name = %obj.name_any(), host = %connect.host, "restarting {}'s service", agent.what);
    let run = super::host::session(ctx, slot, &connect, rule, key, &script).await;
    let repair = status.agent_repair.get_or_insert_with(AgentRepair::default);
    let failed = |repair: &mut AgentRepair, outcome: &str, message: String| {
        warn!(name = %obj.name_any(), %message, "repairing {} failed", agent.what);
        count(ctx, agent, outcome);
        repair.outcome = Some(RepairOutcome::Failed);
        // What `status.agentRepair.message` holds (2048 characters at most).
        repair.message = Some(crate::conditions::truncate(&message, 2000));
        Outcome::Blocked(Observation::fails(
            reasons::AGENT_REPAIR_FAILED,
            format!(
                "{lost}; the repair at {now} failed: {message}; the next is in {}s (one an \
                 hour); nothing is registered again because of silence",
                EVERY.as_secs()
            ),
        ))
    };
    let run = match run {
        Ok(run) => run,
        Err(outcome) => {
            repair.attempted_at = Some(Time(now));
            repair.attempts += 1;
            let said = outcome.observation().message.clone();
            return failed(
                repair,
                "unreachable",
                format!("the host did not answer over SSH ({said}): it may be gone"),
            );
        }
    };
    let tail = script::output_tail(&run.output, &[], 8, 1000);
    match run.exit_status {
        // An install holds the host's lock: nothing was run; not an attempt.
        Some(script::EXIT_INSTALL_IN_PROGRESS) => Outcome::Progressing(
            Observation::fails(
                reasons::CONNECTION_LOST,
                format!(
                    "{lost}; an install holds the host's install lock: the restart of {}'s \
                     service waits for it; trying again in {}s",
                    agent.what,
                    BUSY_RETRY.as_secs()
                ),
            ),
            BUSY_RETRY,
        ),
        Some(0) => {
            repair.attempted_at = Some(Time(now));
            repair.attempts += 1;
            repair.outcome = Some(RepairOutcome::Restarted);
            repair.message = None;
            count(ctx, agent, "restarted");
            info!(name = %obj.name_any(), "restarted {}'s service", agent.what);
            Outcome::Progressing(
                Observation::unknown(
                    reasons::AGENT_REPAIRING,
                    format!(
                        "{lost}; {}'s service was restarted at {now}: waiting up to {}s for it \
                         to be heard from; the host said:\n{tail}",
                        agent.what,
                        HEARD_WITHIN.as_secs()
                    ),
                ),
                POLL,
            )
        }
        code => {
            repair.attempted_at = Some(Time(now));
            repair.attempts += 1;
            let code = code.map_or("none".to_owned(), |c| c.to_string());
            failed(
                repair,
                "failed",
                format!(
                    "the restart on the host ended with exit status {code}; the host said:\n{tail}"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::script::testing::*;
    use std::process::Command;

    const AGENT: Agent = Agent {
        service: "test",
        what: "the test agent",
        names: &["test-agent", "other'; touch canary; '"],
    };

    #[test]
    fn a_repair_is_due_after_the_delay_and_an_hour_after_the_last() {
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let after = Duration::from_secs(600);
        assert_eq!(
            due(since, None, after),
            "2026-01-01T00:10:00Z".parse().unwrap()
        );
        let at: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(
            due(since, Some(at), after),
            "2026-01-01T01:05:00Z".parse().unwrap()
        );
        let long_ago: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            due(since, Some(long_ago), after),
            "2026-01-01T00:10:00Z".parse().unwrap()
        );
        assert_eq!(elapsed(at, since), Duration::ZERO);
    }

    #[test]
    fn the_restart_uses_the_init_script_of_the_first_name_the_host_knows_and_quotes_each() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("init.d");
        std::fs::create_dir(&init).unwrap();
        let entry = restart_entry(&AGENT, init.to_str().unwrap());
        let run = || {
            Command::new("sh")
                .arg("-c")
                .arg(&entry)
                .current_dir(dir.path())
                .output()
                .unwrap()
        };
        // No init script of either name (and no systemd or upstart job of them on this machine).
        let out = run();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("knows none of test-agent"), "{said}");
        assert!(!dir.path().join("canary").exists());
        // Its init script: run with `restart`, its status the restart's.
        let log = dir.path().join("calls");
        write_exe(
            &init.join("test-agent"),
            &format!("#!/bin/sh\necho \"$@\" >>'{}'\n", log.display()),
        );
        let out = run();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "restart\n");
        write_exe(&init.join("test-agent"), "#!/bin/sh\nexit 7\n");
        assert_eq!(run().status.code(), Some(7));
        assert!(!dir.path().join("canary").exists());
        // The whole script carries the names quoted, and takes the install lock.
        let script = restart_script(&AGENT, Duration::from_secs(60));
        assert!(script.contains(&shell_quote(AGENT.names[1])), "{script}");
        assert!(script.contains("lock.sh\" run"), "{script}");
        assert!(!script.contains("downloading"), "{script}");
    }
}
