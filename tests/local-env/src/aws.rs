//! The AWS side of the tests and the demo: moto's server (IAM, EC2, STS) and the project's
//! OpsWorks- and Systems Manager-compatible endpoint (which serves the SSM setup tool stand-in),
//! on loopback, started once per test binary (or by the demo); SDK
//! clients for setup and checks; and the environment that points a controller process at them (the standard
//! `AWS_ENDPOINT_URL_<SERVICE>` settings, nothing test-only in the controller).
//!
//! [`AwsEnv::faulty`] also puts the recording, fault-injecting proxy
//! ([`opsworks_endpoint::proxy`]) between the controller and moto, so that IAM and EC2 can be
//! throttled and failed like OpsWorks, and every call of the controller counted. The proxy tells
//! the OpsWorks endpoint the access keys the controller makes through it, so that the endpoint
//! verifies the agent's signature without reading all of moto's state
//! ([`opsworks_endpoint::keys`]).

use std::sync::OnceLock;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceType, ResourceType, Tag, TagSpecification,
};
use opsworks_endpoint::moto::{MotoOptions, MotoServer};
use opsworks_endpoint::ssm_standin::SsmStandIn;
use opsworks_endpoint::{
    CallSummary, Config, Endpoint, EndpointHandle, Faults, Proxy, ProxyConfig, ProxyHandle,
};

/// The region the tests use.
pub const REGION: &str = "us-east-1";
/// Credentials the controller and the tests' own clients use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// The environment variable that gives the controller the SSM setup tool's URL template
/// (`{platform}` and `{arch}` placeholders).
pub const SSM_SETUP_URL_ENV: &str = "REGISTRAR_SSM_SETUP_URL";

/// The AWS managed policy the SSM service role of hybrid activations has attached.
pub const SSM_MANAGED_INSTANCE_CORE: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";

/// moto and the OpsWorks endpoint.
pub struct AwsEnv {
    /// moto's server (IAM, EC2, STS).
    pub moto: MotoServer,
    /// The OpsWorks- and Systems Manager-compatible endpoint (one server, one URL).
    pub opsworks: EndpointHandle,
    /// The proxy in front of moto that the controller's IAM, EC2 and STS calls go through (only
    /// in [`AwsEnv::faulty`]; the tests' own clients always go straight to moto).
    pub proxy: Option<ProxyHandle>,
    /// The credentials of the tests' own clients and of [`AwsEnv::controller_env`]: the static
    /// ones, or in [`AwsEnv::enforcing_iam`] an administrator's moto IAM user's.
    credentials: (String, String),
}

impl AwsEnv {
    /// The environment of this test binary, with the AWS managed registration policy present in
    /// moto (so attaching it works, as it did on AWS).
    pub fn shared() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(|| start(true))
    }

    /// A second environment whose moto lacks the managed policy (as moto's own list does), so
    /// the controller falls back to the inline policy, as the CLI does when attaching is denied.
    pub fn without_managed_policy() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(|| start(false))
    }

    /// An environment of its own, for a test that injects faults and must not slow the others.
    pub fn isolated() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(|| start(true))
    }

    /// An environment of its own whose controller calls to IAM, EC2 and STS go through the
    /// recording, fault-injecting proxy; faults are set on the proxy and the OpsWorks endpoint
    /// together with [`AwsEnv::set_faults`], and their calls read with
    /// [`AwsEnv::call_summary`].
    pub fn faulty() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(start_with_proxy)
    }

    /// Another environment like [`AwsEnv::faulty`], for a test whose faults (calls held
    /// without an answer: [`Faults::hang`]) must not reach the tests using that one.
    pub fn hanging() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(start_with_proxy)
    }

    /// An environment of its own, with the proxy in front of moto, whose moto authorizes every
    /// IAM, EC2 and STS request against the caller's IAM policies (moto's `INITIAL_NO_AUTH_ACTION_COUNT`, spent once an
    /// administrator user is made), and whose endpoint does the same for OpsWorks and Systems
    /// Manager ([`Config::enforce_iam_policies`]); the proxy also authorizes IAM and EC2 calls
    /// as AWS does where moto does not (tags given to `CreateUser` as `iam:TagUser`). Every key must then be a moto IAM user's:
    /// the tests' own clients and [`AwsEnv::controller_env`] use the administrator's (an inline
    /// `*:*`); a test gives the controller a user of its own.
    pub fn enforcing_iam() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(|| start_enforcing(true))
    }

    /// Another environment like [`AwsEnv::enforcing_iam`] whose moto lacks the managed
    /// registration policy (so the controller falls back to the inline policy).
    pub fn enforcing_iam_without_managed_policy() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(|| start_enforcing(false))
    }

    /// An environment of its own where the policies of moto IAM users are evaluated as AWS
    /// evaluates them, resources and conditions included: by the proxy in front of moto for
    /// IAM and EC2 calls, by the endpoint for OpsWorks and Systems Manager calls (see
    /// `opsworks_endpoint::authorize`). moto itself authorizes nothing (it would judge every
    /// IAM call on the resource `*` and never meet a condition). The tests' own clients use the
    /// static keys, which are judged by nobody; a test gives the controller a user of its own.
    pub fn evaluating_scoped_policies() -> &'static AwsEnv {
        static SHARED: OnceLock<AwsEnv> = OnceLock::new();
        SHARED.get_or_init(start_scoped)
    }

    /// Puts the recording, fault-injecting proxy in front of moto for the controller (what
    /// [`AwsEnv::controller_aws_url`] then gives), with the OpsWorks endpoint's key store, so
    /// that the endpoint knows the access keys made through the proxy at once.
    pub fn start_proxy(&mut self) -> Result<(), String> {
        self.start_proxy_with(false, false)
    }

    /// [`AwsEnv::start_proxy`]; with `fix_iam_error_shape`, the proxy passes moto's IAM errors
    /// on in IAM's shape ([`ProxyConfig::fix_iam_error_shape`]); with `authorize`, it
    /// authorizes IAM and EC2 calls by the callers' IAM policies, resources and conditions
    /// included ([`ProxyConfig::enforce_iam_policies`]).
    fn start_proxy_with(
        &mut self,
        fix_iam_error_shape: bool,
        authorize: bool,
    ) -> Result<(), String> {
        let mut config = ProxyConfig::new(self.moto.url());
        config.key_store = Some(self.opsworks.key_store());
        config.fix_iam_error_shape = fix_iam_error_shape;
        config.enforce_iam_policies = authorize.then(|| self.credentials.clone());
        let proxy = Proxy::start(config).map_err(|e| format!("starting the moto proxy: {e}"))?;
        self.proxy = Some(proxy);
        Ok(())
    }

    /// Where the controller reaches IAM, EC2 and STS: the proxy if there is one, else moto.
    pub fn controller_aws_url(&self) -> &str {
        match &self.proxy {
            Some(p) => p.url(),
            None => self.moto.url(),
        }
    }

    /// Sets `faults` on the proxy (if any) and the OpsWorks endpoint at once; each re-seeds its
    /// generator with `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        if let Some(p) = &self.proxy {
            p.set_faults(faults.clone()).expect("proxy faults");
        }
        self.opsworks.set_faults(faults).expect("endpoint faults");
    }

    /// Forgets the calls recorded by the proxy and the OpsWorks endpoint.
    pub fn clear_calls(&self) {
        if let Some(p) = &self.proxy {
            p.clear_calls();
        }
        self.opsworks.clear_calls();
    }

    /// The calls through the proxy and to the OpsWorks endpoint (service `opsworks`), counted
    /// by service and operation, with the faults injected; `Display` prints a table.
    pub fn call_summary(&self) -> CallSummary {
        let mut summary = CallSummary::of_endpoint(&self.opsworks.calls());
        if let Some(p) = &self.proxy {
            summary.merge(&p.summary());
        }
        summary
    }

    /// Environment variables for a controller process: region, credentials and every endpoint on
    /// loopback (the global `AWS_ENDPOINT_URL` too, so no call can leave the machine), and no
    /// instance metadata look-ups.
    pub fn controller_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", self.credentials.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.credentials.1.clone()),
            ("AWS_ENDPOINT_URL", self.controller_aws_url().into()),
            ("AWS_ENDPOINT_URL_IAM", self.controller_aws_url().into()),
            ("AWS_ENDPOINT_URL_EC2", self.controller_aws_url().into()),
            ("AWS_ENDPOINT_URL_STS", self.controller_aws_url().into()),
            ("AWS_ENDPOINT_URL_OPSWORKS", self.opsworks.url().into()),
            ("AWS_ENDPOINT_URL_SSM", self.opsworks.url().into()),
            (SSM_SETUP_URL_ENV, self.opsworks.ssm_setup_url_template()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
        ]
    }

    fn sdk_config(&self, endpoint: &str) -> SdkConfig {
        sdk_config_as(endpoint, &self.credentials.0, &self.credentials.1)
    }

    /// An OpsWorks client for the tests' own setup and checks.
    pub fn opsworks_client(&self) -> aws_sdk_opsworks::Client {
        aws_sdk_opsworks::Client::new(&self.sdk_config(self.opsworks.url()))
    }
    /// A Systems Manager client (the endpoint) for the tests' own setup and checks.
    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config(self.opsworks.url()))
    }
    /// An IAM client (moto).
    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config(self.moto.url()))
    }
    /// An IAM client signing with the key `access_key_id`/`secret`, reaching IAM the way the
    /// controller does ([`AwsEnv::controller_aws_url`]: through the proxy, if there is one).
    pub fn iam_as(&self, access_key_id: &str, secret: &str) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&sdk_config_as(
            self.controller_aws_url(),
            access_key_id,
            secret,
        ))
    }
    /// An EC2 client (moto).
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk_config(self.moto.url()))
    }

    /// Creates a stack named `name` (in `vpc` if given) and returns its ID.
    pub async fn create_stack(&self, name: &str, vpc: Option<&str>) -> String {
        let out = self
            .opsworks_client()
            .create_stack()
            .name(name)
            .region(REGION)
            .set_vpc_id(vpc.map(str::to_owned))
            .service_role_arn("arn:aws:iam::123456789012:role/aws-opsworks-service-role")
            .default_instance_profile_arn(
                "arn:aws:iam::123456789012:instance-profile/aws-opsworks-ec2-role",
            )
            .send()
            .await
            .expect("CreateStack");
        out.stack_id().unwrap().to_owned()
    }

    /// Creates a VPC and a subnet in it; returns (vpc id, subnet id).
    pub async fn create_vpc(&self, cidr: &str) -> (String, String) {
        let ec2 = self.ec2();
        let vpc = ec2
            .create_vpc()
            .cidr_block(cidr)
            .send()
            .await
            .expect("CreateVpc");
        let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .send()
            .await
            .expect("CreateSubnet");
        (
            vpc_id,
            subnet.subnet().unwrap().subnet_id().unwrap().to_owned(),
        )
    }

    /// Launches an EC2 instance tagged `Name=<name>` (in `subnet` if given); returns
    /// (instance id, private ip, public ip). Panics when moto refuses.
    pub async fn run_instance(
        &self,
        name: &str,
        subnet: Option<&str>,
    ) -> (String, String, Option<String>) {
        self.try_run_instance(name, subnet, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`AwsEnv::run_instance`], with the instance profile `profile` if given, and an error
    /// instead of a panic.
    pub async fn try_run_instance(
        &self,
        name: &str,
        subnet: Option<&str>,
        profile: Option<&str>,
    ) -> Result<(String, String, Option<String>), String> {
        let out = self
            .ec2()
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .set_subnet_id(subnet.map(str::to_owned))
            .set_iam_instance_profile(
                profile.map(|p| IamInstanceProfileSpecification::builder().name(p).build()),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key("Name").value(name).build())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("RunInstances: {e:?}"))?;
        let instance = out
            .instances()
            .first()
            .ok_or("RunInstances returned no instance")?;
        Ok((
            instance.instance_id().unwrap_or_default().to_owned(),
            instance.private_ip_address().unwrap_or_default().to_owned(),
            instance.public_ip_address().map(str::to_owned),
        ))
    }

    /// Creates IAM role `name` (in moto) that Systems Manager may assume (the trust policy of
    /// hybrid activations' service roles, for `ssm.amazonaws.com`), with
    /// `AmazonSSMManagedInstanceCore` attached when moto has that policy; returns its ARN.
    pub async fn create_ssm_service_role(&self, name: &str) -> String {
        let iam = self.iam();
        let trust = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Service": "ssm.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }],
        });
        let role = iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .expect("CreateRole");
        let arn = role.role().map(|r| r.arn().to_owned()).unwrap_or_default();
        match iam
            .attach_role_policy()
            .role_name(name)
            .policy_arn(SSM_MANAGED_INSTANCE_CORE)
            .send()
            .await
        {
            Ok(_) => {}
            // moto loads no AWS managed policies unless asked to.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_no_such_entity_exception()) => {}
            Err(e) => panic!("AttachRolePolicy: {e:?}"),
        }
        arn
    }

    /// Creates IAM instance profile `name` (in moto) holding role `role` if given; returns its
    /// ARN. For [`AwsEnv::try_run_instance`]'s EC2 instances with an instance profile.
    pub async fn create_instance_profile(&self, name: &str, role: Option<&str>) -> String {
        let iam = self.iam();
        let out = iam
            .create_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .expect("CreateInstanceProfile");
        if let Some(role) = role {
            iam.add_role_to_instance_profile()
                .instance_profile_name(name)
                .role_name(role)
                .send()
                .await
                .expect("AddRoleToInstanceProfile");
        }
        out.instance_profile()
            .map(|p| p.arn().to_owned())
            .unwrap_or_default()
    }

    /// The IAM users (name, owner-uid tag) under the OpsWorks path whose name contains `needle`.
    pub async fn iam_users(&self, needle: &str) -> Vec<(String, Option<String>)> {
        let iam = self.iam();
        let users = iam
            .list_users()
            .path_prefix("/AWS/OpsWorks/")
            .send()
            .await
            .expect("ListUsers");
        let mut out = Vec::new();
        for user in users.users() {
            if !user.user_name().contains(needle) {
                continue;
            }
            // Another test may delete the user between the list and this look-up.
            let tags = match iam
                .list_user_tags()
                .user_name(user.user_name())
                .send()
                .await
            {
                Ok(tags) => tags,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_no_such_entity_exception()) =>
                {
                    continue;
                }
                Err(e) => panic!("ListUserTags: {e:?}"),
            };
            let owner = tags
                .tags()
                .iter()
                .find(|t| t.key() == "registrar.dev/owner-uid")
                .map(|t| t.value().to_owned());
            out.push((user.user_name().to_owned(), owner));
        }
        out.sort();
        out
    }

    /// The access key IDs of IAM user `name`.
    pub async fn access_keys(&self, name: &str) -> Vec<String> {
        let out = self
            .iam()
            .list_access_keys()
            .user_name(name)
            .send()
            .await
            .expect("ListAccessKeys");
        out.access_key_metadata()
            .iter()
            .filter_map(|k| k.access_key_id().map(str::to_owned))
            .collect()
    }

    /// The EC2 instances tagged `Name=<name>`.
    pub async fn instances_named(&self, name: &str) -> Vec<String> {
        let out = self
            .ec2()
            .describe_instances()
            .filters(Filter::builder().name("tag:Name").values(name).build())
            .send()
            .await
            .expect("DescribeInstances");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect()
    }
}

/// [`start_env`] authorizing by IAM policies, and the proxy in front of moto.
fn start_enforcing(managed_policy: bool) -> AwsEnv {
    let mut env = start_env(managed_policy, true);
    env.start_proxy_with(true, true)
        .unwrap_or_else(|e| panic!("{e}"));
    env
}

/// An SDK configuration for `endpoint` signing with `access_key_id`/`secret`.
fn sdk_config_as(endpoint: &str, access_key_id: &str, secret: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_iam::config::SharedCredentialsProvider::new(
            aws_sdk_iam::config::Credentials::new(access_key_id, secret, None, None, "tests"),
        ))
        .build()
}

/// [`start`], with the managed policy, the endpoint authorizing by IAM policies, and the proxy
/// in front of moto doing so for IAM and EC2; moto itself authorizes nothing.
fn start_scoped() -> AwsEnv {
    on_own_thread(|| {
        let moto = MotoServer::start_with(MotoOptions {
            opsworks_managed_policy: true,
            env: Vec::new(),
        })?;
        let credentials = (ACCESS_KEY_ID.to_owned(), SECRET_ACCESS_KEY.to_owned());
        let mut config = Config::with_moto(moto.url());
        config.known_credentials.push(credentials.clone());
        config.moto_credentials = credentials.clone();
        config.enforce_iam_policies = true;
        config.ssm_standin = Some(SsmStandIn::built());
        let opsworks = Endpoint::start(config)?;
        let mut env = AwsEnv {
            moto,
            opsworks,
            proxy: None,
            credentials,
        };
        env.start_proxy_with(false, true)?;
        Ok(env)
    })
}

/// Runs `start` (which starts moto and the endpoint) on a thread that lives as long as the
/// process, so that the processes' parent-death signal fires only when the process exits.
/// Panics when they do not start.
fn on_own_thread(start: impl FnOnce() -> Result<AwsEnv, String> + Send + 'static) -> AwsEnv {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("aws-endpoints".into())
        .spawn(move || {
            tx.send(start()).unwrap();
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("starting moto and the OpsWorks endpoint: {e}"))
}

/// [`start`], with the managed policy, and the proxy in front of moto.
fn start_with_proxy() -> AwsEnv {
    let mut env = start(true);
    env.start_proxy().unwrap_or_else(|e| panic!("{e}"));
    env
}

/// Starts moto (with the AWS managed registration policy present when `managed_policy`) and the
/// endpoint, from a thread that lives as long as the process, so that the processes'
/// parent-death signal fires only when the process exits. Panics when they do not start.
pub fn start(managed_policy: bool) -> AwsEnv {
    start_env(managed_policy, false)
}

/// [`start`]; with `enforce_iam`, as [`AwsEnv::enforcing_iam`] describes.
fn start_env(managed_policy: bool, enforce_iam: bool) -> AwsEnv {
    on_own_thread(move || {
        let mut env = Vec::new();
        if enforce_iam {
            // Unauthorized until the administrator is made (then reset to 0 below).
            env.push(("INITIAL_NO_AUTH_ACTION_COUNT".into(), "1000000".into()));
        }
        let moto = MotoServer::start_with(MotoOptions {
            opsworks_managed_policy: managed_policy,
            env,
        })?;
        let credentials = match enforce_iam {
            false => (ACCESS_KEY_ID.to_owned(), SECRET_ACCESS_KEY.to_owned()),
            true => make_administrator(moto.url())?,
        };
        let mut config = Config::with_moto(moto.url());
        config.known_credentials.push(credentials.clone());
        if enforce_iam {
            config.moto_credentials = credentials.clone();
            config.enforce_iam_policies = true;
        }
        // The SSM setup tool that REGISTRAR_SSM_SETUP_URL points at.
        config.ssm_standin = Some(SsmStandIn::built());
        let opsworks = Endpoint::start(config)?;
        Ok(AwsEnv {
            moto,
            opsworks,
            proxy: None,
            credentials,
        })
    })
}

/// Makes IAM user `registrar-tests-admin` (an inline policy allowing everything) and its access
/// key in moto while moto still answers unauthorized requests, then makes moto authorize every
/// request from now on (`/moto-api/reset-auth` to 0). Returns the key.
fn make_administrator(moto_url: &str) -> Result<(String, String), String> {
    const ADMIN: &str = "registrar-tests-admin";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    runtime.block_on(async {
        let config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(moto_url)
            .credentials_provider(aws_sdk_iam::config::SharedCredentialsProvider::new(
                aws_sdk_iam::config::Credentials::new(
                    ACCESS_KEY_ID,
                    SECRET_ACCESS_KEY,
                    None,
                    None,
                    "tests",
                ),
            ))
            .build();
        let iam = aws_sdk_iam::Client::new(&config);
        let everything = serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]});
        iam.create_user()
            .user_name(ADMIN)
            .send()
            .await
            .map_err(|e| format!("CreateUser {ADMIN}: {e:?}"))?;
        iam.put_user_policy()
            .user_name(ADMIN)
            .policy_name("everything")
            .policy_document(everything.to_string())
            .send()
            .await
            .map_err(|e| format!("PutUserPolicy {ADMIN}: {e:?}"))?;
        let key = iam
            .create_access_key()
            .user_name(ADMIN)
            .send()
            .await
            .map_err(|e| format!("CreateAccessKey {ADMIN}: {e:?}"))?;
        let key = key.access_key().ok_or("CreateAccessKey: no key")?;
        moto_api_post(moto_url, "/moto-api/reset-auth", "0")?;
        Ok((
            key.access_key_id().to_owned(),
            key.secret_access_key().to_owned(),
        ))
    })
}

/// POSTs `body` to moto's `path` (its `/moto-api/`, which is never authorized).
fn moto_api_post(moto_url: &str, path: &str, body: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let addr = moto_url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("moto {addr}: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("moto {path}: {e}"))?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    match answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
        true => Ok(()),
        false => Err(format!("moto {path}: {answer}")),
    }
}
