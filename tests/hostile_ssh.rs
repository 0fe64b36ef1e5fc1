//! Hosts that misbehave at the SSH protocol level, and tenants that flood the SSH slots, against
//! the controller process: hostile servers of the test's own (a raw-TCP server that stalls the key
//! exchange, a russh server that stops reading or leaves a re-key unfinished mid-install, a
//! tarpit that accepts and never speaks), a real kube-apiserver, moto and the OpsWorks endpoint.
//!
//! What is checked: each object gets a stable reason within its limits, deletion completes, and
//! the controller's own TCP connections to the server (its sockets, from /proc) and
//! `registrar_ssh_sessions_in_flight` come back to zero; one namespace's tarpit objects hold at
//! most its share of the SSH slots, and another namespace's object is Ready meanwhile; at trace
//! level the SSH library logs no trace lines (nor the install's secret).

mod support;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use kube::api::{Api, DeleteParams};
use russh::keys::{Algorithm, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, collect_secret_access_keys, condition,
    condition_message, eventually, http_get, namespace, on_premises, serving_stand_in,
    ssh_key_secret, ssh_via, strip_ansi, wait_gone,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

fn aws() -> &'static AwsEnv {
    serving_stand_in(AwsEnv::shared(), Duration::from_secs(1))
}

/// One test's namespace: an SSH key in Secret `key`, a stack.
struct Tenant {
    ns: String,
    api: Api<InstanceRegistration>,
    stack: String,
    public_key: String,
}

impl Tenant {
    async fn new(client: &kube::Client, prefix: &str) -> Tenant {
        let ns = namespace(client, prefix).await;
        let (_, public_key) = ssh_key_secret(client, &ns, "key").await;
        let stack = aws().create_stack(&ns, None).await;
        Tenant {
            api: Api::namespaced(client.clone(), &ns),
            ns,
            stack,
            public_key,
        }
    }

    /// Object `name` for host `target` (an address of its own, so no two objects name the same
    /// host), reached at `address:port`, with more `ssh` lines in `ssh`.
    fn object(&self, name: &str, target: &str, address: &str, port: u16, ssh: &str) -> String {
        on_premises(&self.ns, name, &self.stack, target, name, "key", "")
            + &format!("    address: \"{address}\"\n    port: {port}\n{ssh}")
    }

    /// Deletes `names` (without waiting).
    async fn delete(&self, names: &[String]) {
        for name in names {
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// The controller's TCP sockets connected to `port` (any state: one in CLOSE_WAIT is still held),
/// from its file descriptors and /proc/<pid>/net/tcp.
fn connections(pid: u32, port: u16) -> usize {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && inodes.contains(*inode) {
                count += 1;
            }
        }
    }
    count
}

/// `registrar_ssh_sessions_in_flight`, from the controller's metrics.
fn in_flight(metrics: &str) -> Option<i64> {
    let (code, text) = http_get(&format!("http://{metrics}/metrics"));
    if code != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("registrar_ssh_sessions_in_flight "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the controller holds no connection to `port` and no SSH session is in flight.
async fn assert_back_to_baseline(controller: &ControllerProcess, metrics: &str, port: u16) {
    let pid = controller.pid().expect("the controller runs");
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "no connection to the server and no session in flight",
        || async { (connections(pid, port) == 0 && in_flight(metrics) == Some(0)).then_some(()) },
    )
    .await;
    eprintln!(
        "back to baseline {:.1}s after asked",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------------------------------
// The key-exchange staller: a raw-TCP server that sends its version line and KEXINIT, then never
// answers the key exchange and sends SSH_MSG_IGNORE every second (before keys are exchanged, a
// plain unencrypted packet), which resets any inactivity limit of the client's.

/// An unencrypted SSH binary packet (RFC 4253 §6: block size 8, at least 4 bytes of padding).
fn packet(payload: &[u8]) -> Vec<u8> {
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let length = (1 + payload.len() + padding) as u32;
    let mut out = length.to_be_bytes().to_vec();
    out.push(padding as u8);
    out.extend_from_slice(payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

fn name_list(out: &mut Vec<u8>, names: &str) {
    out.extend_from_slice(&(names.len() as u32).to_be_bytes());
    out.extend_from_slice(names.as_bytes());
}

/// SSH_MSG_KEXINIT with algorithms russh offers (and no strict key exchange, under which an
/// IGNORE during the first exchange would end the connection).
fn kexinit() -> Vec<u8> {
    let mut p = vec![20u8];
    p.extend_from_slice(&[7u8; 16]);
    for names in [
        "curve25519-sha256",
        "ssh-ed25519",
        "chacha20-poly1305@openssh.com,aes256-ctr,aes128-ctr",
        "chacha20-poly1305@openssh.com,aes256-ctr,aes128-ctr",
        "hmac-sha2-256,hmac-sha2-512",
        "hmac-sha2-256,hmac-sha2-512",
        "none",
        "none",
        "",
        "",
    ] {
        name_list(&mut p, names);
    }
    p.push(0);
    p.extend_from_slice(&0u32.to_be_bytes());
    packet(&p)
}

/// SSH_MSG_IGNORE.
fn ignore() -> Vec<u8> {
    let mut p = vec![2u8];
    name_list(&mut p, "still here");
    packet(&p)
}

/// Counts of a test server's connections: accepted in all, and open now (on the server's side).
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// Starts the staller; returns its port and counts.
async fn key_exchange_staller() -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                stall(stream).await;
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, counts)
}

/// Speaks to one client until it goes away.
async fn stall(stream: TcpStream) {
    let (mut read, mut write) = stream.into_split();
    if write.write_all(b"SSH-2.0-Staller_1.0\r\n").await.is_err() {
        return;
    }
    // Everything the client sends is read and dropped (its version line, its KEXINIT, its half
    // of the key exchange); the connection is over when it closes.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let writer = async {
        write.write_all(&kexinit()).await?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            write.write_all(&ignore()).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stalls_the_key_exchange_leaves_no_connection_behind_after_many_retries() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let t = Tenant::new(&client, "kex-staller").await;
    let (port, counts) = key_exchange_staller().await;
    let controller = ControllerProcess::start(cp, aws(), &t.ns, &[]);
    let metrics = controller.http_address("/metrics");
    let pid = controller.pid().unwrap();
    let objects = 3;
    let names: Vec<String> = (0..objects).map(|i| format!("staller-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        apply(
            cp,
            &t.object(
                name,
                &format!("10.71.0.{}", i + 1),
                "127.0.0.1",
                port,
                "    timeoutSeconds: 2\n",
            ),
        );
    }
    for name in &names {
        let obj = support::wait_reason(
            &t.api,
            name,
            types::HOST_REACHABLE,
            reasons::HOST_UNREACHABLE,
        )
        .await;
        let message = condition_message(&obj, types::HOST_REACHABLE);
        assert!(
            message.contains("no SSH session within the connect timeout"),
            "{message}"
        );
    }
    // Many retries: each one a connection the staller keeps alive as long as the client stays.
    let retries = 12;
    let mut most = 0;
    eventually(
        Duration::from_secs(90),
        "the staller to see many connection attempts",
        || {
            most = most.max(connections(pid, port));
            let done = counts.accepted.load(Ordering::SeqCst) >= retries;
            async move { done.then_some(()) }
        },
    )
    .await;
    let held = connections(pid, port);
    eprintln!(
        "after {} attempts: the controller holds {held} connections to the staller (at most {most} seen), the staller sees {} open",
        counts.accepted.load(Ordering::SeqCst),
        counts.open.load(Ordering::SeqCst)
    );
    // At most one per object (the attempt under way); each attempt's connection ended with it.
    assert!(
        held <= objects && most <= objects,
        "the controller holds {held} connections to the staller (at most {most} seen) for {objects} objects"
    );
    assert!(counts.open.load(Ordering::SeqCst) <= objects);

    let asked = Instant::now();
    t.delete(&names).await;
    for name in &names {
        wait_gone(&t.api, name).await;
    }
    eprintln!("deleted in {:.1}s", asked.elapsed().as_secs_f64());
    assert_back_to_baseline(&controller, &metrics, port).await;
    eventually(
        Duration::from_secs(10),
        "the staller to see every connection closed",
        || async { (counts.open.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
}

// ------------------------------------------------------------------------------------------
// A russh server that answers the probe as a host does, then misbehaves in the install session:
// stops reading its socket, or starts a re-key and never finishes it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Misbehaviour {
    /// Stops reading the socket once the install's command arrives.
    StopsReading,
    /// Starts a re-key once the install's command arrived, and never finishes it (it reads
    /// nothing more).
    StallsRekey,
}

/// A stream whose reads stop (stay pending, for good) once `frozen` is set.
struct Freezable {
    inner: TcpStream,
    frozen: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One connection of the misbehaving server.
struct Hostile {
    /// Whether this connection misbehaves (the first answers the probe).
    misbehaves: Option<Misbehaviour>,
    frozen: Arc<AtomicBool>,
    input: Vec<u8>,
}

impl russh::server::Handler for Hostile {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _: &str,
        _: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _: Channel<Msg>,
        reply: ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.misbehaves {
            None => {}
            Some(Misbehaviour::StopsReading) => self.frozen.store(true, Ordering::SeqCst),
            Some(Misbehaviour::StallsRekey) => {
                self.frozen.store(true, Ordering::SeqCst);
                // Past the re-key time limit (1 s) when this returns: the session starts a
                // re-key right after it accepts the command, and reads nothing more.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        session.channel_success(channel)?;
        Ok(())
    }

    async fn data(
        &mut self,
        _: ChannelId,
        data: &[u8],
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        self.input.extend_from_slice(data);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The probe: say what a host says.
        let text = String::from_utf8_lossy(&self.input);
        if text.contains("instance-registrar-probe") {
            session.data(
                channel,
                b"instance-registrar-probe=1\nhostname=hostile\nconnection=127.0.0.1\naddresses=127.0.0.1\n"
                    .to_vec(),
            )?;
            session.exit_status_request(channel, 0)?;
        } else {
            session.exit_status_request(channel, 1)?;
        }
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// Starts a russh server whose first connection answers the probe and whose later ones
/// misbehave as `how`; returns its port and how many connections it accepted.
async fn misbehaving_server(how: Misbehaviour) -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = Arc::new(russh::server::Config {
        keys: vec![PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        limits: russh::Limits::new(1 << 30, 1 << 30, Duration::from_secs(1)),
        inactivity_timeout: None,
        ..Default::default()
    });
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = c.accepted.fetch_add(1, Ordering::SeqCst);
            let frozen = Arc::new(AtomicBool::new(false));
            let handler = Hostile {
                misbehaves: (n > 0).then_some(how),
                frozen: frozen.clone(),
                input: Vec::new(),
            };
            let stream = Freezable {
                inner: stream,
                frozen,
            };
            let config = config.clone();
            tokio::spawn(async move {
                if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                    let _ = session.await;
                }
            });
        }
    });
    (port, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_or_stalls_a_rekey_mid_install_times_out_and_leaves_nothing_behind()
 {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let t = Tenant::new(&client, "mid-install").await;
    let controller = ControllerProcess::start(cp, aws(), &t.ns, &[]);
    let metrics = controller.http_address("/metrics");
    let pid = controller.pid().unwrap();
    let command_timeout = 10;
    let mut cases = Vec::new();
    for (i, how) in [Misbehaviour::StopsReading, Misbehaviour::StallsRekey]
        .into_iter()
        .enumerate()
    {
        let (port, counts) = misbehaving_server(how).await;
        let name = format!("hostile-{i}");
        apply(
            cp,
            &t.object(
                &name,
                &format!("10.72.0.{}", i + 1),
                "127.0.0.1",
                port,
                &format!("    timeoutSeconds: 5\n    commandTimeoutSeconds: {command_timeout}\n"),
            ),
        );
        cases.push((how, name, port, counts));
    }
    // Each case watched at once: the reason, and the connection gone soon after it.
    let watch = |how: Misbehaviour, name: String, port: u16, counts: Arc<Counts>| {
        let api = t.api.clone();
        async move {
            // The install starts (the probe was answered), then ends with the session's limit.
            let installing =
                eventually(Duration::from_secs(60), "the install to start", || async {
                    let obj = api.get(&name).await.ok()?;
                    let (_, reason, _) = condition(&obj, types::AGENT_INSTALLED)?;
                    (reason == reasons::INSTALLING).then_some(Instant::now())
                })
                .await;
            let obj = eventually(
                Duration::from_secs(90),
                &format!("{name} ({how:?}): InstallTimeout"),
                || async {
                    let obj = api.get(&name).await.ok()?;
                    let (_, reason, _) = condition(&obj, types::AGENT_INSTALLED)?;
                    (reason == reasons::INSTALL_TIMEOUT).then_some(obj)
                },
            )
            .await;
            let took = installing.elapsed().as_secs_f64();
            let seen = Instant::now();
            // The session's connection ended with it, whatever the server does.
            eventually(
                Duration::from_secs(5),
                &format!("{how:?}: no connection left to the server"),
                || async { (connections(pid, port) == 0).then_some(()) },
            )
            .await;
            let gone = seen.elapsed();
            eprintln!(
                "{how:?}: InstallTimeout {took:.1}s after Installing was seen; no connection \
                 {:.1}s after that; {} connections accepted",
                gone.as_secs_f64(),
                counts.accepted.load(Ordering::SeqCst)
            );
            // Within the session's limit and the time to close it (bounded too).
            assert!(
                took <= (command_timeout + 8) as f64,
                "{how:?}: InstallTimeout after {took}s: {}",
                condition_message(&obj, types::AGENT_INSTALLED)
            );
            assert!(counts.accepted.load(Ordering::SeqCst) >= 2);
        }
    };
    futures::future::join_all(
        cases
            .iter()
            .map(|(how, name, port, counts)| watch(*how, name.clone(), *port, counts.clone())),
    )
    .await;
    let names: Vec<String> = cases.iter().map(|(_, n, _, _)| n.clone()).collect();
    let asked = Instant::now();
    t.delete(&names).await;
    for name in &names {
        wait_gone(&t.api, name).await;
    }
    eprintln!("deleted in {:.1}s", asked.elapsed().as_secs_f64());
    for (_, _, port, _) in &cases {
        assert_back_to_baseline(&controller, &metrics, *port).await;
    }
}

// ------------------------------------------------------------------------------------------
// One namespace floods a tarpit; another's object is Ready meanwhile.

/// A TCP listener that accepts and never speaks; returns its port and how many connections it
/// holds.
async fn tarpit() -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_flooding_a_tarpit_holds_only_its_share_and_another_namespace_installs_meanwhile()
 {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let flood = Tenant::new(&client, "flood").await;
    let quiet = Tenant::new(&client, "quiet").await;
    let (port, counts) = tarpit().await;
    let slots = 4;
    let share = 2;
    let _controller = ControllerProcess::start(
        cp,
        aws(),
        &format!("{},{}", flood.ns, quiet.ns),
        &["--ssh-concurrency", &slots.to_string()],
    );
    let objects = 12;
    for i in 0..objects {
        apply(
            cp,
            &flood.object(
                &format!("tarpit-{i}"),
                &format!("10.73.0.{}", i + 1),
                "127.0.0.1",
                port,
                "    timeoutSeconds: 600\n",
            ),
        );
    }
    // The flood takes what it may of the slots.
    eventually(
        Duration::from_secs(60),
        "the flood in the tarpit",
        || async { (counts.accepted.load(Ordering::SeqCst) >= share).then_some(()) },
    )
    .await;

    // The quiet namespace's object, on a real host, installs as if the flood were not there.
    let host = SshHost::start(&format!("{}-web", quiet.ns));
    host.authorize(&quiet.public_key);
    let applied = Instant::now();
    apply(
        cp,
        &(on_premises(
            &quiet.ns,
            "web",
            &quiet.stack,
            &host.address().to_string(),
            "web-1",
            "key",
            "",
        ) + &ssh_via(&host)),
    );
    eventually(
        Duration::from_secs(60),
        "the quiet namespace's object Ready",
        || async {
            let obj = quiet.api.get("web").await.ok()?;
            let (status, reason, _) = condition(&obj, types::READY)?;
            (status == "True" && reason == reasons::SUCCEEDED).then_some(())
        },
    )
    .await;
    let took = applied.elapsed();
    eprintln!(
        "the quiet namespace's object was Ready {:.1}s after apply, with {} connections in the tarpit",
        took.as_secs_f64(),
        counts.accepted.load(Ordering::SeqCst)
    );
    // Its time on its own is a few seconds (the installer stand-in takes 1 s); the flood's
    // sessions last 600 s.
    assert!(took < Duration::from_secs(30), "{took:?}");
    // The flood never held more than its share, and its other objects say why they wait.
    assert_eq!(counts.accepted.load(Ordering::SeqCst), share);
    let list = flood.api.list(&Default::default()).await.unwrap();
    let queued: Vec<String> = list
        .items
        .iter()
        .filter(|o| {
            condition(o, types::HOST_REACHABLE).is_some_and(|(_, r, _)| r == reasons::QUEUED)
        })
        .map(|o| condition_message(o, types::HOST_REACHABLE))
        .collect();
    eprintln!("{} of {objects} objects say they are queued", queued.len());
    assert!(
        queued.iter().any(|m| m.contains("namespace at its share")),
        "{queued:?}"
    );
    assert!(
        queued.iter().all(|m| m.starts_with("queued: ")),
        "{queued:?}"
    );
}

// ------------------------------------------------------------------------------------------
// Trace-level logging.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_the_ssh_library_logs_no_trace_lines_nor_the_install_secret() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let t = Tenant::new(&client, "trace").await;
    let secrets = collect_secret_access_keys(&client, &t.ns).await;
    let controller = ControllerProcess::start_with_env(
        cp,
        aws(),
        &t.ns,
        &[],
        &[("LOG_LEVEL", "trace,russh=trace")],
    );
    let host = SshHost::start(&format!("{}-web", t.ns));
    host.authorize(&t.public_key);
    apply(
        cp,
        &(on_premises(
            &t.ns,
            "web",
            &t.stack,
            &host.address().to_string(),
            "web-1",
            "key",
            "",
        ) + &ssh_via(&host)),
    );
    eventually(Duration::from_secs(90), "the object Ready", || async {
        let obj = t.api.get("web").await.ok()?;
        let (status, _, _) = condition(&obj, types::READY)?;
        (status == "True").then_some(())
    })
    .await;
    let log = strip_ansi(&controller.logs());
    let ssh_lines = |level: &str| {
        log.lines()
            .filter(|l| l.contains(level) && l.contains(" russh"))
            .count()
    };
    // The filter asked for russh's trace lines; its debug lines come, its trace lines do not.
    assert!(
        ssh_lines(" DEBUG ") > 0,
        "no russh debug lines at trace level"
    );
    assert_eq!(ssh_lines(" TRACE "), 0, "russh trace lines in the log");
    let secrets = secrets.lock().unwrap().clone();
    assert!(!secrets.is_empty(), "the install had no secret to look for");
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the install's secret is in the log"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Hostile certificates: what a host presents and what a Secret carries are parsed with bounds
// and reported, never trusted to be small or well formed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_certificates_are_refused_or_reported_and_the_controller_stays_up() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let t = Tenant::new(&client, "hostile-cert").await;
    let mut controller = ControllerProcess::start(cp, aws(), &t.ns, &[]);
    let ca = support::SshCa::new();

    // A host certificate with 256 long principals (the most ssh-keygen writes), none of them
    // the host.
    let mut crowded = SshHost::start(&format!("{}-crowded", t.ns));
    crowded.authorize(&t.public_key);
    let principals: Vec<String> = (0..256)
        .map(|i| format!("host-{i}-{}.example.com", "x".repeat(220)))
        .collect();
    let cert = ca.sign_host(&crowded, "crowded", &["-n", &principals.join(",")]);
    assert!(cert.len() > 60_000, "{}", cert.len());
    crowded.set_host_certificate(Some(&cert));
    let trust = format!(
        "    hostKeyPolicy: CertificateAuthority\n    hostCertificateAuthorities: [{:?}]\n",
        ca.public_line()
    );
    apply(
        cp,
        &t.object(
            "crowded",
            &crowded.address().to_string(),
            &crowded.address().to_string(),
            crowded.port(),
            &trust,
        ),
    );

    // User certificates in Secrets: truncated, with a 20 KiB extension, and a public key
    // instead of a certificate. Each beside a valid private key.
    let (private, public) = support::ssh_keypair("ed25519", "");
    let good = ca.sign_user(&public, "robot", &["-n", "opsworks-test"]);
    let huge_extension = ca.sign_user(
        &public,
        "robot-huge",
        &[
            "-n",
            "opsworks-test",
            "-O",
            &format!("extension:big@example.com={}", "x".repeat(20 * 1024)),
        ],
    );
    let cases = [
        ("truncated", good[..good.len() / 2].to_owned()),
        ("huge-extension", huge_extension),
        ("not-a-cert", public.clone()),
    ];
    let quiet = SshHost::start(&format!("{}-quiet", t.ns));
    for (name, cert) in &cases {
        support::secret(
            &client,
            &t.ns,
            name,
            "kubernetes.io/ssh-auth",
            &[
                ("ssh-privatekey", private.as_bytes()),
                ("ssh-certificate", cert.as_bytes()),
            ],
        )
        .await;
        let manifest = on_premises(
            &t.ns,
            name,
            &t.stack,
            &format!("10.74.0.{}", name.len()),
            name,
            name,
            "",
        ) + &format!(
            "    address: \"{}\"\n    port: {}\n",
            quiet.address(),
            quiet.port()
        );
        apply(cp, &manifest);
    }

    let obj = eventually(
        Duration::from_secs(60),
        "the crowded certificate refused",
        || async {
            let obj = t.api.get("crowded").await.ok()?;
            let (_, reason, _) = condition(&obj, types::HOST_REACHABLE)?;
            (reason == reasons::HOST_CERTIFICATE_INVALID).then_some(obj)
        },
    )
    .await;
    let said = condition_message(&obj, types::HOST_REACHABLE);
    assert!(said.contains("and 251 more"), "{said}");
    assert!(said.len() < 2000, "{} bytes: {said}", said.len());
    assert_eq!(crowded.sessions(), 0, "{}", crowded.log());
    for (name, _) in &cases {
        let obj = eventually(
            Duration::from_secs(60),
            "the certificate reported",
            || async {
                let obj = t.api.get(name).await.ok()?;
                let (_, reason, _) = condition(&obj, types::SSH_KEY_READY)?;
                (reason == reasons::INVALID_CERTIFICATE).then_some(obj)
            },
        )
        .await;
        let said = condition_message(&obj, types::SSH_KEY_READY);
        assert!(said.contains("ssh-certificate"), "{name}: {said}");
        for line in support::key_material_lines(&private) {
            assert!(
                !said.contains(&line),
                "{name}: the message holds the private key"
            );
        }
    }
    assert_eq!(quiet.sessions(), 0, "{}", quiet.log());

    // A CA line with authorized_keys-style options, or another marker, never reaches the
    // controller: the API server refuses it.
    for line in [
        format!("cert-authority,principals=\"x\" {}", ca.public_line()),
        format!("@revoked * {}", ca.public_line()),
        format!("@cert-authority * {}\nssh-ed25519 AAAA", ca.public_line()),
    ] {
        let out = cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &t.object(
                "options",
                "10.74.1.1",
                "127.0.0.1",
                22,
                &format!(
                    "    hostKeyPolicy: CertificateAuthority\n    hostCertificateAuthorities: [{line:?}]\n"
                ),
            ),
        );
        assert!(!out.status.success(), "accepted: {line}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("spec.ssh.hostCertificateAuthorities[0]"),
            "{stderr}"
        );
    }
    assert!(controller.running(), "the controller exited");
}
