//! `opsworks-agent-standin`: the program the agent installer stand-in's `boot-registration`
//! runs. Reads `preconfig`, checks how it was started, and registers the host with OpsWorks
//! `RegisterInstance` at the (loopback) endpoint it is given; see the `opsworks_endpoint::standin`
//! module for the host directory and the whole contract.
//!
//! ```text
//! opsworks-agent-standin --endpoint http://127.0.0.1:4580 --installer-dir DIR [--run-seconds 2]
//!     [--host-dir /run/registrar-test-host]
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::config::timeout::TimeoutConfig;
use aws_sdk_opsworks::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_opsworks::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_opsworks::types::InstanceIdentity;
use clap::Parser;
use opsworks_endpoint::standin::{self, Preconfig, host_files};
use serde_json::Value;

/// The OpsWorks agent installer stand-in (tests only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The OpsWorks-compatible endpoint's URL; a loopback address only.
    #[arg(long)]
    endpoint: String,
    /// The unpacked installer directory, holding `preconfig`.
    #[arg(long)]
    installer_dir: PathBuf,
    /// Seconds to spend "installing" before registering.
    #[arg(long, default_value_t = 0.0)]
    run_seconds: f64,
    /// The host directory (the host's identity; where the run is recorded).
    #[arg(long, default_value = standin::HOST_DIR)]
    host_dir: PathBuf,
    /// Where a run that registered writes the agent's init script (none without it, or when
    /// the directory does not exist). Given again, the last one counts.
    #[arg(long, overrides_with = "init_dir")]
    init_dir: Option<PathBuf>,
    /// The user ID the run must have (sudo gives 0). Only for tests of the stand-in itself
    /// run by other users; boot-registration never passes it.
    #[arg(long, default_value_t = 0, hide = true)]
    expect_uid: u32,
}

/// Why a run failed: the log's `reason` and the message printed.
struct Failure {
    reason: String,
    message: String,
}

fn fail(reason: &str, message: impl Into<String>) -> Failure {
    Failure {
        reason: reason.to_owned(),
        message: message.into(),
    }
}

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
    let args = Args::parse();
    std::process::exit(run(&args));
}

/// Writes the agent's init script in `dir`: it logs each action in the host directory.
fn write_init_script(dir: &std::path::Path, host_dir: &std::path::Path) -> Result<(), Failure> {
    let log = host_dir.join(host_files::SERVICE_LOG);
    let script = format!(
        "#!/bin/sh\n\
         # opsworks-agent: the OpsWorks agent stand-in's init script (tests of instance-registrar).\n\
         case \"$1\" in\n\
         start|stop|restart|status) echo \"$1 uid=$(id -u)\" >>{} ;;\n\
         *) echo \"usage: $0 {{start|stop|restart|status}}\" >&2; exit 2 ;;\n\
         esac\n",
        standin::shell_quote(&log.to_string_lossy())
    );
    let path = dir.join(host_files::INIT_SCRIPT);
    std::fs::write(&path, script)
        .and_then(|()| {
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        })
        .map_err(|e| {
            fail(
                "init-script",
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

fn run(args: &Args) -> i32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if !args.host_dir.is_dir() {
        eprintln!(
            "boot-registration: the host directory {} does not exist",
            args.host_dir.display()
        );
        return 1;
    }
    let result = attempt(args, uid).and_then(|id| {
        if let Some(dir) = args.init_dir.as_ref().filter(|d| d.is_dir()) {
            write_init_script(dir, &args.host_dir)?;
        }
        Ok(id)
    });
    let line = match &result {
        Ok(id) => format!("run uid={uid} result=registered instance={id}\n"),
        Err(f) => format!("run uid={uid} result=failed reason={}\n", f.reason),
    };
    let log = args.host_dir.join(host_files::LOG);
    let logged = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = logged {
        eprintln!("boot-registration: cannot append to {}: {e}", log.display());
    }
    match result {
        Ok(id) => {
            println!("Instance ID: {id}");
            0
        }
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            host_file(&args.host_dir, host_files::INSTALLER_EXIT_STATUS)
                .and_then(|s| s.parse::<u8>().ok())
                .filter(|&s| s != 0)
                .map_or(1, i32::from)
        }
    }
}

/// A string member of `preconfig`, if present; any other type is an error.
fn string(p: &Preconfig, key: &str) -> Result<Option<String>, Failure> {
    match p.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(fail(
            "bad-preconfig",
            format!("boot-registration: preconfig's {key} is not a string"),
        )),
    }
}

/// A one-line file of the host directory, trimmed; `None` when missing or empty.
fn host_file(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether `url` is `http://<loopback address or localhost>[:port][/...]`.
fn loopback_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

fn attempt(args: &Args, uid: u32) -> Result<String, Failure> {
    let say = |line: &str| println!("[opsworks-agent-installer] {line}");

    // preconfig, recorded for tests with the secret hashed.
    let path = args.installer_dir.join(standin::PRECONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        fail(
            "bad-preconfig",
            format!("boot-registration: cannot read {}: {e}", path.display()),
        )
    })?;
    let preconfig = standin::parse_preconfig(&text)
        .map_err(|e| fail("bad-preconfig", format!("boot-registration: {e}")))?;
    let received = args.host_dir.join(host_files::PRECONFIG_RECEIVED);
    let json = serde_json::to_string_pretty(&standin::redacted(&preconfig)).unwrap_or_default();
    std::fs::write(&received, format!("{json}\n")).map_err(|e| {
        fail(
            "host-dir",
            format!(
                "boot-registration: cannot write {}: {e}",
                received.display()
            ),
        )
    })?;

    // How it was started.
    if uid != args.expect_uid {
        return Err(fail(
            "not-root",
            format!(
                "boot-registration: must run as root (uid {}), but runs as uid {uid}: run it \
                 with sudo",
                args.expect_uid
            ),
        ));
    }
    let want_bucket = string(&preconfig, "assets_download_bucket")?.ok_or_else(|| {
        fail(
            "bad-preconfig",
            "boot-registration: preconfig has no assets_download_bucket",
        )
    })?;
    match std::env::var(standin::BUCKET_ENV) {
        Ok(b) if b == want_bucket => {}
        Ok(b) => {
            return Err(fail(
                "bucket-mismatch",
                format!(
                    "boot-registration: {} is {b:?}, but preconfig's assets_download_bucket \
                     is {want_bucket:?}",
                    standin::BUCKET_ENV
                ),
            ));
        }
        Err(_) => {
            return Err(fail(
                "bucket-mismatch",
                format!(
                    "boot-registration: {} is not set (preconfig's assets_download_bucket is \
                     {want_bucket:?})",
                    standin::BUCKET_ENV
                ),
            ));
        }
    }
    if !loopback_url(&args.endpoint) {
        return Err(fail(
            "bad-endpoint",
            format!(
                "boot-registration: the endpoint {:?} is not a loopback URL; the stand-in \
                 talks to nothing else",
                args.endpoint
            ),
        ));
    }

    // What to register.
    let stack_id = string(&preconfig, "stack_id")?.ok_or_else(|| {
        fail(
            "bad-preconfig",
            "boot-registration: preconfig has no stack_id",
        )
    })?;
    let import = match preconfig.get("import") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(fail(
                "bad-preconfig",
                "boot-registration: preconfig's import is not true or false",
            ));
        }
    };
    let credentials = match (
        string(&preconfig, "access_key_id")?,
        string(&preconfig, "secret_access_key")?,
    ) {
        (Some(id), Some(secret)) => Some((id, secret)),
        (None, None) => None,
        _ => {
            return Err(fail(
                "bad-preconfig",
                "boot-registration: preconfig has one of access_key_id and secret_access_key \
                 without the other",
            ));
        }
    };
    let hostname = match string(&preconfig, "hostname")? {
        Some(h) => h,
        None => host_file(&args.host_dir, host_files::HOSTNAME).ok_or_else(|| {
            fail(
                "no-hostname",
                format!(
                    "boot-registration: preconfig has no hostname and {} has no {} file",
                    args.host_dir.display(),
                    host_files::HOSTNAME
                ),
            )
        })?,
    };
    let private_ip = match string(&preconfig, "private_ip")? {
        Some(ip) => Some(ip),
        None => host_file(&args.host_dir, host_files::LOCAL_IPV4),
    };
    let public_ip = match string(&preconfig, "public_ip")? {
        Some(ip) => Some(ip),
        None => host_file(&args.host_dir, host_files::PUBLIC_IPV4),
    };
    let identity = if import {
        let path = args.host_dir.join(host_files::IDENTITY_DOCUMENT);
        let doc = std::fs::read_to_string(&path).map_err(|e| {
            fail(
                "no-identity-document",
                format!(
                    "boot-registration: preconfig says import (an EC2 instance), but the \
                     instance identity document {} cannot be read: {e}",
                    path.display()
                ),
            )
        })?;
        let parsed: Value = serde_json::from_str(&doc)
            .ok()
            .filter(|v: &Value| v.get("instanceId").and_then(Value::as_str).is_some())
            .ok_or_else(|| {
                fail(
                    "bad-identity-document",
                    format!(
                        "boot-registration: {} is not a JSON object with an instanceId",
                        path.display()
                    ),
                )
            })?;
        Some((doc, parsed))
    } else {
        None
    };
    let region = identity
        .as_ref()
        .and_then(|(_, v)| v.get("region").and_then(Value::as_str).map(str::to_owned))
        .or(string(&preconfig, "instance_service_region")?)
        .unwrap_or_else(|| "us-east-1".to_owned());

    say(&format!(
        "OpsWorks agent installer (stand-in): registering with stack {stack_id}"
    ));
    let mut host = format!("host {hostname}");
    if let Some(ip) = &private_ip {
        let _ = write!(host, ", private IP {ip}");
    }
    if let Some(ip) = &public_ip {
        let _ = write!(host, ", public IP {ip}");
    }
    match &identity {
        Some((_, v)) => {
            let _ = write!(
                host,
                ", EC2 instance {} in {region}",
                v["instanceId"].as_str().unwrap_or("")
            );
        }
        None => host.push_str(", on-premises"),
    }
    say(&host);
    let (key, secret) = match credentials {
        Some((id, secret)) => {
            say(&format!("credentials: IAM access key {id}"));
            (id, secret)
        }
        None => {
            say("credentials: the EC2 instance profile");
            (
                standin::INSTANCE_PROFILE_ACCESS_KEY_ID.to_owned(),
                standin::INSTANCE_PROFILE_SECRET_ACCESS_KEY.to_owned(),
            )
        }
    };
    let run_time = if args.run_seconds.is_finite() && args.run_seconds > 0.0 {
        Duration::from_secs_f64(args.run_seconds.min(1e6))
    } else {
        Duration::ZERO
    };
    say(&format!(
        "installing the OpsWorks agent (takes {} s)",
        run_time.as_secs_f64()
    ));
    std::thread::sleep(run_time);
    if let Ok(failure) = std::fs::read_to_string(args.host_dir.join(host_files::INSTALLER_FAILURE))
    {
        return Err(fail("installer-failure", failure));
    }
    say("agent installed");
    say(&format!("calling RegisterInstance at {}", args.endpoint));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                "request-failed",
                format!("boot-registration: cannot start a runtime: {e}"),
            )
        })?;
    rt.block_on(async {
        // Explicit configuration: these credentials, this region, this endpoint; no default
        // provider chain, no instance metadata service.
        let conf = aws_sdk_opsworks::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(Credentials::new(
                key,
                secret,
                None,
                None,
                "opsworks-agent-standin",
            ))
            .endpoint_url(&args.endpoint)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        let client = aws_sdk_opsworks::Client::from_conf(conf);
        let mut req = client
            .register_instance()
            .stack_id(stack_id)
            .hostname(hostname)
            .set_private_ip(private_ip)
            .set_public_ip(public_ip);
        if let Some((doc, _)) = identity {
            req = req.instance_identity(
                InstanceIdentity::builder()
                    .document(doc)
                    .signature(standin::IDENTITY_SIGNATURE)
                    .build(),
            );
        }
        match req.send().await {
            Ok(out) => out.instance_id.filter(|id| !id.is_empty()).ok_or_else(|| {
                fail(
                    "request-failed",
                    "boot-registration: RegisterInstance answered without an InstanceId",
                )
            }),
            Err(SdkError::ServiceError(e)) => {
                let e = e.into_err();
                let code = e.code().unwrap_or("Unknown").to_owned();
                Err(Failure {
                    reason: format!("api-error code={code}"),
                    message: format!(
                        "boot-registration: RegisterInstance failed: {code}: {}",
                        e.message().unwrap_or("")
                    ),
                })
            }
            Err(e) => Err(fail(
                "request-failed",
                format!(
                    "boot-registration: RegisterInstance failed: {}",
                    DisplayErrorContext(&e)
                ),
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::loopback_url;

    #[test]
    fn only_loopback_endpoints() {
        for ok in [
            "http://127.0.0.1:4580",
            "http://127.0.0.5:1/",
            "http://localhost:80",
            "http://[::1]:8080/x",
            "http://0.0.0.0:1",
        ] {
            assert!(loopback_url(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:4580",
            "http://opsworks.us-east-1.amazonaws.com",
            "http://127.0.0.1.example.com",
            "http://user@127.0.0.1:1",
            "ftp://127.0.0.1",
            "127.0.0.1:4580",
        ] {
            assert!(!loopback_url(bad), "{bad}");
        }
    }
}
