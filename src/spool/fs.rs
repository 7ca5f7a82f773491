//! The spool's only door to the filesystem.
//!
//! Every open, read, write, fsync, rename, unlink and directory listing the spool performs goes
//! through this file, so that a later filesystem trait (to inject fsync errors and simulate power
//! cuts) replaces one module instead of call sites scattered over the writer, reader and
//! recovery. Functions here do I/O and nothing else: no policy, no logging, no metrics.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Name of the subdirectory that receives files recovery refuses to use but must not delete.
pub(crate) const DAMAGED_DIR: &str = "damaged";
/// Subdirectory owned by the dead-letter store (`crate::deadletter`); recovery leaves it alone.
pub const DEAD_LETTER_DIR: &str = "dead-letter";

/// An open spool file (segment). Reads and writes are positional, so no shared cursor can drift
/// between the writer's idea of the end of a segment and the file's.
#[derive(Debug)]
pub(crate) struct SpoolFile {
    file: File,
}

impl SpoolFile {
    pub(crate) fn open_read(path: &Path) -> io::Result<SpoolFile> {
        Ok(SpoolFile {
            file: File::open(path)?,
        })
    }

    /// Opens an existing file for reading and writing (no create, no truncate).
    pub(crate) fn open_write(path: &Path) -> io::Result<SpoolFile> {
        Ok(SpoolFile {
            file: OpenOptions::new().read(true).write(true).open(path)?,
        })
    }

    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// fdatasync: data plus the metadata needed to read it back (the file size), not mtime.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the file to `len` bytes and makes the new size durable.
    pub(crate) fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}

/// Holds the advisory lock on `dir/LOCK` until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes an exclusive flock on `dir/LOCK`. `Ok(None)` when another open file description holds
/// it (another process, or another `Spool` in this one). flock locks die with the process, so a
/// crash never leaves a stale lock behind.
pub(crate) fn lock_dir(dir: &Path) -> io::Result<Option<DirLock>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("LOCK"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(DirLock { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// fsync on a directory: makes entries created, renamed or removed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and missing parents) if needed, fsyncing the parent of every directory it
/// creates: otherwise a power cut could lose a directory entry and everything beneath it.
pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.is_dir())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Atomically and durably puts `contents` at `dir/name`: write `dir/tmp_name`, fsync it, rename
/// it over `name`, fsync `dir`. After a crash at any point `name` is either absent (or its old
/// version) or complete; never partial. Returns the open handle to the new file.
pub(crate) fn publish_file(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    contents: &[u8],
) -> io::Result<SpoolFile> {
    let tmp = dir.join(tmp_name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all_at(contents, 0)?;
    // The data must be on disk before the rename can be: otherwise the rename may reach the disk
    // first and a power cut leaves `name` pointing at an empty or partial file.
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(SpoolFile { file })
}

/// Reads a small file whole; `Ok(None)` if it does not exist.
pub(crate) fn read_small(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One entry of the spool directory.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_file: bool,
    pub len: u64,
}

/// Lists `dir` (names that are not UTF-8 cannot be ours and are skipped).
pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let meta = entry.metadata()?;
        out.push(Entry {
            name,
            path: entry.path(),
            is_file: meta.is_file(),
            len: meta.len(),
        });
    }
    Ok(out)
}

/// Removes a file; a file that is already gone counts as removed. Not durable until the
/// directory is fsync'd.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Durably moves `path` (a file in `dir`) into `dir/damaged/`, never overwriting an earlier
/// casualty of the same name. Returns the new path.
pub(crate) fn move_aside(dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let damaged = dir.join(DAMAGED_DIR);
    if !damaged.is_dir() {
        fs::create_dir(&damaged)?;
        sync_dir(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = damaged.join(&name);
    let mut n = 1;
    while target.exists() {
        target = damaged.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &target)?;
    sync_dir(&damaged)?;
    sync_dir(dir)?;
    Ok(target)
}
