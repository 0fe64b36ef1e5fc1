//! OpenSSH certificates (PROTOCOL.certkeys): trusting a host by the certificate authority (CA)
//! that signed its host certificate, and checking the user certificate a key Secret may carry
//! before the controller logs in with it.
//!
//! A host certificate is judged as OpenSSH's `ssh` judges one against a known_hosts
//! `@cert-authority` line, in this order, each failure with its own message: it must be a host
//! certificate (not a user one), signed by a listed CA that is trusted for the host's name, with a
//! signature that verifies, within its validity period (with [`CLOCK_ALLOWANCE`] either side),
//! with no critical option (none is defined for host certificates; `ssh` refuses any), and with a
//! principal that matches the name the controller connected to (OpenSSH's `match_pattern`: `*`
//! and `?` wildcards, the name lower-cased). One rule is stricter than `ssh`: a certificate that
//! names no principals (which `ssh` takes as valid for every host) is refused, so a CA's
//! certificate for one host can never stand for another.
//!
//! Everything read from a certificate came from the host or a Secret: what goes into a message or
//! status is bounded in length and stripped of control characters, and nothing here panics on
//! what a certificate holds.

use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Algorithm, Certificate, HashAlg, PrivateKey, PublicKey};

/// How far the controller's clock may be from the CA's: a certificate is taken as valid from
/// this long before its `valid after` time until this long after its `valid before` time.
/// ssh-keygen and Vault write certificates from the moment they sign them, and a host whose clock
/// runs a little ahead of the controller's must not be refused for a minute after renewal.
pub(crate) const CLOCK_ALLOWANCE: Duration = Duration::from_secs(60);
/// Most bytes of a user certificate in a Secret (an ed25519 certificate with a few principals
/// is under 1 KiB; an RSA-4096 one under 3 KiB).
pub(crate) const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// Most characters of a key ID kept for messages and status.
const KEY_ID_KEEP: usize = 128;
/// Most principals a message lists.
const PRINCIPALS_SHOWN: usize = 5;

/// One trusted host CA: its public key and, from an `@cert-authority` line, the host patterns it
/// is trusted for (a plain public-key line trusts it for every host).
#[derive(Clone, Debug)]
pub(crate) struct HostCa {
    /// The CA's public key.
    pub key: PublicKey,
    /// known_hosts host patterns (comma-separated, `*`/`?` wildcards, `!` negation); `None`
    /// for every host.
    pub patterns: Option<String>,
}

/// Parses one `hostCertificateAuthorities` entry: `@cert-authority <host-patterns> <key-type>
/// <base64> [comment]` (known_hosts form) or `<key-type> <base64> [comment]`.
pub(crate) fn parse_ca_line(line: &str) -> Option<HostCa> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (patterns, rest) = match words.first()? {
        &"@cert-authority" => (Some(words.get(1)?.to_string()), words.get(2..)?),
        _ => (None, &words[..]),
    };
    let key = rest.get(..2)?.join(" ");
    let key = PublicKey::from_openssh(&key).ok()?;
    Some(HostCa { key, patterns })
}

/// What status records of an accepted host certificate (all public, all bounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CertificateSummary {
    /// The certificate's key ID (at most [`KEY_ID_KEEP`] characters, no control characters).
    pub key_id: String,
    /// Its serial number.
    pub serial: u64,
    /// SHA256 fingerprint of the CA key that signed it.
    pub certificate_authority: String,
    /// Its `valid before` time, seconds since the epoch; `None` for "forever".
    pub valid_before: Option<u64>,
}

/// `text` fit for a message: control characters replaced, at most `keep` characters.
fn printable(text: &str, keep: usize) -> String {
    let mut out: String = text
        .chars()
        .take(keep)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > keep {
        out.push('…');
    }
    out
}

/// Seconds since the epoch of `now`.
pub(crate) fn unix(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A certificate time (seconds since the epoch) as RFC 3339, or "forever".
pub(crate) fn time_text(seconds: u64) -> String {
    if seconds == u64::MAX {
        return "forever".into();
    }
    i64::try_from(seconds)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{seconds} (seconds since 1970)"),
            |t| t.to_string(),
        )
}

/// The certificate's key ID and serial, for messages.
fn named(cert: &Certificate) -> String {
    format!(
        "key ID {:?}, serial {}",
        printable(cert.key_id(), KEY_ID_KEEP),
        cert.serial()
    )
}

/// OpenSSH's `match_pattern`: `*` matches any run of characters, `?` any one character, all
/// else itself. Linear in memory and at most |text| x |pattern| steps, whatever the pattern.
pub(crate) fn match_pattern(text: &str, pattern: &str) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// known_hosts host pattern list matching (OpenSSH's `match_hostname`): a name matches when a
/// pattern matches it and no negated (`!`) pattern does; case-insensitive.
fn match_host_patterns(name: &str, patterns: &str) -> bool {
    let name = name.to_lowercase();
    let mut matched = false;
    for pattern in patterns.split(',') {
        let pattern = pattern.to_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if match_pattern(&name, negated) => return false,
            Some(_) => {}
            None if match_pattern(&name, &pattern) => matched = true,
            None => {}
        }
    }
    matched
}

/// How known_hosts names a host on `port` (`host`, or `[host]:port` off port 22).
fn known_hosts_name(host: &str, port: u16) -> String {
    match port {
        22 => host.to_owned(),
        _ => format!("[{host}]:{port}"),
    }
}

/// Judges the host certificate `cert` presented by `host` (the name or address the controller
/// connected to) on `port` at time `now`, against the trusted `cas`. Returns what status records
/// of it, or why it is refused (public information only).
pub(crate) fn judge_host_certificate(
    cert: &Certificate,
    cas: &[HostCa],
    host: &str,
    port: u16,
    now: SystemTime,
) -> Result<CertificateSummary, String> {
    let what = named(cert);
    if cert.cert_type() != CertType::Host {
        return Err(format!(
            "the host presented a user certificate ({what}) as its host key; only a host \
             certificate (ssh-keygen -s ... -h) identifies a host"
        ));
    }
    let ca_key = PublicKey::from(cert.signature_key().clone());
    let ca = ca_key.fingerprint(HashAlg::Sha256).to_string();
    let listed: Vec<&HostCa> = cas
        .iter()
        .filter(|c| c.key.key_data() == cert.signature_key())
        .collect();
    if listed.is_empty() {
        let trusted: Vec<String> = cas
            .iter()
            .map(|c| c.key.fingerprint(HashAlg::Sha256).to_string())
            .collect();
        return Err(format!(
            "the host's certificate ({what}) is signed by CA {ca}, which is not among \
             hostCertificateAuthorities ({})",
            trusted.join(", ")
        ));
    }
    let name = known_hosts_name(host, port);
    if !listed.iter().any(|c| match &c.patterns {
        None => true,
        Some(patterns) => match_host_patterns(&name, patterns),
    }) {
        return Err(format!(
            "the host's certificate ({what}) is signed by CA {ca}, whose @cert-authority line \
             does not trust it for {name}"
        ));
    }
    if cert.verify_signature().is_err() {
        return Err(format!(
            "the host's certificate ({what}) claims CA {ca}, but its signature does not verify"
        ));
    }
    // OpenSSH's default CASignatureAlgorithms leaves out ssh-rsa (RSA with SHA-1).
    if matches!(cert.signature().algorithm(), Algorithm::Rsa { hash: None }) {
        return Err(format!(
            "the host's certificate ({what}) is signed with ssh-rsa (SHA-1), which OpenSSH no \
             longer accepts from a CA; re-sign it (ssh-keygen -s ... -t rsa-sha2-512)"
        ));
    }
    check_validity(cert, now).map_err(|why| format!("the host's certificate ({what}) {why}"))?;
    if let Some(option) = cert.critical_options().keys().next() {
        return Err(format!(
            "the host's certificate ({what}) carries the critical option {:?}, which a host \
             certificate may not have; it is not valid",
            printable(option, 64)
        ));
    }
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(format!(
            "the host's certificate ({what}) names no principals; the controller accepts only a \
             certificate naming the host ({host}) (ssh-keygen -s ... -h -n {host})"
        ));
    }
    let wanted = host.to_lowercase();
    if !principals.iter().any(|p| match_pattern(&wanted, p)) {
        return Err(format!(
            "the host's certificate ({what}) is for {}, which does not include {host}, the name \
             the controller connected to",
            list_principals(principals)
        ));
    }
    Ok(CertificateSummary {
        key_id: printable(cert.key_id(), KEY_ID_KEEP),
        serial: cert.serial(),
        certificate_authority: ca,
        valid_before: (cert.valid_before() != u64::MAX).then_some(cert.valid_before()),
    })
}

/// Up to [`PRINCIPALS_SHOWN`] principals, and how many more.
fn list_principals(principals: &[String]) -> String {
    let shown: Vec<String> = principals
        .iter()
        .take(PRINCIPALS_SHOWN)
        .map(|p| format!("{:?}", printable(p, 64)))
        .collect();
    let more = principals.len().saturating_sub(PRINCIPALS_SHOWN);
    match more {
        0 => format!("principals {}", shown.join(", ")),
        n => format!("principals {} and {n} more", shown.join(", ")),
    }
}

/// Refuses a certificate outside its validity period at `now`, give or take
/// [`CLOCK_ALLOWANCE`]: "expired at ..." or "is not valid until ...".
fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), String> {
    let now = unix(now);
    let allowance = CLOCK_ALLOWANCE.as_secs();
    if now.saturating_add(allowance) < cert.valid_after() {
        return Err(format!(
            "is not valid until {} (the controller's clock says {}; {allowance} s allowed for \
             clock differences)",
            time_text(cert.valid_after()),
            time_text(now)
        ));
    }
    if now >= cert.valid_before().saturating_add(allowance) {
        return Err(format!(
            "expired at {} (the controller's clock says {}; {allowance} s allowed for clock \
             differences)",
            time_text(cert.valid_before()),
            time_text(now)
        ));
    }
    Ok(())
}

/// Why a user certificate from a Secret cannot be used. The messages hold only public
/// information (a certificate is public), bounded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserCertificateProblem {
    /// Not an OpenSSH certificate the controller reads, or not one for the private key.
    #[error("{0}")]
    Invalid(String),
    /// Its validity ended.
    #[error("the user certificate ({what}) expired at {at}")]
    Expired {
        /// Key ID and serial.
        what: String,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// Not valid yet.
    #[error("the user certificate ({what}) is not valid until {at}")]
    NotYetValid {
        /// Key ID and serial.
        what: String,
        /// When it becomes valid (RFC 3339).
        at: String,
    },
}

/// A user certificate read from a Secret, checked against its private key.
#[derive(Clone, Debug)]
pub(crate) struct UserCertificate {
    /// The certificate.
    pub cert: Certificate,
    /// Key ID and serial, for messages.
    pub what: String,
}

/// Reads `bytes` (one line: `<type>-cert-v01@openssh.com <base64> [comment]`) as the user
/// certificate for `key`, and checks it is a user certificate for that key, valid at `now`
/// (not expired; valid from [`CLOCK_ALLOWANCE`] before its start, for a host clock ahead).
pub(crate) fn read_user_certificate(
    bytes: &[u8],
    key: &PrivateKey,
    now: SystemTime,
) -> Result<UserCertificate, UserCertificateProblem> {
    let invalid = |why: &str| UserCertificateProblem::Invalid(why.to_owned());
    if bytes.len() > MAX_CERTIFICATE_BYTES {
        return Err(invalid("the certificate is larger than 16 KiB"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid("the certificate is not text (OpenSSH certificate form)"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid("the certificate is empty"));
    }
    if text.lines().count() != 1 {
        return Err(invalid(
            "the certificate is not one line (<type>-cert-v01@openssh.com <base64> [comment])",
        ));
    }
    // The parser sees untrusted input; a panic in it must not take the controller down.
    let cert = std::panic::catch_unwind(|| Certificate::from_openssh(text))
        .unwrap_or(Err(russh::keys::ssh_key::Error::FormatEncoding))
        .map_err(|_| {
            invalid("the value is not an OpenSSH certificate (ssh-keygen -s writes <key>-cert.pub)")
        })?;
    let what = named(&cert);
    if cert.cert_type() != CertType::User {
        return Err(UserCertificateProblem::Invalid(format!(
            "the certificate ({what}) is a host certificate; logging in needs a user certificate"
        )));
    }
    if cert.public_key() != key.public_key().key_data() {
        return Err(UserCertificateProblem::Invalid(format!(
            "the certificate ({what}) is for another key than the private key beside it"
        )));
    }
    // sshd refuses a certificate with a critical option it does not know, runs a forced command
    // instead of the controller's script, and wants a security key's touch for verify-required:
    // only source-address leaves a login the controller can use.
    if let Some(option) = cert
        .critical_options()
        .keys()
        .find(|o| o.as_str() != "source-address")
    {
        return Err(UserCertificateProblem::Invalid(format!(
            "the certificate ({what}) carries the critical option {:?}; the controller runs its \
             own commands and uses no security key, so it can log in only with a certificate \
             whose sole critical option, if any, is source-address",
            printable(option, 64)
        )));
    }
    // Expired by the controller's clock is expired: the host would refuse it as likely as not,
    // and the report names the time, which an auth failure would not.
    let seconds = unix(now);
    let allowance = CLOCK_ALLOWANCE.as_secs();
    if seconds >= cert.valid_before() {
        return Err(UserCertificateProblem::Expired {
            what,
            at: time_text(cert.valid_before()),
        });
    }
    if seconds.saturating_add(allowance) < cert.valid_after() {
        return Err(UserCertificateProblem::NotYetValid {
            what,
            at: time_text(cert.valid_after()),
        });
    }
    Ok(UserCertificate { cert, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_openssh_matches_them() {
        assert!(match_pattern("db1.example.com", "*.example.com"));
        assert!(match_pattern("db1.example.com", "db?.example.com"));
        assert!(!match_pattern("db10.example.com", "db?.example.com"));
        assert!(!match_pattern("example.com", "*.example.com"));
        assert!(match_pattern("anything", "*"));
        assert!(!match_pattern("10.0.0.5", "10.0.0.50"));
        // A hostile pattern is not exponential.
        let long = "a".repeat(2000);
        let started = std::time::Instant::now();
        assert!(!match_pattern(&long, &format!("{}b", "*a".repeat(200))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn host_pattern_lists_honour_negation_and_ports() {
        assert!(match_host_patterns("db.example.com", "*.example.com"));
        assert!(!match_host_patterns(
            "db.example.com",
            "*.example.com,!db.example.com"
        ));
        assert!(match_host_patterns("[10.0.0.5]:2222", "[10.0.0.5]:2222"));
        assert!(!match_host_patterns(
            &known_hosts_name("10.0.0.5", 2222),
            "10.0.0.5"
        ));
        assert!(match_host_patterns(
            &known_hosts_name("10.0.0.5", 22),
            "10.0.0.*"
        ));
        assert!(match_host_patterns("DB.Example.com", "db.example.com"));
    }

    #[test]
    fn ca_lines_parse_in_known_hosts_and_plain_forms_and_nothing_else() {
        let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let plain = parse_ca_line(&format!("{line} ca@example")).unwrap();
        assert!(plain.patterns.is_none());
        let marked = parse_ca_line(&format!("@cert-authority *.example.com {line}")).unwrap();
        assert_eq!(marked.patterns.as_deref(), Some("*.example.com"));
        assert_eq!(marked.key.key_data(), key.public_key().key_data());
        for bad in [
            "".to_owned(),
            "@cert-authority".to_owned(),
            format!("@revoked * {line}"),
            format!("cert-authority,principals=\"x\" {line}"),
            "ssh-ed25519 AAAA".to_owned(),
        ] {
            assert!(parse_ca_line(&bad).is_none(), "{bad}");
        }
    }

    /// A key pair made by ssh-keygen in `dir` as `name`; returns its path.
    fn keygen(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        path
    }

    /// `ssh-keygen -s ca -I id <args> key.pub`: the certificate it writes.
    fn sign(ca: &std::path::Path, key: &std::path::Path, args: &[&str]) -> Certificate {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-q")
            .arg("-s")
            .arg(ca)
            .args(["-I", "host-id-7"])
            .args(args)
            .arg(key.with_extension("pub"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let path = key.with_file_name(format!(
            "{}-cert.pub",
            key.file_name().unwrap().to_string_lossy()
        ));
        Certificate::read_file(&path).unwrap()
    }

    fn ca(path: &std::path::Path, patterns: Option<&str>) -> HostCa {
        let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let line = match patterns {
            Some(p) => format!("@cert-authority {p} {line}"),
            None => line,
        };
        parse_ca_line(&line).unwrap()
    }

    #[test]
    fn host_certificates_made_by_ssh_keygen_are_judged_each_refusal_in_its_own_words() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, ca2, host) = (
            keygen(dir.path(), "ca1"),
            keygen(dir.path(), "ca2"),
            keygen(dir.path(), "host"),
        );
        let now = SystemTime::now();
        let trust1 = [ca(&ca1, None)];
        let judge = |cert: &Certificate, cas: &[HostCa]| {
            judge_host_certificate(cert, cas, "db.example.com", 2222, now)
        };
        let good = sign(
            &ca1,
            &host,
            &["-h", "-n", "db.example.com,10.0.0.5", "-z", "42"],
        );
        let summary = judge(&good, &trust1).unwrap();
        assert_eq!(summary.key_id, "host-id-7");
        assert_eq!(summary.serial, 42);
        assert_eq!(
            summary.certificate_authority,
            trust1[0].key.fingerprint(HashAlg::Sha256).to_string()
        );
        assert_eq!(summary.valid_before, None);
        // The address form matches too, and a wildcard principal as OpenSSH matches it.
        assert!(judge_host_certificate(&good, &trust1, "10.0.0.5", 22, now).is_ok());
        let wildcard = sign(&ca1, &host, &["-h", "-n", "*.example.com"]);
        assert!(judge(&wildcard, &trust1).is_ok());

        let refused = |cert: &Certificate, cas: &[HostCa], words: &str| {
            let why = judge(cert, cas).unwrap_err();
            assert!(why.contains(words), "{why}");
            assert!(why.contains("host-id-7"), "{why}");
        };
        refused(
            &good,
            &[ca(&ca2, None)],
            "not among hostCertificateAuthorities",
        );
        refused(
            &good,
            &[ca(&ca1, Some("*.other.com"))],
            "does not trust it for [db.example.com]:2222",
        );
        assert!(judge(&good, &[ca(&ca1, Some("[*.example.com]:2222"))]).is_ok());
        let other = sign(&ca1, &host, &["-h", "-n", "web.example.com"]);
        refused(&other, &trust1, "does not include db.example.com");
        let expired = sign(
            &ca1,
            &host,
            &["-h", "-n", "db.example.com", "-V", "-2d:-1d"],
        );
        refused(&expired, &trust1, "expired at");
        let early = sign(
            &ca1,
            &host,
            &["-h", "-n", "db.example.com", "-V", "+1d:+2d"],
        );
        refused(&early, &trust1, "is not valid until");
        let user = sign(&ca1, &host, &["-n", "db.example.com"]);
        refused(&user, &trust1, "user certificate");
        let nobody = sign(&ca1, &host, &["-h"]);
        refused(&nobody, &trust1, "names no principals");
        // An RSA CA signing with ssh-rsa (SHA-1), which OpenSSH's ssh refuses by default.
        let rsa_ca = dir.path().join("rsa-ca");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
            .arg(&rsa_ca)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let sha1 = sign(
            &rsa_ca,
            &host,
            &["-h", "-n", "db.example.com", "-t", "ssh-rsa"],
        );
        refused(&sha1, &[ca(&rsa_ca, None)], "ssh-rsa (SHA-1)");
        let sha512 = sign(
            &rsa_ca,
            &host,
            &["-h", "-n", "db.example.com", "-t", "rsa-sha2-512"],
        );
        assert!(judge(&sha512, &[ca(&rsa_ca, None)]).is_ok());
        // Within the clock allowance either side, it is valid.
        let just_expired = sign(
            &ca1,
            &host,
            &["-h", "-n", "db.example.com", "-V", "-1h:-30s"],
        );
        assert!(judge(&just_expired, &trust1).is_ok());
    }

    #[test]
    fn a_user_certificate_is_read_for_its_key_and_refused_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, user) = (keygen(dir.path(), "ca1"), keygen(dir.path(), "user"));
        let key = PrivateKey::read_openssh_file(&user).unwrap();
        let other = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
        let now = SystemTime::now();
        let line = |cert: &Certificate| cert.to_openssh().unwrap();
        let good = sign(&ca1, &user, &["-n", "robot", "-V", "-5m:+1h"]);
        let read = read_user_certificate(line(&good).as_bytes(), &key, now).unwrap();
        assert!(read.what.contains("host-id-7"), "{}", read.what);
        assert!(matches!(
            read_user_certificate(line(&good).as_bytes(), &other, now),
            Err(UserCertificateProblem::Invalid(m)) if m.contains("another key")
        ));
        let expired = sign(&ca1, &user, &["-n", "robot", "-V", "-2h:-1h"]);
        assert!(matches!(
            read_user_certificate(line(&expired).as_bytes(), &key, now),
            Err(UserCertificateProblem::Expired { .. })
        ));
        let forced = sign(
            &ca1,
            &user,
            &["-n", "robot", "-O", "force-command=/bin/true"],
        );
        assert!(matches!(
            read_user_certificate(line(&forced).as_bytes(), &key, now),
            Err(UserCertificateProblem::Invalid(m)) if m.contains("force-command")
        ));
        let limited = sign(
            &ca1,
            &user,
            &["-n", "robot", "-O", "source-address=10.0.0.0/8"],
        );
        assert!(read_user_certificate(line(&limited).as_bytes(), &key, now).is_ok());
        let host = sign(&ca1, &user, &["-h", "-n", "robot"]);
        assert!(matches!(
            read_user_certificate(line(&host).as_bytes(), &key, now),
            Err(UserCertificateProblem::Invalid(m)) if m.contains("host certificate")
        ));
        let text = line(&good);
        for bad in [
            text[..text.len() / 2].to_owned(),
            String::new(),
            format!("{text}\n{text}"),
            "x".repeat(MAX_CERTIFICATE_BYTES + 1),
        ] {
            assert!(matches!(
                read_user_certificate(bad.as_bytes(), &key, now),
                Err(UserCertificateProblem::Invalid(_))
            ));
        }
    }

    #[test]
    fn printable_bounds_and_cleans() {
        assert_eq!(printable("a\nb", 10), "a?b");
        assert_eq!(printable(&"x".repeat(300), 4), "xxxx…");
    }
}
