//! `amazon-ssm-agent`: the stand-in SSM agent, and (run as `ssm-setup-cli setup …`, a hard link
//! to this program) the stand-in setup tool that registers a host with an activation and starts
//! the agent. Talks to nothing but the (loopback) endpoint it is given. See the
//! `opsworks_endpoint::ssm_standin` module for the whole contract.
//!
//! ```text
//! ssm-setup-cli setup --endpoint URL --agent /abs/amazon-ssm-agent [--run-seconds 0]
//!     [--heartbeat-seconds 1] [--host-dir DIR] [--amazon-dir /var/lib/amazon] -- <tool flags>
//! amazon-ssm-agent --endpoint URL [--heartbeat-seconds 1] [--host-dir DIR]
//!     [--amazon-dir /var/lib/amazon]
//! amazon-ssm-agent service {start|stop|restart|status} --endpoint URL [...as the agent]
//! ```
//!
//! With `--init-dir DIR`, the setup tool writes the agent's init script there (as the real
//! package does): it runs this program's `service` mode.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opsworks_endpoint::ssm_standin::{self, CallError, host_files};
use opsworks_endpoint::standin::{self, host_files as opsworks_files};
use serde_json::{Value, json};

fn main() {
    // Only the endpoint it is given may be reached: no proxy from the environment.
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::remove_var(var) };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.split_first() {
        Some((mode, rest)) if mode == "setup" => setup(rest),
        Some((mode, rest)) if mode == "service" => service(rest),
        _ => agent(&args),
    };
    std::process::exit(code);
}

/// The stand-in's own options (before `--`), shared by both modes.
#[derive(Debug)]
struct Options {
    endpoint: String,
    agent: Option<PathBuf>,
    run_time: Duration,
    heartbeat: Duration,
    host_dir: PathBuf,
    amazon_dir: PathBuf,
    init_dir: Option<PathBuf>,
    expect_uid: u32,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("not a number of seconds: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v.min(1e6)))
}

/// Parses the stand-in's options; returns them and what follows `--`.
fn options(args: &[String]) -> Result<(Options, Vec<String>), String> {
    let mut o = Options {
        endpoint: String::new(),
        agent: None,
        run_time: Duration::ZERO,
        heartbeat: ssm_standin::DEFAULT_HEARTBEAT_INTERVAL,
        host_dir: PathBuf::from(standin::HOST_DIR),
        amazon_dir: PathBuf::from(ssm_standin::AMAZON_DIR),
        init_dir: None,
        expect_uid: 0,
    };
    let mut it = args.iter();
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        if a == "--" {
            rest = it.cloned().collect();
            break;
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--endpoint" => o.endpoint = value()?,
            "--agent" => o.agent = Some(PathBuf::from(value()?)),
            "--run-seconds" => o.run_time = seconds(&value()?)?,
            "--heartbeat-seconds" => o.heartbeat = seconds(&value()?)?,
            "--host-dir" => o.host_dir = PathBuf::from(value()?),
            "--amazon-dir" => o.amazon_dir = PathBuf::from(value()?),
            "--init-dir" => o.init_dir = Some(PathBuf::from(value()?)),
            "--expect-uid" => {
                o.expect_uid = value()?
                    .parse()
                    .map_err(|_| "--expect-uid needs a number".to_owned())?
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.endpoint.is_empty() {
        return Err("--endpoint is required".into());
    }
    Ok((o, rest))
}

/// The real setup tool's flags this stand-in takes.
#[derive(Debug, Default, PartialEq)]
struct ToolFlags {
    register: bool,
    install: bool,
    override_registration: bool,
    activation_code: Option<String>,
    activation_id: Option<String>,
    region: Option<String>,
}

const USAGE: &str = "\
Usage of ssm-setup-cli (stand-in):
\t-register      \tRegister ssm agent if unregistered or override is set
\t\t-activation-code \tSSM Activation Code for Onprem environment \t(REQUIRED)
\t\t-activation-id   \tSSM Activation ID for Onprem environment   \t(REQUIRED)
\t\t-region          \tRegion used for ssm agent download and registration \t(REQUIRED)
\t\t-override        \tOverride existing registration if present \t(OPTIONAL)
\t-install       \tInstall (and start) the ssm agent
\t\t-region          \tRegion \t(REQUIRED)
";

/// Parses the setup tool's flags as Go's `flag` package does (`-name value`, `-name=value`,
/// one or two dashes; booleans take no value but `-name=true|false`), and checks them as the
/// real tool does. Errors never quote a value (it may be the activation code).
fn tool_flags(args: &[String]) -> Result<ToolFlags, String> {
    let mut f = ToolFlags::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err("unexpected argument (flags start with -)".into());
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        let boolean = |inline: Option<String>| match inline.as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(format!("invalid boolean value for flag -{name}")),
        };
        let mut string = |inline: Option<String>| match inline {
            Some(v) => Ok(v),
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: -{name}")),
        };
        match name {
            "register" => f.register = boolean(inline)?,
            "install" => f.install = boolean(inline)?,
            "override" => f.override_registration = boolean(inline)?,
            "activation-code" => f.activation_code = Some(string(inline)?),
            "activation-id" => f.activation_id = Some(string(inline)?),
            "region" => f.region = Some(string(inline)?),
            _ => return Err(format!("flag provided but not defined: -{name}")),
        }
    }
    let mut problems = String::new();
    if !f.register && !f.install {
        problems.push_str("Action required (register|install). ");
    }
    if f.register {
        if f.activation_code.as_deref().is_none_or(str::is_empty) {
            problems.push_str("Activation code required for on-prem registration. ");
        }
        if f.activation_id.as_deref().is_none_or(str::is_empty) {
            problems.push_str("Activation id required for on-prem registration. ");
        }
    } else if f.activation_code.is_some() || f.activation_id.is_some() || f.override_registration {
        problems.push_str("-activation-code, -activation-id and -override go with -register. ");
    }
    if f.region.as_deref().is_none_or(str::is_empty) {
        problems.push_str("Region required. ");
    }
    if problems.is_empty() {
        Ok(f)
    } else {
        Err(format!("Invalid parameters - {}", problems.trim_end()))
    }
}

/// How a setup run ended: the log's result and the node, or the failure.
enum Outcome {
    Done {
        result: &'static str,
        node: Option<String>,
    },
    Failed {
        reason: String,
        message: String,
        status: i32,
    },
}

fn failed(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        reason: reason.to_owned(),
        message: message.into(),
        status: 1,
    }
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn setup(args: &[String]) -> i32 {
    let (o, rest) = match options(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ssm-setup-cli (stand-in): {e}");
            return 1;
        }
    };
    let outcome = setup_run(&o, &rest);
    let uid = uid();
    let line = match &outcome {
        Outcome::Done { result, node } => match node {
            Some(n) => format!("setup uid={uid} result={result} node={n}\n"),
            None => format!("setup uid={uid} result={result}\n"),
        },
        Outcome::Failed { reason, .. } => {
            format!("setup uid={uid} result=failed reason={reason}\n")
        }
    };
    append(&o.host_dir.join(host_files::SETUP_LOG), &line);
    match outcome {
        Outcome::Done { .. } => 0,
        Outcome::Failed {
            message, status, ..
        } => {
            eprintln!("{}", message.trim_end());
            status
        }
    }
}

fn append(path: &Path, line: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot append to {}: {e}", path.display());
    }
}

fn say(line: &str) {
    println!("[ssm-setup-cli] {line}");
}

fn setup_run(o: &Options, rest: &[String]) -> Outcome {
    let flags = match tool_flags(rest) {
        Ok(f) => f,
        Err(e) => return failed("usage", format!("{USAGE}{e}")),
    };
    if uid() != o.expect_uid {
        return failed(
            "not-root",
            format!("Please run as root/admin. Err: runs as uid {}", uid()),
        );
    }
    if !ssm_standin::loopback_url(&o.endpoint) {
        return failed(
            "bad-endpoint",
            format!(
                "the endpoint {:?} is not a loopback http:// URL",
                o.endpoint
            ),
        );
    }
    let Some(agent_binary) = &o.agent else {
        return failed("usage", "--agent is required in setup mode");
    };
    let region = flags.region.clone().unwrap_or_default();
    say(&format!(
        "Setup parameters: install={} register={} override={} region={region}",
        flags.install, flags.register, flags.override_registration
    ));
    say(&format!(
        "downloading and installing the agent (takes {} s)",
        o.run_time.as_secs_f64()
    ));
    std::thread::sleep(o.run_time);
    if let Ok(failure) = std::fs::read_to_string(o.host_dir.join(opsworks_files::INSTALLER_FAILURE))
    {
        let status =
            std::fs::read_to_string(o.host_dir.join(opsworks_files::INSTALLER_EXIT_STATUS))
                .ok()
                .and_then(|s| s.trim().parse::<u8>().ok())
                .filter(|&s| s != 0)
                .map_or(1, i32::from);
        return Outcome::Failed {
            reason: "installer-failure".into(),
            message: failure,
            status,
        };
    }
    if let Err(e) = std::fs::write(o.host_dir.join(host_files::AGENT_INSTALLED), "installed\n") {
        return failed("host-dir", format!("cannot record the installation: {e}"));
    }
    if let Some(dir) = o.init_dir.as_ref().filter(|d| d.is_dir())
        && let Err(e) = write_init_script(o, dir, agent_binary)
    {
        return failed("init-script", e);
    }
    say("agent installed");

    let mut outcome = Outcome::Done {
        result: "installed",
        node: None,
    };
    if flags.register {
        let registration = o.amazon_dir.join("ssm/registration");
        let existing = std::fs::read_to_string(&registration)
            .ok()
            .and_then(|t| ssm_standin::parse_registration(&t))
            .map(|(id, _)| id);
        match existing {
            Some(id) if !flags.override_registration => {
                say(&format!("Agent already registered with instance id: {id}"));
                say("skipping registration because override flag is not set, just starting agent");
                outcome = Outcome::Done {
                    result: "skipped",
                    node: Some(id),
                };
            }
            _ => {
                say("Registering agent");
                let id = match register(o, &flags, &region, &registration) {
                    Ok(id) => id,
                    Err(f) => return f,
                };
                stop_agent(&o.host_dir);
                say(&format!(
                    "Successfully registered the instance with AWS SSM using Managed \
                     instance-id: {id}"
                ));
                outcome = Outcome::Done {
                    result: "registered",
                    node: Some(id),
                };
            }
        }
    }
    match ensure_agent(o, agent_binary) {
        Ok(pid) => say(&format!("agent running (pid {pid})")),
        Err(e) => return failed("agent-start", format!("failed to start agent: {e}")),
    }
    outcome
}

/// Writes the agent's init script in `dir`: this program's `service` mode, with the options the
/// setup tool was given.
fn write_init_script(o: &Options, dir: &Path, agent_binary: &Path) -> Result<(), String> {
    let q = |p: &Path| standin::shell_quote(&p.to_string_lossy());
    let script = format!(
        "#!/bin/sh\n\
         # amazon-ssm-agent: the SSM agent stand-in's init script (tests of instance-registrar).\n\
         exec {} service \"$1\" --endpoint {} --heartbeat-seconds {} --host-dir {} --amazon-dir {}\n",
        q(agent_binary),
        standin::shell_quote(&o.endpoint),
        o.heartbeat.as_secs_f64(),
        q(&o.host_dir),
        q(&o.amazon_dir),
    );
    let path = dir.join(host_files::INIT_SCRIPT);
    std::fs::write(&path, script)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The agent's init script: `start`, `stop`, `restart` or `status` the agent daemon. Each run
/// is logged in [`host_files::SERVICE_LOG`].
fn service(args: &[String]) -> i32 {
    let Some((action, rest)) = args.split_first() else {
        eprintln!("usage: amazon-ssm-agent service {{start|stop|restart|status}} --endpoint URL");
        return 2;
    };
    let o = match options(rest) {
        Ok((o, rest)) if rest.is_empty() => o,
        Ok(_) => {
            eprintln!("amazon-ssm-agent (stand-in): unexpected arguments after --");
            return 2;
        }
        Err(e) => {
            eprintln!("amazon-ssm-agent (stand-in): {e}");
            return 2;
        }
    };
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("amazon-ssm-agent (stand-in): cannot find its own program: {e}");
            return 1;
        }
    };
    let start = |o: &Options| match ensure_agent(o, &binary) {
        Ok(pid) => (0, format!("running pid={pid}")),
        Err(e) => {
            eprintln!("amazon-ssm-agent (stand-in): {e}");
            (1, "failed".to_owned())
        }
    };
    let (code, result) = match action.as_str() {
        "start" => start(&o),
        "stop" => {
            stop_agent(&o.host_dir);
            (0, "stopped".to_owned())
        }
        "restart" => {
            stop_agent(&o.host_dir);
            start(&o)
        }
        "status" => match running_agent(&o.host_dir) {
            Some(pid) => (0, format!("running pid={pid}")),
            None => (3, "stopped".to_owned()),
        },
        other => {
            eprintln!("amazon-ssm-agent (stand-in): unknown action {other:?}");
            (2, "usage".to_owned())
        }
    };
    append(
        &o.host_dir.join(host_files::SERVICE_LOG),
        &format!("{action} uid={} result={result}\n", uid()),
    );
    println!("amazon-ssm-agent: {action}: {result}");
    code
}

/// A public key of the size the agent sends (the base64 text of a 2048-bit RSA key's DER): the
/// endpoint checks its form, never its content.
fn public_key() -> String {
    let mut bytes = vec![0u8; 294];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    base64(&bytes)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Registers with `RegisterManagedInstance` (unsigned) and writes the registration file;
/// returns the node ID.
fn register(o: &Options, flags: &ToolFlags, region: &str, file: &Path) -> Result<String, Outcome> {
    let body = json!({
        "ActivationCode": flags.activation_code,
        "ActivationId": flags.activation_id,
        "PublicKey": public_key(),
        "PublicKeyType": "Rsa",
        "Fingerprint": uuid::Uuid::new_v4().to_string(),
    });
    let answer = ssm_standin::call(&o.endpoint, "RegisterManagedInstance", &body, None).map_err(
        |e: CallError| {
            let reason = if e.status == 0 {
                "request-failed".to_owned()
            } else {
                format!("api-error code={}", e.code)
            };
            Outcome::Failed {
                reason,
                message: format!(
                    "failed to register agent: error registering the instance with AWS SSM. {e}"
                ),
                status: 1,
            }
        },
    )?;
    let id = answer
        .get("InstanceId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            failed(
                "request-failed",
                "RegisterManagedInstance gave no InstanceId",
            )
        })?
        .to_owned();
    write_registration(file, &id, region).map_err(|e| {
        failed(
            "registration-file",
            format!("Failed to write registration info to file. {e}"),
        )
    })?;
    Ok(id)
}

/// Writes the registration file whole, mode 0600, as the agent does.
fn write_registration(file: &Path, id: &str, region: &str) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(".registration.partial");
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    f.write_all(ssm_standin::registration_json(id, region).as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&partial, file)
}

/// Opens (creating) the agent's lock file.
fn lock_file(host_dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(host_dir.join(host_files::AGENT_LOCK))
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The PID of the running agent, if one holds the lock.
fn running_agent(host_dir: &Path) -> Option<i32> {
    let mut f = lock_file(host_dir).ok()?;
    if try_lock(&f) {
        // Nobody holds it; closing the file releases it again.
        return None;
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    Some(text.trim().parse().unwrap_or(0))
}

/// Stops the running agent (as the real tool does before registering), if one runs.
fn stop_agent(host_dir: &Path) {
    let Some(pid) = running_agent(host_dir) else {
        return;
    };
    say(&format!("Stopping agent before registering (pid {pid})"));
    if pid > 0 {
        // SAFETY: kill(2) with a PID; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_agent(host_dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid > 0 && running_agent(host_dir).is_some() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Starts the agent daemon unless one runs; returns its PID once it holds the lock.
fn ensure_agent(o: &Options, agent_binary: &Path) -> Result<i32, String> {
    if let Some(pid) = running_agent(&o.host_dir) {
        return Ok(pid);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.host_dir.join(host_files::AGENT_LOG))
        .map_err(|e| format!("cannot open the agent log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(agent_binary);
    cmd.arg("--endpoint")
        .arg(&o.endpoint)
        .arg("--heartbeat-seconds")
        .arg(o.heartbeat.as_secs_f64().to_string())
        .arg("--host-dir")
        .arg(&o.host_dir)
        .arg("--amazon-dir")
        .arg(&o.amazon_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir("/");
    // SAFETY: setsid(2) is async-signal-safe; the child has its own session, detached from the
    // setup run's terminal and process group, as a service is.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", agent_binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = running_agent(&o.host_dir) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Exited: another agent may have taken the lock meanwhile.
            return running_agent(&o.host_dir)
                .ok_or_else(|| format!("the agent exited at once ({status})"));
        }
        if Instant::now() > deadline {
            return Err("the agent did not start within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-line file, trimmed; `None` when missing or empty.
fn read_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// `NAME` and `VERSION_ID` of `/etc/os-release`.
fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    (
        field("NAME").unwrap_or_else(|| "Linux".into()),
        field("VERSION_ID").unwrap_or_else(|| "0".into()),
    )
}

/// Who the agent is now: (node ID, region, access key, secret, availability zone).
fn identity(o: &Options) -> Option<(String, String, &'static str, &'static str, Option<String>)> {
    let registration = std::fs::read_to_string(o.amazon_dir.join("ssm/registration"))
        .ok()
        .and_then(|t| ssm_standin::parse_registration(&t));
    if let Some((id, region)) = registration {
        return Some((
            id,
            region.unwrap_or_else(|| "us-east-1".into()),
            ssm_standin::AGENT_ACCESS_KEY_ID,
            ssm_standin::AGENT_SECRET_ACCESS_KEY,
            None,
        ));
    }
    let doc: Value = std::fs::read_to_string(o.host_dir.join(opsworks_files::IDENTITY_DOCUMENT))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())?;
    let id = doc.get("instanceId")?.as_str()?.to_owned();
    let region = doc
        .get("region")
        .and_then(Value::as_str)
        .unwrap_or("us-east-1")
        .to_owned();
    let zone = doc
        .get("availabilityZone")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((
        id,
        region,
        standin::INSTANCE_PROFILE_ACCESS_KEY_ID,
        standin::INSTANCE_PROFILE_SECRET_ACCESS_KEY,
        zone,
    ))
}

fn agent(args: &[String]) -> i32 {
    let o = match options(args) {
        Ok((o, rest)) if rest.is_empty() => o,
        Ok(_) => {
            eprintln!("amazon-ssm-agent (stand-in): unexpected arguments after --");
            return 1;
        }
        Err(e) => {
            eprintln!("amazon-ssm-agent (stand-in): {e}");
            return 1;
        }
    };
    if !ssm_standin::loopback_url(&o.endpoint) {
        eprintln!(
            "amazon-ssm-agent (stand-in): the endpoint {:?} is not a loopback http:// URL",
            o.endpoint
        );
        return 1;
    }
    let mut lock = match lock_file(&o.host_dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("amazon-ssm-agent (stand-in): cannot open the lock file: {e}");
            return 1;
        }
    };
    if !try_lock(&lock) {
        println!("amazon-ssm-agent (stand-in): another agent runs on this host; exiting");
        return 0;
    }
    let pid = std::process::id();
    let recorded = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(format!("{pid}\n").as_bytes()));
    if let Err(e) = recorded {
        eprintln!("amazon-ssm-agent (stand-in): cannot record the PID: {e}");
    }
    println!(
        "amazon-ssm-agent (stand-in) {} started, pid {pid}, heartbeat every {} s",
        ssm_standin::AGENT_VERSION,
        o.heartbeat.as_secs_f64()
    );
    let (platform_name, platform_version) = os_release();
    let mut last = String::new();
    loop {
        let state = heartbeat(&o, &platform_name, &platform_version);
        // Logged when it changes, not at every beat.
        if state != last {
            println!("{state}");
            last = state;
        }
        std::thread::sleep(o.heartbeat.max(Duration::from_millis(50)));
    }
}

/// One heartbeat; returns what became of it, for the log.
fn heartbeat(o: &Options, platform_name: &str, platform_version: &str) -> String {
    let Some((id, region, key, secret, zone)) = identity(o) else {
        return "not registered: no registration file and no EC2 identity document".into();
    };
    let computer = read_line(Path::new("/proc/sys/kernel/hostname"))
        .or_else(|| read_line(&o.host_dir.join(opsworks_files::HOSTNAME)))
        .unwrap_or_else(|| "localhost".into());
    let mut body = json!({
        "InstanceId": id,
        "AgentName": "amazon-ssm-agent",
        "AgentVersion": ssm_standin::AGENT_VERSION,
        "AgentStatus": "Active",
        "PlatformType": "Linux",
        "PlatformName": platform_name,
        "PlatformVersion": platform_version,
        "ComputerName": computer,
    });
    if let Some(ip) = read_line(&o.host_dir.join(opsworks_files::LOCAL_IPV4)) {
        body["IPAddress"] = json!(ip);
    }
    if let Some(z) = zone {
        body["AvailabilityZone"] = json!(z);
    }
    match ssm_standin::call(
        &o.endpoint,
        "UpdateInstanceInformation",
        &body,
        Some((key, secret, &region)),
    ) {
        Ok(_) => format!("heartbeat {id}: ok"),
        Err(e) => format!("heartbeat {id}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_as_go_parses_them() {
        let f = tool_flags(&args(&[
            "-register",
            "-activation-code",
            "SECRETCODE0123456789",
            "--activation-id=abc",
            "-region",
            "eu-west-1",
            "-override",
        ]))
        .unwrap();
        assert!(f.register && f.override_registration && !f.install);
        assert_eq!(f.activation_code.as_deref(), Some("SECRETCODE0123456789"));
        assert_eq!(f.activation_id.as_deref(), Some("abc"));
        assert_eq!(f.region.as_deref(), Some("eu-west-1"));
        let f = tool_flags(&args(&["-install", "-region=us-east-1"])).unwrap();
        assert!(f.install && !f.register);

        for (bad, want) in [
            (
                &["-register", "-region", "r"][..],
                "Activation code required",
            ),
            (&["-install"][..], "Region required"),
            (&["-region", "r"][..], "Action required"),
            (&["-install", "-region"][..], "flag needs an argument"),
            (
                &["-install", "-region", "r", "-version", "3"][..],
                "not defined: -version",
            ),
            (
                &["-install", "-region", "r", "extra"][..],
                "unexpected argument",
            ),
            (
                &["-install", "-region", "r", "-override"][..],
                "go with -register",
            ),
            (&["-install=maybe", "-region", "r"][..], "invalid boolean"),
        ] {
            let e = tool_flags(&args(bad)).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        // Errors never quote the code.
        let e = tool_flags(&args(&["-activation-code", "SECRETCODE0123456789", "-x"])).unwrap_err();
        assert!(!e.contains("SECRETCODE"), "{e}");
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert!(public_key().len() >= 392);
    }
}
