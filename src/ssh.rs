//! Running one script on a host over SSH (russh): connect within a timeout, verify the host key
//! per the object's policy before anything is sent, authenticate with the private key, feed the
//! script to `/bin/sh -s` on standard input, and collect its exit status and the tail of its
//! output within a second timeout.
//!
//! A script that finds it needs a terminal (sudo's `requiretty`) says so with an exit status
//! ([`Target::tty_retry_status`]), and is then sent once more on the same connection, in a
//! pseudo-terminal set to raw mode with echo off (so the script, secret included, is never echoed
//! back, and every byte arrives as sent); `head -c <length>` reads exactly the script from the
//! terminal and pipes it to `/bin/sh -s`, so the shell reads a pipe as it always does, and the
//! script is never on a command line.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Pty, client};

use crate::resource::HostKeyPolicy;

/// How much of the script's output is kept (the end of it).
const OUTPUT_KEEP: usize = 64 * 1024;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// DNS name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User to log in as.
    pub username: String,
    /// Time allowed to connect, agree on keys and authenticate.
    pub connect_timeout: Duration,
    /// Time allowed for the script, once it started.
    pub command_timeout: Duration,
    /// When the script exits with this status, it is run once more in a pseudo-terminal.
    pub tty_retry_status: Option<u32>,
}

/// Terminal modes for the pseudo-terminal: no echo, no line editing, no signals from input
/// characters, no character translation either way.
const RAW_MODES: &[(Pty, u32)] = &[
    (Pty::ECHO, 0),
    (Pty::ECHOE, 0),
    (Pty::ECHOK, 0),
    (Pty::ECHONL, 0),
    (Pty::ECHOCTL, 0),
    (Pty::ECHOKE, 0),
    (Pty::ICANON, 0),
    (Pty::ISIG, 0),
    (Pty::IEXTEN, 0),
    (Pty::ICRNL, 0),
    (Pty::INLCR, 0),
    (Pty::IGNCR, 0),
    (Pty::ISTRIP, 0),
    (Pty::IUCLC, 0),
    (Pty::IXON, 0),
    (Pty::IXOFF, 0),
    (Pty::OPOST, 0),
    (Pty::ONLCR, 0),
    (Pty::CS8, 1),
];

/// Which host keys are trusted.
#[derive(Clone, Debug)]
pub struct HostKeyRule {
    /// The object's policy.
    pub policy: HostKeyPolicy,
    /// Keys listed in `ssh.hostKeys` (parsed).
    pub pinned: Vec<PublicKey>,
    /// The fingerprint recorded on first use (TrustOnFirstUse), if any.
    pub recorded: Option<String>,
}

/// What was decided about a presented host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Trusted.
    Accept,
    /// Not trusted; the message says why (it holds only public information).
    Refuse(String),
}

impl HostKeyRule {
    /// Decides whether `key` is the host's key under this rule.
    pub fn judge(&self, key: &PublicKey) -> Verdict {
        let fingerprint = fingerprint(key);
        let pinned = self.pinned.iter().any(|p| p.key_data() == key.key_data());
        match self.policy {
            HostKeyPolicy::AcceptAny => Verdict::Accept,
            HostKeyPolicy::Pinned if pinned => Verdict::Accept,
            HostKeyPolicy::Pinned => Verdict::Refuse(format!(
                "the host presented {} key {fingerprint}, which is not among ssh.hostKeys",
                key.algorithm()
            )),
            // A pinned key is trusted under TrustOnFirstUse too: pinning is how a person accepts
            // a new key.
            HostKeyPolicy::TrustOnFirstUse if pinned => Verdict::Accept,
            HostKeyPolicy::TrustOnFirstUse => match &self.recorded {
                None => Verdict::Accept,
                Some(recorded) if *recorded == fingerprint => Verdict::Accept,
                Some(recorded) => Verdict::Refuse(format!(
                    "the host presented {} key {fingerprint}, but {recorded} was recorded on first \
                     use (status.hostKeyFingerprint); pin the new key in ssh.hostKeys or clear the \
                     record if the change is expected",
                    key.algorithm()
                )),
            },
        }
    }
}

/// The SHA256 fingerprint of `key`, in OpenSSH form (`SHA256:...`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one `ssh.hostKeys` entry (`[host-patterns] key-type base64-key [comment]`).
pub fn parse_known_host(line: &str) -> Option<PublicKey> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let is_key_type =
        |w: &str| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("rsa-");
    // With host patterns in front, the key type is the second word.
    let start = if is_key_type(words.first()?) { 0 } else { 1 };
    let key = words.get(start..start + 2)?.join(" ");
    PublicKey::from_openssh(&key).ok()
}

/// Why a session did not produce an exit status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// No TCP connection (refused, unreachable, name not resolved) or it dropped early.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// Connecting, key exchange or authentication took longer than allowed.
    #[error("no SSH session with {0} within the connect timeout")]
    ConnectTimeout(String),
    /// The host key is not trusted; nothing was sent to the host.
    #[error("{0}")]
    HostKeyMismatch(String),
    /// The host refused the private key for the user.
    #[error("the host refused public key authentication for user {0:?}")]
    AuthFailed(String),
    /// The SSH protocol failed after connecting (no common algorithm, a broken session).
    #[error("SSH session failed: {0}")]
    Protocol(String),
    /// The script ran longer than allowed; the session was closed.
    #[error("the install script did not finish within {0:?}")]
    CommandTimeout(Duration),
}

/// What the script did.
#[derive(Clone, Debug)]
pub struct Run {
    /// The host key's fingerprint (trusted).
    pub host_key_fingerprint: String,
    /// Exit status; `None` when the session closed without one (killed by a signal).
    pub exit_status: Option<u32>,
    /// The end of standard output and standard error, in arrival order.
    pub output: Vec<u8>,
}

/// Host key check and what was seen, shared with the connection's handler.
struct Checker {
    rule: HostKeyRule,
    seen: Arc<Mutex<Option<(String, Verdict)>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (fp, verdict) = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                (fingerprint(key), self.rule.judge(key))
            }
            // Host certificates would need a trusted CA, which the resource cannot name.
            PublicKeyOrCertificate::Certificate(cert) => {
                let key = PublicKey::from(cert.public_key().clone());
                (
                    fingerprint(&key),
                    Verdict::Refuse(
                        "the host presented a certificate; only plain host keys are supported"
                            .into(),
                    ),
                )
            }
        };
        let accepted = verdict == Verdict::Accept;
        *self.seen.lock().expect("host key record") = Some((fp, verdict));
        Ok(accepted)
    }
}

/// Connects to `target`, checks its host key against `rule`, logs in with `key`, and runs
/// `script` with `/bin/sh -s`.
pub async fn run_script(
    target: &Target,
    rule: HostKeyRule,
    key: Arc<PrivateKey>,
    script: &str,
) -> Result<Run, SshError> {
    let where_ = format!("{}:{}", target.host, target.port);
    let seen = Arc::new(Mutex::new(None));
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(target.command_timeout + Duration::from_secs(30)),
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| SshError::Unreachable(format!("{where_}: {e}")))?
            .collect();
        let mut last = SshError::Unreachable(format!("{where_}: no address"));
        for addr in addrs {
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(e) => {
                    last = SshError::Unreachable(format!("{where_}: {e}"));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let checker = Checker {
                rule: rule.clone(),
                seen: seen.clone(),
            };
            let mut session = match client::connect_stream(config.clone(), stream, checker).await {
                Ok(session) => session,
                Err(e) => return Err(session_error(e, &seen, &where_)),
            };
            let hash = match key.algorithm().is_rsa() {
                true => session
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| session_error(e, &seen, &where_))?
                    .flatten(),
                false => None,
            };
            let auth = session
                .authenticate_publickey(
                    target.username.clone(),
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
                .map_err(|e| session_error(e, &seen, &where_))?;
            if !auth.success() {
                return Err(SshError::AuthFailed(target.username.clone()));
            }
            return Ok(session);
        }
        Err(last)
    };
    let session = tokio::time::timeout(target.connect_timeout, connect)
        .await
        .map_err(|_| SshError::ConnectTimeout(where_.clone()))??;
    let host_key_fingerprint = seen
        .lock()
        .expect("host key record")
        .as_ref()
        .map(|(fp, _)| fp.clone())
        .unwrap_or_default();

    let exchange = async {
        let (mut exit_status, mut output) = run_channel(&session, script, false).await?;
        if exit_status.is_some() && exit_status == target.tty_retry_status {
            let (status, more) = run_channel(&session, script, true).await?;
            exit_status = status;
            output.extend_from_slice(&more);
        }
        if output.len() > OUTPUT_KEEP {
            output.drain(..output.len() - OUTPUT_KEEP);
        }
        Ok::<_, SshError>((exit_status, output))
    };
    let result = tokio::time::timeout(target.command_timeout, exchange).await;
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let (exit_status, output) =
        result.map_err(|_| SshError::CommandTimeout(target.command_timeout))??;
    Ok(Run {
        host_key_fingerprint,
        exit_status,
        output,
    })
}

/// Runs `script` on a new channel of `session`, in a pseudo-terminal when `pty`; returns its
/// exit status and (the end of) its output.
async fn run_channel(
    session: &client::Handle<Checker>,
    script: &str,
    pty: bool,
) -> Result<(Option<u32>, Vec<u8>), SshError> {
    let protocol = |e: russh::Error| SshError::Protocol(e.to_string());
    let mut channel = session.channel_open_session().await.map_err(protocol)?;
    if pty {
        // If sshd refuses the terminal, the script runs without one and says so again.
        channel
            .request_pty(false, "dumb", 80, 24, 0, 0, RAW_MODES)
            .await
            .map_err(protocol)?;
        channel
            .exec(true, format!("head -c {} | /bin/sh -s", script.len()))
            .await
            .map_err(protocol)?;
        // No end-of-file on a terminal: head stops after the script's length.
        channel.data(script.as_bytes()).await.map_err(protocol)?;
    } else {
        channel.exec(true, "/bin/sh -s").await.map_err(protocol)?;
        channel.data(script.as_bytes()).await.map_err(protocol)?;
        channel.eof().await.map_err(protocol)?;
    }
    let mut output = Vec::new();
    let mut exit_status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                output.extend_from_slice(&data);
                if output.len() > 2 * OUTPUT_KEEP {
                    output.drain(..output.len() - OUTPUT_KEEP);
                }
            }
            ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    Ok((exit_status, output))
}

/// Classifies a failure while setting up the session, using what the host key check saw.
fn session_error(
    error: russh::Error,
    seen: &Mutex<Option<(String, Verdict)>>,
    where_: &str,
) -> SshError {
    if let Some((_, Verdict::Refuse(why))) = seen.lock().expect("host key record").as_ref() {
        return SshError::HostKeyMismatch(why.clone());
    }
    match error {
        russh::Error::UnknownKey => {
            SshError::HostKeyMismatch("the host key was not accepted".into())
        }
        russh::Error::IO(e) => SshError::Unreachable(format!("{where_}: {e}")),
        russh::Error::Disconnect | russh::Error::HUP => {
            SshError::Unreachable(format!("{where_}: the connection was closed"))
        }
        russh::Error::ConnectionTimeout => SshError::ConnectTimeout(where_.to_owned()),
        other => SshError::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::Algorithm;

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn known_hosts_entries_parse_with_or_without_host_patterns_and_comments() {
        let k = key();
        let line = k.to_openssh().unwrap();
        for entry in [
            line.clone(),
            format!("127.0.0.5 {line}"),
            format!("host,10.0.0.1 {line} root@host"),
            format!("{line} a comment with words"),
        ] {
            let parsed = parse_known_host(&entry).unwrap_or_else(|| panic!("{entry}"));
            assert_eq!(parsed.key_data(), k.key_data(), "{entry}");
        }
        assert!(parse_known_host("ssh-ed25519 notbase64!").is_none());
        assert!(parse_known_host("").is_none());
    }

    #[test]
    fn pinned_accepts_only_listed_keys() {
        let (good, bad) = (key(), key());
        let rule = HostKeyRule {
            policy: HostKeyPolicy::Pinned,
            pinned: vec![good.clone()],
            recorded: None,
        };
        assert_eq!(rule.judge(&good), Verdict::Accept);
        assert!(matches!(rule.judge(&bad), Verdict::Refuse(m) if m.contains(&fingerprint(&bad))));
    }

    #[test]
    fn trust_on_first_use_accepts_the_first_key_and_then_only_that_one() {
        let (first, other) = (key(), key());
        let mut rule = HostKeyRule {
            policy: HostKeyPolicy::TrustOnFirstUse,
            pinned: vec![],
            recorded: None,
        };
        assert_eq!(rule.judge(&first), Verdict::Accept);
        rule.recorded = Some(fingerprint(&first));
        assert_eq!(rule.judge(&first), Verdict::Accept);
        assert!(matches!(rule.judge(&other), Verdict::Refuse(_)));
        // Pinning the new key is how a person accepts it.
        rule.pinned.push(other.clone());
        assert_eq!(rule.judge(&other), Verdict::Accept);
    }

    #[test]
    fn accept_any_accepts_anything() {
        let rule = HostKeyRule {
            policy: HostKeyPolicy::AcceptAny,
            pinned: vec![],
            recorded: Some("SHA256:other".into()),
        };
        assert_eq!(rule.judge(&key()), Verdict::Accept);
    }
}
