//! The secrets of IAM access keys: told to the endpoint by the proxy in front of moto when the
//! keys are made through it, so that verifying a signature made with one never reads all of
//! moto's state; read from moto's state (`/moto-api/data.json`) only for keys made otherwise.

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::error::ProvideErrorMetadata;
use opsworks_endpoint::proxy::{Proxy, ProxyConfig, ProxyHandle};
use opsworks_endpoint::{Authorization, EndpointHandle, SignatureCheck};

use crate::common::*;

const MANAGED: &str = "arn:aws:iam::aws:policy/AWSOpsWorksInstanceRegistration";

/// A proxy in front of the shared moto that tells `ep` the keys made through it.
fn proxy_for(ep: &EndpointHandle) -> ProxyHandle {
    let mut config = ProxyConfig::new(moto().url());
    config.key_store = Some(ep.key_store());
    Proxy::start(config).unwrap_or_else(|e| panic!("cannot start the proxy: {e}"))
}

/// Registers an on-premises host of `stack` signing with `key`/`secret`, as the agent does.
async fn register(ep: &EndpointHandle, key: &str, secret: &str, stack: &str) -> String {
    opsworks_with(ep.url(), key, secret, RetryConfig::disabled())
        .register_instance()
        .stack_id(stack)
        .hostname(unique("host"))
        .private_ip("10.0.0.5")
        .send()
        .await
        .unwrap_or_else(|e| panic!("RegisterInstance: {:?}", e.into_service_error()))
        .instance_id
        .expect("InstanceId")
}

/// The signature check and authorization of the last call.
fn last_check(ep: &EndpointHandle) -> (SignatureCheck, Option<Authorization>) {
    let call = ep.calls().pop().expect("a call");
    (call.signature, call.authorization)
}

/// `GET /_endpoint/moto-state-reads`.
fn reads_route(ep: &EndpointHandle) -> u64 {
    let (status, body) = http(ep.url(), "GET", "/_endpoint/moto-state-reads", &[], b"");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    v["reads"].as_u64().expect("reads")
}

#[tokio::test]
async fn a_key_made_through_the_proxy_is_verified_without_reading_motos_state() {
    let ep = endpoint();
    let proxy = proxy_for(&ep);
    let store = ep.key_store();
    assert!(store.is_empty());
    let (stack, _) = create_stack(&opsworks(ep.url()), None).await;

    // The controller's way: user, key and policy through the proxy.
    let iam = iam_at(proxy.url());
    let (user, key, secret) = user_with_key(&iam).await;
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn(MANAGED)
        .send()
        .await
        .expect("AttachUserPolicy");
    // The answer reached the SDK intact, and its key the store before it.
    assert_eq!(store.secret(&key).as_deref(), Some(secret.as_str()));
    assert_eq!(store.len(), 1);

    // The agent's way: RegisterInstance signed with that key, verified and authorized.
    register(&ep, &key, &secret, &stack).await;
    assert_eq!(
        last_check(&ep),
        (
            SignatureCheck::Verified,
            Some(Authorization::ManagedPolicy {
                user: user.clone(),
                policy_arn: MANAGED.into(),
                group: None
            })
        )
    );
    // The secret is really checked: a wrong one is refused.
    let err = opsworks_with(ep.url(), &key, "not-the-secret", RetryConfig::disabled())
        .describe_stacks()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidSignatureException")
    );
    assert_eq!(last_check(&ep).0, SignatureCheck::Mismatch);
    assert_eq!(ep.moto_state_reads(), 0, "moto's state was read");
    assert_eq!(reads_route(&ep), 0);

    // A CreateAccessKey that fails teaches nothing.
    let err = iam
        .create_access_key()
        .user_name(unique("nobody"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("NoSuchEntity"));
    assert_eq!(store.len(), 1);

    // The secret is in no record of the proxy's, nor in its summary.
    let records = serde_json::to_string(&proxy.calls()).unwrap();
    assert!(records.contains("CreateAccessKey"), "{records}");
    assert!(!records.contains(&secret), "{records}");
    let (status, body) = http(proxy.url(), "GET", "/_proxy/calls", &[], b"");
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains(&secret));
    assert!(!proxy.summary().to_string().contains(&secret));
    assert!(!format!("{store:?}").contains(&secret));
}

#[tokio::test]
async fn a_key_made_straight_against_moto_is_read_from_motos_state_once() {
    let ep = endpoint();
    // A proxy with the endpoint's store, which the key does not go through.
    let _proxy = proxy_for(&ep);
    let (stack, _) = create_stack(&opsworks(ep.url()), None).await;
    let iam = iam();
    let (user, key, secret) = user_with_key(&iam).await;
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn(MANAGED)
        .send()
        .await
        .expect("AttachUserPolicy");
    assert!(!ep.key_store().contains(&key));

    register(&ep, &key, &secret, &stack).await;
    assert_eq!(last_check(&ep).0, SignatureCheck::Verified);
    assert_eq!(ep.moto_state_reads(), 1);
    assert_eq!(reads_route(&ep), 1);
    // Kept: the next call reads nothing more.
    assert_eq!(
        ep.key_store().secret(&key).as_deref(),
        Some(secret.as_str())
    );
    register(&ep, &key, &secret, &stack).await;
    assert_eq!(last_check(&ep).0, SignatureCheck::Verified);
    assert_eq!(ep.moto_state_reads(), 1);
}

#[tokio::test]
async fn endpoint_and_proxy_can_share_a_store_given_to_both() {
    // As the `opsworks-endpoint` program wires them: the proxy may start first.
    let store = opsworks_endpoint::KeyStore::new();
    let mut config = ProxyConfig::new(moto().url());
    config.key_store = Some(store.clone());
    let proxy = Proxy::start(config).expect("proxy");
    let ep = endpoint_with(|c| c.key_store = Some(store.clone()));
    let (_, key, secret) = user_with_key(&iam_at(proxy.url())).await;
    assert!(ep.key_store().contains(&key));
    opsworks_with(ep.url(), &key, &secret, RetryConfig::disabled())
        .describe_stacks()
        .send()
        .await
        .expect("DescribeStacks");
    assert_eq!(last_check(&ep).0, SignatureCheck::Verified);
    assert_eq!(ep.moto_state_reads(), 0);
}
