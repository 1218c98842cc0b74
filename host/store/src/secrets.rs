//! Tenant secrets at rest: encrypted with a node key kept apart from the store.
//!
//! A tenant's token-signing secret lets whoever holds it mint a token for any user of the
//! tenant, so the store never holds it in the clear. Each secret is sealed with
//! ChaCha20-Poly1305 (ring's AEAD) under a 256-bit **store key** that lives in a file of its
//! own, outside the sled directory (by default `<store dir>.key`, i.e. `<data_dir>/store.key`
//! for the node), mode 0600. A copy of the database alone (a backup, a stolen disk image of
//! the data directory without the key file, a world-readable sled file) reveals no secret.
//!
//! The key file is text, one key a line, `<key id> <64 hex digits>`; `#` starts a comment.
//! The key with the highest id seals; every key in the file opens. A sealed record names
//! the key id it was sealed with, so during a rotation ([`crate::SledStore::rotate_secrets_key`])
//! records under the old key and the new one are both readable, and a store that was
//! interrupted half-way is finished at its next open.
//!
//! Record (the `directory` tree's `T` value, version 2): `2, key id u32, nonce [u8; 12],
//! ciphertext ‖ tag [u8; 16]`, with the tenant id in the associated data, so a sealed secret
//! moved to another tenant's key does not open. Version 1 (the secret in the clear, before
//! this module) is read too, and re-sealed when the store opens.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of a store key.
pub const KEY_LEN: usize = 32;

/// The record version of a sealed secret.
pub(crate) const SEALED: u8 = 2;
/// The record version of a secret in the clear (stores written before secrets were sealed).
pub(crate) const PLAIN: u8 = 1;

const TAG_LEN: usize = 16;
const AAD_PREFIX: &[u8] = b"switchboard tenant secret v2\0";

/// Why tenant secrets could not be sealed or opened. Every variant names what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read, written or parsed.
    #[error("store key file {path}: {detail}")]
    KeyFile { path: PathBuf, detail: String },
    /// Other users may read the key file.
    #[error(
        "store key file {path} is accessible to other users (mode {mode:o}); it must be 600 \
         (chmod 600 it)"
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    /// There is no key file, but the store holds sealed secrets.
    #[error(
        "store key file {path} is missing, but the store holds tenant secrets sealed with key \
         {key_id}: restore the key file (it is not part of the store directory), or point the \
         node at it"
    )]
    MissingKey { path: PathBuf, key_id: u32 },
    /// A secret is sealed with a key the key file does not hold.
    #[error(
        "tenant {tenant}: its secret is sealed with key {key_id}, which the store key file does \
         not hold (keys there: {known:?}); use the key file this store was written with"
    )]
    UnknownKey {
        tenant: String,
        key_id: u32,
        known: Vec<u32>,
    },
    /// A secret does not open with the key of its id: another key file with the same ids,
    /// or a damaged record.
    #[error(
        "tenant {tenant}: its secret does not open with key {key_id} of the store key file \
         (a different key file, or a damaged record)"
    )]
    WrongKey { tenant: String, key_id: u32 },
    /// A sealed record is too short or has an unknown version.
    #[error("tenant {tenant}: sealed secret record is malformed: {detail}")]
    Malformed { tenant: String, detail: String },
    /// The store key given as text (not a file) does not parse.
    #[error("store key given in the environment: {0}")]
    KeyText(String),
    /// A rotation was asked for while the store key came as text: the new key could not be
    /// kept anywhere.
    #[error(
        "the store key was given in the environment, so a rotation could not keep the new key: \
         rotate with the key in a file (`switchboard keys rotate --key-file FILE`), then give \
         the file's new text"
    )]
    KeyNotInFile,
    /// A rotation was asked of a store that keeps its secrets in memory only (no key).
    #[error("this store keeps no sealed secrets (an in-memory store): there is no key to rotate")]
    NotSealed,
    /// The system's random source failed.
    #[error("no randomness for a nonce or key")]
    Random,
}

/// One key with its id.
struct Key {
    id: u32,
    bytes: [u8; KEY_LEN],
    aead: LessSafeKey,
}

/// The store keys: every key in the key file, the newest sealing.
pub struct KeyRing {
    /// Sorted by id; never empty.
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.ids())
            .finish_non_exhaustive()
    }
}

fn key_file_err(path: &Path, detail: impl fmt::Display) -> SecretsError {
    SecretsError::KeyFile {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

fn aad(tenant: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + tenant.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(tenant.as_bytes());
    aad
}

impl KeyRing {
    fn from_keys(mut keys: Vec<(u32, [u8; KEY_LEN])>) -> Result<KeyRing, String> {
        keys.sort_by_key(|(id, _)| *id);
        if keys.is_empty() {
            return Err("no key".into());
        }
        if keys.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("the same key id twice".into());
        }
        let keys = keys
            .into_iter()
            .map(|(id, bytes)| {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                    .map_err(|_| "not a ChaCha20-Poly1305 key".to_owned())?;
                Ok(Key {
                    id,
                    bytes,
                    aead: LessSafeKey::new(unbound),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(KeyRing { keys })
    }

    /// A ring of one fresh random key with id `id`.
    pub fn generate(id: u32) -> Result<KeyRing, SecretsError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretsError::Random)?;
        KeyRing::from_keys(vec![(id, bytes)]).map_err(|_| SecretsError::Random)
    }

    /// This ring plus a fresh key with the next id, which then seals.
    pub(crate) fn with_new_key(&self) -> Result<KeyRing, SecretsError> {
        let next = self
            .current_id()
            .checked_add(1)
            .ok_or_else(|| SecretsError::Malformed {
                tenant: String::new(),
                detail: "key ids exhausted".into(),
            })?;
        let fresh = KeyRing::generate(next)?;
        let mut keys: Vec<_> = self.keys.iter().map(|k| (k.id, k.bytes)).collect();
        keys.extend(fresh.keys.iter().map(|k| (k.id, k.bytes)));
        KeyRing::from_keys(keys).map_err(|_| SecretsError::Random)
    }

    /// Only the sealing key.
    pub(crate) fn current_only(&self) -> Result<KeyRing, SecretsError> {
        let k = self.current();
        KeyRing::from_keys(vec![(k.id, k.bytes)]).map_err(|_| SecretsError::Random)
    }

    fn current(&self) -> &Key {
        // Never empty (from_keys refuses an empty list).
        &self.keys[self.keys.len() - 1]
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> u32 {
        self.current().id
    }

    /// Every key id, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Parses a key file's text.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "line {}: expected `<key id> <64 hex digits>`",
                    n + 1
                ));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| format!("line {}: key id {id:?} is not a number", n + 1))?;
            let bytes = decode_hex(hex)
                .ok_or_else(|| format!("line {}: the key is not 64 hex digits", n + 1))?;
            keys.push((id, bytes));
        }
        KeyRing::from_keys(keys)
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        let mut s = String::from(
            "# Switchboard store keys (docs/reliability.md, \"Secrets at rest\").\n\
             # `<key id> <key, hex>`; the highest id seals, every line opens. Keep this file\n\
             # apart from copies of the store: it is what makes the tenants' secrets readable.\n",
        );
        for k in &self.keys {
            s.push_str(&format!("{} {}\n", k.id, encode_hex(&k.bytes)));
        }
        s
    }

    /// Reads the key file at `path`, refusing one that other users may read. `Ok(None)` when
    /// there is no file.
    pub fn load(path: &Path) -> Result<Option<KeyRing>, SecretsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_file_err(path, e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| key_file_err(path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(SecretsError::KeyFilePermissions {
                    path: path.to_owned(),
                    mode: mode & 0o7777,
                });
            }
        }
        KeyRing::parse(&text)
            .map(Some)
            .map_err(|e| key_file_err(path, e))
    }

    /// Writes the key file at `path`, mode 0600, atomically (a temporary file, synced, then
    /// renamed over it, and the directory synced), so a crash leaves the old file or the new
    /// one, never a torn one.
    pub fn store(&self, path: &Path) -> Result<(), SecretsError> {
        let err = |e: std::io::Error| key_file_err(path, e);
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| key_file_err(path, "not a file name"))?;
        let mut temp_name = name.to_owned();
        temp_name.push(".tmp");
        let temp = dir.join(temp_name);
        let _ = std::fs::remove_file(&temp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temp).map_err(err)?;
        file.write_all(self.to_file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        drop(file);
        std::fs::rename(&temp, path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// Seals `secret` of `tenant` under the current key: the whole record value.
    pub(crate) fn seal(&self, tenant: &str, secret: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let key = self.current();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut sealed = secret.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant)),
                &mut sealed,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut v = Vec::with_capacity(1 + 4 + NONCE_LEN + sealed.len());
        v.push(SEALED);
        v.extend_from_slice(&key.id.to_be_bytes());
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&sealed);
        Ok(v)
    }

    /// Opens a sealed record (version byte included) of `tenant`; returns the secret and the
    /// id of the key it was sealed with.
    pub(crate) fn open(&self, tenant: &str, value: &[u8]) -> Result<(Vec<u8>, u32), SecretsError> {
        let malformed = |detail: &str| SecretsError::Malformed {
            tenant: tenant.to_owned(),
            detail: detail.to_owned(),
        };
        let Some((&SEALED, rest)) = value.split_first() else {
            return Err(malformed("not a sealed record"));
        };
        if rest.len() < 4 + NONCE_LEN + TAG_LEN {
            return Err(malformed("too short"));
        }
        let (id, rest) = rest.split_at(4);
        let key_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| SecretsError::UnknownKey {
                    tenant: tenant.to_owned(),
                    key_id,
                    known: self.ids(),
                })?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("nonce"))?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(aad(tenant)), &mut buf)
            .map_err(|_| SecretsError::WrongKey {
                tenant: tenant.to_owned(),
                key_id,
            })?;
        Ok((plain.to_vec(), key_id))
    }

    /// The key id of a sealed record, without opening it.
    pub(crate) fn sealed_key_id(value: &[u8]) -> Option<u32> {
        match value {
            [SEALED, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_tenant_and_with_its_key() {
        let ring = KeyRing::generate(1).unwrap();
        let sealed = ring.seal("acme", b"0123456789abcdef").unwrap();
        assert!(!sealed
            .windows(16)
            .any(|w| w == b"0123456789abcdef".as_slice()));
        assert_eq!(
            ring.open("acme", &sealed).unwrap(),
            (b"0123456789abcdef".to_vec(), 1)
        );
        assert!(matches!(
            ring.open("globex", &sealed),
            Err(SecretsError::WrongKey { key_id: 1, .. })
        ));
        let other = KeyRing::generate(1).unwrap();
        assert!(matches!(
            other.open("acme", &sealed),
            Err(SecretsError::WrongKey { key_id: 1, .. })
        ));
        let newer = KeyRing::generate(2).unwrap();
        assert!(matches!(
            newer.open("acme", &sealed),
            Err(SecretsError::UnknownKey { key_id: 1, .. })
        ));
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, ring.seal("acme", b"0123456789abcdef").unwrap());
    }

    #[test]
    fn a_rotated_ring_opens_old_and_new_and_seals_with_the_new() {
        let old = KeyRing::generate(1).unwrap();
        let sealed_old = old.seal("acme", b"secret-secret-secret").unwrap();
        let both = old.with_new_key().unwrap();
        assert_eq!(both.ids(), vec![1, 2]);
        assert_eq!(both.current_id(), 2);
        assert_eq!(both.open("acme", &sealed_old).unwrap().1, 1);
        let sealed_new = both.seal("acme", b"secret-secret-secret").unwrap();
        assert_eq!(KeyRing::sealed_key_id(&sealed_new), Some(2));
        let new_only = both.current_only().unwrap();
        assert_eq!(new_only.ids(), vec![2]);
        assert_eq!(new_only.open("acme", &sealed_new).unwrap().1, 2);
        assert!(new_only.open("acme", &sealed_old).is_err());
    }

    #[test]
    fn the_key_file_round_trips_and_bad_files_are_refused() {
        let ring = KeyRing::generate(7).unwrap().with_new_key().unwrap();
        let back = KeyRing::parse(&ring.to_file_text()).unwrap();
        assert_eq!(back.ids(), vec![7, 8]);
        let sealed = ring.seal("t", b"s").unwrap();
        assert_eq!(back.open("t", &sealed).unwrap().0, b"s");
        for bad in [
            "",
            "# only a comment\n",
            "1\n",
            "1 abc\n",
            &format!("x {}\n", "00".repeat(32)),
            &format!("1 {}\n1 {}\n", "00".repeat(32), "11".repeat(32)),
            &format!("1 {} extra\n", "00".repeat(32)),
            &format!("1 {}\n", "zz".repeat(32)),
        ] {
            assert!(KeyRing::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_written_0600_and_refused_when_others_can_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        assert!(KeyRing::load(&path).unwrap().is_none());
        let ring = KeyRing::generate(1).unwrap();
        ring.store(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyRing::load(&path).unwrap().unwrap().ids(), vec![1]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyRing::load(&path),
            Err(SecretsError::KeyFilePermissions { mode: 0o644, .. })
        ));
    }
}
