//! Secret material: token generation and hashing, private files, and
//! secrets at rest: sealed with ChaCha20-Poly1305 (ring AEAD) under the
//! node's secret key, bound to the tenant, function and secret name so a
//! sealed value cannot be moved to another function.
//!
//! The key comes from `PERCH_SECRET_KEY` (64 hex characters) or, without it,
//! from `<data-dir>/secret.key`, generated (mode 0600) on first start.
use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Lowercase hex SHA-256 of a presented token.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("system randomness");
    hex(&buf)
}

/// A new secret token with the given prefix.
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

/// Writes a file only its owner can read (mode 0600), durably: temporary
/// file, fsync, rename.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The node's sealing key.
pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SecretBox {
    /// A box over 32 key bytes.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        SecretBox {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// A box over the key written as `text` (64 hex digits); `what` names
    /// where it came from in the error.
    pub fn parse(text: &str, what: &str) -> Result<SecretBox, String> {
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("{what} must be 64 hexadecimal characters (32 bytes)"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(SecretBox::new(&key))
    }

    /// Loads the key from `env` (hex) or the data directory's key file,
    /// creating the file when neither exists.
    pub fn load(data_dir: &Path, env: Option<String>) -> Result<SecretBox, String> {
        let parse = Self::parse;
        if let Some(k) = env.filter(|k| !k.is_empty()) {
            return parse(&k, "PERCH_SECRET_KEY");
        }
        let path = data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "no system randomness".to_string())?;
        let write = || write_private_file(&path, hex(&key).as_bytes());
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(SecretBox::new(&key))
    }

    /// Seals `plaintext` for `context` (e.g. `tenant/function/NAME`).
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("system randomness");
        let mut data = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for in-memory data");
        format!("v1:{}:{}", hex(&nonce), hex(&data))
    }

    /// Opens a value sealed for `context`; `None` if it was tampered with,
    /// moved, or sealed under another key.
    pub fn open(&self, context: &str, sealed: &str) -> Option<String> {
        let mut parts = sealed.splitn(3, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = unhex(parts.next()?)?.try_into().ok()?;
        let mut data = unhex(parts.next()?)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256() {
        assert_eq!(
            token_hash("hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(new_token("p_").len(), 66);
    }

    #[test]
    fn seal_open_and_binding() {
        let b = SecretBox::new(&[7; 32]);
        let s = b.seal("t/f/API_KEY", "hunter2");
        assert!(!s.contains("hunter2"));
        assert_eq!(b.open("t/f/API_KEY", &s).as_deref(), Some("hunter2"));
        assert_eq!(b.open("t/g/API_KEY", &s), None, "moved to another function");
        assert_eq!(SecretBox::new(&[8; 32]).open("t/f/API_KEY", &s), None);
        assert_ne!(b.seal("t/f/API_KEY", "hunter2"), s, "fresh nonce each time");
    }

    #[test]
    fn key_file_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(dir.path(), None).unwrap();
        let sealed = a.seal("c", "v");
        let b = SecretBox::load(dir.path(), None).unwrap();
        assert_eq!(b.open("c", &sealed).as_deref(), Some("v"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(SecretBox::load(dir.path(), Some("abc".into())).is_err());
    }
}
