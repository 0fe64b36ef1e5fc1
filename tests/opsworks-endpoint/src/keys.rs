//! The secret access keys the endpoint verifies signatures with, learnt without reading all of
//! moto's state.
//!
//! To verify a SigV4 signature made with an IAM access key, the endpoint needs the key's secret,
//! and moto tells secrets only in its whole state (`/moto-api/data.json`: megabytes, slower as
//! moto fills up). Real AWS does nothing of the kind, so that read would be counted in every
//! registration a benchmark measures. Instead:
//!
//! - a [`KeyStore`] holds (access key ID, secret) pairs; the endpoint has one
//!   ([`crate::Config::key_store`], [`crate::EndpointHandle::key_store`]) and looks a key's secret
//!   up there first;
//! - the recording proxy in front of moto, given the same store ([`crate::ProxyConfig::key_store`]),
//!   puts there the key of every successful IAM `CreateAccessKey` answer it forwards, before the
//!   caller gets the answer, so that the key is known by the time anything is signed with it;
//! - the endpoint reads moto's state only for a key the store lacks (one made straight against
//!   moto), and keeps every secret it read there in the store too
//!   ([`crate::EndpointHandle::moto_state_reads`] counts those reads).
//!
//! Secrets are never logged nor recorded: the store's `Debug` shows how many keys it holds, and
//! the proxy's call records never carry bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

/// Secret access keys by access key ID, shared by clones (a handle on one store).
#[derive(Clone, Default)]
pub struct KeyStore {
    secrets: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the secret of `access_key_id` (a key's secret never changes).
    pub fn insert(&self, access_key_id: impl Into<String>, secret: impl Into<String>) {
        self.lock().insert(access_key_id.into(), secret.into());
    }

    /// The secret of `access_key_id`, if the store has it.
    pub fn secret(&self, access_key_id: &str) -> Option<String> {
        self.lock().get(access_key_id).cloned()
    }

    /// Whether the store has the secret of `access_key_id`.
    pub fn contains(&self, access_key_id: &str) -> bool {
        self.lock().contains_key(access_key_id)
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The (access key ID, secret access key) of an IAM `CreateAccessKey` answer: the query
/// protocol's XML (`<CreateAccessKeyResponse><CreateAccessKeyResult><AccessKey>…<AccessKeyId>…
/// <SecretAccessKey>…`), or, should moto ever answer in JSON, its `AccessKey` object. `None` when
/// the body holds no such pair.
pub(crate) fn created_access_key(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?.trim_start();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        return json_access_key(&v);
    }
    let key = xml_element(text, "AccessKey")?;
    let id = xml_unescape(xml_element(key, "AccessKeyId")?.trim());
    let secret = xml_unescape(xml_element(key, "SecretAccessKey")?.trim());
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// The first `AccessKey` object (at any depth) with both an `AccessKeyId` and a
/// `SecretAccessKey`.
fn json_access_key(v: &Value) -> Option<(String, String)> {
    match v {
        Value::Object(map) => {
            if let Some(key) = map.get("AccessKey")
                && let (Some(id), Some(secret)) = (
                    key.get("AccessKeyId").and_then(Value::as_str),
                    key.get("SecretAccessKey").and_then(Value::as_str),
                )
                && !id.is_empty()
                && !secret.is_empty()
            {
                return Some((id.to_owned(), secret.to_owned()));
            }
            map.values().find_map(json_access_key)
        }
        Value::Array(items) => items.iter().find_map(json_access_key),
        _ => None,
    }
}

/// The content of the first `<name>…</name>` element (`<name attr="…">` too, not `<nameX>`).
fn xml_element<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut from = 0;
    while let Some(i) = text[from..].find(&open) {
        let after = from + i + open.len();
        let rest = &text[after..];
        match rest.chars().next() {
            Some('>') => {
                let content = &rest[1..];
                return content.find(&close).map(|end| &content[..end]);
            }
            Some(c) if c.is_whitespace() => {
                let gt = rest.find('>')?;
                if rest[..gt].ends_with('/') {
                    return Some("");
                }
                let content = &rest[gt + 1..];
                return content.find(&close).map(|end| &content[..end]);
            }
            _ => from = after,
        }
    }
    None
}

/// XML's five predefined entities and numeric character references, decoded.
fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_key_of_a_create_access_key_answer() {
        // As moto writes it.
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<CreateAccessKeyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <CreateAccessKeyResult>
    <AccessKey>
      <UserName>OpsWorks-u</UserName>
      <AccessKeyId>AKIAEXAMPLE000000001</AccessKeyId>
      <Status>Active</Status>
      <SecretAccessKey>a/b+c&amp;d&#x3C;e&#61;f</SecretAccessKey>
      <CreateDate>2026-01-01T00:00:00Z</CreateDate>
    </AccessKey>
  </CreateAccessKeyResult>
  <ResponseMetadata><RequestId>x</RequestId></ResponseMetadata>
</CreateAccessKeyResponse>"#;
        assert_eq!(
            created_access_key(xml.as_bytes()),
            Some(("AKIAEXAMPLE000000001".into(), "a/b+c&d<e=f".into()))
        );
        let json = br#"{"CreateAccessKeyResult": {"AccessKey": {"UserName": "u",
            "AccessKeyId": "AKIAJSON", "SecretAccessKey": "s3cr3t", "Status": "Active"}}}"#;
        assert_eq!(
            created_access_key(json),
            Some(("AKIAJSON".into(), "s3cr3t".into()))
        );
        for no in [
            &b"<ErrorResponse><Error><Code>NoSuchEntity</Code></Error></ErrorResponse>"[..],
            b"<AccessKey><AccessKeyId>AKIA</AccessKeyId></AccessKey>",
            b"<AccessKeyMetadata><AccessKeyId>AKIA</AccessKeyId></AccessKeyMetadata>",
            b"<AccessKey><AccessKeyId></AccessKeyId><SecretAccessKey>s</SecretAccessKey></AccessKey>",
            b"{\"AccessKey\": {\"AccessKeyId\": \"AKIA\"}}",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(created_access_key(no), None, "{}", String::from_utf8_lossy(no));
        }
        assert_eq!(xml_unescape("&bogus; & &#xZZ;"), "&bogus; & &#xZZ;");
    }

    #[test]
    fn the_store_is_shared_by_its_clones_and_debug_shows_no_secret() {
        let store = KeyStore::new();
        let other = store.clone();
        assert!(store.is_empty());
        other.insert("AKIA1", "the-secret");
        assert_eq!(store.secret("AKIA1").as_deref(), Some("the-secret"));
        assert!(store.contains("AKIA1"));
        assert!(!store.contains("AKIA2"));
        assert_eq!(store.len(), 1);
        let debug = format!("{store:?}");
        assert!(!debug.contains("the-secret"), "{debug}");
        assert!(!debug.contains("AKIA1"), "{debug}");
    }
}
