//! Reading SSH private keys from untrusted bytes (a Secret's value). Errors say what is wrong in
//! fixed words and never echo the input: the bytes may be a real key.
//!
//! An encrypted key names the cost of its own decryption (OpenSSH: bcrypt rounds; PuTTY v3:
//! Argon2 memory and passes; PKCS#8: PBKDF2 iterations or scrypt parameters), so a crafted key
//! can ask for years of CPU or gigabytes of memory. [`inspect`] reads that envelope first, in
//! microseconds, and refuses parameters beyond what the tools that write keys ever use; only the
//! exact bytes it vetted are handed to the decoder. [`KeyCache`] then decodes off the async
//! workers, a few at a time, with a time limit, once per version of a Secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use russh::keys::ssh_encoding::base64::{Base64, Encoding};
use russh::keys::{self, HashAlg, PrivateKey};

/// Keys larger than this are refused unread (an RSA-16384 OpenSSH key is about 12 KiB).
pub(crate) const MAX_KEY_BYTES: usize = 64 * 1024;

/// Most bcrypt rounds an OpenSSH key may ask for. `ssh-keygen` writes 16 unless told otherwise
/// (`-a`); guides commonly suggest `-a 100`, a few 200 or 256. 500 leaves room above all of
/// those; one round costs about 8 ms on one core here (release build, 48 bytes of key and IV,
/// as aes256-ctr needs), so the most a key may cost is about 4 s of one core. The crafted keys
/// this guards against ask for up to 2^32-1 rounds: about a year.
pub(crate) const MAX_BCRYPT_ROUNDS: u32 = 500;
/// Most Argon2 memory (KiB) a PuTTY v3 key may ask for: PuTTYgen's default is 8192 KiB;
/// this is eight times that, and bounds what one decrypt allocates.
pub(crate) const MAX_ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Most Argon2 work (memory in KiB times passes) a PuTTY v3 key may ask for. PuTTYgen picks
/// the passes so the derivation takes 100 ms on the machine that wrote the key (a few dozen
/// at 8 MiB); 8 MiB x 1024 passes takes about 3 s here.
pub(crate) const MAX_ARGON2_WORK: u64 = 8192 * 1024;
/// Most Argon2 lanes a PuTTY v3 key may ask for (PuTTYgen writes 1).
pub(crate) const MAX_ARGON2_PARALLELISM: u32 = 16;
/// Most PBKDF2 iterations an encrypted PKCS#8 key may ask for. OpenSSL writes 2048; the most
/// cautious advice (OWASP, PBKDF2-HMAC-SHA256) is 600 000, about 60 ms here.
pub(crate) const MAX_PBKDF2_ITERATIONS: u32 = 2_000_000;
/// Most scrypt memory (128 x N x r bytes) an encrypted PKCS#8 key may ask for. OpenSSL
/// writes N=16384, r=8 (16 MiB).
pub(crate) const MAX_SCRYPT_MEMORY: u64 = 64 * 1024 * 1024;
/// Most scrypt work (N x r x p) an encrypted PKCS#8 key may ask for. OpenSSL writes p=16:
/// 2^21.
pub(crate) const MAX_SCRYPT_WORK: u64 = 1 << 23;

/// How long a key's decoding may take before the step reports it (it goes on in the
/// background, and its result is used once it is there). Four times the most a key within the
/// limits above costs here.
pub(crate) const DECODE_TIME_LIMIT: Duration = Duration::from_secs(16);

/// Why a private key cannot be used. The messages contain no part of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyProblem {
    /// Not a private key in a form the controller reads.
    #[error("{0}")]
    Invalid(&'static str),
    /// A private key of a type that is not supported.
    #[error("the private key is of an unsupported type (supported: ed25519, ecdsa, rsa)")]
    UnsupportedType,
    /// Encrypted, and no passphrase was given.
    #[error("the private key is encrypted and the Secret has no passphrase")]
    PassphraseRequired,
    /// Encrypted, and the passphrase given does not decrypt it.
    #[error("the passphrase in the Secret does not decrypt the private key")]
    WrongPassphrase,
    /// Encrypted with key-derivation parameters beyond what key-writing tools use: decrypting
    /// it would cost more CPU time or memory than any real key does.
    #[error(
        "the private key's encryption asks for {what} {found}, more than the {limit} the controller accepts; re-encrypt it with its tool's default settings (ssh-keygen -p -a 16)"
    )]
    TooCostly {
        /// The parameter, e.g. `bcrypt rounds`.
        what: &'static str,
        /// The value the key asks for.
        found: u64,
        /// The most accepted.
        limit: u64,
    },
}

/// What a usable key is, for status messages: its algorithm and its public key's fingerprint
/// (both public information).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySummary {
    /// The key's algorithm, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// SHA256 fingerprint of the public key, in OpenSSH form (`SHA256:...`).
    pub fingerprint: String,
}

/// The container a key came in, as the decoder would read it, with the bytes it would decode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Container {
    /// A PuTTY key file (decoded from the text itself).
    Putty,
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`.
    OpenSsh(Vec<u8>),
    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1).
    Rsa(Vec<u8>),
    /// Legacy PEM encryption (`DEK-Info: AES-128-CBC,<iv>`): one MD5 round, cheap.
    Pkcs5 { iv: [u8; 16], der: Vec<u8> },
    /// `-----BEGIN PRIVATE KEY-----`, `EC PRIVATE KEY` or `ENCRYPTED PRIVATE KEY` (the decoder
    /// reads all three alike).
    Pkcs8(Vec<u8>),
}

/// A key's container, read and vetted by [`inspect`]; [`decode`] decodes exactly it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    container: Container,
    /// Whether decoding derives a key from the passphrase (bounded by the limits above, yet
    /// the one costly part).
    kdf_work: bool,
}

impl Envelope {
    /// Whether decoding it with a passphrase runs a key-derivation function.
    pub(crate) fn kdf_work(&self) -> bool {
        self.kdf_work
    }
}

/// Parses `bytes` as an SSH private key (OpenSSH, PKCS#8, PKCS#1/SEC1 PEM, PuTTY), decrypting
/// it with `passphrase` if it is encrypted. Runs the key derivation, which may take seconds: an
/// async caller goes through [`KeyCache`].
#[cfg(test)]
pub(crate) fn parse(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey, KeyProblem> {
    let envelope = inspect(bytes, passphrase)?;
    decode(bytes, &envelope, passphrase)
}

/// Reads the container of `bytes` the way the decoder will, without decrypting anything, and
/// refuses what is not a key or asks for more key-derivation work than the limits above. Takes
/// microseconds whatever the input.
pub(crate) fn inspect(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<Envelope, KeyProblem> {
    if bytes.len() > MAX_KEY_BYTES {
        return Err(KeyProblem::Invalid("the private key is larger than 64 KiB"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyProblem::Invalid("the private key is not text (PEM or OpenSSH form)"))?;
    if text.trim().is_empty() {
        return Err(KeyProblem::Invalid("the private key is empty"));
    }
    if text.trim().starts_with(PUTTY_PREFIX) {
        return inspect_putty(text);
    }
    if !text.contains("-----BEGIN ") {
        return Err(KeyProblem::Invalid(
            "the value is not a private key in PEM or OpenSSH form (no BEGIN line)",
        ));
    }
    let container = read_pem(text)?;
    let kdf_work = match &container {
        Container::OpenSsh(bytes) => openssh_kdf(bytes)?,
        Container::Pkcs8(der) if passphrase.is_some() => pkcs8_kdf(der)?,
        _ => false,
    };
    Ok(Envelope {
        container,
        kdf_work,
    })
}

/// Decodes the key `inspect` vetted in `bytes`.
fn decode(
    bytes: &[u8],
    envelope: &Envelope,
    passphrase: Option<&[u8]>,
) -> Result<PrivateKey, KeyProblem> {
    let passphrase = match passphrase {
        None => None,
        Some(p) => Some(
            std::str::from_utf8(p)
                .map_err(|_| KeyProblem::Invalid("the passphrase is not UTF-8 text"))?
                // A passphrase written with `echo` into a Secret often ends with a newline.
                .trim_end_matches(['\n', '\r']),
        ),
    };
    // The decoder sees only what `inspect` read: a PEM body is written out again, canonically,
    // from the bytes that were vetted (so a second BEGIN line, a stray DEK-Info or odd base64
    // cannot make it decode something else). A PuTTY file is its own text.
    let text = match &envelope.container {
        Container::Putty => String::from_utf8_lossy(bytes).into_owned(),
        Container::OpenSsh(body) => pem("OPENSSH PRIVATE KEY", None, body),
        Container::Rsa(body) => pem("RSA PRIVATE KEY", None, body),
        Container::Pkcs5 { iv, der } => pem("RSA PRIVATE KEY", Some(iv), der),
        Container::Pkcs8(der) => pem("PRIVATE KEY", None, der),
    };
    let decode = |passphrase: Option<&str>| {
        // The parser sees untrusted input; a panic in it must not take the controller down.
        std::panic::catch_unwind(|| keys::decode_secret_key(&text, passphrase))
            .unwrap_or(Err(keys::Error::CouldNotReadKey))
    };
    match decode(passphrase) {
        Ok(key) if signs_with(&key) => Ok(key),
        Ok(_) => Err(KeyProblem::UnsupportedType),
        Err(keys::Error::KeyIsEncrypted) => Err(KeyProblem::PassphraseRequired),
        Err(keys::Error::UnsupportedKeyType { .. }) | Err(keys::Error::UnknownAlgorithm(_)) => {
            Err(KeyProblem::UnsupportedType)
        }
        Err(_) if passphrase.is_some() => match decode(None) {
            // It is encrypted, and the passphrase we have did not open it.
            Err(keys::Error::KeyIsEncrypted) => Err(KeyProblem::WrongPassphrase),
            _ => Err(KeyProblem::Invalid("the private key is malformed")),
        },
        Err(_) => Err(KeyProblem::Invalid("the private key is malformed")),
    }
}

const PUTTY_PREFIX: &str = "PuTTY-User-Key-File-";
const MALFORMED: KeyProblem = KeyProblem::Invalid("the private key is malformed");

/// A PuTTY key file: `Key: value` lines, the Argon2 ones (v3) naming the key derivation. The
/// decoder reads the last of each key; every line is looked at here, so none escapes.
fn inspect_putty(text: &str) -> Result<Envelope, KeyProblem> {
    let mut memory = None;
    let mut passes = None;
    let mut lanes = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let slot = match key {
            "Argon2-Memory" => &mut memory,
            "Argon2-Passes" => &mut passes,
            "Argon2-Parallelism" => &mut lanes,
            _ => continue,
        };
        let value: u32 = value.parse().map_err(|_| MALFORMED)?;
        *slot = Some(slot.map_or(value, |old: u32| old.max(value)));
    }
    let memory = u64::from(memory.unwrap_or(0));
    let passes = u64::from(passes.unwrap_or(0));
    let lanes = u64::from(lanes.unwrap_or(0));
    limit("Argon2 memory (KiB)", memory, MAX_ARGON2_MEMORY_KIB.into())?;
    limit("Argon2 memory x passes", memory * passes, MAX_ARGON2_WORK)?;
    limit("Argon2 parallelism", lanes, MAX_ARGON2_PARALLELISM.into())?;
    Ok(Envelope {
        container: Container::Putty,
        kdf_work: memory > 0 || passes > 0,
    })
}

fn limit(what: &'static str, found: u64, limit: u64) -> Result<(), KeyProblem> {
    if found > limit {
        return Err(KeyProblem::TooCostly { what, found, limit });
    }
    Ok(())
}

/// Reads a PEM text exactly as `russh::keys::decode_secret_key` does: the last BEGIN line
/// before the first END line names the container (a `DEK-Info: AES-128-CBC` line after a BEGIN
/// makes it legacy-encrypted); every line after a BEGIN made only of base64 characters is
/// body.
fn read_pem(text: &str) -> Result<Container, KeyProblem> {
    #[derive(Clone, Copy)]
    enum Label {
        OpenSsh,
        Rsa,
        Pkcs5([u8; 16]),
        Pkcs8,
    }
    const DEK_INFO: &str = "DEK-Info: AES-128-CBC,";
    let mut label = None;
    let mut started = false;
    let mut body = String::new();
    for line in text.lines() {
        if started {
            if line.starts_with("-----END ") {
                break;
            }
            if line.chars().all(is_base64_char) {
                body.push_str(line);
            } else if let Some(hex) = line.strip_prefix(DEK_INFO) {
                label = Some(Label::Pkcs5(iv_from_hex(hex)?));
            }
        }
        match line {
            "-----BEGIN OPENSSH PRIVATE KEY-----" => {
                (started, label) = (true, Some(Label::OpenSsh))
            }
            "-----BEGIN RSA PRIVATE KEY-----" => (started, label) = (true, Some(Label::Rsa)),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----"
            | "-----BEGIN PRIVATE KEY-----"
            | "-----BEGIN EC PRIVATE KEY-----" => (started, label) = (true, Some(Label::Pkcs8)),
            _ => {}
        }
    }
    let Some(label) = label else {
        return Err(MALFORMED);
    };
    let bytes = Base64::decode_vec(&body).map_err(|_| MALFORMED)?;
    Ok(match label {
        Label::OpenSsh => Container::OpenSsh(bytes),
        Label::Rsa => Container::Rsa(bytes),
        Label::Pkcs5(iv) => Container::Pkcs5 { iv, der: bytes },
        Label::Pkcs8 => Container::Pkcs8(bytes),
    })
}

fn is_base64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '=')
}

fn iv_from_hex(hex: &str) -> Result<[u8; 16], KeyProblem> {
    let hex = hex.as_bytes();
    if hex.len() != 32 {
        return Err(MALFORMED);
    }
    let mut iv = [0; 16];
    for (byte, pair) in iv.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| MALFORMED)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| MALFORMED)?;
    }
    Ok(iv)
}

/// `bytes` as a PEM text of `label`, with a legacy `DEK-Info` line when `iv` is given.
fn pem(label: &str, iv: Option<&[u8; 16]>, bytes: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    if let Some(iv) = iv {
        out.push_str("Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,");
        for byte in iv {
            out.push_str(&format!("{byte:02X}"));
        }
        out.push_str("\n\n");
    }
    let encoded = Base64::encode_string(bytes);
    for chunk in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An OpenSSH key's envelope (PROTOCOL.key): magic `openssh-key-v1\0`, then the strings cipher
/// name, KDF name and KDF options (for bcrypt: the string salt and the uint32 rounds). Returns
/// whether the key derivation runs; refuses rounds above [`MAX_BCRYPT_ROUNDS`].
fn openssh_kdf(bytes: &[u8]) -> Result<bool, KeyProblem> {
    let rest = bytes
        .strip_prefix(b"openssh-key-v1\0".as_slice())
        .ok_or(MALFORMED)?;
    let (_cipher, rest) = ssh_string(rest)?;
    let (kdf, rest) = ssh_string(rest)?;
    let (options, _) = ssh_string(rest)?;
    match kdf {
        b"none" => Ok(false),
        b"bcrypt" => {
            let (_salt, rest) = ssh_string(options)?;
            let rounds = rest.get(..4).ok_or(MALFORMED)?;
            let rounds = u32::from_be_bytes([rounds[0], rounds[1], rounds[2], rounds[3]]);
            limit("bcrypt rounds", rounds.into(), MAX_BCRYPT_ROUNDS.into())?;
            Ok(true)
        }
        _ => Err(KeyProblem::Invalid(
            "the private key is encrypted with a key derivation other than bcrypt",
        )),
    }
}

/// An SSH wire-format string (uint32 length, then that many bytes) and what follows it.
fn ssh_string(bytes: &[u8]) -> Result<(&[u8], &[u8]), KeyProblem> {
    let length = bytes.get(..4).ok_or(MALFORMED)?;
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let rest = &bytes[4..];
    if length > rest.len() {
        return Err(MALFORMED);
    }
    Ok(rest.split_at(length))
}

/// An encrypted PKCS#8 key's PBES2 parameters. The decoder, given a passphrase, reads any
/// PKCS#8 body as `EncryptedPrivateKeyInfo`; a body that is not one fails there as here, before
/// any work. Returns whether the key derivation runs.
fn pkcs8_kdf(der: &[u8]) -> Result<bool, KeyProblem> {
    // A scheme this reader does not know may cost anything: refused.
    const UNKNOWN_SCHEME: KeyProblem =
        KeyProblem::Invalid("the private key is encrypted with a scheme other than PBES2");
    use pkcs8::pkcs5::{EncryptionScheme, pbes2::Kdf};
    let Ok(info) = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der) else {
        return Ok(false);
    };
    match info.encryption_algorithm {
        // Not decrypted at all (the decoder has no PBES1).
        EncryptionScheme::Pbes1(_) => Ok(false),
        EncryptionScheme::Pbes2(params) => match params.kdf {
            Kdf::Pbkdf2(p) => {
                let found = p.iteration_count.into();
                limit("PBKDF2 iterations", found, MAX_PBKDF2_ITERATIONS.into())?;
                Ok(true)
            }
            Kdf::Scrypt(p) => {
                let (n, r, lanes) = (
                    p.cost_parameter,
                    u64::from(p.block_size),
                    u64::from(p.parallelization),
                );
                let memory = n.saturating_mul(r).saturating_mul(128);
                limit("scrypt memory (bytes)", memory, MAX_SCRYPT_MEMORY)?;
                let work = n.saturating_mul(r).saturating_mul(lanes);
                limit("scrypt N x r x p", work, MAX_SCRYPT_WORK)?;
                Ok(true)
            }
            _ => Err(UNKNOWN_SCHEME),
        },
        _ => Err(UNKNOWN_SCHEME),
    }
}

/// The outcome of decoding one version of a key, shared by every object that names it.
type Decoded = Result<Arc<PrivateKey>, KeyProblem>;

/// Why [`KeyCache::load`] returned no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// The key cannot be used (the same for this version of the Secret, whoever asks).
    Problem(KeyProblem),
    /// Its decoding did not finish within the time limit (queued behind others, or slow); it
    /// goes on, and a later load of the same version gets its result.
    Overran(Duration),
}

/// Where a key comes from: namespace, Secret name, key in the Secret.
pub(crate) type KeySource = (String, String, String);

/// Decoded private keys by where they come from, each for the version of its Secret it was
/// decoded from (the Secret's UID and resourceVersion): a key, or why it cannot be used, is
/// worked out once per version, however many objects name it and however often they are
/// reconciled. Decoding runs on a thread of its own (never on an async worker, and a running
/// one never holds up the process's exit), a few key derivations at once (half the CPUs).
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<KeySource, Entry>>,
    slots: Arc<tokio::sync::Semaphore>,
    time_limit: Duration,
    started: std::sync::atomic::AtomicU64,
}

struct Entry {
    version: String,
    decoded: Shared<BoxFuture<'static, Decoded>>,
}

/// Entries kept before finished ones are dropped (a cluster with more Secrets than this in use
/// decodes some again; nothing is lost).
const MAX_ENTRIES: usize = 4096;

impl Default for KeyCache {
    /// Half the CPUs the process may use (at least one, at most four) for key derivations, and
    /// [`DECODE_TIME_LIMIT`].
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new((cpus / 2).clamp(1, 4), DECODE_TIME_LIMIT)
    }
}

impl KeyCache {
    /// A cache running at most `slots` key derivations at once, each waited for at most
    /// `time_limit` by one load.
    pub(crate) fn new(slots: usize, time_limit: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(slots.max(1))),
            time_limit,
            started: Default::default(),
        }
    }

    /// How many key versions were read so far (each is read once, whoever asks).
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key in `bytes` (decrypted with `passphrase`), from `source` at `version` (any string
    /// that changes whenever the Secret does: its UID and resourceVersion). Decoded once per
    /// version; a load waits for it at most the time limit.
    pub(crate) async fn load(
        &self,
        source: KeySource,
        version: &str,
        bytes: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Result<Arc<PrivateKey>, LoadError> {
        let decoded = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(&source) {
                Some(entry) if entry.version == version => entry.decoded.clone(),
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        entries.retain(|_, entry| entry.decoded.peek().is_none());
                    }
                    let decoded = self.start(bytes, passphrase);
                    entries.insert(
                        source,
                        Entry {
                            version: version.to_owned(),
                            decoded: decoded.clone(),
                        },
                    );
                    decoded
                }
            }
        };
        match tokio::time::timeout(self.time_limit, decoded).await {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(problem)) => Err(LoadError::Problem(problem)),
            Err(_) => Err(LoadError::Overran(self.time_limit)),
        }
    }

    /// Starts decoding: the envelope is read at once (microseconds); what passes goes to a
    /// thread, after a slot when it runs a key derivation.
    fn start(
        &self,
        bytes: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Shared<BoxFuture<'static, Decoded>> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let envelope = match inspect(bytes, passphrase) {
            Ok(envelope) => envelope,
            Err(problem) => return futures::future::ready(Err(problem)).boxed().shared(),
        };
        let needs_slot = envelope.kdf_work() && passphrase.is_some();
        let bytes = bytes.to_vec();
        let passphrase = passphrase.map(<[u8]>::to_vec);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slots = self.slots.clone();
        tokio::spawn(async move {
            let permit = if needs_slot {
                match slots.acquire_owned().await {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                }
            } else {
                None
            };
            // A thread of its own, not `spawn_blocking`: the runtime waits for blocking tasks
            // when it shuts down, and a process asked to stop must not wait for a decrypt.
            let spawned = std::thread::Builder::new()
                .name("ssh-key-decode".into())
                .spawn(move || {
                    let decoded = decode(&bytes, &envelope, passphrase.as_deref()).map(Arc::new);
                    drop(permit);
                    let _ = tx.send(decoded);
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "could not start a thread to decode an SSH key");
            }
        });
        rx.map(|sent| {
            sent.unwrap_or(Err(KeyProblem::Invalid(
                "the private key could not be read",
            )))
        })
        .boxed()
        .shared()
    }
}

/// Whether `key` is of a type the controller signs with: ed25519, ECDSA or RSA. Not DSA (which
/// current OpenSSH servers refuse, so it could only end in an authentication failure) nor the
/// security-key types (which need the hardware key).
fn signs_with(key: &PrivateKey) -> bool {
    matches!(
        key.algorithm(),
        keys::Algorithm::Ed25519 | keys::Algorithm::Ecdsa { .. } | keys::Algorithm::Rsa { .. }
    )
}

/// The algorithm and public-key fingerprint of `key`.
pub(crate) fn summary(key: &PrivateKey) -> KeySummary {
    let public = key.public_key();
    KeySummary {
        algorithm: public.algorithm().to_string(),
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::LineEnding;

    fn ed25519_openssh(passphrase: Option<&str>) -> String {
        let key = PrivateKey::random(&mut rand::rng(), keys::Algorithm::Ed25519).unwrap();
        let key = match passphrase {
            Some(p) => key.encrypt(&mut rand::rng(), p).unwrap(),
            None => key,
        };
        key.to_openssh(LineEnding::LF).unwrap().to_string()
    }

    #[test]
    fn a_plain_ed25519_key_parses_and_summarises_without_secret_parts() {
        let pem = ed25519_openssh(None);
        let key = parse(pem.as_bytes(), None).unwrap();
        let s = summary(&key);
        assert_eq!(s.algorithm, "ssh-ed25519");
        assert!(s.fingerprint.starts_with("SHA256:"), "{}", s.fingerprint);
    }

    #[test]
    fn an_encrypted_key_needs_its_passphrase() {
        let pem = ed25519_openssh(Some("correct horse"));
        assert_eq!(
            parse(pem.as_bytes(), None).unwrap_err(),
            KeyProblem::PassphraseRequired
        );
        assert_eq!(
            parse(pem.as_bytes(), Some(b"wrong")).unwrap_err(),
            KeyProblem::WrongPassphrase
        );
        assert!(parse(pem.as_bytes(), Some(b"correct horse\n")).is_ok());
    }

    #[test]
    fn garbage_is_refused_and_the_error_never_echoes_the_input() {
        let pem = ed25519_openssh(None);
        let truncated = &pem[..pem.len() / 2];
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"   \n".to_vec(),
            b"hello $(touch /tmp/pwned)".to_vec(),
            vec![0xff, 0xfe, 0x00],
            truncated.as_bytes().to_vec(),
            pem.replace("OPENSSH PRIVATE KEY", "RSA PRIVATE KEY")
                .into_bytes(),
            vec![b'A'; MAX_KEY_BYTES + 1],
        ];
        for case in cases {
            let err = parse(&case, None).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, KeyProblem::Invalid(_)),
                "{case:?} gave {err:?}"
            );
            let body: String = pem.lines().nth(1).unwrap().to_owned();
            assert!(!text.contains(&body), "error echoes key material: {text}");
            assert!(!text.contains("pwned"), "error echoes input: {text}");
        }
    }

    #[test]
    fn a_public_key_is_not_a_private_key() {
        let key = PrivateKey::random(&mut rand::rng(), keys::Algorithm::Ed25519).unwrap();
        let public = key.public_key().to_openssh().unwrap();
        assert!(matches!(
            parse(public.as_bytes(), None),
            Err(KeyProblem::Invalid(_))
        ));
    }

    /// Runs ssh-keygen to make an ed25519 key encrypted with `passphrase` and `rounds`.
    fn ssh_keygen(passphrase: &str, rounds: u32) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-C", "", "-N", passphrase, "-a"])
            .arg(rounds.to_string())
            .arg("-f")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read_to_string(path).unwrap()
    }

    /// `pem` (an OpenSSH key encrypted with bcrypt) with its rounds field set to `rounds`.
    fn with_bcrypt_rounds(pem: &str, rounds: u32) -> String {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut bytes = Base64::decode_vec(&body).unwrap();
        let string_end = |at: usize, b: &[u8]| {
            at + 4 + u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
        };
        let cipher = b"openssh-key-v1\0".len();
        let kdf = string_end(cipher, &bytes);
        let options = string_end(kdf, &bytes);
        let salt = options + 4;
        let rounds_at = string_end(salt, &bytes);
        bytes[rounds_at..rounds_at + 4].copy_from_slice(&rounds.to_be_bytes());
        super::pem("OPENSSH PRIVATE KEY", None, &bytes)
    }

    fn too_costly(what: &str, found: u64) -> impl Fn(&KeyProblem) -> bool + '_ {
        move |p| matches!(p, KeyProblem::TooCostly { what: w, found: f, .. } if *w == what && *f == found)
    }

    #[test]
    fn crafted_bcrypt_rounds_are_refused_in_microseconds_and_the_message_says_why() {
        let crafted = with_bcrypt_rounds(&ssh_keygen("pass", 16), u32::MAX);
        let started = std::time::Instant::now();
        let problem = parse(crafted.as_bytes(), Some(b"pass")).unwrap_err();
        let took = started.elapsed();
        assert!(
            too_costly("bcrypt rounds", u32::MAX.into())(&problem),
            "{problem:?}"
        );
        assert!(took < Duration::from_millis(50), "took {took:?}");
        let text = problem.to_string();
        assert!(
            text.contains("4294967295") && text.contains("500"),
            "{text}"
        );
        let body = crafted.lines().nth(1).unwrap();
        assert!(!text.contains(body), "the message echoes the key: {text}");
        // Just over the limit is refused too; without a passphrase it is refused the same way.
        let over = with_bcrypt_rounds(&ssh_keygen("pass", 16), MAX_BCRYPT_ROUNDS + 1);
        assert!(too_costly("bcrypt rounds", 501)(
            &parse(over.as_bytes(), None).unwrap_err()
        ));
    }

    #[test]
    fn keys_as_ssh_keygen_writes_them_are_read_up_to_a_hundred_rounds_and_beyond() {
        let default = ssh_keygen("pass", 16);
        assert!(parse(default.as_bytes(), Some(b"pass\n")).is_ok());
        let hundred = ssh_keygen("pass", 100);
        let envelope = inspect(hundred.as_bytes(), Some(b"pass")).unwrap();
        assert!(envelope.kdf_work());
        assert!(parse(hundred.as_bytes(), Some(b"pass")).is_ok());
        assert_eq!(
            parse(hundred.as_bytes(), Some(b"nope")).unwrap_err(),
            KeyProblem::WrongPassphrase
        );
        // The most accepted passes the envelope check (not decrypted here: seconds of work).
        let most = with_bcrypt_rounds(&default, MAX_BCRYPT_ROUNDS);
        assert!(inspect(most.as_bytes(), Some(b"pass")).is_ok());
    }

    #[test]
    fn truncated_or_garbled_envelopes_are_refused_without_panicking() {
        let pem = ssh_keygen("pass", 16);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let bytes = Base64::decode_vec(&body).unwrap();
        for cut in 0..bytes.len().min(120) {
            let text = super::pem("OPENSSH PRIVATE KEY", None, &bytes[..cut]);
            let problem = parse(text.as_bytes(), Some(b"pass")).unwrap_err();
            assert!(
                matches!(problem, KeyProblem::Invalid(_)),
                "{cut}: {problem:?}"
            );
        }
        let mut garbled = bytes.clone();
        // The KDF name's length claims more than there is.
        let kdf = b"openssh-key-v1\0".len() + 4 + 10;
        garbled[kdf..kdf + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let text = super::pem("OPENSSH PRIVATE KEY", None, &garbled);
        assert_eq!(
            parse(text.as_bytes(), Some(b"pass")).unwrap_err(),
            MALFORMED
        );
        // A body that is not base64, and one that is not the magic.
        let bad =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA=AAA\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(parse(bad.as_bytes(), None).unwrap_err(), MALFORMED);
        let other = super::pem("OPENSSH PRIVATE KEY", None, b"not an openssh key at all");
        assert_eq!(parse(other.as_bytes(), None).unwrap_err(), MALFORMED);
    }

    #[test]
    fn a_second_begin_line_cannot_smuggle_a_costly_key_past_the_check() {
        // The decoder takes the last BEGIN line before the first END line, and every base64
        // line after the first BEGIN: here, the crafted body under an RSA label, then an empty
        // OpenSSH block. The check must read what the decoder reads.
        let crafted = with_bcrypt_rounds(&ssh_keygen("pass", 16), u32::MAX);
        let body: Vec<&str> = crafted
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let smuggled = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----\n",
            body.join("\n")
        );
        let started = std::time::Instant::now();
        let problem = parse(smuggled.as_bytes(), Some(b"pass")).unwrap_err();
        assert!(
            too_costly("bcrypt rounds", u32::MAX.into())(&problem),
            "{problem:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    fn putty(memory: u32, passes: u32, lanes: u32) -> String {
        format!(
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: aes256-cbc\nComment: k\nPublic-Lines: 1\nAAAAC3NzaC1lZDI1NTE5AAAAIA==\nKey-Derivation: Argon2id\nArgon2-Memory: {memory}\nArgon2-Passes: {passes}\nArgon2-Parallelism: {lanes}\nArgon2-Salt: 00112233445566778899aabbccddeeff\nPrivate-Lines: 1\nAAAA\nPrivate-MAC: 00\n"
        )
    }

    #[test]
    fn putty_keys_asking_for_too_much_argon2_memory_or_work_are_refused_unread() {
        let memory = putty(4 * 1024 * 1024, 1, 1);
        assert!(too_costly("Argon2 memory (KiB)", 4 * 1024 * 1024)(
            &parse(memory.as_bytes(), Some(b"pass")).unwrap_err()
        ));
        let work = putty(8192, 100_000, 1);
        assert!(too_costly("Argon2 memory x passes", 8192 * 100_000)(
            &parse(work.as_bytes(), Some(b"pass")).unwrap_err()
        ));
        let lanes = putty(8192, 8, 255);
        assert!(too_costly("Argon2 parallelism", 255)(
            &parse(lanes.as_bytes(), Some(b"pass")).unwrap_err()
        ));
        // A second, larger line is what the decoder would use: it counts.
        let twice = putty(8192, 8, 1).replace("Argon2-Salt", "Argon2-Memory: 4000000\nArgon2-Salt");
        assert!(
            parse(twice.as_bytes(), Some(b"pass"))
                .is_err_and(|p| matches!(p, KeyProblem::TooCostly { .. }))
        );
        // PuTTYgen's defaults pass the check.
        assert!(inspect(putty(8192, 34, 1).as_bytes(), Some(b"pass")).is_ok());
        let garbled = putty(8192, 8, 1).replace("Argon2-Passes: 8", "Argon2-Passes: -1");
        assert_eq!(
            parse(garbled.as_bytes(), Some(b"pass")).unwrap_err(),
            MALFORMED
        );
    }

    /// openssl's encrypted PKCS#8 of a fresh ed25519 key with PBKDF2 `iterations`.
    fn openssl_pkcs8(iterations: u32) -> String {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.pem");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        std::fs::write(&plain, run(&["genpkey", "-algorithm", "ed25519"])).unwrap();
        let out = run(&[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-iter",
            &iterations.to_string(),
            "-passout",
            "pass:pass",
            "-in",
            plain.to_str().unwrap(),
        ]);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn encrypted_pkcs8_keys_are_read_unless_their_pbkdf2_iterations_are_crafted() {
        let normal = openssl_pkcs8(2048);
        assert!(parse(normal.as_bytes(), Some(b"pass")).is_ok());
        // 32768 is INTEGER 00 80 00; 7F FF FF in its place is 8388607 at the same length.
        let made = openssl_pkcs8(32768);
        let body: String = made.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = Base64::decode_vec(&body).unwrap();
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x03, 0x00, 0x80, 0x00])
            .unwrap();
        der[at + 2..at + 5].copy_from_slice(&[0x7f, 0xff, 0xff]);
        let crafted = super::pem("ENCRYPTED PRIVATE KEY", None, &der);
        let started = std::time::Instant::now();
        let problem = parse(crafted.as_bytes(), Some(b"pass")).unwrap_err();
        assert!(
            too_costly("PBKDF2 iterations", 8_388_607)(&problem),
            "{problem:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn the_cache_reads_a_version_once_and_a_slow_decode_finishes_in_the_background() {
        let cache = KeyCache::new(1, Duration::from_millis(1));
        let key = ssh_keygen("pass", 100);
        let source = || ("ns".to_owned(), "s".to_owned(), "ssh-privatekey".to_owned());
        // Three objects at once: one read, and each waits at most the limit.
        let loads = futures::future::join_all(
            (0..3).map(|_| cache.load(source(), "uid/1", key.as_bytes(), Some(b"pass"))),
        )
        .await;
        for load in loads {
            assert_eq!(
                load.unwrap_err(),
                LoadError::Overran(Duration::from_millis(1))
            );
        }
        assert_eq!(cache.reads(), 1);
        // The decode went on; a later look gets its result without decoding again.
        let mut key_found = None;
        for _ in 0..600 {
            if let Ok(k) = cache
                .load(source(), "uid/1", key.as_bytes(), Some(b"pass"))
                .await
            {
                key_found = Some(k);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(key_found.is_some(), "the decode never finished");
        assert_eq!(cache.reads(), 1);
        // A refusal is kept for its version too; a new version is read again.
        let crafted = with_bcrypt_rounds(&key, u32::MAX);
        for _ in 0..3 {
            let err = cache
                .load(source(), "uid/2", crafted.as_bytes(), Some(b"pass"))
                .await;
            assert!(matches!(
                err,
                Err(LoadError::Problem(KeyProblem::TooCostly { .. }))
            ));
        }
        assert_eq!(cache.reads(), 2);
    }
}
