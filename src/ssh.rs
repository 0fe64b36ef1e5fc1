//! Running one script on a host over SSH (russh): connect within a timeout, verify the host key
//! per the object's policy before anything is sent (under CertificateAuthority, the host is asked
//! for a host certificate, judged by [`crate::sshcert`]), authenticate with the private key (with
//! its user certificate, when the key's Secret carries one), feed the script to `/bin/sh -s` on
//! standard input, and collect its exit status and the tail of its output within a second
//! timeout.
//!
//! A host behind jump hosts (OpenSSH's ProxyJump) is reached through them: the controller logs in
//! to the first, opens a `direct-tcpip` channel through it to the next and runs the SSH protocol
//! over that channel, and so on to the host; no `ssh` binary, no shell on either side. Each hop's
//! host key is judged by its own rule before the controller authenticates to it or opens anything
//! through it, and every failure names the hop it happened at ([`Failure`]).
//!
//! A script that finds it needs a terminal (sudo's `requiretty`) says so with an exit status
//! ([`Target::tty_retry_status`]), and is then sent once more on the same connection, in a
//! pseudo-terminal set to raw mode with echo off (so the script, secret included, is never echoed
//! back, and every byte arrives as sent); `head -c <length>` reads exactly the script from the
//! terminal and pipes it to `/bin/sh -s`, so the shell reads a pipe as it always does, and the
//! script is never on a command line.
//!
//! Every wait on the host is bounded, and every connection a run opens ends with the run: each
//! hop's stream is wrapped in a [`Line`] of the run's [`Cut`], which makes every read and write
//! on it fail (and wakes whatever waits on one) once the run is over. russh runs each session on a
//! task of its own, which a dropped future or handle does not stop while a key exchange is
//! unfinished or data waits to be written, and which any packet from the host keeps alive; the
//! cut ends those tasks, and with them the sockets, whatever the host does.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use russh::keys::{
    Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey,
    PublicKeyOrCertificate,
};
use russh::{ChannelMsg, ChannelOpenFailure, Preferred, Pty, client};

use crate::resource::HostKeyPolicy;
use crate::sshcert::{self, CertificateSummary, HostCa};

/// How much of the script's output is kept (the end of it).
const OUTPUT_KEEP: usize = 64 * 1024;
/// How long the sessions of a run get to close by themselves (the goodbye written, the task
/// ended) before their connections are cut, and then to end once cut.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// DNS name or IP address (as the last jump host resolves it, when there are jump hosts).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User to log in as.
    pub username: String,
    /// The user certificate to log in with (beside the private key), if any.
    pub certificate: Option<Certificate>,
    /// Jump hosts to go through, in order (ProxyJump); empty to connect directly.
    pub jump_hosts: Vec<Hop>,
    /// Time allowed to connect, agree on keys and authenticate, through every jump host.
    pub connect_timeout: Duration,
    /// Time allowed for the script, once it started.
    pub command_timeout: Duration,
    /// When the script exits with this status, it is run once more in a pseudo-terminal.
    pub tty_retry_status: Option<u32>,
}

/// A jump host: where it is, how to log in, and which of its host keys to trust.
#[derive(Clone)]
pub(crate) struct Hop {
    /// DNS name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User to log in as.
    pub username: String,
    /// The private key to log in with.
    pub key: Arc<PrivateKey>,
    /// The user certificate for that key, if the key's Secret carries one: the login then
    /// presents it (publickey with an OpenSSH certificate) instead of the bare key.
    pub certificate: Option<Certificate>,
    /// Which host keys are trusted.
    pub rule: HostKeyRule,
}

impl std::fmt::Debug for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of debug output.
        f.debug_struct("Hop")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field(
                "certificate",
                &self.certificate.as_ref().map(|c| (c.key_id(), c.serial())),
            )
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// How failures name hop `index` of the connection (the jump hosts, then the host).
    pub(crate) fn hop_name(&self, index: usize) -> String {
        let count = self.jump_hosts.len();
        match self.jump_hosts.get(index) {
            Some(hop) => format!(
                "jump host {} of {count} ({}:{})",
                index + 1,
                hop.host,
                hop.port
            ),
            None if count == 0 => format!("{}:{}", self.host, self.port),
            None => format!(
                "{}:{} (through {count} jump host{})",
                self.host,
                self.port,
                if count == 1 { "" } else { "s" }
            ),
        }
    }
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
pub(crate) struct HostKeyRule {
    /// The object's policy.
    pub policy: HostKeyPolicy,
    /// Keys listed in `hostKeys` (parsed).
    pub pinned: Vec<PublicKey>,
    /// The fingerprint recorded on first use (TrustOnFirstUse), if any.
    pub recorded: Option<String>,
    /// Where the record is kept, for the message that refuses another key.
    pub recorded_in: &'static str,
    /// The CAs whose host certificates are trusted (CertificateAuthority).
    pub authorities: Vec<HostCa>,
}

/// What was decided about a presented host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Trusted.
    Accept,
    /// Not trusted; the message says why (it holds only public information).
    Refuse(String),
    /// A host certificate that is not valid for this host under the trusted CAs; the message
    /// says which check it failed.
    RefuseCertificate(String),
}

impl HostKeyRule {
    /// Decides whether `key` is the host's key under this rule.
    pub(crate) fn judge(&self, key: &PublicKey) -> Verdict {
        let fingerprint = fingerprint(key);
        let pinned = self.pinned.iter().any(|p| p.key_data() == key.key_data());
        match self.policy {
            HostKeyPolicy::AcceptAny => Verdict::Accept,
            // A plain key proves nothing under a CA: only a certificate names the host.
            HostKeyPolicy::CertificateAuthority => Verdict::Refuse(format!(
                "the host presented a plain {} key {fingerprint}, not a host certificate; \
                 hostKeyPolicy CertificateAuthority accepts only a host certificate signed by one \
                 of hostCertificateAuthorities",
                key.algorithm()
            )),
            HostKeyPolicy::Pinned if pinned => Verdict::Accept,
            HostKeyPolicy::Pinned => Verdict::Refuse(format!(
                "the host presented {} key {fingerprint}, which is not among its hostKeys",
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
                     use ({}); pin the new key in hostKeys or clear the record if the change is \
                     expected",
                    key.algorithm(),
                    self.recorded_in
                )),
            },
        }
    }

    /// Decides whether `cert`, presented by `host` on `port` (as the controller named it when
    /// connecting), is the host's certificate under this rule.
    pub(crate) fn judge_certificate(
        &self,
        cert: &Certificate,
        host: &str,
        port: u16,
    ) -> (Verdict, Option<CertificateSummary>) {
        if self.policy != HostKeyPolicy::CertificateAuthority {
            // Certificates are asked for only under CertificateAuthority.
            return (
                Verdict::Refuse(
                    "the host presented a certificate, which only hostKeyPolicy \
                     CertificateAuthority trusts"
                        .into(),
                ),
                None,
            );
        }
        match sshcert::judge_host_certificate(
            cert,
            &self.authorities,
            host,
            port,
            std::time::SystemTime::now(),
        ) {
            Ok(summary) => (Verdict::Accept, Some(summary)),
            Err(why) => (Verdict::RefuseCertificate(why), None),
        }
    }
}

/// The key algorithms whose certificate forms (`*-cert-v01@openssh.com`) the controller asks a
/// host for under CertificateAuthority: OpenSSH's sshd presents its HostCertificate only to a
/// client that lists its algorithm.
const CERTIFICATE_ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// The SHA256 fingerprint of `key`, in OpenSSH form (`SHA256:...`).
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one `ssh.hostKeys` entry (`[host-patterns] key-type base64-key [comment]`).
pub(crate) fn parse_known_host(line: &str) -> Option<PublicKey> {
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
pub(crate) enum SshError {
    /// No TCP connection (refused, unreachable, name not resolved) or it dropped early; through
    /// a jump host, the jump host could not connect.
    #[error("cannot reach it: {0}")]
    Unreachable(String),
    /// Connecting, key exchange or authentication took longer than allowed.
    #[error("no SSH session within the connect timeout")]
    ConnectTimeout,
    /// The host key is not trusted; nothing was sent to the host.
    #[error("{0}")]
    HostKeyMismatch(String),
    /// The host's certificate is not valid for it under the trusted CAs; nothing was sent to
    /// the host.
    #[error("{0}")]
    HostCertificateInvalid(String),
    /// The host refused the private key for the user.
    #[error("the host refused public key authentication for user {0:?}")]
    AuthFailed(String),
    /// A jump host refused to open a forwarded connection to the next hop (its sshd's
    /// AllowTcpForwarding or PermitOpen); the message names the next hop.
    #[error(
        "the jump host refused to forward a connection to {0} (its sshd needs AllowTcpForwarding yes, and PermitOpen to allow it)"
    )]
    ForwardingRefused(String),
    /// The SSH protocol failed after connecting (no common algorithm, a broken session).
    #[error("SSH session failed: {0}")]
    Protocol(String),
    /// The script ran longer than allowed; the session was closed.
    #[error("the install script did not finish within {0:?}")]
    CommandTimeout(Duration),
}

/// An [`SshError`] and the hop it happened at (see [`Target::hop_name`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {error}")]
pub(crate) struct Failure {
    /// The hop, as [`Target::hop_name`] names it.
    pub at: String,
    /// What went wrong there.
    pub error: SshError,
}

/// What the script did.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// The host key's fingerprint (trusted).
    pub host_key_fingerprint: String,
    /// The jump hosts' key fingerprints (trusted), in order.
    pub jump_host_key_fingerprints: Vec<String>,
    /// The host's certificate, when it was trusted by its CA.
    pub host_certificate: Option<CertificateSummary>,
    /// The jump hosts' certificates, when trusted by their CA, in order.
    pub jump_host_certificates: Vec<Option<CertificateSummary>>,
    /// Exit status; `None` when the session closed without one (killed by a signal).
    pub exit_status: Option<u32>,
    /// The end of standard output and standard error, in arrival order.
    pub output: Vec<u8>,
}

/// What one hop's host key check saw: the fingerprint, the verdict, and the certificate
/// accepted if any.
type Seen = Arc<Mutex<Option<(String, Verdict, Option<CertificateSummary>)>>>;

/// Host key check and what was seen, shared with the connection's handler.
struct Checker {
    rule: HostKeyRule,
    /// The name and port the controller connected to (a certificate must name the host).
    host: String,
    port: u16,
    seen: Seen,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let (fp, verdict, summary) = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                (fingerprint(key), self.rule.judge(key), None)
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                let key = PublicKey::from(cert.public_key().clone());
                let (verdict, summary) = self.rule.judge_certificate(cert, &self.host, self.port);
                (fingerprint(&key), verdict, summary)
            }
        };
        let accepted = verdict == Verdict::Accept;
        *self.seen.lock().expect("host key record") = Some((fp, verdict, summary));
        Ok(accepted)
    }
}

/// The originator a forwarded channel names (as OpenSSH's `ssh -W` does).
const ORIGINATOR: (&str, u32) = ("127.0.0.1", 65535);

/// Connects to `target` (through its jump hosts, each one's host key checked before anything
/// is sent to it, and the next opened over a `direct-tcpip` channel of the one before), checks
/// the host's key against `rule`, logs in with `key`, and runs `script` with `/bin/sh -s`.
pub(crate) async fn run_script(
    target: &Target,
    rule: HostKeyRule,
    key: Arc<PrivateKey>,
    script: &str,
) -> Result<Run, Failure> {
    // Every connection of this run ends with it, whichever way it ends (a future dropped too).
    let cut = Cut::default();
    let _cut_when_done = CutOnDrop(cut.clone());
    let config = |certificates: bool| {
        let mut preferred = Preferred::default();
        if certificates {
            preferred.host_key_certificates = std::borrow::Cow::Borrowed(CERTIFICATE_ALGORITHMS);
        }
        Arc::new(client::Config {
            inactivity_timeout: Some(target.command_timeout + Duration::from_secs(30)),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            preferred,
            ..Default::default()
        })
    };
    // A hop trusted by its CA is asked for a host certificate (listed ahead of the plain key
    // algorithms, as OpenSSH's ssh does for a host with an @cert-authority line); other hops
    // are not, so they keep presenting the plain key they are pinned or recorded by.
    let (plain, certificates) = (config(false), config(true));
    let config_for = |hop: &Hop| match hop.rule.policy {
        HostKeyPolicy::CertificateAuthority => certificates.clone(),
        _ => plain.clone(),
    };
    let mut hops = target.jump_hosts.clone();
    hops.push(Hop {
        host: target.host.clone(),
        port: target.port,
        username: target.username.clone(),
        key,
        certificate: target.certificate.clone(),
        rule,
    });
    let seen: Vec<Seen> = hops.iter().map(|_| Arc::default()).collect();
    let fail = |index: usize, error: SshError| Failure {
        at: target.hop_name(index),
        error,
    };
    // The hop being connected to, for the timeout's message.
    let reached = std::sync::atomic::AtomicUsize::new(0);
    let connect = async {
        let mut sessions: Vec<client::Handle<Checker>> = Vec::with_capacity(hops.len());
        for (index, hop) in hops.iter().enumerate() {
            reached.store(index, std::sync::atomic::Ordering::Relaxed);
            let checker = || Checker {
                rule: hop.rule.clone(),
                host: hop.host.clone(),
                port: hop.port,
                seen: seen[index].clone(),
            };
            let config = config_for(hop);
            let session = match sessions.last() {
                None => connect_tcp(&config, hop, checker, &cut)
                    .await
                    .map_err(|e| fail(index, e))?,
                Some(previous) => {
                    let channel = previous
                        .channel_open_direct_tcpip(
                            hop.host.clone(),
                            hop.port.into(),
                            ORIGINATOR.0,
                            ORIGINATOR.1,
                        )
                        .await
                        .map_err(|e| forward_error(e, target, index))?;
                    handshake(&config, cut.line(channel.into_stream()), hop, checker())
                        .await
                        .map_err(|e| fail(index, e))?
                }
            };
            sessions.push(session);
        }
        Ok::<_, Failure>(sessions)
    };
    let sessions = tokio::time::timeout(target.connect_timeout, connect)
        .await
        .map_err(|_| {
            fail(
                reached.load(std::sync::atomic::Ordering::Relaxed),
                SshError::ConnectTimeout,
            )
        })??;
    let fingerprint_of = |seen: &Seen| {
        seen.lock()
            .expect("host key record")
            .as_ref()
            .map(|(fp, _, _)| fp.clone())
            .unwrap_or_default()
    };
    let certificate_of = |seen: &Seen| {
        seen.lock()
            .expect("host key record")
            .as_ref()
            .and_then(|(_, _, summary)| summary.clone())
    };
    let mut fingerprints: Vec<String> = seen.iter().map(fingerprint_of).collect();
    let host_key_fingerprint = fingerprints.pop().unwrap_or_default();
    let mut certificates: Vec<Option<CertificateSummary>> =
        seen.iter().map(certificate_of).collect();
    let host_certificate = certificates.pop().flatten();
    let session = sessions
        .last()
        .expect("one session per hop, at least one hop");

    let exchange = async {
        let (mut exit_status, mut output) = run_channel(session, script, false).await?;
        if exit_status.is_some() && exit_status == target.tty_retry_status {
            let (status, more) = run_channel(session, script, true).await?;
            exit_status = status;
            output.extend_from_slice(&more);
        }
        if output.len() > OUTPUT_KEEP {
            output.drain(..output.len() - OUTPUT_KEEP);
        }
        Ok::<_, SshError>((exit_status, output))
    };
    let result = tokio::time::timeout(target.command_timeout, exchange).await;
    close(sessions, &cut).await;
    let last = hops.len() - 1;
    let (exit_status, output) = result
        .map_err(|_| fail(last, SshError::CommandTimeout(target.command_timeout)))?
        .map_err(|e| fail(last, e))?;
    Ok(Run {
        host_key_fingerprint,
        jump_host_key_fingerprints: fingerprints,
        host_certificate,
        jump_host_certificates: certificates,
        exit_status,
        output,
    })
}

/// Says goodbye to each session (the host first, then each jump host back to the first) and
/// waits for their tasks to end, within [`CLOSE_GRACE`]; then cuts their connections (a host
/// that stopped reading, or holds a key exchange open, never lets a goodbye through) and waits
/// for the tasks to end, within [`CLOSE_GRACE`] again: they end at their next step.
async fn close(sessions: Vec<client::Handle<Checker>>, cut: &Cut) {
    let goodbye = async {
        for session in sessions.iter().rev() {
            let _ = session
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    };
    let left = CLOSE_GRACE;
    let started = tokio::time::Instant::now();
    let _ = tokio::time::timeout(left, goodbye).await;
    // A handle is its session's task: it completes when the task ended.
    let mut ended = futures::future::join_all(sessions);
    let left = left.saturating_sub(started.elapsed());
    if tokio::time::timeout(left, &mut ended).await.is_err() {
        cut.cut();
        if tokio::time::timeout(CLOSE_GRACE, ended).await.is_err() {
            tracing::warn!("an SSH session's task did not end once its connection was cut");
        }
    }
}

/// Ends the connections of one run: once cut, every read, write, flush and shutdown of each of
/// its [`Line`]s fails, and whatever waited on one is woken to see it.
#[derive(Clone, Default)]
struct Cut(Arc<CutState>);

#[derive(Default)]
struct CutState {
    cut: AtomicBool,
    lines: Mutex<Vec<Arc<LineState>>>,
}

/// One stream's view of a [`Cut`]: the tasks waiting to read and to write on it.
#[derive(Default)]
struct LineState {
    cut: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Cut {
    /// `stream`, ended when this is cut.
    fn line<S>(&self, stream: S) -> Line<S> {
        let state = Arc::new(LineState::default());
        let mut lines = self.0.lines.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.cut.load(Ordering::SeqCst) {
            state.cut.store(true, Ordering::SeqCst);
        }
        lines.push(state.clone());
        Line {
            inner: stream,
            state,
        }
    }

    /// Ends every line, now and to come.
    fn cut(&self) {
        let lines = {
            let mut lines = self.0.lines.lock().unwrap_or_else(|e| e.into_inner());
            self.0.cut.store(true, Ordering::SeqCst);
            std::mem::take(&mut *lines)
        };
        for line in lines {
            line.cut.store(true, Ordering::SeqCst);
            line.reader.wake();
            line.writer.wake();
        }
    }
}

/// Cuts when dropped: when the run returns, or its future is dropped.
struct CutOnDrop(Cut);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        self.0.cut();
    }
}

/// A stream that fails once its [`Cut`] is cut.
struct Line<S> {
    inner: S,
    state: Arc<LineState>,
}

impl<S> Line<S> {
    /// Fails when cut; otherwise registers `cx` to be woken by the cut (`waker` is the reader's
    /// or the writer's).
    fn check(&self, cx: &Context<'_>, waker: &AtomicWaker) -> Result<(), std::io::Error> {
        let cut = || {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the session was closed by the controller",
            )
        };
        if self.state.cut.load(Ordering::SeqCst) {
            return Err(cut());
        }
        waker.register(cx.waker());
        // Cut between the check and the registration: the wake may have been missed.
        match self.state.cut.load(Ordering::SeqCst) {
            true => Err(cut()),
            false => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Line<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx, &this.state.reader)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Line<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx, &this.state.writer)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx, &this.state.writer)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx, &this.state.writer)?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Opens a TCP connection to `hop` (trying each address its name resolves to) and the SSH
/// session over it, on a line of `cut`.
async fn connect_tcp(
    config: &Arc<client::Config>,
    hop: &Hop,
    checker: impl Fn() -> Checker,
    cut: &Cut,
) -> Result<client::Handle<Checker>, SshError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((hop.host.as_str(), hop.port))
        .await
        .map_err(|e| SshError::Unreachable(e.to_string()))?
        .collect();
    let mut last = SshError::Unreachable("the name has no address".into());
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return handshake(config, cut.line(stream), hop, checker()).await;
            }
            Err(e) => last = SshError::Unreachable(format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Runs the SSH handshake over `stream` (the host key judged by `checker` before anything else
/// is sent) and logs in to `hop`.
async fn handshake<S>(
    config: &Arc<client::Config>,
    stream: S,
    hop: &Hop,
    checker: Checker,
) -> Result<client::Handle<Checker>, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = checker.seen.clone();
    let mut session = client::connect_stream(config.clone(), stream, checker)
        .await
        .map_err(|e| session_error(e, &seen))?;
    let hash = match hop.key.algorithm().is_rsa() {
        true => session
            .best_supported_rsa_hash()
            .await
            .map_err(|e| session_error(e, &seen))?
            .flatten(),
        false => None,
    };
    let auth = match &hop.certificate {
        Some(cert) => session
            .authenticate_openssh_cert(hop.username.clone(), hop.key.clone(), cert.clone())
            .await
            .map_err(|e| session_error(e, &seen))?,
        None => session
            .authenticate_publickey(
                hop.username.clone(),
                PrivateKeyWithHashAlg::new(hop.key.clone(), hash),
            )
            .await
            .map_err(|e| session_error(e, &seen))?,
    };
    if !auth.success() {
        return Err(SshError::AuthFailed(hop.username.clone()));
    }
    Ok(session)
}

/// Classifies a failure to open a forwarded channel from jump host `index - 1` to hop `index`.
fn forward_error(error: russh::Error, target: &Target, index: usize) -> Failure {
    let jump = target.hop_name(index - 1);
    let (next_host, next_port) = match target.jump_hosts.get(index) {
        Some(hop) => (hop.host.as_str(), hop.port),
        None => (target.host.as_str(), target.port),
    };
    let next = format!("{next_host}:{next_port}");
    let (at, error) = match error {
        russh::Error::ChannelOpenFailure(
            ChannelOpenFailure::AdministrativelyProhibited | ChannelOpenFailure::UnknownChannelType,
        ) => (jump, SshError::ForwardingRefused(next)),
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed) => (
            target.hop_name(index),
            SshError::Unreachable(format!("{jump} could not connect to it")),
        ),
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::ResourceShortage) => (
            jump,
            SshError::Unreachable(format!(
                "it is short of resources to forward a connection to {next}"
            )),
        ),
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::Other { code, reason }) => (
            jump,
            SshError::Protocol(format!(
                "forwarding a connection to {next} failed (code {code}: {reason:?})"
            )),
        ),
        russh::Error::IO(e) => (jump, SshError::Unreachable(e.to_string())),
        russh::Error::Disconnect | russh::Error::HUP | russh::Error::SendError => (
            jump,
            SshError::Unreachable("the connection was closed".into()),
        ),
        other => (jump, SshError::Protocol(other.to_string())),
    };
    Failure { at, error }
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
    seen: &Mutex<Option<(String, Verdict, Option<CertificateSummary>)>>,
) -> SshError {
    match seen.lock().expect("host key record").as_ref() {
        Some((_, Verdict::Refuse(why), _)) => return SshError::HostKeyMismatch(why.clone()),
        Some((_, Verdict::RefuseCertificate(why), _)) => {
            return SshError::HostCertificateInvalid(why.clone());
        }
        _ => {}
    }
    match error {
        russh::Error::UnknownKey => {
            SshError::HostKeyMismatch("the host key was not accepted".into())
        }
        russh::Error::IO(e) => SshError::Unreachable(e.to_string()),
        russh::Error::Disconnect | russh::Error::HUP => {
            SshError::Unreachable("the connection was closed".into())
        }
        russh::Error::ConnectionTimeout => SshError::ConnectTimeout,
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
            recorded_in: "status.hostKeyFingerprint",
            authorities: vec![],
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
            recorded_in: "status.hostKeyFingerprint",
            authorities: vec![],
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
            recorded_in: "status.hostKeyFingerprint",
            authorities: vec![],
        };
        assert_eq!(rule.judge(&key()), Verdict::Accept);
    }

    fn target(jumps: usize) -> Target {
        let hop = |n: usize| Hop {
            host: format!("jump{n}"),
            port: 22,
            username: "j".into(),
            key: Arc::new(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()),
            certificate: None,
            rule: HostKeyRule {
                policy: HostKeyPolicy::AcceptAny,
                pinned: vec![],
                recorded: None,
                recorded_in: "status.jumpHostKeyFingerprints",
                authorities: vec![],
            },
        };
        Target {
            host: "10.0.0.5".into(),
            port: 2222,
            username: "admin".into(),
            certificate: None,
            jump_hosts: (1..=jumps).map(hop).collect(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            tty_retry_status: None,
        }
    }

    #[test]
    fn a_refused_forward_is_the_jump_hosts_and_a_failed_connect_is_the_next_hops() {
        let t = target(2);
        let refused = forward_error(
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited),
            &t,
            1,
        );
        assert_eq!(refused.at, "jump host 1 of 2 (jump1:22)");
        assert_eq!(
            refused.error,
            SshError::ForwardingRefused("jump2:22".into())
        );
        let to_host = forward_error(
            russh::Error::ChannelOpenFailure(ChannelOpenFailure::ConnectFailed),
            &t,
            2,
        );
        assert_eq!(to_host.at, "10.0.0.5:2222 (through 2 jump hosts)");
        assert_eq!(
            to_host.error,
            SshError::Unreachable("jump host 2 of 2 (jump2:22) could not connect to it".into())
        );
        // A jump host whose connection dropped is the unreachable one.
        let dropped = forward_error(russh::Error::Disconnect, &t, 2);
        assert_eq!(dropped.at, "jump host 2 of 2 (jump2:22)");
        assert!(matches!(dropped.error, SshError::Unreachable(_)));
    }

    #[test]
    fn the_private_key_of_a_hop_stays_out_of_debug_output() {
        let t = target(1);
        let key = t.jump_hosts[0]
            .key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        let shown = format!("{t:?}");
        assert!(shown.contains("jump1"), "{shown}");
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "{shown}");
        }
    }
}
