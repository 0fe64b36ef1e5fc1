//! Reading SSH private keys from untrusted bytes (a Secret's value). Errors say what is wrong in
//! fixed words and never echo the input: the bytes may be a real key.

use russh::keys::{self, HashAlg, PrivateKey};

/// Keys larger than this are refused unread (an RSA-16384 OpenSSH key is about 12 KiB).
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// Why a private key cannot be used. The messages contain no part of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
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
}

/// What a usable key is, for status messages: its algorithm and its public key's fingerprint
/// (both public information).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// The key's algorithm, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// SHA256 fingerprint of the public key, in OpenSSH form (`SHA256:...`).
    pub fingerprint: String,
}

/// Parses `bytes` as an SSH private key (OpenSSH, PKCS#8, PKCS#1/SEC1 PEM), decrypting it with
/// `passphrase` if it is encrypted.
pub fn parse(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey, KeyProblem> {
    if bytes.len() > MAX_KEY_BYTES {
        return Err(KeyProblem::Invalid("the private key is larger than 64 KiB"));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| KeyProblem::Invalid("the private key is not text (PEM or OpenSSH form)"))?;
    if text.trim().is_empty() {
        return Err(KeyProblem::Invalid("the private key is empty"));
    }
    if !text.contains("-----BEGIN ") && !text.trim_start().starts_with("PuTTY-User-Key-File-") {
        return Err(KeyProblem::Invalid(
            "the value is not a private key in PEM or OpenSSH form (no BEGIN line)",
        ));
    }
    let passphrase = match passphrase {
        None => None,
        Some(p) => Some(
            std::str::from_utf8(p)
                .map_err(|_| KeyProblem::Invalid("the passphrase is not UTF-8 text"))?
                // A passphrase written with `echo` into a Secret often ends with a newline.
                .trim_end_matches(['\n', '\r']),
        ),
    };
    let decode = |passphrase: Option<&str>| {
        // The parser sees untrusted input; a panic in it must not take the controller down.
        std::panic::catch_unwind(|| keys::decode_secret_key(text, passphrase))
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
pub fn summary(key: &PrivateKey) -> KeySummary {
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
}
