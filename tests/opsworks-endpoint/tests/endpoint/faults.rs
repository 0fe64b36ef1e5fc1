//! Injected latency, throttling and server faults, as the SDK meets them.

use std::time::{Duration, Instant};

use aws_sdk_opsworks::config::retry::RetryConfig;
use aws_sdk_opsworks::error::ProvideErrorMetadata;
use opsworks_endpoint::{Faults, InjectedFault};

use crate::common::*;

#[tokio::test]
async fn full_throttling_reaches_a_client_without_retries() {
    let ep = endpoint_with(|c| c.faults = Faults::throttling(1.0));
    let err = opsworks(ep.url())
        .describe_stacks()
        .send()
        .await
        .unwrap_err();
    let raw_status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(raw_status, Some(400));
    assert_eq!(err.into_service_error().code(), Some("ThrottlingException"));
    let calls = ep.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].injected, Some(InjectedFault::Throttling));
    assert_eq!(calls[0].error_code.as_deref(), Some("ThrottlingException"));
    assert_eq!(calls[0].status, 400);
}

#[tokio::test]
async fn retries_get_through_partial_throttling() {
    let ep = endpoint_with(|c| {
        c.faults = Faults {
            throttle_rate: 0.3,
            seed: 42,
            ..Faults::default()
        }
    });
    let retry = RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(20));
    let client = opsworks_with(ep.url(), ADMIN_KEY, ADMIN_SECRET, retry);
    let started = Instant::now();
    for _ in 0..15 {
        client
            .describe_stacks()
            .send()
            .await
            .expect("eventually succeeds");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let calls = ep.calls();
    let throttled = calls
        .iter()
        .filter(|c| c.error_code.as_deref() == Some("ThrottlingException"))
        .count();
    let ok = calls.iter().filter(|c| c.status == 200).count();
    assert_eq!(ok, 15);
    assert!(throttled > 0, "no call was throttled");
    assert!(
        calls
            .iter()
            .filter(|c| c.status != 200)
            .all(|c| c.injected == Some(InjectedFault::Throttling) && c.status == 400)
    );
}

#[tokio::test]
async fn server_faults_and_latency() {
    let ep = endpoint_with(|c| {
        c.faults = Faults {
            internal_error_rate: 1.0,
            ..Faults::default()
        }
    });
    let client = opsworks(ep.url());
    let err = client.describe_stacks().send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert_eq!(err.into_service_error().code(), Some("InternalFailure"));
    ep.set_faults(Faults {
        unavailable_rate: 1.0,
        ..Faults::default()
    })
    .unwrap();
    let err = client.describe_stacks().send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(err.into_service_error().code(), Some("ServiceUnavailable"));

    ep.set_faults(Faults {
        latency_ms: 150,
        spike_rate: 1.0,
        spike_latency_ms: 100,
        ..Faults::default()
    })
    .unwrap();
    let started = Instant::now();
    client.describe_stacks().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let last = ep.calls().pop().unwrap();
    assert!(last.latency_spike);
    assert!(last.duration >= Duration::from_millis(250));

    // Only some actions.
    ep.set_faults(Faults {
        throttle_rate: 1.0,
        only_actions: vec!["DescribeInstances".into()],
        ..Faults::default()
    })
    .unwrap();
    client.describe_stacks().send().await.unwrap();
    let err = client
        .describe_instances()
        .stack_id("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("ThrottlingException"));
    assert!(ep.set_faults(Faults::throttling(2.0)).is_err());
}

#[tokio::test]
async fn faults_are_deterministic_and_controllable_over_http() {
    let pattern = |seed: u64| async move {
        let ep = endpoint();
        let body = format!(r#"{{"throttle_rate": 0.5, "seed": {seed}}}"#);
        let (status, _) = http(ep.url(), "PUT", "/_endpoint/faults", &[], body.as_bytes());
        assert_eq!(status, 200);
        let (_, got) = http(ep.url(), "GET", "/_endpoint/faults", &[], b"");
        let got: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(got["throttle_rate"], 0.5);
        let client = opsworks(ep.url());
        for _ in 0..20 {
            let _ = client.describe_stacks().send().await;
        }
        let (status, calls) = http(ep.url(), "GET", "/_endpoint/calls", &[], b"");
        assert_eq!(status, 200);
        let calls: serde_json::Value = serde_json::from_slice(&calls).unwrap();
        let pattern: Vec<bool> = calls
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["error_code"] == "ThrottlingException")
            .collect();
        assert_eq!(pattern.len(), 20);
        let (status, _) = http(ep.url(), "DELETE", "/_endpoint/calls", &[], b"");
        assert_eq!(status, 204);
        assert!(ep.calls().is_empty());
        let (status, _) = http(
            ep.url(),
            "PUT",
            "/_endpoint/faults",
            &[],
            br#"{"throttle_rate": 7}"#,
        );
        assert_eq!(status, 400);
        pattern
    };
    let a = pattern(9).await;
    assert_eq!(a, pattern(9).await);
    assert!(a.iter().any(|x| *x) && a.iter().any(|x| !*x), "{a:?}");
    assert_ne!(a, pattern(10).await);
}
