//! Hostile SSH key Secrets against the whole process: an encrypted OpenSSH key whose bcrypt
//! rounds were rewritten to 2^32-1 (about a year of one core to decrypt), with its passphrase,
//! named by several objects beside ordinary objects registering real sshd hosts. The ordinary
//! objects must register on time, the crafted ones get a stable reason, and SIGTERM still stops
//! the controller at once.
//!
//! Run: `cargo test --test hostile_keys -- --nocapture`.

mod support;

use std::time::{Duration, Instant};

use instance_registrar::conditions::{reasons, types};
use instance_registrar::resource::InstanceRegistration;
use kube::api::{Api, ListParams};
use support::ssh_hosts::SshHost;
use support::{
    AwsEnv, ControlPlane, ControllerProcess, apply, condition, key_material_lines, namespace,
    on_premises, secret, serving_stand_in, ssh_keypair, ssh_via,
};

/// Ordinary objects, each with an sshd host of its own.
const ORDINARY: usize = 10;
/// Objects naming the crafted Secret.
const CRAFTED: usize = 3;
/// How long the ordinary objects may take to be Ready (with the crafted key decrypted on the
/// async workers they never are: both workers of a two-core machine are pinned).
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long the controller may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(5);

const SSH_AUTH: &str = "kubernetes.io/ssh-auth";

/// `ssh-keygen -t ed25519 -N <passphrase> -a 16`: (private key, public key line).
fn encrypted_key(passphrase: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q", "-t", "ed25519", "-a", "16", "-C", "crafted", "-N", passphrase, "-f",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&path).unwrap()
}

/// `pem` (an OpenSSH key encrypted with bcrypt) with the rounds in its KDF options set to
/// `rounds`: base64 body, magic `openssh-key-v1\0`, strings cipher, kdf name, kdf options
/// (string salt, uint32 rounds).
fn with_bcrypt_rounds(pem: &str, rounds: u32) -> String {
    use base64_body::{decode, encode};
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut bytes = decode(&body);
    let magic = b"openssh-key-v1\0".len();
    assert_eq!(&bytes[..magic], b"openssh-key-v1\0");
    let string_end = |at: usize, b: &[u8]| {
        at + 4 + u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
    };
    let kdf_name = string_end(magic, &bytes);
    assert_eq!(&bytes[kdf_name + 4..kdf_name + 10], b"bcrypt");
    let options = string_end(kdf_name, &bytes);
    let salt = options + 4;
    let rounds_at = string_end(salt, &bytes);
    assert_eq!(
        u32::from_be_bytes(bytes[rounds_at..rounds_at + 4].try_into().unwrap()),
        16
    );
    bytes[rounds_at..rounds_at + 4].copy_from_slice(&rounds.to_be_bytes());
    let encoded = encode(&bytes);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// Standard base64 (the test's own few lines, so it needs no crate of its own).
mod base64_body {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn decode(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.len();
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= n {
                    out.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn has(obj: &InstanceRegistration, type_: &str, reason: &str) -> bool {
    matches!(condition(obj, type_), Some((_, r, g)) if r == reason && Some(g) == obj.metadata.generation)
}

fn describe(obj: &InstanceRegistration) -> String {
    let Some(status) = &obj.status else {
        return "no status".into();
    };
    status
        .conditions
        .iter()
        .map(|c| format!("{}={:?}/{}", c.r#type, c.status, c.reason))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_bcrypt_rounds_in_a_secret_named_by_three_objects_stall_nothing_else() {
    let cp = ControlPlane::shared();
    let aws = serving_stand_in(AwsEnv::shared(), Duration::from_secs(2));
    let client = cp.client().await;
    let ns = namespace(&client, "hostile-keys").await;
    let stack = aws.create_stack(&ns, None).await;

    let (private_key, public_key) = ssh_keypair("ed25519", "");
    secret(
        &client,
        &ns,
        "key",
        SSH_AUTH,
        &[("ssh-privatekey", private_key.as_bytes())],
    )
    .await;
    let crafted = with_bcrypt_rounds(&encrypted_key("pass"), u32::MAX);
    secret(
        &client,
        &ns,
        "crafted",
        SSH_AUTH,
        &[
            ("ssh-privatekey", crafted.as_bytes()),
            ("passphrase", b"pass".as_slice()),
        ],
    )
    .await;
    let hosts: Vec<SshHost> = (0..ORDINARY)
        .map(|i| {
            let host = SshHost::start(&format!("{ns}-h{i}"));
            host.authorize(&public_key);
            host
        })
        .collect();

    // The crafted objects first, so a controller that decrypts inline meets them first. Their
    // targets are never contacted (the key step comes before any connection).
    let mut yaml = String::new();
    let crafted_names: Vec<String> = (0..CRAFTED).map(|i| format!("crafted-{i}")).collect();
    for (i, name) in crafted_names.iter().enumerate() {
        yaml += "---\n";
        yaml += &on_premises(
            &ns,
            name,
            &stack,
            &format!("127.0.9.{}", i + 1),
            name,
            "crafted",
            "",
        );
    }
    let names: Vec<String> = (0..ORDINARY).map(|i| format!("ordinary-{i}")).collect();
    for (name, host) in names.iter().zip(&hosts) {
        yaml += "---\n";
        yaml += &(on_premises(
            &ns,
            name,
            &stack,
            &host.address().to_string(),
            name,
            "key",
            "",
        ) + &ssh_via(host));
    }
    let mut controller = ControllerProcess::start(cp, aws, &ns, &[]);
    let started = Instant::now();
    apply(cp, &yaml);

    let api: Api<InstanceRegistration> = Api::namespaced(client.clone(), &ns);
    let (mut ordinary_ready, mut crafted_reported) = (None, None);
    let objects = loop {
        let objects = api.list(&ListParams::default()).await.unwrap().items;
        let named = |n: &[String], type_: &str, reason: &str| {
            objects
                .iter()
                .filter(|o| n.contains(o.metadata.name.as_ref().unwrap()))
                .filter(|o| has(o, type_, reason))
                .count()
                == n.len()
        };
        if ordinary_ready.is_none() && named(&names, types::READY, reasons::SUCCEEDED) {
            ordinary_ready = Some(started.elapsed());
        }
        if crafted_reported.is_none()
            && named(
                &crafted_names,
                types::SSH_KEY_READY,
                reasons::PRIVATE_KEY_TOO_COSTLY,
            )
        {
            crafted_reported = Some(started.elapsed());
        }
        if (ordinary_ready.is_some() && crafted_reported.is_some())
            || started.elapsed() > READY_WITHIN
        {
            break objects;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let states: Vec<String> = objects
        .iter()
        .map(|o| format!("  {}: {}", o.metadata.name.as_ref().unwrap(), describe(o)))
        .collect();
    println!(
        "hostile keys: {ORDINARY} ordinary objects on sshd hosts, {CRAFTED} naming a key with 2^32-1 bcrypt rounds\n  ordinary all Ready after {ordinary_ready:?}; crafted all {} after {crafted_reported:?}\n{}",
        reasons::PRIVATE_KEY_TOO_COSTLY,
        states.join("\n")
    );

    // SIGTERM: the process must end promptly (reconciles in flight may finish; none may be
    // stuck in a decrypt).
    let pid = controller.pid().expect("the controller runs");
    let asked = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let code = controller.wait_exit(STOP_WITHIN);
    let stop = asked.elapsed();
    println!("  SIGTERM: exit code {code:?} after {stop:?}");
    let logs = controller.logs();
    controller.kill();

    assert!(
        ordinary_ready.is_some(),
        "the ordinary objects were not all Ready within {READY_WITHIN:?}"
    );
    assert!(
        crafted_reported.is_some(),
        "the crafted objects did not all report {} within {READY_WITHIN:?}",
        reasons::PRIVATE_KEY_TOO_COSTLY
    );
    assert_eq!(
        code,
        Some(0),
        "the controller did not exit within {STOP_WITHIN:?} of SIGTERM"
    );
    let crafted_obj = objects
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some("crafted-0"))
        .unwrap();
    let message = crafted_obj
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == types::SSH_KEY_READY)
        .unwrap()
        .message
        .clone();
    assert!(message.contains("4294967295"), "{message}");
    // No key material anywhere the controller wrote.
    let events = cp
        .kubectl_ok(&["get", "events", "-n", &ns, "-o", "yaml"])
        .unwrap();
    let status = cp
        .kubectl_ok(&["get", "ir", "-n", &ns, "-o", "yaml"])
        .unwrap();
    let written = format!("{logs}\n{events}\n{status}");
    for line in key_material_lines(&crafted)
        .iter()
        .chain(&key_material_lines(&private_key))
    {
        assert!(
            !written.contains(line.as_str()),
            "key material in what the controller wrote"
        );
    }
    assert!(!logs.contains("panicked"));
}
