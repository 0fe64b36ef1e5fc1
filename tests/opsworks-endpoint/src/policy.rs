//! Evaluating IAM identity policies for one action on one resource, as AWS documents it
//! ("Policy evaluation logic", "IAM JSON policy elements: Condition operators"), as far as the
//! controller's calls need: `Effect`, `Action`/`NotAction` and `Resource`/`NotResource` with `*`
//! and `?` wildcards, and `Condition`s against a request [`Context`]: the `String*`, `Arn*`,
//! `Date*` (on `aws:CurrentTime` / `aws:EpochTime` too), `Bool` and `Null` operators, their
//! negations, `...IfExists`, and the `ForAnyValue:`/`ForAllValues:` set prefixes. An explicit
//! deny wins over an allow; no allow is an implicit deny. A statement with a condition this
//! module does not understand never applies (and says so in the notes).

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

/// The request context a statement's `Condition` is judged against: the keys AWS puts in it for
/// the call (`iam:PolicyARN`, `iam:PassedToService`, `aws:RequestTag/owner`, ...), each with its
/// values. Key names are case-insensitive, as in AWS; `aws:CurrentTime` and `aws:EpochTime` come
/// from the evaluation's time, not from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    keys: std::collections::BTreeMap<String, Vec<String>>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` to `key`.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds `value` to `key`.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) {
        self.keys
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    fn values(&self, key: &str, now: SystemTime) -> Option<Vec<String>> {
        match key.to_ascii_lowercase().as_str() {
            "aws:currenttime" => Some(vec![iso8601(now)]),
            "aws:epochtime" => Some(vec![
                now.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
                    .to_string(),
            ]),
            other => self.keys.get(other).cloned(),
        }
    }
}

/// The time a date condition names: ISO 8601, or seconds since the epoch.
fn date(value: &str) -> Option<SystemTime> {
    parse_iso8601(value).or_else(|| {
        value
            .parse::<u64>()
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
    })
}

/// Whether one value of the request (`have`) matches one value of the policy (`want`) under the
/// operator `base` (no `IfExists`, no set prefix, no negation: `StringNotEquals` is judged as
/// `StringEquals`, then negated by the caller). `Err` for an operator not understood here.
fn value_matches(base: &str, have: &str, want: &str) -> Result<bool, String> {
    Ok(match base {
        "StringEquals" => have == want,
        "StringEqualsIgnoreCase" => have.eq_ignore_ascii_case(want),
        "StringLike" => glob(want, have, false),
        // AWS matches ARNs with wildcards under both operators.
        "ArnEquals" | "ArnLike" => glob(want, have, false),
        "Bool" => have.eq_ignore_ascii_case(want),
        "DateEquals"
        | "DateLessThan"
        | "DateLessThanEquals"
        | "DateGreaterThan"
        | "DateGreaterThanEquals" => {
            let (Some(h), Some(w)) = (date(have), date(want)) else {
                return Err(format!("date value {want:?} under {base}"));
            };
            match base {
                "DateEquals" => h == w,
                "DateLessThan" => h < w,
                "DateLessThanEquals" => h <= w,
                "DateGreaterThan" => h > w,
                _ => h >= w,
            }
        }
        other => return Err(format!("condition operator {other}")),
    })
}

/// The positive operators [`value_matches`] judges.
const OPERATORS: [&str; 11] = [
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "ArnEquals",
    "ArnLike",
    "Bool",
    "DateEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
];

/// The positive operator a negated one is judged by.
fn positive(op: &str) -> Option<&'static str> {
    Some(match op {
        "StringNotEquals" => "StringEquals",
        "StringNotEqualsIgnoreCase" => "StringEqualsIgnoreCase",
        "StringNotLike" => "StringLike",
        "ArnNotEquals" => "ArnEquals",
        "ArnNotLike" => "ArnLike",
        "DateNotEquals" => "DateEquals",
        _ => return None,
    })
}

/// Whether the statement's `Condition` holds for `context` at `now`: `Ok(true/false)`, or
/// `Err(why)` when it uses something not understood here. As AWS evaluates it: operators and
/// keys are ANDed, a key's values ORed; a key absent from the request fails a positive operator
/// and satisfies a negated one (`StringNotEquals`, ...) or any `...IfExists`; `Null` tests for
/// absence; `ForAnyValue:`/`ForAllValues:` compare every value of a multivalued key.
fn condition_holds(condition: &Value, context: &Context, now: SystemTime) -> Result<bool, String> {
    let Value::Object(ops) = condition else {
        return Err("a Condition that is not an object".into());
    };
    for (op, keys) in ops {
        let (set, unprefixed) = match op.split_once(':') {
            Some(("ForAnyValue", rest)) => (Some(false), rest),
            Some(("ForAllValues", rest)) => (Some(true), rest),
            Some(_) => return Err(format!("condition operator {op}")),
            None => (None, op.as_str()),
        };
        let (if_exists, base) = match unprefixed.strip_suffix("IfExists") {
            Some(b) => (true, b),
            None => (false, unprefixed),
        };
        if !(base == "Null" || positive(base).is_some() || OPERATORS.contains(&base)) {
            return Err(format!("condition operator {op}"));
        }
        let Value::Object(keys) = keys else {
            return Err(format!("condition operator {op} without keys"));
        };
        for (key, wanted) in keys {
            let wanted: Vec<String> = match wanted {
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
            let have = context.values(key, now);
            if base == "Null" {
                let absent = have.as_ref().is_none_or(Vec::is_empty);
                let holds = wanted
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case("true") == absent);
                if !holds {
                    return Ok(false);
                }
                continue;
            }
            let (negated, judged_by) = match positive(base) {
                Some(p) => (true, p),
                None => (false, base),
            };
            let Some(have) = have.filter(|h| !h.is_empty()) else {
                // Absent: only `IfExists`, a negated operator, or `ForAllValues` (vacuously)
                // holds.
                if if_exists || negated || set == Some(true) {
                    continue;
                }
                return Ok(false);
            };
            // Whether one request value matches any policy value.
            let one = |h: &String| -> Result<bool, String> {
                let mut any = false;
                for w in &wanted {
                    any |= value_matches(judged_by, h, w)?;
                }
                Ok(any)
            };
            let mut matched = Vec::with_capacity(have.len());
            for h in &have {
                matched.push(one(h)?);
            }
            let holds = match (set, negated) {
                // Every request value is one of the policy's (negated: none is).
                (Some(true), false) => matched.iter().all(|m| *m),
                (Some(true), true) => matched.iter().all(|m| !*m),
                // Some request value is (negated: some is not).
                (Some(false), false) | (None, false) => matched.iter().any(|m| *m),
                (Some(false), true) => matched.iter().any(|m| !*m),
                (None, true) => !matched.iter().any(|m| *m),
            };
            if !holds {
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
/// at time `now`, with no condition keys but the time ones.
pub fn evaluate(policies: &[Policy], action: &str, resource: &str, now: SystemTime) -> Outcome {
    evaluate_in(policies, action, resource, &Context::new(), now)
}

/// Evaluates `policies` for `action` on `resource` at `now`, conditions judged against
/// `context`.
pub fn evaluate_in(
    policies: &[Policy],
    action: &str,
    resource: &str,
    context: &Context,
    now: SystemTime,
) -> Outcome {
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
                match condition_holds(cond, context, now) {
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

    const USER: &str = "arn:aws:iam::123456789012:user/AWS/OpsWorks/OpsWorks-s-h";

    fn allow_with(action: &str, resource: &str, condition: serde_json::Value) -> Policy {
        inline(
            serde_json::json!({"Statement": [{"Effect": "Allow", "Action": action,
            "Resource": resource, "Condition": condition}]}),
        )
    }

    fn allowed(policy: &Policy, action: &str, resource: &str, context: &Context) -> bool {
        matches!(
            evaluate_in(
                std::slice::from_ref(policy),
                action,
                resource,
                context,
                SystemTime::now()
            ),
            Outcome::Allowed(_)
        )
    }

    #[test]
    fn string_and_arn_conditions_against_the_request_context() {
        let attach = allow_with(
            "iam:AttachUserPolicy",
            "arn:aws:iam::*:user/AWS/OpsWorks/*",
            serde_json::json!({"ArnEquals": {
                "iam:PolicyARN": "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration"}}),
        );
        let with = |arn: &str| Context::new().with("iam:PolicyArn", arn);
        let registration = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";
        assert!(allowed(
            &attach,
            "iam:AttachUserPolicy",
            USER,
            &with(registration)
        ));
        assert!(!allowed(
            &attach,
            "iam:AttachUserPolicy",
            USER,
            &with("arn:aws:iam::aws:policy/AdministratorAccess")
        ));
        // The key absent: a positive operator does not hold.
        assert!(!allowed(
            &attach,
            "iam:AttachUserPolicy",
            USER,
            &Context::new()
        ));
        // The resource outside the path.
        assert!(!allowed(
            &attach,
            "iam:AttachUserPolicy",
            "arn:aws:iam::123456789012:user/admin",
            &with(registration)
        ));

        let pass = allow_with(
            "iam:PassRole",
            "*",
            serde_json::json!({"StringEquals": {"iam:PassedToService": ["ssm.amazonaws.com"]}}),
        );
        let to = |s: &str| Context::new().with("iam:PassedToService", s);
        assert!(allowed(
            &pass,
            "iam:PassRole",
            "r",
            &to("ssm.amazonaws.com")
        ));
        assert!(!allowed(
            &pass,
            "iam:PassRole",
            "r",
            &to("ec2.amazonaws.com")
        ));
        assert!(!allowed(
            &pass,
            "iam:PassRole",
            "r",
            &to("SSM.amazonaws.com")
        ));

        let like = allow_with(
            "iam:CreateUser",
            "*",
            serde_json::json!({"StringLike": {"iam:PermissionsBoundary": "arn:aws:iam::*:policy/b-*"}}),
        );
        let boundary = |b: &str| Context::new().with("iam:PermissionsBoundary", b);
        assert!(allowed(
            &like,
            "iam:CreateUser",
            USER,
            &boundary("arn:aws:iam::1:policy/b-x")
        ));
        assert!(!allowed(
            &like,
            "iam:CreateUser",
            USER,
            &boundary("arn:aws:iam::1:policy/c")
        ));
    }

    #[test]
    fn absent_keys_negation_if_exists_null_and_sets() {
        let cases = [
            // (operator and key, value, context, holds)
            (json_cond("StringNotEquals", "k", "a"), Context::new(), true),
            (
                json_cond("StringNotEquals", "k", "a"),
                Context::new().with("k", "a"),
                false,
            ),
            (
                json_cond("StringNotEquals", "k", "a"),
                Context::new().with("k", "b"),
                true,
            ),
            (
                json_cond("StringEqualsIfExists", "k", "a"),
                Context::new(),
                true,
            ),
            (
                json_cond("StringEqualsIfExists", "k", "a"),
                Context::new().with("k", "b"),
                false,
            ),
            (json_cond("Null", "k", "true"), Context::new(), true),
            (
                json_cond("Null", "k", "true"),
                Context::new().with("k", "x"),
                false,
            ),
            (
                json_cond("Null", "k", "false"),
                Context::new().with("k", "x"),
                true,
            ),
            (
                json_cond("ForAllValues:StringEquals", "aws:TagKeys", "owner"),
                Context::new()
                    .with("aws:TagKeys", "owner")
                    .with("aws:TagKeys", "x"),
                false,
            ),
            (
                json_cond("ForAnyValue:StringEquals", "aws:TagKeys", "owner"),
                Context::new()
                    .with("aws:TagKeys", "owner")
                    .with("aws:TagKeys", "x"),
                true,
            ),
            (
                json_cond("ForAllValues:StringEquals", "aws:TagKeys", "owner"),
                Context::new(),
                true,
            ),
            (
                json_cond("Bool", "aws:SecureTransport", "true"),
                Context::new(),
                false,
            ),
            (
                json_cond("DateGreaterThan", "aws:EpochTime", "1"),
                Context::new(),
                true,
            ),
        ];
        for (i, (cond, context, holds)) in cases.iter().enumerate() {
            assert_eq!(
                condition_holds(cond, context, SystemTime::now()),
                Ok(*holds),
                "case {i}: {cond} with {context:?}"
            );
        }
        assert!(
            condition_holds(
                &json_cond("NumericEquals", "k", "1"),
                &Context::new(),
                SystemTime::now()
            )
            .is_err()
        );
        assert!(
            condition_holds(
                &json_cond("Sometimes:StringEquals", "k", "1"),
                &Context::new(),
                SystemTime::now()
            )
            .is_err()
        );
    }

    fn json_cond(op: &str, key: &str, value: &str) -> serde_json::Value {
        serde_json::json!({ op: { key: value } })
    }
}
