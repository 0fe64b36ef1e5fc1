//! Evaluating IAM identity policies for one action on one resource, as far as registering needs:
//! `Effect`, `Action`/`NotAction` and `Resource`/`NotResource` with `*` and `?` wildcards, and
//! date conditions on `aws:CurrentTime` / `aws:EpochTime` (`DateLessThan`, `DateLessThanEquals`,
//! `DateGreaterThan`, `DateGreaterThanEquals`, `DateEquals`, `DateNotEquals`). An explicit deny
//! wins over an allow; no allow is an implicit deny. A statement with a condition this module
//! does not understand never applies (and says so in the notes).

use std::time::SystemTime;

use serde_json::Value;

use crate::time::{iso8601, parse_iso8601};

/// Where a policy document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A managed policy attached to the user, or to `group`.
    Managed {
        /// Policy ARN.
        arn: String,
        /// The group it is attached to, when not the user.
        group: Option<String>,
    },
    /// An inline policy of the user, or of `group`.
    Inline {
        /// Policy name.
        name: String,
        /// The group it belongs to, when not the user.
        group: Option<String>,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, name, group) = match self {
            Source::Managed { arn, group } => ("managed policy", arn, group),
            Source::Inline { name, group } => ("inline policy", name, group),
        };
        match group {
            Some(g) => write!(f, "{kind} {name} of group {g}"),
            None => write!(f, "{kind} {name}"),
        }
    }
}

/// A policy document and where it comes from.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it comes from.
    pub source: Source,
    /// The JSON document (URL-encoded, as IAM's API returns it, or plain).
    pub document: String,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A statement of this policy allows it, and none denies it.
    Allowed(Source),
    /// A statement of this policy denies it.
    Denied(Source),
    /// Nothing allows it; the notes say what came close (e.g. an allow whose time has passed).
    NotAllowed(Vec<String>),
}

/// `*` matches any run of characters, `?` any one character.
fn glob(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if case_insensitive {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn matches_any(v: Option<&Value>, text: &str, case_insensitive: bool) -> Option<bool> {
    strings(v).map(|ps| ps.iter().any(|p| glob(p, text, case_insensitive)))
}

/// Whether the statement's `Condition` holds at `now`: `Ok(true/false)`, or `Err(why)` when
/// it uses something not understood here.
fn condition_holds(condition: &Value, now: SystemTime) -> Result<bool, String> {
    let Value::Object(ops) = condition else {
        return Err("a Condition that is not an object".into());
    };
    for (op, keys) in ops {
        let base = op.strip_suffix("IfExists").unwrap_or(op);
        let Value::Object(keys) = keys else {
            return Err(format!("condition operator {op} without keys"));
        };
        for (key, values) in keys {
            let key_l = key.to_ascii_lowercase();
            if key_l != "aws:currenttime" && key_l != "aws:epochtime" {
                return Err(format!("condition key {key}"));
            }
            let values: Vec<String> = match values {
                Value::Array(a) => a
                    .iter()
                    .map(|x| match x {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => vec![other.to_string()],
            };
            // Values of one key are ORed; keys and operators are ANDed.
            let mut any = false;
            for v in &values {
                let Some(t) = parse_iso8601(v) else {
                    return Err(format!("date value {v:?} under {op}"));
                };
                let holds = match base {
                    "DateLessThan" => now < t,
                    "DateLessThanEquals" => now <= t,
                    "DateGreaterThan" => now > t,
                    "DateGreaterThanEquals" => now >= t,
                    "DateEquals" => now == t,
                    "DateNotEquals" => now != t,
                    _ => return Err(format!("condition operator {op}")),
                };
                any |= holds;
            }
            if !any {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn decode(document: &str) -> String {
    let t = document.trim_start();
    if t.starts_with('{') {
        document.to_owned()
    } else {
        percent_encoding::percent_decode_str(document)
            .decode_utf8_lossy()
            .into_owned()
    }
}

/// Evaluates `policies` for `action` (e.g. `opsworks:RegisterInstance`) on `resource` (an ARN)
/// at time `now`.
pub fn evaluate(policies: &[Policy], action: &str, resource: &str, now: SystemTime) -> Outcome {
    let mut allowed = None;
    let mut notes = Vec::new();
    for policy in policies {
        let doc: Value = match serde_json::from_str(&decode(&policy.document)) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!("{} is not valid JSON ({e})", policy.source));
                continue;
            }
        };
        let statements = match doc.get("Statement") {
            Some(Value::Array(a)) => a.clone(),
            Some(s @ Value::Object(_)) => vec![s.clone()],
            _ => continue,
        };
        for st in &statements {
            let effect = st.get("Effect").and_then(Value::as_str).unwrap_or("");
            let action_ok = match (
                matches_any(st.get("Action"), action, true),
                matches_any(st.get("NotAction"), action, true),
            ) {
                (Some(m), _) => m,
                (None, Some(m)) => !m,
                (None, None) => false,
            };
            let resource_ok = match (
                matches_any(st.get("Resource"), resource, false),
                matches_any(st.get("NotResource"), resource, false),
            ) {
                (Some(m), _) => m,
                (None, Some(m)) => !m,
                (None, None) => false,
            };
            if !action_ok || !resource_ok {
                continue;
            }
            if let Some(cond) = st.get("Condition") {
                match condition_holds(cond, now) {
                    Ok(true) => {}
                    Ok(false) => {
                        notes.push(format!(
                            "{} would {} it, but its condition does not hold at {} ({})",
                            policy.source,
                            effect.to_ascii_lowercase(),
                            iso8601(now),
                            cond
                        ));
                        continue;
                    }
                    Err(why) => {
                        notes.push(format!(
                            "{} has a statement with a condition not supported here ({why})",
                            policy.source
                        ));
                        continue;
                    }
                }
            }
            match effect {
                "Deny" => return Outcome::Denied(policy.source.clone()),
                "Allow" if allowed.is_none() => allowed = Some(policy.source.clone()),
                _ => {}
            }
        }
    }
    match allowed {
        Some(source) => Outcome::Allowed(source),
        None => Outcome::NotAllowed(notes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STACK: &str = "arn:aws:opsworks:us-east-1:123456789012:stack/abc/";

    fn inline(doc: serde_json::Value) -> Policy {
        Policy {
            source: Source::Inline {
                name: "OpsWorks-Instance".into(),
                group: None,
            },
            document: doc.to_string(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("opsworks:*", "OpsWorks:RegisterInstance", true));
        assert!(glob("*", "x", false));
        assert!(glob("arn:aws:opsworks:*:*:stack/abc/", STACK, false));
        assert!(!glob("arn:aws:opsworks:*:*:stack/abd/", STACK, false));
        assert!(glob(
            "opsworks:Register?nstance",
            "opsworks:RegisterInstance",
            true
        ));
    }

    #[test]
    fn inline_policy_with_time_condition() {
        let now = SystemTime::now();
        let doc = |t: SystemTime| {
            serde_json::json!({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "opsworks:RegisterInstance", "Resource": STACK,
                "Condition": {"DateLessThan": {"aws:CurrentTime": iso8601(t)}}}]})
        };
        let later = now + Duration::from_secs(900);
        let earlier = now - Duration::from_secs(900);
        assert!(matches!(
            evaluate(
                &[inline(doc(later))],
                "opsworks:RegisterInstance",
                STACK,
                now
            ),
            Outcome::Allowed(_)
        ));
        match evaluate(
            &[inline(doc(earlier))],
            "opsworks:RegisterInstance",
            STACK,
            now,
        ) {
            Outcome::NotAllowed(notes) => assert!(notes[0].contains("condition"), "{notes:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            evaluate(
                &[inline(doc(later))],
                "opsworks:RegisterInstance",
                "arn:aws:opsworks:us-east-1:123456789012:stack/other/",
                now
            ),
            Outcome::NotAllowed(_)
        ));
    }

    #[test]
    fn deny_wins_and_encoded_documents() {
        let allow = serde_json::json!({"Statement": {"Effect": "Allow", "Action": ["opsworks:*"],
                                       "Resource": ["*"]}});
        let deny = serde_json::json!({"Statement": [{"Effect": "Deny", "NotAction": "iam:*",
                                       "Resource": "*"}]});
        let encoded: String = percent_encoding::utf8_percent_encode(
            &allow.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let now = SystemTime::now();
        let allowed = Policy {
            source: Source::Managed {
                arn: "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration".into(),
                group: None,
            },
            document: encoded,
        };
        assert!(matches!(
            evaluate(
                std::slice::from_ref(&allowed),
                "opsworks:RegisterInstance",
                STACK,
                now
            ),
            Outcome::Allowed(Source::Managed { .. })
        ));
        assert!(matches!(
            evaluate(
                &[allowed, inline(deny)],
                "opsworks:RegisterInstance",
                STACK,
                now
            ),
            Outcome::Denied(Source::Inline { .. })
        ));
        assert!(matches!(
            evaluate(&[inline(serde_json::json!("x"))], "a:b", STACK, now),
            Outcome::NotAllowed(_)
        ));
    }
}
