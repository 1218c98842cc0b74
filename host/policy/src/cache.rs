//! Compiled plugins on disk, so re-activating a plugin (a restart, a rollback, another
//! tenant binding the same version) skips compilation; protected against tampering.
//!
//! Loading compiled code is trusting it: wasmtime's `Component::deserialize` maps the bytes
//! as machine code and believes the metadata beside it. So an artifact is only deserialized
//! after its HMAC-SHA256 checks out under a key only this node holds. The tag covers the
//! format, the plugin version (the SHA-256 of the component), this engine's compatibility
//! hash and the artifact itself, so an artifact is accepted only by an engine configured
//! like the one that wrote it, for the plugin it was compiled from.
//!
//! A file that fails any check is deleted and the plugin recompiled: the cache can make a
//! load slower, never wrong, and never an error.
//!
//! File `<version>.cwasm`:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `SWBCWASM` |
//! | 4 | format version, little-endian (1) |
//! | 32 | SHA-256 of the writing engine's `precompile_compatibility_hash` |
//! | 32 | HMAC-SHA256(key, magic ‖ format ‖ version ‖ compatibility ‖ artifact) |
//! | rest | the artifact: `Component::serialize` |

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::load::LoadError;
use crate::runtime::EngineInner;
use crate::version::{Version, DIGEST_BYTES};

const KEY_FILE: &str = "artifact.key";
const KEY_BYTES: usize = 32;
const ARTIFACT_EXTENSION: &str = "cwasm";

const MAGIC: &[u8; 8] = b"SWBCWASM";
const FORMAT: u32 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 4 + DIGEST_BYTES + DIGEST_BYTES;

/// A directory of compiled plugins, with the key that authenticates them. Cheap to clone.
///
/// One directory serves one engine configuration: an artifact written by an engine
/// configured differently (another wasmtime, other [`PolicyLimits`](crate::PolicyLimits)
/// that change code generation, another CPU) is rejected and overwritten.
#[derive(Clone)]
pub struct ArtifactCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ArtifactCache")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Why the cache could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("artifact cache: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is unusable or unsafe: wrong size, not a file, readable by other users,
    /// or in a directory other users can write to (they could replace the key).
    #[error("artifact cache: {}: {reason}", path.display())]
    Insecure { path: PathBuf, reason: String },
    #[error("`{0}` is not a plugin version (the 64 hex digits of a SHA-256)")]
    InvalidVersion(String),
    #[error("artifact cache: could not serialize the compiled plugin: {0}")]
    Serialize(String),
    #[error("artifact cache: the compiled plugin is {size} bytes; the cache keeps at most {max}")]
    TooLarge { size: u64, max: u64 },
}

/// Where [`PolicyEngine::load_cached`](crate::PolicyEngine::load_cached) got the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From a verified artifact: no compilation.
    Hit,
    /// Compiled; the artifact is now cached (unless writing it failed, which is logged).
    Miss,
    /// An artifact was there but failed verification: it was deleted, the plugin compiled
    /// and cached again.
    Rejected(CacheRejection),
}

/// Why a cached artifact was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheRejection {
    #[error("the file is {size} bytes; at most {max} are read")]
    TooLarge { size: u64, max: u64 },
    #[error("not a regular file")]
    NotAFile,
    #[error("could not be read: {0}")]
    Unreadable(String),
    #[error("not an artifact of this cache: {0}")]
    Malformed(&'static str),
    /// Written by an engine of another wasmtime version or configuration (e.g. after an
    /// upgrade).
    #[error("compiled by an engine of another version or configuration")]
    OtherEngine,
    /// The HMAC does not match: changed after it was written, or written under another key.
    #[error("failed authentication (modified, or written under another key)")]
    Forged,
    #[error("authenticated, but wasmtime refused it: {0}")]
    Deserialize(String),
    /// Authentic, but this node's load checks refuse the plugin now (they changed since).
    #[error("authenticated, but the plugin fails this node's load checks: {0}")]
    FailedChecks(LoadError),
}

/// `Engine::precompile_compatibility_hash` is a `Hash`, not bytes: feed it to SHA-256.
/// Computed once per engine.
pub(crate) fn compatibility_digest(engine: &Engine) -> [u8; DIGEST_BYTES] {
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            let digest = self.0.clone().finalize();
            u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

/// What a lookup found.
pub(crate) enum Lookup {
    Missing,
    Found(Component),
    Rejected(CacheRejection),
}

impl ArtifactCache {
    /// Largest file the cache reads (or writes): 64 MiB. Larger files are rejected without
    /// being read. A 4 MiB component compiles to well under this.
    pub const MAX_ARTIFACT_BYTES: u64 = 64 << 20;

    /// Opens (creating if needed) a cache directory. The first open creates the key file
    /// `artifact.key`, 32 random bytes readable only by this user (0600); later opens reuse
    /// it. Refuses a key file other users can read, or a directory other users can write.
    pub fn open(dir: &Path) -> Result<ArtifactCache, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        create_private_dir(dir).map_err(io(dir))?;
        check_dir(dir)?;
        let key_path = dir.join(KEY_FILE);
        let key = match read_key(&key_path)? {
            Some(key) => key,
            None => create_key(dir, &key_path)?,
        };
        Ok(ArtifactCache {
            inner: Arc::new(CacheInner {
                dir: dir.to_path_buf(),
                key,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Deletes the artifact of `version` (the plugin's hex SHA-256), e.g. when the version
    /// itself is deleted. Returns whether there was one.
    pub fn remove(&self, version: &str) -> Result<bool, CacheError> {
        let version =
            Version::parse(version).ok_or_else(|| CacheError::InvalidVersion(cut(version)))?;
        let path = self.artifact_path(&version);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    pub(crate) fn artifact_path(&self, version: &Version) -> PathBuf {
        self.inner
            .dir
            .join(format!("{}.{ARTIFACT_EXTENSION}", version.as_str()))
    }

    /// Reads and verifies the artifact of `version`, deserializing it only if it is
    /// authentic. A rejected file is deleted.
    pub(crate) fn lookup(&self, engine: &EngineInner, version: &Version) -> Lookup {
        let path = self.artifact_path(version);
        let found = read_bounded(&path).and_then(|bytes| {
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            let artifact = verify(&self.inner.key, &engine.compatibility, version, &bytes)?;
            deserialize(&engine.engine, artifact)
                .map(Some)
                .map_err(|e| CacheRejection::Deserialize(format!("{e:#}")))
        });
        match found {
            Ok(Some(component)) => Lookup::Found(component),
            Ok(None) => Lookup::Missing,
            Err(reason) => {
                self.discard(version);
                Lookup::Rejected(reason)
            }
        }
    }

    /// Deletes an artifact that failed; a failure to delete is only logged (the next write
    /// replaces the file anyway).
    pub(crate) fn discard(&self, version: &Version) {
        let path = self.artifact_path(version);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a rejected plugin artifact");
            }
        }
    }

    /// Caches a plugin that passed every check the caller makes (for an upload: the load
    /// checks, the self-test, and being stored), under its own version. Plugins loaded with
    /// [`PolicyEngine::load`](crate::PolicyEngine::load) are cached only this way, so a
    /// refused upload never leaves an artifact.
    pub fn store_plugin(&self, plugin: &crate::Plugin) -> Result<(), CacheError> {
        self.store(plugin.engine(), plugin.version_id(), plugin.component())
    }

    /// The number of artifacts in the directory (`*.cwasm`): what refused uploads must not
    /// grow, and what a tenant's stored versions bound.
    pub fn artifact_count(&self) -> Result<usize, CacheError> {
        let dir = &self.inner.dir;
        let entries = fs::read_dir(dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == ARTIFACT_EXTENSION)
            })
            .count())
    }

    /// Writes the artifact of a compiled, checked plugin: to a temporary file, then renamed
    /// into place, so a reader sees the old file, the new one or none.
    pub(crate) fn store(
        &self,
        engine: &EngineInner,
        version: &Version,
        component: &Component,
    ) -> Result<(), CacheError> {
        let artifact = component
            .serialize()
            .map_err(|e| CacheError::Serialize(format!("{e:#}")))?;
        let size = (HEADER_BYTES + artifact.len()) as u64;
        if size > Self::MAX_ARTIFACT_BYTES {
            return Err(CacheError::TooLarge {
                size,
                max: Self::MAX_ARTIFACT_BYTES,
            });
        }
        let file = encode(&self.inner.key, &engine.compatibility, version, &artifact);
        let path = self.artifact_path(version);
        write_atomically(&self.inner.dir, &path, &file)
    }
}

/// At most 80 characters of a caller-supplied string, for an error message.
pub(crate) fn cut(s: &str) -> String {
    const SHOWN: usize = 80;
    match s.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

fn mac(
    key: &[u8; KEY_BYTES],
    compatibility: &[u8; DIGEST_BYTES],
    version: &Version,
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(MAGIC);
    mac.update(&FORMAT.to_le_bytes());
    mac.update(version.as_str().as_bytes());
    mac.update(compatibility);
    mac
}

fn encode(
    key: &[u8; KEY_BYTES],
    compatibility: &[u8; DIGEST_BYTES],
    version: &Version,
    artifact: &[u8],
) -> Vec<u8> {
    let mut tag = mac(key, compatibility, version);
    tag.update(artifact);
    let tag = tag.finalize().into_bytes();
    let mut file = Vec::with_capacity(HEADER_BYTES + artifact.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT.to_le_bytes());
    file.extend_from_slice(compatibility);
    file.extend_from_slice(&tag);
    file.extend_from_slice(artifact);
    file
}

/// Artifact bytes whose HMAC checked out. Only [`verify`] makes one.
struct Authenticated<'a>(&'a [u8]);

/// Checks a cache file: size, magic, format, the writing engine, then (in constant time) the
/// HMAC. Returns the artifact only if it is authentic.
fn verify<'a>(
    key: &[u8; KEY_BYTES],
    compatibility: &[u8; DIGEST_BYTES],
    version: &Version,
    file: &'a [u8],
) -> Result<Authenticated<'a>, CacheRejection> {
    if file.len() < HEADER_BYTES {
        return Err(CacheRejection::Malformed("shorter than the header"));
    }
    let (magic, rest) = file.split_at(MAGIC.len());
    let (format, rest) = rest.split_at(4);
    let (written_by, rest) = rest.split_at(DIGEST_BYTES);
    let (tag, artifact) = rest.split_at(DIGEST_BYTES);
    if magic != MAGIC {
        return Err(CacheRejection::Malformed("wrong magic bytes"));
    }
    if format != FORMAT.to_le_bytes() {
        return Err(CacheRejection::Malformed("unknown format version"));
    }
    // Not secret: only a clearer reason than `Forged` after an upgrade. The tag below is
    // computed over this engine's digest, not the file's.
    if written_by != compatibility {
        return Err(CacheRejection::OtherEngine);
    }
    let mut mac = mac(key, compatibility, version);
    mac.update(artifact);
    mac.verify_slice(tag).map_err(|_| CacheRejection::Forged)?;
    Ok(Authenticated(artifact))
}

/// The crate's only `unsafe`.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: Authenticated<'_>) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be the output of
    // `Component::serialize` by a compatible engine: it maps it as machine code. These bytes
    // are: `Authenticated` exists only after `verify` checked an HMAC-SHA256 over exactly
    // these bytes, the plugin's version and this engine's compatibility hash, under the
    // cache's key. The key is 32 random bytes in a file only this node's user can read (and,
    // the directory being writable by no one else, replace), and the only tags made with it
    // are `store`'s, over `Component::serialize` output of an engine with this same
    // compatibility hash. So the bytes are what this engine configuration serialized.
    // (wasmtime also checks its own version and configuration header, and copies the bytes
    // into fresh memory, so later changes to the buffer do not matter.)
    unsafe { Component::deserialize(engine, artifact.0) }
}

/// `Ok(None)` when there is no file.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, CacheRejection> {
    let max = ArtifactCache::MAX_ARTIFACT_BYTES;
    let unreadable = |e: std::io::Error| CacheRejection::Unreadable(e.to_string());
    // Checked before opening, so a FIFO or device planted here is not opened (and cannot
    // block the open).
    let metadata = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    if !metadata.is_file() {
        return Err(CacheRejection::NotAFile);
    }
    if metadata.len() > max {
        return Err(CacheRejection::TooLarge {
            size: metadata.len(),
            max,
        });
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The bound holds even if the file grew since it was measured.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        return Err(CacheRejection::TooLarge {
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(Some(bytes))
}

fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(
        ".{name}.{:016x}.tmp",
        rand::thread_rng().next_u64()
    ))
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("artifact");
    let temp = temp_path(dir, name);
    let written = private_file()
        .open(&temp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&temp, path));
    written.map_err(|source| {
        let _ = fs::remove_file(&temp);
        CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Whoever can write the directory can replace the key file, and then forge artifacts.
fn check_dir(dir: &Path) -> Result<(), CacheError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = fs::metadata(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mode = metadata.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(CacheError::Insecure {
                path: dir.to_path_buf(),
                reason: format!(
                    "the directory is writable by other users (mode {:o}); they could replace \
                     the key. Make it writable by this user only (e.g. chmod 700)",
                    mode & 0o7777
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `Ok(None)` when there is no key file yet.
fn read_key(path: &Path) -> Result<Option<[u8; KEY_BYTES]>, CacheError> {
    let insecure = |reason: String| CacheError::Insecure {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !metadata.is_file() {
        return Err(insecure("the key is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(insecure(format!(
                "the key is accessible to other users (mode {:o}); it must be 600. Delete it \
                 to start over with a new key (cached plugins are then recompiled)",
                mode & 0o7777
            )));
        }
    }
    let bytes = fs::read(path).map_err(|source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
        insecure(format!(
            "the key is {} bytes; expected {KEY_BYTES}. Delete it to start over with a new key \
             (cached plugins are then recompiled)",
            bytes.len()
        ))
    })?;
    Ok(Some(key))
}

/// Writes a new key to a temporary file, then links it into place: the key file appears
/// complete or not at all, and if another process created one first, that one is used.
fn create_key(dir: &Path, path: &Path) -> Result<[u8; KEY_BYTES], CacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io { path, source }
    };
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .map_err(|e| io(path)(std::io::Error::other(e)))?;
    let temp = temp_path(dir, KEY_FILE);
    let written = private_file()
        .open(&temp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io(&temp)(e));
    }
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_key(path)?.ok_or_else(|| CacheError::Insecure {
                path: path.to_path_buf(),
                reason: "the key file disappeared while it was being created".into(),
            })
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_BYTES] = [7; KEY_BYTES];
    const ENGINE: [u8; DIGEST_BYTES] = [1; DIGEST_BYTES];

    fn version() -> Version {
        Version::of(b"a plugin")
    }

    #[test]
    fn versions_are_64_hex_digits() {
        let v = version();
        assert_eq!(v.as_str().len(), 64);
        assert_eq!(Version::parse(v.as_str()), Some(v.clone()));
        assert_eq!(Version::parse(&v.as_str().to_uppercase()), Some(v.clone()));
        for bad in ["", "abc", "../../etc/passwd", &format!("{}0", v.as_str())] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        let traversal = format!("../{}", &v.as_str()[3..]);
        assert_eq!(Version::parse(&traversal), None);
        // SHA-256 of the empty string, as a known answer.
        assert_eq!(
            Version::of(b"").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn an_encoded_artifact_verifies_and_any_change_is_rejected() {
        let artifact = b"compiled code".to_vec();
        let file = encode(&KEY, &ENGINE, &version(), &artifact);
        let ok = verify(&KEY, &ENGINE, &version(), &file).map(|a| a.0.to_vec());
        assert_eq!(ok, Ok(artifact));

        for i in 0..file.len() {
            let mut flipped = file.clone();
            flipped[i] ^= 0x01;
            let err = verify(&KEY, &ENGINE, &version(), &flipped).err();
            assert!(err.is_some(), "flipping byte {i} went unnoticed");
        }
        let other_key = [8; KEY_BYTES];
        assert_eq!(
            verify(&other_key, &ENGINE, &version(), &file).err(),
            Some(CacheRejection::Forged)
        );
        assert_eq!(
            verify(&KEY, &[2; DIGEST_BYTES], &version(), &file).err(),
            Some(CacheRejection::OtherEngine)
        );
        assert_eq!(
            verify(&KEY, &ENGINE, &Version::of(b"another plugin"), &file).err(),
            Some(CacheRejection::Forged),
            "an artifact is bound to its plugin version"
        );
        assert_eq!(
            verify(&KEY, &ENGINE, &version(), &file[..HEADER_BYTES - 1]).err(),
            Some(CacheRejection::Malformed("shorter than the header"))
        );
        assert_eq!(
            verify(&KEY, &ENGINE, &version(), &file[..file.len() - 1]).err(),
            Some(CacheRejection::Forged),
            "truncated"
        );
    }

    /// An authentic artifact of a plugin this node's checks refuse (as after a node upgrade
    /// that tightened them) is deleted, and the plugin refused as `load` refuses it.
    #[test]
    fn an_authentic_artifact_still_goes_through_the_load_checks() {
        let engine = crate::PolicyEngine::new(crate::PolicyLimits {
            max_instances: 4,
            ..crate::PolicyLimits::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let version = Version::of(&wasm);
        let component = Component::new(&engine.inner().engine, &wasm).unwrap();
        cache.store(engine.inner(), &version, &component).unwrap();
        assert!(matches!(
            cache.lookup(engine.inner(), &version),
            Lookup::Found(_)
        ));

        let err = engine
            .load_cached(&wasm, version.as_str(), &cache)
            .unwrap_err();
        assert_eq!(err, engine.load(&wasm).unwrap_err());
        assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
        assert!(!cache.artifact_path(&version).exists());
    }

    #[test]
    fn the_cache_can_be_shared_between_threads() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<ArtifactCache>();
    }

    #[test]
    fn versions_in_messages_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(cut(&long).chars().count(), 81);
        assert_eq!(cut("short"), "short");
    }
}
