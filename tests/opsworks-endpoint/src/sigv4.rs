//! AWS Signature Version 4, server side: reading the `Authorization` header and computing the
//! signature a request should carry, to compare with the one it does; and the client side's
//! [`authorization`], for the stand-in programs' calls that no SDK has.
//!
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only algorithm AWS accepts in the header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
/// Signature=...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    /// Access key ID, the first element of the credential.
    pub access_key_id: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    /// Scope region.
    pub region: String,
    /// Scope service (signing name).
    pub service: String,
    /// Scope terminator (`aws4_request`).
    pub terminator: String,
    /// Signed header names, lowercase, as listed.
    pub signed_headers: Vec<String>,
    /// The signature, lowercase hex.
    pub signature: String,
}

impl AuthorizationHeader {
    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.date, self.region, self.service, self.terminator
        )
    }
}

/// Parses an `Authorization` header value. The error is the message AWS gives with
/// `IncompleteSignatureException`.
pub fn parse_authorization(value: &str) -> Result<AuthorizationHeader, String> {
    let value = value.trim();
    let (algorithm, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'. Authorization={value}"
        ));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some((k, v)) = part.split_once('=') {
            match k.trim() {
                "Credential" => credential = Some(v.trim()),
                "SignedHeaders" => signed_headers = Some(v.trim()),
                "Signature" => signature = Some(v.trim()),
                _ => {}
            }
        }
    }
    let mut missing = String::new();
    for (name, v) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if v.is_none_or(str::is_empty) {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    if !missing.is_empty() {
        return Err(format!("{missing}Authorization={value}"));
    }
    let credential = credential.unwrap_or_default();
    let parts: Vec<&str> = credential.split('/').collect();
    if parts.len() != 5 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{credential}'"
        ));
    }
    let signature = signature.unwrap_or_default();
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "Signature must be 64 hexadecimal characters. Authorization={value}"
        ));
    }
    Ok(AuthorizationHeader {
        access_key_id: parts[0].to_owned(),
        date: parts[1].to_owned(),
        region: parts[2].to_owned(),
        service: parts[3].to_owned(),
        terminator: parts[4].to_owned(),
        signed_headers: signed_headers
            .unwrap_or_default()
            .split(';')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        signature: signature.to_ascii_lowercase(),
    })
}

/// The request as signing sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The path as sent (percent-encoded once), e.g. `/`.
    pub path: &'a str,
    /// The raw query string, without `?` (may be empty).
    pub query: &'a str,
    /// Headers as sent: (name, value); names in any case.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// AWS's URI encoding: every byte but `A-Za-z0-9-_.~` as `%XX`; `/` kept when `keep_slash`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else if b == b'/' && keep_slash {
            out.push('/');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', "%20"))
        .decode_utf8_lossy()
        .into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The canonical request for `signed_headers`, or `None` when a signed header is absent.
pub fn canonical_request(req: &Request<'_>, signed_headers: &[String]) -> Option<String> {
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return None;
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| v == "UNSIGNED-PAYLOAD")
        .unwrap_or_else(|| sha256_hex(req.body));
    let path = if req.path.is_empty() { "/" } else { req.path };
    Some(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(path, true),
        canonical_query(req.query),
        canonical_headers,
        signed_headers.join(";"),
        payload_hash
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signature `req` should carry, signed at `amz_date` (`X-Amz-Date`) with `secret` for the
/// scope and signed headers of `auth`; `None` when a signed header is absent.
pub fn expected_signature(
    secret: &str,
    amz_date: &str,
    auth: &AuthorizationHeader,
    req: &Request<'_>,
) -> Option<String> {
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        auth.scope(),
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, auth.terminator.as_bytes());
    Some(hex::encode(hmac(&k_signing, string_to_sign.as_bytes())))
}

/// Whether `req` carries the signature that `secret` gives, compared in constant time.
pub fn verify(secret: &str, amz_date: &str, auth: &AuthorizationHeader, req: &Request<'_>) -> bool {
    let Some(expected) = expected_signature(secret, amz_date, auth, req) else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), auth.signature.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization` header a client signing `req` with `access_key_id` and `secret` sends,
/// for `region` and signing name `service`, at `amz_date` (the request's `X-Amz-Date`). Every
/// header of `req` is signed.
pub fn authorization(
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    amz_date: &str,
    req: &Request<'_>,
) -> String {
    let mut signed_headers: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    signed_headers.sort();
    signed_headers.dedup();
    let auth = AuthorizationHeader {
        access_key_id: access_key_id.to_owned(),
        date: amz_date.get(..8).unwrap_or(amz_date).to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        terminator: "aws4_request".to_owned(),
        signature: String::new(),
        signed_headers,
    };
    // Every signed header is among the request's, so there is a signature.
    let signature = expected_signature(secret, amz_date, &auth, req).unwrap_or_default();
    format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={}, Signature={signature}",
        auth.scope(),
        auth.signed_headers.join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_signatures_verify() {
        let headers = vec![
            ("Host".to_owned(), "127.0.0.1:1".to_owned()),
            ("X-Amz-Date".to_owned(), "20240501T120000Z".to_owned()),
            ("X-Amz-Target".to_owned(), "AmazonSSM.X".to_owned()),
        ];
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: b"{}",
        };
        let header = authorization(
            "AKID",
            "secret",
            "eu-west-1",
            "ssm",
            "20240501T120000Z",
            &req,
        );
        let auth = parse_authorization(&header).unwrap();
        assert_eq!(auth.scope(), "20240501/eu-west-1/ssm/aws4_request");
        assert_eq!(auth.signed_headers, ["host", "x-amz-date", "x-amz-target"]);
        assert!(verify("secret", "20240501T120000Z", &auth, &req));
        assert!(!verify("other", "20240501T120000Z", &auth, &req));
    }

    // The "get-vanilla" case of AWS's SigV4 test suite.
    #[test]
    fn get_vanilla() {
        let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/\
                      aws4_request, SignedHeaders=host;x-amz-date, \
                      Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let auth = parse_authorization(header).unwrap();
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        assert_eq!(auth.scope(), "20150830/us-east-1/service/aws4_request");
        let headers = vec![
            ("Host".to_owned(), "example.amazonaws.com".to_owned()),
            ("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            body: b"",
        };
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        assert!(verify(secret, "20150830T123600Z", &auth, &req));
        assert!(!verify("other", "20150830T123600Z", &auth, &req));
        let tampered = Request { body: b"x", ..req };
        assert!(!verify(secret, "20150830T123600Z", &auth, &tampered));
    }

    #[test]
    fn malformed_headers() {
        assert!(
            parse_authorization("Bearer abc")
                .unwrap_err()
                .starts_with("Unsupported AWS 'algorithm'")
        );
        let e = parse_authorization("AWS4-HMAC-SHA256 Credential=a/b/c/d/e").unwrap_err();
        assert!(e.contains("requires 'Signature'"), "{e}");
        assert!(e.contains("requires 'SignedHeaders'"), "{e}");
        let e = parse_authorization(&format!(
            "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature={}",
            "0".repeat(64)
        ))
        .unwrap_err();
        assert!(e.contains("5 slash-delimited"), "{e}");
        assert_eq!(canonical_query("b=2&a=x%2Fy&a=1"), "a=1&a=x%2Fy&b=2");
    }
}
