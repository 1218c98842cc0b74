//! The log's files on disk: private permissions, directory syncs, segment names, and the
//! LOCK that keeps a second process (or store) out.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

pub(super) fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("segment log: {what}: {e}"))
}

pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

pub(super) fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options.mode(0o600)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync directory", e))
}

pub(super) fn create_dir_private(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create directory", e))
}

/// How long `open` waits for the LOCK before calling the log in use.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Locks `lock` exclusively, waiting up to [`LOCK_WAIT`]. A lock can outlive its owner for a
/// moment: a child forked by this process (between `fork` and `exec`) shares the open file
/// until it execs, so a log closed and reopened while another thread spawns a process
/// (tests; a node reopening its store) would otherwise be refused as "in use".
pub(super) fn lock_exclusive(lock: &File) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match fs2::FileExt::try_lock_exclusive(lock) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}
