//! `opsworks-endpoint`: serves the OpsWorks-compatible endpoint for the local demo.
//!
//! Prints the endpoint's URL (and moto's, with `--start-moto`) on standard output, logs calls on
//! standard error, and runs until interrupted. Test controls are under `/_endpoint/` (see the
//! library docs); they are not fault-injected.
//!
//! ```text
//! opsworks-endpoint --start-moto --registration-delay 2 --agent-installer installer.tgz
//! opsworks-endpoint --start-moto --agent-standin target/debug/opsworks-agent-standin
//! opsworks-endpoint --listen 127.0.0.1:4580 --moto-url http://127.0.0.1:5000 --throttle-rate 0.1
//! opsworks-endpoint --start-moto --moto-proxy-listen 127.0.0.1:4581 --throttle-rate 0.3 --seed 7
//! ```
//!
//! With `--moto-proxy-listen`, it also serves a recording, fault-injecting proxy in front of moto
//! (printed as `moto proxy: <url>`; point `AWS_ENDPOINT_URL_IAM`, `_EC2` and `_STS` at it). The
//! fault flags apply to the proxy too; its controls are under `/_proxy/` (see the library's
//! `proxy` module). The proxy tells the endpoint the access keys made through it, so that it
//! verifies their signatures without reading all of moto's state (see the library's `keys`
//! module).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use opsworks_endpoint::moto::{MotoOptions, MotoServer};
use opsworks_endpoint::proxy::{Proxy, ProxyConfig};
use opsworks_endpoint::{AgentInstaller, Config, Endpoint, Faults, KeyStore, StandIn};

/// An OpsWorks-compatible endpoint (API 2013-02-18) for local use and tests.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// moto server URL used for both IAM and EC2.
    #[arg(long, env = "MOTO_URL", conflicts_with = "start_moto")]
    moto_url: Option<String>,
    /// IAM endpoint URL (overrides --moto-url for IAM).
    #[arg(long)]
    iam_url: Option<String>,
    /// EC2 endpoint URL (overrides --moto-url for EC2).
    #[arg(long)]
    ec2_url: Option<String>,
    /// Start moto's server (from tests/setup.sh's venv or $MOTO_SERVER) and use it.
    #[arg(long)]
    start_moto: bool,
    /// With --start-moto: make the AWSOpsWorksInstanceRegistration managed policy exist.
    #[arg(long, requires = "start_moto")]
    opsworks_managed_policy: bool,
    /// Seconds a registered instance stays `registering`.
    #[arg(long, default_value_t = 2.0)]
    registration_delay: f64,
    /// Agent installer tarball to serve (read at each download).
    #[arg(long)]
    agent_installer: Option<PathBuf>,
    /// Serve the agent installer stand-in, whose boot-registration runs this
    /// opsworks-agent-standin program (e.g. target/debug/opsworks-agent-standin).
    #[arg(long, value_name = "PROGRAM", conflicts_with = "agent_installer")]
    agent_standin: Option<PathBuf>,
    /// Seconds the stand-in's boot-registration takes before it registers.
    #[arg(long, default_value_t = 0.0, requires = "agent_standin")]
    agent_standin_run_seconds: f64,
    /// Extra provisioning parameter KEY=VALUE (repeatable).
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    parameters: Vec<String>,
    /// Refuse access keys that neither moto's IAM nor --credentials knows.
    #[arg(long)]
    reject_unknown_keys: bool,
    /// Static credentials whose signatures are verified, ACCESS_KEY_ID:SECRET (repeatable).
    #[arg(long = "credentials", value_name = "ID:SECRET")]
    credentials: Vec<String>,
    /// Latency added to every API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Rate of latency spikes (0..1).
    #[arg(long, default_value_t = 0.0)]
    spike_rate: f64,
    /// Extra latency of a spike, in milliseconds.
    #[arg(long, default_value_t = 0)]
    spike_latency_ms: u64,
    /// Rate of ThrottlingException answers (0..1).
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Calls per second each action takes before the rest are throttled (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    calls_per_second: f64,
    /// Rate of InternalFailure (500) answers (0..1).
    #[arg(long, default_value_t = 0.0)]
    internal_error_rate: f64,
    /// Rate of ServiceUnavailable (503) answers (0..1).
    #[arg(long, default_value_t = 0.0)]
    unavailable_rate: f64,
    /// Seed of the fault generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the endpoint URL to this file once serving.
    #[arg(long)]
    url_file: Option<PathBuf>,
    /// Also serve a recording, fault-injecting proxy in front of moto (for IAM, EC2 and STS
    /// clients) on this loopback address; the fault flags apply to it too. Needs --moto-url or
    /// --start-moto.
    #[arg(long, value_name = "ADDR")]
    moto_proxy_listen: Option<SocketAddr>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("opsworks-endpoint: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "opsworks_endpoint=info".into()),
        )
        .init();
    let args = Args::parse();
    if !(0.0..1e9).contains(&args.registration_delay) {
        return Err("--registration-delay must be a non-negative number of seconds".into());
    }

    // Started on this (the main) thread's behalf by a keeper thread; lives until exit.
    let moto = if args.start_moto {
        let m = MotoServer::start_with(MotoOptions {
            opsworks_managed_policy: args.opsworks_managed_policy,
            ..MotoOptions::default()
        })?;
        println!("moto: {}", m.url());
        Some(m)
    } else {
        None
    };
    let moto_url = moto.as_ref().map(|m| m.url().to_owned()).or(args.moto_url);

    let mut config = match &moto_url {
        Some(url) => Config::with_moto(url),
        None => Config::default(),
    };
    config.listen = args.listen;
    if let Some(u) = args.iam_url {
        config.iam_endpoint_url = Some(u);
    }
    if let Some(u) = args.ec2_url {
        config.ec2_endpoint_url = Some(u);
    }
    config.registration_delay = Duration::from_secs_f64(args.registration_delay);
    if let Some(p) = args.agent_installer {
        config.agent_installer = AgentInstaller::File(p);
    }
    if let Some(p) = args.agent_standin {
        if !(0.0..1e6).contains(&args.agent_standin_run_seconds) {
            return Err("--agent-standin-run-seconds must be a non-negative number".into());
        }
        let p = std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !p.is_file() {
            return Err(format!("--agent-standin: no program {}", p.display()));
        }
        config.agent_installer = AgentInstaller::StandIn(
            StandIn::new(p).run_time(Duration::from_secs_f64(args.agent_standin_run_seconds)),
        );
    }
    for p in &args.parameters {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--parameter {p:?} is not KEY=VALUE"))?;
        config
            .extra_provisioning_parameters
            .insert(k.to_owned(), v.to_owned());
    }
    for c in &args.credentials {
        let (id, secret) = c
            .split_once(':')
            .ok_or_else(|| "--credentials is ACCESS_KEY_ID:SECRET".to_owned())?;
        config
            .known_credentials
            .push((id.to_owned(), secret.to_owned()));
    }
    config.reject_unknown_access_keys = args.reject_unknown_keys;
    config.faults = Faults {
        latency_ms: args.latency_ms,
        spike_rate: args.spike_rate,
        spike_latency_ms: args.spike_latency_ms,
        throttle_rate: args.throttle_rate,
        calls_per_second: args.calls_per_second,
        internal_error_rate: args.internal_error_rate,
        unavailable_rate: args.unavailable_rate,
        hang_rate: 0.0,
        endless_pages: false,
        only_actions: Vec::new(),
        seed: args.seed,
    };
    if config.iam_endpoint_url.is_none() {
        eprintln!(
            "opsworks-endpoint: no IAM endpoint (--moto-url, --iam-url or --start-moto): \
             RegisterInstance is not authorized against anything"
        );
    }

    let proxy = match args.moto_proxy_listen {
        Some(listen) => {
            let upstream = moto_url
                .as_deref()
                .ok_or("--moto-proxy-listen needs --moto-url or --start-moto")?;
            let mut proxy_config = ProxyConfig::new(upstream);
            proxy_config.listen = listen;
            proxy_config.faults = config.faults.clone();
            // The keys made through the proxy, told to the endpoint.
            let keys = KeyStore::new();
            config.key_store = Some(keys.clone());
            proxy_config.key_store = Some(keys);
            let proxy = Proxy::start(proxy_config)?;
            println!("moto proxy: {}", proxy.url());
            Some(proxy)
        }
        None => None,
    };

    let endpoint = Endpoint::start(config)?;
    println!("{}", endpoint.url());
    if let Some(path) = &args.url_file {
        std::fs::write(path, format!("{}\n", endpoint.url()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, String>(())
    })?;
    endpoint.stop();
    drop(proxy);
    drop(moto);
    Ok(())
}
